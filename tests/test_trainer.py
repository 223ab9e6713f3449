"""pyro_vae.trainer: one torch Adam over the VAE's parameters, stepping the objective's
differentiable loss, computes what Pyro's SVI with pyro.optim.Adam computes, step by step; its
state round-trips, so a resumed trainer goes on exactly."""

import copy
import math

import pyro
import pyro.optim
import pytest
import torch

from pyro_vae import ESTIMATORS, VAE, CheckpointError, DataError, make_objective
from pyro_vae.trainer import Trainer
from tests.conftest import binary_batch

PYRO_ESTIMATORS = [n for n in ESTIMATORS if n not in ("analytic", "mc")]


def make_vae(likelihood="bernoulli", prefix=""):
    pyro.set_rng_seed(0)
    return VAE(12, latent_dim=3, hidden_sizes=(16,), likelihood=likelihood, prefix=prefix)


def batches(n=6):
    return [binary_batch(16, 12, seed=s) for s in range(n)]


@pytest.mark.parametrize("name", PYRO_ESTIMATORS)
def test_trainer_steps_equal_svi_with_pyro_adam(name):
    """Same initial weights, same seeds: every step's loss and the final weights of our
    Trainer equal those of pyro.infer.SVI with pyro.optim.Adam (torch's fused kernel, as the
    Trainer's) and the same ELBO object.
    (Pyro's param store is global: the second VAE gets its own names.)"""
    ours, theirs = make_vae(), make_vae(prefix="svi_")
    trainer = Trainer(make_objective(name, ours), lr=1e-2)
    assert trainer.optim.param_groups[0]["fused"] is True
    objective = make_objective(name, theirs)
    svi = pyro.infer.SVI(objective.model, objective.guide,
                         pyro.optim.Adam({"lr": 1e-2, "fused": True}), objective.elbo)
    pyro.clear_param_store()
    for step, x in enumerate(batches()):
        pyro.set_rng_seed(100 + step)
        a = trainer.step(x)
        pyro.set_rng_seed(100 + step)
        args, kwargs = objective.arguments(x)
        b = svi.step(*args, **kwargs)
        if isinstance(b, tuple):  # rws: Pyro's pair (wake-θ loss = −IWAE_K, wake-φ loss)
            b = b[0]
        assert a == pytest.approx(b, rel=1e-6), step
    for (n, p), q in zip(ours.named_parameters(), theirs.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=n)


@pytest.mark.parametrize("name", ["meanfield", "analytic", "iwae"])
def test_a_trainer_restored_from_its_state_goes_on_exactly(name):
    vae = make_vae()
    trainer = Trainer(make_objective(name, vae), lr=1e-2)
    data = batches()
    for x in data[:3]:
        trainer.step(x)
    state = copy.deepcopy(trainer.state_dict())
    weights = copy.deepcopy(vae.state_dict())
    rng = torch.get_rng_state()
    straight = [trainer.step(x) for x in data[3:]]

    vae2 = make_vae()
    vae2.load_state_dict(weights)
    restored = Trainer(make_objective(name, vae2), lr=1e-2)
    restored.load_state_dict(state)
    assert restored.steps == 3
    torch.set_rng_state(rng)
    assert [restored.step(x) for x in data[3:]] == straight
    for p, q in zip(vae.parameters(), vae2.parameters(), strict=True):
        assert torch.equal(p, q)


def test_a_state_of_another_model_is_refused():
    small = Trainer(make_objective("meanfield", make_vae()), lr=1e-3)
    small.step(batches(1)[0])
    other = Trainer(make_objective("meanfield", VAE(12, latent_dim=4, hidden_sizes=(16,))),
                    lr=1e-3)
    with pytest.raises(CheckpointError, match="the optimizer state does not fit this model"):
        other.load_state_dict(small.state_dict())


def test_a_non_finite_loss_is_returned_before_any_update():
    """Data in the likelihood's support (the model refuses NaN and infinite values before any
    step) whose loss overflows: the trainer returns it and leaves weights and Adam alone."""
    vae = make_vae("gaussian")
    trainer = Trainer(make_objective("meanfield", vae), lr=1e-2)
    trainer.step(torch.zeros(4, 12))
    before = copy.deepcopy(vae.state_dict())
    adam = copy.deepcopy(trainer.optim.state_dict())
    x = torch.full((4, 12), 1e30)  # finite, but its squared error is not
    with pyro.validation_enabled(False):
        loss = trainer.step(x)
    assert not math.isfinite(loss)
    for name, tensor in vae.state_dict().items():
        assert torch.equal(tensor, before[name]), name
    for index, moments in trainer.optim.state_dict()["state"].items():
        for key, value in moments.items():
            assert torch.equal(value, adam["state"][index][key]), (index, key)
    # infinite data are refused by the model's input check, validation on or off
    with pyro.validation_enabled(False), pytest.raises(
            DataError, match=r"^x: 48 of 48 values are NaN or infinite$"):
        trainer.step(torch.full((4, 12), float("inf")))
    for name, tensor in vae.state_dict().items():
        assert torch.equal(tensor, before[name]), name
