"""The test ELBO that training reports after every epoch."""

from __future__ import annotations

import torch

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
    as in one process."""

    def batch_elbo(start: int, stop: int, index: int) -> torch.Tensor:
        generator = torch.Generator(device=x.device).manual_seed(derive_seed(seed, index))
        return analytic_elbo(vae, x[start:stop], generator=generator, beta=1.0)  # (stop-start,)

    return float(map_rows(batch_elbo, x.shape[0], batch_size, world=world).sum()) / x.shape[0]
