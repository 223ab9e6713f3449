"""The report of ``pyro-vae evaluate``, one renderer for every estimate of log p(x): a
JSON-ready dict in nats per datapoint, with the estimate (:class:`~.importance.ISResult` or
:class:`~.ais.AISResult`) and what the encoder does with each latent unit, the Pareto k̂ of the
weights, BDMC bounds (:mod:`.bdmc`) and the inference gaps (:mod:`.gaps`) when asked for.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch.distributions import Normal, kl_divergence

from pyro_vae import checks
from pyro_vae.evaluation.ais import AISResult
from pyro_vae.evaluation.bdmc import BDMCResult
from pyro_vae.evaluation.gaps import GapsResult
from pyro_vae.evaluation.importance import ISResult
from pyro_vae.evaluation.psis import MIN_PSIS_SAMPLES, pareto_k_summary
from pyro_vae.evaluation.runner import Execution, as_data, split_data
from pyro_vae.models.interface import check_model

__all__ = ["ReliabilityWarning", "active_units", "bdmc_section", "gaps_section", "report"]


class ReliabilityWarning(UserWarning):
    """Many datapoints have Pareto k̂ > 0.7: the estimate of log p(x) and its standard error
    are unreliable for them (Yao et al. 2018)."""


def _encoded(model, data, batch_size: int):
    """``model.encode``'s Gaussian of the top layer on ``data`` (x, or (x, context)), block
    by block: the (loc, scale) of each block."""
    check_model(model, "active units and the KL per dimension")
    x, context = split_data(model, as_data(data, model))
    for s in range(0, x.shape[0], batch_size):
        yield model.encode(x[s : s + batch_size],
                           None if context is None else context[s : s + batch_size])


@torch.no_grad()
def active_units(model, data, *, threshold: float = 0.01, batch_size: int = 1000):
    """The number of active latent units (Burda et al. 2016): dimension d is active if
    A_d = Cov_x(E_{q(z|x)}[z_d]) > ``threshold``, the variance over the datapoints of
    ``data`` (x, or (x, context)) of the posterior mean (``model.encode``'s).

    :returns: ``(count, variances)``, an int and the ``(L,)`` tensor of A_d.
    """
    return _units_and_kl(list(_encoded(model, data, batch_size)), threshold)[:2]


def _units_and_kl(encoded: list, threshold: float):
    """Active units (count, variances) and KL(q(z_L|x) ‖ N(0, I)) per latent dimension of
    ``model.encode``'s Gaussian, closed form, averaged over the data, ``(L,)``: from the
    encoder's blocks, one pass for both."""
    loc = torch.cat([loc for loc, _ in encoded]).double()
    variances = loc.var(0) if loc.shape[0] > 1 else torch.zeros_like(loc[0])
    kls = [kl_divergence(Normal(loc, scale), Normal(0.0, 1.0)).double()
           for loc, scale in encoded]
    kl = sum(k.sum(0) for k in kls) / sum(k.shape[0] for k in kls)
    return int((variances > threshold).sum()), variances, kl


def _finite(value) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _spread(values: torch.Tensor, mc_stderr: torch.Tensor | None = None) -> dict:
    """Mean, Monte Carlo standard error (from per-datapoint ones) and data standard error."""
    n = values.numel()
    out = {"mean": float(values.double().mean())}
    if mc_stderr is not None:
        out["mc_stderr"] = _finite(mc_stderr.double().pow(2).sum().sqrt() / n)
    out["data_stderr"] = _finite(values.double().std() / math.sqrt(n)) if n > 1 else None
    return out


def _what(estimate) -> str:
    if isinstance(estimate, ISResult):
        return (f"IWAE_{estimate.num_samples} estimate of log p(x) (Burda et al. 2016): a lower "
                "bound in expectation, biased low by about mc_stderr_per_datapoint^2/2, "
                "shrinking like 1/K")
    s = estimate.settings
    return (f"AIS estimate of log p(x) (Neal 2001; Wu et al. 2017): from {estimate.start} "
            f"through {s.num_steps} annealed targets, {s.num_chains} chains per datapoint; a "
            "stochastic lower bound (E[log p_hat] <= log p(x))")


def report(model, data, estimate: ISResult | AISResult, *,
           execution: Execution = Execution(), test_elbo: float | None = None,
           terms: dict | None = None, active_threshold: float = 0.01) -> dict:
    """The evaluation report of ``model`` on ``data`` (x, or (x, context)) with ``estimate``,
    as a JSON-ready dict in nats per datapoint: ``log_px`` (the estimate's mean, its Monte
    Carlo standard error and its spread over the datapoints), the ELBO (importance sampling:
    on its K samples; AIS: ``test_elbo``, as training computes it), ``kl_to_prior`` and
    ``active_units`` of ``model.encode``'s Gaussian, the ``pareto_k`` summary, and
    ``per_datapoint`` values in data order; with the ELBO's ``terms``
    (:func:`~.elbo.elbo_terms`), the decomposition of log p(x) into E_q[log p(x|z)] −
    KL(q ‖ p(z)) + KL(q ‖ p(z|x)). Issues a :class:`ReliabilityWarning` (and lists it under
    ``warnings``) when more than 1 % of the datapoints have k̂ > 0.7."""
    checks.instance("estimate", estimate, (ISResult, AISResult))
    n, se = estimate.log_px.numel(), estimate.log_px_mc_stderr
    with torch.no_grad():
        count, variances, kl = _units_and_kl(list(_encoded(model, data, 1000)),
                                             active_threshold)
    is_sampling = isinstance(estimate, ISResult)
    out = {
        "units": "nats per datapoint",
        "method": "is" if is_sampling else "ais",
        "settings": {"seed": execution.seed, **(
            {"num_samples": estimate.num_samples, "proposal": "the guide q(z|x)"
             + ("" if estimate.fast else ", generic path (Pyro's traces)")} if is_sampling
            else {**estimate.settings._asdict(), "start": estimate.start,
                  "gradient_evaluations_per_chain": estimate.gradient_evaluations})},
        "num_datapoints": n,
        "log_px": {"what": _what(estimate), **_spread(estimate.log_px, se),
                   "mean_mc_stderr_per_datapoint": _finite(se.double().mean())},
        "kl_to_prior": {"what": "KL(q(z|x) || p(z)) in closed form of the encoder's Gaussian "
                        "(the top layer's), averaged over the data", "total": float(kl.sum()),
                        "per_dimension": kl.tolist()},
        "active_units": {"what": "latent dimensions d with Cov_x(E_q[z_d]) > threshold "
                         "(Burda et al. 2016)", "count": count, "threshold": active_threshold,
                         "latent_dim": model.latent_dim, "variances": variances.tolist()},
        "pareto_k": None if estimate.pareto_k is None else pareto_k_summary(estimate.pareto_k),
        "per_datapoint": {"what": "in the order of the data: the estimate of log p(x) and its "
                          "Monte Carlo standard error",
                          "log_px": estimate.log_px.tolist(),
                          "log_px_mc_stderr": [_finite(v) for v in se.tolist()]},
        "warnings": [], "notes": [],
    }
    (_is_sections if is_sampling else _ais_sections)(out, estimate)
    if terms is not None:
        out["elbo_decomposition"] = _decomposition(estimate.log_px, terms)
        out["per_datapoint"].update({k: terms[k].tolist() for k in ("expected_loglik",
                                                                    "kl_to_prior")})
    if test_elbo is not None:
        out["test_elbo"] = {"what": f"the test ELBO as training computes it, on these {n} "
                            "datapoints: one posterior sample each, from a fixed seed",
                            "mean": test_elbo}
    _check_pareto(out, estimate, is_sampling)
    return out


def _is_sections(out: dict, estimate: ISResult) -> None:
    """Importance sampling's: the bias estimate, log p(x) by K, the ELBO on the same samples
    and the gap between the two."""
    se = estimate.log_px_mc_stderr
    K = estimate.num_samples
    out["log_px"]["estimated_bias"] = -float(se.double().pow(2).mean()) / 2
    out["log_px_by_k"] = {str(k): {"mean": float(v.mean())}
                          for k, v in estimate.log_px_by_k.items()}
    out["elbo"] = {"what": f"test ELBO, E_q[log p(x,z) - log q(z|x)], on the same {K} "
                   "samples per datapoint", **_spread(estimate.elbo, (estimate.elbo_var / K)
                                                      .sqrt())}
    gap = estimate.log_px - estimate.elbo  # ≥ 0 datapoint by datapoint (Jensen)
    out["gap"] = {"what": "log_px - elbo (same samples, so >= 0 for every datapoint): an "
                  "estimate of the mean KL(q(z|x) || p(z|x)), low by the IWAE_K bias",
                  **_spread(gap)}
    out["per_datapoint"]["elbo"] = estimate.elbo.tolist()


def _ais_sections(out: dict, estimate: AISResult) -> None:
    """AIS's: the HMC acceptance, and the acceptance and step size along the path."""
    acc = estimate.acceptance_rate
    out["acceptance"] = {"what": "HMC acceptance probability, mean over transitions and "
                         "chains", "target": estimate.settings.target_accept,
                         "mean": float(acc.mean()), "min": float(acc.min()),
                         "max": float(acc.max())}
    out["per_datapoint"]["acceptance_rate"] = acc.tolist()
    out["per_datapoint"]["step_size"] = estimate.step_size.tolist()
    out["by_step"] = {"what": "along the annealing path: beta_t, and the HMC acceptance "
                      "and step size of the transition at beta_t, mean over the data",
                      "beta": estimate.betas.tolist(),
                      "acceptance": _column_means(estimate.accept_by_step),
                      "step_size": _column_means(estimate.step_size_by_step)}


def _decomposition(log_px: torch.Tensor, terms: dict) -> dict:
    """log p(x) = E_q[log p(x|z)] − KL(q ‖ p(z)) + KL(q ‖ p(z|x)), each term's mean."""
    kl_posterior = log_px - terms["elbo"]
    return {"what": "log p(x) = E_q[log p(x|z)] - KL(q(z|x) || p(z)) + KL(q(z|x) || p(z|x)); "
            "the first two are the ELBO (= -loss), the third is log p(x) - ELBO",
            "log_px": float(log_px.mean()),
            "expected_loglik": float(terms["expected_loglik"].mean()),
            "kl_to_prior": float(terms["kl_to_prior"].mean()),
            "elbo": float(terms["elbo"].mean()),
            "kl_to_posterior": float(kl_posterior.mean())}


def _column_means(values: torch.Tensor) -> list:
    means = values.nanmean(0) if values.numel() else values.sum(0)
    return [_finite(v) for v in means.tolist()]


def _check_pareto(out: dict, estimate, is_sampling: bool) -> None:
    """A note when k̂ was not computed; a warning when it flags over 1 % of the data."""
    count = estimate.num_samples if is_sampling else estimate.num_chains
    if estimate.pareto_k is None:
        what = "samples (-K)" if is_sampling else "chains (--chains)"
        out["notes"].append(f"Pareto k-hat not computed: it needs at least {MIN_PSIS_SAMPLES} "
                            f"{what}, got {count}" if count < MIN_PSIS_SAMPLES else
                            "Pareto k-hat not computed (asked not to)")
        return
    if (frac := out["pareto_k"]["fraction_above_0.7"]) > 0.01:
        message = (f"{100 * frac:.1f}% of the datapoints have Pareto k-hat > 0.7: their "
                   "weights are too heavy-tailed for log p(x) and its standard error to be "
                   "reliable (Yao et al. 2018); the mean is still a valid lower bound"
                   + (", and AIS (pyro-vae evaluate --method ais) a tighter one"
                      if is_sampling else ""))
        out["warnings"].append(message)
        warnings.warn(message, ReliabilityWarning, stacklevel=3)


def bdmc_section(result: BDMCResult, *, seed: int = 0) -> dict:
    """BDMC bounds (:func:`~.bdmc.bdmc`) as a JSON-ready dict, nats per datapoint."""
    n = checks.instance("result", result, BDMCResult).lower.numel()
    return {
        "what": "BDMC (Grosse et al. 2015) on datapoints simulated from the model: forward "
        "AIS is a stochastic lower bound on log p(x), reverse AIS from the exact posterior "
        "sample a stochastic upper bound; their gap bounds the error of AIS with these "
        "settings",
        "settings": {**result.settings._asdict(), "start": result.start, "seed": seed},
        "num_datapoints": n,
        "lower": {"mean": result.mean_lower, "mc_stderr": _finite(
            result.lower_mc_stderr.pow(2).sum().sqrt() / n)},
        "upper": {"mean": result.mean_upper, "mc_stderr": _finite(
            result.upper_mc_stderr.pow(2).sum().sqrt() / n)},
        "gap": {"mean": result.mean_gap, "mc_stderr": _finite(result.gap_mc_stderr),
                "median": float(result.gap.median()), "max": float(result.gap.max())},
        "acceptance": {"forward": float(result.forward_acceptance.mean()),
                       "reverse": float(result.reverse_acceptance.mean())},
        "per_datapoint": {"what": "simulated datapoints in order: the bounds and their gap",
                          "lower": result.lower.tolist(), "upper": result.upper.tolist(),
                          "gap": result.gap.tolist()},
    }


def gaps_section(result: GapsResult, *, log_px_from: str) -> dict:
    """The inference gaps (:func:`~.gaps.inference_gaps`) as a JSON-ready dict, nats per
    datapoint; ``log_px_from`` says which estimate of log p(x) they rest on."""
    checks.instance("result", result, GapsResult)
    names = ("log_px", "encoder_elbo", "fitted_elbo", "amortization", "approximation")
    return {
        "what": "log p(x) - ELBO(encoder) = amortization gap (ELBO of a diagonal Gaussian "
        "fitted to each x alone - ELBO of the encoder) + approximation gap (log p(x) - that "
        "fitted ELBO) (Cremer, Li & Duvenaud 2018)",
        "log_px_from": log_px_from,
        "settings": result.settings._asdict(),
        **{name: {"mean": result.means[name],
                  "mc_stderr": _finite(result.mean_mc_stderrs[name])} for name in names},
        "total": result.means["total"],
        "per_datapoint": {"what": "in the order of the data", **{
            name: getattr(result, name).tolist() for name in names}},
    }
