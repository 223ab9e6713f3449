"""Pieces that several objectives share: per-particle log-weights from a pair of Pyro traces,
and the guide's log-density with its parameters held fixed (the path-derivative trick).

    log w_k = log p(x, z_k) − log q(z_k|x),   z_k ~ q(z|x),

summed over every sample site of the model (latent and observed) and every sample site of the
guide, per datapoint: the weight of importance sampling with the guide as proposal, which the
IWAE bound, the DReG gradient and the generic log p(x) estimate all start from.
"""

from __future__ import annotations

import torch
from pyro.distributions.util import detach, is_identically_zero, scale_and_mask
from pyro.infer.util import get_dependent_plate_dims, torch_sum

from pyro_vae.errors import ConfigError

__all__ = ["is_reparameterized", "log_prob_stop_q", "particle_log_weights", "trace_log_weight"]


def trace_log_weight(model_trace, guide_trace) -> torch.Tensor:
    """log p(x, z) − log q(z|x) of one particle's traces (their ``log_prob`` computed), summed
    over every site and every plate except those the weights depend on: ``(B,)`` nats for the
    VAE (``(K, B)`` with vectorized particles), as Pyro's ``RenyiELBO`` sums them."""
    sum_dims = get_dependent_plate_dims(model_trace.nodes.values())
    log_w = 0.0
    for trace, sign in ((model_trace, 1.0), (guide_trace, -1.0)):
        for site in trace.nodes.values():
            if site["type"] == "sample":
                log_w = log_w + sign * torch_sum(site["log_prob"], sum_dims)
    return log_w


def particle_log_weights(elbo, model, guide, args, kwargs, *,
                         reparameterized_for: str | None = None) -> torch.Tensor:
    """log p(x, z_k) − log q(z_k|x) of each of ``elbo.num_particles`` particles drawn by the
    ELBO's traces (vectorized or not): ``(K, B)`` nats, differentiable.

    :param reparameterized_for: an estimator's name: raise :class:`ConfigError` naming it if a
        latent site of the guide is not reparameterized (its gradient would need a score term).
    """
    per_particle = []
    for model_trace, guide_trace in elbo._get_traces(model, guide, args, kwargs):
        if reparameterized_for is not None:
            _check_reparameterized(guide_trace, reparameterized_for)
        per_particle.append(trace_log_weight(model_trace, guide_trace))
    if elbo.vectorize_particles and elbo.num_particles > 1:
        return per_particle[0]
    return torch.stack(per_particle)


def _check_reparameterized(guide_trace, estimator: str) -> None:
    for name, site in guide_trace.nodes.items():
        if site["type"] == "sample" and not is_reparameterized(site):
            raise ConfigError(f"the {estimator} estimator needs reparameterized guide sites; "
                              f"{name!r} is not")


def log_prob_stop_q(site: dict) -> torch.Tensor:
    """log q(z) of a guide sample site with the distribution's parameters detached and the
    sample z not detached, scaled and masked like ``site["log_prob"]`` (batch shape, nats).

    Its gradient is the path term ∂_z log q(z) ∂_φ z only; the score term
    ∂_φ log q_φ(z)|_(z fixed) is gone (Roeder, Wu & Duvenaud 2017)."""
    fn = detach(site["fn"])
    log_q = fn.log_prob(site["value"], *site["args"], **site["kwargs"])
    return scale_and_mask(log_q, site["scale"], site["mask"])


def is_reparameterized(site: dict) -> bool:
    """Whether a guide sample site's gradient flows through its value (``rsample``)."""
    _, score_function, entropy_term = site["score_parts"]
    return is_identically_zero(score_function) and not is_identically_zero(entropy_term)
