"""Encoder and decoder networks: multilayer perceptrons with sizes, depth and activation as
arguments, and the architecture presets of Burda et al. (2016) and Pyro's VAE example.

Shapes: ``x`` is ``(..., x_dim)``, ``z`` is ``(..., latent_dim)``; leading dimensions (a batch,
and for vectorized particles a particle dimension in front of it) pass through unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
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
    "mlp_networks",
    "output_numel",
]

ACTIVATIONS = {
    "tanh": nn.Tanh,
    "softplus": nn.Softplus,
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
}


def mlp_networks(x_dim: int, *, latent_dim, hidden_sizes, activation: str, context_dim: int = 0,
                 image_shape=None) -> dict:
    """The preset networks of :class:`~pyro_vae.VAE`: nothing to add, it builds its MLPs."""
    return {}


@dataclass(frozen=True)
class Architecture:
    """Sizes of a VAE, per stochastic layer: the inference network of layer l reads z_(l-1)
    (z_0 = x) through ``hidden_sizes[l]``; each generative network mirrors it. ``networks``
    builds what :class:`~pyro_vae.VAE` takes besides the sizes (``encoder``, ``decoder``) for
    data of ``x_dim`` features and ``image_shape``: the MLPs (nothing), or a preset's own."""

    hidden_sizes: tuple[tuple[int, ...], ...]
    latent_dims: tuple[int, ...]
    activation: str
    init_output_bias: bool  # decoder output bias := likelihood parameter of the data mean
    reference: str
    networks: Callable[..., dict] = mlp_networks

    @property
    def stochastic_layers(self) -> int:
        return len(self.latent_dims)

    @property
    def summary(self) -> str:
        """The sizes and the activation, e.g. ``x-400-50 softplus``."""
        layers = "" if self.stochastic_layers == 1 else f", {self.stochastic_layers} stochastic " \
            "layers"
        return f"{self.describe()} {self.activation}{layers}"

    def describe(self) -> str:
        """The layer sizes, e.g. ``x-200-200-100-100-100-50``."""
        sizes = [str(s) for hidden, latent in zip(self.hidden_sizes, self.latent_dims,
                                                  strict=True) for s in (*hidden, latent)]
        return "-".join(["x", *sizes])


PRESETS = {
    # Pyro's VAE example (examples/vae/vae.py): one hidden layer of 400 softplus units.
    "pyro": Architecture(((400,),), (50,), "softplus", False, "Pyro examples/vae/vae.py"),
    # Burda, Grosse & Salakhutdinov (2016), one stochastic layer: 784-200-200-50, tanh, with
    # the decoder output bias set to the logit of the training mean.
    "burda": Architecture(((200, 200),), (50,), "tanh", True,
                          "Burda et al. (2016), Importance Weighted Autoencoders"),
    # Burda et al. (2016), two stochastic layers (their appendix): x-200-200-z_1(100) and
    # z_1-100-100-z_2(50), tanh; the generative networks mirror them.
    "burda2": Architecture(((200, 200), (100, 100)), (100, 50), "tanh", True,
                           "Burda et al. (2016), two stochastic layers"),
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

    @property
    def output_bias(self) -> nn.Parameter:
        """The bias of the output layer, ``(x_dim,)``: :meth:`pyro_vae.VAE.init_output_bias`
        sets it from the data mean."""
        return self.out.bias

    def forward(self, z: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        return self.out(self.body(_with_context(z, context)))


@torch.no_grad()
def output_numel(module: nn.Module, *inputs) -> int:
    """How many numbers the layers with parameters of ``module`` output in one forward pass
    on ``inputs`` (a batch of one row: ``None`` inputs are passed as they are): the width of
    its activations, whatever the architecture (linear, convolutional)."""
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
