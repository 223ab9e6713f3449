"""pyro_vae.objectives.stl and .dreg: the STL and DReG gradients on the linear-Gaussian model
(float64), against the closed-form ELBO gradient, exact identities, a hand-written DReG, and
each other; and the pieces of objectives/util.py they share with the other estimators
(``particles``, ``reweight_gradients``), against hand-written log-densities."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch.distributions import Normal

from pyro_vae import ConfigError, make_objective
from pyro_vae.models.linear_gaussian import (
    PPCAParams,
    closed_form_elbo,
    kl_to_posterior,
    linear_gaussian_vae,
    sample_model,
    set_to_posterior,
)
from pyro_vae.objectives import IWAE_ELBO, STL_ELBO, DReG_ELBO
from pyro_vae.objectives.util import particles, reweight_gradients
from pyro_vae.trainer import Trainer
from tests.conftest import assert_close

D, L, B = 5, 2, 8


def ppca_params(seed=0) -> PPCAParams:
    """pPCA with W = Q diag(s), Q orthonormal: Wᵀ W is diagonal, so the exact posterior is
    mean-field and the VAE's encoder can represent it."""
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(D, L, generator=g, dtype=torch.float64))
    W = Q * torch.tensor([2.0, 1.2], dtype=torch.float64)
    mu = torch.randn(D, generator=g, dtype=torch.float64)
    return PPCAParams(W, mu, torch.tensor(0.7, dtype=torch.float64))


def make_vae(params, *, at_posterior=False, learn_model=True):
    """The linear-Gaussian VAE with its encoder at the exact posterior, or moved away from it
    (a fixed perturbation, so that every gradient is far from zero)."""
    vae = linear_gaussian_vae(params, learn_model=learn_model)
    with torch.no_grad():  # σ in float64 (the likelihood rounds it through float32)
        vae.likelihood.log_scale.fill_(float(params.sigma.log()))
    set_to_posterior(vae, params)
    vae.decoder.train(learn_model)  # Pyro warns about frozen parameters of a module in training
    if not at_posterior:
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in vae.encoder.parameters():
                p.add_(0.4 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return vae


@pytest.fixture
def params():
    return ppca_params()


@pytest.fixture
def x(params):
    return sample_model(params, B, torch.Generator().manual_seed(2))


def gradients(objective, x, seed, *, num_data=None, via="differentiable_loss"):
    """The loss and every parameter's gradient for one sample (seed), through the ELBO's
    ``differentiable_loss`` and ``.backward()``, through ``loss_and_grads`` (what SVI calls),
    or through ``torch.autograd.grad`` (what benchmarks/gradient_snr.py calls)."""
    vae = objective.vae
    vae.zero_grad(set_to_none=False)
    pyro.set_rng_seed(seed)
    args, kwargs = objective.arguments(x, num_data=num_data)
    if via == "svi":
        loss = objective.elbo.loss_and_grads(objective.model, objective.guide, *args, **kwargs)
    elif via == "autograd.grad":
        loss = objective.elbo.differentiable_loss(objective.model, objective.guide, *args, **kwargs)
        names, params = zip(*vae.named_parameters(), strict=True)
        return loss.item(), dict(zip(names, torch.autograd.grad(loss, params), strict=True))
    else:
        loss = objective.elbo.differentiable_loss(objective.model, objective.guide, *args, **kwargs)
        loss.backward()
        loss = loss.item()
    return loss, {n: p.grad.clone() for n, p in vae.named_parameters()}


def is_encoder(name):
    return name.startswith("encoders.")


def draws(objective, x, n, first_seed=0):
    """``n`` independent gradient estimates, flattened: ``(n, P)``, and the parameter names."""
    rows = []
    for seed in range(first_seed, first_seed + n):
        _, grads = gradients(objective, x, seed)
        rows.append(torch.cat([g.reshape(-1) for g in grads.values()]))
    return torch.stack(rows), list(grads)


def assert_means_agree(a, b, k=4.0):
    """Monte Carlo: the means of two independent samples of vectors (rows) agree within k
    standard errors, coordinate by coordinate."""
    diff = a.mean(0) - b.mean(0)
    se = (a.var(0) / a.shape[0] + b.var(0) / b.shape[0]).sqrt()
    worst = (diff.abs() / se).max()
    assert worst < k, f"max |Δmean| / se = {worst:.2f}"


# --- STL -------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_particles", [1, 4], ids=["K=1", "K=4"])
@pytest.mark.parametrize("num_data", [None, 1000], ids=["batch", "scaled"])
def test_stl_loss_is_trace_loss_for_the_same_sample(params, x, num_particles, num_data):
    vae = make_vae(params)
    stl = make_objective("stl", vae, num_particles=num_particles)
    trace = make_objective("trace", vae, num_particles=num_particles)
    assert isinstance(stl.elbo, STL_ELBO)
    for via in ("differentiable_loss", "svi"):
        a, _ = gradients(stl, x, 5, num_data=num_data, via=via)
        b, _ = gradients(trace, x, 5, num_data=num_data, via=via)
        assert a == b, via
    pyro.set_rng_seed(6)
    a = stl.loss(x, num_data=num_data)
    pyro.set_rng_seed(6)
    assert a == trace.loss(x, num_data=num_data)


@pytest.mark.parametrize("num_particles", [1, 4], ids=["K=1", "K=4"])
def test_stl_gradient_is_trace_gradient_without_the_score_term(params, x, num_particles):
    """Same sample z: the model's gradients are equal, and trace − stl on the encoder is the
    score term (1/K) Σ_k ∇_φ log q_φ(z_k|x) with z_k held fixed, computed here by hand."""
    vae = make_vae(params)
    k = num_particles
    _, stl = gradients(make_objective("stl", vae, num_particles=k), x, 3)
    _, trace = gradients(make_objective("trace", vae, num_particles=k), x, 3)
    loc, scale = vae.encode(x)
    pyro.set_rng_seed(3)
    z = Normal(loc, scale).rsample((k,) if k > 1 else ()).detach()  # the sample Pyro drew
    score = Normal(loc, scale).log_prob(z).sum() / k
    names = [n for n, _ in vae.named_parameters()]
    score_grads = torch.autograd.grad(score, [p for _, p in vae.named_parameters()],
                                      allow_unused=True)
    for name, g in zip(names, score_grads, strict=True):
        if is_encoder(name):
            assert g.abs().max() > 0.1  # the term STL removes is not negligible here
            assert_close(trace[name] - stl[name], g, rtol=1e-10, atol=1e-12, msg=name)
        else:
            assert g is None
            assert_close(stl[name], trace[name], rtol=0, atol=0, msg=name)


def exact_elbo_gradient(vae, x):
    """∇ of the negated closed-form ELBO summed over the batch, w.r.t. every parameter."""
    W, mu = vae.decoder.W, vae.decoder.mu
    sigma = vae.likelihood.log_scale.exp().squeeze()
    loc, scale = vae.encode(x)
    elbo = closed_form_elbo(x, loc, torch.diag_embed(scale[0] ** 2), PPCAParams(W, mu, sigma))
    grads = torch.autograd.grad(-elbo.sum(), list(vae.parameters()))
    return torch.cat([g.reshape(-1) for g in grads])


@pytest.mark.parametrize("name", ["stl", "trace"])
def test_stl_and_trace_estimate_the_exact_elbo_gradient(params, x, name):
    """Both are unbiased: their Monte Carlo means lie within 4 standard errors of the
    closed-form gradient, for every encoder and decoder parameter."""
    vae = make_vae(params)
    samples, _ = draws(make_objective(name, vae), x, 300)
    exact = exact_elbo_gradient(vae, x)
    se = samples.std(0) / math.sqrt(samples.shape[0])
    z = (samples.mean(0) - exact).abs() / se
    assert z.max() < 4, f"max |mean − exact| / se = {z.max():.2f}"


def test_stl_and_trace_have_the_same_expected_gradient(params, x):
    vae = make_vae(params)
    a, _ = draws(make_objective("stl", vae), x, 300, first_seed=0)
    b, _ = draws(make_objective("trace", vae), x, 300, first_seed=10_000)
    assert_means_agree(a, b)


@pytest.mark.parametrize(
    "name, num_particles, vanishes",
    [("stl", 1, True), ("stl", 5, True), ("dreg", 5, True), ("dreg", 50, True),
     ("trace", 1, False), ("iwae", 5, False)],
    ids=["stl-K1", "stl-K5", "dreg-K5", "dreg-K50", "trace-K1", "iwae-K5"],
)
def test_encoder_gradient_at_the_exact_posterior(params, x, name, num_particles, vanishes):
    """q(z|x) = p(z|x): log p(x, z) − log q(z|x) = log p(x) for every z, so the path
    derivative is zero for every sample (STL, DReG: variance zero), while the score term
    keeps trace's and iwae's encoder gradients random."""
    vae = make_vae(params, at_posterior=True)
    loc, scale = vae.encode(x)
    assert kl_to_posterior(x, loc, torch.diag_embed(scale[0] ** 2), params).max() < 1e-12
    samples, names = draws(make_objective(name, vae, num_particles=num_particles), x, 20)
    sizes = [p.numel() for p in vae.parameters()]
    encoder = torch.cat([torch.full((s,), is_encoder(n)) for n, s in zip(names, sizes,
                                                                          strict=True)])
    enc, dec = samples[:, encoder], samples[:, ~encoder]
    assert dec.std(0).min() > 1e-3  # the model's gradient stays random for every estimator
    if vanishes:
        assert enc.abs().max() < 1e-10
    else:
        assert enc.std(0).min() > 1e-2


# --- DReG ------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_particles", [1, 5], ids=["K=1", "K=5"])
@pytest.mark.parametrize("num_data", [None, 1000], ids=["batch", "scaled"])
def test_dreg_loss_is_iwae_loss_for_the_same_sample(params, x, num_particles, num_data):
    vae = make_vae(params)
    dreg = make_objective("dreg", vae, num_particles=num_particles)
    iwae = make_objective("iwae", vae, num_particles=num_particles)
    assert isinstance(dreg.elbo, DReG_ELBO)
    assert dreg.num_particles == num_particles
    for via in ("differentiable_loss", "svi"):
        a, _ = gradients(dreg, x, 5, num_data=num_data, via=via)
        b, _ = gradients(iwae, x, 5, num_data=num_data, via=via)
        assert_close(a, b, rtol=1e-13, atol=0, msg=via)
    pyro.set_rng_seed(6)
    a = dreg.loss(x, num_data=num_data)
    pyro.set_rng_seed(6)
    assert a == iwae.loss(x, num_data=num_data)


def hand_written_dreg(vae, x, k, seed):
    """DReG from its definition, in plain torch (Tucker et al. 2019): loss −IWAE_K; encoder
    gradient of −Σ w̃_k² log w_k(q's parameters fixed), decoder gradient of −Σ w̃_k log w_k."""
    loc, scale = vae.encode(x)
    pyro.set_rng_seed(seed)
    z = Normal(loc, scale).rsample((k,))  # (K, B, L), the same draw as Pyro's guide
    log_p = Normal(0.0, 1.0).log_prob(z).sum(-1) + vae.decode(z).log_prob(x)
    log_w = log_p - Normal(loc.detach(), scale.detach()).log_prob(z).sum(-1)  # (K, B)
    w = torch.softmax(log_w.detach(), 0)
    encoder = list(vae.encoder.parameters())
    decoder = list(vae.decoder.parameters()) + list(vae.likelihood.parameters())
    enc = torch.autograd.grad(-(w**2 * log_w).sum(), encoder, retain_graph=True)
    dec = torch.autograd.grad(-(w * log_w).sum(), decoder)
    loss = -(torch.logsumexp(log_w, 0) - math.log(k)).sum()
    return loss, enc + dec


@pytest.mark.parametrize("num_particles", [5, 50], ids=["K=5", "K=50"])
def test_dreg_equals_a_hand_written_dreg(params, x, num_particles):
    vae = make_vae(params)
    loss, grads = gradients(make_objective("dreg", vae, num_particles=num_particles), x, 8)
    expected_loss, expected = hand_written_dreg(vae, x, num_particles, 8)
    assert_close(loss, expected_loss, rtol=1e-12)
    names = [n for n, _ in vae.encoder.named_parameters()]
    names += [n for n, _ in vae.decoder.named_parameters()]
    names += [n for n, _ in vae.likelihood.named_parameters()]
    assert len(names) == len(grads) == len(list(vae.parameters()))
    for got, want in zip(grads.values(), expected, strict=True):
        assert want.abs().max() > 1e-3
        assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_dreg_model_gradient_is_the_iwae_model_gradient_sample_by_sample(params, x):
    vae = make_vae(params)
    _, dreg = gradients(make_objective("dreg", vae, num_particles=5), x, 4)
    _, iwae = gradients(make_objective("iwae", vae, num_particles=5), x, 4)
    for name in dreg:
        if is_encoder(name):
            assert (dreg[name] - iwae[name]).abs().max() > 1e-3  # the estimators differ here
        else:
            assert_close(dreg[name], iwae[name], rtol=1e-10, atol=1e-12, msg=name)


def test_dreg_with_one_particle_is_stl(params, x):
    """K = 1: w̃ = 1, so DReG's gradient is the path derivative, sample by sample."""
    vae = make_vae(params)
    _, dreg = gradients(make_objective("dreg", vae, num_particles=1), x, 4)
    _, stl = gradients(make_objective("stl", vae, num_particles=1), x, 4)
    for name in dreg:
        assert_close(dreg[name], stl[name], rtol=1e-10, atol=1e-12, msg=name)


def test_dreg_and_iwae_have_the_same_expected_gradient(params, x):
    """E[Σ w̃_k² ∂_φ(path) log w_k] = E[Σ w̃_k ∇_φ log w_k] (Tucker et al. 2019), for encoder
    and decoder, within 4 standard errors; the decoder is random here too."""
    vae = make_vae(params)
    a, _ = draws(make_objective("dreg", vae, num_particles=5), x, 300, first_seed=0)
    b, _ = draws(make_objective("iwae", vae, num_particles=5), x, 300, first_seed=10_000)
    assert_means_agree(a, b)


@pytest.mark.parametrize(
    "name, num_particles",
    [("stl", 1), ("stl", 3), ("dreg", 1), ("dreg", 5)],
    ids=["stl-K1", "stl-K3", "dreg-K1", "dreg-K5"],
)
def test_svi_and_autograd_gradients_equal_differentiable_loss_gradient(
    params, x, name, num_particles
):
    """SVI's path (loss_and_grads) and torch.autograd.grad (which DReG's gradient hooks must
    also serve) give the gradient of differentiable_loss, sample by sample."""
    vae = make_vae(params)
    objective = make_objective(name, vae, num_particles=num_particles)
    b_loss, b = gradients(objective, x, 9)
    for via in ("svi", "autograd.grad"):
        a_loss, a = gradients(objective, x, 9, via=via)
        assert_close(a_loss, b_loss, rtol=1e-13)
        for n in a:
            assert_close(a[n], b[n], rtol=1e-10, atol=1e-12, msg=f"{via}: {n}")


@pytest.mark.parametrize("name", ["stl", "dreg"])
def test_svi_trains_the_encoder_to_the_exact_posterior(params, x, name):
    """With the model fixed, the optimum of the ELBO and of IWAE_K in a family that holds
    p(z|x) is q = p(z|x): SVI from a distant encoder must end there (KL ≈ 0)."""
    vae = make_vae(params, learn_model=False)
    loc, scale = vae.encode(x)
    kl = kl_to_posterior(x, loc.detach(), torch.diag_embed(scale[0].detach() ** 2), params)
    assert kl.mean() > 0.5
    trainer = Trainer(make_objective(name, vae), lr=0.05)
    for _ in range(400):
        trainer.step(x)
    loc, scale = vae.encode(x)
    kl = kl_to_posterior(x, loc.detach(), torch.diag_embed(scale[0].detach() ** 2), params)
    assert kl.mean() < 1e-4, kl


# --- the shared pieces: particles and reweight_gradients ---------------------------------------


@pytest.mark.parametrize("k", [1, 5], ids=["K=1", "K=5"])
def test_particles_are_the_hand_written_log_densities(params, x, k):
    """``particles``: K vectorized particles (a plate of K, K = 1 too), log p(x, z_k),
    log q(z_k|x) and log w_k ``(K, B)`` from the same draws as by hand; log q at fixed
    parameters has log q's value and the path term only as its gradient; the views hold the
    samples' values."""
    vae = make_vae(params)
    pyro.set_rng_seed(3)
    p = particles(IWAE_ELBO(num_particles=k), vae.model, vae.guide, (x,), {}, estimator="dreg",
                  views=True, fixed=True)
    loc, scale = vae.encode(x)
    pyro.set_rng_seed(3)
    z = Normal(loc, scale).rsample((k,))  # (K, B, L), the draws of Pyro's guide
    log_p = Normal(0.0, 1.0).log_prob(z).sum(-1) + vae.decode(z).log_prob(x)
    log_q = Normal(loc, scale).log_prob(z).sum(-1)
    for got, want in ((p.log_p, log_p), (p.log_q, log_q), (p.log_w, log_p - log_q),
                      (p.log_q_fixed, log_q)):
        assert got.shape == (k, B)
        assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert set(p.views) == {"z"} and p.views["z"].shape == (k, B, L)
    assert_close(p.views["z"], z, rtol=0, atol=0)
    encoder = list(vae.encoder.parameters())
    path = Normal(loc.detach(), scale.detach()).log_prob(z).sum()
    for got, want in zip(torch.autograd.grad(p.log_q_fixed.sum(), encoder),
                         torch.autograd.grad(path, encoder), strict=True):
        assert want.abs().max() > 1e-3
        assert_close(got, want, rtol=1e-10, atol=1e-12)
    without = particles(IWAE_ELBO(num_particles=k), vae.model, vae.guide, (x,), {},
                        estimator="dreg")
    assert without.log_q_fixed is None and without.views == {}


def test_reweight_gradients_scales_what_reaches_each_sample_from_the_model(params, x):
    """A hook on the model's view of z multiplies the gradient flowing back through it by the
    weights ``(K, B)``: the guide's gradient of Σ log p(x, z_k) becomes that of
    Σ w_kb log p(x_b, z_kb), the model's (which does not pass through z) is unchanged."""
    vae = make_vae(params)
    k = 4
    weights = torch.rand(k, B, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    pyro.set_rng_seed(3)
    p = particles(IWAE_ELBO(num_particles=k), vae.model, vae.guide, (x,), {}, estimator="piwae",
                  views=True)
    reweight_gradients(p.views, weights, "piwae")
    got = {n: g for n, g in zip([n for n, _ in vae.named_parameters()],
                                torch.autograd.grad(p.log_p.sum(), list(vae.parameters())),
                                strict=True)}
    loc, scale = vae.encode(x)
    pyro.set_rng_seed(3)
    z = Normal(loc, scale).rsample((k,))
    log_p = Normal(0.0, 1.0).log_prob(z).sum(-1) + vae.decode(z).log_prob(x)
    names, parameters = zip(*vae.named_parameters(), strict=True)
    weighted = torch.autograd.grad((weights * log_p).sum(), parameters, retain_graph=True)
    plain = torch.autograd.grad(log_p.sum(), parameters)
    for name, w_grad, grad in zip(names, weighted, plain, strict=True):
        want = w_grad if is_encoder(name) else grad
        assert want.abs().max() > 1e-3, name
        assert_close(got[name], want, rtol=1e-10, atol=1e-12, msg=name)
    with pytest.raises(ConfigError, match=r"the piwae estimator: latent site 'z' has shape "
                                          r"\(3, 8, 2\), which does not start with the "
                                          r"log-weights' shape \(4, 8\)"):
        reweight_gradients({"z": torch.zeros(3, B, L)}, weights, "piwae")


# --- misuse ----------------------------------------------------------------------------------


def test_dreg_rejects_a_non_reparameterized_guide():
    x = torch.tensor([0.0, 1.0, 1.0])

    def model(x):
        with pyro.plate("data", 3):
            c = pyro.sample("c", dist.Bernoulli(0.5))
            pyro.sample("x", dist.Normal(c, 1.0), obs=x)

    def guide(x):
        p = pyro.param("p", torch.full((3,), 0.5))
        with pyro.plate("data", 3):
            pyro.sample("c", dist.Bernoulli(p))

    with pytest.raises(ConfigError, match="needs reparameterized guide sites; 'c' is not"):
        DReG_ELBO(num_particles=2).differentiable_loss(model, guide, x)
