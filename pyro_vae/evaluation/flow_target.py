"""The AIS target of a :class:`~pyro_vae.HierarchicalVAE` whose guide has flows, in the flows'
input coordinates (the interface of :mod:`.targets`).

The guide draws layer by layer, z_0 = x: ε_l ~ N(loc_l(z_(l-1)), scale_l(z_(l-1))) and
z_l = T_l(ε_l; h_l(z_(l-1))), T_l the layer's IAF conditioned on its encoder's hidden layer.
The density works in u = (ε_1, …, ε_L):

    log s(u) = Σ_l log N(ε_l; loc_l(z_(l-1)), scale_l(z_(l-1)))     the start: q, exactly
    log p(x, z(u)) + Σ_l log |det ∂T_l/∂ε_l|                           the target, in u

The Jacobian of u ↦ z is block-triangular (z_l depends on ε_1 … ε_(l-1) only through the
conditioning), so its log-determinant is the sum of the layers'. At a draw of the guide the
log-ratio ℓ = log p(x, z) − log q(z|x), so AIS starts at q itself and its first weight is q's
importance weight, and no flow inverse is needed but for BDMC's simulated z (once per
datapoint). This is the change of variables of NeuTra HMC (Hoffman et al. 2019), layer by
layer; the one-layer VAE's fast target does the same.
"""

from __future__ import annotations

import torch
from torch.distributions import Normal
from torch.distributions.transforms import ComposeTransform

from pyro_vae.evaluation.program import as_data

__all__ = ["HierarchicalFlowTarget"]


class HierarchicalFlowTarget:
    """AIS, BDMC and the gaps for a :class:`~pyro_vae.HierarchicalVAE` with ``flow``, started
    at its guide (see the module docstring)."""

    start = "guide"

    def __init__(self, vae):
        self.vae = vae

    def describe_start(self) -> str:
        return "the guide q(z|x), in its flows' input coordinates"

    def bind(self, data) -> _FlowDensity:
        (x,) = as_data(data)
        return _FlowDensity(self.vae, x)

    def simulate(self, data) -> tuple[tuple, torch.Tensor]:
        """(x, z) from the model, ancestrally, with the global generator: the data ``(x,)``
        and u = the flows' inputs that give z under the guide of the simulated x, ``(1, B, P)``
        (one flow inverse per layer)."""
        (x,) = as_data(data)
        vae = self.vae
        with torch.no_grad():
            z = torch.randn(x.shape[0], vae.latent_dims[-1], dtype=x.dtype, device=x.device)
            zs = [z]
            for prior in reversed(vae.priors):
                loc, scale = prior(z)
                z = Normal(loc, scale).sample()
                zs.insert(0, z)
            x_sim = vae.likelihood(vae.decoder(zs[0])).sample().to(x.dtype)
            parts, below = [], x_sim
            for layer, z in enumerate(zs):
                h = vae.encoders[layer].features(below)
                parts.append(_flow(vae, layer, h).inv(z))
                below = z
        return (x_sim,), torch.cat(parts, -1).unsqueeze(0)

    def row_bytes(self, data) -> int:
        """Bytes of working memory per (chain × datapoint) row of a gradient evaluation (a
        generous count of every layer's activations, forward and backward)."""
        (x,) = as_data(data)
        widths = sum(m.out_features for m in self.vae.modules() if isinstance(m, torch.nn.Linear))
        return 3 * x.element_size() * (2 * widths + 3 * x.shape[1])


def _flow(vae, layer: int, h: torch.Tensor):
    """The layer's IAF conditioned on the hidden layer ``h`` (one composed transform)."""
    return ComposeTransform([t.condition(h) for t in vae.flows[layer].transforms])


class _FlowDensity:
    def __init__(self, vae, x: torch.Tensor):
        self.vae, self.x = vae, x
        self.num_datapoints, self.dim = x.shape[0], sum(vae.latent_dims)

    def _layers(self, u: torch.Tensor | None, num_chains: int):
        """Walk the guide's layers at u ``(C, B, P)``, or drawing u when ``u`` is None:
        (u, z_1..z_L, log s(u), Σ log |det ∂z/∂ε|)."""
        vae, below = self.vae, self.x
        eps, zs, offset = [], [], 0
        log_start = log_det = 0.0
        for layer, d in enumerate(vae.latent_dims):
            h = vae.encoders[layer].features(below)
            loc, scale = vae.encoders[layer].heads(h)
            base = Normal(loc, scale, validate_args=False)
            if u is None:
                e = base.sample((num_chains,) if layer == 0 else ())
            else:
                e = u[..., offset : offset + d]
            offset += d
            flow = _flow(vae, layer, h)
            z = flow(e)
            log_start = log_start + base.log_prob(e).sum(-1)
            log_det = log_det + flow.log_abs_det_jacobian(e, z)
            eps.append(e)
            zs.append(z)
            below = z
        return torch.cat(eps, -1), zs, log_start, log_det

    def _log_joint(self, zs) -> torch.Tensor:
        vae = self.vae
        top = zs[-1]
        log_p = Normal(0.0, 1.0, validate_args=False).log_prob(top).sum(-1)
        for i, prior in enumerate(vae.priors):  # p(z_i | z_(i+1))
            loc, scale = prior(zs[i + 1])
            log_p = log_p + Normal(loc, scale, validate_args=False).log_prob(zs[i]).sum(-1)
        return log_p + vae.likelihood.log_prob_sum(vae.decoder(zs[0]), self.x)

    def sample_start(self, num_chains: int) -> torch.Tensor:
        with torch.no_grad():
            return self._layers(None, num_chains)[0]

    def sample_guide(self, num_samples: int) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            u, _, log_start, _ = self._layers(None, num_samples)
            return u, log_start

    def start_and_ratio(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _, zs, log_start, log_det = self._layers(u, u.shape[0])
        return log_start, self._log_joint(zs) + log_det - log_start

    def log_joint(self, u: torch.Tensor) -> torch.Tensor:
        _, zs, _, log_det = self._layers(u, u.shape[0])
        return self._log_joint(zs) + log_det

    def guide_gaussian(self, num_samples: int) -> tuple[torch.Tensor, torch.Tensor]:
        u = self.sample_start(num_samples)
        return u.mean(0), u.std(0)
