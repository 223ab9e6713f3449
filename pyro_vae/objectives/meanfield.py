"""The mean-field ELBO, E_q[log p(x|z)] − KL(q(z|x) ‖ p(z)), with the KL in closed form."""

from __future__ import annotations

import pyro
import pyro.infer
import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.infer.util import check_fully_reparametrized, is_validation_enabled, torch_item
from pyro.poutine.util import prune_subsample_sites
from torch.distributions import kl_divergence

__all__ = ["MeanField_ELBO", "closed_form_kl_sites"]


def _is_observed(name, site) -> bool:
    return site["is_observed"]


def closed_form_kl_sites(model_trace, guide_trace) -> set[str]:
    """The latent sites whose closed-form KL(q ‖ p) may stand for E_q[log p − log q]: those
    that the model samples after no latent site that the guide samples after them, a
    sufficient form of Pyro's mean-field condition read from the program order. In the
    hierarchical VAE only the top layer qualifies.
    """
    order = [name for name, site in guide_trace.nodes.items()
             if site["type"] == "sample" and name in model_trace.nodes]
    position = {name: i for i, name in enumerate(order)}
    valid, latest = set(), -1
    for name, site in model_trace.nodes.items():
        if site["type"] != "sample" or site["is_observed"] or name not in position:
            continue
        if position[name] > latest:
            valid.add(name)
        latest = max(latest, position[name])
    return valid


def _kl_sum(guide_site, model_site):
    """Σ KL(q ‖ p) over the site's batch, scaled and masked like the site (Pyro's code)."""
    kl_qp = kl_divergence(guide_site["fn"], model_site["fn"])
    kl_qp = scale_and_mask(kl_qp, scale=guide_site["scale"], mask=guide_site["mask"])
    if torch.is_tensor(kl_qp):
        assert (torch._C._get_tracing_state()
                or kl_qp.shape == guide_site["fn"].batch_shape)
        return kl_qp.sum()
    return kl_qp * torch.Size(guide_site["fn"].batch_shape).numel()


def _closed_form_kl(guide_site, model_site):
    """KL(q ‖ p) of one latent site summed, in closed form, or None where torch has none."""
    try:
        return _kl_sum(guide_site, model_site)
    except NotImplementedError:
        return None


class MeanField_ELBO(pyro.infer.TraceMeanField_ELBO):
    """:class:`pyro.infer.TraceMeanField_ELBO` that takes the closed-form KL only where it is
    the ELBO's term (:func:`closed_form_kl_sites`, and torch knows the KL), the Monte Carlo
    term elsewhere, and computes only the log-densities it uses. On the one-layer VAE: Pyro's
    loss and gradients, bit for bit. Pyro's class takes the KL at every site, which on the
    hierarchical VAE biases the ELBO.
    """

    def _get_trace(self, model, guide, args, kwargs):
        if is_validation_enabled() or isinstance(poutine.unwrap(guide),
                                                 poutine.messenger.Messenger):
            # Trace_ELBO's traces and checks; closed_form_kl_sites replaces Pyro's order check.
            return pyro.infer.Trace_ELBO._get_trace(self, model, guide, args, kwargs)
        guide_trace = poutine.trace(guide, graph_type="flat").get_trace(*args, **kwargs)
        model_trace = poutine.trace(
            poutine.replay(model, trace=guide_trace), graph_type="flat"
        ).get_trace(*args, **kwargs)
        guide_trace = prune_subsample_sites(guide_trace)
        model_trace = prune_subsample_sites(model_trace)
        model_trace.compute_log_prob(_is_observed)
        return model_trace, guide_trace

    def _differentiable_loss_particle(self, model_trace, guide_trace):
        """Pyro's computation, term for term, with the KL only at :func:`closed_form_kl_sites`."""
        closed_form = closed_form_kl_sites(model_trace, guide_trace)
        elbo_particle = 0
        for name, model_site in model_trace.nodes.items():
            if model_site["type"] != "sample":
                continue
            if model_site["is_observed"]:
                elbo_particle = elbo_particle + model_site["log_prob_sum"]
                continue
            guide_site = guide_trace.nodes[name]
            if is_validation_enabled():
                check_fully_reparametrized(guide_site)
            kl = _closed_form_kl(guide_site, model_site) if name in closed_form else None
            if kl is not None:
                elbo_particle = elbo_particle - kl
                continue
            # no closed form, or not the ELBO's term: Monte Carlo, as Trace_ELBO
            _complete(model_trace, guide_trace)
            entropy_term = guide_site["score_parts"].entropy_term
            elbo_particle = elbo_particle + model_site["log_prob_sum"] - entropy_term.sum()
        for name, guide_site in guide_trace.nodes.items():  # auxiliary guide sites
            if guide_site["type"] == "sample" and name not in model_trace.nodes:
                assert guide_site["infer"].get("is_auxiliary")
                if is_validation_enabled():
                    check_fully_reparametrized(guide_site)
                _complete(model_trace, guide_trace)
                elbo_particle = elbo_particle - guide_site["score_parts"].entropy_term.sum()
        loss = -(elbo_particle.detach() if torch._C._get_tracing_state()
                 else torch_item(elbo_particle))
        return loss, -elbo_particle


def _complete(model_trace, guide_trace) -> None:
    """The log-densities that the lean traces skipped (each is computed once)."""
    model_trace.compute_log_prob()
    guide_trace.compute_score_parts()
