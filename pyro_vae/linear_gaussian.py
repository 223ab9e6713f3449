"""The linear-Gaussian VAE (probabilistic PCA), where every quantity is known exactly.

    p(z) = N(0, I_L),  p(x|z) = N(W z + μ, σ² I_D)   ⇒   p(x) = N(μ, W Wᵀ + σ² I_D),
    p(z|x) = N(M⁻¹ Wᵀ (x − μ), σ² M⁻¹),  M = Wᵀ W + σ² I_L   (Tipping & Bishop 1999).

:func:`linear_gaussian_vae` writes it as a :class:`pyro_vae.VAE` (a linear decoder, a linear
amortized encoder with a diagonal scale, a Gaussian likelihood), so every estimator in the
registry runs on it unchanged; the functions below give the closed forms to check them
against. All log-densities are in nats per datapoint; use float64 for 1e-5 identities.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn
from torch.distributions import MultivariateNormal, kl_divergence

from pyro_vae.likelihoods import Gaussian
from pyro_vae.model import VAE

__all__ = [
    "LinearDecoder",
    "LinearEncoder",
    "PPCAParams",
    "closed_form_elbo",
    "closed_form_renyi_bound",
    "exact_posterior",
    "kl_to_posterior",
    "linear_gaussian_vae",
    "log_marginal",
    "max_likelihood",
    "sample_ppca",
]


class PPCAParams(NamedTuple):
    W: torch.Tensor  # (D, L)
    mu: torch.Tensor  # (D,)
    sigma: torch.Tensor  # scalar: the observation noise standard deviation


class LinearDecoder(nn.Module):
    """z ↦ W z + μ; W and μ are parameters, or buffers when not ``trainable`` (so that
    :func:`pyro.module` has nothing frozen to warn about)."""

    def __init__(self, W: torch.Tensor, mu: torch.Tensor, *, trainable: bool = True):
        super().__init__()
        # contiguous copies: pyro.module would register a contiguous copy of a strided W
        # (e.g. from torch.linalg.qr), which SVI would then step instead of this one
        if trainable:
            self.W = nn.Parameter(W.clone().contiguous())
            self.mu = nn.Parameter(mu.clone().contiguous())
        else:
            self.register_buffer("W", W.clone().contiguous())
            self.register_buffer("mu", mu.clone().contiguous())

    def forward(self, z, context=None):
        return z @ self.W.T + self.mu


class LinearEncoder(nn.Module):
    """q(z|x) = N(A x + b, diag(exp(2·log_scale))): amortized, mean-field."""

    def __init__(self, x_dim: int, latent_dim: int, dtype=torch.float32):
        super().__init__()
        self.A = nn.Parameter(torch.zeros(latent_dim, x_dim, dtype=dtype))
        self.b = nn.Parameter(torch.zeros(latent_dim, dtype=dtype))
        self.log_scale = nn.Parameter(torch.zeros(latent_dim, dtype=dtype))

    def forward(self, x, context=None):
        loc = x @ self.A.T + self.b
        return loc, self.log_scale.exp().expand(loc.shape)

    @torch.no_grad()
    def set_to_posterior(self, params: PPCAParams) -> None:
        """Set A, b and the scale to the exact posterior's mean map and marginal std devs
        (the exact posterior when Wᵀ W is diagonal)."""
        W, mu, sigma = params
        M = W.T @ W + sigma**2 * torch.eye(W.shape[1], dtype=W.dtype)
        A = torch.linalg.solve(M, W.T)
        self.A.copy_(A)
        self.b.copy_(-A @ mu)
        self.log_scale.copy_(0.5 * torch.log(sigma**2 * torch.diagonal(torch.linalg.inv(M))))


def linear_gaussian_vae(params: PPCAParams, *, learn_model: bool = True, prefix: str = "") -> VAE:
    """A :class:`VAE` whose model is pPCA with ``params`` and whose guide is a
    :class:`LinearEncoder` (initialised at zero: q(z|x) = N(0, I)). With ``learn_model`` the
    decoder's W, μ and the noise scale σ are trained too."""
    W, mu, sigma = params
    D, L = W.shape
    likelihood = Gaussian(float(sigma), learn_scale=learn_model, x_dim=1)
    vae = VAE(
        D,
        latent_dim=L,
        encoder=LinearEncoder(D, L, dtype=W.dtype),
        decoder=LinearDecoder(W, mu, trainable=learn_model),
        likelihood=likelihood,
        prefix=prefix,
    ).to(W.dtype)
    with torch.no_grad():  # log σ in W's precision (Gaussian() builds it in float32)
        vae.likelihood.log_scale.fill_(float(torch.as_tensor(sigma, dtype=torch.float64).log()))
    return vae


def _marginal(params: PPCAParams) -> MultivariateNormal:
    W, mu, sigma = params
    cov = W @ W.T + sigma**2 * torch.eye(W.shape[0], dtype=W.dtype)
    return MultivariateNormal(mu, covariance_matrix=cov)


def log_marginal(x: torch.Tensor, params: PPCAParams) -> torch.Tensor:
    """log p(x) = log N(x; μ, W Wᵀ + σ² I), per datapoint: ``(B,)`` nats."""
    return _marginal(params).log_prob(x)


def exact_posterior(x: torch.Tensor, params: PPCAParams):
    """p(z|x) = N(M⁻¹ Wᵀ (x − μ), σ² M⁻¹): returns ``loc (B, L)`` and ``cov (L, L)``."""
    W, mu, sigma = params
    M = W.T @ W + sigma**2 * torch.eye(W.shape[1], dtype=W.dtype)
    loc = torch.linalg.solve(M, W.T @ (x - mu).T).T
    return loc, sigma**2 * torch.linalg.inv(M)


def closed_form_elbo(x, q_loc, q_cov, params: PPCAParams) -> torch.Tensor:
    """ELBO of q(z|x) = N(q_loc, q_cov) in closed form, per datapoint ``(B,)`` nats:

    E_q[log p(x|z)] = −D/2 log(2πσ²) − (‖x − μ − W m‖² + tr(Wᵀ W S)) / (2σ²),
    KL(q ‖ p(z))    = ½ (tr S + mᵀ m − L − log det S).
    """
    W, mu, sigma = params
    D, L = W.shape
    q_cov = q_cov.expand(x.shape[0], L, L)
    resid = x - mu - q_loc @ W.T
    trace_term = torch.einsum("ij,bji->b", W.T @ W, q_cov)
    expected_loglik = -0.5 * D * math.log(2 * math.pi) - D * torch.log(sigma) - (
        resid.pow(2).sum(-1) + trace_term
    ) / (2 * sigma**2)
    kl = 0.5 * (
        torch.diagonal(q_cov, dim1=-2, dim2=-1).sum(-1)
        + q_loc.pow(2).sum(-1)
        - L
        - torch.logdet(q_cov)
    )
    return expected_loglik - kl


def closed_form_renyi_bound(x, q_loc, q_cov, params: PPCAParams, alpha: float) -> torch.Tensor:
    """The Rényi bound of order α of q(z|x) = N(q_loc, q_cov) (Li & Turner 2016), per
    datapoint ``(B,)`` nats:

    VR_α = 1/(1 − α) log E_q[(p(x, z)/q(z|x))^(1−α)] = log p(x) − D_α(q(z|x) ‖ p(z|x)),
    D_α(q ‖ p) = −1/(1 − α) log ∫ q^α p^(1−α) dz,

    the integral of two powered Gaussians in closed form (precision P = α S_q⁻¹ + (1 − α) S_p⁻¹,
    positive definite for α in [0, 1)). ELBO ≤ VR_α ≤ log p(x) for α in (0, 1); the limit
    α → 1 is the ELBO, α = 0 is log p(x).
    """
    post_loc, post_cov = exact_posterior(x, params)
    L = post_cov.shape[-1]
    q_cov = q_cov.expand(x.shape[0], L, L)
    q_prec, p_prec = torch.linalg.inv(q_cov), torch.linalg.inv(post_cov)
    prec = alpha * q_prec + (1 - alpha) * p_prec  # (B, L, L)
    h = alpha * (q_prec @ q_loc.unsqueeze(-1)) + (1 - alpha) * (p_prec @ post_loc.unsqueeze(-1))

    def quadratic(m, P):  # mᵀ P m, (B,)
        return (m.unsqueeze(-2) @ P @ m.unsqueeze(-1)).squeeze(-1).squeeze(-1)

    log_2pi = math.log(2 * math.pi)
    log_integral = (
        -0.5 * alpha * (quadratic(q_loc, q_prec) + torch.logdet(q_cov) + L * log_2pi)
        - 0.5 * (1 - alpha) * (quadratic(post_loc, p_prec) + torch.logdet(post_cov) + L * log_2pi)
        + 0.5 * (h.transpose(-1, -2) @ torch.linalg.solve(prec, h)).squeeze(-1).squeeze(-1)
        + 0.5 * L * log_2pi - 0.5 * torch.logdet(prec)
    )
    return log_marginal(x, params) + log_integral / (1 - alpha)


def kl_to_posterior(x, q_loc, q_cov, params: PPCAParams) -> torch.Tensor:
    """KL(q(z|x) ‖ p(z|x)) per datapoint ``(B,)`` nats, from torch.distributions."""
    post_loc, post_cov = exact_posterior(x, params)
    q = MultivariateNormal(q_loc, covariance_matrix=q_cov.expand(x.shape[0], *q_cov.shape[-2:]))
    p = MultivariateNormal(post_loc, covariance_matrix=post_cov)
    return kl_divergence(q, p)


def max_likelihood(X: torch.Tensor, latent_dim: int) -> PPCAParams:
    """Maximum-likelihood pPCA (Tipping & Bishop 1999, eqs. 7-8): μ = mean, σ² = mean of the
    D − L smallest eigenvalues of the sample covariance, W = U_L (Λ_L − σ² I)^½."""
    N, D = X.shape
    if not 0 < latent_dim < D:
        raise ValueError(f"latent_dim must be in 1..{D - 1}, got {latent_dim}")
    mu = X.mean(0)
    S = (X - mu).T @ (X - mu) / N
    eigvals, eigvecs = torch.linalg.eigh(S)  # ascending
    eigvals, eigvecs = eigvals.flip(0), eigvecs.flip(1)
    sigma2 = eigvals[latent_dim:].mean()
    W = eigvecs[:, :latent_dim] * (eigvals[:latent_dim] - sigma2).clamp_min(0).sqrt()
    return PPCAParams(W, mu, sigma2.sqrt())


def sample_ppca(params: PPCAParams, n: int, generator: torch.Generator | None = None):
    """Draw ``n`` datapoints ``(n, D)`` from the pPCA model."""
    W, mu, sigma = params
    z = torch.randn(n, W.shape[1], generator=generator, dtype=W.dtype)
    noise = torch.randn(n, W.shape[0], generator=generator, dtype=W.dtype)
    return z @ W.T + mu + sigma * noise
