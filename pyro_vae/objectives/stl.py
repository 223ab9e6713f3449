"""Sticking the landing (Roeder, Wu & Duvenaud 2017): the ELBO with the guide's score term
∂_φ log q_φ(z|x)|_(z fixed), zero in expectation, removed from its gradient::

    >>> import pyro, torch
    >>> from pyro_vae import VAE
    >>> vae = VAE(x_dim=4, latent_dim=2, hidden_sizes=(8,))
    >>> svi = pyro.infer.SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), STL_ELBO())
    >>> loss = svi.step(torch.ones(3, 4))   # −ELBO summed over the 3 datapoints, in nats
    >>> loss > 0
    True
"""

from __future__ import annotations

from pyro.infer import Trace_ELBO
from pyro.infer.util import is_validation_enabled
from pyro.util import check_if_enumerated

from pyro_vae.objectives.util import importance_traces, log_q_at_fixed_parameters

__all__ = ["STL_ELBO"]


class STL_ELBO(Trace_ELBO):
    """:class:`pyro.infer.Trace_ELBO` (the same loss, −ELBO) whose surrogate takes each
    reparameterized guide site's log q at q's parameters held fixed
    (``util.log_q_at_fixed_parameters``), so that the guide's gradient is the path derivative
    only: zero for every sample when q(z|x) = p(z|x). A guide with several latent sites runs
    twice per step.

    .. warning:: Non-reparameterized guide sites keep the score-function gradient. Far from the
       posterior STL can be noisier than Trace_ELBO (Roeder et al. 2017).
    """

    def _get_trace(self, model, guide, args, kwargs):
        # Trace_ELBO's traces, each reparameterized site's entropy term at fixed parameters.
        traces = importance_traces(model, guide, args, kwargs, self.max_plate_nesting)
        if is_validation_enabled():
            check_if_enumerated(traces.guide)
        stl_trace = traces.guide.copy()
        for name, log_q in log_q_at_fixed_parameters(guide, traces, args, kwargs).items():
            site = traces.guide.nodes[name]
            score_parts = site["score_parts"]._replace(entropy_term=log_q)
            stl_trace.nodes[name] = dict(site, score_parts=score_parts)
        return traces.model, stl_trace
