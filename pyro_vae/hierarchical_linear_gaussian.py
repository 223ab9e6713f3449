"""The linear-Gaussian hierarchical VAE, where every quantity is known exactly: the
ground truth that checks :class:`~pyro_vae.HierarchicalVAE` and every estimator on it.

    p(z_L) = N(0, I),   p(z_(l-1)|z_l) = N(W_l z_l + b_l, σ_l² I)   (l = L..1, z_0 = x).

Every z and x are then jointly Gaussian, so that

    p(x) = N(μ_0, Σ_0),   μ_(l-1) = W_l μ_l + b_l,   Σ_(l-1) = W_l Σ_l W_lᵀ + σ_l² I
    (μ_L = 0, Σ_L = I),

and the guide q(z_1|x) q(z_2|z_1) …, each layer N(A_l z_(l-1) + c_l, diag s_l²), is a
Gaussian over z = (z_1, ..., z_L) jointly: z = F x + g + T ε with ε ~ N(0, I). Its ELBO is in
closed form (:func:`closed_form_elbo`), and the exact posterior p(z|x) by Bayes' rule
(:func:`exact_posterior`), so that ELBO + KL(q ‖ p(z|x)) = log p(x) can be checked to 1e-10.
All log-densities are in nats per datapoint; use float64 for tight identities.
"""

from __future__ import annotations

import itertools
import math
from typing import NamedTuple

import torch
from torch import nn
from torch.distributions import MultivariateNormal

from pyro_vae.hierarchical import HierarchicalVAE
from pyro_vae.likelihoods import Gaussian
from pyro_vae.linear_gaussian import LinearDecoder

__all__ = [
    "LayerParams",
    "LinearGaussian",
    "closed_form_elbo",
    "exact_posterior",
    "guide_joint",
    "linear_gaussian_hvae",
    "log_marginal",
    "prior_joint",
    "sample_model",
    "set_to_posterior",
]


class LayerParams(NamedTuple):
    """p(z_(l-1)|z_l) = N(W z_l + b, σ² I); layer 1 generates x."""

    W: torch.Tensor  # (d_(l-1), d_l)
    b: torch.Tensor  # (d_(l-1),)
    sigma: torch.Tensor  # scalar standard deviation


class LinearGaussian(nn.Module):
    """A linear-Gaussian conditional N(A h + c, diag exp(log_scale)²) of its input h: a layer of
    the guide (initialised at A = 0, c = 0, scale 1) or the model's p(z_(l-1)|z_l) (given A, c
    and a scalar scale; buffers when not ``trainable``). Its features are its input, so that a
    flow can condition on it."""

    def __init__(self, in_dim: int, out_dim: int, *, A=None, c=None, scale=None,
                 trainable: bool = True, dtype=torch.float64):
        super().__init__()
        A = torch.zeros(out_dim, in_dim, dtype=dtype) if A is None else A.clone()
        c = torch.zeros(out_dim, dtype=dtype) if c is None else c.clone()
        log_scale = (torch.zeros(out_dim, dtype=dtype) if scale is None
                     else torch.as_tensor(scale, dtype=dtype).log().expand(out_dim).clone())
        for name, value in (("A", A), ("c", c), ("log_scale", log_scale)):
            if trainable:
                setattr(self, name, nn.Parameter(value))
            else:
                self.register_buffer(name, value)
        self.features_dim = in_dim

    def features(self, h, context=None):
        return h

    def heads(self, h):
        loc = h @ self.A.T + self.c
        return loc, self.log_scale.exp().expand(loc.shape)

    def forward(self, h, context=None):
        return self.heads(h)


def linear_gaussian_hvae(params: tuple[LayerParams, ...], *, learn_model: bool = False,
                         flow: str | None = None, flow_layers: int = 2) -> HierarchicalVAE:
    """A :class:`HierarchicalVAE` whose model is the linear-Gaussian chain ``params`` (layer 1
    first) and whose guide has one :class:`LinearGaussian` per layer, at q = N(0, I) (pushed
    through IAFs with ``flow``)."""
    dims = (params[0].W.shape[0], *(p.W.shape[1] for p in params))
    dtype = params[0].W.dtype
    W1, b1, sigma1 = params[0]
    likelihood = Gaussian(float(sigma1), learn_scale=learn_model, x_dim=1)
    vae = HierarchicalVAE(
        dims[0], latent_dims=dims[1:], hidden_sizes=[()] * len(params),
        encoders=[LinearGaussian(i, o, dtype=dtype) for i, o in itertools.pairwise(dims)],
        priors=[LinearGaussian(p.W.shape[1], p.W.shape[0], A=p.W, c=p.b, scale=p.sigma,
                               trainable=learn_model, dtype=dtype) for p in params[1:]],
        decoder=LinearDecoder(W1, b1, trainable=learn_model), likelihood=likelihood,
        flow=flow, flow_layers=flow_layers,
    ).to(dtype)
    with torch.no_grad():  # log σ in W's precision (Gaussian() builds it in float32)
        vae.likelihood.log_scale.fill_(float(torch.as_tensor(sigma1, dtype=torch.float64).log()))
    return vae


def _gaussian_chain(start: torch.Tensor, steps) -> tuple[torch.Tensor, torch.Tensor]:
    """For u_k = A_k u_(k-1) + c_k + s_k ⊙ ε_k (k = 1..K, u_0 = ``start`` (B, d_0), ε_k ~ N(0,
    I)), the stacked (u_1, ..., u_K) as mean (B, Σd_k) + T ε, T (Σd_k, Σd_k)."""
    total = sum(A.shape[0] for A, _, _ in steps)
    means, rows, mean, T, offset = [], [], start, None, 0
    for A, c, s in steps:
        d = A.shape[0]
        mean = mean @ A.T + c
        noise = torch.zeros(d, total, dtype=A.dtype)
        noise[:, offset:offset + d] = torch.diag(s.expand(d))
        T = noise if T is None else noise + A @ T
        means.append(mean)
        rows.append(T)
        offset += d
    return torch.cat(means, -1), torch.cat(rows, 0)


def prior_joint(params: tuple[LayerParams, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ``(Σd,)`` and covariance of p(z_1, ..., z_L), in that order of the layers."""
    dtype, top = params[0].W.dtype, params[-1].W.shape[1]
    steps = [(torch.zeros(top, 0, dtype=dtype), torch.zeros(top, dtype=dtype),
              torch.ones((), dtype=dtype))]
    steps += [(p.W, p.b, p.sigma) for p in reversed(params[1:])]  # z_L, ..., z_1
    mean, T = _gaussian_chain(torch.zeros(1, 0, dtype=dtype), steps)
    order = _reversed_blocks([p.W.shape[1] for p in reversed(params)])
    return mean[0, order], (T @ T.T)[order][:, order]


def _reversed_blocks(sizes: list[int]) -> torch.Tensor:
    """Indices that put blocks of ``sizes`` in the reverse order."""
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    return torch.cat([torch.arange(s, s + n) for s, n in reversed(list(zip(starts, sizes,
                                                                            strict=True)))])


def log_marginal(x: torch.Tensor, params: tuple[LayerParams, ...]) -> torch.Tensor:
    """log p(x) = log N(x; μ_0, Σ_0) per datapoint ``(B,)`` nats, from the top down."""
    mean = torch.zeros(params[-1].W.shape[1], dtype=x.dtype)
    cov = torch.eye(mean.shape[0], dtype=x.dtype)
    for W, b, sigma in reversed(params):
        mean, cov = W @ mean + b, W @ cov @ W.T + sigma**2 * torch.eye(W.shape[0], dtype=x.dtype)
    return MultivariateNormal(mean, covariance_matrix=cov).log_prob(x)


def guide_joint(vae: HierarchicalVAE, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ``(B, Σd)`` and covariance ``(Σd, Σd)`` of the guide's q(z_1, ..., z_L|x), for
    :class:`LinearGaussian` encoders without flows."""
    steps = [(e.A.detach(), e.c.detach(), e.log_scale.detach().exp()) for e in vae.encoders]
    mean, T = _gaussian_chain(x, steps)
    return mean, T @ T.T


def _expected_sq_norm(R: torch.Tensor, r0: torch.Tensor, q_mean, q_cov) -> torch.Tensor:
    """E‖R z + r0‖² for z ~ N(q_mean, q_cov): ``(B,)``."""
    return (q_mean @ R.T + r0).pow(2).sum(-1) + torch.trace(R @ q_cov @ R.T)


def closed_form_elbo(x, q_mean, q_cov, params: tuple[LayerParams, ...]) -> torch.Tensor:
    """E_q[log p(x, z)] + H[q] for q(z|x) = N(q_mean, q_cov) over z = (z_1..z_L), per
    datapoint ``(B,)`` nats: each factor N(r; 0, σ² I) of log p, with its residual r = R z + r0
    linear in z, contributes −d/2 log(2πσ²) − E‖r‖²/(2σ²), and H[q] = ½ log det(2πe q_cov)."""
    dims = [p.W.shape[1] for p in params]
    starts = [sum(dims[:i]) for i in range(len(dims))]
    total, dtype = sum(dims), x.dtype

    def block(i: int, M: torch.Tensor) -> torch.Tensor:  # M placed at latent layer i's columns
        R = torch.zeros(M.shape[0], total, dtype=dtype)
        R[:, starts[i]:starts[i] + dims[i]] = M
        return R

    # x | z_1, then z_(l-1) | z_l, then z_L; each (R, r0, σ)
    factors = [(-block(0, params[0].W), x - params[0].b, params[0].sigma)]
    factors += [(block(i - 1, torch.eye(dims[i - 1], dtype=dtype)) - block(i, params[i].W),
                 -params[i].b, params[i].sigma) for i in range(1, len(params))]
    factors.append((block(len(dims) - 1, torch.eye(dims[-1], dtype=dtype)),
                    torch.zeros(dims[-1], dtype=dtype), torch.ones((), dtype=dtype)))
    expected = 0.0
    for R, r0, sigma in factors:
        expected = expected - 0.5 * R.shape[0] * torch.log(2 * math.pi * sigma**2) \
            - _expected_sq_norm(R, r0, q_mean, q_cov) / (2 * sigma**2)
    entropy = 0.5 * (total * math.log(2 * math.pi * math.e) + torch.logdet(q_cov))
    return expected + entropy


def exact_posterior(x: torch.Tensor, params: tuple[LayerParams, ...]):
    """p(z_1, ..., z_L|x) by Bayes' rule on the joint prior and p(x|z_1): mean ``(B, Σd)`` and
    covariance ``(Σd, Σd)``."""
    prior_mean, prior_cov = prior_joint(params)
    W1, b1, sigma1 = params[0]
    H = torch.cat([W1, torch.zeros(W1.shape[0], prior_mean.shape[0] - W1.shape[1],
                                   dtype=x.dtype)], 1)  # x = H z + b1 + noise
    precision = torch.linalg.inv(prior_cov) + H.T @ H / sigma1**2
    cov = torch.linalg.inv(precision)
    mean = (torch.linalg.solve(prior_cov, prior_mean) + (x - b1) @ H / sigma1**2) @ cov
    return mean, cov


@torch.no_grad()
def set_to_posterior(vae: HierarchicalVAE, params: tuple[LayerParams, ...]) -> None:
    """Set each :class:`LinearGaussian` layer of the guide to the exact conditional's mean map
    and marginal standard deviations: q(z_1|x) to p(z_1|x), and q(z_l|z_(l-1)) to
    p(z_l|z_(l-1), x) = p(z_l|z_(l-1)) (the chain is Markov). The guide is then the exact
    posterior wherever those conditionals have diagonal covariances."""
    dims = [p.W.shape[1] for p in params]
    starts = [sum(dims[:i]) for i in range(len(dims))]
    blocks = [slice(s, s + d) for s, d in zip(starts, dims, strict=True)]
    D, dtype = params[0].W.shape[0], params[0].W.dtype
    offset, _ = exact_posterior(torch.zeros(1, D, dtype=dtype), params)
    slopes = exact_posterior(torch.eye(D, dtype=dtype), params)[0] - offset  # (D, Σd)
    _, post_cov = exact_posterior(torch.zeros(1, D, dtype=dtype), params)
    first = vae.encoders[0]
    first.A.copy_(slopes[:, blocks[0]].T)
    first.c.copy_(offset[0, blocks[0]])
    first.log_scale.copy_(0.5 * torch.diagonal(post_cov[blocks[0], blocks[0]]).log())
    prior_mean, prior_cov = prior_joint(params)
    for i in range(1, len(dims)):
        below, here = blocks[i - 1], blocks[i]
        A = torch.linalg.solve(prior_cov[below, below], prior_cov[below, here]).T
        cond_cov = prior_cov[here, here] - A @ prior_cov[below, here]
        vae.encoders[i].A.copy_(A)
        vae.encoders[i].c.copy_(prior_mean[here] - A @ prior_mean[below])
        vae.encoders[i].log_scale.copy_(0.5 * torch.diagonal(cond_cov).log())


def sample_model(params: tuple[LayerParams, ...], n: int,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw ``n`` datapoints ``(n, D)`` from the model, top down."""
    dtype = params[0].W.dtype
    z = torch.randn(n, params[-1].W.shape[1], generator=generator, dtype=dtype)
    for W, b, sigma in reversed(params):
        z = z @ W.T + b + sigma * torch.randn(n, W.shape[0], generator=generator, dtype=dtype)
    return z
