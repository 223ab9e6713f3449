"""Canaries: one test per bug of the installed pyro-ppl (found with 1.9.2) that pyro_vae works
around. Each asserts that the bug is STILL THERE, so it fails the day upstream fixes it: then
the workaround named in its docstring can go (and the canary with it).

Each compares Pyro's class with a reference on the same random numbers (float64, the
linear-Gaussian models of :mod:`tests.ppca` and :mod:`tests.test_rws`), so the failure of a
canary means that Pyro's numbers changed, not noise."""

import pyro
import pyro.infer
import pyro.ops.jit
import pytest
import torch
from torch.distributions import Normal

from pyro_vae.objectives import RWS_ELBO, VR_ELBO
from tests.conftest import assert_close
from tests.ppca import gradients, iwae, ppca_vae
from tests.test_rws import hand_written_rws, hand_written_two_layer, two_layer_vae


def test_jit_trace_elbo_differentiable_loss_doubles_the_gradient():
    """pyro.infer.JitTrace_ELBO.differentiable_loss returns loss + (surrogate − surrogate
    .detach()) without detaching loss: on a reparameterized guide every gradient is exactly
    twice Trace_ELBO's for the same sample (the loss's value is right).

    Workaround: :class:`pyro_vae.objectives.CompiledTrace_ELBO` (pyro_vae/objectives/jit.py)
    overrides ``differentiable_loss`` to detach the loss (the ``jit-trace`` estimator)."""
    _, vae, x = ppca_vae()
    # one model and guide object each: Pyro compiles once per id(model), id(guide)
    model, guide = vae.model, vae.guide
    jit = pyro.infer.JitTrace_ELBO(max_plate_nesting=1, ignore_jit_warnings=True)
    jit.differentiable_loss(model, guide, x)  # compile first: compiling draws random numbers
    pyro.set_rng_seed(3)
    jit_loss = jit.differentiable_loss(model, guide, x)
    jit_grads = gradients(jit_loss, vae)
    pyro.set_rng_seed(3)
    loss = pyro.infer.Trace_ELBO(max_plate_nesting=1).differentiable_loss(model, guide, x)
    assert_close(jit_loss, loss, rtol=1e-12)
    for name, grad in gradients(loss, vae).items():
        assert grad.abs().max() > 1e-3, name
        assert_close(jit_grads[name], 2 * grad, rtol=1e-10, atol=1e-12, msg=name)


def test_jit_trace_mean_field_elbo_compiles_at_every_call(monkeypatch):
    """pyro.infer.JitTraceMeanField_ELBO.differentiable_loss (which its loss_and_grads, hence
    SVI.step, calls) tests ``self._loss_and_surrogate_loss`` for its cache but stores the
    compiled function in ``self._differentiable_loss``: every call builds a new
    pyro.ops.jit.trace and runs torch.jit.trace again, although the arguments are the same.

    Workaround: :class:`pyro_vae.objectives.CompiledMeanField_ELBO`
    (pyro_vae/objectives/jit.py) calls the stored ``_differentiable_loss`` (the
    ``jit-meanfield`` estimator)."""
    compilations = []
    torch_jit_trace = torch.jit.trace

    def counting_trace(*args, **kwargs):
        compilations.append(1)
        return torch_jit_trace(*args, **kwargs)

    monkeypatch.setattr(torch.jit, "trace", counting_trace)
    _, vae, x = ppca_vae()
    model, guide = vae.model, vae.guide  # the same objects: the same compilation key
    elbo = pyro.infer.JitTraceMeanField_ELBO(max_plate_nesting=1, ignore_jit_warnings=True)
    for _ in range(3):
        elbo.differentiable_loss(model, guide, x)
    assert len(compilations) == 3  # once would be right: the arguments did not change
    assert getattr(elbo, "_loss_and_surrogate_loss", None) is None  # the cache it tests ...
    assert isinstance(elbo._differentiable_loss, pyro.ops.jit.CompiledFunction)  # ... not this


def test_reweighted_wake_sleep_weights_a_minibatch_as_one_datapoint():
    """pyro.infer.ReweightedWakeSleep sums each particle's log-weight over the whole minibatch
    ("Mini-batch training is not supported yet"): on a batch of 2 its normalized weights and
    its wake-θ loss are those of one joint datapoint made of both, log w_k = Σ_b log w_kb,
    not those of each datapoint (from the same draws).

    Workaround: :class:`pyro_vae.objectives.RWS_ELBO` (pyro_vae/objectives/rws.py) weights
    each datapoint's K particles apart (``log_densities``, ``_loss``)."""
    _, vae, x = ppca_vae()
    x = x[:2]
    ours = RWS_ELBO(num_particles=5)
    pyros = pyro.infer.ReweightedWakeSleep(num_particles=5, vectorize_particles=True,
                                           max_plate_nesting=1)
    pyro.set_rng_seed(7)
    log_p, log_q = (t.detach() for t in ours.log_densities(vae.model, vae.guide, x))  # (K, 2)
    assert log_p.shape == (5, 2)
    pyro.set_rng_seed(7)
    wake_theta, wake_phi = pyros.loss(vae.model, vae.guide, x)
    # one joint datapoint: the sums over the batch
    joint_theta, joint_phi = hand_written_rws(log_p.sum(1, keepdim=True),
                                              log_q.sum(1, keepdim=True))
    assert_close(wake_theta, joint_theta, rtol=1e-12)
    assert_close(wake_phi, joint_phi, rtol=1e-12)
    # per datapoint (what RWS_ELBO computes): different
    theta, phi = hand_written_rws(log_p, log_q)
    assert_close(theta, -iwae(log_p - log_q).sum(), rtol=1e-12)
    assert abs(float(wake_theta - theta)) > 1e-2
    assert abs(float(wake_phi - phi)) > 1e-2


def test_reweighted_wake_sleep_wake_phi_gradient_flows_through_z1():
    """pyro.infer.ReweightedWakeSleep detaches the samples after the guide has run, so on the
    two-layer guide q(z_1|x) q(z_2|z_1) the parameters of q(z_2|z_1) keep their dependence on
    z_1 = z_1(φ, ε): its wake-φ gradient gains ∂_(z_1) log q(z_2|z_1) ∂_φ z_1, not part of
    ∇_φ log q_φ(z|x) at fixed z. On one datapoint (so that the minibatch bug above plays no
    part) Pyro's gradient equals a hand-written wake-φ with z_1 live in q(z_2|z_1), and differs
    from RWS_ELBO's on z_1's encoder; the model's gradients and z_2's encoder's agree.

    Workaround: :class:`pyro_vae.objectives.RWS_ELBO` (pyro_vae/objectives/rws.py) detaches
    every latent where it is drawn (``_DetachLatents`` in its ``_get_trace``)."""
    vae, x = two_layer_vae()
    one, k, seed = x[:1], 6, 9
    vae.zero_grad()
    pyro.set_rng_seed(seed)
    pyro.infer.ReweightedWakeSleep(num_particles=k, max_plate_nesting=1).loss_and_grads(
        vae.model, vae.guide, one)
    pyros = {n: p.grad.clone() for n, p in vae.named_parameters()}
    pyro.set_rng_seed(seed)
    ours = gradients(RWS_ELBO(num_particles=k).differentiable_loss(vae.model, vae.guide, one),
                     vae)

    # the same draws by hand, with z_1 live where the guide computes q(z_2|z_1) from it
    first, second = vae.encoders
    pyro.set_rng_seed(seed)
    z1 = Normal(*first(one)).rsample((k,))
    z2 = Normal(*second(z1)).rsample().detach()
    log_p, log_q = hand_written_two_layer(vae, one, k, seed)  # at the detached samples
    through_z1 = (Normal(*first(one)).log_prob(z1.detach()).sum(-1)
                  + Normal(*second(z1)).log_prob(z2).sum(-1))
    assert_close(through_z1, log_q, rtol=1e-12, atol=1e-12)  # the same value ...
    wake_phi = -(torch.softmax((log_p - log_q).detach(), 0) * through_z1).sum()
    expected = gradients(wake_phi, vae)  # ... another gradient

    for name, grad in pyros.items():
        if name.startswith("encoders."):
            assert_close(grad, expected[name], rtol=1e-10, atol=1e-12, msg=name)
        if name.startswith("encoders.0"):  # z_1's encoder: the extra path term
            assert (grad - ours[name]).abs().max() > 1e-3, name
        else:
            assert ours[name].abs().max() > 1e-3, name
            assert_close(grad, ours[name], rtol=1e-10, atol=1e-12, msg=name)


def test_renyi_elbo_has_no_differentiable_loss():
    """pyro.infer.RenyiELBO (hence IWAE at α = 0) has ``loss`` and ``loss_and_grads`` only:
    calling ``differentiable_loss`` raises AttributeError, so a torch optimizer, data-parallel
    training or torch.autograd.grad cannot use it.

    Workaround: :class:`pyro_vae.objectives.VR_ELBO` (pyro_vae/objectives/renyi.py) adds a
    ``differentiable_loss`` (Pyro's surrogate, operation for operation), which
    :class:`~pyro_vae.objectives.IWAE_ELBO` and :class:`~pyro_vae.objectives.DReG_ELBO`
    inherit (the ``iwae``, ``renyi`` and ``dreg`` estimators)."""
    _, vae, x = ppca_vae()
    elbo = pyro.infer.RenyiELBO(alpha=0.5, num_particles=3, vectorize_particles=True,
                                max_plate_nesting=1)
    assert not hasattr(pyro.infer.RenyiELBO, "differentiable_loss")
    with pytest.raises(AttributeError, match="differentiable_loss"):
        elbo.differentiable_loss(vae.model, vae.guide, x)
    assert "differentiable_loss" in VR_ELBO.__dict__  # ours is its own, not inherited
