"""The doubly reparameterized gradient (DReG) of Tucker, Lawson, Gu & Maddison (2019) for the
IWAE_K bound::

    >>> import pyro, torch
    >>> from pyro_vae import VAE
    >>> vae = VAE(x_dim=4, latent_dim=2, hidden_sizes=(8,))
    >>> svi = pyro.infer.SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}),
    ...                      DReG_ELBO(num_particles=5))
    >>> loss = svi.step(torch.ones(3, 4))   # −IWAE_5 summed over the 3 datapoints, in nats
    >>> loss > 0
    True
"""

from __future__ import annotations

import math

import torch
from pyro.util import warn_if_nan

from pyro_vae.objectives.renyi import IWAE_ELBO
from pyro_vae.objectives.util import particles, reweight_gradients

__all__ = ["DReG_ELBO"]


class DReG_ELBO(IWAE_ELBO):
    """The IWAE_K bound with the doubly reparameterized gradient of Tucker et al. (2019).

    The loss is −IWAE_K summed over the minibatch, as :class:`IWAE_ELBO`'s. With normalized
    weights w̃_k (per datapoint) the gradient is

    - model (θ): Σ_k w̃_k ∇_θ log w_k, the IWAE gradient;
    - guide (φ): Σ_k w̃_k² ∂_z[log p_θ(x, z) − log q_φ̄(z|x)]|_(z_k) ∂_φ z_k, the path term
      only, φ̄ = φ held fixed in log q (:func:`~.util.log_q_at_fixed_parameters`).

    One surrogate gives both: −Σ w̃ log p_θ(x, z̆) + Σ w̃² log q_φ̄(z|x), w̃ detached, z̆ a view
    of z whose gradient a hook multiplies by w̃. At K = 1 this is the STL gradient.

    .. warning:: Every latent site must be reparameterized (:class:`~pyro_vae.errors.ConfigError`
       otherwise). The weights are per datapoint only when every site lies in the data plate.
    """

    name = "dreg"

    def _loss_and_surrogate_loss(self, model, guide, args, kwargs):
        """−IWAE_K summed over the batch, and the DReG surrogate loss."""
        p = particles(self, model, guide, args, kwargs, estimator=self.name, views=True,
                      fixed=True)  # (K, B) each
        log_w = p.log_p - p.log_q
        loss = -(torch.logsumexp(log_w, 0) - math.log(self.num_particles)).sum()
        weights = torch.softmax(log_w.detach(), 0)  # w̃, (K, B)
        reweight_gradients(p.views, weights, self.name)
        surrogate_loss = -((weights * p.log_p).sum() - (weights**2 * p.log_q_fixed).sum())
        warn_if_nan(loss, "loss")
        return loss, surrogate_loss

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """−IWAE_K, summed over the batch, whose gradient is the DReG gradient."""
        loss, surrogate_loss = self._loss_and_surrogate_loss(model, guide, args, kwargs)
        return loss.detach() + (surrogate_loss - surrogate_loss.detach())

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        """−IWAE_K as a float; accumulates the DReG gradient into the parameters (for SVI)."""
        loss, surrogate_loss = self._loss_and_surrogate_loss(model, guide, args, kwargs)
        if surrogate_loss.requires_grad:
            surrogate_loss.backward(retain_graph=self.retain_graph)
        return float(loss.detach())

