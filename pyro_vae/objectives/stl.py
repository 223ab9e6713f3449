"""Sticking the landing (Roeder, Wu & Duvenaud 2017): the ELBO with the guide's score term
removed from its gradient.

For a reparameterized guide, z = z_φ(ε), the Monte Carlo gradient of the ELBO with respect to
the guide's parameters φ has two parts, ::

    ∇_φ [log p_θ(x, z) − log q_φ(z|x)] = (∂_z [log p_θ(x, z) − log q_φ(z|x)]) ∂_φ z_φ(ε)
                                         − ∂_φ log q_φ(z|x) |_(z fixed),

a path derivative and a score-function term whose expectation is zero. The score term does not
vanish when q equals the exact posterior, so :class:`pyro.infer.Trace_ELBO`'s gradient stays
noisy at the optimum. :class:`STL_ELBO` keeps only the path derivative::

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
    """The ELBO with the sticking-the-landing gradient of Roeder, Wu & Duvenaud (2017).

    The loss is :class:`pyro.infer.Trace_ELBO`'s (−ELBO, the same value for the same sample);
    its gradient drops the score term ∂_φ log q_φ(z|x)|_(z fixed) from every reparameterized
    guide site (the paper's "path derivative" estimator): for each such site the surrogate uses
    log q(z) at q's parameters held fixed (``log_q_at_fixed_parameters`` in
    :mod:`pyro_vae.objectives.util`; on a hierarchical guide ∂_(z_1) log q(z_2|z_1) stays), so
    only the path through z = z_φ(ε) remains. The expected gradient is unchanged
    (E_q[∂_φ log q_φ(z)] = 0), and when q(z|x) equals p(z|x) the guide's gradient is exactly
    zero for every sample, because log p(x, z) − log q(z|x) = log p(x) does not depend on z.
    The model's gradient is that of ``Trace_ELBO``, sample by sample.

    ``loss``, ``differentiable_loss`` and ``loss_and_grads`` are Trace_ELBO's, with
    ``num_particles`` and ``vectorize_particles`` as there; only the per-particle surrogate
    differs. A guide with more than one latent site runs a second time per step, on the
    samples held fixed.

    .. warning:: Non-reparameterized guide sites keep Trace_ELBO's score-function gradient.
       The lower variance is guaranteed only near the posterior; far from it the score term
       can cancel part of the path term's noise (Roeder et al. 2017), so STL can be noisier.
    """

    def _get_trace(self, model, guide, args, kwargs):
        # Trace_ELBO's traces, the guide's with each reparameterized site's entropy term (the
        # −log q(z) that Trace_ELBO differentiates) taken at q's parameters held fixed.
        traces = importance_traces(model, guide, args, kwargs, self.max_plate_nesting)
        if is_validation_enabled():
            check_if_enumerated(traces.guide)
        stl_trace = traces.guide.copy()
        for name, log_q in log_q_at_fixed_parameters(guide, traces, args, kwargs).items():
            site = traces.guide.nodes[name]
            score_parts = site["score_parts"]._replace(entropy_term=log_q)
            stl_trace.nodes[name] = dict(site, score_parts=score_parts)
        return traces.model, stl_trace
