"""The Rényi variational bound of Li & Turner (2016, "Rényi divergence variational inference"),
for an order α in [0, 1):

    VR_α,K(x) = 1/(1 − α) · log (1/K) Σ_k w_k^(1−α),   w_k = p(x, z_k) / q(z_k|x),   z_k ~ q(z|x).

For every sample, (1/K) Σ_k log w_k ≤ VR_α,K ≤ log (1/K) Σ_k w_k: a power mean of order 1 − α
lies between the geometric mean and the arithmetic mean. So the ELBO (α → 1) and IWAE_K (α = 0)
bracket it, sample by sample. In expectation it rises with K (as IWAE_K does) towards
VR_α = log p(x) − D_α(q(z|x) ‖ p(z|x)) ≤ log p(x), a lower bound for α ≥ 0; at K = 1 it is the
ELBO. At α = 0 it is the importance-weighted bound IWAE_K of Burda, Grosse & Salakhutdinov
(2016), :class:`IWAE_ELBO`, which rises with K to log p(x) (their Theorem 1).
:func:`pyro_vae.models.linear_gaussian.closed_form_renyi_bound` gives VR_α on the
linear-Gaussian model::

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
    """:class:`pyro.infer.RenyiELBO` for α in [0, 1), with K vectorized particles and the
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
    """IWAE_K (Burda et al. 2016), the Rényi bound at α = 0: one log-mean-exp of the K weights
    per datapoint. Its gradient is the IWAE gradient −Σ_k w̃_k ∇ log w_k, w̃ the normalized
    weights held fixed."""

    name = "iwae"

    def __init__(self, num_particles: int = 5, max_plate_nesting: int = 1):
        super().__init__(alpha=0.0, num_particles=num_particles,
                         max_plate_nesting=max_plate_nesting)
