"""Importance sampling for any Pyro model and guide: the IWAE_K estimate of log p(x) per
datapoint, from Pyro's own traces.

For each datapoint x, K particles z_k ~ q(z|x) are drawn by running the guide in a vectorized
plate of K particles, the model is replayed against them, and

    log w_k = log p(x, z_k) − log q(z_k|x),      log p̂_K(x) = log (1/K) Σ_k w_k

(Burda et al. 2016), with every latent and observed site of the program (several latent
layers, a normalizing flow in the guide, discrete latents summed out by enumeration: see
:mod:`.program`). The estimate, its standard error and its bias are those of
:mod:`.importance`, which is the fast path of the same computation for the built-in
:class:`~pyro_vae.VAE` (the tests check that both give the same numbers on the same random
numbers).

**Random numbers.** Pyro draws from torch's global generator. Block ``i`` of datapoints
reseeds it with ``derive_seed(seed, i)`` inside :func:`torch.random.fork_rng`, so the result
depends on neither the ranks under ``torchrun`` nor the caller's stream, and the caller's
stream is left as it was. (Pyro's handler stack is global, so the blocks run one after
another, each op using torch's threads.)

**Memory.** Inside a block the particles go through the program in chunks whose size comes
from ``memory_mb`` and the bytes of one particle's traces (:func:`.program.trace_bytes`, an
estimate: hidden activations are not in the trace, so it counts every tensor three times).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from pyro_vae.distributed import World, derive_seed, owns, sum_across
from pyro_vae.evaluation.importance import LogPxEstimate, check_sampling_arguments
from pyro_vae.evaluation.program import (
    as_data,
    inspect_program,
    log_weights,
    slice_data,
    trace_bytes,
)
from pyro_vae.evaluation.psis import pareto_k_hat
from pyro_vae.progress import Progress

__all__ = ["GenericPassResult", "estimate_log_px_generic", "generic_importance_pass",
           "log_mean_exp_stats"]

_MB = 2**20


class GenericPassResult(NamedTuple):
    """Per-datapoint results of one importance-sampling pass, each ``(N,)`` float64, CPU."""

    log_px: torch.Tensor  # log (1/K) Σ_k w_k
    log_px_mc_stderr: torch.Tensor  # delta-method standard error, √(Σ_k w̃_k² − 1/K)
    elbo_mc: torch.Tensor  # mean_k log w_k: the guide's ELBO (enumerated sites summed)
    elbo_mc_var: torch.Tensor  # var_k log w_k
    pareto_k: torch.Tensor | None  # Pareto k̂ of the K weights, when asked for


def log_mean_exp_stats(log_w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``log_w (K, B)`` → (log (1/K) Σ_k w_k, its delta-method standard error), each ``(B,)``:
    se = sd(w) / (√K mean(w)) = √(Σ_k w̃_k² − 1/K), NaN for K = 1."""
    K = log_w.shape[0]
    lse = torch.logsumexp(log_w, 0)
    if K == 1:
        return lse, torch.full_like(lse, math.nan)
    sum_sq = torch.exp(torch.logsumexp(2 * (log_w - lse), 0))  # Σ_k w̃_k² = 1/ESS
    return lse - math.log(K), (sum_sq - 1.0 / K).clamp_min(0).sqrt()


def _block_log_weights(model, guide, data: tuple, K: int, chunk: int, info) -> torch.Tensor:
    """``(K, B)`` log-weights of one block, ``chunk`` particles at a time."""
    parts = [log_weights(model, guide, data, min(chunk, K - s), info)
             for s in range(0, K, chunk)]
    return torch.cat(parts, 0).double()


@torch.no_grad()
def generic_importance_pass(
    model,
    guide,
    data,
    *,
    num_samples: int,
    seed: int = 0,
    block_size: int | None = None,
    memory_mb: float = 128.0,
    world: World | None = None,
    pareto_k: bool = False,
    data_plate: str | None = None,
    progress: str = "off",
) -> GenericPassResult:
    """One pass of K = ``num_samples`` importance samples per datapoint of ``data`` (a tensor
    or a tuple of per-datapoint tensors, the model's and guide's positional arguments); the
    arguments are those of :func:`estimate_log_px_generic`."""
    check_sampling_arguments(num_samples, memory_mb, pareto_k)
    data = as_data(data)
    N, K = data[0].shape[0], num_samples
    block = max(1, min(N, block_size or 128))
    info = inspect_program(model, guide, slice_data(data, 0, block), data_plate=data_plate)
    per_particle = trace_bytes(model, guide, slice_data(data, 0, block), info) * block
    chunk = max(1, min(K, int(memory_mb * _MB // per_particle)))
    values = torch.zeros(N, 4 + int(pareto_k), dtype=torch.float64)
    starts = list(range(0, N, block))
    with Progress(N, f"log p(x) by generic IS, K={K}", "datapoints", mode=progress) as bar:
        for i, start in enumerate(starts):
            if not owns(world, i):
                continue
            xb = slice_data(data, start, start + block)
            with torch.random.fork_rng(devices=[d.device for d in xb if d.is_cuda]):
                torch.manual_seed(derive_seed(seed, i))
                log_w = _block_log_weights(model, guide, xb, K, chunk, info)  # (K, B)
            log_px, se = log_mean_exp_stats(log_w)
            columns = [log_px, se, log_w.mean(0),
                       log_w.var(0) if K > 1 else torch.full_like(log_px, math.nan)]
            if pareto_k:
                columns.append(pareto_k_hat(log_w.T).to(log_px))
            values[start : start + log_w.shape[1]] = torch.stack(columns, 1).cpu()
            bar.update(log_w.shape[1])
    values = sum_across(values, world)
    return GenericPassResult(*(values[:, j] for j in range(4)),
                             pareto_k=values[:, 4] if pareto_k else None)


def estimate_log_px_generic(
    model,
    guide,
    data,
    *,
    num_samples: int = 5000,
    seed: int = 0,
    block_size: int | None = None,
    memory_mb: float = 128.0,
    world: World | None = None,
    pareto_k: bool = False,
    data_plate: str | None = None,
    progress: str = "off",
) -> LogPxEstimate:
    """The importance-weighted estimate log (1/K) Σ_k p(x, z_k)/q(z_k|x), z_k ~ q(z|x), of
    every datapoint, for any Pyro ``model`` and ``guide`` whose observations sit in a data
    plate (see :mod:`.program`): the IWAE_K lower bound on log p(x) in nats per datapoint,
    biased low by about se²/2 (Burda et al. 2016), the same figures as
    :func:`~pyro_vae.evaluation.estimate_log_px`.

    :param data: a tensor ``(N, ...)``, or a tuple of them, passed to ``model`` and
        ``guide`` as positional arguments, ``block_size`` rows at a time.
    :param num_samples: K, importance samples per datapoint.
    :param seed: block ``i`` draws from ``derive_seed(seed, i)``.
    :param block_size: datapoints per block (default: up to 128).
    :param memory_mb: approximate bound on the working memory of a chunk of particles.
    :param world: split the blocks across the ranks of this process group; every rank gets
        the whole result, the same as one process computes.
    :param pareto_k: also compute each datapoint's Pareto k̂ (needs K ≥ 21).
    :param data_plate: the name of the plate over the datapoints, when it cannot be told
        from the program (the plate of size N around every observed site).
    :param progress: ``"auto"``, ``"bar"``, ``"lines"`` or ``"off"``.

    >>> from pyro_vae import VAE
    >>> vae = VAE(6, latent_dim=2, hidden_sizes=(8,))
    >>> x = torch.bernoulli(torch.full((5, 6), 0.5))
    >>> est = estimate_log_px_generic(vae.model, vae.guide, x, num_samples=100)
    >>> est.log_px.shape, est.num_samples
    (torch.Size([5]), 100)
    >>> bool(-6 * math.log(2) - 3 < est.mean < 0)  # 6 Bernoulli pixels: around log 2⁻⁶
    True
    """
    r = generic_importance_pass(model, guide, data, num_samples=num_samples, seed=seed,
                                block_size=block_size, memory_mb=memory_mb, world=world,
                                pareto_k=pareto_k, data_plate=data_plate, progress=progress)
    return LogPxEstimate.of(r.log_px, r.log_px_mc_stderr, num_samples, r.pareto_k)
