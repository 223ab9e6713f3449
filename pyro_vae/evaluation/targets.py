"""The unnormalized posterior p(x, z) of a block of datapoints and the distribution s that AIS
starts from (p(z) or q(z|x)), as functions of one unconstrained vector u per chain and
datapoint: what :mod:`.ais`, :mod:`.bdmc` and :mod:`.gaps` work on.

:func:`target_for` picks :class:`LayeredTarget` (a layered model) or :class:`ProgramTarget`
(any Pyro program). With z = T(u) (``biject_to`` of each support; discrete latents summed out
by enumeration), ``target.bind(data)`` gives a density whose methods return nats, ``(C, B)``::

    sample_start(C)      u ~ s, (C, B, P)
    start_and_ratio(u)   log s_u(u) = log s(z) + log |det ∂T/∂u|,  ℓ(u) = log p(x, z) − log s(z)
    start_grad(u)        ∇_u log s_u(u) in closed form, (C, B, P), where closed_form_start
    log_joint(u)         log p(x, z) + log |det ∂T/∂u|
    sample_guide(S)      u ~ q_φ and log q_φ on u
    guide_gaussian(S)    the guide's mean and standard deviation on u, (B, P)

The target also gives ``simulate(data)`` ((x, z) ~ p(x, z), for BDMC) and ``row_bytes(data)``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from pyro import poutine
from pyro.distributions.transforms import biject_to
from pyro.distributions.util import sum_rightmost
from pyro.infer import config_enumerate
from torch.distributions.transforms import ComposeTransform, IndependentTransform

from pyro_vae import checks
from pyro_vae.errors import ConfigError
from pyro_vae.evaluation.program import (
    Program,
    ProgramInfo,
    as_program,
    evaluable,
    inspect_program,
    log_density,
    particles,
    quiet_validation,
    sample_sites,
    simulate,
    site_log_prob,
    trace_bytes,
)
from pyro_vae.evaluation.runner import as_data, split_data

__all__ = ["START_DISTRIBUTIONS", "LayeredTarget", "ProgramTarget", "target_for"]

START_DISTRIBUTIONS = ("guide", "prior")


def target_for(model, *, start: str = "guide"):
    """:class:`LayeredTarget` where ``model.capabilities.layered`` (the fast path), else
    :class:`ProgramTarget` of its Pyro program."""
    checks.choice("AIS start", start, START_DISTRIBUTIONS)
    if evaluable(model).capabilities.layered:
        return LayeredTarget(model, start=start)
    return ProgramTarget(as_program(model), start=start)


# --- a layered model --------------------------------------------------------------------------
class LayeredTarget:
    """A :class:`~pyro_vae.models.LayeredModel` (every built-in VAE, Gaussian or flow guides),
    from the model's own log-densities.

    :param start: ``"guide"``: u is the guide's base draws and z = T(u) each layer's draw
        through its flow, so AIS starts at q exactly and the flows precondition HMC (NeuTra,
        Hoffman et al. 2019). ``"prior"``: p(z), in z.
    """

    def __init__(self, model, *, start: str = "guide"):
        self.model, self.start = model, checks.choice("AIS start", start, START_DISTRIBUTIONS)

    def describe_start(self) -> str:
        if self.start == "prior":
            return "the prior p(z)"
        if self.model.capabilities.flow is not None:
            return "the encoder q(z|x), in its flows' input coordinates"
        return "the encoder q(z|x)"

    @property
    def closed_form_start(self) -> bool:
        """Whether ∇ log s_u is in closed form: the guide start of one layer, a Gaussian on
        its base draws whose loc and scale depend on x alone (the GuidePath contract)."""
        return self.start == "guide" and len(self.model.latent_dims) == 1

    def bind(self, data) -> _LayeredDensity:
        return _LayeredDensity(self.model, *split_data(self.model, as_data(data)), self.start,
                               closed_form_start=self.closed_form_start)

    def simulate(self, data) -> tuple[tuple, torch.Tensor]:
        """(x, z) drawn from the model for as many datapoints as ``data`` has, with the global
        generator: the data with the simulated x, and u of z ``(1, B, P)`` (with a flow guide,
        its inverse: one network pass per latent dimension, once per datapoint)."""
        x, context = split_data(self.model, as_data(data))
        model = self.model
        with torch.no_grad():
            zs = model.sample_prior((x.shape[0],), context)
            x_sim = model.sample_x(zs[0], context).to(x.dtype)
            u = model.pull_back(x_sim, zs, context) if self.start == "guide" else torch.cat(zs, -1)
        return (x_sim,) if context is None else (x_sim, context), u.unsqueeze(0)

    def row_bytes(self, data) -> int:
        """Bytes per (chain × datapoint) row of a gradient evaluation: 3 × the forward pass."""
        return 3 * self.model.bytes_per_row()


class _LayeredDensity:
    def __init__(self, model, x: torch.Tensor, context, start: str, *,
                 closed_form_start: bool = False):
        self.model, self.x, self.context, self.start = model, x, context, start
        self.closed_form_start = closed_form_start
        self.num_datapoints, self.dim = x.shape[0], sum(model.latent_dims)
        self._sizes = list(model.latent_dims)
        self._start_gaussian = None  # (loc, scale²) of s on u, for start_grad

    def _terms(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(log s_u(u), log p(z), log p(x|z)) at u ``(C, B, P)``, with log |det ∂z/∂u| in
        log p(z) (in u, the prior term carries the change of variables)."""
        model, x, context = self.model, self.x, self.context
        if self.start == "prior":
            zs = list(u.split(self._sizes, -1))
            log_prior = sum(model.log_prior(zs, context))
            return log_prior, log_prior, model.log_likelihood(x, zs[0], context)
        path = model.guide_path(x, context, u=u)
        log_prior = sum(model.log_prior(path.zs, context)) + path.log_det
        return sum(path.log_q), log_prior, model.log_likelihood(x, path.zs[0], context)

    def start_and_ratio(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_start, log_prior, log_lik = self._terms(u)
        return log_start, log_lik + log_prior - log_start

    def start_grad(self, u: torch.Tensor) -> torch.Tensor | None:
        """−(u − loc) / scale², where s is one layer's Gaussian on its base draws
        (:attr:`LayeredTarget.closed_form_start`), else None."""
        if not self.closed_form_start:
            return None
        if self._start_gaussian is None:
            with torch.no_grad():  # at given base draws: no random number drawn
                path = self.model.guide_path(self.x, self.context, u=u[:1].detach())
            self._start_gaussian = (path.locs[0], path.scales[0].pow(2))
        loc, variance = self._start_gaussian
        return (loc - u) / variance

    def log_joint(self, u: torch.Tensor) -> torch.Tensor:
        _, log_prior, log_lik = self._terms(u)
        return log_lik + log_prior

    @torch.no_grad()
    def sample_start(self, num_chains: int, generator=None) -> torch.Tensor:
        if self.start == "prior":
            shape = (num_chains, self.num_datapoints)
            return torch.cat(self.model.sample_prior(shape, self.context, generator=generator),
                             -1)
        return self.model.guide_path(self.x, self.context, num_samples=num_chains,
                                     generator=generator).u

    @torch.no_grad()
    def sample_guide(self, num_samples: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``num_samples`` draws of the guide q_φ on u and their log-density there: in the
        base coordinates, the Gaussians'; in z (the prior start), log q(z) = that − log |det|."""
        path = self.model.guide_path(self.x, self.context, num_samples=num_samples)
        if self.start == "prior":
            return torch.cat(path.zs, -1), sum(path.log_q) - path.log_det
        return path.u, sum(path.log_q)

    def guide_gaussian(self, num_samples: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The guide's mean and standard deviation on u ``(B, P)``: exact for one layer in
        its base coordinates, from ``num_samples`` draws otherwise."""
        if len(self._sizes) == 1 and self.start == "guide":
            path = self.model.guide_path(self.x, self.context, num_samples=1)
            return path.locs[0], path.scales[0]
        u = self.sample_guide(num_samples)[0]
        return u.mean(0), u.std(0)


# --- any Pyro program -------------------------------------------------------------------------
class _Site(NamedTuple):
    name: str
    shape: tuple[int, ...]  # of u for one chain: (1 | B at the data dim, ..., event)
    size: int  # unconstrained dimensions per datapoint
    transform: object  # ℝ^size → the site's support
    event_dim: int


class ProgramTarget:
    """Any Pyro program (a :class:`~.program.Program`): the model's continuous latent sites
    packed per datapoint into u ∈ ℝ^P; discrete latent sites summed out by enumeration.

    :param start: ``"guide"`` (the program's ``start_guide``, else its guide) or ``"prior"``.
        A flow without an inverse (planar, radial) works with ``"prior"`` only.
    """

    closed_form_start = False  # ∇ log s_u comes from autograd

    def __init__(self, program: Program, *, start: str = "guide"):
        checks.instance("program", program, Program)
        self.model, self.guide, self.data_plate = program.model, program.guide, program.data_plate
        self.start = checks.choice("AIS start", start, START_DISTRIBUTIONS)
        self.start_guide = program.start_guide or program.guide

    def describe_start(self) -> str:
        if self.start == "prior":
            return "the prior p(z)"
        if self.start_guide is not self.guide:
            return "the guide's Gaussians, before their flows"
        return "the guide q(z|x)"

    def info(self, data: tuple) -> ProgramInfo:
        return inspect_program(self.model, self.guide, data, data_plate=self.data_plate)

    def bind(self, data) -> _ProgramDensity:
        data = as_data(data)
        return _ProgramDensity(self, data, self.info(data))

    def simulate(self, data) -> tuple[tuple, torch.Tensor]:
        """(x, z) drawn from the model with the global generator: the data with the simulated
        observations, and the continuous latents packed as ``(1, B, P)``."""
        data = as_data(data)
        info = self.info(data)
        new_data, latents = simulate(self.model, data, info)
        density = _ProgramDensity(self, new_data, info)
        return new_data, density.pack({k: v.unsqueeze(0) for k, v in latents.items()})

    def row_bytes(self, data) -> int:
        """Bytes per (chain × datapoint) row of a gradient evaluation: 2 × ``trace_bytes``."""
        data = as_data(data)
        return 2 * trace_bytes(self.model, self.guide, data, self.info(data))


def _is_identity(transform) -> bool:
    while isinstance(transform, IndependentTransform):
        transform = transform.base_transform
    return isinstance(transform, ComposeTransform) and not transform.parts


class _ProgramDensity:
    def __init__(self, target: ProgramTarget, data: tuple, info: ProgramInfo):
        self.data, self.info, self.start = data, info, target.start
        self.closed_form_start = target.closed_form_start
        self.model, self.guide, self.start_guide = target.model, target.guide, target.start_guide
        self.num_datapoints = data[0].shape[0]
        self._validated = False
        with torch.random.fork_rng(devices=[]), torch.no_grad():  # shapes from one prior draw
            trace = poutine.trace(particles(self.model, 1, info)).get_trace(*data)
        self.sites = []
        for name in info.latent_sites:
            site = trace.nodes[name]
            if name in info.discrete_sites:
                continue
            transform = biject_to(site["fn"].support)
            u = transform.inv(site["value"])
            self.sites.append(_Site(name, tuple(u.shape[1:]), u.numel() // self.num_datapoints,
                                    transform, len(site["fn"].event_shape)))
        if not self.sites:
            raise ConfigError("the model has no continuous latent site: nothing for HMC to move")
        self.dim = sum(s.size for s in self.sites)

    # --- u ↔ z ---------------------------------------------------------------------------
    def pack(self, values: dict) -> torch.Tensor:
        """``{site: (C, ...)}`` constrained values → u ``(C, B, P)``."""
        parts = []
        for s in self.sites:
            value = values[s.name]
            parts.append(s.transform.inv(value).reshape(value.shape[0], self.num_datapoints, -1))
        return torch.cat(parts, -1)

    def unpack(self, u: torch.Tensor) -> tuple[dict, torch.Tensor]:
        """u ``(C, B, P)`` → ``{site: value}`` and log |det ∂z/∂u| ``(C, B)``."""
        C, B = u.shape[:2]
        values, log_det, offset = {}, u.new_zeros(C, B), 0
        for s in self.sites:
            piece = u[..., offset : offset + s.size].reshape((C, *s.shape))
            offset += s.size
            values[s.name] = s.transform(piece)
            if not _is_identity(s.transform):
                ladj = s.transform.log_abs_det_jacobian(piece, values[s.name])
                ladj = sum_rightmost(ladj, s.event_dim - s.transform.codomain.event_dim)
                log_det = log_det + ladj.reshape(C, B, -1).sum(-1)
        return values, log_det

    # --- densities -----------------------------------------------------------------------
    def _trace(self, fn, values: dict, num_chains: int):
        fn = poutine.enum(particles(config_enumerate(fn, default="parallel"), num_chains,
                                    self.info), first_available_dim=self.info.first_enum_dim)
        with quiet_validation(first=not self._validated):
            trace = poutine.trace(poutine.condition(fn, data=values)).get_trace(*self.data)
        self._validated = True
        return trace

    def _model_terms(self, values: dict, num_chains: int):
        """(log p(x, z), log p(z)) per chain and datapoint, discrete latents summed out."""
        shape = (num_chains, self.num_datapoints)
        joint, latent = [], []
        for site in sample_sites(self._trace(self.model, values, num_chains)):
            term = site_log_prob(site, self.info)
            joint.append(term)
            if site["name"] in self.info.latent_sites:
                latent.append(term)
        return log_density(joint, shape), log_density(latent, shape)

    def _guide_log_density(self, values: dict, num_chains: int) -> torch.Tensor:
        try:
            trace = self._trace(self.start_guide, values, num_chains)
            terms = [site_log_prob(s, self.info) for s in sample_sites(trace)]
        except (NotImplementedError, KeyError) as e:  # Pyro's flows without an inverse
            raise ConfigError(f"the guide's density at a given z is not available "
                              f"({type(e).__name__}: {e}): is there a flow without an "
                              "inverse in it? start AIS from the prior instead") from None
        return log_density(terms, (num_chains, self.num_datapoints))

    def start_and_ratio(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        values, log_det = self.unpack(u)
        log_joint, log_prior = self._model_terms(values, u.shape[0])
        log_start = (log_prior if self.start == "prior"
                     else self._guide_log_density(values, u.shape[0]))
        return log_start + log_det, log_joint - log_start

    def log_joint(self, u: torch.Tensor) -> torch.Tensor:
        values, log_det = self.unpack(u)
        return self._model_terms(values, u.shape[0])[0] + log_det

    # --- start ---------------------------------------------------------------------------
    def _draw(self, fn, num_chains: int) -> torch.Tensor:
        with torch.no_grad():
            trace = poutine.trace(particles(fn, num_chains, self.info)).get_trace(*self.data)
        return self.pack({s.name: trace.nodes[s.name]["value"] for s in self.sites})

    def sample_start(self, num_chains: int, generator=None) -> torch.Tensor:
        """Drawn by Pyro, from torch's global generator (``generator`` is not used)."""
        return self._draw(self.start_guide if self.start == "guide" else self.model, num_chains)

    def sample_guide(self, num_samples: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``num_samples`` draws of the guide and their log-density on u, from its own trace
        (no flow inverse), discrete sites sampled."""
        with torch.no_grad():
            trace = poutine.trace(particles(self.guide, num_samples, self.info)).get_trace(
                *self.data)
            u = self.pack({s.name: trace.nodes[s.name]["value"] for s in self.sites})
            terms = [site_log_prob(s, self.info) for s in sample_sites(trace)]
            log_q = log_density(terms, (num_samples, self.num_datapoints))
            return u, log_q + self.unpack(u)[1]

    def guide_gaussian(self, num_samples: int) -> tuple[torch.Tensor, torch.Tensor]:
        u = self._draw(self.guide, num_samples)
        return u.mean(0), u.std(0)

