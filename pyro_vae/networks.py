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
    """Sizes of a one-stochastic-layer VAE; the decoder mirrors the encoder's hidden sizes."""

    hidden_sizes: tuple[int, ...]
    latent_dim: int
    activation: str
    init_output_bias: bool  # decoder output bias := likelihood parameter of the data mean
    reference: str


PRESETS = {
    # Pyro's VAE example (examples/vae/vae.py): one hidden layer of 400 softplus units.
    "pyro": Architecture((400,), 50, "softplus", False, "Pyro examples/vae/vae.py"),
    # Burda, Grosse & Salakhutdinov (2016), one stochastic layer: 784-200-200-50, tanh, with
    # the decoder output bias set to the logit of the training mean.
    "burda": Architecture(
        (200, 200), 50, "tanh", True, "Burda et al. (2016), Importance Weighted Autoencoders"
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
    # context: (B, c) broadcast against h: (..., B, d), e.g. a particle dimension in front.
    return torch.cat([h, context.expand(h.shape[:-1] + context.shape[-1:])], dim=-1)


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
        self.loc = nn.Linear(last, latent_dim)
        self.log_scale = nn.Linear(last, latent_dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None):
        h = self.body(_with_context(x, context))
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
