"""Convolutional encoder and decoder for images of any size H × W (``--preset conv``): each
hidden size is a number of channels, each layer a 4 × 4 convolution of stride 2 that halves
the image (rounding down), mirrored by transposed convolutions that restore its exact size.

    encoder:  x (H×W) → conv → ⋯ → conv → h (C · h' · w') → (loc, log scale) of q(z|x)
    decoder:  z → linear → (C, h', w') → transposed conv → ⋯ → (1, H, W) + a per-pixel bias

The encoder's ``features`` and ``heads`` let an IAF guide condition on its last hidden layer.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from pyro_vae import checks
from pyro_vae.errors import ConfigError
from pyro_vae.models.networks import make_activation, with_context

__all__ = ["ConvDecoder", "ConvEncoder", "conv_networks"]


def _halvings(image_shape: Sequence[int], layers: int) -> list[tuple[int, int]]:
    """The image size after each stride-2 layer: (H, W), (H//2, W//2), ..."""
    sizes = [tuple(image_shape)]
    for _ in range(layers):
        h, w = sizes[-1]
        if h < 2 or w < 2:
            raise ConfigError(f"images of {image_shape[0]}x{image_shape[1]} pixels are too "
                              f"small for {layers} convolutional layers; give fewer "
                              "--hidden-sizes")
        sizes.append((h // 2, w // 2))
    return sizes


class ConvEncoder(nn.Module):
    """q(z|x) = N(loc(x), diag(scale(x)²)) from stride-2 convolutions of ``channels``."""

    def __init__(self, image_shape: Sequence[int], latent_dim: int, channels: Sequence[int],
                 activation: str, *, context_dim: int = 0):
        super().__init__()
        self.image_shape = tuple(image_shape)
        sizes = _halvings(image_shape, len(channels))
        layers, c_in = [], 1
        for c_out in channels:
            layers += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1),
                       make_activation(activation)]
            c_in = c_out
        self.body = nn.Sequential(*layers)
        self.features_dim = c_in * sizes[-1][0] * sizes[-1][1] + context_dim
        self.loc = nn.Linear(self.features_dim, latent_dim)
        self.log_scale = nn.Linear(self.features_dim, latent_dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None):
        return self.heads(self.features(x, context))

    def features(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """The flattened last convolution, with the context beside it: ``(..., features_dim)``."""
        lead = x.shape[:-1]
        h = self.body(x.reshape(-1, 1, *self.image_shape)).flatten(1)
        return with_context(h.reshape(*lead, h.shape[-1]), context)

    def heads(self, h: torch.Tensor):
        """``(loc, scale)`` from the features ``h``."""
        return self.loc(h), self.log_scale(h).exp()


class ConvDecoder(nn.Module):
    """z ``(..., latent_dim)`` → the likelihood's parameter ``(..., H·W)`` through transposed
    convolutions mirroring :class:`ConvEncoder`."""

    def __init__(self, latent_dim: int, image_shape: Sequence[int], channels: Sequence[int],
                 activation: str, *, context_dim: int = 0):
        super().__init__()
        self.image_shape = tuple(image_shape)
        sizes = _halvings(image_shape, len(channels))
        self.start = (channels[-1], *sizes[-1])
        self.input = nn.Sequential(nn.Linear(latent_dim + context_dim,
                                             channels[-1] * sizes[-1][0] * sizes[-1][1]),
                                   make_activation(activation))
        layers = []
        outs = [*reversed(channels[:-1]), 1]
        for i, (c_in, c_out) in enumerate(zip(reversed(channels), outs, strict=True)):
            (h, w), (h_out, w_out) = sizes[-1 - i], sizes[-2 - i]
            layers.append(nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1,
                                             output_padding=(h_out - 2 * h, w_out - 2 * w),
                                             bias=c_out != 1))
            if c_out != 1:
                layers.append(make_activation(activation))
        self.body = nn.Sequential(*layers)
        self.output_bias = nn.Parameter(torch.zeros(image_shape[0] * image_shape[1]))

    def forward(self, z: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        h = self.input(with_context(z, context))
        lead = h.shape[:-1]
        out = self.body(h.reshape(-1, *self.start)).flatten(1)
        return out.reshape(*lead, out.shape[-1]) + self.output_bias


def conv_networks(x_dim: int, *, latent_dim, hidden_sizes, activation: str,
                  context_dim: int = 0, image_shape=None) -> dict:
    """The encoder and decoder of the ``conv`` preset for images of ``image_shape``."""
    if image_shape is not None:
        image_shape = checks.sizes("image_shape", image_shape)
    if image_shape is None or len(image_shape) != 2 or image_shape[0] * image_shape[1] != x_dim:
        raise ConfigError(f"the conv preset needs images: an image shape whose pixels number "
                          f"x_dim = {x_dim}, got {image_shape!r}")
    if not hidden_sizes or isinstance(latent_dim, Sequence):
        raise ConfigError("the conv preset has one stochastic layer and at least one "
                          "convolution (--hidden-sizes gives their channels)")
    return {"encoder": ConvEncoder(image_shape, latent_dim, hidden_sizes, activation,
                                   context_dim=context_dim),
            "decoder": ConvDecoder(latent_dim, image_shape, hidden_sizes, activation,
                                   context_dim=context_dim)}
