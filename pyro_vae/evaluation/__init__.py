"""Evaluation of a trained VAE, or of any Pyro model and guide: log p(x) and the figures
around it, in nats per datapoint.

=====================  ========================================================
:mod:`.importance`     IWAE_K estimate of log p(x) for the built-in VAE (fast path)
:mod:`.generic`        the same for any Pyro model and guide, from Pyro's traces
:mod:`.program`        a Pyro model and guide read as per-datapoint log-densities
:mod:`.targets`        p(x, z) and AIS's start distribution on unconstrained latents
:mod:`.hmc`            HMC transitions with per-datapoint step-size adaptation
:mod:`.ais`            annealed importance sampling: a stochastic lower bound
:mod:`.bdmc`           bidirectional Monte Carlo: bounds on both sides, on simulated data
:mod:`.gaps`           the amortization and approximation gaps per datapoint
:mod:`.psis`           Pareto k̂ of importance weights (reliability)
:mod:`.elbo`           the test ELBO that training reports
:mod:`.report`         the report of ``pyro-vae evaluate``; active units
=====================  ========================================================

See ``docs/evaluation.md``.
"""

from pyro_vae.evaluation.ais import SCHEDULES, AISEstimate, AISSettings, ais, annealing_schedule
from pyro_vae.evaluation.bdmc import BDMCResult, bdmc
from pyro_vae.evaluation.elbo import mean_elbo
from pyro_vae.evaluation.gaps import (
    GapSettings,
    GapsResult,
    fit_diagonal_gaussian,
    inference_gaps,
)
from pyro_vae.evaluation.generic import (
    GenericPassResult,
    estimate_log_px_generic,
    generic_importance_pass,
)
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
from pyro_vae.evaluation.report import (
    ReliabilityWarning,
    active_units,
    ais_report,
    bdmc_section,
    evaluate,
    gaps_section,
    generic_is_report,
)
from pyro_vae.evaluation.targets import (
    START_DISTRIBUTIONS,
    ProgramTarget,
    VAETarget,
    target_for,
)

__all__ = [
    "MIN_PSIS_SAMPLES",
    "PARETO_K_THRESHOLDS",
    "SCHEDULES",
    "START_DISTRIBUTIONS",
    "AISEstimate",
    "AISSettings",
    "BDMCResult",
    "GapSettings",
    "GapsResult",
    "GenericPassResult",
    "Layout",
    "LogPxEstimate",
    "PassResult",
    "ProgramTarget",
    "ReliabilityWarning",
    "VAETarget",
    "active_units",
    "ais",
    "ais_report",
    "annealing_schedule",
    "bdmc",
    "bdmc_section",
    "estimate_log_px",
    "estimate_log_px_generic",
    "evaluate",
    "fit_diagonal_gaussian",
    "gaps_section",
    "generic_importance_pass",
    "generic_is_report",
    "importance_pass",
    "inference_gaps",
    "mean_elbo",
    "pareto_k_hat",
    "pareto_k_summary",
    "target_for",
]
