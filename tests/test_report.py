"""pyro_vae.evaluation.report: the one report of every estimate of log p(x) (importance
sampling or AIS) against closed forms on the linear-Gaussian model (the ELBOs, the KL to the
prior, the gap), the active units, the Pareto k̂ warning and notes, and the BDMC and gaps
sections; every report JSON-ready."""

import json
import math
import warnings

import pytest
import torch

from pyro_vae import VAE, ConfigError
from pyro_vae.distributed import derive_seed
from pyro_vae.evaluation import (
    AISSettings,
    Execution,
    GapSettings,
    ReliabilityWarning,
    active_units,
    ais,
    bdmc,
    bdmc_section,
    elbo_per_datapoint,
    estimate_log_px,
    gaps_section,
    inference_gaps,
    mean_elbo,
    report,
)
from pyro_vae.models.linear_gaussian import (
    PPCAParams,
    closed_form_elbo,
    exact_posterior,
    kl_to_posterior,
    linear_gaussian_vae,
    log_marginal,
    sample_model,
)
from tests.conftest import assert_close
from tests.test_importance import F64, orthogonal_ppca, ppca_vae, seeded


def q_of(vae, x):
    loc, scale = vae.encode(x)
    return loc.detach(), torch.diag_embed(scale.detach().pow(2))


def is_report(vae, x, num_samples, *, seed=1, pareto_k=True, test_elbo=None):
    execution = Execution(seed=seed)
    estimate = estimate_log_px(vae, x, num_samples=num_samples, pareto_k=pareto_k,
                               execution=execution)
    return estimate, report(vae, x, estimate, execution=execution, test_elbo=test_elbo)


def test_active_units_recover_known_variances():
    """An encoder mean A x with x ~ N(0, I): Cov_x(E_q[z_d]) = ‖A_d‖², here 0.5, 0.05, 0.005
    and 0; with the 0.01 threshold two units are active."""
    D, L = 8, 4
    vae = linear_gaussian_vae(PPCAParams(torch.randn(D, L, dtype=F64), torch.zeros(D, dtype=F64),
                                         torch.tensor(1.0, dtype=F64)), learn_model=False)
    target = torch.tensor([0.5, 0.05, 0.005, 0.0], dtype=F64)
    directions = torch.linalg.qr(torch.randn(D, L, generator=seeded(0), dtype=F64))[0].T
    with torch.no_grad():
        vae.encoder.A.copy_(directions * target.sqrt()[:, None])
    x = torch.randn(20000, D, generator=seeded(1), dtype=F64)
    count, variances = active_units(vae, x, batch_size=3000)
    assert count == 2
    assert_close(variances, target, rtol=0.05, atol=1e-4)


class ContextMean(torch.nn.Module):
    """q(z|x, c) = N(c, I): the encoder's mean is the context alone."""

    def forward(self, x, context):
        return context, torch.ones_like(context)


def test_the_report_of_a_model_with_a_context_encodes_each_x_beside_its_own():
    """With q(z|x, c) = N(c, I), Cov_x(E_q[z_d]) is the variance of context column d and
    KL(q ‖ N(0, I)) per dimension is the mean of c_d² / 2; the context rows stay with their
    x across blocks. Given x alone, one line."""
    vae = VAE(6, latent_dim=3, hidden_sizes=(4,), context_dim=3, encoder=ContextMean())
    x = torch.randn(2500, 6, generator=seeded(0)).gt(0).float()
    c = torch.randn(2500, 3, generator=seeded(1)) * torch.tensor([2.0, 0.5, 0.05])
    estimate = estimate_log_px(vae, (x, c), num_samples=5)
    out = report(vae, (x, c), estimate)
    c = c.double()
    assert out["active_units"]["count"] == 2
    assert_close(torch.tensor(out["active_units"]["variances"], dtype=F64), c.var(0),
                 rtol=1e-6, atol=0)
    assert_close(torch.tensor(out["kl_to_prior"]["per_dimension"], dtype=F64),
                 c.pow(2).mean(0) / 2, rtol=1e-6, atol=0)
    with pytest.raises(ConfigError, match=r"^this model reads x and a context of 3 features"):
        report(vae, x, estimate)


def test_report_figures_against_closed_forms():
    """On pPCA with a non-posterior encoder: the ELBO on the K samples and the test ELBO (one
    sample per datapoint, the top layer's KL in closed form) match the closed-form ELBO, the
    per-dimension KL to the prior is exact, log p(x) is within its errors of the exact value,
    and the gap estimates the mean KL(q ‖ p(z|x))."""
    params = orthogonal_ppca()
    vae = ppca_vae(params, shrink=0.85, widen=0.2)
    x = sample_model(params, 300, seeded(0))
    test_elbo = mean_elbo(vae, x)
    estimate, out = is_report(vae, x, 2000, test_elbo=test_elbo)
    json.dumps(out, allow_nan=False)  # JSON-ready
    q_loc, q_cov = q_of(vae, x)
    closed_form = closed_form_elbo(x, q_loc, q_cov, params)
    elbo = float(closed_form.mean())
    exact = float(log_marginal(x, params).mean())
    r = out["elbo"]
    assert abs(r["mean"] - elbo) < 4 * r["mc_stderr"], (r, elbo)
    # the test ELBO: the runner's one block of 300 datapoints draws from derive_seed(0, 0)
    assert out["test_elbo"]["mean"] == test_elbo
    one_sample = elbo_per_datapoint(vae, x, generator=seeded(derive_seed(0, 0))).detach()
    assert_close(test_elbo, one_sample.mean(), rtol=1e-12, atol=1e-12)
    noise = one_sample - closed_form  # its Monte Carlo error, datapoint by datapoint
    assert abs(float(noise.mean())) < 4 * float(noise.std()) / math.sqrt(300)
    lp = out["log_px"]
    assert lp["mean"] == pytest.approx(estimate.mean) and lp["mc_stderr"] == pytest.approx(
        estimate.mean_mc_stderr)
    assert abs(lp["mean"] - exact) < 4 * lp["mc_stderr"] + abs(lp["estimated_bias"])
    kl_q_post = float(kl_to_posterior(x, q_loc, q_cov, params).mean())
    gap_stderr = math.hypot(lp["mc_stderr"], r["mc_stderr"])  # conservative: correlated
    assert abs(out["gap"]["mean"] - kl_q_post) < 4 * gap_stderr + abs(lp["estimated_bias"])
    loc, scale = vae.encode(x)
    kl_dims = 0.5 * (scale.pow(2) + loc.pow(2) - 1 - 2 * scale.log()).mean(0)
    assert_close(out["kl_to_prior"]["per_dimension"], kl_dims, rtol=1e-10, atol=1e-10)
    assert out["active_units"]["count"] == 2
    assert out["pareto_k"]["max"] < 0.7 and out["warnings"] == [] and out["notes"] == []
    assert out["method"] == "is" and out["num_datapoints"] == 300
    assert out["settings"] == {"seed": 1, "num_samples": 2000, "proposal": "the guide q(z|x)"}
    assert_close(out["per_datapoint"]["log_px"], estimate.log_px, rtol=0, atol=0)
    assert_close(out["per_datapoint"]["elbo"], estimate.elbo, rtol=0, atol=0)


def test_the_report_lists_the_bound_at_smaller_k_from_the_estimate():
    params = orthogonal_ppca()
    x = sample_model(params, 40, seeded(0))
    estimate, out = is_report(ppca_vae(params, shrink=0.7, widen=0.4), x, 300, pareto_k=False)
    assert list(out["log_px_by_k"]) == ["1", "3", "10", "30", "100"]
    for k, value in estimate.log_px_by_k.items():
        assert out["log_px_by_k"][str(k)]["mean"] == pytest.approx(float(value.mean()))


def test_reliability_warning_for_heavy_tailed_weights():
    """q far narrower than the posterior: the weights are heavy-tailed, k̂ > 0.7, warned."""
    params = orthogonal_ppca()
    vae = ppca_vae(params, widen=-2.5)
    x = sample_model(params, 20, seeded(0))
    with pytest.warns(ReliabilityWarning, match="Pareto"):
        _, out = is_report(vae, x, 500)
    assert out["pareto_k"]["fraction_above_0.7"] > 0.5
    assert len(out["warnings"]) == 1 and "AIS" in out["warnings"][0]


def test_exact_posterior_weights_raise_no_warning():
    params = orthogonal_ppca()
    x = sample_model(params, 10, seeded(0))
    post_loc, post_cov = exact_posterior(x, params)
    q_loc, q_cov = q_of(ppca_vae(params), x)
    assert_close(q_loc, post_loc)
    assert_close(q_cov, post_cov.expand_as(q_cov))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, out = is_report(ppca_vae(params), x, 200)
    assert out["pareto_k"]["fraction_above_0.7"] == 0.0
    assert abs(out["gap"]["mean"]) < 1e-8


def test_too_few_samples_or_chains_for_k_hat_is_a_note_not_a_warning():
    params = orthogonal_ppca()
    vae = ppca_vae(params, shrink=0.8)
    x = sample_model(params, 4, seeded(0))
    _, out = is_report(vae, x, 10, pareto_k=False)
    assert out["pareto_k"] is None and out["warnings"] == []
    assert out["notes"] == ["Pareto k-hat not computed: it needs at least 21 samples (-K), "
                            "got 10"]
    _, out = is_report(vae, x, 30, pareto_k=False)  # enough samples: --no-psis asked for it
    assert out["notes"] == ["Pareto k-hat not computed (asked not to)"]
    estimate = ais(vae, x, AISSettings(num_steps=4, num_chains=8))
    out = report(vae, x, estimate)
    assert out["pareto_k"] is None and out["warnings"] == []
    assert out["notes"] == ["Pareto k-hat not computed: it needs at least 21 chains "
                            "(--chains), got 8"]


def test_ais_report_records_settings_acceptance_and_the_path():
    params = orthogonal_ppca()
    vae = ppca_vae(params, shrink=0.8)
    x = sample_model(params, 6, seeded(0))
    settings = AISSettings(num_steps=20, num_chains=4, num_leapfrog=3)
    execution = Execution(seed=3)
    estimate = ais(vae, x, settings, execution=execution)
    out = report(vae, x, estimate, execution=execution, test_elbo=-12.5)
    json.dumps(out, allow_nan=False)
    assert out["method"] == "ais" and out["num_datapoints"] == 6
    assert out["settings"] == {"seed": 3, **settings._asdict(), "start": "the encoder q(z|x)",
                               # one layer: each transition starts from the last gradient
                               "gradient_evaluations_per_chain": 3 * 19 + 1}
    assert "elbo" not in out and "gap" not in out and "log_px_by_k" not in out
    assert out["test_elbo"]["mean"] == -12.5
    assert out["log_px"]["mean"] == pytest.approx(estimate.mean)
    assert_close(out["per_datapoint"]["log_px"], estimate.log_px, rtol=0, atol=0)
    assert_close(out["per_datapoint"]["acceptance_rate"], estimate.acceptance_rate, rtol=0,
                 atol=0)
    assert_close(out["per_datapoint"]["step_size"], estimate.step_size, rtol=0, atol=0)
    acceptance = out["acceptance"]
    assert acceptance["target"] == 0.65
    assert acceptance["min"] <= acceptance["mean"] <= acceptance["max"] <= 1
    by_step = out["by_step"]
    assert_close(by_step["beta"], estimate.betas, rtol=0, atol=0)
    for name, values in (("acceptance", estimate.accept_by_step),
                         ("step_size", estimate.step_size_by_step)):
        column = by_step[name]
        assert len(column) == 21 and column[0] is None and column[20] is None  # no transition
        assert_close(column[1:20], values[:, 1:20].mean(0), rtol=1e-12, atol=0)


def test_bdmc_and_gaps_sections():
    params = orthogonal_ppca()
    vae = ppca_vae(params, shrink=0.8)
    settings = AISSettings(num_steps=10, num_chains=3)
    result = bdmc(vae, torch.zeros(5, 6, dtype=F64), settings, execution=Execution(seed=2))
    section = bdmc_section(result, seed=2)
    json.dumps(section, allow_nan=False)
    assert section["num_datapoints"] == 5
    assert section["settings"] == {**settings._asdict(), "start": "the encoder q(z|x)",
                                   "seed": 2}
    assert section["gap"]["mean"] == pytest.approx(section["upper"]["mean"]
                                                   - section["lower"]["mean"])
    assert_close(section["per_datapoint"]["gap"], result.gap, rtol=0, atol=0)
    x = sample_model(params, 4, seeded(0))
    log_px = log_marginal(x, params)
    gaps = inference_gaps(vae, x, log_px, GapSettings(num_steps=10, eval_samples=50))
    section = gaps_section(gaps, log_px_from="exact")
    json.dumps(section, allow_nan=False)
    assert section["log_px_from"] == "exact"
    assert section["log_px"]["mean"] == pytest.approx(float(log_px.mean()))
    assert section["total"] == pytest.approx(section["amortization"]["mean"]
                                             + section["approximation"]["mean"])
    assert section["total"] == pytest.approx(section["log_px"]["mean"]
                                             - section["encoder_elbo"]["mean"])
    assert len(section["per_datapoint"]["approximation"]) == 4
