"""Pareto k̂ of importance weights (PSIS: Vehtari et al. 2024; as a diagnostic of variational
inference: Yao et al. 2018), the shape of a generalized Pareto distribution fitted to the
largest weights. k̂ < 0.5: finite variance, the standard error holds; 0.5–0.7: finite mean,
slow convergence; > 0.7: unreliable at any practical number of samples.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch

from pyro_vae import checks
from pyro_vae.errors import ConfigError, DataError

__all__ = ["MIN_PSIS_SAMPLES", "PARETO_K_THRESHOLDS", "pareto_k_hat", "pareto_k_summary"]

MIN_PSIS_SAMPLES = 21  # below this the PSIS tail has fewer than 5 weights and k̂ is undefined
PARETO_K_THRESHOLDS = (0.5, 0.7, 1.0)  # Vehtari et al. (2024); Yao et al. (2018)


def _import_arviz():
    with warnings.catch_warnings():
        # ArviZ 0.2x announces its coming refactor with a FutureWarning on import.
        warnings.simplefilter("ignore", FutureWarning)
        import arviz

    return arviz


def pareto_k_hat(log_weights) -> torch.Tensor:
    """Pareto k̂ of importance weights, one value per row: ``(..., K)`` log-weights → ``(...)``.

    Pass **log-weights** log w = log p(x, z) − log q(z|x) (not their negatives), samples on
    the last axis; :func:`arviz.psislw` fits the largest ⌈min(K/5, 3√K)⌉. Where those are all
    equal (q is the exact posterior, say), k̂ is −∞, the limit of bounded weights.

    >>> g = np.random.default_rng(0)
    >>> k = pareto_k_hat(g.exponential(1 / 2.0, size=(20, 4000)))  # weights ~ Pareto(α = 2)
    >>> bool(abs(float(k.mean()) - 0.5) < 0.1)                  # k = 1/α
    True
    """
    lw = log_weights.detach().cpu().double().numpy() if torch.is_tensor(log_weights) else (
        np.asarray(log_weights, dtype=np.float64))
    if lw.ndim == 0:
        raise DataError("pareto_k_hat: log-weights need their samples on the last axis, found "
                        "one number")
    num_samples = lw.shape[-1]
    if num_samples < MIN_PSIS_SAMPLES:
        raise ConfigError(
            f"Pareto k-hat needs at least {MIN_PSIS_SAMPLES} importance samples per datapoint, "
            f"got {num_samples}"
        )
    if not np.isfinite(lw).all():
        raise DataError(f"pareto_k_hat: log-weights must be finite, found "
                        f"{int((~np.isfinite(lw)).sum())} of {lw.size} that are not")
    with np.errstate(divide="ignore", invalid="ignore"):  # ties are handled below
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


def _finite_or_none(value):
    value = float(value)
    return value if math.isfinite(value) else None


def pareto_k_summary(k: torch.Tensor) -> dict:
    """Quantiles of per-datapoint k̂, the fraction above each threshold, and the values
    (``None`` where k̂ is −∞: bounded weights), ready for JSON."""
    k = checks.tensor("pareto_k_summary: k", k, shape=(None,), finite=False).double()
    summary = {
        "meaning": "Pareto shape of each datapoint's largest importance weights (PSIS; "
        "Vehtari et al. 2024, Yao et al. 2018): < 0.5 finite variance, the standard error is "
        "trustworthy; 0.5-0.7 finite mean, slow convergence; > 0.7 unreliable at any "
        "practical K",
        "computed_with": "arviz.psislw",
        "num_datapoints": k.numel(),
    }
    for q, name in ((0.5, "median"), (0.9, "q90"), (0.99, "q99")):
        summary[name] = _finite_or_none(torch.quantile(k, q, interpolation="nearest"))
    summary["max"] = _finite_or_none(k.max())
    for t in PARETO_K_THRESHOLDS:
        summary[f"fraction_above_{t}"] = float((k > t).double().mean())
    summary["values"] = [_finite_or_none(v) for v in k.tolist()]
    return summary
