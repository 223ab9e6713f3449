"""Normalizing-flow guides: q(z|x) as a diagonal Gaussian pushed through K inverse
autoregressive transforms (IAF; Kingma et al. 2016, eq. 10), Pyro's
:func:`~pyro.distributions.transforms.conditional_affine_autoregressive`:

    z_0 = μ(x) + σ(x) ⊙ ε,   z_k = m_k(z_(k-1), h) + s_k(z_(k-1), h) ⊙ z_(k-1)   (k = 1..K),
    log q(z_K|x) = log N(z_0; μ(x), diag σ(x)²) − Σ_k Σ_d log s_(k,d)

Each (m_k, log s_k) is a MADE network (Germain et al. 2015) under its own random ordering of
the latent dimensions, conditioned on h, the encoder's last hidden layer; Pyro clips log s_k to
[−5, 3]. Sampling, and the log-density of the sample just drawn (Pyro caches it), take one pass
per flow layer; the log-density of any other z needs the inverse, one pass per latent dimension.
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
from pyro.distributions import transforms
from torch import nn

from pyro_vae import checks
from pyro_vae.errors import ConfigError

__all__ = ["FLOWS", "InverseAutoregressiveFlow", "make_flow"]

#: The flows a guide may push its Gaussian through (``flow=``, ``--flow``): ``"iaf"``.
FLOWS = ("iaf",)


class InverseAutoregressiveFlow(nn.Module):
    """K conditional affine autoregressive transforms (Pyro's IAF), conditioned on a context.

    :param int latent_dim: size of z, at least 2.
    :param int context_dim: size of the context (the encoder's last hidden layer).
    :param int num_layers: K, the number of transforms.
    :param hidden_dims: hidden sizes of each MADE network (Pyro's default: 10 × latent_dim).
    """

    def __init__(self, latent_dim: int, context_dim: int, num_layers: int,
                 hidden_dims: tuple[int, ...] | None = None):
        super().__init__()
        checks.integer("flow_layers", num_layers)
        if latent_dim < 2:
            raise ConfigError(f"an IAF needs at least 2 latent dimensions, got {latent_dim} (over "
                              "one dimension it is an affine map, which the Gaussian has already)")
        if context_dim <= 0:
            raise ConfigError(f"an IAF guide conditions on the encoder's last hidden layer; this "
                              f"encoder has {context_dim} hidden units")
        hidden = None if hidden_dims is None else list(hidden_dims)
        self.latent_dim, self.num_layers = latent_dim, num_layers
        self.transforms = nn.ModuleList(
            [_conditional_iaf(latent_dim, context_dim, hidden) for _ in range(num_layers)]
        )

    def forward(self, base: dist.TorchDistribution, context: torch.Tensor
                ) -> dist.TransformedDistribution:
        """``base`` (event shape ``(latent_dim,)``) pushed through the transforms, each
        conditioned on ``context`` ``(..., context_dim)``."""
        flow = dist.ConditionalTransformedDistribution(base, list(self.transforms))
        return flow.condition(context)

    def push(self, u: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z = T(u) and ``log |det ∂z/∂u|`` ``(...)``, the transforms conditioned on ``context``;
        u ``(..., latent_dim)``."""
        z, log_det = u, u.new_zeros(u.shape[:-1])
        for transform in self.transforms:
            t = transform.condition(context)
            y = t(z)
            log_det = log_det + t.log_abs_det_jacobian(z, y)
            z = y
        return z, log_det

    def pull(self, z: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """u = T⁻¹(z): one network pass per latent dimension and transform."""
        for transform in reversed(self.transforms):
            z = transform.condition(context).inv(z)
        return z


def _conditional_iaf(latent_dim: int, context_dim: int, hidden_dims):
    if torch.get_default_device().type != "meta":
        return transforms.conditional_affine_autoregressive(latent_dim, context_dim, hidden_dims)
    # Pyro builds the MADE masks with .item(), which meta tensors refuse: build on the CPU
    with torch.random.fork_rng(devices=[]), torch.device("cpu"):
        transform = transforms.conditional_affine_autoregressive(latent_dim, context_dim,
                                                                 hidden_dims)
    return transform.to("meta")


def make_flow(name: str, *, latent_dim: int, context_dim: int, num_layers: int
              ) -> InverseAutoregressiveFlow:
    """The flow called ``name`` (one of :data:`FLOWS`) over ``latent_dim`` dimensions."""
    if name not in FLOWS:
        raise ConfigError(f"unknown flow {name!r}; known flows: {', '.join(FLOWS)}")
    return InverseAutoregressiveFlow(latent_dim, context_dim, num_layers)
