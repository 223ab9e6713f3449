"""Lower-variance gradients for the ELBO and the IWAE bound, built on Pyro's ELBO classes.

For a reparameterized guide, z = z_φ(ε), the Monte Carlo gradient of the ELBO with respect to
the guide's parameters φ has two parts,

    ∇_φ [log p_θ(x, z) − log q_φ(z|x)] = (∂_z [log p_θ(x, z) − log q_φ(z|x)]) ∂_φ z_φ(ε)
                                         − ∂_φ log q_φ(z|x) |_(z fixed),

a path derivative and a score-function term whose expectation is zero. The score term does not
vanish when q equals the exact posterior, so :class:`pyro.infer.Trace_ELBO`'s gradient stays
noisy at the optimum; and in the IWAE gradient of :class:`pyro.infer.RenyiELBO` (α = 0) its
weighted sum makes the guide's signal-to-noise ratio fall as O(1/√K) (Rainforth et al. 2018).

=================  ==================================================================
:class:`STL_ELBO`  sticking the landing: the ELBO, score term dropped from ∇_φ
:class:`DReG_ELBO` doubly reparameterized IWAE_K gradient: Σ_k w̃_k² ∇_φ(path) log w_k
=================  ==================================================================

Both are registered in :data:`pyro_vae.estimators.ESTIMATORS` as ``stl`` and ``dreg``, so
:class:`pyro.infer.SVI` trains them like any other estimator::

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
from pyro.distributions.util import detach, is_identically_zero, scale_and_mask
from pyro.infer import Trace_ELBO
from pyro.infer.util import get_dependent_plate_dims, torch_sum
from pyro.util import warn_if_nan

from pyro_vae.estimators import IWAE_ELBO

__all__ = ["STL_ELBO", "DReG_ELBO", "log_prob_stop_q"]


def log_prob_stop_q(site: dict) -> torch.Tensor:
    """log q(z) of a guide sample site with the distribution's parameters detached and the
    sample z not detached, scaled and masked like ``site["log_prob"]`` (batch shape, nats).

    Its gradient is the path term ∂_z log q(z) ∂_φ z only; the score term
    ∂_φ log q_φ(z)|_(z fixed) is gone (Roeder, Wu & Duvenaud 2017)."""
    fn = detach(site["fn"])
    log_q = fn.log_prob(site["value"], *site["args"], **site["kwargs"])
    return scale_and_mask(log_q, site["scale"], site["mask"])


def _is_reparameterized(site: dict) -> bool:
    _, score_function, entropy_term = site["score_parts"]
    return is_identically_zero(score_function) and not is_identically_zero(entropy_term)


class STL_ELBO(Trace_ELBO):
    """The ELBO with the sticking-the-landing gradient of Roeder, Wu & Duvenaud (2017).

    The loss is :class:`pyro.infer.Trace_ELBO`'s (−ELBO, the same value for the same sample);
    its gradient drops the score term ∂_φ log q_φ(z|x)|_(z fixed) from every reparameterized
    guide site (the paper's "path derivative" estimator): for each such site the surrogate uses
    log q(z) evaluated with the distribution's parameters detached, so only the path through
    z = z_φ(ε) remains. The expected gradient is unchanged (E_q[∂_φ log q_φ(z)] = 0), and when
    q(z|x) equals p(z|x) the guide's gradient is exactly zero for every sample, because
    log p(x, z) − log q(z|x) = log p(x) does not depend on z. The model's gradient is that of
    ``Trace_ELBO``, sample by sample.

    ``loss``, ``differentiable_loss`` and ``loss_and_grads`` (what SVI calls) are Trace_ELBO's,
    with ``num_particles`` and ``vectorize_particles`` as there; only the per-particle
    surrogate differs.

    .. warning:: Non-reparameterized guide sites keep Trace_ELBO's score-function gradient.
       The lower variance is guaranteed only near the posterior; far from it the score term
       can cancel part of the path term's noise (Roeder et al. 2017), so STL can be noisier.
    """

    def _differentiable_loss_particle(self, model_trace, guide_trace):
        # A shallow copy of the guide's trace in which each reparameterized site's entropy
        # term (the −log q(z) that Trace_ELBO differentiates) has q's parameters detached.
        stl_trace = guide_trace.copy()
        for name, site in guide_trace.nodes.items():
            if site["type"] == "sample" and _is_reparameterized(site):
                score_parts = site["score_parts"]._replace(entropy_term=log_prob_stop_q(site))
                stl_trace.nodes[name] = dict(site, score_parts=score_parts)
        return super()._differentiable_loss_particle(model_trace, stl_trace)


class DReG_ELBO(IWAE_ELBO):
    """The IWAE_K bound with the doubly reparameterized gradient of Tucker, Lawson, Gu &
    Maddison (2019).

    The loss is −IWAE_K = −Σ_b [log Σ_k w_kb − log K], w_kb = p_θ(x_b, z_kb) / q_φ(z_kb|x_b),
    the same value as ``iwae`` (:class:`~pyro_vae.estimators.IWAE_ELBO`) for the same sample.
    With normalized weights w̃_k = w_k / Σ_j w_j (per datapoint) the gradient is

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
       :class:`NotImplementedError`. The weights are per particle and datapoint when every
       site lies in the data plate (the VAE), else per particle for the whole minibatch, as in
       Pyro's ``RenyiELBO``; under ``num_data`` scaling the scaled log-densities enter the
       weights, also as there.
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
                if not _is_reparameterized(site):
                    raise NotImplementedError(
                        f"DReG_ELBO needs reparameterized guide sites; {name!r} is not"
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
                raise NotImplementedError(
                    f"DReG_ELBO: latent site {name!r} has shape {tuple(z.shape)}, which does "
                    f"not start with the log-weights' shape {tuple(w.shape)}"
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
