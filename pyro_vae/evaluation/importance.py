"""Importance sampling with the encoder as proposal: the IWAE_K estimate of log p(x) per
datapoint for the built-in :class:`~pyro_vae.VAE`, fast and in bounded memory.

For each datapoint x, draw z_1..z_K ~ q(z|x) and form the log-weights
log w_k = log p(x, z_k) − log q(z_k|x). Then

    log p̂_K(x) = log (1/K) Σ_k w_k                                   (Burda et al. 2016)

is the IWAE_K bound: E[log p̂_K(x)] ≤ log p(x) by Jensen's inequality, it is non-decreasing in
K (their Theorem 1), and it tends to log p(x) as K → ∞. For finite K it is **biased low**; the
delta method gives the bias ≈ −Var(w)/(2K E[w]²) = −se²/2 (Nowozin 2018, up to terms of
order 1/K²). The per-datapoint Monte Carlo standard error from the same weights is

    se(x) ≈ sd(w) / (√K · mean(w)) = √(Σ_k w̃_k² − 1/K),   w̃_k = w_k / Σ_j w_j,

and the standard error of the mean over N datapoints is √(Σ_i se(x_i)²) / N. Both rest on the
weights having a finite variance, which the Pareto k̂ (:mod:`.psis`) checks.

**Memory.** The datapoints are processed in blocks, and inside a block the decoder sees chunks
of (samples × datapoints) rows, both sized from ``memory_mb`` (:class:`Layout`), so peak memory
does not grow with K or N: the N × K log-weights are never held at once.

**Threads and processes.** Block ``i`` draws from a generator seeded with
``derive_seed(seed, i)``, so the result does not depend on how the blocks are shared out: on
CPU among ``num_workers`` threads (each op on one thread, no barrier per op, which on busy
shared cores made torch's intra-op threading slower than one thread), and under
``torchrun`` among the ranks of ``world`` (block ``i`` on rank ``i mod world_size``).
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import torch
from torch import nn
from torch.distributions import Normal, kl_divergence

from pyro_vae.distributed import World, derive_seed, owns, sum_across
from pyro_vae.errors import ConfigError
from pyro_vae.evaluation.psis import MIN_PSIS_SAMPLES, pareto_k_hat
from pyro_vae.progress import Progress
from pyro_vae.resources import check_fits, format_bytes

__all__ = ["Layout", "LogPxEstimate", "PassResult", "estimate_log_px", "importance_pass",
           "subset_sizes"]

_MB = 2**20


class LogPxEstimate(NamedTuple):
    """The importance-weighted (IWAE_K) estimate of log p(x), a lower bound in expectation;
    ``(N,)`` tensors per datapoint, floats in nats per datapoint for the mean."""

    log_px: torch.Tensor  # (N,) log (1/K) Σ_k w_k per datapoint
    log_px_mc_stderr: torch.Tensor  # (N,) Monte Carlo standard error of each log_px
    mean: float  # mean of log_px over the N datapoints
    mean_mc_stderr: float  # Monte Carlo standard error of ``mean`` (NaN for K = 1)
    data_stderr: float  # sd of log_px over datapoints / √N: the spread from the choice of data
    num_samples: int  # K, importance samples per datapoint
    pareto_k: torch.Tensor | None  # (N,) Pareto k̂ of each datapoint's weights, if asked for

    @classmethod
    def of(cls, log_px: torch.Tensor, log_px_mc_stderr: torch.Tensor, num_samples: int,
           pareto_k: torch.Tensor | None = None) -> LogPxEstimate:
        """The estimate of these per-datapoint values, with its means and standard errors."""
        n = log_px.shape[0]
        return cls(log_px=log_px, log_px_mc_stderr=log_px_mc_stderr, mean=float(log_px.mean()),
                   mean_mc_stderr=float(log_px_mc_stderr.pow(2).sum().sqrt()) / n,
                   data_stderr=float(log_px.std()) / math.sqrt(n) if n > 1 else math.nan,
                   num_samples=num_samples, pareto_k=pareto_k)


class PassResult(NamedTuple):
    """Per-datapoint results of one importance-sampling pass, each ``(N,)`` (``kl``:
    ``(N, L)``), float64 on the CPU."""

    log_px: torch.Tensor  # log (1/K) Σ_k w_k
    log_px_mc_stderr: torch.Tensor
    elbo_mc: torch.Tensor  # mean_k log w_k
    elbo_mc_var: torch.Tensor  # var_k log w_k (over the K samples)
    expected_loglik: torch.Tensor  # mean_k log p(x|z_k)
    loglik_var: torch.Tensor  # var_k log p(x|z_k)
    kl: torch.Tensor  # (N, L) KL(q(z_d|x) ‖ N(0, 1)), closed form
    pareto_k: torch.Tensor | None
    log_px_by_k: dict  # k → (N,) IWAE_k from the first k of the same K samples, k < K


def subset_sizes(num_samples: int) -> list[int]:
    """The k < K at which IWAE_k is also reported (from the first k of the K samples):
    1, 3, 10, 30, … — the curve of the bound against K at no extra cost.

    >>> subset_sizes(5000)
    [1, 3, 10, 30, 100, 300, 1000, 3000]
    """
    return [k for k in (1, 3, 10, 30, 100, 300, 1000, 3000, 10000, 30000) if k < num_samples]


class Layout(NamedTuple):
    """How one pass cuts its work, from the memory budget: it fixes which random numbers each
    datapoint sees, so it depends on neither the worker count nor the ranks."""

    block: int  # datapoints per block (one seed each)
    per_chunk: int  # datapoints per decoder chunk
    samples: int  # samples per decoder chunk
    budget_bytes: float  # half the memory budget: for the decoder's chunk, or for PSIS

    @classmethod
    def fit(cls, vae, num_datapoints: int, num_samples: int, itemsize: int,
            memory_mb: float, block: int | None = None) -> Layout:
        """Half of ``memory_mb`` for the decoder's chunk of (samples × datapoints) rows and
        half for the block's two (K, block) buffers."""
        budget = memory_mb * _MB / 2
        if 2 * num_samples * itemsize > budget:
            need = format_bytes(2 * num_samples * itemsize)
            raise ConfigError(
                f"K = {num_samples} importance samples need {need} for one datapoint's "
                f"log-weights, more than half of the {memory_mb:g} MB memory budget "
                "(--memory-mb); raise the budget or lower K")
        hidden = sum(m.out_features for m in vae.decoder.modules() if isinstance(m, nn.Linear))
        row_bytes = itemsize * (4 * vae.latent_dim + 2 * hidden + 3 * vae.x_dim)
        rows = max(1, int(budget // row_bytes))
        if block is None:  # at most 128 datapoints, so that workers share and progress moves
            block = min(128, int(budget // (2 * num_samples * itemsize)))
        block = max(1, min(num_datapoints, block))
        if num_samples <= rows:
            return cls(block, max(1, min(block, rows // num_samples)), num_samples, budget)
        # split K into equal chunks of at most ``rows`` samples, one datapoint at a time
        return cls(block, 1, math.ceil(num_samples / math.ceil(num_samples / rows)), budget)


def _block(vae, xb: torch.Tensor, K: int, layout: Layout, generator, want_k: bool,
           progress: Progress) -> torch.Tensor:
    """The pass over one block ``xb (B, D)``: ``(B, 6 + S + L [+ 1])`` columns: those of
    :class:`PassResult` in its field order, with the S subset bounds after the first six."""
    B, L = xb.shape[0], vae.latent_dim
    loc, scale = vae.encode(xb)  # (B, L) each
    log_w = xb.new_empty(K, B)
    log_lik = xb.new_empty(K, B)
    prior = Normal(0.0, 1.0, validate_args=False)
    for j0 in range(0, B, layout.per_chunk):
        j1 = min(B, j0 + layout.per_chunk)
        q = Normal(loc[j0:j1], scale[j0:j1], validate_args=False)
        for s0 in range(0, K, layout.samples):
            s1 = min(K, s0 + layout.samples)
            eps = torch.randn((s1 - s0, j1 - j0, L), generator=generator, dtype=xb.dtype,
                              device=xb.device)
            z = q.loc + q.scale * eps  # (S, b, L)
            ll = vae.likelihood.log_prob_sum(vae.decoder(z), xb[j0:j1])  # (S, b)
            log_w[s0:s1, j0:j1] = ll + prior.log_prob(z).sum(-1) - q.log_prob(z).sum(-1)
            log_lik[s0:s1, j0:j1] = ll
        progress.update(j1 - j0)
    lse = torch.logsumexp(log_w, 0)
    sum_sq = torch.exp(torch.logsumexp(2 * (log_w - lse), 0))  # Σ_k w̃_k² = 1/ESS
    nan = torch.full_like(lse, math.nan)
    columns = [
        lse - math.log(K),
        (sum_sq - 1.0 / K).clamp_min(0).sqrt() if K > 1 else nan,
        log_w.mean(0),
        log_w.var(0) if K > 1 else nan,
        log_lik.mean(0),
        log_lik.var(0) if K > 1 else nan,
    ]
    columns += [torch.logsumexp(log_w[:k], 0) - math.log(k) for k in subset_sizes(K)]
    out = torch.cat([torch.stack(columns, 1),
                     kl_divergence(Normal(loc, scale), Normal(0.0, 1.0))], 1)
    if want_k:  # in slices: ArviZ copies its input about four times in float64
        rows = max(1, min(64, int(layout.budget_bytes // (32 * K))))
        k = torch.cat([pareto_k_hat(log_w[:, p0 : p0 + rows].T) for p0 in range(0, B, rows)])
        out = torch.cat([out, k.to(out).unsqueeze(1)], 1)
    return out.double().cpu()


@torch.no_grad()
def _run_blocks(run, blocks: list[int], workers: int) -> None:
    """``run(i)`` for each block ``i``: in this thread, or on ``workers`` threads of one torch
    thread each (the blocks write disjoint rows)."""
    if workers == 1 or len(blocks) == 1:
        for i in blocks:
            run(i)
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(run, blocks))
    finally:
        torch.set_num_threads(threads)


def check_sampling_arguments(num_samples: int, memory_mb: float, pareto_k: bool) -> None:
    """Refuse, with a :class:`ConfigError`, a K that is not a positive integer, a memory
    budget that is not positive, or Pareto k̂ asked of fewer samples than PSIS needs; shared
    by this fast path and :mod:`.generic`."""
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples <= 0:
        raise ConfigError(f"num_samples must be a positive integer, got {num_samples!r}")
    if not memory_mb > 0:
        raise ConfigError(f"memory_mb must be positive, got {memory_mb!r}")
    if pareto_k and num_samples < MIN_PSIS_SAMPLES:
        raise ConfigError(f"Pareto k-hat needs num_samples >= {MIN_PSIS_SAMPLES}, got "
                          f"{num_samples}")


def importance_pass(
    vae,
    x: torch.Tensor,
    *,
    num_samples: int,
    seed: int = 0,
    memory_mb: float = 128.0,
    block_size: int | None = None,
    num_workers: int | None = None,
    world: World | None = None,
    pareto_k: bool = False,
    progress: str = "off",
) -> PassResult:
    """One pass of K = ``num_samples`` importance samples per datapoint of ``x``
    ``(N, x_dim)`` (see the module docstring); the arguments are :func:`estimate_log_px`'s."""
    check_sampling_arguments(num_samples, memory_mb, pareto_k)
    structure = getattr(vae, "structure", None)
    if structure is not None and (structure.flow is not None or structure.stochastic_layers > 1):
        raise ConfigError(
            f"the fast importance sampler takes the one-layer VAE with a Gaussian guide; this "
            f"{type(vae).__name__} (structure {getattr(vae, 'structure', '?')}) needs the "
            "generic one, pyro_vae.evaluation.generic")
    vae.check_data(x, where="evaluation data")
    K, N, L = num_samples, x.shape[0], vae.latent_dim
    workers = (torch.get_num_threads() if x.device.type == "cpu" else 1) if num_workers is None \
        else max(1, int(num_workers))
    check_fits(memory_mb * _MB * workers, f"a memory budget of {memory_mb:g} MB for each of "
               f"{workers} worker(s)", "lower the budget (--memory-mb)", device=x.device)
    layout = Layout.fit(vae, N, K, x.element_size(), memory_mb, block_size)
    starts = list(range(0, N, layout.block))
    mine = [i for i in range(len(starts)) if owns(world, i)]
    ks = subset_sizes(K)
    values = torch.zeros(N, 6 + len(ks) + L + int(pareto_k), dtype=torch.float64)

    with Progress(N, f"log p(x), K={K}", "datapoints", mode=progress) as bar:

        def run(i: int) -> None:
            start = starts[i]
            generator = torch.Generator(device=x.device).manual_seed(derive_seed(seed, i))
            with torch.no_grad():  # grad mode is per thread: the workers' must be set again
                out = _block(vae, x[start : start + layout.block], K, layout, generator,
                             pareto_k, bar)
            values[start : start + out.shape[0]] = out

        _run_blocks(run, mine, workers)
    values = sum_across(values, world)
    fields = [values[:, i] for i in range(6)]
    S = len(ks)
    return PassResult(*fields, kl=values[:, 6 + S : 6 + S + L],
                      pareto_k=values[:, -1] if pareto_k else None,
                      log_px_by_k={k: values[:, 6 + i] for i, k in enumerate(ks)})


def estimate_log_px(
    vae,
    x: torch.Tensor,
    *,
    num_samples: int = 5000,
    seed: int = 0,
    memory_mb: float = 128.0,
    block_size: int | None = None,
    num_workers: int | None = None,
    world: World | None = None,
    pareto_k: bool = False,
    progress: str = "off",
) -> LogPxEstimate:
    """The importance-weighted estimate log (1/K) Σ_k p(x, z_k)/q(z_k|x), z_k ~ q(z|x), of
    every datapoint of ``x`` ``(N, x_dim)``, in nats: the IWAE_K lower bound on log p(x)
    (Burda et al. 2016), biased low by about se²/2 per datapoint (see the module docstring).

    :param num_samples: K, importance samples per datapoint.
    :param seed: block ``i`` draws from ``derive_seed(seed, i)``.
    :param memory_mb: approximate bound on each worker's working memory, whatever K and N.
    :param block_size: datapoints per block (default: as many as ``memory_mb`` allows, ≤ 128).
    :param num_workers: blocks evaluated at once on CPU, each op on one thread (default:
        torch's thread count; 1 on CUDA). The result does not depend on it.
    :param world: split the blocks across the ranks of this process group; every rank gets
        the whole result, the same as one process computes.
    :param pareto_k: also compute each datapoint's Pareto k̂ (needs K ≥ 21).
    :param progress: ``"auto"``, ``"bar"``, ``"lines"`` or ``"off"`` (:mod:`pyro_vae.progress`).

    >>> from pyro_vae import VAE
    >>> vae = VAE(6, latent_dim=2, hidden_sizes=(8,))
    >>> x = torch.bernoulli(torch.full((5, 6), 0.5))
    >>> est = estimate_log_px(vae, x, num_samples=100)
    >>> est.log_px.shape, est.num_samples
    (torch.Size([5]), 100)
    >>> bool(-6 * math.log(2) - 3 < est.mean < 0)  # 6 Bernoulli pixels: around log 2⁻⁶
    True
    """
    r = importance_pass(vae, x, num_samples=num_samples, seed=seed, memory_mb=memory_mb,
                        block_size=block_size, num_workers=num_workers, world=world,
                        pareto_k=pareto_k, progress=progress)
    return LogPxEstimate.of(r.log_px, r.log_px_mc_stderr, num_samples, r.pareto_k)
