"""The mean-field ELBO, E_q[log p(x|z)] − KL(q(z|x) ‖ p(z)), with the KL in closed form."""

from __future__ import annotations

import pyro
import pyro.infer
from pyro import poutine
from pyro.poutine.util import prune_subsample_sites

__all__ = ["TraceMeanField_ELBO"]


def _is_observed(name, site) -> bool:
    return site["is_observed"]


class TraceMeanField_ELBO(pyro.infer.TraceMeanField_ELBO):
    """:class:`pyro.infer.TraceMeanField_ELBO` without the log-densities it computes and never
    uses: the same loss and gradients, bit for bit, in less time per step (measured in
    ``benchmarks/README.md``).

    Pyro's class builds its traces with :func:`pyro.infer.enum.get_importance_trace`, which
    evaluates log p(z) at every latent site of the model and log q(z|x) at every site of the
    guide; where a closed-form KL(q ‖ p) exists (the VAE's Gaussian z) the estimator uses the
    KL instead and drops both. This class evaluates only the observed sites' log-densities up
    front. A latent site without a registered KL, or an auxiliary guide site, needs the
    others: then they are computed and Pyro's estimator runs again on the complete traces.

    With validation enabled (:func:`pyro.enable_validation`) it is Pyro's class unchanged,
    so that every check of :func:`get_importance_trace` runs.
    """

    def _get_trace(self, model, guide, args, kwargs):
        if pyro.infer.util.is_validation_enabled() or isinstance(
            poutine.unwrap(guide), poutine.messenger.Messenger
        ):
            return super()._get_trace(model, guide, args, kwargs)
        guide_trace = poutine.trace(guide, graph_type="flat").get_trace(*args, **kwargs)
        model_trace = poutine.trace(
            poutine.replay(model, trace=guide_trace), graph_type="flat"
        ).get_trace(*args, **kwargs)
        guide_trace = prune_subsample_sites(guide_trace)
        model_trace = prune_subsample_sites(model_trace)
        model_trace.compute_log_prob(_is_observed)
        return model_trace, guide_trace

    def _differentiable_loss_particle(self, model_trace, guide_trace):
        try:
            return super()._differentiable_loss_particle(model_trace, guide_trace)
        except KeyError:  # a site that needs the log-densities skipped in _get_trace
            model_trace.compute_log_prob()
            guide_trace.compute_score_parts()
            return super()._differentiable_loss_particle(model_trace, guide_trace)
