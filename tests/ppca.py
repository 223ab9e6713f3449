"""The linear-Gaussian VAE shared by the tests of the multi-sample estimators
(test_multisample, test_renyi, test_rws): pPCA in float64 with the model learned (θ: W, μ, σ)
and the encoder off the posterior (φ), and its log-weights written by hand from the
definitions, on the same draws as Pyro's guide."""

import math

import pyro
import torch
from torch.distributions import Normal

from pyro_vae.models.linear_gaussian import (
    PPCAParams,
    linear_gaussian_vae,
    sample_model,
    set_to_posterior,
)

D, L, B = 5, 2, 6
F64 = torch.float64


def ppca_vae(seed=0, dtype=F64, sigma=0.7, encoder_noise=0.4):
    """(params, vae, x): pPCA with the model learned and the encoder moved off the posterior
    by Gaussian noise of size ``encoder_noise`` on each parameter; ``x`` B datapoints."""
    g = torch.Generator().manual_seed(seed)
    params = PPCAParams(torch.randn(D, L, generator=g, dtype=F64).to(dtype),
                        torch.randn(D, generator=g, dtype=F64).to(dtype),
                        torch.tensor(sigma, dtype=dtype))
    vae = linear_gaussian_vae(params, learn_model=True)
    set_to_posterior(vae, params)
    with torch.no_grad():
        for p in vae.encoder.parameters():
            p.add_(encoder_noise * torch.randn(p.shape, generator=g, dtype=F64).to(dtype))
    return params, vae, sample_model(params, B, torch.Generator().manual_seed(seed + 1))


def hand_written_draws(vae, x, n, seed):
    """``n`` draws z ~ q(z|x) per datapoint, ``(n, B, L)``: the same as Pyro's guide from
    ``seed`` (one rsample of the expanded Normal); and q's mean and scale."""
    loc, scale = vae.encode(x)
    pyro.set_rng_seed(seed)
    return Normal(loc, scale).rsample((n,)), loc, scale


def hand_written_log_joint(vae, x, z):
    """log p(z) + log p(x|z) from the VAE's W, μ and σ: ``z.shape[:-1]``."""
    W, mu, sigma = vae.decoder.W, vae.decoder.mu, vae.likelihood.log_scale.exp()
    return Normal(0.0, 1.0).log_prob(z).sum(-1) + Normal(z @ W.T + mu, sigma).log_prob(x).sum(-1)


def hand_written_log_weights(vae, x, n, seed):
    """log p(x, z) − log q(z|x) of ``n`` draws per datapoint, ``(n, B)``."""
    z, loc, scale = hand_written_draws(vae, x, n, seed)
    return hand_written_log_joint(vae, x, z) - Normal(loc, scale).log_prob(z).sum(-1)


def iwae(log_w, dim=0):
    """log of the mean of the weights over ``dim``."""
    return torch.logsumexp(log_w, dim) - math.log(log_w.shape[dim])


def gradients(loss, vae) -> dict:
    """Every parameter's gradient of ``loss`` (zero where it does not reach), graph kept."""
    names, params = zip(*vae.named_parameters(), strict=True)
    grads = torch.autograd.grad(loss, params, allow_unused=True, retain_graph=True)
    return {n: torch.zeros_like(p) if g is None else g
            for n, p, g in zip(names, params, grads, strict=True)}


def is_guide(name):
    """Whether a parameter of the VAE belongs to the guide (φ)."""
    return name.startswith(("encoders", "flows"))
