"""The linear-Gaussian (pPCA) ground truth: the ELBO identity in closed form, the Rényi bound in
closed form, every registry estimator against the closed-form ELBO (and the multi-sample
bounds against log p(x) and VR_α), the importance-weighted estimate against the exact log p(x),
and SVI against the closed-form maximum likelihood."""

import math

import pyro
import pytest
import torch
from torch.distributions import MultivariateNormal, Normal

from pyro_vae import ESTIMATORS, make_objective
from pyro_vae.evaluation import estimate_log_px
from pyro_vae.models.linear_gaussian import (
    PPCAParams,
    closed_form_elbo,
    closed_form_renyi_bound,
    exact_posterior,
    kl_to_posterior,
    linear_gaussian_vae,
    log_marginal,
    max_likelihood,
    sample_model,
)
from pyro_vae.objectives import Bound
from pyro_vae.trainer import Trainer
from tests.conftest import assert_close

D, L = 6, 2
F64 = torch.float64



def ppca(D=D, L=L, sigma=0.5, seed=0) -> PPCAParams:
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(D, L, generator=g, dtype=F64)
    mu = torch.randn(D, generator=g, dtype=F64)
    return PPCAParams(W, mu, torch.tensor(sigma, dtype=F64))


def random_gaussian(n, L, seed):
    """n arbitrary Gaussians over R^L: means (n, L) and full covariances (n, L, L)."""
    g = torch.Generator().manual_seed(seed)
    loc = 2 * torch.randn(n, L, generator=g, dtype=F64)
    B = torch.randn(n, L, L, generator=g, dtype=F64)
    return loc, B @ B.transpose(-1, -2) + 0.1 * torch.eye(L, dtype=F64)


def off_posterior_vae(params, *, shrink=0.85, widen=0.2):
    """The linear-Gaussian VAE with an encoder near, but not at, the exact posterior: the mean
    map shrunk and the scales widened, so the ELBO is not tight."""
    vae = linear_gaussian_vae(params, learn_model=False)
    vae.encoder.set_to_posterior(params)
    with torch.no_grad():
        vae.encoder.A.mul_(shrink)
        vae.encoder.b.add_(0.1)
        vae.encoder.log_scale.add_(widen)
    return vae


def encoder_q(vae, x):
    loc, scale = vae.encode(x)
    return loc.detach(), torch.diag_embed(scale.detach().pow(2))


# --- the identity, in closed form -------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_elbo_plus_kl_to_posterior_is_log_px_for_any_gaussian_q(seed):
    params = ppca(seed=seed)
    x = sample_model(params, 8, torch.Generator().manual_seed(seed))
    q_loc, q_cov = random_gaussian(8, L, seed + 10)
    elbo = closed_form_elbo(x, q_loc, q_cov, params)
    kl = kl_to_posterior(x, q_loc, q_cov, params)
    log_px = log_marginal(x, params)
    assert_close(elbo + kl, log_px, rtol=0, atol=1e-5)
    assert (kl > 0).all() and (elbo < log_px).all()


def test_elbo_is_tight_at_the_exact_posterior():
    params = ppca()
    x = sample_model(params, 8, torch.Generator().manual_seed(3))
    post_loc, post_cov = exact_posterior(x, params)
    assert_close(closed_form_elbo(x, post_loc, post_cov, params), log_marginal(x, params),
                 rtol=0, atol=1e-10)
    assert_close(kl_to_posterior(x, post_loc, post_cov, params), 0.0, rtol=0, atol=1e-10)


def test_exact_posterior_is_bayes_rule():
    """p(z|x) ∝ p(z) p(x|z), checked pointwise: log p(z) + log p(x|z) − log p(z|x) = log p(x)
    at arbitrary z."""
    params = ppca()
    W, mu, sigma = params
    x = sample_model(params, 4, torch.Generator().manual_seed(4))
    z = torch.randn(5, 4, L, dtype=F64)
    post_loc, post_cov = exact_posterior(x, params)
    log_joint = (Normal(0.0, 1.0).log_prob(z).sum(-1)
                 + Normal(z @ W.T + mu, sigma).log_prob(x).sum(-1))
    log_post = MultivariateNormal(post_loc, post_cov).log_prob(z)
    assert_close(log_joint - log_post, log_marginal(x, params).expand(5, 4), rtol=0, atol=1e-9)


def test_set_to_posterior_is_exact_with_orthogonal_columns():
    W = torch.linalg.qr(torch.randn(D, L, dtype=F64))[0] * torch.tensor([2.0, 0.7], dtype=F64)
    params = PPCAParams(W, torch.zeros(D, dtype=F64), torch.tensor(0.3, dtype=F64))
    vae = linear_gaussian_vae(params)
    vae.encoder.set_to_posterior(params)
    x = sample_model(params, 5)
    q_loc, q_cov = encoder_q(vae, x)
    post_loc, post_cov = exact_posterior(x, params)
    assert_close(q_loc, post_loc, rtol=0, atol=1e-10)
    assert_close(q_cov, post_cov.expand_as(q_cov), rtol=0, atol=1e-10)


# --- every estimator against the closed form ----------------------------------------------------


def monte_carlo_elbo(name, vae, x, *, num_particles, replicas=200, repeats=25, **options):
    """Mean and standard error of −loss per datapoint: ``x`` replicated ``replicas`` times in
    one batch, the loss evaluated ``repeats`` times."""
    objective = make_objective(name, vae, num_particles=num_particles, **options)
    batch = x.repeat(replicas, 1)
    values = torch.tensor([-objective.loss(batch) / batch.shape[0] for _ in range(repeats)],
                          dtype=F64)
    return float(values.mean()), float(values.std() / math.sqrt(repeats))


# The options with which one particle makes each kind of bound the ELBO: log w for IWAE_1,
# VR_α,1 = (1 − α) log w / (1 − α), MIWAE(M, 1) (the mean of M log-weights), CIWAE at K = 1;
# PIWAE's IWAE_MK needs M = 1 too.
ELBO_AT_ONE_PARTICLE = {Bound.ELBO: {}, Bound.IWAE_K: {}, Bound.VR_K: {}, Bound.MIWAE: {},
                        Bound.CIWAE: {}, Bound.IWAE_MK: {"num_estimates": 1}}


@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_every_estimator_matches_the_closed_form_elbo(name):
    """With one particle every registry estimator's −loss is an unbiased estimate of the ELBO
    (rws needs two); the multi-sample bounds with more particles lie above it and below
    log p(x), and VR_α,K below the closed-form VR_α too."""
    params = ppca()
    vae = off_posterior_vae(params)
    x = sample_model(params, 4, torch.Generator().manual_seed(5))
    elbo = float(closed_form_elbo(x, *encoder_q(vae, x), params).mean())
    log_px = float(log_marginal(x, params).mean())
    assert log_px - elbo > 0.3  # the ELBO is not tight here, so the checks can tell them apart

    estimator = ESTIMATORS[name]
    bound = estimator.bound
    assert bound in ELBO_AT_ONE_PARTICLE, f"add a closed-form check for bound {bound!r}"
    if estimator.min_particles == 1:
        mean, se = monte_carlo_elbo(name, vae, x, num_particles=1, **ELBO_AT_ONE_PARTICLE[bound])
        assert abs(mean - elbo) < 4 * se, (name, mean, elbo, se)
    if bound is not Bound.ELBO:
        _, options = estimator.resolve()
        upper = log_px
        if bound is Bound.VR_K:
            upper = float(closed_form_renyi_bound(x, *encoder_q(vae, x), params,
                                                  options["alpha"]).mean())
            assert elbo < upper < log_px
        mean_k, se_k = monte_carlo_elbo(name, vae, x, num_particles=10, repeats=10)
        assert elbo + 4 * se_k < mean_k < upper + 4 * se_k, (name, elbo, mean_k, upper)


def posterior_vae(seed=0):
    """pPCA with orthogonal columns of W, and the VAE with its encoder at the exact posterior
    (mean-field there): every importance weight p(x, z)/q(z|x) is p(x)."""
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(D, L, generator=g, dtype=F64))
    params = PPCAParams((Q * torch.tensor([2.0, 0.7], dtype=F64)).contiguous(),
                        torch.randn(D, generator=g, dtype=F64), torch.tensor(0.5, dtype=F64))
    vae = linear_gaussian_vae(params, learn_model=False)
    vae.encoder.set_to_posterior(params)
    return params, vae


@pytest.mark.parametrize("name", [n for n, e in ESTIMATORS.items() if e.bound is not Bound.ELBO])
def test_every_multi_sample_bound_is_log_px_at_the_exact_posterior(name):
    """q(z|x) = p(z|x): every log-weight is log p(x), so every bound of them (IWAE_K, VR_α,
    MIWAE, CIWAE, IWAE_MK) is log p(x) for every sample, exactly."""
    params, vae = posterior_vae()
    x = sample_model(params, 6, torch.Generator().manual_seed(1))
    objective = make_objective(name, vae, num_particles=4)
    for seed in range(3):
        pyro.set_rng_seed(seed)
        assert_close(-objective.loss(x), log_marginal(x, params).sum(), rtol=1e-12, atol=1e-9)


# --- the Rényi bound in closed form --------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1])
def test_renyi_bound_lies_between_the_elbo_and_log_px_and_falls_with_alpha(seed):
    """D_α(q ‖ p) ≥ 0 rises with α (Li & Turner 2016, van Erven & Harremoës 2014): VR_α falls
    from log p(x) (α = 0) to the ELBO (α → 1), where VR_α − ELBO shrinks in proportion to
    1 − α (its derivative, Var_q[log w] / 2); tight at the exact posterior."""
    params = ppca(seed=seed)
    x = sample_model(params, 8, torch.Generator().manual_seed(seed))
    q = random_gaussian(8, L, seed + 10)
    alphas = [0.0, 0.1, 0.5, 0.9, 1 - 1e-6, 1 - 1e-7]
    bounds = torch.stack([closed_form_renyi_bound(x, *q, params, a) for a in alphas])
    elbo = closed_form_elbo(x, *q, params)
    assert (bounds[:-1] > bounds[1:]).all() and (bounds[-1] > elbo).all()
    assert_close(bounds[0], log_marginal(x, params), rtol=0, atol=1e-9)
    assert_close(bounds[-2] - elbo, 10 * (bounds[-1] - elbo), rtol=1e-2, atol=0)
    post = exact_posterior(x, params)
    assert_close(closed_form_renyi_bound(x, *post, params, 0.5), log_marginal(x, params),
                 rtol=0, atol=1e-9)


def test_renyi_bound_is_the_monte_carlo_mean_of_its_weights():
    """The closed form against its definition: 1/(1 − α) log of the sample mean of w^(1−α)
    over 200,000 draws of z ~ q, within 4 standard errors (delta method)."""
    params = ppca()
    x = sample_model(params, 3, torch.Generator().manual_seed(7))
    q_loc, q_cov = random_gaussian(3, L, 17)
    alpha, n = 0.4, 200_000
    g = torch.Generator().manual_seed(8)
    chol = torch.linalg.cholesky(q_cov)
    z = q_loc + (chol @ torch.randn(3, L, n, generator=g, dtype=F64)).permute(2, 0, 1)
    W, mu, sigma = params
    log_w = (Normal(0.0, 1.0).log_prob(z).sum(-1) + Normal(z @ W.T + mu, sigma).log_prob(x)
             .sum(-1) - MultivariateNormal(q_loc, q_cov).log_prob(z))  # (n, 3)
    scaled = ((1 - alpha) * (log_w - log_w.max(0).values)).exp()
    estimate = (scaled.mean(0).log() / (1 - alpha)) + log_w.max(0).values
    se = scaled.std(0) / scaled.mean(0) / math.sqrt(n) / (1 - alpha)
    exact = closed_form_renyi_bound(x, q_loc, q_cov, params, alpha)
    assert ((estimate - exact).abs() < 4 * se).all(), (estimate, exact, se)


# --- the importance-weighted estimate against the exact log p(x) -----------------------------


def test_importance_weighted_estimate_converges_to_exact_log_px():
    """IWAE_K rises with K (Burda et al. 2016, theorem 1) and reaches log p(x): at K = 1 it is
    the ELBO, at K = 1000 within 3 Monte Carlo standard errors of the exact value."""
    params = ppca()
    vae = off_posterior_vae(params)
    x = sample_model(params, 2000, torch.Generator().manual_seed(6))
    exact = float(log_marginal(x, params).mean())
    elbo = float(closed_form_elbo(x, *encoder_q(vae, x), params).mean())
    estimates = {
        K: estimate_log_px(vae, x, num_samples=K, seed=K)
        for K in (1, 10, 100, 1000)
    }
    means = [e.mean for e in estimates.values()]
    assert means == sorted(means), means
    assert abs(estimates[1].mean - elbo) < 4 * float(estimates[1].log_px.std()) / math.sqrt(2000)
    assert all(m < exact for m in means[:-1])
    top = estimates[1000]
    assert abs(top.mean - exact) < 3 * top.mean_mc_stderr, (top.mean, exact, top.mean_mc_stderr)
    assert exact - top.mean < 0.1 * (exact - elbo)


# --- SVI against the maximum likelihood --------------------------------------------------------


def test_svi_meanfield_reaches_the_maximum_likelihood():
    """Training the model and the amortized mean-field encoder with MeanField_ELBO on
    pPCA data reaches the closed-form maximum of the log-likelihood (Tipping & Bishop 1999):
    the linear VAE's ELBO is tight at the optimum, where Wᵀ W is diagonal."""
    torch.manual_seed(0)
    D_, L_, N = 5, 2, 500
    truth = ppca(D_, L_, sigma=0.3, seed=7)
    X = sample_model(truth, N, torch.Generator().manual_seed(8))
    best = float(log_marginal(X, max_likelihood(X, L_)).mean())

    start = ppca(D_, L_, sigma=1.0, seed=9)
    vae = linear_gaussian_vae(start, learn_model=True)
    initial = float(log_marginal(X, start).mean())
    assert abs(initial - best) > 0.1 * abs(best)  # far from the optimum at the start

    trainer = Trainer(make_objective("meanfield", vae), lr=0.05)
    for _ in range(300):
        trainer.step(X)
    learned = PPCAParams(vae.decoder.W.detach(), vae.decoder.mu.detach(),
                         vae.likelihood.log_scale.detach().exp().squeeze())
    reached = float(log_marginal(X, learned).mean())
    assert reached <= best + 1e-6  # the closed form is the maximum
    assert abs(reached - best) < 0.01 * abs(best), (reached, best)
    elbo = float(closed_form_elbo(X, *encoder_q(vae, X), learned).mean())
    assert elbo <= reached and abs(elbo - best) < 0.01 * abs(best), (elbo, best)
