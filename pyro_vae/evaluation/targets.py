"""The unnormalized posterior p(x, z) of a block of datapoints, and the tractable distribution
AIS starts from, as functions of one unconstrained vector per chain and datapoint: what
:mod:`.ais`, :mod:`.bdmc` and :mod:`.gaps` work on.

A *target* (:class:`ProgramTarget` for any Pyro model and guide, :class:`VAETarget` for the
built-in :class:`~pyro_vae.VAE`, its fast path) is bound to a block of data and gives a
*density* with, for u of shape ``(C, B, P)`` (C chains, B datapoints, P unconstrained latent
dimensions per datapoint) and z = T(u) the latent values:

    log s_u(u) = log s(z) + log |det ∂T/∂u|      the start, s = p(z) or q(z|x)
    ℓ(u)       = log p(x, z) − log s(z)            the log-ratio AIS anneals in, β: 0 → 1

so that the intermediate targets are f_β(u) = s_u(u) exp(β ℓ(u)) ∝ p(z|x) at β = 1 (the
Jacobian cancels from ℓ). T maps ℝ^P onto each site's support (:func:`biject_to`), so HMC
moves on ℝ^P whatever the latents' constraints. Discrete latents are summed out by
enumeration (``config_enumerate``): AIS moves the continuous ones only.

A density (``target.bind(data)``) offers, all in nats, ``(C, B)`` per chain and datapoint:

==============================  ===============================================================
``sample_start(C)``             u ``(C, B, P)`` drawn from the start s (global generator)
``start_and_ratio(u)``          (log s_u(u), ℓ(u)): what HMC and the AIS weights need
``log_joint(u)``                log p(x, z) + log |det ∂z/∂u|: the target of the gaps' fit
``sample_guide(S)``             draws u of the guide q_φ and log q_φ on u: the encoder's ELBO
``guide_gaussian(S)``           the guide's mean and standard deviation on u ``(B, P)``
==============================  ===============================================================

and the target offers ``simulate(data)`` (BDMC's (x, z) ~ p(x, z)) and ``row_bytes(data)``
(memory per chain × datapoint, to size the blocks).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from pyro import poutine
from pyro.distributions.transforms import biject_to
from pyro.distributions.util import sum_rightmost
from pyro.infer import config_enumerate
from torch.distributions import Normal
from torch.distributions.transforms import ComposeTransform, IndependentTransform

from pyro_vae.errors import ConfigError
from pyro_vae.evaluation.flow_target import HierarchicalFlowTarget
from pyro_vae.evaluation.program import (
    ProgramInfo,
    as_data,
    inspect_program,
    log_density,
    particles,
    quiet_validation,
    sample_sites,
    simulate,
    site_log_prob,
    trace_bytes,
)
from pyro_vae.model import VAE

__all__ = ["START_DISTRIBUTIONS", "ProgramTarget", "VAETarget", "target_for"]

START_DISTRIBUTIONS = ("guide", "prior")


def _check_start(start: str) -> str:
    if start not in START_DISTRIBUTIONS:
        raise ConfigError(f"unknown AIS start {start!r}; choose one of "
                          f"{', '.join(START_DISTRIBUTIONS)}")
    return start


# --- the built-in VAE -------------------------------------------------------------------------
class VAETarget:
    """The fast path for the one-layer :class:`~pyro_vae.VAE` (no context): z ∈ ℝ^L, the prior
    N(0, I), log p(x|z) from the likelihood's own fast formula.

    :param start: ``"guide"``: q(z|x) itself, the encoder's Gaussian N(loc(x), diag
        scale(x)²); with a flow guide z = T_x(u) pushes that Gaussian through the flow, and
        the density works in the flow's input u, where q is the Gaussian (its density cheap,
        the flow's needs its inverse) and the target is p(x, T_x(u)) |det ∂T_x/∂u|: AIS
        starts at q exactly, its first step is importance sampling with q (NeuTra-style,
        Hoffman et al. 2019), and the flow preconditions HMC. ``"prior"``: N(0, I), in z.
    """

    def __init__(self, vae, *, start: str = "guide"):
        if vae.context_dim:
            raise ConfigError("VAETarget takes VAEs without context; use ProgramTarget")
        self.vae, self.start = vae, _check_start(start)

    def describe_start(self) -> str:
        if self.start == "prior":
            return "the prior p(z)"
        if getattr(self.vae, "flow", None) is not None:
            return "the encoder q(z|x), in its flow's input coordinates"
        return "the encoder q(z|x)"

    def bind(self, data) -> _VAEDensity:
        (x,) = as_data(data)
        return _VAEDensity(self.vae, x, self.start)

    def simulate(self, data) -> tuple[tuple, torch.Tensor]:
        """(x, z) drawn from the model for as many datapoints as ``data`` has, with the global
        generator: the data ``(x,)`` and z as ``(1, B, L)``."""
        (x,) = as_data(data)
        with torch.no_grad():
            z = torch.randn(x.shape[0], self.vae.latent_dim, dtype=x.dtype, device=x.device)
            x_sim = self.vae.decode(z).sample().to(x.dtype)
            u = _VAEDensity(self.vae, x_sim, self.start).pull_back(z.unsqueeze(0))
        return (x_sim,), u

    def row_bytes(self, data) -> int:
        """Bytes of working memory per (chain × datapoint) row of a gradient evaluation."""
        (x,) = as_data(data)
        hidden = sum(m.out_features for m in self.vae.decoder.modules()
                     if isinstance(m, torch.nn.Linear))
        return 3 * x.element_size() * (4 * self.vae.latent_dim + 2 * hidden + 3 * x.shape[1])


class _VAEDensity:
    """u = z, or with a flow guide and the guide start, u = the flow's input (z = T_x(u))."""

    def __init__(self, vae, x: torch.Tensor, start: str):
        self.vae, self.x, self.start = vae, x, start
        self.num_datapoints, self.dim = x.shape[0], vae.latent_dim
        with torch.no_grad():
            loc, scale = vae.encode(x)
        self.q = Normal(loc, scale, validate_args=False)  # batch (B, L): the encoder's Gaussian
        self.prior = Normal(torch.zeros_like(loc), torch.ones_like(loc), validate_args=False)
        self.transforms = ()  # T_x, conditioned on the encoder's hidden layer
        if getattr(vae, "flow", None) is not None and start == "guide":
            with torch.no_grad():
                self.transforms = tuple(vae.posterior(x).transforms)

    def push(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z = T_x(u) ``(C, B, L)`` and log |det ∂z/∂u| ``(C, B)`` (zero without a flow)."""
        z, log_det = u, u.new_zeros(u.shape[:-1])
        for t in self.transforms:
            y = t(z)
            log_det = log_det + t.log_abs_det_jacobian(z, y)
            z = y
        return z, log_det

    def pull_back(self, z: torch.Tensor) -> torch.Tensor:
        """u = T_x⁻¹(z) (the flow's inverse, one network pass per latent dimension)."""
        for t in reversed(self.transforms):
            z = t.inv(z)
        return z

    def sample_start(self, num_chains: int) -> torch.Tensor:
        dist = self.q if self.start == "guide" else self.prior
        return dist.sample((num_chains,))  # (C, B, L), from the global generator

    def sample_guide(self, num_samples: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``num_samples`` draws of q_φ on u and their log-density (in u, the Gaussian's)."""
        u = self.q.sample((num_samples,))
        return u, self.q.log_prob(u).sum(-1)

    def _log_joint(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(log p(x, z) + log |det ∂z/∂u|, log p(z) + log |det ∂z/∂u|) at z = T_x(u)."""
        z, log_det = self.push(u)
        log_prior = self.prior.log_prob(z).sum(-1) + log_det
        return self.vae.likelihood.log_prob_sum(self.vae.decoder(z), self.x) + log_prior, \
            log_prior

    def log_joint(self, u: torch.Tensor) -> torch.Tensor:
        return self._log_joint(u)[0]

    def start_and_ratio(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_joint, log_prior = self._log_joint(u)
        if self.start == "prior":
            return log_prior, log_joint - log_prior
        log_q = self.q.log_prob(u).sum(-1)
        return log_q, log_joint - log_q

    def guide_gaussian(self, num_samples: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.q.loc, self.q.scale


# --- any Pyro program -------------------------------------------------------------------------
class _Site(NamedTuple):
    name: str
    shape: tuple[int, ...]  # of u for one chain: (1 | B at the data dim, ..., event)
    size: int  # unconstrained dimensions per datapoint
    transform: object  # ℝ^size → the site's support
    event_dim: int


class ProgramTarget:
    """Any Pyro ``model`` and ``guide`` (conventions of :mod:`.program`): the continuous latent
    sites of the model packed per datapoint into u ∈ ℝ^P, each through ``biject_to`` of its
    support; discrete latent sites summed out by parallel enumeration.

    :param start: ``"guide"`` (the guide, with its discrete sites summed out) or ``"prior"``.
        The guide's density at arbitrary z is needed: a flow without an inverse (planar,
        radial) works with ``"prior"`` only.
    :param data_plate: the data plate's name, where it cannot be told from the program.
    :param start_guide: with ``start="guide"``, a guide with the same sites to start from in
        place of ``guide`` (any normalized density will do): for a flow guide, the Gaussians
        its flows transform, whose density at a given z needs no inverse of the flow (an IAF's
        inverse is one network pass per latent dimension). ``guide`` still gives the
        encoder's own ELBO (:meth:`sample_guide`).
    """

    def __init__(self, model, guide, *, start: str = "guide", data_plate: str | None = None,
                 start_guide=None):
        self.model, self.guide = model, guide
        self.start, self.data_plate = _check_start(start), data_plate
        self.start_guide = guide if start_guide is None else start_guide

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
        """Bytes of working memory per (chain × datapoint) row of a gradient evaluation
        (twice :func:`~pyro_vae.evaluation.program.trace_bytes`: the backward pass)."""
        data = as_data(data)
        return 2 * trace_bytes(self.model, self.guide, data, self.info(data))


def _is_identity(transform) -> bool:
    while isinstance(transform, IndependentTransform):
        transform = transform.base_transform
    return isinstance(transform, ComposeTransform) and not transform.parts


class _ProgramDensity:
    def __init__(self, target: ProgramTarget, data: tuple, info: ProgramInfo):
        self.data, self.info, self.start = data, info, target.start
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

    def sample_start(self, num_chains: int) -> torch.Tensor:
        return self._draw(self.start_guide if self.start == "guide" else self.model, num_chains)

    def sample_guide(self, num_samples: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``num_samples`` draws of the guide and their log-density on u (from the guide's own
        trace: a flow needs no inverse), discrete sites sampled, as the guide's ELBO has them."""
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


def target_for(vae, *, start: str = "guide"):
    """The target of a model of this package: :class:`VAETarget` (the fast path) for the
    one-layer :class:`~pyro_vae.VAE` without context, :class:`ProgramTarget` of its model and
    guide otherwise (a :class:`~pyro_vae.HierarchicalVAE`, a VAE with context); a
    hierarchical VAE with flows started at its guide anneals in the flows' input coordinates
    (:class:`~pyro_vae.evaluation.flow_target.HierarchicalFlowTarget`)."""
    if isinstance(vae, VAE) and not vae.context_dim:
        return VAETarget(vae, start=start)
    if getattr(vae, "flows", None) is not None and _check_start(start) == "guide":
        return HierarchicalFlowTarget(vae)
    return ProgramTarget(vae.model, vae.guide, start=start)
