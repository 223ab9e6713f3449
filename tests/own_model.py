"""A model of one's own, written directly in Pyro (not pyro_vae.VAE), that implements the model
interface (:class:`pyro_vae.models.VAEModel`): what ``docs/models.md`` shows, and what the
tests train and evaluate through every path (``--model tests.own_model:build``)."""

from __future__ import annotations

import contextlib

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyro_vae import Capabilities
from pyro_vae.checks import tensor


class TinyVAE(nn.Module):
    """z ~ N(0, I) of ``latent_dim``, x | z from ``likelihood`` of a one-layer decoder; q(z|x)
    a diagonal Gaussian from a one-layer encoder."""

    def __init__(self, x_dim: int, likelihood, beta: float = 1.0, latent_dim: int = 2,
                 hidden: int = 16):
        super().__init__()
        self.x_dim, self.latent_dim, self.beta, self.likelihood = x_dim, latent_dim, beta, \
            likelihood
        self.encoder = nn.Sequential(nn.Linear(x_dim, hidden), nn.Tanh(),
                                     nn.Linear(hidden, 2 * latent_dim))
        self.decoder = nn.Sequential(nn.Linear(latent_dim, hidden), nn.Tanh(),
                                     nn.Linear(hidden, x_dim))

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(layers=1)  # no layered log-densities: the generic paths

    def _scaled(self):
        return pyro.poutine.scale(scale=self.beta) if self.beta != 1 else contextlib.nullcontext()

    def model(self, x, context=None, *, num_data=None, plate=True):
        pyro.module("tiny_decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            with self._scaled():
                z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], self.latent_dim),
                                                 1.0).to_event(1))
            pyro.sample("x", self.likelihood(self.decoder(z)).to_event(1), obs=x)

    def guide(self, x, context=None, *, num_data=None, plate=True):
        pyro.module("tiny_encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            loc, scale = self.encode(x)
            with self._scaled():
                pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    def check_data(self, x, *, where="data"):
        tensor(where, x, shape=(None, self.x_dim))
        self.likelihood.check_data(x, where=where)

    def encode(self, x, context=None):
        loc, log_scale = self.encoder(x).chunk(2, -1)
        return loc, log_scale.exp()

    def decode(self, z, context=None):
        return self.likelihood(self.decoder(z)).to_event(1)

    def bytes_per_row(self) -> int:
        return 4 * (2 * 16 + 3 * self.x_dim + 4 * self.latent_dim)


def build(*, x_dim: int, image_shape, likelihood, beta: float) -> TinyVAE:
    """The factory that ``--model tests.own_model:build`` names."""
    return TinyVAE(x_dim, likelihood, beta)


def not_a_model(*, x_dim, image_shape, likelihood, beta):
    """A factory that returns something without the interface (for the error tests)."""
    return torch.nn.Linear(x_dim, 2)
