"""The test ELBO that training reports."""

from __future__ import annotations

import torch
from pyro import poutine

from pyro_vae.distributed import World, derive_seed, map_rows
from pyro_vae.losses import analytic_elbo

__all__ = ["mean_elbo"]


@torch.no_grad()
def mean_elbo(vae, x: torch.Tensor, *, batch_size: int = 1000, seed: int = 0,
              world: World | None = None) -> float:
    """Mean analytic-KL ELBO (β = 1) over ``x`` in nats per datapoint, one posterior sample
    per datapoint; batch ``i`` draws from a generator seeded with ``derive_seed(seed, i)``, so
    the figure is the same for every run and every estimator evaluated on the same ``x``.
    With ``world`` the batches are split across the ranks and gathered; the result is the same
    as in one process.

    The KL is in closed form where it is the ELBO's term (:func:`pyro_vae.losses.analytic_elbo`:
    every layer of the one-layer VAE, the top layer of a hierarchical one); a flow guide has
    no closed form, and its ELBO is log p(x, z) − log q(z|x) at the sample (Pyro's traces, with
    torch's generator seeded alike)."""
    flow = vae.structure.flow if hasattr(vae, "structure") else None

    def batch_elbo(start: int, stop: int, index: int) -> torch.Tensor:
        if flow is not None:
            return _sampled_elbo(vae, x[start:stop], derive_seed(seed, index))
        generator = torch.Generator(device=x.device).manual_seed(derive_seed(seed, index))
        return analytic_elbo(vae, x[start:stop], generator=generator, beta=1.0)  # (stop-start,)

    return float(map_rows(batch_elbo, x.shape[0], batch_size, world=world).sum()) / x.shape[0]


def _sampled_elbo(vae, x: torch.Tensor, seed: int) -> torch.Tensor:
    """log p(x, z) − log q(z|x) per datapoint ``(B,)`` at one z ~ q(z|x) drawn by the guide
    from torch's generator seeded with ``seed`` (the caller's stream is left as it was); the
    sites' own log-densities, without the KL weight β."""
    with torch.random.fork_rng(devices=[x.device] if x.is_cuda else []):
        torch.manual_seed(seed)
        guide_trace = poutine.trace(vae.guide).get_trace(x)
    model_trace = poutine.trace(poutine.replay(vae.model, trace=guide_trace)).get_trace(x)
    log_w = 0.0
    for trace, sign in ((model_trace, 1.0), (guide_trace, -1.0)):
        for site in trace.nodes.values():
            if site["type"] == "sample":
                log_w = log_w + sign * site["fn"].log_prob(site["value"])
    return log_w
