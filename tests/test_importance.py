"""pyro_vae.evaluation.importance and .runner: Pareto k̂ on tails of known index; the
importance-weighted log p(x) of :func:`estimate_log_px` on both of its paths (the layered fast
path of every built-in VAE, the generic path of a :class:`Program` of one's own, from Pyro's
traces) against exact answers and against each other; its standard error against its spread;
Pyro's own importance sampler; which path the dispatcher takes and what it refuses; and the
runner that every evaluator shares (blocks, seeds, threads, ranks, the caller's RNG)."""

import contextlib
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Importance, config_enumerate
from pyro.infer.importance import psis_diagnostic, vectorized_importance_weights

from pyro_vae import VAE, ConfigError, DataError
from pyro_vae.distributed import World, derive_seed
from pyro_vae.evaluation import (
    AISSettings,
    Execution,
    Program,
    ais,
    estimate_log_px,
    mean_elbo,
    pareto_k_hat,
)
from pyro_vae.evaluation import runner as runner_module
from pyro_vae.evaluation.program import inspect_program, log_weights
from pyro_vae.evaluation.runner import run_blocks
from pyro_vae.models.linear_gaussian import (
    LayerParams,
    PPCAParams,
    exact_posterior,
    guide_joint,
    linear_gaussian_vae,
    log_marginal,
    sample_model,
    set_to_posterior,
)
from pyro_vae.objectives.renyi import IWAE_ELBO
from tests.conftest import assert_close, binary_batch
from tests.known_models import (
    F64,
    FlowGuide,
    GammaPoisson,
    Mixture,
    TwoLayer,
    random_ppca,
)


def seeded(seed):
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def float64_default():
    """Pyro's AffineAutoregressive inverts from float32 zeros: float64 flows need this."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def orthogonal_ppca(D=6, L=2, seed=0) -> PPCAParams:
    """pPCA with Wᵀ W diagonal, so that the mean-field encoder can be the exact posterior."""
    g = seeded(seed)
    Q, _ = torch.linalg.qr(torch.randn(D, L, generator=g, dtype=F64))
    mu = torch.randn(D, generator=g, dtype=F64)
    return PPCAParams(Q * torch.tensor([2.0, 0.8], dtype=F64), mu, torch.tensor(0.5, dtype=F64))


def orthogonal_chain(seed=0) -> tuple[LayerParams, LayerParams]:
    """Two linear-Gaussian layers x ← z1 ← z2 whose exact posterior is q(z1|x) q(z2|z1) with
    diagonal Gaussians: W1 with orthogonal columns and W2 axis-aligned make the covariances of
    z1, of z1 | x and of z2 | z1 diagonal."""
    g = seeded(seed)
    Q, _ = torch.linalg.qr(torch.randn(6, 3, generator=g, dtype=F64))
    W2 = torch.zeros(3, 2, dtype=F64)
    W2[0, 0], W2[1, 1] = 1.5, 0.8
    return (LayerParams(Q * torch.tensor([2.0, 1.2, 0.7], dtype=F64),
                        torch.randn(6, generator=g, dtype=F64), torch.tensor(0.5, dtype=F64)),
            LayerParams(W2, torch.randn(3, generator=g, dtype=F64), torch.tensor(0.6, dtype=F64)))


def ppca_vae(params, *, shrink=1.0, widen=0.0):
    vae = linear_gaussian_vae(params, learn_model=False)
    set_to_posterior(vae, params)
    with torch.no_grad():
        vae.encoder.A.mul_(shrink)
        vae.encoder.log_scale.add_(widen)
    return vae


def make_flows_affine(vae, seed=0) -> None:
    """Turn every IAF of ``vae`` into a fixed elementwise affine map z = m + s ⊙ e (zero
    weights in each MADE's last layer, random biases: a non-zero log-Jacobian), and move each
    layer's Gaussian so that what the flow pushes forward is the law it had before."""
    g = seeded(seed)
    with torch.no_grad():
        for d, flow, encoder in zip(vae.latent_dims, vae.flows, vae.encoders, strict=True):
            m_total, s_total = torch.zeros(d, dtype=F64), torch.ones(d, dtype=F64)
            for transform in flow.transforms:
                last = transform.nn.layers[-1]  # outputs (mean, log scale), d each
                last.weight.zero_()
                m = 0.5 * torch.randn(d, generator=g, dtype=F64)
                log_s = 0.3 * torch.randn(d, generator=g, dtype=F64)
                last.bias.copy_(torch.cat([m, log_s]))
                m_total, s_total = m + log_s.exp() * m_total, log_s.exp() * s_total
            encoder.A.div_(s_total[:, None])
            encoder.c.sub_(m_total).div_(s_total)
            encoder.log_scale.sub_(s_total.log())


def exact_vae(layers: int, flow: bool):
    """(vae, x, log p(x)): a linear-Gaussian VAE of one or two layers whose guide is the exact
    posterior (through affine flows with ``flow``), so that every log-weight is log p(x)."""
    params = orthogonal_ppca() if layers == 1 else orthogonal_chain()
    vae = linear_gaussian_vae(params, learn_model=False, flow="iaf" if flow else None)
    set_to_posterior(vae, params)
    x = sample_model(params, 9, seeded(1))
    if flow:
        make_flows_affine(vae)
        with torch.no_grad():
            path = vae.guide_path(x, num_samples=2)
        assert float(path.log_det.abs().min()) > 0.01  # the flows do transform
    else:  # the guide is the posterior
        q_mean, q_cov = guide_joint(vae, x)
        post_mean, post_cov = exact_posterior(x, params)
        assert_close(q_mean, post_mean, rtol=0, atol=1e-12)
        assert_close(q_cov, post_cov, rtol=0, atol=1e-12)
    return vae, x, log_marginal(x, params)


def small_vae(**kwargs):
    torch.manual_seed(0)
    return VAE(12, latent_dim=3, hidden_sizes=(16,), **kwargs).double()


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


# --- the layered path: exact cases, layouts, standard errors -----------------------------------


@pytest.mark.parametrize(
    "memory_mb, block_size, workers",
    [(128.0, None, 1), (0.05, None, 2), (0.05, 3, 1), (1.0, 7, 2)],
    ids=["one-chunk", "tiny-chunks", "blocks-of-3", "blocks-of-7-two-workers"],
)
def test_exact_posterior_proposal_gives_exact_log_px_in_any_layout(memory_mb, block_size,
                                                                   workers):
    """With q(z|x) = p(z|x) every weight equals p(x): the estimate is exact whatever the
    chunking, and its standard error is zero."""
    params = orthogonal_ppca()
    vae = ppca_vae(params)
    x = sample_model(params, 23, seeded(0))
    est = estimate_log_px(vae, x, num_samples=300, execution=Execution(
        seed=1, memory_mb=memory_mb, block_size=block_size, workers=workers))
    assert_close(est.log_px, log_marginal(x, params), rtol=0, atol=1e-9)
    assert_close(est.log_px_mc_stderr, 0.0, rtol=0, atol=1e-6)
    assert est.num_samples == 300 and est.log_px.shape == (23,) and est.fast


@pytest.mark.parametrize("layout", [dict(block_size=5), dict(memory_mb=0.02)],
                         ids=["fixed-blocks", "blocks-from-a-tight-memory-budget"])
def test_result_does_not_depend_on_the_number_of_workers(layout):
    params = orthogonal_ppca()
    vae = ppca_vae(params, shrink=0.8, widen=0.3)
    x = sample_model(params, 40, seeded(0))
    runs = [estimate_log_px(vae, x, num_samples=64, pareto_k=True,
                            execution=Execution(seed=2, workers=w, **layout)) for w in (1, 2, 3)]
    for other in runs[1:]:
        for name in ("log_px", "log_px_mc_stderr", "elbo", "elbo_var", "pareto_k"):
            assert_close(getattr(other, name), getattr(runs[0], name), rtol=0, atol=1e-12,
                         msg=name)


def test_standard_error_matches_the_spread_over_repeated_estimates():
    """The delta-method standard error √(Σ w̃² − 1/K) of each datapoint against the standard
    deviation of 100 independent estimates of it; and stderr = √(Σ se²)/N."""
    params = orthogonal_ppca()
    vae = ppca_vae(params, shrink=0.8, widen=0.3)
    x = sample_model(params, 6, seeded(0))
    runs = [estimate_log_px(vae, x, num_samples=100, execution=Execution(seed=100 + r))
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
        runs = [estimate_log_px(vae, x, num_samples=k, execution=Execution(seed=r))
                for r in range(20)]
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
    ours = estimate_log_px(vae, x, num_samples=K, pareto_k=True,
                           execution=Execution(seed=index))
    assert ours.pareto_k[0] < 0.5
    pyro.set_rng_seed(index)
    importance = Importance(vae.model, vae.guide, num_samples=K).run(x)
    theirs = float(importance.get_log_normalizer())
    their_se = math.sqrt(max(1 / float(importance.get_ESS()) - 1 / K, 0.0))
    tolerance = 4 * math.hypot(float(ours.log_px_mc_stderr[0]), their_se)
    assert 0 < tolerance < 0.5
    assert abs(ours.mean - theirs) < tolerance, (ours.mean, theirs, tolerance)


def test_the_bound_at_smaller_k_comes_from_the_same_samples():
    """IWAE_k for k < K from the first k samples: exact for every k when q is the posterior,
    and rising with k (on average) for an encoder away from it, ending at the IWAE_K figure;
    IWAE_1 is the first sample's log-weight, so its mean is the ELBO's in expectation."""
    params = orthogonal_ppca()
    x = sample_model(params, 40, seeded(0))
    exact = estimate_log_px(ppca_vae(params), x, num_samples=300, execution=Execution(seed=1))
    assert list(exact.log_px_by_k) == [1, 3, 10, 30, 100]
    for value in exact.log_px_by_k.values():
        assert value.shape == (40,)
        assert_close(value, log_marginal(x, params), rtol=0, atol=1e-9)
    off = estimate_log_px(ppca_vae(params, shrink=0.7, widen=0.4), x, num_samples=300,
                          execution=Execution(seed=1))
    means = [float(v.mean()) for v in off.log_px_by_k.values()] + [off.mean]
    assert means[0] < means[2] < means[4] < means[5]
    assert abs(means[0] - float(off.elbo.mean())) < 4 * float(off.elbo_var.mean().sqrt()) / 40**.5


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
    for bad, match in [(dict(seed=-1), "seed"), (dict(memory_mb=0.0), "memory_mb"),
                       (dict(block_size=0), "block_size"), (dict(workers=0), "workers"),
                       (dict(progress="loud"), "progress")]:
        with pytest.raises(ConfigError, match=match):
            estimate_log_px(vae, x, num_samples=10, execution=Execution(**bad))


def test_memory_checks_name_the_option_to_change(monkeypatch):
    """K samples whose log-weights alone exceed the budget, and a budget beyond the memory
    the machine has ($PYRO_VAE_MEMORY_LIMIT_MB here), are refused before anything runs."""
    vae = VAE(12, latent_dim=3, hidden_sizes=(16,))
    x = binary_batch(4, 12)
    with pytest.raises(ConfigError, match=r"K = 5000 importance samples.*--memory-mb"):
        estimate_log_px(vae, x, num_samples=5000, execution=Execution(memory_mb=0.01))
    monkeypatch.setenv("PYRO_VAE_MEMORY_LIMIT_MB", "10")
    with pytest.raises(ConfigError, match=r"memory budget of 128 MB.*--memory-mb"):
        estimate_log_px(vae, x, num_samples=10, execution=Execution(workers=1))
    est = estimate_log_px(vae, x, num_samples=10, execution=Execution(memory_mb=4.0, workers=1))
    assert torch.isfinite(est.log_px).all()


# --- the dispatcher ----------------------------------------------------------------------------


def test_a_context_vae_needs_its_context_and_says_so_in_one_line():
    """This used to end in a torch RuntimeError from deep in the encoder."""
    vae = VAE(6, latent_dim=2, hidden_sizes=(8,), context_dim=3)
    x = binary_batch(5, 6)
    context = torch.nn.functional.one_hot(torch.arange(5) % 3, 3).float()
    settings = AISSettings(num_steps=3, num_chains=2)
    for evaluate in (lambda data: estimate_log_px(vae, data, num_samples=10),
                     lambda data: ais(vae, data, settings),
                     lambda data: mean_elbo(vae, data)):
        with pytest.raises(ConfigError) as error:
            evaluate(x)
        message = str(error.value)
        assert len(message.splitlines()) == 1, message
        assert "context of 3 features" in message and "(x, context)" in message
    est = estimate_log_px(vae, (x, context), num_samples=10)
    assert est.fast and est.log_px.shape == (5,) and torch.isfinite(est.log_px).all()
    other = estimate_log_px(vae, (x, context.roll(1, 1)), num_samples=10)
    assert float((other.log_px - est.log_px).abs().max()) > 1e-4  # the context is read
    assert torch.isfinite(ais(vae, (x, context), settings).log_px).all()
    assert math.isfinite(mean_elbo(vae, (x, context)))
    plain = VAE(6, latent_dim=2, hidden_sizes=(8,))
    with pytest.raises(ConfigError, match="reads x alone"):
        estimate_log_px(plain, (x, context), num_samples=10)


@pytest.mark.parametrize("kind", ["one-layer", "two-layer", "iaf", "two-layer-iaf", "context"])
def test_every_built_in_vae_takes_the_fast_path_and_a_program_the_generic_one(kind):
    options = {"one-layer": {}, "two-layer": dict(latent_dim=(3, 2), hidden_sizes=((8,), (6,))),
               "iaf": dict(flow="iaf"), "context": dict(context_dim=2),
               "two-layer-iaf": dict(latent_dim=(3, 2), hidden_sizes=((8,), (6,)), flow="iaf")}
    vae = VAE(12, **{"latent_dim": 3, "hidden_sizes": (16,), **options[kind]})
    x = binary_batch(4, 12)
    data = (x, torch.eye(2)[torch.arange(4) % 2]) if kind == "context" else x
    assert estimate_log_px(vae, data, num_samples=5).fast
    assert not estimate_log_px(Program(vae.model, vae.guide), data, num_samples=5).fast


# --- the two paths against each other ----------------------------------------------------------


@pytest.mark.parametrize("layers,flow", [(1, False), (2, False), (1, True), (2, True)],
                         ids=["one-layer", "two-layers", "flow", "two-layers-flow"])
def test_both_paths_give_the_exact_log_px_where_every_weight_is_p_of_x(layers, flow):
    """The layered path (the model's own log-densities, samples from a torch.Generator) and the
    generic path of the same VAE (Pyro's traces, samples from the global RNG) draw different
    samples, so they are compared where the answer does not depend on them: a linear-Gaussian
    VAE whose guide is the exact posterior (pushed through affine flows, whose log-Jacobian
    the log q of each path must carry): every log-weight is log p(x)."""
    vae, x, truth = exact_vae(layers, flow)
    for model in (vae, Program(vae.model, vae.guide)):
        est = estimate_log_px(model, x, num_samples=50, execution=Execution(seed=3))
        assert est.fast == (model is vae)
        assert_close(est.log_px, truth, rtol=0, atol=1e-9)
        assert_close(est.elbo, truth, rtol=0, atol=1e-9)
        assert_close(est.elbo_var, 0.0, rtol=0, atol=1e-12)
        assert_close(est.log_px_mc_stderr, 0.0, rtol=0, atol=1e-6)
        for value in est.log_px_by_k.values():
            assert_close(value, truth, rtol=0, atol=1e-9)


@pytest.mark.parametrize("kind", ["one-layer", "two-layers", "iaf"])
def test_both_paths_agree_within_their_noise_on_a_nonlinear_vae(kind):
    """No closed form: the two paths on the same VAE (Bernoulli decoder, MLPs) agree in the
    IWAE_K estimate and in the ELBO on the K samples within 4 combined standard errors,
    datapoint by datapoint and on average. Every layer of the guide is made wider than the
    prior, so that the weights are bounded (k̂ < 0.5 on both paths) and the standard errors
    can be trusted."""
    torch.manual_seed(0)
    options = {"one-layer": {}, "iaf": dict(flow="iaf"),
               "two-layers": dict(latent_dim=(3, 2), hidden_sizes=((8,), (6,)),
                                  activation="tanh")}[kind]
    vae = VAE(12, **{"latent_dim": 3, "hidden_sizes": (16,), **options})
    with torch.no_grad():
        for encoder in vae.encoders:
            encoder.log_scale.weight.zero_()
            encoder.log_scale.bias.fill_(0.5)
    x = binary_batch(6, 12, seed=2)
    K = 2000
    fast = estimate_log_px(vae, x, num_samples=K, pareto_k=True, execution=Execution(seed=1))
    generic = estimate_log_px(Program(vae.model, vae.guide), x, num_samples=K, pareto_k=True,
                              execution=Execution(seed=2))
    assert (fast.pareto_k < 0.5).all() and (generic.pareto_k < 0.5).all()
    se = (fast.log_px_mc_stderr**2 + generic.log_px_mc_stderr**2).sqrt()
    assert float(se.max()) < 0.1
    assert ((fast.log_px - generic.log_px).abs() < 4 * se).all()
    assert abs(fast.mean - generic.mean) < 4 * math.hypot(fast.mean_mc_stderr,
                                                          generic.mean_mc_stderr)
    elbo_se = ((fast.elbo_var + generic.elbo_var) / K).sqrt()
    assert ((fast.elbo - generic.elbo).abs() < 4 * elbo_se).all()


# --- the generic path: Pyro programs of one's own ----------------------------------------------


def test_chunks_of_particles_do_not_change_the_estimate_beyond_noise():
    vae = small_vae()
    x = binary_batch(6, 12, seed=3).double()
    program = Program(vae.model, vae.guide)
    whole = estimate_log_px(program, x, num_samples=400)
    chunked = estimate_log_px(program, x, num_samples=400,
                              execution=Execution(memory_mb=1e-3))  # one particle per chunk
    assert abs(whole.mean - chunked.mean) < 4 * (whole.mean_mc_stderr + chunked.mean_mc_stderr)


def test_log_weights_equal_those_of_the_iwae_objective():
    """Two implementations: our per-datapoint reduction and the IWAE objective's
    log-weights (Pyro's RenyiELBO summation), on the same random numbers."""
    vae = small_vae()
    x = binary_batch(5, 12, seed=4).double()
    info = inspect_program(vae.model, vae.guide, (x,))
    pyro.set_rng_seed(11)
    ours = log_weights(vae.model, vae.guide, (x,), 8, info)
    pyro.set_rng_seed(11)
    theirs = IWAE_ELBO(num_particles=8).log_weights(vae.model, vae.guide, x)
    assert_close(ours, theirs, rtol=1e-12, atol=1e-12)


def test_scales_are_ignored_log_px_is_the_models():
    """β (poutine.scale on z) and num_data scaling are training devices, not log p(x)."""
    x = binary_batch(6, 12, seed=5).double()
    plain_vae = small_vae()
    plain = estimate_log_px(Program(plain_vae.model, plain_vae.guide), x, num_samples=30)
    scaled_vae = small_vae(beta=3.0)
    scaled = estimate_log_px(Program(lambda x: scaled_vae.model(x, num_data=100),
                                     lambda x: scaled_vae.guide(x, num_data=100)),
                             x, num_samples=30)
    assert_close(scaled.log_px, plain.log_px, rtol=1e-12, atol=1e-12)
    # the layered path has no scales to ignore: β is not in the model's log-densities
    assert_close(estimate_log_px(scaled_vae, x, num_samples=30).log_px,
                 estimate_log_px(plain_vae, x, num_samples=30).log_px, rtol=1e-12, atol=1e-12)


def test_enumerated_label_is_summed_out_exactly():
    """With q(z|x, y) = p(z|x, y), every enumerated weight is p(x, y) exactly, so one
    particle gives log p(x) = log Σ_y p(x, y) to rounding."""
    mixture = Mixture.random(exact_guide=True)
    x = mixture.sample(7)
    est = estimate_log_px(Program(mixture.model, mixture.guide), x, num_samples=1)
    assert_close(est.log_px, mixture.log_marginal(x), rtol=1e-10, atol=1e-10)


def ppca_flow(seed):
    params = random_ppca(5, 2, seed=seed)
    vae = linear_gaussian_vae(params, learn_model=False)
    return vae.model, FlowGuide(params), lambda x: log_marginal(x, params), (
        lambda n: sample_model(params, n, torch.Generator().manual_seed(seed)))


def two_layer(seed):
    m = TwoLayer.random(seed=seed)
    n = m.A.shape[0] + m.A.shape[1]
    g = torch.Generator().manual_seed(seed)
    cov = torch.linalg.cholesky(m.joint_cov()[n:, n:])
    return m.model, m.guide, m.log_marginal, (
        lambda k: m.mu + torch.randn(k, m.mu.shape[0], generator=g, dtype=F64) @ cov.T)


def gamma_poisson(seed):
    m = GammaPoisson()
    g = torch.Generator().manual_seed(seed)
    return m.model, m.guide, m.log_marginal, (
        lambda n: torch.poisson(torch.distributions.Gamma(m.a, m.b).sample((n,)).double(),
                                generator=g))


def mixture(seed):
    m = Mixture.random(seed=seed)
    return m.model, m.guide, m.log_marginal, lambda n: m.sample(n, seed)


PROGRAMS = {"two-latent-sites": two_layer, "flow-guide": ppca_flow,
            "positive-latent": gamma_poisson, "enumerated-label": mixture}


@pytest.mark.parametrize("name", PROGRAMS)
def test_generic_is_recovers_the_exact_log_px(name, float64_default):
    model, guide, log_marginal_fn, sample = PROGRAMS[name](0)
    x = sample(8)
    est = estimate_log_px(Program(model, guide), x, num_samples=2000, pareto_k=True)
    assert not est.fast
    error = log_marginal_fn(x) - est.log_px  # ≥ 0 in expectation: IWAE_K is a lower bound
    assert float(error.mean()) < 0.05
    assert float(error.mean()) > -4 * est.mean_mc_stderr
    assert est.pareto_k.shape == (8,)


def test_context_and_other_per_datapoint_arguments_are_sliced_with_the_data():
    vae = small_vae(context_dim=2)
    x = binary_batch(6, 12, seed=6).double()
    context = torch.nn.functional.one_hot(torch.arange(6) % 2, 2).double()
    for model in (Program(vae.model, vae.guide), vae):
        execution = Execution(block_size=3)
        whole = estimate_log_px(model, (x, context), num_samples=20, execution=execution)
        first = estimate_log_px(model, (x[:3], context[:3]), num_samples=20,
                                execution=execution)  # block 0: the same seed
        assert_close(whole.log_px[:3], first.log_px, rtol=1e-12, atol=1e-12)
        other = estimate_log_px(model, (x[:3], 1 - context[:3]), num_samples=20,
                                execution=execution)
        assert float((other.log_px - first.log_px).abs().max()) > 1e-3  # the context matters


# --- what the generic path refuses, and says why -------------------------------------------
def global_latent_model(x):
    w = pyro.sample("w", dist.Normal(0.0, 1.0))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("x", dist.Normal(w, 1.0), obs=x)


def global_latent_guide(x):
    pyro.sample("w", dist.Normal(0.0, 1.0))


def sequential_guide(x):
    mixture_model = Mixture.random()
    with pyro.plate("data", x.shape[0]):
        pyro.sample("y", dist.OneHotCategorical(logits=x.new_zeros(x.shape[0], 3)),
                    infer={"enumerate": "sequential"})
        pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], mixture_model.W.shape[1]), 1.0)
                    .to_event(1))


def test_refusals_name_what_is_not_supported():
    x = torch.randn(4, dtype=F64)
    with pytest.raises(ConfigError, match="site 'w' is outside the data plate"):
        estimate_log_px(Program(global_latent_model, global_latent_guide), x, num_samples=2)
    m = Mixture.random()
    with pytest.raises(ConfigError, match="enumerated sequentially"):
        estimate_log_px(Program(m.model, sequential_guide), m.sample(4), num_samples=2)
    vae = small_vae()
    xb = binary_batch(4, 12).double()
    with pytest.raises(ConfigError, match="data_plate 'nope'"):
        estimate_log_px(Program(vae.model, vae.guide, data_plate="nope"), xb, num_samples=2)
    program = Program(vae.model, vae.guide)
    with pytest.raises(ConfigError, match="num_samples"):
        estimate_log_px(program, xb, num_samples=0)
    with pytest.raises(ConfigError, match="Pareto"):
        estimate_log_px(program, xb, num_samples=5, pareto_k=True)
    with pytest.raises(ConfigError, match="same, non-zero number of rows"):
        estimate_log_px(program, (xb, xb[:2]), num_samples=2)


def test_an_ambiguous_data_plate_must_be_named():
    def model(x):
        with pyro.plate("rows", x.shape[0], dim=-2), pyro.plate("cols", x.shape[1], dim=-1):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape), 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    @config_enumerate
    def guide(x):
        with pyro.plate("rows", x.shape[0], dim=-2), pyro.plate("cols", x.shape[1], dim=-1):
            pyro.sample("z", dist.Normal(x / 2, 0.8))

    x = torch.randn(3, 3, dtype=F64)
    with pytest.raises(ConfigError, match="cannot tell the data plate"):
        estimate_log_px(Program(model, guide), x, num_samples=2)
    est = estimate_log_px(Program(model, guide, data_plate="rows"), x, num_samples=500)
    exact = dist.Normal(0.0, 2.0**0.5).log_prob(x).sum(-1)  # z + noise: N(0, 2) per entry
    assert float((exact - est.log_px).abs().max()) < 0.05


# --- the runner ----------------------------------------------------------------------------------


def test_run_blocks_fills_named_columns_in_data_order():
    """Columns of width 0 come back ``(N,)``, of width w ``(N, w)``, float64 on the CPU, each
    block's rows in place; block i draws from derive_seed(seed, i): from its generator on
    threads, from torch's global one otherwise."""
    n, block = 10, 4
    data = (torch.arange(n, dtype=torch.float32), torch.arange(2 * n).reshape(n, 2).float())

    def compute(xb, generator, bar):
        index, pairs = xb
        return {"index": index, "pair": pairs.flip(1),
                "draws": torch.rand(index.shape[0], 3, generator=generator)}

    def compute_global(xb, generator, bar):
        return {**compute(xb, generator, bar),
                "draws": torch.rand(xb[0].shape[0], 3)}  # torch's global generator

    columns = {"index": 0, "pair": 2, "draws": 3}
    threaded = run_blocks(compute, data, columns, Execution(seed=5, workers=2), block=block,
                          threaded=True)
    plain = run_blocks(compute_global, data, columns, Execution(seed=5), block=block)
    for out in (threaded, plain):
        assert out["index"].shape == (n,) and out["pair"].shape == (n, 2)
        assert out["draws"].shape == (n, 3)
        assert all(v.dtype == torch.float64 and v.device.type == "cpu" for v in out.values())
        assert_close(out["index"], torch.arange(n), rtol=0, atol=0)
        assert_close(out["pair"], data[1].flip(1), rtol=0, atol=0)
        for i, start in enumerate(range(0, n, block)):
            b = min(block, n - start)
            expected = torch.rand(b, 3, generator=seeded(derive_seed(5, i)))
            assert_close(out["draws"][start : start + b], expected, rtol=0, atol=0)


def evaluators(vae, x):
    """Each evaluator of one VAE and data: the layered IS path (threaded), the generic one and
    AIS (torch's global generator, reseeded per block)."""
    program = Program(vae.model, vae.guide)
    settings = AISSettings(num_steps=4, num_chains=3)
    return {
        "layered-is": lambda execution: estimate_log_px(vae, x, num_samples=20,
                                                        execution=execution).log_px,
        "generic-is": lambda execution: estimate_log_px(program, x, num_samples=20,
                                                        execution=execution).log_px,
        "ais": lambda execution: ais(vae, x, settings, execution=execution).log_weights,
    }


@pytest.mark.parametrize("name", ["layered-is", "generic-is", "ais"])
def test_evaluators_leave_the_callers_random_stream_alone_and_do_not_depend_on_it(name):
    vae = small_vae()
    x = binary_batch(7, 12, seed=2).double()
    evaluate = evaluators(vae, x)[name]
    torch.manual_seed(123)
    expected = torch.rand(5)
    torch.manual_seed(123)
    first = evaluate(Execution(seed=4, block_size=3))
    assert torch.equal(torch.rand(5), expected)  # the caller's stream goes on as it was
    torch.manual_seed(999)  # another past: the same numbers
    assert_close(evaluate(Execution(seed=4, block_size=3)), first, rtol=0, atol=0)
    assert float((evaluate(Execution(seed=5, block_size=3)) - first).abs().max()) > 0


def fake_world(rank: int, size: int) -> World:
    return World(rank, size, rank, "gloo", torch.device("cpu"), 1.0)


@pytest.mark.parametrize("size", [2, 3])
@pytest.mark.parametrize("name", ["layered-is", "generic-is", "ais"])
def test_ranks_compute_disjoint_blocks_whose_sum_is_the_one_process_result(name, size,
                                                                           monkeypatch):
    """Each rank fills the rows of its blocks (block i: rank i mod world size) and leaves
    the others zero, so that the all-reduce (a sum, replaced here by each rank's own matrix)
    gathers exactly what one process computes."""
    vae = small_vae()
    x = binary_batch(7, 12, seed=2).double()
    evaluate = evaluators(vae, x)[name]
    one = evaluate(Execution(seed=4, block_size=2))
    monkeypatch.setattr(runner_module, "sum_across", lambda values, world: values)
    parts = [evaluate(Execution(seed=4, block_size=2, world=fake_world(r, size)))
             for r in range(size)]
    for rank, part in enumerate(parts):
        for i, start in enumerate(range(0, 7, 2)):
            rows = part[start : start + 2]
            if i % size == rank:
                assert_close(rows, one[start : start + 2], rtol=0, atol=0)
            else:
                assert (rows == 0).all()
    assert_close(sum(parts), one, rtol=0, atol=0)


def test_the_test_elbo_does_not_depend_on_the_workers():
    vae = small_vae()
    x = binary_batch(30, 12, seed=2).double()
    values = [mean_elbo(vae, x, execution=Execution(block_size=4, workers=w)) for w in (1, 3)]
    assert values[0] == values[1]


# --- subnormals flushed while a block is computed ----------------------------------------------

def _subnormal_survives() -> bool:
    return torch.tensor(2.0**-140).mul(1.0).item() != 0.0


def test_subnormals_are_flushed_inside_a_block_and_the_callers_mode_comes_back():
    assert _subnormal_survives()
    with runner_module.subnormals_flushed():
        assert not _subnormal_survives()
    assert _subnormal_survives()
    torch.set_flush_denormal(True)  # a caller who flushes keeps flushing
    try:
        with runner_module.subnormals_flushed():
            pass
        assert not _subnormal_survives()
    finally:
        torch.set_flush_denormal(False)


@pytest.mark.parametrize("workers", [1, 2])
def test_flushing_subnormals_leaves_the_estimates_bit_for_bit(monkeypatch, workers):
    """A decoder whose logits are −30 and −95 (softplus of them passes through subnormal
    numbers) gives the same estimates with the flushing as without it."""
    vae = VAE(12, latent_dim=2, hidden_sizes=(8,))
    with torch.no_grad():
        vae.decoder.out.bias.copy_(torch.tensor([-30.0, -95.0] * 6))
    x = torch.zeros(9, 12)
    x[:, :2] = 1.0  # two improbable pixels, so that log p(x) is not only the tiny ones
    softplus = torch.nn.functional.softplus
    assert 0 < softplus(torch.tensor(-95.0)) < 2.0**-126  # subnormal here: the case in point
    with runner_module.subnormals_flushed():
        assert softplus(torch.tensor(-95.0)) == 0
    execution = Execution(seed=1, block_size=3, workers=workers)
    flushed = estimate_log_px(vae, x, num_samples=50, execution=execution)
    monkeypatch.setattr(runner_module, "subnormals_flushed", contextlib.nullcontext)
    plain = estimate_log_px(vae, x, num_samples=50, execution=execution)
    for name in ("log_px", "elbo", "elbo_var"):
        assert torch.equal(getattr(flushed, name), getattr(plain, name)), name
