"""The evaluation report of a trained VAE, from one importance-sampling pass: log p(x) with its
standard errors and Pareto k̂, the test ELBO in two forms, the gap between them, the KL to the
prior per latent dimension, and the active units. Every figure is in nats per datapoint.

:func:`ais_report` is the same report with log p(x) from AIS (:mod:`.ais`); :func:`bdmc_section`
and :func:`gaps_section` add BDMC bounds (:mod:`.bdmc`) and the inference gaps (:mod:`.gaps`).
"""

from __future__ import annotations

import math
import time
import warnings

import torch
from torch.distributions import Normal, kl_divergence

from pyro_vae.distributed import World
from pyro_vae.evaluation.ais import AISSettings, ais
from pyro_vae.evaluation.bdmc import BDMCResult
from pyro_vae.evaluation.gaps import GapsResult
from pyro_vae.evaluation.generic import generic_importance_pass
from pyro_vae.evaluation.importance import PassResult, importance_pass
from pyro_vae.evaluation.psis import MIN_PSIS_SAMPLES, pareto_k_summary
from pyro_vae.evaluation.targets import target_for

__all__ = ["ReliabilityWarning", "active_units", "ais_report", "bdmc_section", "evaluate",
           "gaps_section", "generic_is_report"]


class ReliabilityWarning(UserWarning):
    """Many datapoints have Pareto k̂ > 0.7: the importance-weighted estimate of log p(x) and
    its standard error are unreliable for them (Yao et al. 2018)."""


@torch.no_grad()
def active_units(vae, x: torch.Tensor, *, threshold: float = 0.01, batch_size: int = 1000):
    """The number of active latent units (Burda et al. 2016): dimension d is active if
    A_d = Cov_x(E_{q(z|x)}[z_d]) > ``threshold``, the variance over the datapoints of ``x`` of
    the posterior mean.

    :returns: ``(count, variances)``, an int and the ``(L,)`` tensor of A_d.
    """
    loc = torch.cat([vae.encode(x[s : s + batch_size])[0] for s in range(0, x.shape[0],
                                                                         batch_size)]).double()
    variances = loc.var(0) if loc.shape[0] > 1 else torch.zeros_like(loc[0])
    return int((variances > threshold).sum()), variances


def _none_if_nan(value) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _mean(t: torch.Tensor) -> float:
    return float(t.double().mean())


def _mc_se(variance_sum: torch.Tensor, n: int) -> float | None:
    """Standard error of a mean of ``n`` independent estimates with these variances."""
    return _none_if_nan(variance_sum.double().sum().sqrt() / n)


def _data_se(t: torch.Tensor) -> float | None:
    n = t.numel()
    return _none_if_nan(t.double().std() / math.sqrt(n)) if n > 1 else None


def _log_px_section(r: PassResult, K: int) -> dict:
    n, se2 = r.log_px.numel(), r.log_px_mc_stderr.pow(2)
    return {
        "what": f"IWAE_{K} estimate of log p(x) (Burda et al. 2016): a lower bound in "
        "expectation, biased low by about mc_stderr_per_datapoint^2/2, shrinking like 1/K",
        "mean": _mean(r.log_px),
        "mc_stderr": _mc_se(se2, n),
        "data_stderr": _data_se(r.log_px),
        "mean_mc_stderr_per_datapoint": _mean(r.log_px_mc_stderr),
        "estimated_bias": -float(se2.mean()) / 2,
    }


def _elbo_and_gap_sections(r: PassResult, K: int) -> tuple[dict, dict]:
    n = r.log_px.numel()
    analytic = r.expected_loglik - r.kl.sum(-1)
    gap = r.log_px - r.elbo_mc  # ≥ 0 datapoint by datapoint (Jensen, on the same samples)
    elbo = {
        "what": "test ELBO, a lower bound on log p(x), on the same K samples per datapoint",
        "analytic_kl": {"mean": _mean(analytic), "mc_stderr": _mc_se(r.loglik_var / K, n),
                        "data_stderr": _data_se(analytic)},
        "monte_carlo": {"mean": _mean(r.elbo_mc), "mc_stderr": _mc_se(r.elbo_mc_var / K, n),
                        "data_stderr": _data_se(r.elbo_mc)},
    }
    gap = {
        "what": "log_px - elbo.monte_carlo (same samples, so >= 0 for every datapoint): an "
        "estimate of the mean KL(q(z|x) || p(z|x)), low by the IWAE_K bias; mc_stderr adds the "
        "two in quadrature (conservative: they are positively correlated)",
        "mean": _mean(gap),
        "mc_stderr": _none_if_nan((r.log_px_mc_stderr.pow(2).sum()
                                   + (r.elbo_mc_var / K).sum()).sqrt() / n),
        "data_stderr": _data_se(gap),
    }
    return elbo, gap


def _encoder_sections(vae, x: torch.Tensor, kl_per_dim: torch.Tensor, threshold: float,
                      kl_what: str) -> dict:
    """``kl_to_prior`` and ``active_units``: what the encoder does with each latent unit."""
    count, variances = active_units(vae, x, threshold=threshold)
    return {
        "kl_to_prior": {"what": kl_what, "total": float(kl_per_dim.sum()),
                        "per_dimension": kl_per_dim.tolist()},
        "active_units": {"what": "latent dimensions d with Cov_x(E_q[z_d]) > threshold "
                         "(Burda et al. 2016)", "count": count, "threshold": threshold,
                         "latent_dim": vae.latent_dim, "variances": variances.tolist()},
    }


def _is_per_datapoint(r) -> dict:
    return {"what": "in the order of the data: log_px (IWAE_K), its Monte Carlo standard "
            "error, and the Monte Carlo ELBO",
            "log_px": r.log_px.tolist(),
            "log_px_mc_stderr": [_none_if_nan(v) for v in r.log_px_mc_stderr.tolist()],
            "elbo_monte_carlo": r.elbo_mc.tolist()}


def _warn_if_unreliable(report: dict, pareto_k: bool, K: int) -> None:
    """List (and warn) when k̂ was asked for and not computed, or flags over 1 % of the data."""
    if pareto_k and report["pareto_k"] is None:
        report["warnings"].append(
            f"Pareto k-hat not computed: it needs num_samples >= {MIN_PSIS_SAMPLES}, got {K}")
    if report["pareto_k"] is not None and (frac := report["pareto_k"]["fraction_above_0.7"]
                                           ) > 0.01:
        message = (f"{100 * frac:.1f}% of the datapoints have Pareto k-hat > 0.7: their "
                   "importance weights are too heavy-tailed for log p(x) and its standard "
                   "error to be reliable (Yao et al. 2018); the mean is still a valid lower "
                   "bound, and AIS (pyro-vae evaluate --method ais) a tighter one")
        report["warnings"].append(message)
        warnings.warn(message, ReliabilityWarning, stacklevel=3)


def evaluate(
    vae,
    x: torch.Tensor,
    *,
    num_samples: int = 5000,
    seed: int = 0,
    memory_mb: float = 128.0,
    num_workers: int | None = None,
    world: World | None = None,
    pareto_k: bool = True,
    active_threshold: float = 0.01,
    progress: str = "off",
) -> dict:
    """All evaluation figures of ``vae`` on ``x`` from one pass of K importance samples per
    datapoint, as a JSON-ready dict (nats per datapoint):

    - ``log_px``: the IWAE_K estimate of log p(x), its Monte Carlo standard error (given these
      datapoints) and its spread over datapoints (sd / √N);
    - ``elbo``: the test ELBO, analytic-KL form E_q[log p(x|z)] − KL(q ‖ p(z)) and Monte Carlo
      form E_q[log p(x,z) − log q(z|x)], both on the same K samples;
    - ``gap``: log p̂(x) − ELBO (Monte Carlo form, same samples: ≥ 0 for every datapoint);
    - ``kl_to_prior``: KL(q(z|x) ‖ p(z)) per latent dimension, averaged over x;
    - ``active_units``: Cov_x(E_q[z_d]) > ``active_threshold`` (Burda et al. 2016);
    - ``pareto_k``: the per-datapoint k̂ and their summary (when ``pareto_k`` and K ≥ 21);
    - ``per_datapoint``: log p̂(x), its standard error and the ELBO of every datapoint.

    Issues a :class:`ReliabilityWarning` (and lists it under ``warnings``) when more than 1 %
    of the datapoints have k̂ > 0.7. The arguments are those of
    :func:`~pyro_vae.evaluation.importance.estimate_log_px`.
    """
    t0 = time.perf_counter()
    K = num_samples
    want_k = pareto_k and K >= MIN_PSIS_SAMPLES
    r = importance_pass(vae, x, num_samples=K, seed=seed, memory_mb=memory_mb,
                        num_workers=num_workers, world=world, pareto_k=want_k,
                        progress=progress)
    elbo, gap = _elbo_and_gap_sections(r, K)
    report = {
        "units": "nats per datapoint",
        "method": "is",
        "settings": {"num_samples": K, "seed": seed, "proposal": "the encoder q(z|x)"},
        "num_samples": K,
        "num_datapoints": r.log_px.numel(),
        "log_px": _log_px_section(r, K),
        "log_px_by_k": {str(k): {"mean": _mean(v)} for k, v in r.log_px_by_k.items()},
        "elbo": elbo,
        "gap": gap,
        **_encoder_sections(vae, x, r.kl.mean(0), active_threshold,
                            "KL(q(z|x) || p(z)) in closed form, averaged over the data"),
        "pareto_k": pareto_k_summary(r.pareto_k) if want_k else None,
        "per_datapoint": _is_per_datapoint(r),
        "warnings": [],
        "seconds": time.perf_counter() - t0,
    }
    _warn_if_unreliable(report, pareto_k, K)
    return report


# --- AIS, BDMC and the inference gaps -------------------------------------------------------
def ais_settings_dict(settings: AISSettings, start: str, seed: int) -> dict:
    """The settings of an AIS run, for a report; ``start`` in words."""
    return {**settings._asdict(), "start": start, "seed": seed,
            "gradient_evaluations_per_chain": settings.gradient_evaluations}


@torch.no_grad()
def _kl_to_prior(vae, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """KL(q(z|x) ‖ N(0, I)) per latent dimension, closed form, averaged over ``x``: ``(L,)``."""
    total = 0.0
    for start in range(0, x.shape[0], batch_size):
        loc, scale = vae.encode(x[start : start + batch_size])
        total = total + kl_divergence(Normal(loc, scale), Normal(0.0, 1.0)).double().sum(0)
    return total / x.shape[0]


def _pareto_k_report(pareto_k: torch.Tensor | None, chains: int, report: dict) -> None:
    if pareto_k is None:
        report["notes"].append(f"Pareto k-hat not computed: it needs at least "
                               f"{MIN_PSIS_SAMPLES} chains (--chains), got {chains}")
        return
    report["pareto_k"] = pareto_k_summary(pareto_k)
    if (frac := report["pareto_k"]["fraction_above_0.7"]) > 0.01:
        message = (f"{100 * frac:.1f}% of the datapoints have Pareto k-hat > 0.7 over their "
                   "AIS chains: their log p(x) and its standard error are unreliable; the mean "
                   "is still a stochastic lower bound")
        report["warnings"].append(message)
        warnings.warn(message, ReliabilityWarning, stacklevel=3)


def ais_report(vae, x: torch.Tensor, settings: AISSettings | None = None, *,
               start: str = "guide", seed: int = 0, memory_mb: float = 128.0,
               world: World | None = None, pareto_k: bool = True,
               active_threshold: float = 0.01, progress: str = "off") -> dict:
    """The evaluation report with log p(x) from AIS (:func:`~.ais.ais` on
    :func:`~.targets.target_for` the model), as a JSON-ready dict in nats per datapoint:
    ``log_px`` (a stochastic lower bound), the HMC ``acceptance``, ``kl_to_prior``,
    ``active_units``, ``pareto_k`` over the chains (C ≥ 21), and ``per_datapoint`` values in
    data order."""
    t0 = time.perf_counter()
    settings = (settings or AISSettings()).validate()
    target = target_for(vae, start=start)
    est = ais(target, x, settings, seed=seed, memory_mb=memory_mb, world=world,
              pareto_k=pareto_k, progress=progress)
    count, variances = active_units(vae, x, threshold=active_threshold)
    kl_per_dim = _kl_to_prior(vae, x)
    n, se2 = est.log_px.numel(), est.log_px_mc_stderr.pow(2)
    report = {
        "units": "nats per datapoint",
        "method": "ais",
        "settings": ais_settings_dict(settings, target.describe_start(), seed),
        "num_datapoints": n,
        "log_px": {
            "what": f"AIS estimate of log p(x) (Neal 2001; Wu et al. 2017): from "
            f"{target.describe_start()} through {settings.num_steps} annealed targets, "
            f"{settings.num_chains} chains per datapoint; a stochastic lower bound "
            "(E[log p_hat] <= log p(x))",
            "mean": est.mean, "mc_stderr": _mc_se(se2, n), "data_stderr": _data_se(est.log_px),
            "mean_mc_stderr_per_datapoint": _mean(est.log_px_mc_stderr)},
        "acceptance": {"what": "HMC acceptance probability, mean over transitions and chains",
                       "target": settings.target_accept, "mean": _mean(est.acceptance_rate),
                       "min": float(est.acceptance_rate.min()),
                       "max": float(est.acceptance_rate.max())},
        "kl_to_prior": {"what": "KL(q(z|x) || p(z)) in closed form, averaged over the data",
                        "total": float(kl_per_dim.sum()), "per_dimension": kl_per_dim.tolist()},
        "active_units": {"what": "latent dimensions d with Cov_x(E_q[z_d]) > threshold "
                         "(Burda et al. 2016)", "count": count, "threshold": active_threshold,
                         "latent_dim": vae.latent_dim, "variances": variances.tolist()},
        "pareto_k": None,
        "per_datapoint": {
            "what": "in the order of the data: log_px (AIS), its standard error over the "
            "chains, the mean HMC acceptance probability and the last step size",
            "log_px": est.log_px.tolist(),
            "log_px_mc_stderr": [_none_if_nan(v) for v in est.log_px_mc_stderr.tolist()],
            "acceptance_rate": est.acceptance_rate.tolist(),
            "step_size": est.step_size.tolist()},
        "warnings": [],
        "notes": [],
    }
    if pareto_k:
        _pareto_k_report(est.pareto_k, settings.num_chains, report)
    report["seconds"] = time.perf_counter() - t0
    return report


def bdmc_section(result: BDMCResult, *, start: str, seed: int = 0) -> dict:
    """BDMC bounds (:func:`~.bdmc.bdmc`) as a JSON-ready dict, nats per datapoint; ``start``
    says in words where the chains started."""
    n = result.lower.numel()
    return {
        "what": "BDMC (Grosse et al. 2015) on datapoints simulated from the model: forward "
        "AIS is a stochastic lower bound on log p(x), reverse AIS from the exact posterior "
        "sample a stochastic upper bound; their gap bounds the error of AIS with these "
        "settings",
        "settings": ais_settings_dict(result.settings, start, seed),
        "num_datapoints": n,
        "lower": {"mean": result.mean_lower, "mc_stderr": _mc_se(result.lower_mc_stderr**2, n)},
        "upper": {"mean": result.mean_upper, "mc_stderr": _mc_se(result.upper_mc_stderr**2, n)},
        "gap": {"mean": result.mean_gap, "mc_stderr": _none_if_nan(result.gap_mc_stderr),
                "median": float(result.gap.median()), "max": float(result.gap.max())},
        "acceptance": {"forward": _mean(result.forward_acceptance),
                       "reverse": _mean(result.reverse_acceptance)},
        "per_datapoint": {"what": "simulated datapoints in order: the bounds and their gap",
                          "lower": result.lower.tolist(), "upper": result.upper.tolist(),
                          "gap": result.gap.tolist()},
    }


def gaps_section(result: GapsResult, *, log_px_from: str) -> dict:
    """The inference gaps (:func:`~.gaps.inference_gaps`) as a JSON-ready dict, nats per
    datapoint; ``log_px_from`` says which estimate of log p(x) they rest on."""
    names = ("log_px", "encoder_elbo", "fitted_elbo", "amortization", "approximation")
    return {
        "what": "log p(x) - ELBO(encoder) = amortization gap (ELBO of a diagonal Gaussian "
        "fitted to each x alone - ELBO of the encoder) + approximation gap (log p(x) - that "
        "fitted ELBO) (Cremer, Li & Duvenaud 2018)",
        "log_px_from": log_px_from,
        "settings": result.settings._asdict(),
        **{name: {"mean": result.means[name],
                  "mc_stderr": _none_if_nan(result.mean_mc_stderrs[name])} for name in names},
        "total": result.means["total"],
        "per_datapoint": {"what": "in the order of the data", **{
            name: getattr(result, name).tolist() for name in names}},
    }


def generic_is_report(vae, x: torch.Tensor, *, num_samples: int = 5000, seed: int = 0,
                      memory_mb: float = 128.0, world: World | None = None,
                      pareto_k: bool = True, active_threshold: float = 0.01,
                      progress: str = "off") -> dict:
    """The importance-sampling report of a model without the fast path (a hierarchical VAE, a
    flow guide, a context): generic IS on its Pyro model and guide
    (:func:`~.generic.generic_importance_pass`), with the guide's Monte Carlo ELBO and the gap
    on the same samples; ``kl_to_prior`` and ``active_units`` are those of ``vae.encode`` (for
    a hierarchical VAE, its top layer; with a flow, the Gaussian the flow transforms)."""
    t0 = time.perf_counter()
    K = num_samples
    want_k = pareto_k and K >= MIN_PSIS_SAMPLES
    r = generic_importance_pass(vae.model, vae.guide, x, num_samples=K, seed=seed,
                                memory_mb=memory_mb, world=world, pareto_k=want_k,
                                progress=progress)
    n, gap = r.log_px.numel(), r.log_px - r.elbo_mc
    report = {
        "units": "nats per datapoint", "method": "is",
        "settings": {"num_samples": K, "seed": seed,
                     "proposal": "the guide q(z|x), generic path (Pyro's traces)"},
        "num_samples": K, "num_datapoints": n,
        "log_px": _log_px_section(r, K),
        "elbo": {"what": "test ELBO of the guide, E_q[log p(x,z) - log q(z|x)], on the same K "
                 "samples per datapoint", "monte_carlo": {
                     "mean": _mean(r.elbo_mc), "mc_stderr": _mc_se(r.elbo_mc_var / K, n),
                     "data_stderr": _data_se(r.elbo_mc)}},
        "gap": {"what": "log_px - elbo.monte_carlo (same samples): an estimate of the mean "
                "KL(q(z|x) || p(z|x)), low by the IWAE_K bias", "mean": _mean(gap),
                "data_stderr": _data_se(gap)},
        **_encoder_sections(vae, x, _kl_to_prior(vae, x), active_threshold,
                            "KL(q || p(z)) in closed form of vae.encode's Gaussian, averaged "
                            "over the data"),
        "pareto_k": pareto_k_summary(r.pareto_k) if want_k else None,
        "per_datapoint": _is_per_datapoint(r),
        "warnings": [],
    }
    _warn_if_unreliable(report, pareto_k, K)
    report["seconds"] = time.perf_counter() - t0
    return report
