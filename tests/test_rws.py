"""pyro_vae.objectives.rws: reweighted wake-sleep on the linear-Gaussian models (float64) against
a hand-written per-datapoint version on the same random numbers, for one layer and two; against
Pyro's ReweightedWakeSleep where they agree (one datapoint, one layer); and wake-φ training the
encoder to the exact posterior. Where Pyro's class differs (a minibatch: it weights it as one
datapoint; two layers: its wake-φ gradient flows through z_1), the canaries of those two bugs
are in test_upstream.py."""


import pyro
import pyro.infer
import pytest
import torch
from torch.distributions import Normal

from pyro_vae import ConfigError, make_objective
from pyro_vae.config import TrainConfig
from pyro_vae.models.linear_gaussian import (
    LayerParams,
    PPCAParams,
    kl_to_posterior,
    linear_gaussian_vae,
    sample_model,
    set_to_posterior,
)
from pyro_vae.objectives import RWS_ELBO
from pyro_vae.trainer import Trainer
from tests.conftest import assert_close
from tests.ppca import (
    F64,
    gradients,
    hand_written_draws,
    hand_written_log_joint,
    is_guide,
    iwae,
    ppca_vae,
)


def hand_written_rws(log_p, log_q):
    """(wake-θ loss, wake-φ loss) from log p(x, z) and log q(z|x) ``(K, B)`` at detached
    samples: −Σ_b IWAE_K, and −Σ w̃ log q with w̃ the normalized weights, held fixed."""
    log_w = log_p - log_q.detach()
    normalized = torch.softmax(log_w.detach(), 0)
    return -iwae(log_w).sum(), -(normalized * log_q).sum()


def rws_gradients(wake_theta, wake_phi, vae):
    """The model's gradient of the wake-θ loss, the guide's of the wake-φ loss."""
    theta, phi = gradients(wake_theta, vae), gradients(wake_phi, vae)
    return {n: (phi if is_guide(n) else theta)[n] for n in theta}


def pyro_loss_and_gradients(objective, x, seed):
    pyro.set_rng_seed(seed)
    loss = objective.differentiable_loss(x)
    return loss.detach(), gradients(loss, objective.vae)


@pytest.mark.parametrize("k", [2, 7])
def test_rws_equals_hand_written(k):
    """Per datapoint and particle, log p and log q at the samples; the two losses; and the
    gradient of differentiable_loss: wake-θ's for the model, wake-φ's for the encoder."""
    _, vae, x = ppca_vae()
    objective = make_objective("rws", vae, num_particles=k)
    assert isinstance(objective.elbo, RWS_ELBO)
    z, loc, scale = hand_written_draws(vae, x, k, 3)
    z = z.detach()
    log_p, log_q = hand_written_log_joint(vae, x, z), Normal(loc, scale).log_prob(z).sum(-1)
    pyro.set_rng_seed(3)
    ours = objective.elbo.log_densities(vae.model, vae.guide, x)
    assert_close(ours[0], log_p, rtol=1e-12, atol=1e-12)
    assert_close(ours[1], log_q, rtol=1e-12, atol=1e-12)
    pyro.set_rng_seed(3)
    losses = objective.elbo.loss(vae.model, vae.guide, x)
    for got, want in zip(losses, hand_written_rws(log_p, log_q), strict=True):
        assert_close(got, want, rtol=1e-12)
    pyro.set_rng_seed(3)
    assert objective.loss(x) == pytest.approx(float(losses[0]), rel=1e-12)

    loss, grads = pyro_loss_and_gradients(objective, x, 3)
    wake_theta, wake_phi = hand_written_rws(log_p, log_q)
    assert_close(loss, wake_theta, rtol=1e-12)
    for name, want in rws_gradients(wake_theta, wake_phi, vae).items():
        assert want.abs().max() > 1e-3, name
        assert_close(grads[name], want, rtol=1e-10, atol=1e-12, msg=name)


def test_model_gradient_is_iwaes_and_the_encoders_is_not():
    """The samples are detached, so ∇_θ IWAE_K is the same in both, sample by sample; the
    encoder's gradients differ (wake-φ against IWAE's reparameterized gradient)."""
    _, vae, x = ppca_vae()
    _, rws = pyro_loss_and_gradients(make_objective("rws", vae, num_particles=5), x, 4)
    _, iwae5 = pyro_loss_and_gradients(make_objective("iwae", vae, num_particles=5), x, 4)
    for name in rws:
        if is_guide(name):
            assert (rws[name] - iwae5[name]).abs().max() > 1e-3, name
        else:
            assert_close(rws[name], iwae5[name], rtol=1e-10, atol=1e-12, msg=name)


def test_pyros_class_agrees_on_one_datapoint_and_ours_weights_each_datapoint():
    """One datapoint: Pyro's ReweightedWakeSleep and ours, the same losses and gradients. A
    minibatch of B: our wake-θ loss is Σ_b −IWAE_K(x_b), each datapoint's K particles weighted
    apart (Pyro's weights the B as one datapoint: test_upstream.py has that bug's canary)."""
    _, vae, x = ppca_vae()
    ours = make_objective("rws", vae, num_particles=5).elbo
    pyros = pyro.infer.ReweightedWakeSleep(num_particles=5, vectorize_particles=True,
                                           max_plate_nesting=1)
    results = []
    for elbo in (ours, pyros):
        vae.zero_grad()
        pyro.set_rng_seed(6)
        losses = elbo.loss_and_grads(vae.model, vae.guide, x[:1])
        results.append((losses, {n: p.grad.clone() for n, p in vae.named_parameters()}))
    (a_losses, a), (b_losses, b) = results
    assert a_losses == pytest.approx(b_losses, rel=1e-12)
    for name in a:
        assert a[name].abs().max() > 1e-3, name
        assert_close(a[name], b[name], rtol=1e-10, atol=1e-12, msg=name)

    pyro.set_rng_seed(7)
    log_p, log_q = ours.log_densities(vae.model, vae.guide, x)
    assert log_p.shape == log_q.shape == (5, x.shape[0])
    log_w = (log_p - log_q).detach()
    pyro.set_rng_seed(7)
    assert_close(ours.loss(vae.model, vae.guide, x)[0], -iwae(log_w).sum(), rtol=1e-12)


def two_layer_vae(seed=0):
    """The linear-Gaussian two-layer model (x: 5, z_1: 3, z_2: 2), model learned, guide random."""
    g = torch.Generator().manual_seed(seed)
    dims, sigmas = (5, 3, 2), (0.5, 0.5)
    params = tuple(LayerParams(torch.randn(dims[i], dims[i + 1], generator=g, dtype=F64),
                               torch.randn(dims[i], generator=g, dtype=F64),
                               torch.tensor(sigmas[i], dtype=F64)) for i in range(2))
    vae = linear_gaussian_vae(params, learn_model=True)
    with torch.no_grad():
        for encoder in vae.encoders:
            encoder.A.normal_(generator=g)
            encoder.c.normal_(generator=g)
            encoder.log_scale.uniform_(-1.0, 0.0, generator=g)
    return vae, sample_model(params, 4, torch.Generator().manual_seed(seed + 1))


def hand_written_two_layer(vae, x, k, seed):
    """log p(x, z_1, z_2) and log q(z_1|x) q(z_2|z_1) at the same draws as the guide's, both
    evaluated at the detached samples: ``(K, B)`` each."""
    first, second = vae.encoders
    pyro.set_rng_seed(seed)
    z1 = Normal(*first(x)).rsample((k,))
    z2 = Normal(*second(z1)).rsample()
    z1, z2 = z1.detach(), z2.detach()
    prior = vae.priors[0]
    log_p = (Normal(0.0, 1.0).log_prob(z2).sum(-1)
             + Normal(z2 @ prior.A.T + prior.c, prior.log_scale.exp()).log_prob(z1).sum(-1)
             + Normal(z1 @ vae.decoder.W.T + vae.decoder.mu,
                      vae.likelihood.log_scale.exp()).log_prob(x).sum(-1))
    log_q = Normal(*first(x)).log_prob(z1).sum(-1) + Normal(*second(z1)).log_prob(z2).sum(-1)
    return log_p, log_q


def test_two_layer_wake_phi_gradient_is_at_fixed_samples():
    """q(z_2|z_1) evaluated at the detached z_1: our gradients equal the hand-written ones, on a
    minibatch and on one datapoint. (Pyro's encoder gradient carries ∂_(z_1) log q(z_2|z_1)
    ∂_φ z_1 as well: test_upstream.py has that bug's canary, against this class.)"""
    vae, x = two_layer_vae()
    for data, seed in ((x, 8), (x[:1], 9)):
        log_p, log_q = hand_written_two_layer(vae, data, 6, seed)
        expected = rws_gradients(*hand_written_rws(log_p, log_q), vae)
        _, grads = pyro_loss_and_gradients(make_objective("rws", vae, num_particles=6), data,
                                           seed)
        for name, want in expected.items():
            assert want.abs().max() > 1e-3, name
            assert_close(grads[name], want, rtol=1e-10, atol=1e-12, msg=name)


def test_wake_phi_trains_the_encoder_to_the_exact_posterior():
    """The model fixed, W's columns orthogonal (p(z|x) mean-field): the fixed point of wake-φ
    is q = p(z|x). From KL(q ‖ p(z|x)) of over 5 nats, Adam with a decaying step brings it under
    0.02."""
    g = torch.Generator().manual_seed(0)
    Q, _ = torch.linalg.qr(torch.randn(5, 2, generator=g, dtype=F64))
    params = PPCAParams((Q * torch.tensor([2.0, 1.2], dtype=F64)).contiguous(),
                        torch.randn(5, generator=g, dtype=F64), torch.tensor(0.7, dtype=F64))
    x = sample_model(params, 8, torch.Generator().manual_seed(2))
    vae = linear_gaussian_vae(params, learn_model=False)
    set_to_posterior(vae, params)
    vae.decoder.train(False)
    with torch.no_grad():
        for p in vae.encoder.parameters():
            p.add_(0.4 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1),
                                     dtype=F64))

    def kl():
        loc, scale = vae.encode(x)
        return float(kl_to_posterior(x, loc.detach(), torch.diag_embed(scale[0].detach() ** 2),
                                     params).mean())

    assert kl() > 5
    trainer = Trainer(make_objective("rws", vae, num_particles=10), lr=0.05)
    with pyro.validation_enabled(False):
        for step in range(600):
            trainer.set_lr(0.05 / (1 + step / 50))
            trainer.step(x)
    assert kl() < 0.02, kl()


def test_one_particle_is_refused_at_once():
    _, vae, _ = ppca_vae()
    with pytest.raises(ConfigError, match=r"rws estimator needs num_particles \(-K\) >= 2, got 1"):
        make_objective("rws", vae, num_particles=1)
    with pytest.raises(ConfigError, match="needs num_particles >= 2"):
        RWS_ELBO(num_particles=1)
    with pytest.raises(ConfigError, match="the guide would not learn"):
        TrainConfig(estimator="rws", num_particles=1).validate()
    TrainConfig(estimator="rws", num_particles=2).validate()
