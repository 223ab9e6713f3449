"""An objective is an estimator bound to one model and guide: ``differentiable_loss(x)`` is the
**loss = −bound** summed over the minibatch ``x``, in nats, on the scale of
:meth:`pyro.infer.SVI.step` (times num_data / B when ``num_data`` is given); its gradient is
the estimator's. Divide by the batch size for nats per datapoint.

Objectives know nothing of optimizers: :class:`pyro_vae.trainer.Trainer` steps any of them with
:class:`torch.optim.Adam`, a user's own loop can do the same, and :class:`pyro.infer.SVI` takes
one as its loss, as it takes a Pyro ELBO::

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

from pyro_vae.models.vae import modules_unregistered

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
        """The differentiable loss, called as :class:`pyro.infer.SVI` calls its loss,
        ``loss(model, guide, x)``, with the parameters registered in Pyro's param store so
        that SVI's optimizer finds them: ``svi.step(x)`` then returns −bound as a float, for
        every estimator. The objective is bound to its model; ``model`` and ``guide`` are the
        VAE's own (``vae.model``, ``vae.guide``)."""
        pyro.module(self.vae.prefix + "vae", self.vae)
        return self.differentiable_loss(x, num_data=num_data)

    def scaled_loss(self, x: torch.Tensor, scale: float) -> torch.Tensor:
        """``scale`` × the loss of ``x``, for a shard ``x`` of a larger minibatch (data-parallel
        training): the loss that ``num_data`` would give in one process. Estimators that are
        sums over datapoints are multiplied; Pyro's scale every log-density instead (see
        :class:`PyroObjective`)."""
        loss = self.differentiable_loss(x)
        return loss if scale == 1.0 else scale * loss


class PyroObjective(Objective):
    """A Pyro ELBO with the VAE's model and guide.

    For JIT-compiled ELBOs the minibatch size and β travel as a keyword argument, because
    Pyro caches one compiled trace per distinct keyword arguments: a last minibatch of
    another size, or a new β from a warm-up schedule, then compiles its own trace.
    """

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
        """``(args, kwargs)`` of the model and guide for minibatch ``x``: what to pass to the
        ELBO's methods, or to :meth:`pyro.infer.SVI.step`, with ``self.model, self.guide``."""
        kwargs = {} if num_data is None else {"num_data": int(num_data)}
        if self.jit:
            kwargs["_static"] = (x.shape[0], self.vae.beta)
        return (x,), kwargs

    def differentiable_loss(self, x, *, num_data=None) -> torch.Tensor:
        """The ELBO's differentiable loss. Its gradient reaches the VAE's parameters directly,
        so the model and guide skip registering their modules with Pyro's param store
        (:func:`pyro_vae.models.vae.modules_unregistered`), except for the JIT-compiled ELBOs,
        which find their parameters there."""
        args, kwargs = self.arguments(x, num_data)
        with contextlib.nullcontext() if self.jit else modules_unregistered(self.vae):
            return self.elbo.differentiable_loss(self.model, self.guide, *args, **kwargs)

    def loss(self, x, *, num_data=None) -> float:
        args, kwargs = self.arguments(x, num_data)
        with torch.no_grad():
            return float(self.elbo.loss(self.model, self.guide, *args, **kwargs))

    def scaled_loss(self, x, scale: float) -> torch.Tensor:
        """Under :func:`pyro.poutine.scale`, which scales every site's log-density as
        ``num_data`` does in one process, also inside IWAE's log-mean-exp where it is not a
        plain factor. JIT-compiled ELBOs, whose traces are fixed, are multiplied."""
        if scale == 1.0 or self.jit:
            return super().scaled_loss(x, scale)
        with poutine.scale(scale=scale):
            return self.differentiable_loss(x)


class TorchObjective(Objective):
    """A hand-written plain-PyTorch loss from :mod:`pyro_vae.losses`."""

    def __init__(self, name: str, vae, loss_fn: Callable, num_particles: int = 1):
        self.name, self.vae, self.loss_fn, self.num_particles = name, vae, loss_fn, num_particles

    def differentiable_loss(self, x, *, num_data=None) -> torch.Tensor:
        return self.loss_fn(self.vae, x, num_particles=self.num_particles, num_data=num_data)
