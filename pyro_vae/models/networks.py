"""Encoder and decoder networks: multilayer perceptrons of given sizes and activation. ``x`` is
``(..., x_dim)``, ``z`` ``(..., latent_dim)``; leading dimensions (a batch, and a particle
dimension in front of it) pass through unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

from pyro_vae.errors import ConfigError

__all__ = ["ACTIVATIONS", "GaussianEncoder", "MLPDecoder", "make_activation", "mlp",
           "output_numel", "with_context"]

ACTIVATIONS = {
    "tanh": nn.Tanh,
    "softplus": nn.Softplus,
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
}


def make_activation(name: str) -> nn.Module:
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
        layers += [nn.Linear(in_dim, size), make_activation(activation)]
        in_dim = size
    return nn.Sequential(*layers)


def with_context(h: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
    if context is None:
        return h
    # broadcast, e.g. a particle dimension in front of h or an enumerated label in front of context
    batch = torch.broadcast_shapes(h.shape[:-1], context.shape[:-1])
    return torch.cat([h.expand(batch + h.shape[-1:]), context.expand(batch + context.shape[-1:])],
                     dim=-1)


class GaussianEncoder(nn.Module):
    """q_φ(z|x) = N(loc(x), diag(scale(x)²)): ``forward`` returns ``(loc, scale)``, the scale
    ``exp`` of a linear output (Kingma & Welling 2014, appendix C.2)."""

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
        return self.body(with_context(x, context))

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

    @property
    def output_bias(self) -> nn.Parameter:
        """The bias of the output layer, ``(x_dim,)``: :meth:`pyro_vae.VAE.init_output_bias`
        sets it from the data mean."""
        return self.out.bias

    def forward(self, z: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        return self.out(self.body(with_context(z, context)))


@torch.no_grad()
def output_numel(module: nn.Module, *inputs) -> int:
    """How many numbers the layers with parameters of ``module`` output in one forward pass
    on ``inputs`` (one row; ``None`` passed as it is): the width of its activations."""
    total = 0

    def count(layer, args, output) -> None:
        nonlocal total
        if torch.is_tensor(output):
            total += output.numel()

    hooks = [m.register_forward_hook(count) for m in module.modules()
             if not any(True for _ in m.children()) and any(True for _ in m.parameters(False))]
    try:
        module(*inputs)
    finally:
        for hook in hooks:
            hook.remove()
    return total
