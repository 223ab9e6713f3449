"""pyro_vae.objectives.renyi: the Rényi bound VR_α,K (Li & Turner 2016) on the linear-Gaussian
model (float64) against a hand-written per-datapoint version on the same random numbers, against
Pyro's own RenyiELBO surrogate, between the ELBO and IWAE_K for every sample, and converging in
K to the closed-form VR_α; IWAE_ELBO is VR_ELBO at α = 0; K vectorized particles at every K;
non-reparameterized guides refused."""

import math

import pyro
import pyro.distributions as dist
import pyro.infer
import pytest
import torch

from pyro_vae import ConfigError, make_objective
from pyro_vae.models.linear_gaussian import closed_form_renyi_bound, sample_model
from pyro_vae.objectives import IWAE_ELBO, VR_ELBO
from tests.conftest import assert_close
from tests.ppca import gradients, hand_written_log_weights, iwae, ppca_vae


def hand_written_vr(log_w, alpha):
    """1/(1 − α) log (1/K) Σ_k w_k^(1−α) per datapoint, from ``(K, B)`` log-weights."""
    k = log_w.shape[0]
    return (torch.logsumexp((1 - alpha) * log_w, 0) - math.log(k)) / (1 - alpha)


@pytest.mark.parametrize("alpha, k", [(0.5, 5), (0.2, 20), (0.9, 1)],
                         ids=["a0.5-K5", "a0.2-K20", "a0.9-K1"])
def test_renyi_equals_hand_written(alpha, k):
    """Per datapoint, the loss and every gradient, on the same draws."""
    _, vae, x = ppca_vae()
    objective = make_objective("renyi", vae, num_particles=k, alpha=alpha)
    assert isinstance(objective.elbo, VR_ELBO) and objective.elbo.alpha == alpha
    assert objective.options == {"alpha": alpha}
    pyro.set_rng_seed(3)
    per_datapoint = objective.elbo.bound(vae.model, vae.guide, x)
    expected = hand_written_vr(hand_written_log_weights(vae, x, k, 3), alpha)
    assert_close(per_datapoint, expected, rtol=1e-12, atol=1e-12)
    pyro.set_rng_seed(4)
    loss = objective.differentiable_loss(x)
    grads = gradients(loss, vae)
    expected = -hand_written_vr(hand_written_log_weights(vae, x, k, 4), alpha).sum()
    assert_close(loss, expected, rtol=1e-12)
    for name, grad in gradients(expected, vae).items():
        assert grad.abs().max() > 1e-3, name
        assert_close(grads[name], grad, rtol=1e-10, atol=1e-12, msg=name)


def test_differentiable_loss_is_pyros_renyi_surrogate():
    """Our differentiable_loss and Pyro's RenyiELBO.loss_and_grads (what SVI calls): the same
    loss and gradients for the same sample."""
    _, vae, x = ppca_vae()
    objective = make_objective("renyi", vae, num_particles=6, alpha=0.3)
    pyro.set_rng_seed(5)
    loss = objective.differentiable_loss(x)
    ours = gradients(loss, vae)
    vae.zero_grad()
    pyro.set_rng_seed(5)
    pyros = pyro.infer.RenyiELBO.loss_and_grads(objective.elbo, vae.model, vae.guide, x)
    assert_close(loss, pyros, rtol=1e-12)
    for name, p in vae.named_parameters():
        assert_close(ours[name], p.grad, rtol=1e-10, atol=1e-12, msg=name)


def test_vr_lies_between_the_elbo_and_iwae_for_every_sample_and_falls_with_alpha():
    """Power means: for the same K draws, mean log w < VR_0.8 < VR_0.2 < IWAE_K."""
    _, vae, x = ppca_vae()
    bounds = {}
    for seed in range(4):
        pyro.set_rng_seed(seed)
        log_w = IWAE_ELBO(num_particles=8).log_weights(vae.model, vae.guide, x).detach()
        for alpha in (0.8, 0.2):
            pyro.set_rng_seed(seed)
            bounds[alpha] = VR_ELBO(alpha, 8).bound(vae.model, vae.guide, x).detach()
        assert (log_w.mean(0) < bounds[0.8]).all() and (bounds[0.8] < bounds[0.2]).all()
        assert (bounds[0.2] < iwae(log_w)).all()


def test_vr_rises_with_k_to_the_closed_form():
    """E[VR_α,K] rises with K (Li & Turner 2016) to VR_α = log p(x) − D_α(q ‖ p(z|x)):
    over 2000 datapoints, the mean of VR_α,K − VR_α at K = 1, 10, 1000 rises, and at K = 1000
    it is within 3 standard errors of 0, having closed over 90 % of the gap of K = 1 (with the
    encoder near the posterior: VR_0.5 is 0.6 nats above the ELBO)."""
    params, vae, _ = ppca_vae(encoder_noise=0.1)
    x = sample_model(params, 2000, torch.Generator().manual_seed(9))
    loc, scale = (t.detach() for t in vae.encode(x))
    exact = closed_form_renyi_bound(x, loc, torch.diag_embed(scale**2), params, 0.5)  # (N,)
    gaps, errors = [], []
    for k in (1, 10, 1000):
        pyro.set_rng_seed(k)
        with torch.no_grad():
            gap = VR_ELBO(0.5, k).bound(vae.model, vae.guide, x) - exact
        gaps.append(float(gap.mean()))
        errors.append(float(gap.std()) / math.sqrt(x.shape[0]))
    assert gaps == sorted(gaps) and gaps[0] < -10 * errors[0], gaps
    assert abs(gaps[-1]) < 3 * errors[-1], (gaps, errors)
    assert -gaps[-1] < 0.1 * -gaps[0]


def test_alpha_outside_its_interval_is_refused():
    """The renyi estimator of the registry takes α in (0, 1) (α = 0 is iwae); VR_ELBO itself
    takes [0, 1) (IWAE_ELBO is VR_ELBO at α = 0)."""
    _, vae, _ = ppca_vae()
    for alpha in (0.0, 1.0, -0.5, 1.5, float("nan"), float("inf"), True, "0.5"):
        with pytest.raises(ConfigError, match="alpha"):
            make_objective("renyi", vae, alpha=alpha)
    for alpha in (1.0, -0.5, 1.5, float("nan"), True, "0.5"):
        with pytest.raises(ConfigError, match="alpha"):
            VR_ELBO(alpha=alpha)
    with pytest.raises(ConfigError, match=r"alpha must be a number in \[0, 1\), got 1.0"):
        VR_ELBO(alpha=1.0)
    assert VR_ELBO(alpha=0.0).alpha == 0.0
    with pytest.raises(ConfigError, match="iwae estimator takes no option 'alpha'"):
        make_objective("iwae", vae, alpha=0.5)


def test_iwae_is_vr_at_alpha_zero():
    """IWAE_ELBO is VR_ELBO at α = 0: the same class, and for the same draws the same bound per
    datapoint (the hand-written IWAE_K), the same loss and the same gradients, bit for bit."""
    _, vae, x = ppca_vae()
    k = 7
    iwae_elbo, vr_elbo = IWAE_ELBO(num_particles=k), VR_ELBO(alpha=0.0, num_particles=k)
    assert isinstance(iwae_elbo, VR_ELBO) and iwae_elbo.alpha == 0.0
    assert make_objective("iwae", vae, num_particles=k).elbo.alpha == 0.0
    pyro.set_rng_seed(3)
    bound = iwae_elbo.bound(vae.model, vae.guide, x)
    assert_close(bound, iwae(hand_written_log_weights(vae, x, k, 3)), rtol=1e-12, atol=1e-12)
    pyro.set_rng_seed(3)
    assert torch.equal(bound, vr_elbo.bound(vae.model, vae.guide, x))
    results = []
    for elbo in (iwae_elbo, vr_elbo):
        pyro.set_rng_seed(4)
        loss = elbo.differentiable_loss(vae.model, vae.guide, x)
        results.append((loss, gradients(loss, vae)))
    (a_loss, a), (b_loss, b) = results
    assert torch.equal(a_loss, b_loss)
    expected = -iwae(hand_written_log_weights(vae, x, k, 4)).sum()
    assert_close(a_loss, expected, rtol=1e-12)
    for name, grad in gradients(expected, vae).items():
        assert grad.abs().max() > 1e-3, name
        assert torch.equal(a[name], b[name]), name
        assert_close(a[name], grad, rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize("k", [1, 3], ids=["K1", "K3"])
@pytest.mark.parametrize("elbo", [IWAE_ELBO, lambda k: VR_ELBO(0.5, k)], ids=["iwae", "renyi"])
def test_particles_are_vectorized_at_every_k(elbo, k):
    """The estimators always vectorize their particles, K = 1 included: the log-weights are
    ``(K, B)``, one row per particle (a K = 1 plate too), and the bound is per datapoint."""
    _, vae, x = ppca_vae()
    objective = elbo(k)
    assert objective.vectorize_particles
    pyro.set_rng_seed(3)
    log_w = objective.log_weights(vae.model, vae.guide, x)
    assert log_w.shape == (k, x.shape[0])
    assert_close(log_w, hand_written_log_weights(vae, x, k, 3), rtol=1e-12, atol=1e-12)
    pyro.set_rng_seed(3)
    assert objective.bound(vae.model, vae.guide, x).shape == (x.shape[0],)


@pytest.mark.parametrize("name, elbo", [("iwae", lambda: IWAE_ELBO(num_particles=2)),
                                        ("renyi", lambda: VR_ELBO(0.5, 2))])
def test_a_non_reparameterized_guide_is_refused(name, elbo):
    """The surrogate has no score-function term: a guide site drawn without rsample is refused,
    naming the estimator and the site (Pyro's loss_and_grads would add the score term)."""
    x = torch.tensor([0.0, 1.0, 1.0])

    def model(x):
        with pyro.plate("data", 3):
            c = pyro.sample("c", dist.Bernoulli(0.5))
            pyro.sample("x", dist.Normal(c, 1.0), obs=x)

    def guide(x):
        p = pyro.param("p", torch.full((3,), 0.5))
        with pyro.plate("data", 3):
            pyro.sample("c", dist.Bernoulli(p))

    match = f"the {name} estimator needs reparameterized guide sites; 'c' is not"
    with pytest.raises(ConfigError, match=match):
        elbo().differentiable_loss(model, guide, x)
    with pytest.raises(ConfigError, match=match):
        elbo().bound(model, guide, x)


def test_renyi_at_one_particle_is_the_elbo_sample_by_sample():
    """K = 1: (1 − α) log w / (1 − α) = log w, trace's estimate and gradient, for every α."""
    _, vae, x = ppca_vae()
    pyro.set_rng_seed(2)
    a = make_objective("renyi", vae, num_particles=1, alpha=0.7).differentiable_loss(x)
    a_grads = gradients(a, vae)
    pyro.set_rng_seed(2)
    b = make_objective("trace", vae).differentiable_loss(x)
    assert_close(a, b, rtol=1e-12)
    for name, grad in gradients(b, vae).items():
        assert_close(a_grads[name], grad, rtol=1e-10, atol=1e-12, msg=name)
