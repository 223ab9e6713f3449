"""pyro_vae.evaluation.gaps: the inference gap of the linear-Gaussian model, where it is known
exactly. The posterior is N(m(x), Λ⁻¹) with Λ = (Wᵀ W + σ² I)/σ²; the best diagonal Gaussian
has mean m(x) and variances 1/Λ_dd, and its KL to the posterior, the approximation gap, is
½ (Σ_d log Λ_dd − log det Λ); the amortization gap is KL(q_φ ‖ p(z|x)) minus that."""

import pytest
import torch

from pyro_vae import ConfigError
from pyro_vae.evaluation import Execution, Program
from pyro_vae.evaluation.ais import AISSettings, ais
from pyro_vae.evaluation.gaps import GapSettings, fit_diagonal_gaussian, inference_gaps
from pyro_vae.evaluation.targets import LayeredTarget
from pyro_vae.models.linear_gaussian import (
    PPCAParams,
    closed_form_elbo,
    exact_posterior,
    linear_gaussian_vae,
    log_marginal,
    sample_model,
    set_to_posterior,
)
from tests.conftest import assert_close
from tests.known_models import F64, TwoLayer, posterior_precision


def correlated_ppca() -> PPCAParams:
    """Nearly parallel columns of W: a strongly correlated posterior, so that the best
    diagonal Gaussian is far from it (an approximation gap of about half a nat)."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(8, 1, generator=g, dtype=F64)
    W = torch.cat([w, w + 0.3 * torch.randn(8, 1, generator=g, dtype=F64),
                   torch.randn(8, 1, generator=g, dtype=F64)], 1)
    return PPCAParams(W, torch.randn(8, generator=g, dtype=F64), torch.tensor(0.5, dtype=F64))


@pytest.fixture(scope="module")
def problem():
    params = correlated_ppca()
    vae = linear_gaussian_vae(params, learn_model=False)
    set_to_posterior(vae, params)  # exact mean, marginal variances: not the best q
    x = sample_model(params, 16, torch.Generator().manual_seed(1))
    return params, vae, x


def test_the_fitted_gaussian_is_the_best_diagonal_one(problem):
    params, vae, x = problem
    loc, log_scale = fit_diagonal_gaussian(LayeredTarget(vae).bind(x), GapSettings(num_steps=800))
    post_loc, _ = exact_posterior(x, params)
    assert_close(loc, post_loc, rtol=0, atol=0.03)
    assert_close((2 * log_scale).exp(), 1 / posterior_precision(params).diagonal(), rtol=0.06)


def test_measured_gaps_match_their_closed_forms_and_add_up(problem):
    params, vae, x = problem
    Lam = posterior_precision(params)
    approximation = 0.5 * (Lam.diagonal().log().sum() - torch.logdet(Lam))  # per datapoint
    with torch.no_grad():
        loc, scale = vae.encode(x)
        encoder_elbo = closed_form_elbo(x, loc, torch.diag_embed(scale**2), params)
    truth = log_marginal(x, params)
    assert float(approximation) > 0.3  # a gap worth measuring
    log_px = ais(vae, x, AISSettings(num_steps=300), execution=Execution(seed=1))
    gaps = inference_gaps(vae, x, log_px.log_px, GapSettings(num_steps=500, eval_samples=20000),
                          log_px_mc_stderr=log_px.log_px_mc_stderr, execution=Execution(seed=2))
    se = gaps.mean_mc_stderrs
    assert gaps.means["approximation"] == pytest.approx(float(approximation),
                                                        abs=3 * se["approximation"] + 0.02)
    exact_amortization = float((truth - encoder_elbo).mean() - approximation)
    assert gaps.means["amortization"] == pytest.approx(exact_amortization,
                                                       abs=3 * se["amortization"] + 0.02)
    # the two gaps add up to log p(x) − ELBO, datapoint by datapoint
    assert_close(gaps.amortization + gaps.approximation, gaps.log_px - gaps.encoder_elbo,
                 rtol=1e-12, atol=1e-12)
    assert gaps.means["total"] == pytest.approx(float((truth - encoder_elbo).mean()),
                                                abs=3 * (se["log_px"] + se["encoder_elbo"]))
    assert_close(gaps.encoder_elbo, encoder_elbo, rtol=0,
                 atol=5 * float(gaps.encoder_elbo_mc_stderr.max()))


def test_gaps_of_a_pyro_program_with_two_latent_sites():
    model = TwoLayer.random(seed=3)
    n = model.A.shape[0] + model.A.shape[1]
    x = model.mu + torch.randn(6, model.mu.shape[0], dtype=F64) @ torch.linalg.cholesky(
        model.joint_cov()[n:, n:]).T
    truth = model.log_marginal(x)
    gaps = inference_gaps(Program(model.model, model.guide), x, truth,
                          GapSettings(num_steps=300, eval_samples=4000),
                          execution=Execution(seed=1))
    se = gaps.mean_mc_stderrs
    # the fitted diagonal Gaussian is at least as good as the guide's own diagonal
    # conditionals, up to noise, and neither gap is negative beyond noise
    assert gaps.means["amortization"] > -3 * se["amortization"]
    assert gaps.means["approximation"] > -3 * se["approximation"]
    assert_close(gaps.amortization + gaps.approximation, truth - gaps.encoder_elbo,
                 rtol=1e-12, atol=1e-12)


def test_bad_arguments_are_refused(problem):
    _, vae, x = problem
    with pytest.raises(ConfigError, match="log_px has 3 values for 16 datapoints"):
        inference_gaps(vae, x, torch.zeros(3))
    with pytest.raises(ConfigError, match="num_steps"):
        inference_gaps(vae, x, torch.zeros(16), GapSettings(num_steps=0))
    with pytest.raises(ConfigError, match="start"):
        inference_gaps(vae, x, torch.zeros(16), GapSettings(start="posterior"))


def test_samples_beyond_the_memory_are_refused_before_anything_runs(problem, monkeypatch):
    _, vae, x = problem
    monkeypatch.setenv("PYRO_VAE_MEMORY_LIMIT_MB", "1")
    with pytest.raises(ConfigError, match=r"gap num_samples 1000000000 .*lower gap num_samples"):
        inference_gaps(vae, x, torch.zeros(16), GapSettings(num_samples=10**9))
