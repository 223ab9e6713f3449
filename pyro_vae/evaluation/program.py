"""Any Pyro model and guide read as per-datapoint log-densities, for importance sampling, AIS,
BDMC and the gaps. Conventions, checked by :func:`inspect_program`:

* the data are the positional arguments, one row per datapoint; the observations sit in a
  vectorized plate over the rows, the *data plate*, and so does every latent site;
* log-densities are the distributions' own, masks kept and **scales ignored**
  (``poutine.scale`` is a training device);
* particles are vectorized in a plate left of the program's plates; discrete latents
  enumerated in parallel get dims left of that and are summed out exactly.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from typing import NamedTuple

import pyro
import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.poutine.util import prune_subsample_sites

from pyro_vae.errors import ConfigError, ConfigTypeError
from pyro_vae.evaluation.runner import as_data
from pyro_vae.models.interface import Capabilities

__all__ = ["PARTICLE_PLATE", "Program", "ProgramInfo", "as_program", "enumerated", "evaluable",
           "inspect_program", "log_density", "log_weights", "particles", "quiet_validation",
           "sample_sites", "simulate", "site_log_prob", "trace_bytes"]

PARTICLE_PLATE = "_pyro_vae_particles"
_ACTIVATION_FACTOR = 3  # trace tensors → working memory (hidden activations, temporaries)


class Program(NamedTuple):
    """A Pyro ``model`` and ``guide`` of one's own, for the evaluators
    (``estimate_log_px(Program(model, guide), x)``, ``ais``, ``bdmc``, ``inference_gaps``).

    ``data_plate`` names the plate over the datapoints where it cannot be told. ``start_guide``,
    a normalized density over the same sites, is where AIS starts in place of ``guide`` (for a
    flow guide, the Gaussians its flows transform: their density needs no inverse).
    """

    model: Callable
    guide: Callable
    data_plate: str | None = None
    start_guide: Callable | None = None

    @property
    def capabilities(self) -> Capabilities:
        """A program offers its traces only: the generic paths."""
        return Capabilities()


def as_program(model) -> Program:
    """``model`` itself if it is a :class:`Program`, else the Pyro program of a model of this
    package (:class:`~pyro_vae.models.VAEModel`): its ``model`` and ``guide``."""
    model = evaluable(model)
    return model if isinstance(model, Program) else Program(model.model, model.guide)


def evaluable(model):
    """``model``, if the evaluation can take it (a model of this package, or a
    :class:`Program`); a one-line :class:`ConfigTypeError` otherwise."""
    if isinstance(model, Program):
        for name in ("model", "guide", "start_guide"):
            part = getattr(model, name)
            if not callable(part) and (part is not None or name != "start_guide"):
                raise ConfigTypeError(f"Program's {name} must be a Pyro program (a callable), "
                                      f"got {type(part).__name__}")
        return model
    if hasattr(getattr(model, "capabilities", None), "layered"):
        return model
    raise ConfigTypeError(f"expected a model of this package or a Program(model, guide) of "
                          f"one's own; got {type(model).__name__} (a Pyro model function "
                          "goes in Program(model_fn, guide_fn))")


class ProgramInfo(NamedTuple):
    """The structure of a model and guide that the evaluation relies on."""

    data_plate: str  # name of the plate over the datapoints
    data_dim: int  # its dim (negative)
    max_plate_nesting: int  # of the program, not counting the particle plate
    latent_sites: tuple[str, ...]  # the model's unobserved sample sites, in program order
    discrete_sites: tuple[str, ...]  # those of them with a discrete support
    observed_sites: tuple[str, ...]  # the model's observed sample sites

    @property
    def particle_dim(self) -> int:
        """The dim of the particle (chain) plate: left of every plate of the program."""
        return -self.max_plate_nesting - 1

    @property
    def first_enum_dim(self) -> int:
        """The first dim left for parallel enumeration, left of the particle plate."""
        return -self.max_plate_nesting - 2


def particles(fn, num: int, info: ProgramInfo):
    """``fn`` inside a plate of ``num`` vectorized particles, left of the program's plates."""
    return pyro.plate(PARTICLE_PLATE, num, dim=info.particle_dim)(fn)


def sample_sites(trace) -> list[dict]:
    """The sample sites of ``trace``, without plates' subsample sites."""
    return [s for s in prune_subsample_sites(trace).nodes.values() if s["type"] == "sample"]


def enumerated(site: dict) -> bool:
    """Whether a sample site is enumerated in parallel (its values fill an enumeration dim)."""
    return site["infer"].get("enumerate") == "parallel" and not site["is_observed"]


def _plates(site: dict) -> dict:
    return {f.name: f for f in site["cond_indep_stack"] if f.vectorized}


def _choose_data_plate(observed: list[dict], num_rows: int, name: str | None):
    common = set.intersection(*(set(_plates(s)) for s in observed))
    frames = _plates(observed[0])
    if name is not None:
        if name not in common:
            raise ConfigError(f"data_plate {name!r} is not a vectorized plate around every "
                              f"observed site; plates around all of them: {sorted(common)}")
        return frames[name]
    candidates = [frames[n] for n in common if frames[n].size == num_rows]
    if len(candidates) != 1:
        found = "none" if not candidates else ", ".join(repr(f.name) for f in candidates)
        raise ConfigError(f"cannot tell the data plate: plates of size {num_rows} (the number "
                          f"of datapoints) around every observed site: {found}; pass "
                          "data_plate=NAME")
    return candidates[0]


def _check_sites(sites: list[dict], plate, where: str) -> None:
    for site in sites:
        plates = _plates(site)
        if plate.name not in plates:
            raise ConfigError(
                f"{where} site {site['name']!r} is outside the data plate {plate.name!r}: "
                "per-datapoint log p(x) needs every latent variable local to its datapoint "
                "(a global latent couples the datapoints)")
        if site["infer"].get("enumerate") == "sequential":
            raise ConfigError(f"{where} site {site['name']!r} is enumerated sequentially; only "
                              "parallel enumeration is supported (infer={'enumerate': "
                              "'parallel'})")
        if site["fn"].support.is_discrete and set(plates) != {plate.name}:
            raise ConfigError(f"discrete {where} site {site['name']!r} lies in plates "
                              f"{sorted(plates)}; a discrete latent can be summed out per "
                              f"datapoint only inside the data plate {plate.name!r} alone")


def inspect_program(model, guide, data: tuple, *, data_plate: str | None = None
                    ) -> ProgramInfo:
    """Run ``guide`` and ``model`` once on ``data`` (on forked random numbers), find the data
    plate (of size N around every observed site, or ``data_plate``) and check the conventions;
    :class:`ConfigError` says which one fails."""
    data = as_data(data)
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        guide_trace = poutine.trace(guide).get_trace(*data)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*data)
    model_sites, guide_sites = sample_sites(model_trace), sample_sites(guide_trace)
    observed = [s for s in model_sites if s["is_observed"]]
    if not observed:
        raise ConfigError("the model has no observed sample site: nothing to evaluate")
    plate = _choose_data_plate(observed, data[0].shape[0], data_plate)
    if plate.full_size not in (None, plate.size):
        raise ConfigError(f"the data plate {plate.name!r} subsamples {plate.size} of "
                          f"{plate.full_size}; evaluate on the datapoints themselves")
    latent = [s for s in model_sites if not s["is_observed"]]
    _check_sites(latent, plate, "model")
    _check_sites([s for s in guide_sites if not s["is_observed"]], plate, "guide")
    nesting = max(-f.dim for s in model_sites + guide_sites
                  for f in s["cond_indep_stack"] if f.vectorized)
    return ProgramInfo(
        data_plate=plate.name, data_dim=plate.dim, max_plate_nesting=nesting,
        latent_sites=tuple(s["name"] for s in latent),
        discrete_sites=tuple(s["name"] for s in latent if s["fn"].support.is_discrete),
        observed_sites=tuple(s["name"] for s in observed))


def site_log_prob(site: dict, info: ProgramInfo) -> torch.Tensor:
    """log-density of a sample site, masked, unscaled, summed over every plate but the
    particle and data plates: ``(enum..., P | 1, B | 1)`` nats."""
    log_prob = site["fn"].log_prob(site["value"], *site["args"], **site["kwargs"])
    log_prob = torch.as_tensor(scale_and_mask(log_prob, mask=site["mask"]))
    n = info.max_plate_nesting
    while log_prob.dim() < n + 1:
        log_prob = log_prob.unsqueeze(0)
    inner = [d for d in range(-n, 0) if d != info.data_dim]
    if inner:
        log_prob = log_prob.sum(inner, keepdim=True)
    return log_prob.reshape((*log_prob.shape[: -n - 1], log_prob.shape[-n - 1],
                             log_prob.shape[info.data_dim]))


def log_density(terms: list[torch.Tensor], shape: tuple[int, int]) -> torch.Tensor:
    """The sum of per-site ``terms`` (:func:`site_log_prob`), summed out over the enumeration
    dims (log-sum-exp) and expanded to ``shape`` = (particles, datapoints)."""
    total = sum(terms[1:], terms[0])
    enum_dims = tuple(range(total.dim() - 2))
    if enum_dims:
        total = torch.logsumexp(total, enum_dims)
    return total.expand(shape)


def _enumerated_traces(model, guide, data: tuple, num_particles: int, info: ProgramInfo):
    """The guide's trace (enumerated sites in parallel, K particles) and the model's replayed
    against it, as :class:`pyro.infer.TraceEnum_ELBO` runs them."""
    guide_fn = poutine.enum(particles(guide, num_particles, info),
                            first_available_dim=info.first_enum_dim)
    model_fn = poutine.enum(particles(model, num_particles, info))  # continues the guide's dims
    guide_trace = poutine.trace(guide_fn).get_trace(*data)
    model_trace = poutine.trace(poutine.replay(model_fn, trace=guide_trace)).get_trace(*data)
    return model_trace, guide_trace


def log_weights(model, guide, data: tuple, num_particles: int, info: ProgramInfo
                ) -> torch.Tensor:
    """log p(x, z_k) − log q(z_k|x) ``(K, B)`` nats, K particles of the guide vectorized (global
    generator); a discrete y that the guide enumerates is summed out: Σ_y p(x, y, z_k) /
    q(z_k | x, y)."""
    model_trace, guide_trace = _enumerated_traces(model, guide, data, num_particles, info)
    terms = [site_log_prob(s, info) for s in sample_sites(model_trace)]
    terms += [-site_log_prob(s, info) for s in sample_sites(guide_trace)
              if not s["is_observed"] and not enumerated(s)]
    return log_density(terms, (num_particles, data[0].shape[0]))


def simulate(model, data: tuple, info: ProgramInfo) -> tuple[tuple, dict]:
    """(z, x) ~ p(z) p(x|z) with the global generator: the data with ``data[0]`` replaced by
    the simulated x, and ``{site: (B, ...)}`` of z. Needs one observed site, holding
    ``data[0]``."""
    if len(info.observed_sites) != 1:
        raise ConfigError(f"simulating data needs a model with one observed site (the "
                          f"data), found {list(info.observed_sites)}")
    with torch.no_grad():
        trace = poutine.trace(poutine.uncondition(model)).get_trace(*data)
    x = trace.nodes[info.observed_sites[0]]["value"]
    if x.shape != data[0].shape:
        raise ConfigError(f"the observed site {info.observed_sites[0]!r} has shape "
                          f"{tuple(x.shape)}, the data {tuple(data[0].shape)}: simulating "
                          "needs the data to be that site's value")
    latents = {name: trace.nodes[name]["value"] for name in info.latent_sites}
    return (x.to(data[0].dtype), *data[1:]), latents


def trace_bytes(model, guide, data: tuple, info: ProgramInfo) -> int:
    """Estimated bytes of one particle of one datapoint through guide and model: the sites'
    values and distributions, times a factor for the activations a trace does not hold."""
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        traces = _enumerated_traces(model, guide, data, 1, info)
    total = 0
    for site in sample_sites(traces[0]) + sample_sites(traces[1]):
        value = torch.as_tensor(site["value"])
        fn = site["fn"]
        total += value.numel() * value.element_size()
        total += 2 * math.prod(fn.batch_shape + fn.event_shape) * value.element_size()
    return max(1, _ACTIVATION_FACTOR * total // data[0].shape[0])


@contextlib.contextmanager
def quiet_validation(first: bool):
    """Pyro's and torch's argument checks on the first evaluation only (``first``), then off:
    they cost as much as the model on every HMC step."""
    with contextlib.nullcontext() if first else pyro.validation_enabled(False):
        yield
