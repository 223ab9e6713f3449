"""Evaluation of a trained VAE: the importance-weighted estimate of log p(x) per datapoint, its
Monte Carlo standard error, the Pareto k̂ reliability diagnostic, the test ELBO, the gap
between them, the KL to the prior per latent dimension and the number of active units.

Every figure is in nats per datapoint.

**log p(x).** For each datapoint x, draw z_1..z_K ~ q(z|x) and form the log-weights
log w_k = log p(x, z_k) − log q(z_k|x). Then

    log p̂_K(x) = log (1/K) Σ_k w_k                                   (Burda et al. 2016)

is the IWAE_K bound: E[log p̂_K(x)] ≤ log p(x) by Jensen's inequality, it is non-decreasing in
K (their Theorem 1), and it tends to log p(x) as K → ∞. For finite K it is **biased low**; the
delta method gives the bias ≈ −Var(w)/(2K E[w]²) = −se²/2 (Nowozin 2018, up to terms of
order 1/K²), which shrinks like 1/K. The per-datapoint Monte Carlo standard error from the same
weights is

    se(x) ≈ sd(w) / (√K · mean(w)) = √(Σ_k w̃_k² − 1/K),   w̃_k = w_k / Σ_j w_j,

(the delta method; Σ_k w̃_k² = 1/ESS), and the standard error of the mean over N datapoints is
√(Σ_i se(x_i)²) / N. Both rest on the weights having a finite variance, which the Pareto k̂
below checks.

**Pareto k̂.** The shape k of a generalized Pareto distribution fitted to the largest
importance weights (PSIS: Vehtari et al. 2024; as a diagnostic of variational inference: Yao
et al. 2018). k < 0.5: the weights have finite variance and the standard error above is
trustworthy; 0.5 ≤ k ≤ 0.7: finite mean, infinite variance, the estimate still converges but
slowly; k > 0.7: the estimate is unreliable at any practical K. Computed with
:func:`arviz.psislw` (:func:`pareto_k_hat`).

**Memory.** The datapoints are processed in blocks, and inside a block the decoder sees
chunks of (samples × datapoints) rows, both sized from ``memory_mb``, so peak memory does not
grow with K or N. The K log-weights of one block are kept until the block is done, for
log-sum-exp, the standard error and k̂, then dropped: the N × K log-weights (200 MB for the
MNIST test set at K = 5000) are never held at once.

**Threads.** On CPU the blocks go to ``num_workers`` threads, each running its ops on one
thread: no barrier per op, which on busy shared cores made torch's intra-op threading 2-5×
slower than a single thread here. Each block draws from its own seed, so the result does not
depend on the number of workers.
"""

from __future__ import annotations

import math
import sys
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np
import torch
from torch import nn
from torch.distributions import Normal, kl_divergence
from tqdm.auto import tqdm

from pyro_vae.errors import ConfigError
from pyro_vae.likelihoods import Bernoulli

__all__ = [
    "MIN_PSIS_SAMPLES",
    "PARETO_K_THRESHOLDS",
    "LogPxEstimate",
    "ReliabilityWarning",
    "active_units",
    "estimate_log_px",
    "evaluate",
    "pareto_k_hat",
]

MIN_PSIS_SAMPLES = 21  # below this the PSIS tail has fewer than 5 weights and k̂ is undefined
PARETO_K_THRESHOLDS = (0.5, 0.7, 1.0)  # Vehtari et al. (2024); Yao et al. (2018)
_MB = 2**20


class ReliabilityWarning(UserWarning):
    """Many datapoints have Pareto k̂ > 0.7: the importance-weighted estimate of log p(x) and
    its standard error are unreliable for them (Yao et al. 2018)."""


class LogPxEstimate(NamedTuple):
    """The importance-weighted (IWAE_K) estimate of log p(x), a lower bound in expectation.

    ``log_px``, ``log_px_stderr`` and ``pareto_k`` are ``(N,)`` tensors, one value per
    datapoint; the rest are floats in nats per datapoint.
    """

    log_px: torch.Tensor  # (N,) log (1/K) Σ_k w_k per datapoint
    mean: float  # mean of log_px over the N datapoints
    stderr: float  # Monte Carlo standard error of ``mean`` (delta method; NaN for K = 1)
    num_samples: int  # K
    pareto_k: torch.Tensor | None  # (N,) Pareto k̂ of each datapoint's weights, if asked for
    log_px_stderr: torch.Tensor  # (N,) Monte Carlo standard error of each log_px
    data_stderr: float  # sd of log_px over datapoints / √N: the spread from the choice of data


class _PassResult(NamedTuple):
    """Per-datapoint results of one importance-sampling pass, all ``(N,)`` (``kl``: (N, L))."""

    log_px: torch.Tensor
    log_px_se: torch.Tensor
    elbo_mc: torch.Tensor  # mean_k log w_k
    elbo_mc_var: torch.Tensor  # var_k log w_k (over the K samples)
    expected_loglik: torch.Tensor  # mean_k log p(x|z_k)
    loglik_var: torch.Tensor  # var_k log p(x|z_k)
    kl: torch.Tensor  # (N, L) KL(q(z_d|x) ‖ N(0, 1)), closed form
    pareto_k: torch.Tensor | None


# --- Pareto k̂ --------------------------------------------------------------------------------


def _import_arviz():
    with warnings.catch_warnings():
        # ArviZ 0.2x announces its coming refactor with a FutureWarning on import.
        warnings.simplefilter("ignore", FutureWarning)
        import arviz

    return arviz


def pareto_k_hat(log_weights) -> torch.Tensor:
    """Pareto k̂ of importance weights, one value per row: ``(..., K)`` log-weights → ``(...)``.

    Pass **log-weights** log w = log p(x, z) − log q(z|x) (not their negatives), samples on
    the last axis. Uses :func:`arviz.psislw` (Zhang & Stephens' fit of a generalized Pareto
    distribution to the largest ⌈min(K/5, 3√K)⌉ weights, regularized towards 0.5; Vehtari et
    al. 2024). Where the largest weights are all equal (e.g. q is the exact posterior and
    every weight is the same), the weights are bounded and ArviZ's +∞ is replaced by −∞, the
    limit of a point mass.

    >>> g = np.random.default_rng(0)
    >>> k = pareto_k_hat(g.exponential(1 / 2.0, size=(20, 4000)))  # weights ~ Pareto(α = 2)
    >>> bool(abs(float(k.mean()) - 0.5) < 0.1)                  # k = 1/α
    True
    """
    lw = log_weights.detach().cpu().double().numpy() if torch.is_tensor(log_weights) else (
        np.asarray(log_weights, dtype=np.float64))
    num_samples = lw.shape[-1]
    if num_samples < MIN_PSIS_SAMPLES:
        raise ConfigError(
            f"Pareto k̂ needs at least {MIN_PSIS_SAMPLES} importance samples per datapoint, "
            f"got {num_samples}"
        )
    if not np.isfinite(lw).all():
        raise ValueError("pareto_k_hat: log-weights must be finite")
    _, k = _import_arviz().psislw(lw)
    k = np.asarray(k, dtype=np.float64)
    # ArviZ returns +inf when fewer than 5 weights lie strictly above its tail cutoff, which
    # for K >= MIN_PSIS_SAMPLES happens only when the top weights tie: bounded weights.
    tail = math.ceil(min(num_samples / 5.0, 3.0 * math.sqrt(num_samples)))
    shifted = lw - lw.max(-1, keepdims=True)
    cutoff = np.maximum(np.sort(shifted, axis=-1)[..., -tail - 1], np.log(np.finfo(float).tiny))
    ties = (shifted > cutoff[..., None]).sum(-1) <= 4
    k = np.where(ties, -np.inf, k)
    return torch.as_tensor(k)


# --- the importance-sampling pass ---------------------------------------------------------------


def _log_likelihood(vae, z, x, context):
    """log p(x|z) summed over features: ``z (S, b, L)``, ``x (b, D)`` → ``(S, b)`` nats.

    For the Bernoulli likelihood log p(x|z) = Σ_d [x_d l_d − softplus(l_d)] with the logits
    l, written out because it is about three times faster than the generic path through
    ``Bernoulli.log_prob`` on CPU (tested equal in tests/test_evaluation.py).
    """
    params = vae.decoder(z, context)
    if type(vae.likelihood) is Bernoulli:
        out = torch.nn.functional.softplus(params)
        out.addcmul_(params, x, value=-1.0)  # softplus(l) − x·l = −log p(x_d|z)
        return -out.sum(-1)
    return vae.likelihood(params).log_prob(x).sum(-1)


def _bytes_per_row(vae, itemsize: int) -> int:
    """Rough working memory of one (sample, datapoint) row: z, the decoder's activations, the
    likelihood's parameters and two temporaries of the data's size."""
    hidden = sum(m.out_features for m in vae.decoder.modules() if isinstance(m, nn.Linear))
    return itemsize * (4 * vae.latent_dim + 2 * hidden + 3 * vae.x_dim)


def _layout(vae, n: int, num_samples: int, itemsize: int, memory_mb: float, batch_size):
    """(datapoints per block, datapoints per chunk, samples per chunk): each worker gets
    ``memory_mb``, half for the decoder's chunk of (samples × datapoints) rows and half for
    its block's two (K, block) buffers. The layout fixes which random numbers each datapoint
    sees, so it must not depend on the number of workers."""
    budget = memory_mb * _MB / 2
    rows = max(1, int(budget // _bytes_per_row(vae, itemsize)))
    if batch_size is None:
        # at most 128 datapoints a block, so that several workers share the work and the
        # progress bar moves; fewer when K × block won't fit
        batch_size = min(128, int(budget // (2 * num_samples * itemsize)))
    block = max(1, min(n, batch_size))
    if num_samples <= rows:
        samples = num_samples
        per_chunk = max(1, min(block, rows // num_samples))
    else:  # split K into equal chunks of at most ``rows`` samples, one datapoint at a time
        samples = math.ceil(num_samples / math.ceil(num_samples / rows))
        per_chunk = 1
    return block, per_chunk, samples


def _block(vae, xb, cb, K, per_chunk, samples, generator, pareto_k, on_progress) -> dict:
    """The importance-sampling pass over one block of datapoints ``xb (B, D)``; returns the
    per-datapoint results (see :class:`_PassResult`)."""
    B, L = xb.shape[0], vae.latent_dim
    loc, scale = vae.encode(xb, cb)  # (B, L) each
    log_w = xb.new_empty(K, B)
    log_lik = xb.new_empty(K, B)
    for j0 in range(0, B, per_chunk):
        j1 = min(B, j0 + per_chunk)
        xj, cj = xb[j0:j1], None if cb is None else cb[j0:j1]
        q = Normal(loc[j0:j1], scale[j0:j1], validate_args=False)
        for s0 in range(0, K, samples):
            s1 = min(K, s0 + samples)
            eps = torch.randn((s1 - s0, j1 - j0, L), generator=generator, dtype=xb.dtype,
                              device=xb.device)
            z = q.loc + q.scale * eps  # (S, b, L)
            ll = _log_likelihood(vae, z, xj, cj)  # (S, b)
            log_pz = Normal(0.0, 1.0, validate_args=False).log_prob(z).sum(-1)
            log_w[s0:s1, j0:j1] = ll + log_pz - q.log_prob(z).sum(-1)
            log_lik[s0:s1, j0:j1] = ll
        on_progress(j1 - j0)
    lse = torch.logsumexp(log_w, 0)
    sum_sq = torch.exp(torch.logsumexp(2 * (log_w - lse), 0))  # Σ_k w̃_k² = 1/ESS
    nan = torch.full_like(lse, math.nan)
    out = {
        "log_px": lse - math.log(K),
        "log_px_se": (sum_sq - 1.0 / K).clamp_min(0).sqrt() if K > 1 else nan,
        "elbo_mc": log_w.mean(0),
        "elbo_mc_var": log_w.var(0) if K > 1 else nan,
        "expected_loglik": log_lik.mean(0),
        "loglik_var": log_lik.var(0) if K > 1 else nan,
        "kl": kl_divergence(Normal(loc, scale), Normal(0.0, 1.0)),
        "pareto_k": None,
    }
    if pareto_k:  # in slices: ArviZ copies its input three times in float64
        out["pareto_k"] = torch.cat([pareto_k_hat(log_w[:, p0 : p0 + 64].T)
                                     for p0 in range(0, B, 64)]).to(xb.device)
    return out


@torch.no_grad()
def _importance_pass(vae, x, context, num_samples, *, memory_mb, batch_size, generator,
                     progress, pareto_k, num_workers) -> _PassResult:
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples <= 0:
        raise ConfigError(f"num_samples must be a positive integer, got {num_samples!r}")
    if not memory_mb > 0:
        raise ConfigError(f"memory_mb must be positive, got {memory_mb!r}")
    if pareto_k and num_samples < MIN_PSIS_SAMPLES:
        raise ConfigError(
            f"Pareto k̂ needs num_samples >= {MIN_PSIS_SAMPLES}, got {num_samples}"
        )
    vae.check_data(x, where="evaluation data")
    if num_workers is None:
        num_workers = torch.get_num_threads() if x.device.type == "cpu" else 1
    workers = max(1, int(num_workers))
    K, N = num_samples, x.shape[0]
    block, per_chunk, samples = _layout(vae, N, K, x.element_size(), memory_mb, batch_size)
    starts = range(0, N, block)
    # One seed per block, drawn up front: the result does not depend on the worker count.
    seed_device = generator.device if generator is not None else "cpu"
    seeds = torch.randint(0, 2**62, (len(starts),), generator=generator, device=seed_device)

    bar = tqdm(total=N, desc=f"log p(x), K={K}", unit="datapoint", disable=not progress,
               file=sys.stderr, leave=False)
    lock = threading.Lock()

    def on_progress(n):
        with lock:
            bar.update(n)

    def run(i):
        start = starts[i]
        g = torch.Generator(device=x.device).manual_seed(int(seeds[i]))
        cb = None if context is None else context[start : start + block]
        with torch.no_grad():  # grad mode is per thread: the workers' must be set again
            return _block(vae, x[start : start + block], cb, K, per_chunk, samples, g,
                          pareto_k, on_progress)

    if workers == 1:
        results = [run(i) for i in range(len(starts))]
    else:
        # Blocks in parallel, each op on one thread: unlike intra-op threading this needs no
        # barrier per op, which on a busy machine costs more than the threads gain.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with ThreadPoolExecutor(workers) as pool:
                results = list(pool.map(run, range(len(starts))))
        finally:
            torch.set_num_threads(threads)
    bar.close()
    return _PassResult(**{
        name: None if results[0][name] is None else torch.cat([r[name] for r in results])
        for name in _PassResult._fields
    })


def estimate_log_px(
    vae,
    x: torch.Tensor,
    context: torch.Tensor | None = None,
    *,
    num_samples: int = 5000,
    batch_size: int | None = None,
    memory_mb: float = 128.0,
    generator: torch.Generator | None = None,
    progress: bool = False,
    pareto_k: bool = False,
    num_workers: int | None = None,
) -> LogPxEstimate:
    """The importance-weighted estimate log (1/K) Σ_k p(x, z_k)/q(z_k|x), z_k ~ q(z|x), of
    every datapoint of ``x`` ``(N, x_dim)``, in nats (see the module docstring).

    This is the IWAE_K lower bound on log p(x) (Burda et al. 2016): biased low by about
    se²/2 per datapoint, a bias that shrinks like 1/K.

    :param num_samples: K, importance samples per datapoint.
    :param batch_size: datapoints per block (default: as many as ``memory_mb`` allows).
    :param memory_mb: approximate bound on each worker's working memory, whatever K and N.
    :param generator: the source of the samples (default: torch's global generator).
    :param pareto_k: also compute each datapoint's Pareto k̂ (needs K ≥ 21).
    :param num_workers: blocks evaluated at once, each op on one thread (default: torch's
        thread count on CPU, 1 on CUDA); torch's thread count is set to 1 meanwhile. The
        result does not depend on it: each block draws from its own seed, taken from
        ``generator``.
    :returns: :class:`LogPxEstimate`.

    >>> import torch
    >>> from pyro_vae import VAE
    >>> vae = VAE(6, latent_dim=2, hidden_sizes=(8,))
    >>> x = torch.bernoulli(torch.full((5, 6), 0.5))
    >>> est = estimate_log_px(vae, x, num_samples=100)
    >>> est.log_px.shape, est.num_samples
    (torch.Size([5]), 100)
    >>> bool(-6 * math.log(2) - 3 < est.mean < 0)  # 6 Bernoulli pixels: around log 2⁻⁶
    True
    """
    r = _importance_pass(vae, x, context, num_samples, memory_mb=memory_mb,
                         batch_size=batch_size, generator=generator, progress=progress,
                         pareto_k=pareto_k, num_workers=num_workers)
    n = r.log_px.shape[0]
    return LogPxEstimate(
        log_px=r.log_px,
        mean=float(r.log_px.mean()),
        stderr=float(r.log_px_se.double().pow(2).sum().sqrt()) / n,
        num_samples=num_samples,
        pareto_k=r.pareto_k,
        log_px_stderr=r.log_px_se,
        data_stderr=float(r.log_px.double().std()) / math.sqrt(n) if n > 1 else math.nan,
    )


@torch.no_grad()
def active_units(vae, x: torch.Tensor, context=None, *, threshold: float = 0.01,
                 batch_size: int = 1000):
    """The number of active latent units (Burda et al. 2016): dimension d is
    active if A_d = Cov_x(E_{q(z|x)}[z_d]) > ``threshold``, the variance over the datapoints
    of ``x`` of the posterior mean.

    :returns: ``(count, variances)``, an int and the ``(L,)`` tensor of A_d.
    """
    locs = []
    for start in range(0, x.shape[0], batch_size):
        cb = None if context is None else context[start : start + batch_size]
        locs.append(vae.encode(x[start : start + batch_size], cb)[0])
    loc = torch.cat(locs).double()
    variances = loc.var(0) if loc.shape[0] > 1 else torch.zeros_like(loc[0])
    return int((variances > threshold).sum()), variances


# --- the report ---------------------------------------------------------------------------------


def _finite_or_none(value):
    value = float(value)
    return value if math.isfinite(value) else None


def _pareto_summary(k: torch.Tensor) -> dict:
    k = k.double()
    n = k.numel()
    summary = {
        "meaning": "Pareto shape of each datapoint's largest importance weights (PSIS; "
        "Vehtari et al. 2024, Yao et al. 2018): < 0.5 finite variance, the standard error is "
        "trustworthy; 0.5-0.7 finite mean, slow convergence; > 0.7 unreliable at any "
        "practical K",
        "computed_with": "arviz.psislw",
        "num_datapoints": n,
    }
    for q, name in ((0.5, "median"), (0.9, "q90"), (0.99, "q99")):
        summary[name] = _finite_or_none(torch.quantile(k, q, interpolation="nearest"))
    summary["max"] = _finite_or_none(k.max())
    for t in PARETO_K_THRESHOLDS:
        summary[f"fraction_above_{t}"] = float((k > t).double().mean())
    summary["values"] = [_finite_or_none(v) for v in k.tolist()]  # −∞ (equal weights): null
    return summary


def evaluate(
    vae,
    x: torch.Tensor,
    context: torch.Tensor | None = None,
    *,
    num_samples: int = 5000,
    batch_size: int | None = None,
    memory_mb: float = 128.0,
    generator: torch.Generator | None = None,
    progress: bool = False,
    pareto_k: bool = True,
    active_threshold: float = 0.01,
    num_workers: int | None = None,
) -> dict:
    """All evaluation figures of ``vae`` on ``x`` from one pass of K importance samples per
    datapoint, as a JSON-ready dict (nats per datapoint):

    - ``log_px``: the IWAE_K estimate of log p(x), its Monte Carlo standard error (delta
      method, given these datapoints) and its spread over datapoints (sd / √N);
    - ``elbo``: the test ELBO, analytic-KL form E_q[log p(x|z)] − KL(q ‖ p(z)) and Monte Carlo
      form E_q[log p(x,z) − log q(z|x)], both on the same K samples;
    - ``gap``: log p̂(x) − ELBO (Monte Carlo form, same samples: ≥ 0 for every datapoint), an
      estimate of E_x KL(q(z|x) ‖ p(z|x)), low by the IWAE_K bias since log p̂ underestimates
      log p(x);
    - ``kl_to_prior``: KL(q(z|x) ‖ p(z)) per latent dimension, averaged over x;
    - ``active_units``: Burda et al. (2016)'s count, Cov_x(E_q[z_d]) > ``active_threshold``;
    - ``pareto_k``: a summary of the per-datapoint k̂ and the values (when ``pareto_k`` and
      K ≥ 21);
    - ``per_datapoint``: log p̂(x), its standard error and the ELBO of every datapoint.

    Issues a :class:`ReliabilityWarning` (and lists it under ``warnings``) when more than 1 %
    of the datapoints have k̂ > 0.7. The arguments are those of :func:`estimate_log_px`.
    """
    t0 = time.perf_counter()
    want_k = pareto_k and num_samples >= MIN_PSIS_SAMPLES
    r = _importance_pass(vae, x, context, num_samples, memory_mb=memory_mb,
                         batch_size=batch_size, generator=generator, progress=progress,
                         pareto_k=want_k, num_workers=num_workers)
    n, K = r.log_px.shape[0], num_samples
    seconds = time.perf_counter() - t0

    def mean(t):
        return float(t.double().mean())

    def mc_se(var_sum):  # standard error of a mean of N independent estimates
        return _finite_or_none(var_sum.double().sum().sqrt() / n)

    def data_se(t):
        return _finite_or_none(t.double().std() / math.sqrt(n)) if n > 1 else None

    elbo_analytic = r.expected_loglik - r.kl.sum(-1)
    gap = r.log_px - r.elbo_mc  # ≥ 0 datapoint by datapoint (Jensen, on the same samples)
    log_px_se2 = r.log_px_se.double().pow(2)
    count, variances = active_units(vae, x, context, threshold=active_threshold)
    kl_per_dim = r.kl.double().mean(0)
    report = {
        "units": "nats per datapoint",
        "num_samples": K,
        "num_datapoints": n,
        "log_px": {
            "what": f"IWAE_{K} estimate of log p(x) (Burda et al. 2016): a lower bound in "
            "expectation, biased low by about mc_stderr_per_datapoint^2/2, shrinking like 1/K",
            "mean": mean(r.log_px),
            "mc_stderr": mc_se(log_px_se2),
            "data_stderr": data_se(r.log_px),
            "mean_mc_stderr_per_datapoint": mean(r.log_px_se),
            "estimated_bias": -float(log_px_se2.mean()) / 2,
        },
        "elbo": {
            "what": "test ELBO, a lower bound on log p(x), on the same K samples per datapoint",
            "analytic_kl": {"mean": mean(elbo_analytic),
                            "mc_stderr": mc_se(r.loglik_var / K),
                            "data_stderr": data_se(elbo_analytic)},
            "monte_carlo": {"mean": mean(r.elbo_mc), "mc_stderr": mc_se(r.elbo_mc_var / K),
                            "data_stderr": data_se(r.elbo_mc)},
        },
        "gap": {
            "what": "log_px - elbo.monte_carlo (same samples, so >= 0 for every datapoint): "
            "an estimate of the mean KL(q(z|x) || p(z|x)), low by the IWAE_K bias; mc_stderr "
            "adds the two in quadrature (conservative: they are positively correlated)",
            "mean": mean(gap),
            "mc_stderr": _finite_or_none((log_px_se2.sum() + (r.elbo_mc_var.double() / K).sum())
                                         .sqrt() / n),
            "data_stderr": data_se(gap),
        },
        "kl_to_prior": {
            "what": "KL(q(z|x) || p(z)) in closed form, averaged over the data",
            "total": float(kl_per_dim.sum()),
            "per_dimension": kl_per_dim.tolist(),
        },
        "active_units": {
            "what": "latent dimensions d with Cov_x(E_q[z_d]) > threshold (Burda et al. 2016)",
            "count": count,
            "threshold": active_threshold,
            "latent_dim": vae.latent_dim,
            "variances": variances.tolist(),
        },
        "pareto_k": _pareto_summary(r.pareto_k) if want_k else None,
        "per_datapoint": {
            "what": "in the order of the data: log_px (IWAE_K), its Monte Carlo standard "
            "error, and the Monte Carlo ELBO",
            "log_px": r.log_px.tolist(),
            "log_px_mc_stderr": [_finite_or_none(v) for v in r.log_px_se.tolist()],
            "elbo_monte_carlo": r.elbo_mc.tolist(),
        },
        "warnings": [],
        "seconds": seconds,
    }
    if pareto_k and not want_k:
        report["warnings"].append(
            f"Pareto k̂ not computed: it needs num_samples >= {MIN_PSIS_SAMPLES}, got {K}"
        )
    if want_k:
        frac = report["pareto_k"]["fraction_above_0.7"]
        if frac > 0.01:
            message = (
                f"{100 * frac:.1f}% of the datapoints have Pareto k̂ > 0.7: their importance "
                "weights are too heavy-tailed for log p(x) and its standard error to be "
                "reliable (Yao et al. 2018); the mean is still a valid lower bound"
            )
            report["warnings"].append(message)
            warnings.warn(message, ReliabilityWarning, stacklevel=2)
    return report
