"""An objective is an estimator bound to one model and guide: ``differentiable_loss(x)`` is the
**loss = −bound** summed over the minibatch ``x``, in nats (times num_data / B when ``num_data``
is given), and its gradient is the estimator's. Any optimizer steps it, and
:class:`pyro.infer.SVI` takes one as its loss::

    >>> import pyro, torch
    >>> from pyro_vae import VAE, make_objective
    >>> vae = VAE(4, latent_dim=2, hidden_sizes=(8,))
    >>> svi = pyro.infer.SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}),
    ...                      make_objective("iwae", vae, num_particles=5))
    >>> loss = svi.step(torch.ones(3, 4))   # −IWAE_5 summed over the 3 datapoints, in nats
    >>> loss > 0
    True
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Callable, Mapping
from types import MappingProxyType

import pyro
import torch
from pyro import poutine

from pyro_vae import checks
from pyro_vae.models.handlers import modules_unregistered

__all__ = ["Objective", "PyroObjective", "TorchObjective"]


class Objective(abc.ABC):
    """An estimator bound to one VAE (see the module docstring for the loss's scale)."""

    name: str
    num_particles: int  # the K of the bound (MIWAE and PIWAE draw M·K samples)
    vae: torch.nn.Module
    options: Mapping = MappingProxyType({})  # the estimator's options, e.g. {"alpha": 0.5}

    @abc.abstractmethod
    def differentiable_loss(self, x: torch.Tensor, *, num_data: int | None = None
                            ) -> torch.Tensor:
        """The loss as a differentiable scalar tensor (nats, summed over the minibatch)."""

    def loss(self, x: torch.Tensor, *, num_data: int | None = None) -> float:
        """The loss as a float, without gradients."""
        with torch.no_grad():
            return float(self.differentiable_loss(x, num_data=num_data))

    def __call__(self, model, guide, x: torch.Tensor, *, num_data: int | None = None
                 ) -> torch.Tensor:
        """The differentiable loss, called as :class:`pyro.infer.SVI` calls its loss, with the
        parameters registered in Pyro's param store; ``model`` and ``guide`` are the VAE's."""
        pyro.module(self.vae.prefix + "vae", self.vae)
        return self.differentiable_loss(x, num_data=num_data)

    def scaled_loss(self, x: torch.Tensor, scale: float) -> torch.Tensor:
        """``scale`` × the loss of a shard ``x`` of a larger minibatch (data-parallel training),
        as ``num_data`` would scale it in one process."""
        if scale == 1.0:  # every step of one process: no check, no scaling
            return self.differentiable_loss(x)
        return self._scaled(x, checks.number("scale", scale, low=0, open_low=True))

    def _scaled(self, x: torch.Tensor, scale: float) -> torch.Tensor:
        return scale * self.differentiable_loss(x)


class PyroObjective(Objective):
    """A Pyro ELBO with the VAE's model and guide. For JIT-compiled ELBOs the minibatch size
    and β travel as a keyword argument, so that each gets its own compiled trace."""

    def __init__(self, name: str, vae, elbo, *, jit: bool = False,
                 num_particles: int | None = None, options: Mapping | None = None):
        self.name, self.vae, self.elbo, self.jit = name, vae, elbo, jit
        self.num_particles = elbo.num_particles if num_particles is None else num_particles
        self.options = MappingProxyType(dict(options or {}))
        if jit:

            def model(*args, _static=None, **kwargs):
                return vae.model(*args, **kwargs)

            def guide(*args, _static=None, **kwargs):
                return vae.guide(*args, **kwargs)

            self.model, self.guide = model, guide
        else:
            self.model, self.guide = vae.model, vae.guide

    def arguments(self, x: torch.Tensor, num_data: int | None = None) -> tuple[tuple, dict]:
        """``(args, kwargs)`` of ``self.model`` and ``self.guide`` for minibatch ``x``."""
        kwargs = {} if num_data is None else {"num_data": num_data}
        if self.jit:
            kwargs["_static"] = (x.shape[0], self.vae.beta)
        return (x,), kwargs

    def differentiable_loss(self, x, *, num_data=None) -> torch.Tensor:
        """The ELBO's differentiable loss; the modules skip Pyro's param store (except under
        JIT, which finds its parameters there)."""
        args, kwargs = self.arguments(x, num_data)
        with contextlib.nullcontext() if self.jit else modules_unregistered(self.vae):
            return self.elbo.differentiable_loss(self.model, self.guide, *args, **kwargs)

    def loss(self, x, *, num_data=None) -> float:
        args, kwargs = self.arguments(x, num_data)
        with torch.no_grad():
            return float(self.elbo.loss(self.model, self.guide, *args, **kwargs))

    def _scaled(self, x, scale: float) -> torch.Tensor:
        """Under :func:`pyro.poutine.scale`, as ``num_data`` scales every log-density (also
        inside IWAE's log-mean-exp); JIT-compiled ELBOs, whose traces are fixed, multiply."""
        if self.jit:
            return super()._scaled(x, scale)
        with poutine.scale(scale=scale):
            return self.differentiable_loss(x)


class TorchObjective(Objective):
    """A hand-written plain-PyTorch loss from :mod:`pyro_vae.losses`."""

    def __init__(self, name: str, vae, loss_fn: Callable, num_particles: int = 1):
        self.name, self.vae, self.loss_fn, self.num_particles = name, vae, loss_fn, num_particles

    def differentiable_loss(self, x, *, num_data=None) -> torch.Tensor:
        return self.loss_fn(self.vae, x, num_particles=self.num_particles, num_data=num_data)
