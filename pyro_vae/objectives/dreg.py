"""The doubly reparameterized IWAE gradient (DReG) of Tucker, Lawson, Gu & Maddison (2019).

In the IWAE gradient of :class:`~pyro_vae.objectives.iwae.IWAE_ELBO` the guide's weighted
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
from pyro.infer.util import get_dependent_plate_dims, torch_sum
from pyro.util import warn_if_nan

from pyro_vae.errors import ConfigError
from pyro_vae.objectives.iwae import IWAE_ELBO
from pyro_vae.objectives.util import is_reparameterized, log_prob_stop_q

__all__ = ["DReG_ELBO"]


class DReG_ELBO(IWAE_ELBO):
    """The IWAE_K bound with the doubly reparameterized gradient of Tucker et al. (2019).

    The loss is −IWAE_K = −Σ_b [log Σ_k w_kb − log K], w_kb = p_θ(x_b, z_kb) / q_φ(z_kb|x_b),
    the same value as :class:`IWAE_ELBO` for the same sample. With normalized weights
    w̃_k = w_k / Σ_j w_j (per datapoint) the gradient is

    - model (θ): Σ_k w̃_k ∇_θ log w_k, the IWAE gradient itself;
    - guide (φ): Σ_k w̃_k² ∂_z[log p_θ(x, z) − log q_φ̄(z|x)]|_(z_k) ∂_φ z_k, the path term
      only, φ̄ = φ held fixed in log q (the paper's DReG estimator for the IWAE bound).

    Both come from one surrogate, −Σ_kb w̃_kb ℓ_kb with ℓ_kb = log p_θ(x_b, z_kb) −
    log q_φ̄(z_kb|x_b) and w̃ detached: ∇_θ of it is the model's gradient (z does not depend on
    θ), and ℓ depends on φ only through z, so scaling the gradient that reaches each z_kb by
    w̃_kb (a tensor hook; values untouched) turns Σ_k w̃_k ∂_φ ℓ_k into Σ_k w̃_k² ∂_φ ℓ_k.
    In expectation it equals the IWAE gradient; at K = 1 it is the STL gradient, and it is
    zero for every sample when q(z|x) = p(z|x).

    .. warning:: Every latent site must be reparameterized; other guides raise
       :class:`~pyro_vae.errors.ConfigError`. The weights are per particle and datapoint when
       every site lies in the data plate (the VAE), else per particle for the whole minibatch,
       as in Pyro's ``RenyiELBO``; under ``num_data`` scaling the scaled log-densities enter
       the weights, also as there.
    """

    def _particles(self, model, guide, args, kwargs):
        """Per particle: log w and ℓ, each ``(B,)`` (or ``(K, B)`` once when vectorized),
        and the guide's latent values (whose gradients the hooks rescale)."""
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            sum_dims = get_dependent_plate_dims(model_trace.nodes.values())
            log_p = 0.0
            for site in model_trace.nodes.values():
                if site["type"] == "sample":
                    log_p = log_p + torch_sum(site["log_prob"], sum_dims)
            log_q, log_q_stop, latents = 0.0, 0.0, []
            for name, site in guide_trace.nodes.items():
                if site["type"] != "sample":
                    continue
                if not is_reparameterized(site):
                    raise ConfigError(
                        f"the dreg estimator needs reparameterized guide sites; {name!r} is "
                        "not (use iwae, whose gradient has a score-function term)"
                    )
                log_q = log_q + torch_sum(site["log_prob"], sum_dims)
                log_q_stop = log_q_stop + torch_sum(log_prob_stop_q(site), sum_dims)
                latents.append((name, site["value"]))
            yield log_p - log_q, log_p - log_q_stop, latents

    def _loss_and_surrogate_loss(self, model, guide, args, kwargs):
        """−IWAE_K (scalar, summed over the batch) and the DReG surrogate loss."""
        vectorized = self.vectorize_particles and self.num_particles > 1
        log_w, ell, latents = [], [], []
        particles = self._particles(model, guide, args, kwargs)
        for k, (log_w_k, ell_k, latents_k) in enumerate(particles):
            log_w.append(log_w_k)
            ell.append(ell_k)
            latents.extend((None if vectorized else k, name, z) for name, z in latents_k)
        log_w = log_w[0] if vectorized else torch.stack(log_w)  # (K, B)
        ell = ell[0] if vectorized else torch.stack(ell)  # (K, B)
        loss = -(torch.logsumexp(log_w, 0) - math.log(self.num_particles)).sum()
        weights = torch.softmax(log_w.detach(), 0)  # w̃, (K, B)
        for k, name, z in latents:
            w = weights if k is None else weights[k]
            if z.shape[: w.dim()] != w.shape:
                raise ConfigError(
                    f"the dreg estimator: latent site {name!r} has shape {tuple(z.shape)}, "
                    f"which does not start with the log-weights' shape {tuple(w.shape)}"
                )
            if z.requires_grad:
                w = w.reshape(w.shape + (1,) * (z.dim() - w.dim()))
                z.register_hook(lambda grad, w=w: grad * w)
        surrogate_loss = -(weights * ell).sum()
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
