"""The inference gap per datapoint, split in two (Cremer, Li & Duvenaud 2018), in nats::

    log p(x) − ELBO[q_φ] = (log p(x) − ELBO[q*_x])      the approximation gap
                         + (ELBO[q*_x] − ELBO[q_φ])     the amortization gap

q_φ is the guide, q*_x the diagonal Gaussian on the unconstrained latents fitted to x alone by
Adam on its ELBO (reparameterized samples, closed-form entropy), from the guide's mean and
standard deviation. log p(x) comes from AIS; each ELBO is estimated with ``eval_samples``
draws, with its Monte Carlo standard error. The fit being finite, the approximation gap is an
upper estimate and the amortization gap a lower one.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from pyro_vae import checks
from pyro_vae.errors import ConfigError
from pyro_vae.evaluation.ais import block_size_for, check_chains_fit, rows_for
from pyro_vae.evaluation.runner import Execution, as_data, run_blocks
from pyro_vae.evaluation.targets import target_for

__all__ = ["GapSettings", "GapsResult", "fit_diagonal_gaussian", "inference_gaps"]


class GapSettings(NamedTuple):
    """How q*_x is fitted and the ELBOs estimated."""

    num_steps: int = 500  # Adam steps of the per-datapoint fit
    num_samples: int = 16  # reparameterized samples per step
    lr: float = 0.02  # Adam's learning rate, decayed linearly to lr/20 over the steps
    eval_samples: int = 1000  # samples per ELBO estimate
    start: str = "guide"  # the coordinates u of the target (targets.py): the guide's base draws

    def validate(self) -> GapSettings:
        for name in ("num_steps", "num_samples", "eval_samples"):
            checks.integer(f"gap {name}", getattr(self, name))
        checks.number("gap lr", self.lr, low=0, open_low=True)
        checks.choice("gap start", self.start, ("guide", "prior"))
        return self


class GapsResult(NamedTuple):
    """Per datapoint ``(N,)`` (float64, CPU), nats per datapoint; ``mean_*`` over datapoints
    and ``*_mc_stderr`` their Monte Carlo standard errors."""

    log_px: torch.Tensor  # given (AIS)
    encoder_elbo: torch.Tensor  # ELBO of the guide q_φ(z|x)
    encoder_elbo_mc_stderr: torch.Tensor
    fitted_elbo: torch.Tensor  # ELBO of the diagonal Gaussian fitted to x alone
    fitted_elbo_mc_stderr: torch.Tensor
    amortization: torch.Tensor  # fitted_elbo − encoder_elbo
    approximation: torch.Tensor  # log_px − fitted_elbo
    means: dict  # name → mean over datapoints, for every field above
    mean_mc_stderrs: dict  # name → Monte Carlo standard error of that mean
    settings: GapSettings


def _mean_and_se(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard error over the samples (dim 0) of ``(S, B)`` values."""
    S = values.shape[0]
    return values.mean(0), values.std(0) / math.sqrt(S) if S > 1 else torch.full_like(
        values[0], math.nan)


def _estimate(log_values, draw, num_samples: int, chunk: int) -> tuple[torch.Tensor, ...]:
    """Mean and standard error of ``log_values(u)`` over ``num_samples`` draws ``draw(n)``,
    ``chunk`` draws at a time."""
    values = torch.cat([log_values(draw(min(chunk, num_samples - s))).double()
                        for s in range(0, num_samples, chunk)])
    return _mean_and_se(values)


def fit_diagonal_gaussian(density, settings: GapSettings | None = None, on_step=None
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """(loc, log scale) ``(B, P)`` of the diagonal Gaussian on u fitted to each datapoint of
    a bound density (:mod:`.targets`); ``on_step()`` after every step."""
    settings = checks.validated("settings", settings, GapSettings, default=GapSettings())
    loc0, scale0 = density.guide_gaussian(256)
    loc = loc0.detach().clone().requires_grad_(True)
    log_scale = scale0.detach().clamp_min(1e-6).log().clone().requires_grad_(True)
    optimizer = torch.optim.Adam([loc, log_scale], lr=settings.lr)
    for step in range(settings.num_steps):
        for group in optimizer.param_groups:
            group["lr"] = settings.lr * (1 - 0.95 * step / settings.num_steps)
        eps = torch.randn((settings.num_samples, *loc.shape), dtype=loc.dtype,
                          device=loc.device)
        with torch.enable_grad():
            u = loc + log_scale.exp() * eps  # (S, B, P)
            elbo = density.log_joint(u).mean(0) + log_scale.sum(-1)  # (B,) up to a constant
            loc.grad, log_scale.grad = torch.autograd.grad(-elbo.sum(), [loc, log_scale])
        optimizer.step()
        if on_step is not None:
            on_step()
    return loc.detach(), log_scale.detach()


def inference_gaps(model, data, log_px: torch.Tensor, settings: GapSettings | None = None, *,
                   log_px_mc_stderr: torch.Tensor | None = None,
                   execution: Execution = Execution()) -> GapsResult:
    """The amortization and approximation gaps of every datapoint of ``data``.

    :param model: a :class:`~pyro_vae.models.VAEModel` or a :class:`~.program.Program`.
    :param log_px: log p(x) per datapoint ``(N,)``, from AIS (:func:`~.ais.ais`) or, on a
        model where it is known, exactly.
    :param log_px_mc_stderr: its standard errors, added to the approximation gap's.
    """
    settings = checks.validated("settings", settings, GapSettings, default=GapSettings())
    execution = checks.validated("execution", execution, Execution)
    target = target_for(model, start=settings.start)
    data = as_data(data, model)
    N = data[0].shape[0]
    log_px = checks.tensor("log_px", log_px).to(torch.float64).reshape(-1).cpu()
    if log_px.shape[0] != N:
        raise ConfigError(f"log_px has {log_px.shape[0]} values for {N} datapoints")
    check_chains_fit(target, data, settings.num_samples, "gap num_samples", data[0].device)
    block = execution.block_size or block_size_for(target, data, settings.num_samples,
                                                   execution.memory_mb)
    chunk = max(1, rows_for(target, data, execution.memory_mb) // block)

    def compute(xb: tuple, generator, bar) -> dict:
        density = target.bind(xb)

        def encoder_log_weight(n: int) -> torch.Tensor:
            u, log_q = density.sample_guide(n)
            return density.log_joint(u) - log_q

        encoder, encoder_se = _estimate(lambda w: w, encoder_log_weight,
                                        settings.eval_samples, chunk)
        loc, log_scale = fit_diagonal_gaussian(density, settings, lambda: bar.update(1))
        entropy = (log_scale.sum(-1) + 0.5 * loc.shape[-1] * (1 + math.log(2 * math.pi)))
        fitted, fitted_se = _estimate(
            density.log_joint,
            lambda n: loc + log_scale.exp() * torch.randn((n, *loc.shape), dtype=loc.dtype,
                                                          device=loc.device),
            settings.eval_samples, chunk)
        return {"encoder": encoder, "encoder_se": encoder_se,
                "fitted": fitted + entropy.double(), "fitted_se": fitted_se}

    out = run_blocks(compute, data, {"encoder": 0, "encoder_se": 0, "fitted": 0,
                                     "fitted_se": 0}, execution, block=block,
                     steps_per_block=lambda b: settings.num_steps,
                     label="inference gaps: fitting q per datapoint", unit="steps")
    values = torch.stack([out["encoder"], out["encoder_se"], out["fitted"], out["fitted_se"]], 1)
    return _result(log_px, log_px_mc_stderr, values, settings)


def _result(log_px, log_px_se, values: torch.Tensor, settings) -> GapsResult:
    N = log_px.shape[0]
    encoder, encoder_se, fitted, fitted_se = values.unbind(1)
    log_px_se = (torch.zeros_like(log_px) if log_px_se is None
                 else torch.as_tensor(log_px_se, dtype=torch.float64).reshape(-1).cpu())
    fields = {"log_px": (log_px, log_px_se), "encoder_elbo": (encoder, encoder_se),
              "fitted_elbo": (fitted, fitted_se),
              "amortization": (fitted - encoder, (fitted_se**2 + encoder_se**2).sqrt()),
              "approximation": (log_px - fitted, (log_px_se**2 + fitted_se**2).sqrt())}
    means = {k: float(v.mean()) for k, (v, _) in fields.items()}
    ses = {k: float(se.pow(2).sum().sqrt()) / N for k, (_, se) in fields.items()}
    means["total"] = means["amortization"] + means["approximation"]
    return GapsResult(log_px, encoder, encoder_se, fitted, fitted_se,
                      fields["amortization"][0], fields["approximation"][0], means, ses,
                      settings)
