"""The multi-sample bounds of Rainforth, Kosiorek, Le, Maddison, Igl, Wood & Teh (2018, "Tighter
variational bounds are not necessarily better"), built on M·K importance weights per datapoint,
w_mk = p(x, z_mk) / q(z_mk|x), z_mk ~ q(z|x), arranged as M groups of K:

- MIWAE(M, K) = (1/M) Σ_m log (1/K) Σ_k w_mk: the average of M independent IWAE_K bounds.
  E[MIWAE(M, K)] = E[IWAE_K]; for every sample it lies between the average log-weight (the
  ELBO's estimate) and log (1/MK) Σ_mk w_mk (IWAE_MK). M = 1 is IWAE_K, K = 1 the ELBO with M
  particles.
- CIWAE(β) = β (1/K) Σ_k log w_k + (1 − β) log (1/K) Σ_k w_k: the ELBO and IWAE_K mixed, on the
  same K samples; between the two for every sample. β = 0 is IWAE_K, β = 1 the ELBO.
- PIWAE(M, K): the generative network θ trained on IWAE_MK, the inference network φ on
  MIWAE(M, K), with the same M·K samples ("partially importance weighted"): the tighter bound
  where it helps θ, the higher gradient signal-to-noise ratio for φ (their main result: with
  M·K samples the encoder gradient's SNR is O(√(M/K)), the model's O(√(MK)), so IWAE_K's
  encoder SNR falls as 1/√K).

Each class's ``differentiable_loss`` is one scalar whose gradient is the estimator's, so that
:class:`~pyro_vae.trainer.Trainer`, data-parallel training and :class:`pyro.infer.SVI` (through
``loss_and_grads``) all step it::

    >>> import pyro, torch
    >>> from pyro_vae import VAE
    >>> vae = VAE(x_dim=4, latent_dim=2, hidden_sizes=(8,))
    >>> svi = pyro.infer.SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}),
    ...                      PIWAE_ELBO(num_particles=4, num_estimates=2))
    >>> loss = svi.step(torch.ones(3, 4))   # −IWAE_8 summed over the 3 datapoints, in nats
    >>> loss > 0
    True
"""

from __future__ import annotations

import math

import pyro.infer
import torch
from pyro.util import warn_if_nan

from pyro_vae import checks
from pyro_vae.objectives.util import importance_traces, particles, reweight_gradients

__all__ = ["CIWAE_ELBO", "MIWAE_ELBO", "PIWAE_ELBO"]


class _GroupedELBO(pyro.infer.ELBO):
    """M groups of K vectorized particles per datapoint (Pyro draws M·K), and a bound of their
    log-weights. ``loss`` and ``loss_and_grads`` (what SVI calls) use ``differentiable_loss``."""

    name = "multi-sample"

    def __init__(self, num_particles: int = 5, num_estimates: int = 1,
                 max_plate_nesting: int = 1):
        k = checks.integer("num_particles", num_particles)
        m = checks.integer("num_estimates", num_estimates)
        super().__init__(num_particles=m * k, vectorize_particles=True,
                         max_plate_nesting=max_plate_nesting)
        self.particles_per_estimate, self.num_estimates = k, m  # K and M

    def _get_trace(self, model, guide, args, kwargs):
        """One particle's traces, as Pyro's ELBOs take them (:func:`~.util.importance_traces`)."""
        traces = importance_traces(model, guide, args, kwargs, self.max_plate_nesting)
        return traces.model, traces.guide

    def log_weights(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """log p(x, z_mk) − log q(z_mk|x): ``(M, K, B)`` nats, differentiable."""
        log_w = particles(self, model, guide, args, kwargs, estimator=self.name).log_w
        return log_w.reshape(self.num_estimates, self.particles_per_estimate, -1)

    def bound(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """The bound per datapoint, ``(B,)`` nats, differentiable."""
        return self.bound_of(self.log_weights(model, guide, *args, **kwargs))

    def bound_of(self, log_w: torch.Tensor) -> torch.Tensor:
        """The bound of ``(M, K, B)`` log-weights, per datapoint ``(B,)``."""
        raise NotImplementedError

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """−bound summed over the minibatch; its gradient is the bound's."""
        loss = -self.bound(model, guide, *args, **kwargs).sum()
        warn_if_nan(loss, "loss")
        return loss

    @torch.no_grad()
    def loss(self, model, guide, *args, **kwargs) -> float:
        """−bound summed over the minibatch, as a float."""
        return float(self.differentiable_loss(model, guide, *args, **kwargs))

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        """The loss as a float; accumulates its gradient into the parameters (for SVI)."""
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        if loss.requires_grad:
            loss.backward(retain_graph=self.retain_graph)
        return float(loss.detach())


def _iwae(log_w: torch.Tensor, dim) -> torch.Tensor:
    """log of the mean of exp(log_w) over ``dim`` (an int or a tuple of ints)."""
    dims = (dim,) if isinstance(dim, int) else dim
    count = math.prod(log_w.shape[d] for d in dims)
    return torch.logsumexp(log_w, dim=dims) - math.log(count)


class MIWAE_ELBO(_GroupedELBO):
    """MIWAE(M, K) (Rainforth et al. 2018): the loss is −(1/M) Σ_m log (1/K) Σ_k w_mk
    summed over the minibatch, its gradient the gradient of that Monte Carlo estimate,
    (1/M) Σ_m Σ_k w̃^(m)_k ∇ log w_mk, w̃^(m) normalized within group m. ``num_particles`` is
    K, ``num_estimates`` M; Pyro draws M·K particles."""

    name = "miwae"

    def bound_of(self, log_w):
        return _iwae(log_w, 1).mean(0)


class CIWAE_ELBO(_GroupedELBO):
    """CIWAE(β) (Rainforth et al. 2018) on K samples: the loss is −[β (1/K) Σ_k log w_k
    + (1 − β) log (1/K) Σ_k w_k] summed over the minibatch, its gradient that of the estimate,
    Σ_k (β/K + (1 − β) w̃_k) ∇ log w_k."""

    name = "ciwae"

    def __init__(self, num_particles: int = 5, ciwae_beta: float = 0.5,
                 max_plate_nesting: int = 1):
        self.ciwae_beta = checks.number("ciwae_beta", ciwae_beta, low=0, high=1)
        super().__init__(num_particles, 1, max_plate_nesting)

    def bound_of(self, log_w):
        log_w = log_w[0]  # (K, B)
        return self.ciwae_beta * log_w.mean(0) + (1.0 - self.ciwae_beta) * _iwae(log_w, 0)


class PIWAE_ELBO(_GroupedELBO):
    """PIWAE(M, K) (Rainforth et al. 2018): the generative network on IWAE_MK, the
    inference network on MIWAE(M, K), both from the same M·K samples.

    The loss is −IWAE_MK summed over the minibatch (:meth:`bound` per datapoint; MIWAE of the
    same sample is not returned). Its gradient is

    - model (θ): −Σ_mk a_mk ∇_θ log p_θ(x, z_mk), a = w / Σ_all w: the IWAE_MK gradient;
    - guide (φ): −Σ_mk b_mk ∇_φ log w_mk, b_mk = w_mk / (M Σ_k w_mk): the MIWAE(M, K) gradient.

    One surrogate gives both: −Σ a·log p_θ(x, z′) + Σ b·log q_φ(z|x), a and b held fixed, where
    the model is replayed on z′, a view of each latent sample z whose incoming gradient is scaled
    by b/a (a tensor hook; values untouched). z′ does not depend on θ, so θ's gradient is a's;
    the gradient that log p sends to φ passes through z′ and arrives weighted by b, as does
    log q's, directly. b/a = 1/(M c_m) depends on the group only, c_m = Σ_k w_mk / Σ_all w; a
    group's share c_m below 1e-30 is raised to 1e-30 in a, so that a·(b/a) does not underflow
    in float32 (θ's gradient changes by less than 1e-30 of its scale). Unlike DReG's hooks on
    the guide's samples, these sit on the model's copies only: on the hierarchical model the
    gradient through z_2 into z_1 is scaled once.
    """

    name = "piwae"
    MIN_SHARE = 1e-30  # smallest group share of the weight in a (see the class docstring)

    def bound(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """IWAE_MK per datapoint, ``(B,)`` nats, differentiable (the IWAE_MK gradient)."""
        return _iwae(self.log_weights(model, guide, *args, **kwargs), (0, 1))

    def bound_of(self, log_w):
        return _iwae(log_w, (0, 1))

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """−IWAE_MK summed over the minibatch; its gradient is PIWAE's (class docstring)."""
        m, k = self.num_estimates, self.particles_per_estimate
        p = particles(self, model, guide, args, kwargs, estimator=self.name, views=True)
        log_w = (p.log_p - p.log_q).detach().reshape(m, k, -1)  # (M, K, B)
        total = torch.logsumexp(log_w, dim=(0, 1))  # (B,)
        groups = torch.logsumexp(log_w, dim=1, keepdim=True)  # (M, 1, B)
        within = torch.softmax(log_w, dim=1)  # w_mk / Σ_k w_mk
        share = (groups - total).exp().clamp_min(self.MIN_SHARE)  # c_m, (M, 1, B)
        a = (share * within).reshape(m * k, -1)
        b = (within / m).reshape(m * k, -1)
        reweight_gradients(p.views, (1.0 / (m * share)).expand(m, k, -1).reshape(m * k, -1),
                           self.name)  # b / a
        loss = -(total - math.log(m * k)).sum()
        warn_if_nan(loss, "loss")
        surrogate = -(a * p.log_p).sum() + (b * p.log_q).sum()
        return loss + (surrogate - surrogate.detach())
