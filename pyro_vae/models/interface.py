"""The model interface: what training, the evaluators, the pictures and the reports ask of a
model (the table of who asks what: ``docs/models.md``). :class:`~pyro_vae.VAE` implements all
of it; a model of one's own that implements :class:`VAEModel` trains with every estimator that
can train it and is evaluated through Pyro's traces (``pyro-vae train --model MODULE:FUNCTION``).
Consumers ask a model what it offers (:attr:`VAEModel.capabilities`), never what class it is.
"""

from __future__ import annotations

import inspect
from typing import NamedTuple, Protocol

import torch
from torch.distributions import Distribution

from pyro_vae.errors import ConfigTypeError
from pyro_vae.models.likelihoods import Likelihood

__all__ = ["Capabilities", "GuidePath", "LayeredModel", "VAEModel", "check_model",
           "missing_members"]


class Capabilities(NamedTuple):
    """What a model offers, as training and evaluation ask it.

    >>> Capabilities(layers=2, flow="iaf", flow_layers=3).describe()
    'a 2-layer VAE with an IAF guide (3 flow layers)'
    """

    layers: int = 1  # stochastic layers L: z_1 (next to x), ..., z_L (under the N(0, I) prior)
    flow: str | None = None  # None: diagonal Gaussian guides; "iaf": pushed through IAFs
    flow_layers: int = 0  # transforms per flow (0 without one)
    closed_form_kl_sites: tuple[str, ...] = ()  # sites whose closed-form KL(q ‖ p) is the
    # ELBO's term (the model samples them after no latent that the guide samples after)
    layered: bool = False  # offers the LayeredModel methods: the fast evaluators
    context_dim: int = 0  # size of the conditioning input the networks take (0: none)

    def describe(self) -> str:
        model = "a one-layer VAE" if self.layers == 1 else f"a {self.layers}-layer VAE"
        if self.flow is None:
            return f"{model} with a diagonal Gaussian guide"
        return f"{model} with an {self.flow.upper()} guide ({self.flow_layers} flow layers)"


class GuidePath(NamedTuple):
    """One walk through a layered guide, z_0 = x: for layer l, the base Gaussian
    N(loc_l, diag scale_l²) of z_(l-1), its draw e_l, and z_l = T_l(e_l) (T_l the layer's
    flow, or the identity). Shapes ``(S, B, ·)``: S samples of B datapoints."""

    u: torch.Tensor  # (S, B, Σ d_l): the base draws e_1..e_L, concatenated
    zs: list[torch.Tensor]  # z_1..z_L, each (S, B, d_l)
    locs: list[torch.Tensor]  # loc_l, (B, d_1) for the first layer, (S, B, d_l) above
    scales: list[torch.Tensor]
    log_q: list[torch.Tensor]  # log N(e_l; loc_l, scale_l²) per layer, (S, B) nats
    log_det: torch.Tensor  # Σ_l log |det ∂z_l/∂e_l|, (S, B) nats (0 without flows)


class VAEModel(Protocol):
    """A model p(z) p(x|z) and an amortized guide q(z|x) over minibatches x ``(B, x_dim)``,
    an :class:`torch.nn.Module` whose parameters are the networks'. Every figure is in nats."""

    x_dim: int  # features of one datapoint
    latent_dim: int  # size of the top latent layer, whose prior is N(0, I): what samples draw
    beta: float  # weight of the latent sites' log-densities (1: the ELBO); schedules set it
    likelihood: Likelihood  # p(x|z) as an object: its support check, what log p(x) is

    @property
    def capabilities(self) -> Capabilities:
        """What the model offers (see :class:`Capabilities`)."""

    def model(self, x, context=None, *, num_data: int | None = None, plate: bool = True):
        """The Pyro program of p(z) p(x|z), x observed at a site inside a data plate over the
        B datapoints (``plate=False``: inside the caller's); ``num_data`` scales a minibatch
        to the full data set."""

    def guide(self, x, context=None, *, num_data: int | None = None, plate: bool = True):
        """The Pyro program of q(z|x), with the model's latent sites."""

    def check_data(self, x: torch.Tensor, *, where: str = "data") -> None:
        """Raise :class:`~pyro_vae.errors.DataError` unless ``x`` is data this model takes."""

    def encode(self, x: torch.Tensor, context=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and standard deviation ``(B, latent_dim)`` of q(z_L|x) (a Gaussian's, for
        embeddings, active units and the KL to the prior per dimension)."""

    def decode(self, z: torch.Tensor, context=None) -> Distribution:
        """p(x|z) for a top-layer z ``(..., latent_dim)``, event shape ``(x_dim,)``."""

    def bytes_per_row(self) -> int:
        """Working memory of one datapoint and one sample through guide and model, forward
        and backward: what memory checks and evaluation blocks are sized from."""


class LayeredModel(VAEModel, Protocol):
    """A :class:`VAEModel` whose guide is a chain of Gaussians q(z_1|x) q(z_2|z_1) ⋯, each
    optionally pushed through a flow, under the prior N(0, I) of the top layer
    (``capabilities.layered``): the log joint in closed pieces, which the fast evaluators and
    the test ELBO share."""

    def guide_path(self, x: torch.Tensor, context=None, *, u: torch.Tensor | None = None,
                   num_samples: int = 1, generator: torch.Generator | None = None) -> GuidePath:
        """Walk the guide at the base draws ``u`` ``(S, B, Σ d_l)``, or drawing ``num_samples``
        of them (from ``generator``, else torch's global one)."""

    def log_prior(self, zs: list[torch.Tensor], context=None) -> list[torch.Tensor]:
        """log p(z_l | z_(l+1)) per layer (log p(z_L) = log N(z_L; 0, I) last), ``(S, B)``."""

    def log_likelihood(self, x: torch.Tensor, z: torch.Tensor, context=None) -> torch.Tensor:
        """log p(x | z_1), ``(S, B)`` nats."""

    latent_dims: tuple[int, ...]  # sizes of z_1, ..., z_L

    def sample_prior(self, shape: tuple[int, ...], context=None, *, generator=None
                     ) -> list[torch.Tensor]:
        """z_1..z_L, each ``shape + (d_l,)``, drawn from the model, top down."""

    def sample_x(self, z: torch.Tensor, context=None) -> torch.Tensor:
        """x ~ p(x | z_1) for z_1 ``(..., d_1)``."""

    def pull_back(self, x: torch.Tensor, zs: list[torch.Tensor], context=None) -> torch.Tensor:
        """The base draws u that :meth:`guide_path` maps to ``zs`` (the flows' inverses)."""


def missing_members(model, protocol: type = VAEModel) -> list[str]:
    """What ``model`` lacks of ``protocol`` (:class:`VAEModel` or :class:`LayeredModel`): the
    attributes and methods it declares, and ``parameters`` (a model is an ``nn.Module``)."""
    declared = [name for cls in reversed(protocol.__mro__) if cls.__module__ == __name__
                for name in (*inspect.get_annotations(cls), *cls.__dict__)
                if not name.startswith("_")]
    return [name for name in dict.fromkeys((*declared, "parameters"))
            if not hasattr(model, name)]


def check_model(model, needed_by: str, *, layered: bool = False):
    """``model`` if it offers :class:`VAEModel` (with ``layered``, :class:`LayeredModel`);
    a one-line :class:`~pyro_vae.errors.ConfigTypeError` naming ``needed_by`` and what the
    model lacks otherwise."""
    protocol = LayeredModel if layered else VAEModel
    missing = missing_members(model, protocol)
    if missing:
        more = " and more" if len(missing) > 4 else ""
        raise ConfigTypeError(f"{needed_by} needs a model that implements pyro_vae.models."
                              f"{protocol.__name__} (pyro_vae.VAE does); got a "
                              f"{type(model).__name__}, without {', '.join(missing[:4])}{more}")
    return model
