"""Annealed importance sampling (AIS; Neal 2001), as Wu, Burda, Salakhutdinov & Grosse (2017)
use it for decoder-based models: a stochastic lower bound on log p(x) per datapoint, in nats.

For each datapoint, C chains start from s (:mod:`.targets`: the guide q(z|x) or the prior p(z))
and move through the targets f_t = s exp(β_t ℓ), ℓ = log p(x, z) − log s(z),
0 = β_0 < … < β_T = 1, by one HMC transition (:mod:`.hmc`) at each β_t. Each chain carries
log w = Σ_t (β_t − β_{t−1}) ℓ(z_{t−1}) with E[w] = p(x), so log p̂(x) = log (1/C) Σ_c w_c
has E[log p̂(x)] ≤ log p(x). Step sizes adapted on the run make the bound approximate; fixed in
advance (``step_sizes``), it is exact in expectation. ``docs/evaluation.md`` gives the starts,
the schedules and the defaults.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch

from pyro_vae import checks
from pyro_vae.errors import ConfigError
from pyro_vae.evaluation.hmc import HMCState, StepSizeAdapter, hmc_transition, initial_state
from pyro_vae.evaluation.importance import LogPxEstimate, log_mean_exp_stats
from pyro_vae.evaluation.psis import MIN_PSIS_SAMPLES, pareto_k_hat
from pyro_vae.evaluation.runner import MB, Execution, as_data, run_blocks, slice_data
from pyro_vae.evaluation.targets import START_DISTRIBUTIONS, LayeredTarget, target_for
from pyro_vae.resources import available_bytes, check_fits

__all__ = ["SCHEDULES", "AISResult", "AISSettings", "AnnealResult", "ais", "anneal",
           "annealing_schedule", "block_size_for", "check_chains_fit", "rows_for"]

SCHEDULES = ("sigmoid", "geometric", "linear")


def annealing_schedule(num_steps: int, kind: str = "sigmoid") -> torch.Tensor:
    """β_0 = 0 < β_1 < … < β_T = 1 for T = ``num_steps``, float64 ``(T + 1,)``: ``"sigmoid"``
    (Grosse et al. 2015, δ = 4), ``"geometric"`` (β_t = 10^(−4 (T − t)/(T − 1)), t ≥ 1) or
    ``"linear"``.

    >>> annealing_schedule(4, "linear").tolist()
    [0.0, 0.25, 0.5, 0.75, 1.0]
    >>> [round(b, 3) for b in annealing_schedule(4).tolist()]  # sigmoid: small steps at both ends
    [0.0, 0.105, 0.5, 0.895, 1.0]
    """
    num_steps = checks.integer("num_steps", num_steps)
    t = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
    if kind == "sigmoid":
        s = torch.sigmoid(4.0 * (2 * t - 1))
        betas = (s - s[0]) / (s[-1] - s[0])
    elif kind == "geometric":
        betas = torch.cat([torch.zeros(1, dtype=torch.float64),
                           10.0 ** (-4.0 * (1 - t[1:]) / max(1 - t[1].item(), 1e-12))])
    elif kind == "linear":
        betas = t
    else:
        raise ConfigError(f"unknown annealing schedule {kind!r}; choose one of "
                          f"{', '.join(SCHEDULES)}")
    betas[0], betas[-1] = 0.0, 1.0
    return betas


class AISSettings(NamedTuple):
    """The budget and tuning of an AIS run; the defaults are ``pyro-vae evaluate``'s."""

    num_steps: int = 100  # T, intermediate distributions
    num_chains: int = 16  # C, chains (independent AIS runs) per datapoint
    num_leapfrog: int = 5  # L, leapfrog steps per HMC transition
    schedule: str = "sigmoid"  # β_t: "sigmoid", "geometric" or "linear"
    target_accept: float = 0.65  # acceptance probability the step sizes adapt towards
    initial_step_size: float = 0.05  # ε before adaptation, in units of z
    start: str = "guide"  # where the chains start: the guide q(z|x), or the prior p(z)

    def validate(self) -> AISSettings:
        checks.integer("AIS num_steps", self.num_steps)
        checks.integer("AIS num_chains", self.num_chains)
        checks.integer("AIS num_leapfrog", self.num_leapfrog)
        checks.choice("annealing schedule", self.schedule, SCHEDULES)
        checks.number("target_accept", self.target_accept, low=0, high=1, open_low=True,
                      open_high=True)
        checks.number("initial_step_size", self.initial_step_size, low=0, open_low=True)
        checks.choice("AIS start", self.start, START_DISTRIBUTIONS)
        return self

    def gradient_evaluations(self, reuse: bool = False) -> int:
        """Gradient evaluations of log p(x, z) per chain: (L + 1)(T − 1), or L(T − 1) + 1 where
        each transition starts from the last one's gradient (``reuse``, :mod:`.hmc`)."""
        T, L = self.num_steps, self.num_leapfrog
        return L * (T - 1) + 1 if reuse else (L + 1) * (T - 1)

    def density_evaluations(self, reuse: bool = False) -> int:
        """Evaluations of log p(x, z) per chain: the gradient evaluations, and without
        ``reuse`` the start's value besides (with it, the start's carries its gradient)."""
        return self.gradient_evaluations(reuse) + (not reuse)


class AnnealResult(NamedTuple):
    """One annealing run over a block: C chains × B datapoints."""

    log_weights: torch.Tensor  # (C, B) float64, Σ_t (β_t − β_{t−1}) ℓ(z_{t−1})
    acceptance: torch.Tensor  # (B,) acceptance probability, mean over transitions and chains
    step_sizes: torch.Tensor  # (T + 1, B) step size of the transition at each β (NaN: none)
    accept_probs: torch.Tensor  # (T + 1, B) mean acceptance of the transition at each β
    final: HMCState


def anneal(density, betas: torch.Tensor, u: torch.Tensor, settings: AISSettings, *,
           step_sizes: torch.Tensor | None = None, on_step=None,
           generator: torch.Generator | None = None) -> AnnealResult:
    """Move the chains at ``u`` ``(C, B, P)`` along ``betas`` (1 → 0 for BDMC's reverse runs),
    one HMC transition at each intermediate β, accumulating the log-weights. ``step_sizes``
    ``(len(betas), B)`` fixes the step sizes, else they adapt; ``on_step(acceptance)`` after
    every β."""
    state = initial_state(density, u)
    B = u.shape[1]
    log_w = torch.zeros(u.shape[:2], dtype=torch.float64, device=u.device)
    adapter = None if step_sizes is not None else StepSizeAdapter(
        torch.full((B,), settings.initial_step_size, dtype=torch.float64, device=u.device),
        settings.target_accept)
    used = torch.full((len(betas), B), math.nan, dtype=torch.float64, device=u.device)
    probs = torch.full((len(betas), B), math.nan, dtype=torch.float64, device=u.device)
    accepted = torch.zeros(B, dtype=torch.float64, device=u.device)
    transitions = 0
    last = len(betas) - 1
    for t in range(1, last + 1):
        log_w += (betas[t] - betas[t - 1]).item() * state.log_ratio.double()
        if t < last:  # no transition at the last target: its sample is not used
            used[t] = step_sizes[t] if adapter is None else adapter.step_size
            state, accept_prob = hmc_transition(density, state, betas[t].item(), used[t],
                                                settings.num_leapfrog, generator)
            mean_accept = accept_prob.double().mean(0)  # (B,), over the chains
            probs[t] = mean_accept
            accepted += mean_accept
            transitions += 1
            if adapter is not None:
                adapter.update(mean_accept)
        if on_step is not None:
            on_step(accepted / max(1, transitions))
    return AnnealResult(log_w, accepted / max(1, transitions), used, probs, state)


@dataclass(frozen=True, kw_only=True)
class AISResult(LogPxEstimate):
    """AIS estimates of log p(x) (``log_px``, a stochastic lower bound), with HMC diagnostics."""

    num_chains: int
    acceptance_rate: torch.Tensor  # (N,) mean HMC acceptance probability
    step_size: torch.Tensor  # (N,) the last step size
    log_weights: torch.Tensor  # (N, C)
    accept_by_step: torch.Tensor  # (N, T + 1) mean acceptance of the transition at each β
    step_size_by_step: torch.Tensor  # (N, T + 1) its step size (NaN where none ran)
    betas: torch.Tensor  # (T + 1,) the schedule
    settings: AISSettings
    start: str  # where the chains started, in words
    gradient_evaluations: int  # per chain, as run (AISSettings.gradient_evaluations)


def rows_for(target, data: tuple, memory_mb: float) -> int:
    """How many (chain × datapoint) rows of gradient evaluations fit in ``memory_mb``."""
    probe = slice_data(data, 0, min(data[0].shape[0], 64))
    return int(max(1, memory_mb * MB // target.row_bytes(probe)))


def block_size_for(target, data: tuple, num_chains: int, memory_mb: float) -> int:
    """Datapoints per block so that C chains of a block fit in about ``memory_mb``."""
    return max(1, min(data[0].shape[0], rows_for(target, data, memory_mb) // num_chains))


def check_chains_fit(target, data: tuple, rows: int, option: str, device) -> None:
    """Refuse, before anything is allocated, ``rows`` chains of one datapoint that cannot fit
    in the memory available, naming ``option`` and how many would fit."""
    row = target.row_bytes(slice_data(data, 0, 1))
    fits = available_bytes(device) // row
    check_fits(rows * row, f"{option} {rows} ({rows} chains of one datapoint)",
               f"lower {option} to at most {fits}", device=device)


def ais(model, data, settings: AISSettings | None = None, *, pareto_k: bool = True,
        execution: Execution = Execution()) -> AISResult:
    """AIS estimates of log p(x) for every datapoint of ``data``.

    :param model: a :class:`~pyro_vae.models.VAEModel` or a :class:`~.program.Program`.
    :param data: a tensor ``(N, ...)`` or a tuple of them (the program's arguments).
    :param pareto_k: Pareto k̂ of each datapoint's weights over the chains (needs C ≥ 21).
    """
    settings = checks.validated("settings", settings, AISSettings, default=AISSettings())
    execution = checks.validated("execution", execution, Execution)
    target = target_for(model, start=settings.start)
    data = as_data(data, model)
    N, C, T = data[0].shape[0], settings.num_chains, settings.num_steps
    block = execution.block_size or block_size_for(target, data, C, execution.memory_mb)
    check_chains_fit(target, data, C, "--chains", data[0].device)
    check_fits(8 * (T + 1) * (1 + 4 * block + 2 * N) + 8 * N * (C + 5),
               f"AIS with T = {T} steps and {C} chains on {N} datapoints (its schedule and "
               "per-step diagnostics)", "lower --ais-steps, --chains or --test-size")
    want_k = pareto_k and C >= MIN_PSIS_SAMPLES
    betas = annealing_schedule(T, settings.schedule)
    threaded = isinstance(target, LayeredTarget)  # it draws from each block's own generator

    def compute(xb: tuple, generator, bar) -> dict:
        density = target.bind(xb)
        run = anneal(density, betas, density.sample_start(C, generator), settings,
                     generator=generator if threaded else None,
                     on_step=lambda acc: bar.update(1, postfix=f"acceptance "
                                                    f"{float(acc.mean()):.2f}"))
        log_px, se = log_mean_exp_stats(run.log_weights)
        out = {"log_px": log_px, "log_px_mc_stderr": se, "acceptance": run.acceptance,
               "step_size": run.step_sizes[-2] if T > 1 else torch.full_like(log_px, math.nan),
               "log_weights": run.log_weights.T, "accept_by_step": run.accept_probs.T,
               "step_size_by_step": run.step_sizes.T}
        if want_k:
            out["pareto_k"] = pareto_k_hat(run.log_weights.T)
        return out

    columns = {"log_px": 0, "log_px_mc_stderr": 0, "acceptance": 0, "step_size": 0,
               "log_weights": C, "accept_by_step": T + 1, "step_size_by_step": T + 1,
               **({"pareto_k": 0} if want_k else {})}
    out = run_blocks(compute, data, columns, execution, block=block, steps_per_block=lambda b: T,
                     label=f"log p(x) by AIS, T={T}, {C} chains", unit="steps",
                     threaded=threaded)
    return AISResult(log_px=out["log_px"], log_px_mc_stderr=out["log_px_mc_stderr"],
                     pareto_k=out.get("pareto_k"), num_chains=C,
                     acceptance_rate=out["acceptance"], step_size=out["step_size"],
                     log_weights=out["log_weights"], accept_by_step=out["accept_by_step"],
                     step_size_by_step=out["step_size_by_step"], betas=betas,
                     settings=settings, start=target.describe_start(),
                     gradient_evaluations=settings.gradient_evaluations(target.closed_form_start))
