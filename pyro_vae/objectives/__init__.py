"""Training objectives: Pyro's ELBO family as thin subclasses, one algorithm per module, and
the registry that names them (:data:`ESTIMATORS`).

=====================  ========================================================
:mod:`.base`           :class:`Objective`: an estimator bound to one VAE
:mod:`.meanfield`      :class:`TraceMeanField_ELBO` (Pyro's, leaner)
:mod:`.jit`            :class:`JitTrace_ELBO`, :class:`JitTraceMeanField_ELBO` (fixed)
:mod:`.iwae`           :class:`IWAE_ELBO` (``RenyiELBO`` at α = 0, differentiable)
:mod:`.stl`            :class:`STL_ELBO` (sticking the landing)
:mod:`.dreg`           :class:`DReG_ELBO` (doubly reparameterized IWAE gradient)
:mod:`.renyi`          :class:`Renyi_ELBO` (``RenyiELBO``, 0 < α < 1, differentiable)
:mod:`.rws`            :class:`RWS_ELBO` (reweighted wake-sleep, per-datapoint weights)
:mod:`.multisample`    :class:`MIWAE_ELBO`, :class:`CIWAE_ELBO`, :class:`PIWAE_ELBO`
:mod:`.util`           log-weights from traces; log q with fixed parameters
:mod:`.options`        :class:`Option`: an estimator's option (α, M, β), its default and range
:mod:`.registry`       :data:`ESTIMATORS`, :func:`make_objective`, :class:`Bound`
=====================  ========================================================
"""

from pyro_vae.objectives.base import Objective, PyroObjective, TorchObjective
from pyro_vae.objectives.dreg import DReG_ELBO
from pyro_vae.objectives.iwae import IWAE_ELBO
from pyro_vae.objectives.jit import JitTrace_ELBO, JitTraceMeanField_ELBO
from pyro_vae.objectives.meanfield import TraceMeanField_ELBO, closed_form_kl_sites
from pyro_vae.objectives.multisample import CIWAE_ELBO, MIWAE_ELBO, PIWAE_ELBO
from pyro_vae.objectives.registry import (
    ESTIMATORS,
    Bound,
    Estimator,
    Option,
    check_compatible,
    estimator_options,
    get_estimator,
    make_objective,
    register,
)
from pyro_vae.objectives.renyi import Renyi_ELBO
from pyro_vae.objectives.rws import RWS_ELBO, RWSObjective
from pyro_vae.objectives.stl import STL_ELBO
from pyro_vae.objectives.util import log_prob_stop_q, particle_log_weights, trace_log_weight

__all__ = [
    "CIWAE_ELBO",
    "ESTIMATORS",
    "IWAE_ELBO",
    "MIWAE_ELBO",
    "PIWAE_ELBO",
    "RWS_ELBO",
    "STL_ELBO",
    "Bound",
    "DReG_ELBO",
    "Estimator",
    "JitTraceMeanField_ELBO",
    "JitTrace_ELBO",
    "Objective",
    "Option",
    "PyroObjective",
    "RWSObjective",
    "Renyi_ELBO",
    "TorchObjective",
    "TraceMeanField_ELBO",
    "check_compatible",
    "closed_form_kl_sites",
    "estimator_options",
    "get_estimator",
    "log_prob_stop_q",
    "make_objective",
    "particle_log_weights",
    "register",
    "trace_log_weight",
]
