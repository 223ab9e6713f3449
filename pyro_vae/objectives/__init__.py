"""Training objectives: Pyro's ELBO family as thin subclasses, one algorithm per module, and
the registry that names them (:data:`ESTIMATORS`; ``docs/estimators.md`` is its table).

=====================  ========================================================
:mod:`.base`           :class:`Objective`: an estimator bound to one model
:mod:`.meanfield`      :class:`MeanField_ELBO` (Pyro's ``TraceMeanField_ELBO``, leaner)
:mod:`.jit`            :class:`CompiledTrace_ELBO`, :class:`CompiledMeanField_ELBO`
:mod:`.renyi`          :class:`VR_ELBO` (Rényi, α in [0, 1)), :class:`IWAE_ELBO` (α = 0)
:mod:`.stl`            :class:`STL_ELBO` (sticking the landing)
:mod:`.dreg`           :class:`DReG_ELBO` (doubly reparameterized IWAE gradient)
:mod:`.rws`            :class:`RWS_ELBO` (reweighted wake-sleep, per-datapoint weights)
:mod:`.multisample`    :class:`MIWAE_ELBO`, :class:`CIWAE_ELBO`, :class:`PIWAE_ELBO`
:mod:`.util`           per-particle log-densities; log q with fixed parameters
:mod:`.options`        :class:`Option`: an estimator's option (α, M, β), its default and range
:mod:`.registry`       :data:`ESTIMATORS`, :func:`make_objective`, :class:`Bound`
=====================  ========================================================
"""

from pyro_vae.objectives.base import Objective, PyroObjective, TorchObjective
from pyro_vae.objectives.dreg import DReG_ELBO
from pyro_vae.objectives.jit import CompiledMeanField_ELBO, CompiledTrace_ELBO
from pyro_vae.objectives.meanfield import MeanField_ELBO, closed_form_kl_sites
from pyro_vae.objectives.multisample import CIWAE_ELBO, MIWAE_ELBO, PIWAE_ELBO
from pyro_vae.objectives.registry import (
    ESTIMATORS,
    Bound,
    Estimator,
    Option,
    capability_table,
    check_compatible,
    estimator_options,
    estimator_table,
    get_estimator,
    make_objective,
    register,
)
from pyro_vae.objectives.renyi import IWAE_ELBO, VR_ELBO
from pyro_vae.objectives.rws import RWS_ELBO, RWSObjective
from pyro_vae.objectives.stl import STL_ELBO
from pyro_vae.objectives.util import log_prob_stop_q, trace_log_weight

__all__ = ["CIWAE_ELBO", "ESTIMATORS", "IWAE_ELBO", "MIWAE_ELBO", "PIWAE_ELBO", "RWS_ELBO",
           "STL_ELBO", "VR_ELBO", "Bound", "CompiledMeanField_ELBO", "CompiledTrace_ELBO",
           "DReG_ELBO", "Estimator", "MeanField_ELBO", "Objective", "Option", "PyroObjective",
           "RWSObjective", "TorchObjective", "capability_table", "check_compatible",
           "closed_form_kl_sites", "estimator_options", "estimator_table", "get_estimator",
           "log_prob_stop_q", "make_objective", "register", "trace_log_weight"]
