"""The doubly reparameterized IWAE gradient (DReG) of Tucker, Lawson, Gu & Maddison (2019).

In the IWAE gradient of :class:`~pyro_vae.objectives.renyi.IWAE_ELBO` the guide's weighted
score terms make its signal-to-noise ratio fall as O(1/√K) (Rainforth et al. 2018); DReG
replaces them by path derivatives weighted by the squared normalized weights::

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

    The loss is −IWAE_K = −Σ_b [log Σ_k w_kb − log K], w_kb = p_θ(x_b, z_kb) / q_φ(z_kb|x_b),
    the same value as :class:`IWAE_ELBO` for the same sample. With normalized weights
    w̃_k = w_k / Σ_j w_j (per datapoint) the gradient is

    - model (θ): Σ_k w̃_k ∇_θ log w_k, the IWAE gradient itself;
    - guide (φ): Σ_k w̃_k² ∂_z[log p_θ(x, z) − log q_φ̄(z|x)]|_(z_k) ∂_φ z_k, the path term
      only, φ̄ = φ held fixed in log q (the paper's DReG estimator for the IWAE bound).

    ∂_z is the partial derivative in every latent at once, φ held fixed: on a hierarchical
    guide q(z_1|x) q(z_2|z_1), z_2 = z_2(ε_2, z_1, φ) and ∂_φ z_k is the whole chain, and
    ∂_(z_1) takes in log q(z_2|z_1) through q(z_2|z_1)'s parameters (Tucker et al.'s identity
    E_q[f(z) ∇_φ log q_φ(z)] = E_ε[∂_z f ∂_φ z] holds for the joint reparameterization).

    Both come from one surrogate (w̃ detached),

        −Σ_kb w̃_kb log p_θ(x_b, z̆_kb) + Σ_kb w̃_kb² log q_φ̄(z_kb|x_b),

    z̆ a view of z whose gradient a tensor hook multiplies by w̃ (its value untouched):
    ∇_θ is Σ_k w̃_k ∇_θ log p_θ (z does not depend on θ), and through the hook and through
    log q_φ̄, which depends on φ only through z, ∇_φ is Σ_k w̃_k² ∂_z ℓ_k ∂_φ z_k, each path
    reweighted once. log q_φ̄ keeps the value of log q_φ; with one latent site its gradient
    comes from detaching q's parameters (they depend on x and φ only), with more from
    log q_φ(z) − log q_φ(z̄) + log q_φ(z̄)|detached, z̄ the samples detached and the guide run
    again on them (its gradient is the score term ∂_φ log q_φ(z)|_(z fixed), and
    ∂_(z_1) log q(z_2|z_1) stays). In expectation it equals the IWAE gradient; at K = 1 it is
    the STL gradient (:class:`~pyro_vae.objectives.STL_ELBO`), and it is zero for every sample
    when q(z|x) = p(z|x).

    .. warning:: Every latent site must be reparameterized; other guides raise
       :class:`~pyro_vae.errors.ConfigError`. The weights are per particle and datapoint when
       every site lies in the data plate (the VAE), else per particle for the whole minibatch,
       as in Pyro's ``RenyiELBO``; under ``num_data`` scaling the scaled log-densities enter
       the weights, also as there.
    """

    name = "dreg"

    def _loss_and_surrogate_loss(self, model, guide, args, kwargs):
        """−IWAE_K (scalar, summed over the batch) and the DReG surrogate loss: the model runs
        on views of the guide's samples, whose gradient is reweighted by w̃ (class docstring)."""
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

