"""The Rényi variational bound of Li & Turner (2016, "Rényi divergence variational inference"),
for an order α in (0, 1):

    VR_α,K(x) = 1/(1 − α) · log (1/K) Σ_k w_k^(1−α),   w_k = p(x, z_k) / q(z_k|x),   z_k ~ q(z|x).

For every sample, (1/K) Σ_k log w_k ≤ VR_α,K ≤ log (1/K) Σ_k w_k: a power mean of order 1 − α
lies between the geometric mean and the arithmetic mean. So the ELBO (α → 1) and IWAE_K (α = 0)
bracket it, sample by sample. In expectation it rises with K (as IWAE_K does) towards
VR_α = log p(x) − D_α(q(z|x) ‖ p(z|x)) ≤ log p(x), a lower bound for α > 0; at K = 1 it is the
ELBO. :func:`pyro_vae.linear_gaussian.closed_form_renyi_bound` gives VR_α on the
linear-Gaussian model::

    >>> import pyro, torch
    >>> from pyro_vae import VAE
    >>> vae = VAE(x_dim=4, latent_dim=2, hidden_sizes=(8,))
    >>> svi = pyro.infer.SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}),
    ...                      Renyi_ELBO(alpha=0.5, num_particles=5))
    >>> loss = svi.step(torch.ones(3, 4))   # −VR_0.5,5 summed over the 3 datapoints, in nats
    >>> loss > 0
    True
"""

from __future__ import annotations

import math

import pyro.infer
import torch

from pyro_vae.errors import ConfigError
from pyro_vae.objectives.util import particle_log_weights

__all__ = ["Renyi_ELBO"]


class Renyi_ELBO(pyro.infer.RenyiELBO):
    """:class:`pyro.infer.RenyiELBO` for α in (0, 1), with K vectorized particles and the
    ``differentiable_loss`` that Pyro's class lacks.

    The loss is −VR_α,K summed over the minibatch (nats); per datapoint, :meth:`bound`. Its
    gradient, for reparameterized guides, is −Σ_k ŵ_k ∇ log w_k with ŵ_k = w_k^(1−α) /
    Σ_j w_j^(1−α) held fixed (the gradient of VR_α,K itself), computed by the same surrogate,
    operation for operation, as ``RenyiELBO.loss_and_grads``: training with it follows
    :class:`pyro.infer.SVI` with this ELBO step for step. ``loss`` and ``loss_and_grads`` are
    Pyro's.

    .. warning:: ``differentiable_loss`` and :meth:`bound` need every latent site
       reparameterized (a :class:`~pyro_vae.errors.ConfigError` says which is not); Pyro's
       ``loss_and_grads`` adds its score-function term for the others.
    """

    def __init__(self, alpha: float = 0.5, num_particles: int = 5, max_plate_nesting: int = 1):
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < 1:
            raise ConfigError(f"alpha must be a number in (0, 1) (0 is iwae, 1 the ELBO), got "
                              f"{alpha!r}")
        super().__init__(alpha=float(alpha), num_particles=num_particles,
                         vectorize_particles=num_particles > 1,
                         max_plate_nesting=max_plate_nesting)

    def log_weights(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """log p(x, z_k) − log q(z_k|x) per particle and datapoint: ``(K, B)`` nats."""
        return particle_log_weights(self, model, guide, args, kwargs, reparameterized_for="renyi")

    def bound(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """VR_α,K per datapoint, ``(B,)`` nats, differentiable (its gradient is the loss's)."""
        log_w = self.log_weights(model, guide, *args, **kwargs)
        scaled = (1.0 - self.alpha) * log_w
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
