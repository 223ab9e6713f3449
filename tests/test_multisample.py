"""pyro_vae.objectives.multisample: MIWAE, CIWAE and PIWAE (Rainforth et al. 2018) on the
linear-Gaussian model (float64) against hand-written per-datapoint versions on the same random
numbers; their special cases (IWAE_K, the ELBO) sample by sample; the orderings that hold for
every sample, and E[MIWAE(M, K)] = E[IWAE_K]; PIWAE's split gradient (θ from IWAE_MK, φ from
MIWAE) on every model and guide, also where float32 weights underflow."""

import math

import pyro
import pytest
import torch
from pyro import poutine

from pyro_vae import VAE, ConfigError, make_objective
from pyro_vae.objectives import CIWAE_ELBO, MIWAE_ELBO, PIWAE_ELBO
from tests.conftest import assert_close, binary_batch
from tests.ppca import F64, gradients, hand_written_log_weights, is_guide, iwae, ppca_vae


def miwae(log_w, m):
    return iwae(log_w.reshape(m, -1, log_w.shape[-1]), 1).mean(0)  # particle m·K + k: group m


def ciwae(log_w, beta):
    return beta * log_w.mean(0) + (1 - beta) * iwae(log_w)


def pyro_loss_and_gradients(objective, x, seed):
    pyro.set_rng_seed(seed)
    loss = objective.differentiable_loss(x)
    return loss.detach(), gradients(loss, objective.vae)


# --- against the hand-written bounds -----------------------------------------------------------


@pytest.mark.parametrize("m, k", [(3, 4), (2, 1)], ids=["M3K4", "M2K1"])
def test_miwae_equals_hand_written(m, k):
    _, vae, x = ppca_vae()
    objective = make_objective("miwae", vae, num_particles=k, num_estimates=m)
    assert isinstance(objective.elbo, MIWAE_ELBO) and objective.elbo.num_particles == m * k
    pyro.set_rng_seed(3)
    per_datapoint = objective.elbo.bound(vae.model, vae.guide, x)
    expected = miwae(hand_written_log_weights(vae, x, m * k, 3), m)
    assert_close(per_datapoint, expected, rtol=1e-12, atol=1e-12)
    loss, grads = pyro_loss_and_gradients(objective, x, 4)
    expected = -miwae(hand_written_log_weights(vae, x, m * k, 4), m).sum()
    assert_close(loss, expected, rtol=1e-12)
    for name, grad in gradients(expected, vae).items():
        assert grad.abs().max() > 1e-3, name
        assert_close(grads[name], grad, rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize("beta", [0.3, 0.0, 1.0], ids=["beta0.3", "beta0", "beta1"])
def test_ciwae_equals_hand_written(beta):
    _, vae, x = ppca_vae()
    objective = make_objective("ciwae", vae, num_particles=5, ciwae_beta=beta)
    assert isinstance(objective.elbo, CIWAE_ELBO) and objective.elbo.ciwae_beta == beta
    pyro.set_rng_seed(3)
    per_datapoint = objective.elbo.bound(vae.model, vae.guide, x)
    assert_close(per_datapoint, ciwae(hand_written_log_weights(vae, x, 5, 3), beta), rtol=1e-12,
                 atol=1e-12)
    loss, grads = pyro_loss_and_gradients(objective, x, 4)
    expected = -ciwae(hand_written_log_weights(vae, x, 5, 4), beta).sum()
    assert_close(loss, expected, rtol=1e-12)
    for name, grad in gradients(expected, vae).items():
        assert_close(grads[name], grad, rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize("m, k", [(3, 4), (4, 1)], ids=["M3K4", "M4K1"])
def test_piwae_equals_hand_written_iwae_for_the_model_and_miwae_for_the_guide(m, k):
    """−loss = IWAE_MK per datapoint; the decoder's gradient is −∇_θ IWAE_MK, the encoder's
    −∇_φ MIWAE(M, K), each from the hand-written bound of the same M·K draws."""
    _, vae, x = ppca_vae()
    objective = make_objective("piwae", vae, num_particles=k, num_estimates=m)
    assert isinstance(objective.elbo, PIWAE_ELBO) and objective.num_particles == k
    pyro.set_rng_seed(3)
    per_datapoint = objective.elbo.bound(vae.model, vae.guide, x)
    assert_close(per_datapoint, iwae(hand_written_log_weights(vae, x, m * k, 3)), rtol=1e-12,
                 atol=1e-12)
    loss, grads = pyro_loss_and_gradients(objective, x, 4)
    log_w = hand_written_log_weights(vae, x, m * k, 4)
    assert_close(loss, -iwae(log_w).sum(), rtol=1e-12)
    model_grads = gradients(-iwae(log_w).sum(), vae)
    guide_grads = gradients(-miwae(log_w, m).sum(), vae)
    for name in grads:
        expected = guide_grads[name] if is_guide(name) else model_grads[name]
        assert expected.abs().max() > 1e-3, name
        assert_close(grads[name], expected, rtol=1e-10, atol=1e-12, msg=name)
    differs = [n for n in grads if is_guide(n)
               and (model_grads[n] - guide_grads[n]).abs().max() > 1e-3]
    assert differs  # the two bounds' encoder gradients differ: the test can tell them apart


# --- special cases, sample by sample -----------------------------------------------------------


@pytest.mark.parametrize(
    "name, options, k, reference, reference_k",
    [("miwae", {"num_estimates": 1}, 5, "iwae", 5),
     ("miwae", {"num_estimates": 4}, 1, "trace", 4),
     ("ciwae", {"ciwae_beta": 0.0}, 5, "iwae", 5),
     ("ciwae", {"ciwae_beta": 1.0}, 5, "trace", 5),
     ("piwae", {"num_estimates": 1}, 5, "iwae", 5)],
    ids=["MIWAE(1,K)=IWAE_K", "MIWAE(M,1)=ELBO", "CIWAE(0)=IWAE_K", "CIWAE(1)=ELBO",
         "PIWAE(1,K)=IWAE_K"],
)
def test_special_cases_equal_iwae_or_the_elbo_sample_by_sample(name, options, k, reference,
                                                                reference_k):
    _, vae, x = ppca_vae()
    a_loss, a = pyro_loss_and_gradients(make_objective(name, vae, num_particles=k, **options),
                                        x, 5)
    b_loss, b = pyro_loss_and_gradients(make_objective(reference, vae,
                                                       num_particles=reference_k), x, 5)
    assert_close(a_loss, b_loss, rtol=1e-12)
    for n in a:
        assert_close(a[n], b[n], rtol=1e-10, atol=1e-12, msg=n)


def test_piwae_with_one_particle_per_group_is_iwae_for_the_model_and_the_elbo_for_the_guide():
    """PIWAE(M, 1): θ's gradient is IWAE_M's, φ's the ELBO's with M particles (trace's)."""
    _, vae, x = ppca_vae()
    _, piwae = pyro_loss_and_gradients(make_objective("piwae", vae, num_particles=1,
                                                      num_estimates=4), x, 6)
    _, iwae4 = pyro_loss_and_gradients(make_objective("iwae", vae, num_particles=4), x, 6)
    _, trace4 = pyro_loss_and_gradients(make_objective("trace", vae, num_particles=4), x, 6)
    for n in piwae:
        assert_close(piwae[n], (trace4 if is_guide(n) else iwae4)[n], rtol=1e-10, atol=1e-12,
                     msg=n)


# --- orderings -------------------------------------------------------------------------------


def test_orderings_hold_for_every_sample():
    """The same M·K log-weights: ELBO_MK ≤ MIWAE(M, K) ≤ IWAE_MK (log is concave), and on K of
    them ELBO_K ≤ CIWAE(β) ≤ IWAE_K (a convex combination), datapoint by datapoint."""
    _, vae, x = ppca_vae()
    m, k = 3, 4
    elbo = MIWAE_ELBO(num_particles=k, num_estimates=m)
    for seed in range(5):
        pyro.set_rng_seed(seed)
        log_w = elbo.log_weights(vae.model, vae.guide, x).detach()  # (M, K, B)
        flat = log_w.reshape(m * k, -1)
        assert (flat.mean(0) < elbo.bound_of(log_w)).all()
        assert (elbo.bound_of(log_w) < PIWAE_ELBO(k, m).bound_of(log_w)).all()
        assert_close(PIWAE_ELBO(k, m).bound_of(log_w), iwae(flat), rtol=1e-14, atol=0)
        combined = CIWAE_ELBO(m * k, 0.25).bound_of(flat.unsqueeze(0))
        assert (flat.mean(0) < combined).all() and (combined < iwae(flat)).all()


def test_miwae_has_the_expectation_of_iwae_k():
    """E[MIWAE(M, K)] = E[IWAE_K]: the means of 400 draws each agree within 4 standard errors,
    and both lie above the ELBO (trace) by many."""
    _, vae, x = ppca_vae()
    x = x.repeat(20, 1)

    def draws(name, n, seed, **kwargs):
        objective = make_objective(name, vae, **kwargs)
        pyro.set_rng_seed(seed)
        values = torch.tensor([-objective.loss(x) / x.shape[0] for _ in range(n)], dtype=F64)
        return values.mean(), values.std() / math.sqrt(n)

    a, se_a = draws("miwae", 400, 0, num_particles=3, num_estimates=4)
    b, se_b = draws("iwae", 400, 1, num_particles=3)
    c, se_c = draws("trace", 400, 2)
    assert abs(a - b) < 4 * math.hypot(se_a, se_b), (a, b)
    assert c + 10 * se_c < min(a, b), (c, a, b)


# --- PIWAE on every model and guide ----------------------------------------------------------


MODELS = {
    "vae": lambda: VAE(12, latent_dim=3, hidden_sizes=(16,)),
    "vae+iaf": lambda: VAE(12, latent_dim=3, hidden_sizes=(16,), flow="iaf"),
    "hierarchical": lambda: VAE(12, latent_dim=(4, 3), hidden_sizes=((16,), (8,)),
                                activation="tanh"),
    "hierarchical+iaf": lambda: VAE(12, latent_dim=(4, 3), hidden_sizes=((16,), (8,)),
                                    activation="tanh", flow="iaf"),
}


def split_reference(vae, x, m, k, seed):
    """θ's gradient of −IWAE_MK and φ's of −MIWAE(M, K), by plain autograd of the two bounds
    of the same log-weights (no hooks), φ being the guide's parameters."""
    guide_params = {id(s["value"]) for s in poutine.trace(vae.guide, param_only=True)
                    .get_trace(x).nodes.values() if s["type"] == "param"}
    pyro.set_rng_seed(seed)
    log_w = MIWAE_ELBO(num_particles=k, num_estimates=m).log_weights(vae.model, vae.guide, x)
    model_grads = gradients(-iwae(log_w.reshape(m * k, -1)).sum(), vae)
    guide_grads = gradients(-iwae(log_w, 1).mean(0).sum(), vae)
    return {n: (guide_grads if id(p) in guide_params else model_grads)[n]
            for n, p in vae.named_parameters()}


@pytest.mark.parametrize("model", list(MODELS))
def test_piwae_splits_the_gradient_on_every_model_and_guide(model):
    """The hooks on the model's views of the samples weight what reaches the guide by MIWAE's
    weights and leave IWAE_MK's for the model, with flows and with a second layer (where the
    gradient reaches z_1 through z_2 too), to float32 rounding."""
    torch.manual_seed(0)
    vae = MODELS[model]()
    x = binary_batch(8, 12)
    _, grads = pyro_loss_and_gradients(make_objective("piwae", vae, num_particles=3,
                                                      num_estimates=2), x, 7)
    expected = split_reference(vae, x, 2, 3, 7)
    for name, grad in grads.items():
        assert_close(grad, expected[name], rtol=1e-4, atol=1e-5, msg=name)


def test_piwae_keeps_the_guides_gradient_where_a_groups_share_underflows_in_float32():
    """A far-off encoder in float32: log-weights spread over thousands of nats, so some groups
    hold less than e^-104 of the weight (0 in float32). Their IWAE_MK weights vanish, their
    MIWAE weights do not: the encoder's gradient still equals MIWAE's."""
    _, vae, x = ppca_vae(dtype=torch.float32, sigma=0.05, encoder_noise=1.0)
    m, k = 4, 2
    pyro.set_rng_seed(1)
    log_w = MIWAE_ELBO(num_particles=k, num_estimates=m).log_weights(vae.model, vae.guide, x)
    share = torch.logsumexp(log_w, 1) - torch.logsumexp(log_w, (0, 1))  # (M, B), log c_m
    assert (share < -104).any()  # e^share is 0 in float32 for some group
    _, grads = pyro_loss_and_gradients(make_objective("piwae", vae, num_particles=k,
                                                      num_estimates=m), x, 1)
    expected = split_reference(vae, x, m, k, 1)
    for name, grad in grads.items():
        assert torch.isfinite(grad).all(), name
        assert_close(grad, expected[name], rtol=1e-4, atol=1e-3, msg=name)


def test_bad_options_are_refused_naming_them():
    _, vae, _ = ppca_vae()
    for kwargs, match in (({"num_estimates": 0}, "num_estimates"),
                          ({"num_estimates": 2.0}, "num_estimates"),
                          ({"ciwae_beta": 0.5}, "miwae estimator takes no option 'ciwae_beta'")):
        with pytest.raises(ConfigError, match=match):
            make_objective("miwae", vae, **kwargs)
    for beta in (-0.1, 1.5, float("nan"), True):
        with pytest.raises(ConfigError, match="ciwae_beta"):
            make_objective("ciwae", vae, ciwae_beta=beta)
    with pytest.raises(ConfigError, match="ciwae_beta must be a number in"):
        CIWAE_ELBO(num_particles=2, ciwae_beta=2.0)
    with pytest.raises(ConfigError, match="num_estimates must be a positive integer, got 0"):
        PIWAE_ELBO(num_particles=2, num_estimates=0)
    with pytest.raises(ConfigError, match=r"num_particles must be a positive integer, got 2\.0"):
        MIWAE_ELBO(num_particles=2.0)
