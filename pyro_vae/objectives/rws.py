"""Reweighted wake-sleep (Bornschein & Bengio 2015; Le et al. 2019): with K samples z_k ~ q(z|x)
and their normalized weights w̃_k, the model ascends IWAE_K (wake-θ) and the guide
Σ_k w̃_k log q_φ(z_k|x) at the samples held fixed (wake-φ)::

    >>> import pyro, torch
    >>> from pyro_vae import VAE
    >>> vae = VAE(x_dim=4, latent_dim=2, hidden_sizes=(8,))
    >>> svi = pyro.infer.SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}),
    ...                      RWS_ELBO(num_particles=5))
    >>> wake_theta_loss, wake_phi_loss = svi.step(torch.ones(3, 4))   # as Pyro's class
    >>> wake_theta_loss > 0   # −IWAE_5 summed over the 3 datapoints, in nats
    True
"""

from __future__ import annotations

import math

import pyro.infer
import torch
from pyro.infer.enum import get_importance_trace
from pyro.infer.util import get_dependent_plate_dims, is_validation_enabled
from pyro.poutine.messenger import Messenger
from pyro.util import check_if_enumerated, warn_if_nan

from pyro_vae import checks
from pyro_vae.errors import ConfigError
from pyro_vae.objectives.base import PyroObjective
from pyro_vae.objectives.util import sum_log_prob

__all__ = ["RWS_ELBO", "RWSObjective"]

MIN_PARTICLES_REASON = ("with one particle its self-normalized weight is 1, and the wake-phi "
                        "gradient -grad log q(z|x) at z ~ q has mean zero: the guide would not "
                        "learn")


class _DetachLatents(Messenger):
    """Detach every latent sample where it is drawn, so that what the guide computes from it
    (the parameters of q(z_2|z_1)) depends on φ alone, not on φ through z_1."""

    def _pyro_post_sample(self, msg) -> None:
        if not msg["is_observed"] and torch.is_tensor(msg["value"]):
            msg["value"] = msg["value"].detach()


class RWS_ELBO(pyro.infer.ReweightedWakeSleep):
    """:class:`pyro.infer.ReweightedWakeSleep` with wake-φ (``insomnia=1``; no sleep-φ), K ≥ 2
    vectorized particles. ``loss`` and ``loss_and_grads`` return Pyro's pair: the wake-θ loss,
    −IWAE_K summed over the minibatch (nats), and the wake-φ loss,
    −Σ_k w̃_k log q_φ(z_k|x) summed over the minibatch. ``differentiable_loss`` is one scalar
    with the wake-θ loss's value and both gradients.

    .. warning:: Pyro's class (pyro-ppl 1.9.2) weights the particles of the whole minibatch as
       one datapoint; this class weights each datapoint apart, as ``RenyiELBO`` does.

    .. warning:: Pyro's class detaches the samples after the guide has run, so on a guide that
       draws z_2 from z_1 the wake-φ gradient flows through z_1; this class detaches each
       sample where it is drawn.
    """

    def __init__(self, num_particles: int = 5, max_plate_nesting: int = 1):
        if checks.integer("num_particles", num_particles) < 2:
            raise ConfigError(f"the rws estimator needs num_particles >= 2, got "
                              f"{num_particles!r}: {MIN_PARTICLES_REASON}")
        super().__init__(num_particles=num_particles, insomnia=1.0, vectorize_particles=True,
                         max_plate_nesting=max_plate_nesting)

    def _get_trace(self, model, guide, args, kwargs):
        with _DetachLatents():
            model_trace, guide_trace = get_importance_trace(
                "flat", self.max_plate_nesting, model, guide, args, kwargs, detach=True)
        if is_validation_enabled():
            check_if_enumerated(guide_trace)
        return model_trace, guide_trace

    def log_densities(self, model, guide, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        """log p_θ(x, z_k) and log q_φ(z_k|x) at the detached samples: ``(K, B)`` nats each."""
        (model_trace, guide_trace), = self._get_traces(model, guide, args, kwargs)
        sum_dims = get_dependent_plate_dims(model_trace.nodes.values())
        return sum_log_prob(model_trace, sum_dims), sum_log_prob(guide_trace, sum_dims)

    def _loss(self, model, guide, args, kwargs):
        """(wake-θ loss, wake-φ loss), tensors."""
        log_p, log_q = self.log_densities(model, guide, *args, **kwargs)
        log_weights = log_p - log_q.detach()  # (K, B)
        log_sum_weight = torch.logsumexp(log_weights, dim=0)  # (B,)
        wake_theta_loss = -(log_sum_weight - math.log(self.num_particles)).sum()
        warn_if_nan(wake_theta_loss, "wake theta loss")
        normalized_weights = (log_weights - log_sum_weight).exp().detach()
        wake_phi_loss = -(normalized_weights * log_q).sum()
        warn_if_nan(wake_phi_loss, "wake phi loss")
        return wake_theta_loss, wake_phi_loss

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """−IWAE_K summed over the minibatch; its gradient is wake-θ's and wake-φ's."""
        wake_theta_loss, wake_phi_loss = self._loss(model, guide, args, kwargs)
        return wake_theta_loss + (wake_phi_loss - wake_phi_loss.detach())


class RWSObjective(PyroObjective):
    """An :class:`RWS_ELBO` bound to a VAE: ``loss`` is the wake-θ loss, −IWAE_K summed over
    the minibatch, as for every objective."""

    def loss(self, x, *, num_data=None) -> float:
        args, kwargs = self.arguments(x, num_data)
        wake_theta_loss, _ = self.elbo.loss(self.model, self.guide, *args, **kwargs)
        return float(wake_theta_loss)
