"""Evaluation of a trained model, or of any Pyro model and guide: log p(x) and the figures
around it, in nats per datapoint.

=====================  ========================================================
:mod:`.runner`         the loop every evaluator shares (blocks, seeds, ranks)
:mod:`.importance`     importance sampling: the IWAE_K estimate of log p(x)
:mod:`.ais`            annealed importance sampling: a stochastic lower bound
:mod:`.bdmc`           bidirectional Monte Carlo: bounds on both sides, on simulated data
:mod:`.gaps`           the amortization and approximation gaps per datapoint
:mod:`.elbo`           the test ELBO that training reports
:mod:`.targets`        p(x, z) and AIS's start distribution on unconstrained latents
:mod:`.program`        a Pyro model and guide read as per-datapoint log-densities
:mod:`.hmc`            HMC transitions with per-datapoint step-size adaptation
:mod:`.psis`           Pareto k̂ of importance weights (reliability)
:mod:`.report`         the report of ``pyro-vae evaluate``; active units
=====================  ========================================================

Every evaluator takes a model of this package or a :class:`Program` of one's own.
"""

from pyro_vae.evaluation.ais import SCHEDULES, AISResult, AISSettings, ais, annealing_schedule
from pyro_vae.evaluation.bdmc import BDMCResult, bdmc
from pyro_vae.evaluation.elbo import elbo_per_datapoint, mean_elbo
from pyro_vae.evaluation.gaps import GapSettings, GapsResult, fit_diagonal_gaussian, inference_gaps
from pyro_vae.evaluation.importance import ISResult, LogPxEstimate, estimate_log_px, subset_sizes
from pyro_vae.evaluation.program import Program
from pyro_vae.evaluation.psis import (
    MIN_PSIS_SAMPLES,
    PARETO_K_THRESHOLDS,
    pareto_k_hat,
    pareto_k_summary,
)
from pyro_vae.evaluation.report import (
    ReliabilityWarning,
    active_units,
    bdmc_section,
    gaps_section,
    report,
)
from pyro_vae.evaluation.runner import Execution
from pyro_vae.evaluation.targets import (
    START_DISTRIBUTIONS,
    LayeredTarget,
    ProgramTarget,
    target_for,
)

__all__ = ["MIN_PSIS_SAMPLES", "PARETO_K_THRESHOLDS", "SCHEDULES", "START_DISTRIBUTIONS",
           "AISResult", "AISSettings", "BDMCResult", "Execution", "GapSettings", "GapsResult",
           "ISResult", "LayeredTarget", "LogPxEstimate", "Program", "ProgramTarget",
           "ReliabilityWarning", "active_units", "ais", "annealing_schedule", "bdmc",
           "bdmc_section", "elbo_per_datapoint", "estimate_log_px", "fit_diagonal_gaussian",
           "gaps_section", "inference_gaps", "mean_elbo", "pareto_k_hat", "pareto_k_summary",
           "report", "subset_sizes", "target_for"]
