"""The linear-Gaussian VAE, where every quantity is known exactly: the ground truth that checks
the VAE and every estimator. With L stochastic layers,

    p(z_L) = N(0, I),   p(z_(l-1)|z_l) = N(W_l z_l + μ_l, σ_l² I)   (l = L..1, z_0 = x),

so that every z and x are jointly Gaussian: p(x) = N(m_0, S_0) with m_(l-1) = W_l m_l + μ_l,
S_(l-1) = W_l S_l W_lᵀ + σ_l² I (m_L = 0, S_L = I). One layer is probabilistic PCA (Tipping &
Bishop 1999): p(x) = N(μ, W Wᵀ + σ² I), p(z|x) = N(M⁻¹ Wᵀ (x − μ), σ² M⁻¹), M = Wᵀ W + σ² I.

The guide q(z_1|x) q(z_2|z_1) ⋯, each layer N(A_l z_(l-1) + c_l, diag s_l²)
(:class:`LinearGaussian`), is jointly Gaussian too: its ELBO, Rényi bound and KL to the exact
posterior are in closed form. Log-densities are in nats per datapoint; use float64.
"""

from __future__ import annotations

import itertools
import math
from typing import NamedTuple

import torch
from torch import nn
from torch.distributions import MultivariateNormal, kl_divergence

from pyro_vae import checks
from pyro_vae.errors import ConfigError, ConfigTypeError
from pyro_vae.models.likelihoods import Gaussian
from pyro_vae.models.vae import VAE

__all__ = ["LayerParams", "LinearDecoder", "LinearGaussian", "PPCAParams", "closed_form_elbo",
           "closed_form_renyi_bound", "exact_posterior", "guide_joint", "kl_to_posterior",
           "linear_gaussian_vae", "log_marginal", "max_likelihood", "prior_joint", "sample_model",
           "set_to_posterior"]


class LayerParams(NamedTuple):
    """p(z_(l-1)|z_l) = N(W z_l + μ, σ² I); layer 1 generates x."""

    W: torch.Tensor  # (d_(l-1), d_l)
    mu: torch.Tensor  # (d_(l-1),)
    sigma: torch.Tensor  # scalar standard deviation


PPCAParams = LayerParams  # probabilistic PCA is the one-layer chain


def _layers(params) -> tuple[LayerParams, ...]:
    """``params`` as a tuple of layers (one :class:`LayerParams` is pPCA)."""
    layers = (params,) if isinstance(params, LayerParams) else params
    if not isinstance(layers, (tuple, list)) or not layers or not all(
            isinstance(layer, LayerParams) for layer in layers):
        raise ConfigTypeError(f"params must be a LayerParams or a sequence of them, got "
                              f"{type(params).__name__}")
    return tuple(layers)


class LinearDecoder(nn.Module):
    """z ↦ W z + μ; W and μ are parameters, or buffers when not ``trainable``."""

    def __init__(self, W: torch.Tensor, mu: torch.Tensor, *, trainable: bool = True):
        super().__init__()
        # pyro.module would register (and SVI step) a contiguous copy of a strided W
        for name, value in (("W", W), ("mu", mu)):
            value = checks.tensor(name, value, min_dims=1).clone().contiguous()
            if trainable:
                setattr(self, name, nn.Parameter(value))
            else:
                self.register_buffer(name, value)

    def forward(self, z, context=None):
        return z @ self.W.T + self.mu


class LinearGaussian(nn.Module):
    """A linear-Gaussian conditional N(A h + c, diag exp(log_scale)²) of its input h: a layer of
    the guide (at A = 0, c = 0, scale 1) or the model's p(z_(l-1)|z_l) (given A, c and a scalar
    scale; buffers when not ``trainable``). Its features, which a flow conditions on, are h."""

    def __init__(self, in_dim: int, out_dim: int, *, A=None, c=None, scale=None,
                 trainable: bool = True, dtype=torch.float64):
        super().__init__()
        A = torch.zeros(out_dim, in_dim, dtype=dtype) if A is None else A.clone()
        c = torch.zeros(out_dim, dtype=dtype) if c is None else c.clone()
        log_scale = (torch.zeros(out_dim, dtype=dtype) if scale is None
                     else torch.as_tensor(scale, dtype=dtype).log().expand(out_dim).clone())
        for name, value in (("A", A), ("c", c), ("log_scale", log_scale)):
            if trainable:
                setattr(self, name, nn.Parameter(value.contiguous()))
            else:
                self.register_buffer(name, value.contiguous())
        self.features_dim = in_dim

    def features(self, h, context=None):
        return h

    def heads(self, h):
        loc = h @ self.A.T + self.c
        return loc, self.log_scale.exp().expand(loc.shape)

    def forward(self, h, context=None):
        return self.heads(h)


def linear_gaussian_vae(params, *, learn_model: bool = True, prefix: str = "",
                        flow: str | None = None, flow_layers: int = 2) -> VAE:
    """A :class:`~pyro_vae.VAE` whose model is the chain ``params`` (a :class:`LayerParams`, or
    a sequence of them, layer 1 first) and whose guide has one :class:`LinearGaussian` per layer
    at q = N(0, I) (pushed through IAFs with ``flow``); ``learn_model`` trains the model too."""
    layers = _layers(params)
    dims = (layers[0].W.shape[0], *(p.W.shape[1] for p in layers))
    dtype = layers[0].W.dtype
    W1, mu1, sigma1 = layers[0]
    vae = VAE(
        dims[0], latent_dim=dims[1:], hidden_sizes=[()] * len(layers),
        encoder=[LinearGaussian(i, o, dtype=dtype) for i, o in itertools.pairwise(dims)],
        priors=[LinearGaussian(p.W.shape[1], p.W.shape[0], A=p.W, c=p.mu, scale=p.sigma,
                               trainable=learn_model, dtype=dtype) for p in layers[1:]],
        decoder=LinearDecoder(W1, mu1, trainable=learn_model),
        likelihood=Gaussian(float(sigma1), learn_scale=learn_model, x_dim=1),
        prefix=prefix, flow=flow, flow_layers=flow_layers,
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


def prior_joint(params) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ``(Σd,)`` and covariance of p(z_1, ..., z_L), in that order of the layers."""
    layers = _layers(params)
    dtype, top = layers[0].W.dtype, layers[-1].W.shape[1]
    steps = [(torch.zeros(top, 0, dtype=dtype), torch.zeros(top, dtype=dtype),
              torch.ones((), dtype=dtype))]
    steps += [(p.W, p.mu, p.sigma) for p in reversed(layers[1:])]  # z_L, ..., z_1
    mean, T = _gaussian_chain(torch.zeros(1, 0, dtype=dtype), steps)
    sizes = [p.W.shape[1] for p in reversed(layers)]
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    order = torch.cat([torch.arange(s, s + n) for s, n in reversed(list(zip(starts, sizes,
                                                                             strict=True)))])
    return mean[0, order], (T @ T.T)[order][:, order]


def log_marginal(x: torch.Tensor, params) -> torch.Tensor:
    """log p(x) = log N(x; m_0, S_0) per datapoint ``(B,)`` nats, from the top down."""
    layers = _layers(params)
    mean = torch.zeros(layers[-1].W.shape[1], dtype=x.dtype)
    cov = torch.eye(mean.shape[0], dtype=x.dtype)
    for W, mu, sigma in reversed(layers):
        mean, cov = W @ mean + mu, W @ cov @ W.T + sigma**2 * torch.eye(W.shape[0], dtype=x.dtype)
    return MultivariateNormal(mean, covariance_matrix=cov).log_prob(x)


def exact_posterior(x: torch.Tensor, params):
    """p(z_1, ..., z_L|x) by Bayes' rule on the joint prior and p(x|z_1): mean ``(B, Σd)`` and
    covariance ``(Σd, Σd)``."""
    layers = _layers(params)
    prior_mean, prior_cov = prior_joint(layers)
    W1, mu1, sigma1 = layers[0]
    H = torch.cat([W1, torch.zeros(W1.shape[0], prior_mean.shape[0] - W1.shape[1],
                                   dtype=x.dtype)], 1)  # x = H z + μ_1 + noise
    precision = torch.linalg.inv(prior_cov) + H.T @ H / sigma1**2
    cov = torch.linalg.inv(precision)
    mean = (torch.linalg.solve(prior_cov, prior_mean) + (x - mu1) @ H / sigma1**2) @ cov
    return mean, cov


def closed_form_elbo(x, q_mean, q_cov, params) -> torch.Tensor:
    """E_q[log p(x, z)] + H[q] for q(z|x) = N(q_mean, q_cov) over z = (z_1..z_L) (``q_cov``
    ``(Σd, Σd)`` or one per datapoint), per datapoint ``(B,)`` nats: each factor N(r; 0, σ² I)
    of p, its residual r = R z + r0 linear in z, contributes −d/2 log(2πσ²) − E‖r‖²/(2σ²)."""
    layers = _layers(params)
    dims = [p.W.shape[1] for p in layers]
    starts = [sum(dims[:i]) for i in range(len(dims))]
    total, dtype = sum(dims), x.dtype

    def block(i: int, M: torch.Tensor) -> torch.Tensor:  # M placed at latent layer i's columns
        R = torch.zeros(M.shape[0], total, dtype=dtype)
        R[:, starts[i]:starts[i] + dims[i]] = M
        return R

    # x | z_1, then z_(l-1) | z_l, then z_L; each (R, r0, σ)
    factors = [(-block(0, layers[0].W), x - layers[0].mu, layers[0].sigma)]
    factors += [(block(i - 1, torch.eye(dims[i - 1], dtype=dtype)) - block(i, layers[i].W),
                 -layers[i].mu, layers[i].sigma) for i in range(1, len(layers))]
    factors.append((block(len(dims) - 1, torch.eye(dims[-1], dtype=dtype)),
                    torch.zeros(dims[-1], dtype=dtype), torch.ones((), dtype=dtype)))
    expected = 0.0
    for R, r0, sigma in factors:  # E‖R z + r0‖² = ‖R m + r0‖² + tr(R S Rᵀ)
        sq_norm = (q_mean @ R.T + r0).pow(2).sum(-1) + torch.einsum("ij,...jk,ik->...", R,
                                                                     q_cov, R)
        expected = expected - 0.5 * R.shape[0] * torch.log(2 * math.pi * sigma**2) \
            - sq_norm / (2 * sigma**2)
    entropy = 0.5 * (total * math.log(2 * math.pi * math.e) + torch.logdet(q_cov))
    return expected + entropy


def closed_form_renyi_bound(x, q_mean, q_cov, params, alpha: float) -> torch.Tensor:
    """The Rényi bound of order α in [0, 1) of q(z|x) = N(q_mean, q_cov) (Li & Turner 2016),
    per datapoint ``(B,)`` nats: VR_α = log p(x) − D_α(q(z|x) ‖ p(z|x)), with
    D_α(q ‖ p) = −1/(1 − α) log ∫ q^α p^(1−α) dz, an integral of two powered Gaussians in closed
    form. α = 0 is log p(x); α → 1, the ELBO.
    """
    post_mean, post_cov = exact_posterior(x, params)
    P = post_cov.shape[-1]
    q_cov = q_cov.expand(x.shape[0], P, P)
    q_prec, p_prec = torch.linalg.inv(q_cov), torch.linalg.inv(post_cov)
    prec = alpha * q_prec + (1 - alpha) * p_prec  # (B, P, P)
    h = alpha * (q_prec @ q_mean.unsqueeze(-1)) + (1 - alpha) * (p_prec @ post_mean.unsqueeze(-1))

    def quadratic(m, M):  # mᵀ M m, (B,)
        return (m.unsqueeze(-2) @ M @ m.unsqueeze(-1)).squeeze(-1).squeeze(-1)

    log_2pi = math.log(2 * math.pi)
    log_integral = (
        -0.5 * alpha * (quadratic(q_mean, q_prec) + torch.logdet(q_cov) + P * log_2pi)
        - 0.5 * (1 - alpha) * (quadratic(post_mean, p_prec) + torch.logdet(post_cov)
                               + P * log_2pi)
        + 0.5 * (h.transpose(-1, -2) @ torch.linalg.solve(prec, h)).squeeze(-1).squeeze(-1)
        + 0.5 * P * log_2pi - 0.5 * torch.logdet(prec)
    )
    return log_marginal(x, params) + log_integral / (1 - alpha)


def kl_to_posterior(x, q_mean, q_cov, params) -> torch.Tensor:
    """KL(q(z|x) ‖ p(z|x)) per datapoint ``(B,)`` nats, from torch.distributions."""
    post_mean, post_cov = exact_posterior(x, params)
    q = MultivariateNormal(q_mean, covariance_matrix=q_cov.expand(x.shape[0],
                                                                  *q_cov.shape[-2:]))
    return kl_divergence(q, MultivariateNormal(post_mean, covariance_matrix=post_cov))


def sample_model(params, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw ``n`` datapoints ``(n, D)`` from the model, top down."""
    layers, n = _layers(params), checks.integer("n", n)
    dtype = layers[0].W.dtype
    z = torch.randn(n, layers[-1].W.shape[1], generator=generator, dtype=dtype)
    for W, mu, sigma in reversed(layers):
        z = z @ W.T + mu + sigma * torch.randn(n, W.shape[0], generator=generator, dtype=dtype)
    return z


def max_likelihood(X: torch.Tensor, latent_dim: int) -> LayerParams:
    """Maximum-likelihood pPCA (Tipping & Bishop 1999, eqs. 7-8): μ = mean, σ² = mean of the
    D − L smallest eigenvalues of the sample covariance, W = U_L (Λ_L − σ² I)^½."""
    N, D = checks.tensor("X", X, shape=(None, None)).shape
    if not 0 < latent_dim < D:
        raise ConfigError(f"latent_dim must be in 1..{D - 1}, got {latent_dim}")
    mu = X.mean(0)
    S = (X - mu).T @ (X - mu) / N
    eigvals, eigvecs = torch.linalg.eigh(S)  # ascending
    eigvals, eigvecs = eigvals.flip(0), eigvecs.flip(1)
    sigma2 = eigvals[latent_dim:].mean()
    W = eigvecs[:, :latent_dim] * (eigvals[:latent_dim] - sigma2).clamp_min(0).sqrt()
    return LayerParams(W, mu, sigma2.sqrt())


def guide_joint(vae: VAE, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ``(B, Σd)`` and covariance ``(Σd, Σd)`` of the guide's q(z_1, ..., z_L|x), for
    :class:`LinearGaussian` encoders without flows."""
    checks.instance("vae", vae, VAE)
    steps = [(e.A.detach(), e.c.detach(), e.log_scale.detach().exp()) for e in vae.encoders]
    mean, T = _gaussian_chain(x, steps)
    return mean, T @ T.T


@torch.no_grad()
def set_to_posterior(vae: VAE, params) -> None:
    """Set each :class:`LinearGaussian` layer of the guide to the exact conditional's mean map
    and marginal standard deviations: q(z_1|x) to p(z_1|x), q(z_l|z_(l-1)) to
    p(z_l|z_(l-1), x) = p(z_l|z_(l-1)). The guide is then the exact posterior wherever those
    conditionals have diagonal covariances (in pPCA, when Wᵀ W is diagonal)."""
    layers = _layers(params)
    dims = [p.W.shape[1] for p in layers]
    starts = [sum(dims[:i]) for i in range(len(dims))]
    blocks = [slice(s, s + d) for s, d in zip(starts, dims, strict=True)]
    D, dtype = layers[0].W.shape[0], layers[0].W.dtype
    offset, post_cov = exact_posterior(torch.zeros(1, D, dtype=dtype), layers)
    slopes = exact_posterior(torch.eye(D, dtype=dtype), layers)[0] - offset  # (D, Σd)
    first = vae.encoders[0]
    first.A.copy_(slopes[:, blocks[0]].T)
    first.c.copy_(offset[0, blocks[0]])
    first.log_scale.copy_(0.5 * torch.diagonal(post_cov[blocks[0], blocks[0]]).log())
    prior_mean, prior_cov = prior_joint(layers)
    for i in range(1, len(dims)):
        below, here = blocks[i - 1], blocks[i]
        A = torch.linalg.solve(prior_cov[below, below], prior_cov[below, here]).T
        cond_cov = prior_cov[here, here] - A @ prior_cov[below, here]
        vae.encoders[i].A.copy_(A)
        vae.encoders[i].c.copy_(prior_mean[here] - A @ prior_mean[below])
        vae.encoders[i].log_scale.copy_(0.5 * torch.diagonal(cond_cov).log())

