"""pyro_vae.evaluation: Pareto k̂ on tails of known index, the importance-weighted log p(x)
against exact answers, its standard error against its spread, Pyro's own importance sampler,
the report, and the ``evaluate`` command."""

import json
import math
import warnings

import pyro
import pytest
import torch
from pyro.infer import Importance
from pyro.infer.importance import psis_diagnostic, vectorized_importance_weights

from pyro_vae import VAE, ConfigError, DataError
from pyro_vae.build import load_data
from pyro_vae.cli import main
from pyro_vae.config import TrainConfig
from pyro_vae.evaluation import (
    ReliabilityWarning,
    active_units,
    estimate_log_px,
    evaluate,
    pareto_k_hat,
)
from pyro_vae.fit import fit
from pyro_vae.models.linear_gaussian import (
    PPCAParams,
    closed_form_elbo,
    exact_posterior,
    kl_to_posterior,
    linear_gaussian_vae,
    log_marginal,
    sample_model,
)
from pyro_vae.runs import RunFolder
from tests.conftest import assert_close, binary_batch

F64 = torch.float64



def seeded(seed):
    return torch.Generator().manual_seed(seed)


def orthogonal_ppca(D=6, L=2, seed=0) -> PPCAParams:
    """pPCA with Wᵀ W diagonal, so that the mean-field encoder can be the exact posterior."""
    g = seeded(seed)
    Q, _ = torch.linalg.qr(torch.randn(D, L, generator=g, dtype=F64))
    mu = torch.randn(D, generator=g, dtype=F64)
    return PPCAParams(Q * torch.tensor([2.0, 0.8], dtype=F64), mu, torch.tensor(0.5, dtype=F64))


def ppca_vae(params, *, shrink=1.0, widen=0.0):
    vae = linear_gaussian_vae(params, learn_model=False)
    vae.encoder.set_to_posterior(params)
    with torch.no_grad():
        vae.encoder.A.mul_(shrink)
        vae.encoder.log_scale.add_(widen)
    return vae


def q_of(vae, x):
    loc, scale = vae.encode(x)
    return loc.detach(), torch.diag_embed(scale.detach().pow(2))


# --- Pareto k̂ ---------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [1.25, 2.0, 4.0], ids=["k=0.8", "k=0.5", "k=0.25"])
def test_pareto_k_recovers_the_tail_index_of_pareto_weights(alpha):
    """Weights w ~ Pareto(α) have tail index k = 1/α; their logs are Exponential(α). The same
    numbers negated (log-weights instead of −log-weights mixed up) give bounded weights and
    k̂ < 0: this pins ArviZ's sign convention."""
    log_w = torch.distributions.Exponential(alpha).sample((40, 4000))
    k = pareto_k_hat(log_w)
    assert k.shape == (40,)
    assert abs(float(k.mean()) - 1 / alpha) < 0.06, float(k.mean())
    assert (pareto_k_hat(-log_w) < 0).all()


def test_pareto_k_of_equal_and_nearly_equal_weights_is_low():
    assert (pareto_k_hat(torch.zeros(3, 1000)) == -math.inf).all()
    near = -50.0 + 1e-6 * torch.randn(3, 1000, dtype=F64)
    assert (pareto_k_hat(near) < 0.3).all()


def test_pareto_k_needs_enough_samples():
    with pytest.raises(ConfigError, match="at least 21"):
        pareto_k_hat(torch.zeros(2, 20))


def test_pareto_k_equals_pyro_psis_diagnostic_on_the_same_weights():
    """Two implementations of the same estimator (ArviZ's and Pyro's Zhang–Stephens fit with
    the same tail and prior) on the same log-weights, drawn from a deliberately poor guide."""
    vae = VAE(12, latent_dim=3, hidden_sizes=(16,))
    with torch.no_grad():
        vae.encoder.log_scale.bias.fill_(-2.0)  # q much narrower than p(z|x): heavy tails
    x = binary_batch(1, 12)
    pyro.set_rng_seed(3)
    k_pyro = psis_diagnostic(vae.model, vae.guide, x, num_particles=2000, max_plate_nesting=1)
    pyro.set_rng_seed(3)
    log_w, _, _ = vectorized_importance_weights(vae.model, vae.guide, x, num_samples=2000,
                                                max_plate_nesting=1)
    assert 0.5 < k_pyro < 3
    assert_close(pareto_k_hat(log_w.detach()), k_pyro, rtol=1e-6, atol=1e-6)


# --- log p(x): exact cases, layouts, standard errors ---------------------------------------------


@pytest.mark.parametrize(
    "memory_mb, block_size, num_workers",
    [(128.0, None, 1), (0.05, None, 2), (0.05, 3, 1), (1.0, 7, 2)],
    ids=["one-chunk", "tiny-chunks", "blocks-of-3", "blocks-of-7-two-workers"],
)
def test_exact_posterior_proposal_gives_exact_log_px_in_any_layout(memory_mb, block_size,
                                                                   num_workers):
    """With q(z|x) = p(z|x) every weight equals p(x): the estimate is exact whatever the
    chunking, and its standard error is zero."""
    params = orthogonal_ppca()
    vae = ppca_vae(params)
    x = sample_model(params, 23, seeded(0))
    est = estimate_log_px(vae, x, num_samples=300, memory_mb=memory_mb, block_size=block_size,
                          num_workers=num_workers, seed=1)
    assert_close(est.log_px, log_marginal(x, params), rtol=0, atol=1e-9)
    assert_close(est.log_px_mc_stderr, 0.0, rtol=0, atol=1e-6)
    assert est.num_samples == 300 and est.log_px.shape == (23,)


@pytest.mark.parametrize("layout", [dict(block_size=5), dict(memory_mb=0.02)],
                         ids=["fixed-blocks", "blocks-from-a-tight-memory-budget"])
def test_result_does_not_depend_on_the_number_of_workers(layout):
    params = orthogonal_ppca()
    vae = ppca_vae(params, shrink=0.8, widen=0.3)
    x = sample_model(params, 40, seeded(0))
    runs = [estimate_log_px(vae, x, num_samples=64, num_workers=w, seed=2,
                            **layout) for w in (1, 2, 3)]
    for other in runs[1:]:
        assert_close(other.log_px, runs[0].log_px, rtol=0, atol=1e-12)


def test_standard_error_matches_the_spread_over_repeated_estimates():
    """The delta-method standard error √(Σ w̃² − 1/K) of each datapoint against the standard
    deviation of 100 independent estimates of it; and stderr = √(Σ se²)/N."""
    params = orthogonal_ppca()
    vae = ppca_vae(params, shrink=0.8, widen=0.3)
    x = sample_model(params, 6, seeded(0))
    runs = [estimate_log_px(vae, x, num_samples=100, seed=100 + r)
            for r in range(100)]
    spread = torch.stack([r.log_px for r in runs]).std(0)
    predicted = torch.stack([r.log_px_mc_stderr for r in runs]).mean(0)
    ratio = predicted / spread
    assert ((ratio > 0.75) & (ratio < 1.33)).all(), ratio
    one = runs[0]
    assert_close(one.mean_mc_stderr, one.log_px_mc_stderr.pow(2).sum().sqrt() / 6)
    assert_close(one.mean, one.log_px.mean())
    assert_close(one.data_stderr, one.log_px.std() / math.sqrt(6))


def test_bias_is_about_minus_half_the_squared_standard_error_and_shrinks_like_one_over_k():
    """E[log p̂_K] − log p(x) ≈ −se²/2 (the delta method, to first order in 1/K): the estimate
    is below log p(x), by about the predicted amount, and 5× more samples cut the bias about
    5-fold. Averaged over 20 independent repetitions, so that the check has power."""
    params = orthogonal_ppca()
    vae = ppca_vae(params, shrink=0.7, widen=0.4)
    x = sample_model(params, 400, seeded(0))
    truth = log_marginal(x, params)
    bias, predicted, spread = {}, {}, {}
    for k in (20, 100):
        runs = [estimate_log_px(vae, x, num_samples=k, seed=r) for r in range(20)]
        b = torch.tensor([float((est.log_px - truth).mean()) for est in runs])
        bias[k], spread[k] = float(b.mean()), float(b.std() / math.sqrt(20))
        predicted[k] = -float(torch.stack([est.log_px_mc_stderr.pow(2).mean() for est in runs])
                              .mean()) / 2
        assert bias[k] < -3 * spread[k]  # biased low, beyond the Monte Carlo noise
        # first order only: at K = 20 the next term adds about half again
        assert abs(bias[k] - predicted[k]) < 0.6 * abs(predicted[k]) + 3 * spread[k], k
    assert 2.5 < bias[20] / bias[100] < 10  # about 1/K


@pytest.mark.parametrize("index", [0, 1])
def test_agrees_with_pyro_importance_sampling(index):
    """The project's estimate and Pyro's Importance(model, guide).get_log_normalizer() on the
    same model and datapoint, within 4 combined Monte Carlo standard errors. The guide is
    made wider than the prior, so the weights are bounded (k̂ < 0.5) and the standard errors
    can be trusted."""
    vae = VAE(12, latent_dim=3, hidden_sizes=(16,))
    with torch.no_grad():
        vae.encoder.log_scale.weight.zero_()
        vae.encoder.log_scale.bias.fill_(0.3)
    x = binary_batch(2, 12)[index : index + 1]
    K = 1000
    ours = estimate_log_px(vae, x, num_samples=K, seed=index, pareto_k=True)
    assert ours.pareto_k[0] < 0.5
    pyro.set_rng_seed(index)
    importance = Importance(vae.model, vae.guide, num_samples=K).run(x)
    theirs = float(importance.get_log_normalizer())
    their_se = math.sqrt(max(1 / float(importance.get_ESS()) - 1 / K, 0.0))
    tolerance = 4 * math.hypot(float(ours.log_px_mc_stderr[0]), their_se)
    assert 0 < tolerance < 0.5
    assert abs(ours.mean - theirs) < tolerance, (ours.mean, theirs, tolerance)


# --- the other figures -----------------------------------------------------------------------


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


def test_report_figures_against_closed_forms():
    """On pPCA with a non-posterior encoder: both ELBO forms match the closed-form ELBO, the
    per-dimension KL to the prior is exact, log p(x) is within its errors of the exact value,
    and the gap estimates the mean KL(q ‖ p(z|x))."""
    params = orthogonal_ppca()
    vae = ppca_vae(params, shrink=0.85, widen=0.2)
    x = sample_model(params, 300, seeded(0))
    report = evaluate(vae, x, num_samples=2000, seed=1)
    json.dumps(report, allow_nan=False)  # JSON-ready
    q_loc, q_cov = q_of(vae, x)
    elbo = float(closed_form_elbo(x, q_loc, q_cov, params).mean())
    exact = float(log_marginal(x, params).mean())
    for form in ("analytic_kl", "monte_carlo"):
        r = report["elbo"][form]
        assert abs(r["mean"] - elbo) < 4 * r["mc_stderr"], (form, r, elbo)
    lp = report["log_px"]
    assert abs(lp["mean"] - exact) < 4 * lp["mc_stderr"] + abs(lp["estimated_bias"])
    kl_q_post = float(kl_to_posterior(x, q_loc, q_cov, params).mean())
    assert abs(report["gap"]["mean"] - kl_q_post) < 4 * report["gap"]["mc_stderr"] + abs(
        lp["estimated_bias"])
    loc, scale = vae.encode(x)
    kl_dims = 0.5 * (scale.pow(2) + loc.pow(2) - 1 - 2 * scale.log()).mean(0)
    assert_close(report["kl_to_prior"]["per_dimension"], kl_dims, rtol=1e-10, atol=1e-10)
    assert report["active_units"]["count"] == 2
    assert report["pareto_k"]["max"] < 0.7 and report["warnings"] == []
    assert report["num_samples"] == 2000 and report["num_datapoints"] == 300


def test_reliability_warning_for_heavy_tailed_weights():
    """q far narrower than the posterior: the weights are heavy-tailed, k̂ > 0.7, warned."""
    params = orthogonal_ppca()
    vae = ppca_vae(params, widen=-2.5)
    x = sample_model(params, 20, seeded(0))
    with pytest.warns(ReliabilityWarning, match="Pareto"):
        report = evaluate(vae, x, num_samples=500, seed=1)
    assert report["pareto_k"]["fraction_above_0.7"] > 0.5
    assert len(report["warnings"]) == 1


def test_exact_posterior_weights_raise_no_warning():
    params = orthogonal_ppca()
    x = sample_model(params, 10, seeded(0))
    post_loc, post_cov = exact_posterior(x, params)
    q_loc, q_cov = q_of(ppca_vae(params), x)
    assert_close(q_loc, post_loc)
    assert_close(q_cov, post_cov.expand_as(q_cov))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = evaluate(ppca_vae(params), x, num_samples=200, seed=1)
    assert report["pareto_k"]["fraction_above_0.7"] == 0.0
    assert abs(report["gap"]["mean"]) < 1e-8


def test_invalid_arguments_raise_project_errors():
    vae = VAE(12, latent_dim=3, hidden_sizes=(16,))
    x = binary_batch(4, 12)
    with pytest.raises(ConfigError, match="num_samples"):
        estimate_log_px(vae, x, num_samples=0)
    with pytest.raises(ConfigError, match="Pareto"):
        estimate_log_px(vae, x, num_samples=10, pareto_k=True)
    with pytest.raises(DataError, match="shape"):
        estimate_log_px(vae, x[:, :5], num_samples=10)
    with pytest.raises(DataError, match="binary"):
        estimate_log_px(vae, x * 0.5, num_samples=10)
    report = evaluate(vae, x, num_samples=10)  # too few samples for k̂: reported, not raised
    assert report["pareto_k"] is None and "needs num_samples" in report["warnings"][0]


# --- the command ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    config = TrainConfig(epochs=1, train_size=256, test_size=40, hidden_sizes=(16,),
                         latent_dim=4, batch_size=64)
    fit(config, out, log=lambda *a: None, progress=False)
    return out


def test_evaluate_command_writes_the_report(small_run, capsys):
    assert main(["evaluate", str(small_run), "-K", "50", "--quiet", "--seed", "3"]) == 0
    report = json.loads((small_run / "evaluation.json").read_text())
    out = capsys.readouterr().out
    assert "log p(x) >= IWAE_50" in out and "nats/datapoint" in out
    assert report["num_samples"] == 50 and report["num_datapoints"] == 40
    for key in ("log_px", "elbo", "gap", "kl_to_prior", "active_units", "pareto_k"):
        assert key in report
    # the same numbers as the library on the same test set, seed and memory budget
    vae, checkpoint = RunFolder(small_run).load_vae()
    test = load_data(checkpoint.config, train=False).test
    est = estimate_log_px(vae, test, num_samples=50, seed=3)
    assert_close(report["log_px"]["mean"], est.mean, rtol=1e-6)
    assert_close(report["log_px"]["mc_stderr"], est.mean_mc_stderr, rtol=1e-5)
    assert report["log_px"]["mean"] > report["elbo"]["analytic_kl"]["mean"]


def test_evaluate_command_options(small_run, tmp_path):
    output = tmp_path / "e.json"
    assert main(["evaluate", str(small_run / "checkpoint.pt"), "-K", "30", "--test-size", "8",
                 "--no-psis", "--quiet", "--output", str(output)]) == 0
    report = json.loads(output.read_text())
    assert report["num_datapoints"] == 8 and report["pareto_k"] is None


def test_evaluate_command_errors(tmp_path, capsys):
    bad = tmp_path / "not_a_checkpoint.pt"
    bad.write_bytes(b"garbage")
    assert main(["evaluate", str(bad), "-K", "10"]) == 2
    assert capsys.readouterr().err.startswith("pyro-vae: error:")
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", str(tmp_path / "missing.pt")])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit):
        main(["evaluate", str(bad), "-K", "0"])


def test_the_bound_at_smaller_k_comes_from_the_same_samples():
    """IWAE_k for k < K from the first k samples: exact for every k when q is the posterior,
    and rising with k (on average) for an encoder away from it, ending at the IWAE_K figure."""
    params = orthogonal_ppca()
    x = sample_model(params, 40, seeded(0))
    exact = evaluate(ppca_vae(params), x, num_samples=300, seed=1, pareto_k=False)
    assert list(exact["log_px_by_k"]) == ["1", "3", "10", "30", "100"]
    for value in exact["log_px_by_k"].values():
        assert_close(value["mean"], float(log_marginal(x, params).mean()), rtol=0, atol=1e-9)
    off = evaluate(ppca_vae(params, shrink=0.7, widen=0.4), x, num_samples=300, seed=1,
                   pareto_k=False)
    means = [v["mean"] for v in off["log_px_by_k"].values()] + [off["log_px"]["mean"]]
    assert means[0] < means[2] < means[4] < means[5]
