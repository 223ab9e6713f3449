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

Not every estimator trains every model and guide (:class:`~pyro_vae.structure.Structure`);
each says which it cannot train, and why, and :func:`make_objective` (and
:meth:`pyro_vae.config.TrainConfig.validate`) refuse those at once:

=================  =================  ==================  ==================================
estimator          one-layer, IAF     hierarchical        why not
=================  =================  ==================  ==================================
``meanfield``      yes (Monte Carlo)  yes (KL: top only)
``jit-meanfield``  yes (Monte Carlo)  no                  Pyro's class takes each layer's KL
``analytic``       no                 yes                 written for Gaussian guides
``mc``             no                 yes                 written for Gaussian guides
``stl``            no (cost)          yes                 log q at fixed parameters
``dreg``           no (cost)          no (biased)         the same; hooks weight z_1 twice
others             yes                yes
=================  =================  ==================  ==================================
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
from pyro_vae.structure import Structure

__all__ = ["ESTIMATORS", "Bound", "Estimator", "check_compatible", "get_estimator",
           "make_objective", "register"]


class Bound(enum.Enum):
    """What −loss of an estimator estimates: a lower bound on log p(x)."""

    ELBO = "ELBO"  # E_q[log p(x, z) − log q(z|x)]
    IWAE_K = "IWAE_K"  # E[log (1/K) Σ_k p(x, z_k)/q(z_k|x)] (Burda et al. 2016)

    def label(self, num_particles: int = 1, beta: float = 1.0) -> str:
        """The name of the training objective, e.g. ``ELBO``, ``IWAE_5`` or ``beta-ELBO``
        (β ≠ 1 weights the KL: not a bound on log p(x) when β < 1)."""
        name = f"IWAE_{num_particles}" if self is Bound.IWAE_K else self.value
        return name if beta == 1 else f"beta-{name}"


def _trains_all(structure: Structure) -> None:
    return None


@dataclass(frozen=True, kw_only=True)
class Estimator:
    """A named estimator: ``build(vae, num_particles)`` returns its :class:`Objective`;
    ``refuses(structure)`` says why it cannot train a model and guide of that
    :class:`~pyro_vae.structure.Structure` (``None``: it can)."""

    name: str
    summary: str  # one line, for the command line's help
    bound: Bound
    build: Callable[..., Objective]
    default_num_particles: int = 1
    refuses: Callable[[Structure], str | None] = _trains_all


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


def check_compatible(name: str, structure: Structure | None) -> None:
    """Raise :class:`ConfigError` if estimator ``name`` cannot train a model and guide of this
    ``structure``, naming both and saying why (``None``: a program it knows nothing of)."""
    estimator = get_estimator(name)
    reason = None if structure is None else estimator.refuses(structure)
    if reason is not None:
        raise ConfigError(f"the {name} estimator cannot train {structure.describe()}: "
                          f"{reason}")


def make_objective(name: str, vae, *, num_particles: int | None = None) -> Objective:
    """Bind estimator ``name`` to ``vae`` with ``num_particles`` samples per datapoint
    (default: the estimator's own, 1 for the ELBOs and 5 for the IWAE_K estimators); a model
    it cannot train is refused (:func:`check_compatible`)."""
    estimator = get_estimator(name)
    check_compatible(name, getattr(vae, "structure", None))
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


# --- what each estimator cannot train, and why ---------------------------------------------


def _gaussian_guides_only(structure: Structure) -> str | None:
    if structure.flow is None:
        return None
    return ("the hand-written baselines write q's log-density as a diagonal Gaussian's, and a "
            "flow guide's is not one; use trace, meanfield or iwae")


_INVERTING_THE_FLOW = ("it needs log q(z|x) at the sampled z with q's parameters held fixed, "
                       "which for an inverse autoregressive flow means inverting it: one "
                       "network pass per latent dimension and flow layer at every step; use "
                       "trace, meanfield or iwae")


def _stl_refuses(structure: Structure) -> str | None:
    return _INVERTING_THE_FLOW if structure.flow is not None else None


def _dreg_refuses(structure: Structure) -> str | None:
    if structure.hierarchical:
        return ("its hooks weight the gradient that reaches each latent sample by the "
                "normalized importance weight, and here z_2 is computed from z_1, so the "
                "gradient reaching z_1 through z_2 is weighted twice, and q(z_2|z_1) with "
                "detached parameters leaves a term the weights do not average out: the "
                "gradient would be biased; use iwae")
    return _INVERTING_THE_FLOW if structure.flow is not None else None


def _every_layers_kl(structure: Structure) -> str | None:
    if not structure.hierarchical:
        return None
    return ("Pyro's JitTraceMeanField_ELBO takes the closed-form KL at every layer, but the "
            "guide draws z_2 after z_1 and from it, so KL(q(z_1|x) || p(z_1|z_2)) is not the "
            "ELBO's term (Pyro's mean-field condition fails) and the bound would be biased; use "
            "meanfield, which takes the KL of the top layer only, or jit-trace")


for _estimator in (
    Estimator(name="trace", summary="Pyro Trace_ELBO: Monte Carlo E_q[log p(x,z) - log q(z|x)]",
              bound=Bound.ELBO, build=_pyro_elbo("trace", pyro.infer.Trace_ELBO)),
    Estimator(name="meanfield", summary="Pyro TraceMeanField_ELBO: E_q[log p(x|z)] - "
              "KL(q||p(z)), KL in closed form where it is the ELBO's term", bound=Bound.ELBO,
              build=_pyro_elbo("meanfield", TraceMeanField_ELBO)),
    Estimator(name="jit-trace", summary="Pyro JitTrace_ELBO (torch.jit-compiled trace)",
              bound=Bound.ELBO, build=_pyro_elbo("jit-trace", JitTrace_ELBO, jit=True)),
    Estimator(name="jit-meanfield", summary="Pyro JitTraceMeanField_ELBO (torch.jit-compiled "
              "meanfield; one stochastic layer)", bound=Bound.ELBO,
              build=_pyro_elbo("jit-meanfield", JitTraceMeanField_ELBO, jit=True),
              refuses=_every_layers_kl),
    Estimator(name="iwae", summary="Pyro RenyiELBO(alpha=0): IWAE_K bound, K vectorized "
              "particles", bound=Bound.IWAE_K, build=_iwae("iwae", IWAE_ELBO),
              default_num_particles=5),
    Estimator(name="analytic", summary="hand-written PyTorch: -E_q[log p(x|z)] + closed-form "
              "Gaussian KL", bound=Bound.ELBO, build=_torch("analytic", losses.analytic_loss),
              refuses=_gaussian_guides_only),
    Estimator(name="mc", summary="hand-written PyTorch: -[log p(x,z) - log q(z|x)] on "
              "reparameterized samples", bound=Bound.ELBO, build=_torch("mc", losses.mc_loss),
              refuses=_gaussian_guides_only),
    Estimator(name="stl", summary="sticking the landing (Roeder et al. 2017): Trace_ELBO "
              "without q's score term", bound=Bound.ELBO, build=_pyro_elbo("stl", STL_ELBO),
              refuses=_stl_refuses),
    Estimator(name="dreg", summary="doubly reparameterized IWAE_K gradient (Tucker et al. "
              "2019), K vectorized particles", bound=Bound.IWAE_K,
              build=_iwae("dreg", DReG_ELBO), default_num_particles=5,
              refuses=_dreg_refuses),
):
    register(_estimator)
