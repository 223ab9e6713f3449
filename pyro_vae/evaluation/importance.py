"""Importance sampling with the guide as proposal: the IWAE_K estimate of log p(x) per datapoint
(Burda et al. 2016), in nats, for any model, in bounded memory.

With log w_k = log p(x, z_k) − log q(z_k|x), z_k ~ q(z|x), the estimate log (1/K) Σ_k w_k is a
lower bound in expectation, biased low by about se²/2 (Nowozin 2018), where the delta-method
standard error is se = √(Σ_k w̃_k² − 1/K), w̃ the normalized weights; both assume a finite
variance, which Pareto k̂ (:mod:`.psis`) checks. A layered model (``capabilities.layered``)
takes the fast path, its own log joint on threads; any other program is read from Pyro's traces
(:mod:`.program`). Both paths give the same numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from pyro_vae import checks
from pyro_vae.errors import ConfigError
from pyro_vae.evaluation.program import (
    as_program,
    evaluable,
    inspect_program,
    log_weights,
    trace_bytes,
)
from pyro_vae.evaluation.psis import MIN_PSIS_SAMPLES, pareto_k_hat
from pyro_vae.evaluation.runner import (
    MB,
    Execution,
    as_data,
    run_blocks,
    slice_data,
    split_data,
)
from pyro_vae.resources import check_fits, format_bytes

__all__ = ["ISResult", "LogPxEstimate", "estimate_log_px", "log_mean_exp_stats", "subset_sizes"]


@dataclass(frozen=True, kw_only=True)
class LogPxEstimate:
    """Per-datapoint estimates of log p(x) ``(N,)`` (float64, CPU), nats per datapoint, and
    their means; what every estimator of log p(x) returns."""

    log_px: torch.Tensor  # (N,) the estimate of each datapoint
    log_px_mc_stderr: torch.Tensor  # (N,) its Monte Carlo standard error
    pareto_k: torch.Tensor | None  # (N,) Pareto k̂ of each datapoint's weights, if computed

    @property
    def mean(self) -> float:
        """The mean of ``log_px`` over the N datapoints."""
        return float(self.log_px.mean())

    @property
    def mean_mc_stderr(self) -> float:
        """Monte Carlo standard error of :attr:`mean`, √(Σ se²) / N (NaN for K = 1)."""
        return float(self.log_px_mc_stderr.pow(2).sum().sqrt()) / self.log_px.shape[0]

    @property
    def data_stderr(self) -> float:
        """sd of ``log_px`` over the datapoints / √N: the spread from the choice of data."""
        n = self.log_px.shape[0]
        return float(self.log_px.std()) / math.sqrt(n) if n > 1 else math.nan


@dataclass(frozen=True, kw_only=True)
class ISResult(LogPxEstimate):
    """The IWAE_K estimate of log p(x) and the guide's ELBO on the same samples."""

    num_samples: int  # K, importance samples per datapoint
    elbo: torch.Tensor  # (N,) mean_k log w_k: the guide's ELBO (discrete sites summed out)
    elbo_var: torch.Tensor  # (N,) var_k log w_k over the K samples
    log_px_by_k: dict  # k → (N,) IWAE_k from the first k of the same K samples, k < K
    fast: bool  # the layered fast path (else Pyro's traces)


def subset_sizes(num_samples: int) -> list[int]:
    """The k < K at which IWAE_k is also reported, from the first k of the K samples.

    >>> subset_sizes(5000)
    [1, 3, 10, 30, 100, 300, 1000, 3000]
    """
    return [k for k in (1, 3, 10, 30, 100, 300, 1000, 3000, 10000, 30000) if k < num_samples]


def log_mean_exp_stats(log_w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``log_w (K, B)`` → (log (1/K) Σ_k w_k, its delta-method standard error, NaN for K = 1),
    each ``(B,)``."""
    K = log_w.shape[0]
    lse = torch.logsumexp(log_w, 0)
    if K == 1:
        return lse, torch.full_like(lse, math.nan)
    sum_sq = torch.exp(torch.logsumexp(2 * (log_w - lse), 0))  # Σ_k w̃_k² = 1/ESS
    return lse - math.log(K), (sum_sq - 1.0 / K).clamp_min(0).sqrt()


def _columns(log_w: torch.Tensor, want_k: bool, budget_bytes: float) -> dict[str, torch.Tensor]:
    """The per-datapoint columns of ``(K, B)`` log-weights, in their dtype."""
    K = log_w.shape[0]
    log_px, se = log_mean_exp_stats(log_w)
    out = {"log_px": log_px, "log_px_mc_stderr": se, "elbo": log_w.mean(0),
           "elbo_var": log_w.var(0) if K > 1 else torch.full_like(log_px, math.nan)}
    ks = subset_sizes(K)
    if ks:
        out["log_px_by_k"] = torch.stack([torch.logsumexp(log_w[:k], 0) - math.log(k)
                                          for k in ks], 1)
    if want_k:  # in slices: ArviZ copies its input about four times in float64
        rows = max(1, min(64, int(budget_bytes // (32 * K))))
        out["pareto_k"] = torch.cat([pareto_k_hat(log_w[:, p0 : p0 + rows].T)
                                     for p0 in range(0, log_w.shape[1], rows)])
    return out


def _layout(model, num_datapoints: int, K: int, itemsize: int, execution: Execution
            ) -> tuple[int, int, int, float]:
    """(datapoints per block, datapoints per chunk, samples per chunk, half the budget): half
    of ``memory_mb`` for a chunk's rows through the model, half for the block's log-weights.
    It fixes each datapoint's random numbers, so it ignores workers and ranks."""
    budget = execution.memory_mb * MB / 2
    if 2 * K * itemsize > budget:
        raise ConfigError(
            f"K = {K} importance samples need {format_bytes(2 * K * itemsize)} for one "
            f"datapoint's log-weights, more than half of the {execution.memory_mb:g} MB memory "
            f"budget (--memory-mb); raise the budget or lower K to at most "
            f"{int(budget // (2 * itemsize))}")
    rows = max(1, int(budget // model.bytes_per_row()))
    block = execution.block_size or min(128, int(budget // (2 * K * itemsize)))
    block = max(1, min(num_datapoints, block))
    if K <= rows:
        return block, max(1, min(block, rows // K)), K, budget
    # split K into equal chunks of at most ``rows`` samples, one datapoint at a time
    return block, 1, math.ceil(K / math.ceil(K / rows)), budget


def estimate_log_px(model, data, *, num_samples: int = 5000, pareto_k: bool = False,
                    execution: Execution = Execution()) -> ISResult:
    """IWAE_K, log (1/K) Σ_k p(x, z_k)/q(z_k|x) with z_k ~ q(z|x), for every datapoint of
    ``data`` (a tensor ``(N, x_dim)``, or a tuple with a context), in nats: a lower bound on
    log p(x) in expectation.

    :param model: a :class:`~pyro_vae.models.VAEModel` or a :class:`~.program.Program`.
    :param num_samples: K, importance samples per datapoint.
    :param pareto_k: also compute each datapoint's Pareto k̂ (needs K ≥ 21).
    :param execution: its seed alone fixes the result (:class:`~.runner.Execution`).

    >>> from pyro_vae import VAE
    >>> vae = VAE(6, latent_dim=2, hidden_sizes=(8,))
    >>> x = torch.bernoulli(torch.full((5, 6), 0.5))
    >>> est = estimate_log_px(vae, x, num_samples=100)
    >>> est.log_px.shape, est.num_samples
    (torch.Size([5]), 100)
    >>> bool(-6 * math.log(2) - 3 < est.mean < 0)  # 6 Bernoulli pixels: around log 2⁻⁶
    True
    """
    K = checks.integer("num_samples", num_samples)
    execution = checks.validated("execution", execution, Execution)
    if pareto_k and K < MIN_PSIS_SAMPLES:
        raise ConfigError(f"Pareto k-hat needs num_samples >= {MIN_PSIS_SAMPLES}, got {K}")
    data = as_data(data, model)
    if evaluable(model).capabilities.layered:
        fast, out = True, _layered(model, data, K, pareto_k, execution)
    else:
        fast, out = False, _generic(as_program(model), data, K, pareto_k, execution)
    ks = subset_sizes(K)
    return ISResult(log_px=out["log_px"], log_px_mc_stderr=out["log_px_mc_stderr"],
                    pareto_k=out.get("pareto_k"), num_samples=K, elbo=out["elbo"],
                    elbo_var=out["elbo_var"], fast=fast,
                    log_px_by_k={k: out["log_px_by_k"][:, i] for i, k in enumerate(ks)})


def _column_widths(K: int, pareto_k: bool) -> dict[str, int]:
    widths = {"log_px": 0, "log_px_mc_stderr": 0, "elbo": 0, "elbo_var": 0}
    if subset_sizes(K):
        widths["log_px_by_k"] = len(subset_sizes(K))
    if pareto_k:
        widths["pareto_k"] = 0
    return widths


def _layered(model, data: tuple, K: int, pareto_k: bool, execution: Execution) -> dict:
    """The fast path: the model's log joint, chunk by chunk, blocks on threads."""
    x, _ = split_data(model, data)
    model.check_data(x, where="evaluation data")
    block, per_chunk, samples, budget = _layout(model, x.shape[0], K, x.element_size(),
                                                execution)
    workers = execution.thread_count(x.device)
    check_fits(execution.memory_mb * MB * workers, f"a memory budget of "
               f"{execution.memory_mb:g} MB for each of {workers} worker(s)",
               "lower the budget (--memory-mb)", device=x.device)

    def compute(xb: tuple, generator, bar) -> dict:
        x, context = split_data(model, xb)
        B = x.shape[0]
        log_w = x.new_empty(K, B)
        for j0 in range(0, B, per_chunk):
            j1 = min(B, j0 + per_chunk)
            xj, cj = x[j0:j1], None if context is None else context[j0:j1]
            for s0 in range(0, K, samples):
                s1 = min(K, s0 + samples)
                path = model.guide_path(xj, cj, num_samples=s1 - s0, generator=generator)
                log_w[s0:s1, j0:j1] = (model.log_likelihood(xj, path.zs[0], cj)
                                       + sum(model.log_prior(path.zs, cj)) + path.log_det
                                       - sum(path.log_q))
            bar.update(j1 - j0)
        return _columns(log_w, pareto_k, budget)

    return run_blocks(compute, data, _column_widths(K, pareto_k), execution, block=block,
                      label=f"log p(x), K={K}", threaded=True)


def _generic(program, data: tuple, K: int, pareto_k: bool, execution: Execution) -> dict:
    """Pyro's traces: K particles vectorized, in chunks sized by :func:`~.program.trace_bytes`."""
    block = max(1, min(data[0].shape[0], execution.block_size or 128))
    first = slice_data(data, 0, block)
    info = inspect_program(program.model, program.guide, first, data_plate=program.data_plate)
    per_particle = trace_bytes(program.model, program.guide, first, info) * block
    chunk = max(1, min(K, int(execution.memory_mb * MB // per_particle)))

    def compute(xb: tuple, generator, bar) -> dict:
        log_w = torch.cat([log_weights(program.model, program.guide, xb, min(chunk, K - s), info)
                           for s in range(0, K, chunk)], 0).double()  # (K, B)
        bar.update(xb[0].shape[0])
        return _columns(log_w, pareto_k, execution.memory_mb * MB / 2)

    return run_blocks(compute, data, _column_widths(K, pareto_k), execution, block=block,
                      label=f"log p(x) by generic IS, K={K}")
