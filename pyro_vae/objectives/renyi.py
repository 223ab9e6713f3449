"""The Rényi variational bound of Li & Turner (2016) for an order α in [0, 1),

    VR_α,K(x) = 1/(1 − α) · log (1/K) Σ_k w_k^(1−α),   w_k = p(x, z_k) / q(z_k|x),   z_k ~ q(z|x),

a lower bound on log p(x) between the ELBO (α → 1) and IWAE_K (α = 0: :class:`IWAE_ELBO`,
Burda et al. 2016)::

    >>> import pyro, torch
    >>> from pyro_vae import VAE
    >>> vae = VAE(x_dim=4, latent_dim=2, hidden_sizes=(8,))
    >>> svi = pyro.infer.SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}),
    ...                      VR_ELBO(alpha=0.5, num_particles=5))
    >>> loss = svi.step(torch.ones(3, 4))   # −VR_0.5,5 summed over the 3 datapoints, in nats
    >>> loss > 0
    True
"""

from __future__ import annotations

import math

import pyro.infer
import torch

from pyro_vae import checks
from pyro_vae.objectives.util import particles

__all__ = ["IWAE_ELBO", "VR_ELBO"]


class VR_ELBO(pyro.infer.RenyiELBO):
    """:class:`pyro.infer.RenyiELBO` for α in [0, 1), with K vectorized particles and a
    ``differentiable_loss``: −VR_α,K summed over the minibatch (nats), whose gradient is the
    same surrogate's as ``RenyiELBO.loss_and_grads``, operation for operation.

    .. warning:: ``differentiable_loss`` and :meth:`bound` need every latent site
       reparameterized (:class:`~pyro_vae.errors.ConfigError` otherwise).
    """

    name = "renyi"

    def __init__(self, alpha: float = 0.5, num_particles: int = 5, max_plate_nesting: int = 1):
        alpha = checks.number("alpha", alpha, low=0, high=1, open_high=True)
        super().__init__(alpha=alpha, num_particles=checks.integer("num_particles",
                                                                   num_particles),
                         vectorize_particles=True, max_plate_nesting=max_plate_nesting)

    def log_weights(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """log p(x, z_k) − log q(z_k|x) per particle and datapoint: ``(K, B)`` nats."""
        return particles(self, model, guide, args, kwargs, estimator=self.name).log_w

    def bound(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """VR_α,K per datapoint, ``(B,)`` nats, differentiable (its gradient is the loss's)."""
        scaled = (1.0 - self.alpha) * self.log_weights(model, guide, *args, **kwargs)
        return (torch.logsumexp(scaled, 0) - math.log(self.num_particles)) / (1.0 - self.alpha)

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """−VR_α,K, summed over the minibatch, whose gradient is Pyro's VR gradient."""
        log_w = self.log_weights(model, guide, *args, **kwargs)  # (K, B), differentiable
        log_weights = (1.0 - self.alpha) * log_w.detach()
        log_mean_weight = torch.logsumexp(log_weights, dim=0, keepdim=True) - math.log(
            self.num_particles
        )
        loss = -log_mean_weight.sum() / (1.0 - self.alpha)
        normalized = (log_weights - log_mean_weight).exp()  # K ŵ, as in RenyiELBO
        surrogate_loss = -((normalized * log_w).sum() / self.num_particles)
        return loss + (surrogate_loss - surrogate_loss.detach())


class IWAE_ELBO(VR_ELBO):
    """IWAE_K (Burda et al. 2016), the Rényi bound at α = 0, with the IWAE gradient."""

    name = "iwae"

    def __init__(self, num_particles: int = 5, max_plate_nesting: int = 1):
        super().__init__(alpha=0.0, num_particles=num_particles,
                         max_plate_nesting=max_plate_nesting)
