"""The linear-Gaussian hierarchical VAE: the closed forms (log p(x), the ELBO, the exact
posterior) against each other and against Monte Carlo, and every registry estimator's bound on
the two-layer model against them, with Gaussian and IAF guides."""

import math

import pyro
import pytest
import torch
from torch.distributions import MultivariateNormal, Normal, kl_divergence

from pyro_vae import ESTIMATORS, ConfigError, make_objective
from pyro_vae.models.linear_gaussian import (
    LayerParams,
    closed_form_elbo,
    exact_posterior,
    guide_joint,
    linear_gaussian_vae,
    log_marginal,
    prior_joint,
    sample_model,
    set_to_posterior,
)
from pyro_vae.objectives import IWAE_ELBO, STL_ELBO, Bound, DReG_ELBO, check_compatible
from tests.conftest import assert_close

F64 = torch.float64
DIMS = (6, 3, 2)  # x, z_1, z_2


def chain(seed=0, dims=DIMS, sigmas=(0.5, 0.5)) -> tuple[LayerParams, ...]:
    g = torch.Generator().manual_seed(seed)
    return tuple(LayerParams(torch.randn(dims[i], dims[i + 1], generator=g, dtype=F64),
                             torch.randn(dims[i], generator=g, dtype=F64),
                             torch.tensor(sigmas[i], dtype=F64)) for i in range(len(sigmas)))


def random_guide(vae, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for encoder in vae.encoders:
            encoder.A.normal_(generator=g)
            encoder.c.normal_(generator=g)
            encoder.log_scale.uniform_(-1.0, 0.5, generator=g)
    return vae


def off_posterior_vae(params, **kwargs):
    """The guide near, not at, the exact posterior, so that the ELBO is not tight."""
    vae = linear_gaussian_vae(params, **kwargs)
    set_to_posterior(vae, params)
    with torch.no_grad():
        for encoder in vae.encoders:
            encoder.A.mul_(0.85)
            encoder.c.add_(0.1)
            encoder.log_scale.add_(0.2)
    return vae


# --- the closed forms -----------------------------------------------------------------------


def test_log_marginal_is_the_density_of_model_samples():
    """The moments of 200,000 draws from the model, top down, against μ_0 and Σ_0 implied by
    log_marginal (its gradient and Hessian in x at 0 give Σ_0⁻¹ μ_0 and −Σ_0⁻¹)."""
    params = chain(seed=1)
    x = sample_model(params, 200_000, torch.Generator().manual_seed(2))
    hessian = torch.autograd.functional.hessian(lambda v: log_marginal(v[None], params)[0],
                                                torch.zeros(DIMS[0], dtype=F64))
    cov = torch.linalg.inv(-hessian)
    assert_close(torch.cov(x.T), cov, rtol=0, atol=0.05 * float(cov.abs().max()))
    mean = torch.autograd.functional.jacobian(
        lambda v: log_marginal(v[None], params)[0], torch.zeros(DIMS[0], dtype=F64)) @ cov
    assert_close(x.mean(0), mean, rtol=0, atol=0.02 * float(cov.diagonal().max().sqrt()) + 0.02)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_elbo_plus_kl_to_the_posterior_is_log_px_for_any_guide(seed):
    """ELBO (expectations in closed form) + KL(q ‖ p(z|x)) (torch's, on Bayes' posterior) =
    log p(x) (covariances propagated from the top): three independent computations."""
    params = chain(seed)
    x = sample_model(params, 8, torch.Generator().manual_seed(seed))
    vae = random_guide(linear_gaussian_vae(params), seed + 10)
    q_mean, q_cov = guide_joint(vae, x)
    post_mean, post_cov = exact_posterior(x, params)
    elbo = closed_form_elbo(x, q_mean, q_cov, params)
    kl = kl_divergence(MultivariateNormal(q_mean, q_cov), MultivariateNormal(post_mean, post_cov))
    log_px = log_marginal(x, params)
    assert_close(elbo + kl, log_px, rtol=0, atol=1e-8)
    assert (kl > 0).all()


def test_the_posterior_is_bayes_rule_and_tightens_the_elbo():
    """log p(z) + log p(x|z_1) − log p(z|x) = log p(x) at arbitrary z; the ELBO of the exact
    posterior is log p(x)."""
    params = chain()
    x = sample_model(params, 4, torch.Generator().manual_seed(4))
    post_mean, post_cov = exact_posterior(x, params)
    prior_mean, prior_cov = prior_joint(params)
    z = torch.randn(5, 4, sum(DIMS[1:]), dtype=F64)
    W1, b1, sigma1 = params[0]
    log_joint = (MultivariateNormal(prior_mean, prior_cov).log_prob(z)
                 + Normal(z[..., :DIMS[1]] @ W1.T + b1, sigma1).log_prob(x).sum(-1))
    log_post = MultivariateNormal(post_mean, post_cov).log_prob(z)
    assert_close(log_joint - log_post, log_marginal(x, params).expand(5, 4), rtol=0, atol=1e-9)
    assert_close(closed_form_elbo(x, post_mean, post_cov, params), log_marginal(x, params),
                 rtol=0, atol=1e-9)


def test_set_to_posterior_is_exact_when_the_conditionals_are_diagonal():
    W1 = torch.linalg.qr(torch.randn(6, 3, dtype=F64))[0] * torch.tensor([2.0, 1.0, 0.5],
                                                                          dtype=F64)
    W2 = torch.zeros(3, 2, dtype=F64)
    W2[0, 0], W2[1, 1] = 1.5, 0.7
    params = (LayerParams(W1, torch.randn(6, dtype=F64), torch.tensor(0.4, dtype=F64)),
              LayerParams(W2, torch.randn(3, dtype=F64), torch.tensor(0.6, dtype=F64)))
    vae = linear_gaussian_vae(params)
    set_to_posterior(vae, params)
    x = sample_model(params, 5)
    q_mean, q_cov = guide_joint(vae, x)
    post_mean, post_cov = exact_posterior(x, params)
    assert_close(q_mean, post_mean, rtol=0, atol=1e-10)
    assert_close(q_cov, post_cov, rtol=0, atol=1e-10)


# --- every estimator against the closed forms --------------------------------------------------


def monte_carlo_bound(name, vae, x, *, num_particles=1, replicas=200, repeats=25, **options):
    """Mean and standard error of −loss per datapoint, ``x`` replicated in one batch."""
    objective = make_objective(name, vae, num_particles=num_particles, **options)
    batch = x.repeat(replicas, 1)
    values = torch.tensor([-objective.loss(batch) / batch.shape[0] for _ in range(repeats)],
                          dtype=F64)
    return float(values.mean()), float(values.std() / math.sqrt(repeats))


@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_every_estimator_matches_the_closed_form_elbo_or_refuses(name):
    """With one particle, −loss of every estimator that trains the two-layer model is an
    unbiased estimate of its ELBO (rws needs two; PIWAE's IWAE_MK needs M = 1); the
    multi-sample bounds with 10 lie between it and log p(x)."""
    params = chain()
    vae = off_posterior_vae(params)
    try:
        check_compatible(name, vae.structure)
    except ConfigError:
        with pytest.raises(ConfigError, match=f"the {name} estimator cannot train"):
            make_objective(name, vae)
        return
    x = sample_model(params, 4, torch.Generator().manual_seed(5))
    elbo = float(closed_form_elbo(x, *guide_joint(vae, x), params).mean())
    log_px = float(log_marginal(x, params).mean())
    assert log_px - elbo > 1.0
    estimator = ESTIMATORS[name]
    if estimator.min_particles == 1:
        one = {"num_estimates": 1} if estimator.bound is Bound.IWAE_MK else {}
        mean, se = monte_carlo_bound(name, vae, x, **one)
        assert abs(mean - elbo) < 4 * se, (name, mean, elbo, se)
    if estimator.bound is not Bound.ELBO:
        mean_k, se_k = monte_carlo_bound(name, vae, x, num_particles=10, repeats=10)
        assert elbo + 4 * se_k < mean_k < log_px + 4 * se_k, (name, elbo, mean_k, log_px)


def test_pyros_own_mean_field_elbo_is_biased_here_and_ours_is_not():
    """Pyro's MeanField_ELBO takes KL(q(z_1|x) ‖ p(z_1|z_2)) although the guide draws z_2
    from z_1: its bound misses the closed form by many standard errors; the registry's
    meanfield (the KL of the top layer only) matches it."""
    params = chain()
    vae = off_posterior_vae(params)
    x = sample_model(params, 4, torch.Generator().manual_seed(5))
    elbo = float(closed_form_elbo(x, *guide_joint(vae, x), params).mean())
    batch = x.repeat(200, 1)
    pyros = pyro.infer.TraceMeanField_ELBO()
    with pyro.validation_enabled(False):  # with it on, Pyro warns of the site order
        values = torch.tensor([-pyros.loss(vae.model, vae.guide, batch) / batch.shape[0]
                               for _ in range(25)], dtype=F64)
    mean, se = float(values.mean()), float(values.std() / 5)
    assert abs(mean - elbo) > 10 * se, (mean, elbo, se)
    ours, ours_se = monte_carlo_bound("meanfield", vae, x)
    assert abs(ours - elbo) < 4 * ours_se


def identity_flows(vae):
    """Zero the last layer of every MADE: each transform is then z ↦ 0 + e⁰ z."""
    with torch.no_grad():
        for flow in vae.flows:
            for transform in flow.transforms:
                transform.nn.layers[-1].weight.zero_()
                transform.nn.layers[-1].bias.zero_()
    return vae


@pytest.mark.parametrize("name", ["trace", "meanfield", "iwae"])
def test_an_iaf_guide_at_the_identity_has_the_gaussian_guides_bound(name):
    """With every IAF at the identity, the flow guide is its Gaussian base: each estimator's
    bound is the closed form, through Pyro's transformed distributions and their caches."""
    params = chain()
    torch.manual_seed(0)
    vae = identity_flows(off_posterior_vae(params, flow="iaf", flow_layers=2))
    x = sample_model(params, 4, torch.Generator().manual_seed(5))
    elbo = float(closed_form_elbo(x, *guide_joint(vae, x), params).mean())
    mean, se = monte_carlo_bound(name, vae, x)
    assert abs(mean - elbo) < 4 * se, (name, mean, elbo, se)


def test_with_an_iaf_guide_the_bounds_rise_with_k_to_log_px():
    """A genuine IAF guide (each MADE's output layer at 0.3 of its initial weights): ELBO <
    IWAE_10 < IWAE_500, which reaches log p(x) up to under 5 % of the ELBO's gap."""
    params = chain()
    torch.manual_seed(0)
    vae = off_posterior_vae(params, flow="iaf", flow_layers=2)
    with torch.no_grad():
        for flow in vae.flows:
            for transform in flow.transforms:
                transform.nn.layers[-1].weight.mul_(0.3)
                transform.nn.layers[-1].bias.mul_(0.3)
    x = sample_model(params, 4, torch.Generator().manual_seed(5))
    log_px = float(log_marginal(x, params).mean())
    elbo, se1 = monte_carlo_bound("trace", vae, x)
    iwae10, se10 = monte_carlo_bound("iwae", vae, x, num_particles=10, repeats=10)
    iwae500, se500 = monte_carlo_bound("iwae", vae, x, num_particles=500, replicas=20,
                                       repeats=10)
    assert elbo + 4 * se1 < iwae10 - 4 * se10 and iwae10 + 4 * se10 < iwae500 - 4 * se500
    assert iwae500 < log_px + 4 * se500
    assert log_px - iwae500 < 0.05 * (log_px - elbo), (elbo, iwae500, log_px)


def mean_guide_gradient(elbo, vae, x, draws):
    """Mean and standard error over ``draws`` of the gradient of the guide's parameters."""
    values = []
    for _ in range(draws):
        vae.zero_grad()
        elbo.differentiable_loss(vae.model, vae.guide, x).backward()
        values.append(torch.cat([p.grad.flatten() for p in vae.encoders.parameters()]))
    values = torch.stack(values)
    return values.mean(0), values.std(0) / math.sqrt(draws)


def test_stl_and_dreg_are_unbiased_on_the_two_layer_guide():
    """Both keep ∂_(z_1) log q(z_2|z_1) (they run the guide again at the samples held fixed)
    and dreg reweights each path once: their mean guide gradients are Trace_ELBO's and the
    IWAE gradient. (Hooks on z_1 and z_2 themselves with q's parameters detached, the one-layer
    recipe, missed the IWAE gradient here by more than 8 standard errors.)"""
    params = chain()
    vae = off_posterior_vae(params)
    x = sample_model(params, 4, torch.Generator().manual_seed(5)).repeat(50, 1)
    with pyro.validation_enabled(False):
        pairs = {"stl": (STL_ELBO(), pyro.infer.Trace_ELBO()),
                 "dreg": (DReG_ELBO(num_particles=5), IWAE_ELBO(num_particles=5))}
        z = {}
        for name, (elbo, reference) in pairs.items():
            (a, se_a), (b, se_b) = (mean_guide_gradient(e, vae, x, 300) for e in (elbo,
                                                                                   reference))
            z[name] = float(((a - b) / (se_a**2 + se_b**2).sqrt()).abs().max())
    assert z["stl"] < 4.5 and z["dreg"] < 4.5, z


def hand_written_dreg(vae, x, k, seed):
    """Two-layer DReG from its definition, in plain torch (Tucker et al. 2019): the loss
    −IWAE_K; the guide's gradient of −Σ w̃_k² log w_k with q's parameters held fixed (and z_1
    live in q(z_2|z_1)'s mean), the model's of −Σ w̃_k log w_k."""
    first, second = vae.encoders
    pyro.set_rng_seed(seed)
    loc_1, scale_1 = first(x)
    z_1 = Normal(loc_1, scale_1).rsample((k,))  # (K, B, d_1): the draws of Pyro's guide
    loc_2, scale_2 = second(z_1)
    z_2 = Normal(loc_2, scale_2).rsample()  # (K, B, d_2)
    prior_loc, prior_scale = vae.priors[0](z_2)
    log_p = (Normal(0.0, 1.0).log_prob(z_2).sum(-1)
             + Normal(prior_loc, prior_scale).log_prob(z_1).sum(-1)
             + vae.likelihood(vae.decoder(z_1)).log_prob(x).sum(-1))
    fixed_loc_2 = z_1 @ second.A.detach().T + second.c.detach()
    log_q = (Normal(loc_1, scale_1).log_prob(z_1).sum(-1)
             + Normal(loc_2, scale_2).log_prob(z_2).sum(-1))
    log_q_fixed = (Normal(loc_1.detach(), scale_1.detach()).log_prob(z_1).sum(-1)
                   + Normal(fixed_loc_2, scale_2.detach()).log_prob(z_2).sum(-1))
    w = torch.softmax((log_p - log_q).detach(), 0)
    guide, model = list(vae.encoders.parameters()), [p for n, p in vae.named_parameters()
                                                     if not n.startswith("encoders.")]
    guide_grads = torch.autograd.grad(-(w**2 * (log_p - log_q_fixed)).sum(), guide,
                                      retain_graph=True)
    model_grads = torch.autograd.grad(-(w * (log_p - log_q)).sum(), model)
    loss = -(torch.logsumexp(log_p - log_q, 0) - math.log(k)).sum()
    names = [n for n, _ in vae.named_parameters() if n.startswith("encoders.")]
    names += [n for n, _ in vae.named_parameters() if not n.startswith("encoders.")]
    return loss.item(), dict(zip(names, guide_grads + model_grads, strict=True))


@pytest.mark.parametrize("num_particles", [1, 5, 50], ids=["K=1", "K=5", "K=50"])
def test_dreg_on_the_two_layer_model_equals_a_hand_written_dreg(num_particles):
    """Sample by sample, loss and every parameter's gradient, the model's trained too."""
    params = chain()
    vae = off_posterior_vae(params, learn_model=True)
    x = sample_model(params, 4, torch.Generator().manual_seed(5))
    objective = make_objective("dreg", vae, num_particles=num_particles)
    vae.zero_grad()
    pyro.set_rng_seed(3)
    loss = objective.elbo.differentiable_loss(objective.model, objective.guide, x)
    loss.backward()
    expected_loss, expected = hand_written_dreg(vae, x, num_particles, 3)
    assert_close(loss.item(), expected_loss, rtol=1e-12)
    assert set(expected) == {n for n, _ in vae.named_parameters()}
    for name, p in vae.named_parameters():
        assert expected[name].abs().max() > 1e-3, name
        assert_close(p.grad, expected[name], rtol=1e-9, atol=1e-12, msg=name)


def diagonal_chain():
    """A two-layer chain whose exact posterior the guide holds (the conditionals diagonal)."""
    W1 = torch.linalg.qr(torch.randn(6, 3, dtype=F64, generator=torch.Generator().manual_seed(
        0)))[0] * torch.tensor([2.0, 1.0, 0.5], dtype=F64)
    W2 = torch.zeros(3, 2, dtype=F64)
    W2[0, 0], W2[1, 1] = 1.5, 0.7
    return (LayerParams(W1, torch.linspace(-1, 1, 6, dtype=F64), torch.tensor(0.4, dtype=F64)),
            LayerParams(W2, torch.linspace(0, 1, 3, dtype=F64), torch.tensor(0.6, dtype=F64)))


@pytest.mark.parametrize("name, num_particles, vanishes",
                         [("stl", 1, True), ("stl", 3, True), ("dreg", 5, True),
                          ("trace", 1, False), ("iwae", 5, False)],
                         ids=["stl-K1", "stl-K3", "dreg-K5", "trace-K1", "iwae-K5"])
def test_guide_gradient_at_the_exact_two_layer_posterior(name, num_particles, vanishes):
    """q = p(z_1, z_2|x): log w = log p(x) for every z, so the path derivative (stl, dreg) is
    zero for every sample (dropping ∂_(z_1) log q(z_2|z_1), as detaching q(z_2|z_1)'s
    parameters does, would leave it random), while the score term keeps trace's and iwae's
    guide gradients random."""
    params = diagonal_chain()
    vae = linear_gaussian_vae(params)
    set_to_posterior(vae, params)
    x = sample_model(params, 5, torch.Generator().manual_seed(1))
    objective = make_objective(name, vae, num_particles=num_particles)
    grads = []
    for seed in range(5):
        vae.zero_grad()
        pyro.set_rng_seed(seed)
        objective.elbo.differentiable_loss(objective.model, objective.guide, x).backward()
        grads.append(torch.cat([p.grad.flatten() for p in vae.encoders.parameters()]))
    grads = torch.stack(grads)
    if vanishes:
        assert grads.abs().max() < 1e-10
    else:
        assert grads.std(0).max() > 1e-2


def test_dreg_with_one_particle_is_stl_on_the_two_layer_model():
    """K = 1: w̃ = 1, and both take log q at fixed parameters the same way: sample by sample."""
    params = chain()
    vae = off_posterior_vae(params, learn_model=True)
    x = sample_model(params, 4, torch.Generator().manual_seed(5))
    grads = {}
    for name in ("dreg", "stl"):
        objective = make_objective(name, vae, num_particles=1)
        vae.zero_grad()
        pyro.set_rng_seed(7)
        objective.elbo.differentiable_loss(objective.model, objective.guide, x).backward()
        grads[name] = {n: p.grad.clone() for n, p in vae.named_parameters()}
    for name, g in grads["dreg"].items():
        assert g.abs().max() > 1e-3, name
        assert_close(grads["stl"][name], g, rtol=1e-10, atol=1e-12, msg=name)
