"""Bidirectional Monte Carlo (BDMC; Grosse, Ghahramani & Adams 2015; for decoder-based
models Wu et al. 2017): how far AIS is from log p(x), measured on data simulated from the
model, where the exact posterior sample comes with every datapoint.

Draw (z, x) ~ p(z) p(x|z): then z is an exact sample of p(z|x). Per datapoint,

* forward AIS (s → p(z|x), :mod:`.ais`) gives log p̂_fwd(x), a stochastic **lower** bound:
  E[log p̂_fwd] ≤ log p(x);
* reverse AIS, started at the exact z and annealed p(z|x) → s through the same targets in
  reverse, gives weights whose mean is an unbiased estimate of 1/p(x) (the start is exactly
  f_T/Z_T), so log p̂_rev(x) = −log (1/C) Σ_c w_c is a stochastic **upper** bound:
  E[log p̂_rev] ≥ log p(x).

The gap log p̂_rev − log p̂_fwd ≥ 0 (in expectation) brackets log p(x): it bounds the error
of forward AIS with the same settings on this model, and of any estimator that is no better
(importance sampling with the encoder at the same cost, for one). All C reverse chains of a
datapoint start from its one exact sample; each chain's weight is still unbiased for 1/p(x).

The reverse runs use, transition by transition, the step sizes the forward run of the same
datapoint adapted to, in reverse order: fixed in advance for the reverse chains, so the
upper bound is exact in expectation.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from pyro_vae.distributed import World, derive_seed, owns, sum_across
from pyro_vae.evaluation.ais import (
    AISSettings,
    anneal,
    annealing_schedule,
    block_size_for,
)
from pyro_vae.evaluation.generic import log_mean_exp_stats
from pyro_vae.evaluation.program import as_data, slice_data
from pyro_vae.progress import Progress

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


def _block(target, xb: tuple, settings: AISSettings, betas, bar) -> torch.Tensor:
    """``(B, 6 + D)``: lower, its se, upper, its se, forward and reverse acceptance, and the
    D numbers of each simulated observation."""
    C = settings.num_chains
    data, z_exact = target.simulate(xb)  # (1, B, P)
    density = target.bind(data)

    def step(acceptance):
        bar.update(1)

    forward = anneal(density, betas, density.sample_start(C), settings, on_step=step)
    reverse = anneal(density, betas.flip(0), z_exact.expand(C, *z_exact.shape[1:]).clone(),
                     settings, step_sizes=forward.step_sizes.flip(0), on_step=step)
    lower, lower_se = log_mean_exp_stats(forward.log_weights)
    neg_upper, upper_se = log_mean_exp_stats(reverse.log_weights)
    columns = torch.stack([lower, lower_se, -neg_upper, upper_se, forward.acceptance,
                           reverse.acceptance], 1)
    return torch.cat([columns, data[0].reshape(data[0].shape[0], -1).to(columns)], 1).cpu()


def bdmc(
    target,
    template,
    settings: AISSettings | None = None,
    *,
    seed: int = 0,
    block_size: int | None = None,
    memory_mb: float = 128.0,
    world: World | None = None,
    progress: str = "off",
) -> BDMCResult:
    """Forward and reverse AIS bounds on log p(x) for datapoints simulated from the model of
    ``target`` (:class:`~.targets.VAETarget` or :class:`~.targets.ProgramTarget`), one per row
    of ``template``: the data the program is called with, of which only the shapes of the
    observations matter (they are replaced by the simulated ones), and any other argument
    (a context) is used as it is. The other arguments are those of :func:`~.ais.ais`;
    block ``i`` simulates and anneals with ``derive_seed(seed, i)``.
    """
    settings = (settings or AISSettings()).validate()
    template = as_data(template)
    N, T = template[0].shape[0], settings.num_steps
    block = block_size or block_size_for(target, template, settings.num_chains, memory_mb)
    betas = annealing_schedule(T, settings.schedule)
    values = torch.zeros(N, 6 + template[0][0].numel(), dtype=torch.float64)
    mine = [i for i in range(math.ceil(N / block)) if owns(world, i)]
    with Progress(2 * len(mine) * T, f"BDMC, T={T}, {settings.num_chains} chains", "steps",
                  mode=progress) as bar:
        for i in mine:
            xb = slice_data(template, i * block, (i + 1) * block)
            with torch.random.fork_rng(devices=[d.device for d in xb if d.is_cuda]):
                torch.manual_seed(derive_seed(seed, i))
                values[i * block : i * block + xb[0].shape[0]] = _block(target, xb, settings,
                                                                        betas, bar)
    values = sum_across(values, world)
    lower, lower_se, upper, upper_se = values[:, 0], values[:, 1], values[:, 2], values[:, 3]
    gap = upper - lower
    return BDMCResult(
        lower=lower, lower_mc_stderr=lower_se, upper=upper, upper_mc_stderr=upper_se, gap=gap,
        mean_lower=float(lower.mean()), mean_upper=float(upper.mean()),
        mean_gap=float(gap.mean()),
        gap_mc_stderr=float((lower_se.pow(2) + upper_se.pow(2)).sum().sqrt()) / N,
        forward_acceptance=values[:, 4], reverse_acceptance=values[:, 5],
        settings=settings, start=target.start,
        observations=values[:, 6:].reshape(template[0].shape))
