"""Bidirectional Monte Carlo (BDMC; Grosse, Ghahramani & Adams 2015; Wu et al. 2017): bounds
on both sides of log p(x), per datapoint, for data simulated from the model.

Draw (z, x) ~ p(z) p(x|z), so that z is an exact sample of p(z|x). Forward AIS (:mod:`.ais`)
gives a stochastic **lower** bound on log p(x); reverse AIS, started at z and annealed through
the same targets in reverse with the forward run's step sizes, gives weights unbiased for
1/p(x), hence a stochastic **upper** bound. Their gap bounds the error of AIS with the same
settings on this model.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from pyro_vae import checks
from pyro_vae.evaluation.ais import (
    AISSettings,
    anneal,
    annealing_schedule,
    block_size_for,
    check_chains_fit,
)
from pyro_vae.evaluation.importance import log_mean_exp_stats
from pyro_vae.evaluation.runner import Execution, as_data, run_blocks
from pyro_vae.evaluation.targets import target_for
from pyro_vae.resources import check_fits

__all__ = ["BDMCResult", "bdmc"]


class BDMCResult(NamedTuple):
    """Per simulated datapoint ``(N,)`` (float64, CPU) and their means, nats per datapoint."""

    lower: torch.Tensor  # forward AIS: a stochastic lower bound on log p(x)
    lower_mc_stderr: torch.Tensor
    upper: torch.Tensor  # reverse AIS from the exact posterior sample: a stochastic upper bound
    upper_mc_stderr: torch.Tensor
    gap: torch.Tensor  # upper − lower
    mean_lower: float
    mean_upper: float
    mean_gap: float
    gap_mc_stderr: float  # standard error of mean_gap over the chains: √(Σ se_l² + se_u²) / N
    forward_acceptance: torch.Tensor
    reverse_acceptance: torch.Tensor
    settings: AISSettings
    start: str
    observations: torch.Tensor  # (N, ...) the simulated observations, float64


def bdmc(model, template, settings: AISSettings | None = None, *,
         execution: Execution = Execution()) -> BDMCResult:
    """Forward and reverse AIS bounds on log p(x) for datapoints simulated from ``model`` (a
    :class:`~pyro_vae.models.VAEModel` or a :class:`~.program.Program`), one per row of
    ``template``: the program's arguments, whose observations give only their shape (any
    context is used as it is)."""
    settings = checks.validated("settings", settings, AISSettings, default=AISSettings())
    execution = checks.validated("execution", execution, Execution)
    target = target_for(model, start=settings.start)
    template = as_data(template)
    N, T, C = template[0].shape[0], settings.num_steps, settings.num_chains
    D = template[0][0].numel()
    check_fits(8 * N * (6 + D) + 4 * N * D, f"BDMC on {N} simulated datapoints",
               "lower --bdmc", device=template[0].device)
    check_chains_fit(target, template, C, "--chains", template[0].device)
    block = execution.block_size or block_size_for(target, template, C, execution.memory_mb)
    betas = annealing_schedule(T, settings.schedule)

    def compute(xb: tuple, generator, bar) -> dict:
        data, z_exact = target.simulate(xb)  # (1, B, P)
        density = target.bind(data)

        def step(acceptance):
            bar.update(1)

        forward = anneal(density, betas, density.sample_start(C), settings, on_step=step)
        reverse = anneal(density, betas.flip(0), z_exact.expand(C, *z_exact.shape[1:]).clone(),
                         settings, step_sizes=forward.step_sizes.flip(0), on_step=step)
        lower, lower_se = log_mean_exp_stats(forward.log_weights)
        neg_upper, upper_se = log_mean_exp_stats(reverse.log_weights)
        return {"lower": lower, "lower_se": lower_se, "upper": -neg_upper, "upper_se": upper_se,
                "forward_acceptance": forward.acceptance,
                "reverse_acceptance": reverse.acceptance,
                "observations": data[0].reshape(data[0].shape[0], -1)}

    out = run_blocks(compute, template, {"lower": 0, "lower_se": 0, "upper": 0, "upper_se": 0,
                                         "forward_acceptance": 0, "reverse_acceptance": 0,
                                         "observations": D},
                     execution, block=block, steps_per_block=lambda b: 2 * T,
                     label=f"BDMC, T={T}, {C} chains", unit="steps")
    lower, upper = out["lower"], out["upper"]
    gap = upper - lower
    return BDMCResult(
        lower=lower, lower_mc_stderr=out["lower_se"], upper=upper,
        upper_mc_stderr=out["upper_se"], gap=gap, mean_lower=float(lower.mean()),
        mean_upper=float(upper.mean()), mean_gap=float(gap.mean()),
        gap_mc_stderr=float((out["lower_se"].pow(2) + out["upper_se"].pow(2)).sum().sqrt()) / N,
        forward_acceptance=out["forward_acceptance"],
        reverse_acceptance=out["reverse_acceptance"], settings=settings,
        start=target.describe_start(), observations=out["observations"].reshape(
            template[0].shape))
