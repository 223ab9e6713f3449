"""Encoder and decoder networks: multilayer perceptrons with sizes, depth and activation as
arguments, and the architecture presets of Burda et al. (2016) and Pyro's VAE example.

Shapes: ``x`` is ``(..., x_dim)``, ``z`` is ``(..., latent_dim)``; leading dimensions (a batch,
and for vectorized particles a particle dimension in front of it) pass through unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pyro_vae.errors import ConfigError

__all__ = [
    "ACTIVATIONS",
    "PRESETS",
    "Architecture",
    "GaussianEncoder",
    "MLPDecoder",
    "get_preset",
    "mlp",
]

ACTIVATIONS = {
    "tanh": nn.Tanh,
    "softplus": nn.Softplus,
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
}


@dataclass(frozen=True)
class Architecture:
    """Sizes of a VAE; each generative network mirrors the hidden sizes of its inference
    network. ``hidden_sizes`` and ``latent_dim`` are those of the first stochastic layer
    (x → z_1); a hierarchical VAE has more (:class:`~pyro_vae.HierarchicalVAE`)."""

    hidden_sizes: tuple[int, ...]
    latent_dim: int
    activation: str
    init_output_bias: bool  # decoder output bias := likelihood parameter of the data mean
    reference: str
    # (hidden sizes, latent size) of z_2, z_3, ...: the network z_(l-1) → z_l of each layer
    upper_layers: tuple[tuple[tuple[int, ...], int], ...] = ()

    @property
    def stochastic_layers(self) -> int:
        return 1 + len(self.upper_layers)

    @property
    def latent_dims(self) -> tuple[int, ...]:
        """Sizes of z_1, ..., z_L."""
        return (self.latent_dim, *(size for _, size in self.upper_layers))

    @property
    def layer_hidden_sizes(self) -> tuple[tuple[int, ...], ...]:
        """Hidden sizes of the inference network of each stochastic layer."""
        return (self.hidden_sizes, *(hidden for hidden, _ in self.upper_layers))

    def describe(self) -> str:
        """The layer sizes, e.g. ``x-200-200-100-100-100-50``."""
        sizes = [str(s) for hidden, latent in zip(self.layer_hidden_sizes, self.latent_dims,
                                                  strict=True) for s in (*hidden, latent)]
        return "-".join(["x", *sizes])


PRESETS = {
    # Pyro's VAE example (examples/vae/vae.py): one hidden layer of 400 softplus units.
    "pyro": Architecture((400,), 50, "softplus", False, "Pyro examples/vae/vae.py"),
    # Burda, Grosse & Salakhutdinov (2016), one stochastic layer: 784-200-200-50, tanh, with
    # the decoder output bias set to the logit of the training mean.
    "burda": Architecture(
        (200, 200), 50, "tanh", True, "Burda et al. (2016), Importance Weighted Autoencoders"
    ),
    # Burda et al. (2016), two stochastic layers (their appendix): x-200-200-z_1(100) and
    # z_1-100-100-z_2(50), tanh; the generative networks mirror them.
    "burda2": Architecture(
        (200, 200), 100, "tanh", True, "Burda et al. (2016), two stochastic layers",
        upper_layers=(((100, 100), 50),),
    ),
}


def get_preset(name: str) -> Architecture:
    """Return the architecture preset ``name`` (one of :data:`PRESETS`)."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(
            f"unknown preset {name!r}; known presets: {', '.join(sorted(PRESETS))}"
        ) from None


def _activation(name: str) -> nn.Module:
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise ConfigError(
            f"unknown activation {name!r}; known activations: {', '.join(sorted(ACTIVATIONS))}"
        ) from None


def mlp(in_dim: int, hidden_sizes: tuple[int, ...], activation: str) -> nn.Sequential:
    """Linear layers of ``hidden_sizes`` units, each followed by ``activation``."""
    layers: list[nn.Module] = []
    for size in hidden_sizes:
        if size <= 0:
            raise ConfigError(f"hidden layer sizes must be positive, got {hidden_sizes}")
        layers += [nn.Linear(in_dim, size), _activation(activation)]
        in_dim = size
    return nn.Sequential(*layers)


def _with_context(h: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
    if context is None:
        return h
    # context (..., B, c) and h (..., B, d) broadcast against each other, e.g. a particle
    # dimension in front of h, or an enumerated label in front of the context.
    batch = torch.broadcast_shapes(h.shape[:-1], context.shape[:-1])
    return torch.cat([h.expand(batch + h.shape[-1:]), context.expand(batch + context.shape[-1:])],
                     dim=-1)


class GaussianEncoder(nn.Module):
    """The amortized posterior q_φ(z|x) = N(loc(x), diag(scale(x)²)).

    ``forward(x, context=None)`` returns ``(loc, scale)``, each ``(B, latent_dim)``; the scale
    is ``exp`` of a linear output, as in Kingma & Welling (2014, appendix C.2).
    """

    def __init__(
        self,
        x_dim: int,
        latent_dim: int,
        hidden_sizes: tuple[int, ...] = (400,),
        activation: str = "softplus",
        *,
        context_dim: int = 0,
    ):
        super().__init__()
        self.body = mlp(x_dim + context_dim, tuple(hidden_sizes), activation)
        last = hidden_sizes[-1] if hidden_sizes else x_dim + context_dim
        self.features_dim = last  # size of h, what a flow guide conditions on
        self.loc = nn.Linear(last, latent_dim)
        self.log_scale = nn.Linear(last, latent_dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None):
        return self.heads(self.features(x, context))

    def features(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """The last hidden layer h(x), ``(..., features_dim)``."""
        return self.body(_with_context(x, context))

    def heads(self, h: torch.Tensor):
        """``(loc, scale)`` from the last hidden layer ``h``."""
        return self.loc(h), self.log_scale(h).exp()


class MLPDecoder(nn.Module):
    """The decoder of p_θ(x|z): maps z ``(..., latent_dim)`` to the likelihood's parameter
    ``(..., x_dim)`` (logits for the Bernoulli likelihoods, the mean for the Gaussian)."""

    def __init__(
        self,
        latent_dim: int,
        x_dim: int,
        hidden_sizes: tuple[int, ...] = (400,),
        activation: str = "softplus",
        *,
        context_dim: int = 0,
    ):
        super().__init__()
        self.body = mlp(latent_dim + context_dim, tuple(hidden_sizes), activation)
        last = hidden_sizes[-1] if hidden_sizes else latent_dim + context_dim
        self.out = nn.Linear(last, x_dim)

    def forward(self, z: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        return self.out(self.body(_with_context(z, context)))
