"""The importance-weighted bound IWAE_K of Burda, Grosse & Salakhutdinov (2016):

    IWAE_K(x) = E[log (1/K) Σ_k w_k],   w_k = p(x, z_k) / q(z_k|x),   z_k ~ q(z|x),

a lower bound on log p(x) that rises with K (their Theorem 1); K = 1 is the ELBO.
"""

from __future__ import annotations

import math

import pyro.infer
import torch

from pyro_vae.objectives.util import particle_log_weights

__all__ = ["IWAE_ELBO"]


class IWAE_ELBO(pyro.infer.RenyiELBO):
    """:class:`pyro.infer.RenyiELBO` at α = 0 (one log-mean-exp per datapoint over K
    particles), with the ``differentiable_loss`` that Pyro's class lacks.

    The loss is −IWAE_K summed over the minibatch (nats). Its gradient is the IWAE gradient
    −Σ_k w̃_k ∇ log w_k (w̃ the normalized weights, held fixed) for reparameterized guides,
    computed by the same surrogate, operation for operation, as ``RenyiELBO.loss_and_grads``:
    training with it follows :class:`pyro.infer.SVI` with this ELBO bit for bit.
    """

    def __init__(self, num_particles: int = 5, max_plate_nesting: int = 1):
        super().__init__(
            alpha=0.0,
            num_particles=num_particles,
            vectorize_particles=num_particles > 1,
            max_plate_nesting=max_plate_nesting,
        )

    def log_weights(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """log p(x, z_k) − log q(z_k|x) per particle and datapoint: ``(K, B)`` nats."""
        return particle_log_weights(self, model, guide, args, kwargs)

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """−IWAE_K, summed over the minibatch, whose gradient is Pyro's IWAE gradient."""
        log_w = self.log_weights(model, guide, *args, **kwargs)  # (K, B), differentiable
        log_weights = log_w.detach()
        log_mean_weight = torch.logsumexp(log_weights, dim=0, keepdim=True) - math.log(
            self.num_particles
        )
        loss = -log_mean_weight.sum()
        normalized = (log_weights - log_mean_weight).exp()  # K w̃, as in RenyiELBO
        surrogate_loss = -((normalized * log_w).sum() / self.num_particles)
        return loss + (surrogate_loss - surrogate_loss.detach())
