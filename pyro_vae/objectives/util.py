"""Pieces that several objectives share: the log-weights log w_k = log p(x, z_k) − log q(z_k|x)
of K vectorized particles per datapoint, the guide's log-density with its parameters held fixed
(the path derivative), and the reweighting of the samples' gradients (DReG, PIWAE).
"""

from __future__ import annotations

from typing import NamedTuple

import pyro
import torch
from pyro import poutine
from pyro.distributions.util import detach, is_identically_zero, scale_and_mask
from pyro.infer.util import get_dependent_plate_dims, is_validation_enabled, torch_sum
from pyro.poutine.util import prune_subsample_sites
from pyro.util import check_if_enumerated, check_model_guide_match, check_site_shape

from pyro_vae.errors import ConfigError

__all__ = ["ImportanceTraces", "Particles", "check_reparameterized", "importance_traces",
           "is_reparameterized", "log_prob_stop_q", "log_q_at_fixed_parameters", "particles",
           "reweight_gradients", "sum_log_prob", "trace_log_weight"]


def trace_log_weight(model_trace, guide_trace) -> torch.Tensor:
    """log p(x, z) − log q(z|x) of one particle's traces (their ``log_prob`` computed), summed
    over every site and every plate except those the weights depend on: ``(B,)`` nats for the
    VAE (``(K, B)`` with vectorized particles), as Pyro's ``RenyiELBO`` sums them."""
    sum_dims = get_dependent_plate_dims(model_trace.nodes.values())
    return sum_log_prob(model_trace, sum_dims) - sum_log_prob(guide_trace, sum_dims)


def sum_log_prob(trace, sum_dims) -> torch.Tensor:
    """Σ over a trace's sample sites of ``log_prob``, every plate summed but ``sum_dims``."""
    total = 0.0
    for site in trace.nodes.values():
        if site["type"] == "sample":
            total = total + torch_sum(site["log_prob"], sum_dims)
    return total


class ImportanceTraces(NamedTuple):
    """One (vectorized) particle's traces: the guide's as run (for replaying it), the model's
    and the guide's pruned with their log-densities computed, and the model's views of the
    samples."""

    full_guide: poutine.Trace
    model: poutine.Trace
    guide: poutine.Trace
    views: dict[str, torch.Tensor]


def importance_traces(model, guide, args, kwargs, max_plate_nesting: int, *,
                      views: bool = False) -> ImportanceTraces:
    """Pyro's ``get_importance_trace("flat", ...)``, keeping the guide's full trace; with
    ``views``, the model runs on a view of each latent sample, whose hooks see only the model's
    gradient."""
    full = poutine.trace(guide, graph_type="flat").get_trace(*args, **kwargs)
    guide_trace = prune_subsample_sites(full)
    values = {name: site["value"].view_as(site["value"])
              for name, site in _latent_sites(guide_trace)} if views else {}
    model_trace = poutine.trace(poutine.replay(model, trace=with_values(full, values)),
                                graph_type="flat").get_trace(*args, **kwargs)
    if is_validation_enabled():
        check_model_guide_match(model_trace, full, max_plate_nesting)
        check_if_enumerated(guide_trace)
    model_trace = prune_subsample_sites(model_trace)
    model_trace.compute_log_prob()
    guide_trace.compute_score_parts()
    if is_validation_enabled():
        for site in (*model_trace.nodes.values(), *guide_trace.nodes.values()):
            if site["type"] == "sample":
                check_site_shape(site, max_plate_nesting)
    return ImportanceTraces(full, model_trace, guide_trace, values)


class Particles(NamedTuple):
    """K particles per datapoint, drawn vectorized: log-densities ``(K, B)`` nats."""

    log_p: torch.Tensor  # log p(x, z_k)
    log_q: torch.Tensor  # log q(z_k|x)
    log_q_fixed: torch.Tensor | None  # log q(z_k|x) with q's parameters held fixed, if asked
    views: dict[str, torch.Tensor]  # the model's views of the latent samples, if asked

    @property
    def log_w(self) -> torch.Tensor:
        """log w_k = log p(x, z_k) − log q(z_k|x)."""
        return self.log_p - self.log_q


def particles(elbo, model, guide, args, kwargs, *, estimator: str, views: bool = False,
              fixed: bool = False) -> Particles:
    """The log-densities of ``elbo.num_particles`` vectorized particles; with ``fixed``, log q
    at fixed parameters too; with ``views``, the model run on views of the samples.
    :class:`ConfigError` naming ``estimator`` if a guide site is not reparameterized."""
    if elbo.max_plate_nesting == float("inf"):
        elbo._guess_max_plate_nesting(model, guide, args, kwargs)
    nesting = elbo.max_plate_nesting
    if elbo.num_particles == 1:  # Pyro leaves one particle unwrapped: a plate of 1 all the same
        nesting += 1
        plate = pyro.plate("num_particles_vectorized", 1, dim=-nesting)
        model, guide = plate(model), plate(guide)
    else:
        model = elbo._vectorized_num_particles(model)
        guide = elbo._vectorized_num_particles(guide)
    traces = importance_traces(model, guide, args, kwargs, nesting, views=views)
    check_reparameterized(traces.guide, estimator)
    sum_dims = get_dependent_plate_dims(traces.model.nodes.values())
    log_q_fixed = None
    if fixed:
        log_q_fixed = sum(torch_sum(value, sum_dims) for value in
                          log_q_at_fixed_parameters(guide, traces, args, kwargs).values())
    return Particles(sum_log_prob(traces.model, sum_dims), sum_log_prob(traces.guide, sum_dims),
                     log_q_fixed, traces.views)


def reweight_gradients(views: dict[str, torch.Tensor], weights: torch.Tensor,
                       estimator: str) -> None:
    """Multiply the gradient that reaches each latent sample's view by ``weights`` ``(K, B)``
    (a tensor hook; values untouched)."""
    for name, z in views.items():
        if z.shape[: weights.dim()] != weights.shape:
            raise ConfigError(f"the {estimator} estimator: latent site {name!r} has shape "
                              f"{tuple(z.shape)}, which does not start with the log-weights' "
                              f"shape {tuple(weights.shape)}")
        if z.requires_grad:
            w = weights.reshape(weights.shape + (1,) * (z.dim() - weights.dim()))
            z.register_hook(lambda grad, w=w: grad * w)


def check_reparameterized(guide_trace, estimator: str) -> None:
    """Raise :class:`ConfigError` naming ``estimator`` if a latent site of the guide is not
    reparameterized (its gradient would need a score-function term)."""
    for name, site in _latent_sites(guide_trace):
        if not is_reparameterized(site):
            raise ConfigError(f"the {estimator} estimator needs reparameterized guide sites; "
                              f"{name!r} is not")


def log_prob_stop_q(site: dict) -> torch.Tensor:
    """log q(z) of a guide sample site with the distribution's parameters detached, scaled and
    masked like ``site["log_prob"]`` (batch shape, nats): its gradient is the path term
    ∂_z log q(z) ∂_φ z only (Roeder, Wu & Duvenaud 2017)."""
    fn = detach(site["fn"])
    log_q = fn.log_prob(site["value"], *site["args"], **site["kwargs"])
    return scale_and_mask(log_q, site["scale"], site["mask"])


def is_reparameterized(site: dict) -> bool:
    """Whether a guide sample site's gradient flows through its value (``rsample``)."""
    _, score_function, entropy_term = site["score_parts"]
    return is_identically_zero(score_function) and not is_identically_zero(entropy_term)


def log_q_at_fixed_parameters(guide, traces: ImportanceTraces, args, kwargs
                              ) -> dict[str, torch.Tensor]:
    """log q(z) of each reparameterized latent site, with the value of ``site["log_prob"]``
    (nats) and the path term ∂_z log q_φ(z) ∂_φ z only as gradient, φ held fixed.

    With one latent site its parameters are detached (:func:`log_prob_stop_q`); with more, so
    as to keep ∂_(z_1) log q(z_2|z_1), the guide runs again on the detached samples z̄ and
    log q_φ(z) − log q_φ(z̄) + log q_φ(z̄) (the last detached) drops the score term only."""
    latents = _latent_sites(traces.guide)
    reparameterized = [name for name, site in latents if is_reparameterized(site)]
    if len(latents) == 1:
        return {name: log_prob_stop_q(traces.guide.nodes[name]) for name in reparameterized}
    fixed = {name: site["value"].detach() for name, site in latents}
    fixed_trace = poutine.trace(poutine.replay(guide, trace=with_values(traces.full_guide, fixed))
                                ).get_trace(*args, **kwargs)
    fixed_trace.compute_log_prob()
    out = {}
    for name in reparameterized:
        score = fixed_trace.nodes[name]["log_prob"]
        out[name] = traces.guide.nodes[name]["log_prob"] - (score - score.detach())
    return out


def with_values(trace: poutine.Trace, values: dict[str, torch.Tensor]) -> poutine.Trace:
    """A shallow copy of ``trace`` whose sites named in ``values`` take those values (for
    :func:`pyro.poutine.replay`); ``trace`` itself is untouched."""
    copy = trace.copy()
    for name, value in values.items():
        copy.nodes[name] = {**trace.nodes[name], "value": value}
    return copy


def _latent_sites(trace: poutine.Trace) -> list[tuple[str, dict]]:
    return [(name, site) for name, site in trace.nodes.items()
            if site["type"] == "sample" and not site["is_observed"]]
