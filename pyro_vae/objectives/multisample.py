"""The multi-sample bounds of Rainforth et al. (2018), on M·K importance weights per datapoint,
w_mk = p(x, z_mk) / q(z_mk|x), z_mk ~ q(z|x), in M groups of K:

- MIWAE(M, K) = (1/M) Σ_m log (1/K) Σ_k w_mk, the mean of M independent IWAE_K bounds;
- CIWAE(β) = β (1/K) Σ_k log w_k + (1 − β) log (1/K) Σ_k w_k, on the same K samples;
- PIWAE(M, K): the model trained on IWAE_MK, the guide on MIWAE(M, K), the same samples.

Each ``differentiable_loss`` is one scalar whose gradient is the estimator's::

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
    """M groups of K vectorized particles per datapoint, and a bound of their log-weights."""

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
    """MIWAE(M, K): the loss is −MIWAE summed over the minibatch, its gradient that of the
    estimate. ``num_particles`` is K, ``num_estimates`` M."""

    name = "miwae"

    def bound_of(self, log_w):
        return _iwae(log_w, 1).mean(0)


class CIWAE_ELBO(_GroupedELBO):
    """CIWAE(β) on K samples: the loss is −CIWAE summed over the minibatch, its gradient that
    of the estimate."""

    name = "ciwae"

    def __init__(self, num_particles: int = 5, ciwae_beta: float = 0.5,
                 max_plate_nesting: int = 1):
        self.ciwae_beta = checks.number("ciwae_beta", ciwae_beta, low=0, high=1)
        super().__init__(num_particles, 1, max_plate_nesting)

    def bound_of(self, log_w):
        log_w = log_w[0]  # (K, B)
        return self.ciwae_beta * log_w.mean(0) + (1.0 - self.ciwae_beta) * _iwae(log_w, 0)


class PIWAE_ELBO(_GroupedELBO):
    """PIWAE(M, K): the loss is −IWAE_MK summed over the minibatch; its gradient is IWAE_MK's
    for the model (θ) and MIWAE(M, K)'s for the guide (φ), on the same M·K samples.

    One surrogate gives both: −Σ a·log p_θ(x, z′) + Σ b·log q_φ(z|x), with a = w / Σ_all w and
    b_mk = w_mk / (M Σ_k w_mk) held fixed, the model replayed on views z′ of the samples whose
    gradient a hook scales by b/a. A group's share of the weight is raised to ``MIN_SHARE`` in
    a, so that a·(b/a) does not underflow in float32.
    """

    name = "piwae"
    MIN_SHARE = 1e-30  # smallest group share of the weight in a

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
