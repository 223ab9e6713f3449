"""Evaluation of a trained VAE: log p(x) and the figures around it, in nats per datapoint.

=====================  ========================================================
:mod:`.importance`     IWAE_K estimate of log p(x) for the built-in VAE (fast path)
:mod:`.psis`           Pareto k̂ of importance weights (reliability)
:mod:`.elbo`           the test ELBO that training reports
:mod:`.report`         the report of ``pyro-vae evaluate``; active units
=====================  ========================================================

See ``docs/evaluation.md``.
"""

from pyro_vae.evaluation.elbo import mean_elbo
from pyro_vae.evaluation.importance import (
    Layout,
    LogPxEstimate,
    PassResult,
    estimate_log_px,
    importance_pass,
)
from pyro_vae.evaluation.psis import (
    MIN_PSIS_SAMPLES,
    PARETO_K_THRESHOLDS,
    pareto_k_hat,
    pareto_k_summary,
)
from pyro_vae.evaluation.report import ReliabilityWarning, active_units, evaluate

__all__ = [
    "MIN_PSIS_SAMPLES",
    "PARETO_K_THRESHOLDS",
    "Layout",
    "LogPxEstimate",
    "PassResult",
    "ReliabilityWarning",
    "active_units",
    "estimate_log_px",
    "evaluate",
    "importance_pass",
    "mean_elbo",
    "pareto_k_hat",
    "pareto_k_summary",
]
