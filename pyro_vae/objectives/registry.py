"""One registry of estimators, by name; the command line (its choices and help), the
benchmarks and the tests all take them from here, so a new estimator is one entry.

=================  ==================================================================
``trace``          :class:`pyro.infer.Trace_ELBO`: E_q[log p(x,z) − log q(z|x)], MC
``meanfield``      :class:`pyro.infer.TraceMeanField_ELBO`: E_q[log p(x|z)] − KL, KL exact
                   (:class:`~pyro_vae.objectives.TraceMeanField_ELBO`: the same numbers,
                   less work per step)
``jit-trace``      :class:`pyro.infer.JitTrace_ELBO` (fixed, see :mod:`.jit`)
``jit-meanfield``  :class:`pyro.infer.JitTraceMeanField_ELBO`, compiled once
``iwae``           :class:`pyro.infer.RenyiELBO` (α = 0): IWAE_K bound, K vectorized particles
``analytic``       hand-written PyTorch, Kingma & Welling (2014) eq. 10, closed-form KL
``mc``             hand-written PyTorch, −[log p(x,z) − log q(z|x)] on reparameterized samples
``stl``            sticking the landing (Roeder et al. 2017): ``trace``'s loss, no score term
``dreg``           doubly reparameterized IWAE_K gradient (Tucker et al. 2019)
=================  ==================================================================
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

import pyro.infer

from pyro_vae import losses
from pyro_vae.errors import ConfigError
from pyro_vae.objectives.base import Objective, PyroObjective, TorchObjective
from pyro_vae.objectives.dreg import DReG_ELBO
from pyro_vae.objectives.iwae import IWAE_ELBO
from pyro_vae.objectives.jit import JitTrace_ELBO, JitTraceMeanField_ELBO
from pyro_vae.objectives.meanfield import TraceMeanField_ELBO
from pyro_vae.objectives.stl import STL_ELBO

__all__ = ["ESTIMATORS", "Bound", "Estimator", "get_estimator", "make_objective", "register"]


class Bound(enum.Enum):
    """What −loss of an estimator estimates: a lower bound on log p(x)."""

    ELBO = "ELBO"  # E_q[log p(x, z) − log q(z|x)]
    IWAE_K = "IWAE_K"  # E[log (1/K) Σ_k p(x, z_k)/q(z_k|x)] (Burda et al. 2016)

    def label(self, num_particles: int = 1, beta: float = 1.0) -> str:
        """The name of the training objective, e.g. ``ELBO``, ``IWAE_5`` or ``beta-ELBO``
        (β ≠ 1 weights the KL: not a bound on log p(x) when β < 1)."""
        name = f"IWAE_{num_particles}" if self is Bound.IWAE_K else self.value
        return name if beta == 1 else f"beta-{name}"


@dataclass(frozen=True, kw_only=True)
class Estimator:
    """A named estimator: ``build(vae, num_particles)`` returns its :class:`Objective`."""

    name: str
    summary: str  # one line, for the command line's help
    bound: Bound
    build: Callable[..., Objective]
    default_num_particles: int = 1


ESTIMATORS: dict[str, Estimator] = {}


def register(estimator: Estimator) -> Estimator:
    """Add ``estimator`` to :data:`ESTIMATORS` (its name must be new)."""
    if estimator.name in ESTIMATORS:
        raise ValueError(f"estimator {estimator.name!r} is already registered")
    if not isinstance(estimator.bound, Bound):
        raise TypeError(f"estimator {estimator.name!r}: bound must be a Bound, not "
                        f"{estimator.bound!r}")
    ESTIMATORS[estimator.name] = estimator
    return estimator


def get_estimator(name: str) -> Estimator:
    """The registered estimator ``name``; a :class:`ConfigError` lists the known ones."""
    try:
        return ESTIMATORS[name]
    except (KeyError, TypeError):
        raise ConfigError(
            f"unknown estimator {name!r}; known estimators: {', '.join(ESTIMATORS)}"
        ) from None


def make_objective(name: str, vae, *, num_particles: int | None = None) -> Objective:
    """Bind estimator ``name`` to ``vae`` with ``num_particles`` samples per datapoint
    (default: the estimator's own, 1 for the ELBOs and 5 for the IWAE_K estimators)."""
    estimator = get_estimator(name)
    k = estimator.default_num_particles if num_particles is None else num_particles
    if isinstance(k, bool) or not isinstance(k, int) or k <= 0:
        raise ConfigError(f"num_particles must be a positive integer, got {k!r}")
    return estimator.build(vae, k)


def _pyro_elbo(name: str, elbo_class, *, jit: bool = False) -> Callable[..., Objective]:
    def build(vae, k):
        kwargs = dict(num_particles=k, vectorize_particles=k > 1, max_plate_nesting=1)
        if jit:
            kwargs["ignore_jit_warnings"] = True
        return PyroObjective(name, vae, elbo_class(**kwargs), jit=jit)

    return build


def _iwae(name: str, elbo_class) -> Callable[..., Objective]:
    return lambda vae, k: PyroObjective(name, vae, elbo_class(num_particles=k))


def _torch(name: str, loss_fn) -> Callable[..., Objective]:
    return lambda vae, k: TorchObjective(name, vae, loss_fn, k)


for _estimator in (
    Estimator(name="trace", summary="Pyro Trace_ELBO: Monte Carlo E_q[log p(x,z) - log q(z|x)]",
              bound=Bound.ELBO, build=_pyro_elbo("trace", pyro.infer.Trace_ELBO)),
    Estimator(name="meanfield", summary="Pyro TraceMeanField_ELBO: E_q[log p(x|z)] - "
              "KL(q||p(z)), KL in closed form", bound=Bound.ELBO,
              build=_pyro_elbo("meanfield", TraceMeanField_ELBO)),
    Estimator(name="jit-trace", summary="Pyro JitTrace_ELBO (torch.jit-compiled trace)",
              bound=Bound.ELBO, build=_pyro_elbo("jit-trace", JitTrace_ELBO, jit=True)),
    Estimator(name="jit-meanfield", summary="Pyro JitTraceMeanField_ELBO (torch.jit-compiled "
              "meanfield)", bound=Bound.ELBO,
              build=_pyro_elbo("jit-meanfield", JitTraceMeanField_ELBO, jit=True)),
    Estimator(name="iwae", summary="Pyro RenyiELBO(alpha=0): IWAE_K bound, K vectorized "
              "particles", bound=Bound.IWAE_K, build=_iwae("iwae", IWAE_ELBO),
              default_num_particles=5),
    Estimator(name="analytic", summary="hand-written PyTorch: -E_q[log p(x|z)] + closed-form "
              "Gaussian KL", bound=Bound.ELBO, build=_torch("analytic", losses.analytic_loss)),
    Estimator(name="mc", summary="hand-written PyTorch: -[log p(x,z) - log q(z|x)] on "
              "reparameterized samples", bound=Bound.ELBO, build=_torch("mc", losses.mc_loss)),
    Estimator(name="stl", summary="sticking the landing (Roeder et al. 2017): Trace_ELBO "
              "without q's score term", bound=Bound.ELBO, build=_pyro_elbo("stl", STL_ELBO)),
    Estimator(name="dreg", summary="doubly reparameterized IWAE_K gradient (Tucker et al. "
              "2019), K vectorized particles", bound=Bound.IWAE_K,
              build=_iwae("dreg", DReG_ELBO), default_num_particles=5),
):
    register(_estimator)
