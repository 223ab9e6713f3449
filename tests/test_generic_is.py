"""pyro_vae.evaluation.generic and .program: importance sampling for any Pyro model and guide,
against the fast path of the built-in VAE (same random numbers, same numbers), against the
IWAE objective's own log-weights, and against exact log p(x) on programs with two latent
sites, a flow in the guide, a positive latent and an enumerated discrete latent."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import config_enumerate

from pyro_vae import VAE, ConfigError
from pyro_vae.evaluation import estimate_log_px
from pyro_vae.evaluation.program import inspect_program, log_weights
from pyro_vae.models.linear_gaussian import linear_gaussian_vae, log_marginal, sample_model
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


@pytest.fixture
def float64_default():
    """Pyro's AffineAutoregressive inverts from float32 zeros: float64 flows need this."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def small_vae(**kwargs):
    torch.manual_seed(0)
    return VAE(12, latent_dim=3, hidden_sizes=(16,), **kwargs).double()


@pytest.mark.parametrize("block_size", [4, 10], ids=["blocks-of-4", "one-block"])
def test_generic_path_equals_the_fast_path_on_the_same_random_numbers(block_size):
    vae = small_vae()
    x = binary_batch(10, 12, seed=2).double()
    fast = importance_pass(vae, x, num_samples=40, seed=7, block_size=block_size,
                           memory_mb=1e3, pareto_k=True)
    generic = generic_importance_pass(vae.model, vae.guide, x, num_samples=40, seed=7,
                                      block_size=block_size, pareto_k=True)
    for name in ("log_px", "log_px_mc_stderr", "elbo_mc", "elbo_mc_var", "pareto_k"):
        assert_close(getattr(generic, name), getattr(fast, name), rtol=1e-10, atol=1e-10,
                     msg=name)
    a = estimate_log_px(vae, x, num_samples=40, seed=7, block_size=block_size, memory_mb=1e3)
    b = estimate_log_px(vae.model, vae.guide, x, num_samples=40, seed=7,
                                block_size=block_size)
    assert b.mean == pytest.approx(a.mean, abs=1e-10)
    assert b.mean_mc_stderr == pytest.approx(a.mean_mc_stderr, abs=1e-10)


def test_chunks_of_particles_do_not_change_the_estimate_beyond_noise():
    vae = small_vae()
    x = binary_batch(6, 12, seed=3).double()
    whole = estimate_log_px(vae.model, vae.guide, x, num_samples=400)
    chunked = estimate_log_px(vae.model, vae.guide, x, num_samples=400,
                                      memory_mb=1e-3)  # one particle per chunk
    assert abs(whole.mean - chunked.mean) < 4 * (whole.mean_mc_stderr + chunked.mean_mc_stderr)


def test_log_weights_equal_those_of_the_iwae_objective():
    """Two implementations: our per-datapoint reduction and the IWAE objective's
    trace_log_weight (Pyro's RenyiELBO summation), on the same random numbers."""
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
    plain = estimate_log_px(small_vae().model, small_vae().guide, x, num_samples=30)
    scaled_vae = small_vae(beta=3.0)
    scaled = estimate_log_px(
        lambda x: scaled_vae.model(x, num_data=100), lambda x: scaled_vae.guide(x, num_data=100),
        x, num_samples=30)
    assert_close(scaled.log_px, plain.log_px, rtol=1e-12, atol=1e-12)


def test_enumerated_label_is_summed_out_exactly():
    """With q(z|x, y) = p(z|x, y), every enumerated weight is p(x, y) exactly, so one
    particle gives log p(x) = log Σ_y p(x, y) to rounding."""
    mixture = Mixture.random(exact_guide=True)
    x = mixture.sample(7)
    est = estimate_log_px(mixture.model, mixture.guide, x, num_samples=1)
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
    est = estimate_log_px(model, guide, x, num_samples=2000, pareto_k=True)
    error = log_marginal_fn(x) - est.log_px  # ≥ 0 in expectation: IWAE_K is a lower bound
    assert float(error.mean()) < 0.05
    assert float(error.mean()) > -4 * est.mean_mc_stderr
    assert est.pareto_k.shape == (8,)


def test_context_and_other_per_datapoint_arguments_are_sliced_with_the_data():
    vae = small_vae(context_dim=2)
    x = binary_batch(6, 12, seed=6).double()
    context = torch.nn.functional.one_hot(torch.arange(6) % 2, 2).double()
    whole = generic_importance_pass(vae.model, vae.guide, (x, context), num_samples=20,
                                    block_size=3)
    first = generic_importance_pass(vae.model, vae.guide, (x[:3], context[:3]),
                                    num_samples=20, block_size=3)  # block 0: the same seed
    assert_close(whole.log_px[:3], first.log_px, rtol=1e-12, atol=1e-12)
    other = generic_importance_pass(vae.model, vae.guide, (x[:3], 1 - context[:3]),
                                    num_samples=20, block_size=3)
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
        estimate_log_px(global_latent_model, global_latent_guide, x, num_samples=2)
    m = Mixture.random()
    with pytest.raises(ConfigError, match="enumerated sequentially"):
        estimate_log_px(m.model, sequential_guide, m.sample(4), num_samples=2)
    vae = small_vae()
    xb = binary_batch(4, 12).double()
    with pytest.raises(ConfigError, match="data_plate 'nope'"):
        estimate_log_px(vae.model, vae.guide, xb, num_samples=2, data_plate="nope")
    with pytest.raises(ConfigError, match="num_samples"):
        estimate_log_px(vae.model, vae.guide, xb, num_samples=0)
    with pytest.raises(ConfigError, match="Pareto"):
        estimate_log_px(vae.model, vae.guide, xb, num_samples=5, pareto_k=True)
    with pytest.raises(ConfigError, match="same, non-zero number of rows"):
        estimate_log_px(vae.model, vae.guide, (xb, xb[:2]), num_samples=2)


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
        estimate_log_px(model, guide, x, num_samples=2)
    est = estimate_log_px(model, guide, x, num_samples=500, data_plate="rows")
    exact = dist.Normal(0.0, 2.0**0.5).log_prob(x).sum(-1)  # z + noise: N(0, 2) per entry
    assert float((exact - est.log_px).abs().max()) < 0.05
