"""The registry of estimators by name, from which the command line, the benchmarks, the tests
and the documentation's tables take them: a new estimator is one entry. Each declares its
bound, default K and options (:class:`Option`: α, M, β), and which models it cannot train and
why (from their :class:`~pyro_vae.models.Capabilities`), which :func:`make_objective` refuses.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import pyro.infer

from pyro_vae import checks, losses
from pyro_vae.errors import ConfigError
from pyro_vae.models.interface import Capabilities
from pyro_vae.objectives.base import Objective, PyroObjective, TorchObjective
from pyro_vae.objectives.dreg import DReG_ELBO
from pyro_vae.objectives.jit import CompiledMeanField_ELBO, CompiledTrace_ELBO
from pyro_vae.objectives.meanfield import MeanField_ELBO
from pyro_vae.objectives.multisample import CIWAE_ELBO, MIWAE_ELBO, PIWAE_ELBO
from pyro_vae.objectives.options import Option
from pyro_vae.objectives.renyi import IWAE_ELBO, VR_ELBO
from pyro_vae.objectives.rws import MIN_PARTICLES_REASON, RWS_ELBO, RWSObjective
from pyro_vae.objectives.stl import STL_ELBO

__all__ = ["ESTIMATORS", "Bound", "Estimator", "Option", "capability_table", "check_compatible",
           "estimator_options", "estimator_table", "get_estimator", "make_objective", "register"]


class Bound(enum.Enum):
    """What −loss of an estimator estimates: a lower bound on log p(x)."""

    ELBO = "ELBO"  # E_q[log p(x, z) − log q(z|x)]
    IWAE_K = "IWAE_K"  # E[log (1/K) Σ_k p(x, z_k)/q(z_k|x)] (Burda et al. 2016)
    VR_K = "VR_alpha,K"  # E[1/(1 − α) log (1/K) Σ_k w_k^(1−α)] (Li & Turner 2016)
    MIWAE = "MIWAE_M,K"  # E[(1/M) Σ_m log (1/K) Σ_k w_mk] (Rainforth et al. 2018)
    CIWAE = "CIWAE_beta,K"  # β ELBO + (1 − β) IWAE_K on the same K samples (the same)
    IWAE_MK = "IWAE_MK"  # IWAE_K with M·K samples: PIWAE's bound for the model (the same)

    def label(self, num_particles: int = 1, beta: float = 1.0, **options) -> str:
        """The objective's name with its parameters, e.g. ``IWAE_5``, ``VR_5(alpha=0.5)``,
        ``MIWAE_2x5``, or ``beta-ELBO`` (β ≠ 1 weights the KL: not a bound when β < 1);
        ``options`` are all of the estimator's."""
        k = num_particles
        name = {
            Bound.IWAE_K: lambda: f"IWAE_{k}",
            Bound.VR_K: lambda: f"VR_{k}(alpha={options['alpha']:g})",
            Bound.MIWAE: lambda: f"MIWAE_{options['num_estimates']}x{k}",
            Bound.CIWAE: lambda: f"CIWAE_{k}(beta={options['ciwae_beta']:g})",
            Bound.IWAE_MK: lambda: f"IWAE_{options['num_estimates'] * k}",
        }.get(self, lambda: self.value)()
        return name if beta == 1 else f"beta-{name}"


def _trains_all(capabilities: Capabilities) -> None:
    return None


@dataclass(frozen=True, kw_only=True)
class Estimator:
    """A named estimator: ``build(vae, num_particles, **options)`` returns its
    :class:`Objective`; ``refuses(capabilities)`` says why it cannot train a model of those
    :class:`~pyro_vae.models.Capabilities` (``None``: it can)."""

    name: str
    summary: str  # one line, for the command line's help
    bound: Bound
    build: Callable[..., Objective]
    default_num_particles: int = 1
    refuses: Callable[[Capabilities], str | None] = _trains_all
    options: tuple[Option, ...] = ()  # what build takes besides K, with defaults and ranges
    min_particles: int = 1  # the smallest K it trains with ...
    min_particles_reason: str = ""  # ... and why

    def resolve(self, num_particles: int | None = None, options: Mapping | None = None
                ) -> tuple[int, dict]:
        """K and every option's value, defaults filled in, checked; :class:`ConfigError` names
        a bad one, or an option this estimator lacks."""
        k = self.default_num_particles if num_particles is None else num_particles
        checks.integer("num_particles", k)
        if k < self.min_particles:
            raise ConfigError(f"the {self.name} estimator needs num_particles (-K) >= "
                              f"{self.min_particles}, got {k}: {self.min_particles_reason}")
        options = dict(options or {})
        known = {o.name: o for o in self.options}
        for name in options:
            if name not in known:
                takers = [e.name for e in ESTIMATORS.values()
                          if name in {o.name for o in e.options}]
                whose = (f" ({_OPTIONS[name].flags[0]} is for {' and '.join(takers)})"
                         if takers else "")
                theirs = ", ".join(f"{o.name} ({o.flags[0]})" for o in self.options)
                raise ConfigError(f"the {self.name} estimator takes no option {name!r}{whose}; "
                                  + (f"its options: {theirs}" if theirs else "it has none"))
        return k, {name: o.check(options[name]) if name in options else o.default
                   for name, o in known.items()}

    def samples(self, num_particles: int | None = None, options: Mapping | None = None) -> int:
        """Samples drawn per datapoint and step: K, times M for MIWAE and PIWAE (unchecked)."""
        k = self.default_num_particles if num_particles is None else num_particles
        for option in self.options:
            if option.multiplies_particles:
                k *= (options or {}).get(option.name, option.default)
        return k


#: Every estimator by name, in the order registered (:func:`register`).
#:
#: :meta hide-value:
ESTIMATORS: dict[str, Estimator] = {}


def register(estimator: Estimator) -> Estimator:
    """Add ``estimator`` to :data:`ESTIMATORS` (its name must be new)."""
    if estimator.name in ESTIMATORS:
        raise ValueError(f"estimator {estimator.name!r} is already registered")
    if not isinstance(estimator.bound, Bound):
        raise TypeError(f"estimator {estimator.name!r}: bound must be a Bound, not "
                        f"{estimator.bound!r}")
    for option in estimator.options:
        if _OPTIONS.get(option.name, option) != option:
            raise ValueError(f"estimator {estimator.name!r}: option {option.name!r} differs "
                             "from the one of that name another estimator declares")
    for option in estimator.options:
        _OPTIONS.setdefault(option.name, option)
    ESTIMATORS[estimator.name] = estimator
    return estimator


_OPTIONS: dict[str, Option] = {}


def estimator_options() -> tuple[Option, ...]:
    """Every option the registered estimators declare, once each, in registry order."""
    return tuple(_OPTIONS.values())


def get_estimator(name: str) -> Estimator:
    """The registered estimator ``name``; a :class:`ConfigError` lists the known ones."""
    try:
        return ESTIMATORS[name]
    except (KeyError, TypeError):
        raise ConfigError(
            f"unknown estimator {name!r}; known estimators: {', '.join(ESTIMATORS)}"
        ) from None


def check_compatible(name: str, capabilities: Capabilities) -> None:
    """Raise :class:`ConfigError` if estimator ``name`` cannot train a model of these
    ``capabilities``, naming both and saying why."""
    reason = get_estimator(name).refuses(capabilities)
    if reason is not None:
        raise ConfigError(f"the {name} estimator cannot train {capabilities.describe()}: "
                          f"{reason}")


def make_objective(name: str, vae, *, num_particles: int | None = None, **options
                   ) -> Objective:
    """Bind estimator ``name`` to ``vae`` (a :class:`~pyro_vae.models.VAEModel`) with K =
    ``num_particles`` (default: the estimator's own) and its ``options`` (e.g. ``alpha=0.2``
    for ``renyi``); :class:`ConfigError` for a model it cannot train, a bad option or K."""
    estimator = get_estimator(name)
    if not isinstance(getattr(vae, "capabilities", None), Capabilities):
        raise checks.ConfigTypeError(f"make_objective needs a model of this package (see "
                                     f"pyro_vae.VAEModel), got {type(vae).__name__}")
    if vae.capabilities.context_dim:  # an objective's loss takes x alone
        raise ConfigError(f"the {name} estimator trains on x alone, and this model reads a "
                          f"context of {vae.capabilities.context_dim} features beside it: train "
                          "the program that supplies the context with a Pyro ELBO "
                          "(examples/composed_model.py)")
    check_compatible(name, vae.capabilities)
    k, options = estimator.resolve(num_particles, options)
    return estimator.build(vae, k, **options)


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


def _renyi(vae, k, *, alpha: float) -> Objective:
    return PyroObjective("renyi", vae, VR_ELBO(alpha=alpha, num_particles=k),
                         options={"alpha": alpha})


def _rws(vae, k) -> Objective:
    return RWSObjective("rws", vae, RWS_ELBO(num_particles=k))


def _grouped(name: str, elbo_class) -> Callable[..., Objective]:
    """MIWAE, CIWAE, PIWAE: K is the bound's K (Pyro draws M·K particles for M groups)."""
    return lambda vae, k, **options: PyroObjective(name, vae, elbo_class(k, **options),
                                                   num_particles=k, options=options)


ALPHA = Option(name="alpha", flags=("--alpha",), metavar="ALPHA", kind=float, default=0.5,
               low=0.0, high=1.0, open_low=True, open_high=True,
               help="the order alpha of the Renyi bound VR_alpha: towards 0 it nears IWAE_K, "
                    "towards 1 the ELBO")
NUM_ESTIMATES = Option(name="num_estimates", flags=("--num-estimates", "-M"), metavar="M",
                       kind=int, default=2, low=1, multiplies_particles=True,
                       help="M, the independent IWAE_K estimates averaged (each datapoint "
                            "draws M*K samples): M groups of K raise the encoder gradient's "
                            "signal-to-noise ratio")
CIWAE_BETA = Option(name="ciwae_beta", flags=("--ciwae-beta",), metavar="BETA", kind=float,
                    default=0.5, low=0.0, high=1.0,
                    help="beta, the ELBO's weight in CIWAE = beta ELBO + (1 - beta) IWAE_K (not "
                         "the KL weight --beta)")


# --- what each estimator cannot train, and why ---------------------------------------------


def _hand_written(capabilities: Capabilities) -> str | None:
    if not capabilities.layered:
        return ("the hand-written baselines are written for pyro_vae.VAE's chain of Gaussian "
                "networks; use a Pyro estimator: trace, meanfield or iwae")
    if capabilities.flow is not None:
        return ("the hand-written baselines write q's log-density as a diagonal Gaussian's, "
                "and a flow guide's is not one; use trace, meanfield or iwae")
    return None


_INVERTING_THE_FLOW = ("it needs log q(z|x) at the sampled z with q's parameters held fixed, "
                       "which for an inverse autoregressive flow means inverting it: one "
                       "network pass per latent dimension and flow layer at every step; use "
                       "trace, meanfield or iwae")


def _refuses_flows(capabilities: Capabilities) -> str | None:
    return _INVERTING_THE_FLOW if capabilities.flow is not None else None


def _rws_refuses(capabilities: Capabilities) -> str | None:
    if capabilities.flow is None:
        return None
    return ("its wake-phi gradient is grad log q(z|x) at samples held fixed, and log q of a "
            "fixed z under an inverse autoregressive flow means inverting it: one network pass "
            "per latent dimension and flow layer at every step; use iwae, miwae or piwae")


def _every_layers_kl(capabilities: Capabilities) -> str | None:
    if capabilities.layers == 1:
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
              build=_pyro_elbo("meanfield", MeanField_ELBO)),
    Estimator(name="jit-trace", summary="Pyro JitTrace_ELBO (torch.jit-compiled trace)",
              bound=Bound.ELBO, build=_pyro_elbo("jit-trace", CompiledTrace_ELBO, jit=True)),
    Estimator(name="jit-meanfield", summary="Pyro JitTraceMeanField_ELBO (torch.jit-compiled "
              "meanfield; one stochastic layer)", bound=Bound.ELBO,
              build=_pyro_elbo("jit-meanfield", CompiledMeanField_ELBO, jit=True),
              refuses=_every_layers_kl),
    Estimator(name="iwae", summary="Pyro RenyiELBO(alpha=0): IWAE_K bound, K vectorized "
              "particles", bound=Bound.IWAE_K, build=_iwae("iwae", IWAE_ELBO),
              default_num_particles=5),
    Estimator(name="analytic", summary="hand-written PyTorch: -E_q[log p(x|z)] + closed-form "
              "Gaussian KL", bound=Bound.ELBO, build=_torch("analytic", losses.analytic_loss),
              refuses=_hand_written),
    Estimator(name="mc", summary="hand-written PyTorch: -[log p(x,z) - log q(z|x)] on "
              "reparameterized samples", bound=Bound.ELBO, build=_torch("mc", losses.mc_loss),
              refuses=_hand_written),
    Estimator(name="stl", summary="sticking the landing (Roeder et al. 2017): Trace_ELBO "
              "without q's score term", bound=Bound.ELBO, build=_pyro_elbo("stl", STL_ELBO),
              refuses=_refuses_flows),
    Estimator(name="dreg", summary="doubly reparameterized IWAE_K gradient (Tucker et al. "
              "2019), K vectorized particles", bound=Bound.IWAE_K,
              build=_iwae("dreg", DReG_ELBO), default_num_particles=5,
              refuses=_refuses_flows),
    Estimator(name="renyi", summary="Pyro RenyiELBO, 0 < alpha < 1: the Renyi bound VR_alpha "
              "(Li & Turner 2016), K vectorized particles", bound=Bound.VR_K, build=_renyi,
              default_num_particles=5, options=(ALPHA,)),
    Estimator(name="rws", summary="Pyro ReweightedWakeSleep: model on IWAE_K (wake-theta), "
              "guide on wake-phi (Le et al. 2019), per-datapoint weights", bound=Bound.IWAE_K,
              build=_rws, default_num_particles=5, refuses=_rws_refuses, min_particles=2,
              min_particles_reason=MIN_PARTICLES_REASON),
    Estimator(name="miwae", summary="MIWAE(M, K): the mean of M independent IWAE_K bounds "
              "(Rainforth et al. 2018)", bound=Bound.MIWAE, build=_grouped("miwae", MIWAE_ELBO),
              default_num_particles=5, options=(NUM_ESTIMATES,)),
    Estimator(name="ciwae", summary="CIWAE(beta) = beta ELBO + (1 - beta) IWAE_K on the same "
              "K samples (Rainforth et al. 2018)", bound=Bound.CIWAE,
              build=_grouped("ciwae", CIWAE_ELBO), default_num_particles=5,
              options=(CIWAE_BETA,)),
    Estimator(name="piwae", summary="PIWAE(M, K): model on IWAE_MK, guide on MIWAE(M, K), the "
              "same samples (Rainforth et al. 2018)", bound=Bound.IWAE_MK,
              build=_grouped("piwae", PIWAE_ELBO), default_num_particles=5,
              options=(NUM_ESTIMATES,)),
):
    register(_estimator)


# --- the tables of the documentation, generated ---------------------------------------------

# The models of the capability table: one column each.
TABLE_MODELS = {
    "one layer": Capabilities(layered=True, closed_form_kl_sites=("z",)),
    "one layer, IAF": Capabilities(flow="iaf", flow_layers=2, layered=True),
    "two layers": Capabilities(layers=2, layered=True, closed_form_kl_sites=("z2",)),
    "two layers, IAF": Capabilities(layers=2, flow="iaf", flow_layers=2, layered=True),
    "a model of one's own": Capabilities(),
}


def estimator_table() -> str:
    """The registry as a Markdown table: name, what −loss estimates (:class:`Bound`), how,
    default K and options (the README's copy is tested against it)."""
    rows = ["| name | what −loss estimates | how | default K | options |",
            "| --- | --- | --- | --- | --- |"]
    for name, e in ESTIMATORS.items():
        options = ", ".join(f"`{o.flags[0]}` (default {o.default:g})" for o in e.options)
        rows.append(f"| `{name}` | {e.bound.value} | {_cell(e.summary)} | "
                    f"{e.default_num_particles} | {options or '–'} |")
    return "\n".join(rows)


def capability_table() -> str:
    """Which estimator trains which model, as a Markdown table: ``yes``, or ``no`` with the
    reason as a note."""
    rows = ["| estimator | " + " | ".join(TABLE_MODELS) + " |",
            "| --- |" + " --- |" * len(TABLE_MODELS)]
    reasons: list[str] = []
    for name, e in ESTIMATORS.items():
        cells = []
        for capabilities in TABLE_MODELS.values():
            reason = e.refuses(capabilities)
            if reason is not None and reason not in reasons:
                reasons.append(reason)
            cells.append("yes" if reason is None else f"no ({reasons.index(reason) + 1})")
        rows.append(f"| `{name}` | " + " | ".join(cells) + " |")
    notes = [f"{i}. {_cell(reason)}." for i, reason in enumerate(reasons, 1)]
    return "\n".join([*rows, "", *notes])


def _cell(text: str) -> str:
    return text.replace("|", "\\|")
