"""pyro_vae.config: every field checked (type and range) before any work, the learning-rate
and KL-weight schedules in closed form, and what a resumed run may change."""

import dataclasses

import pytest

from pyro_vae import ConfigError
from pyro_vae.build import check_device
from pyro_vae.config import RESUMABLE_FIELDS, TrainConfig, resumed_config
from pyro_vae.schedules import beta_at, burda_learning_rate


def test_burda_schedule_closed_form():
    full = 3280
    assert burda_learning_rate(0, full) == pytest.approx(1e-3)
    for i, first_epoch in enumerate([0, 1, 4, 13, 40, 121, 364, 1093]):
        assert burda_learning_rate(first_epoch, full) == pytest.approx(1e-3 * 10 ** (-i / 7))
        if first_epoch:
            assert burda_learning_rate(first_epoch - 1, full) == pytest.approx(
                1e-3 * 10 ** (-(i - 1) / 7))
    assert burda_learning_rate(3279, full) == pytest.approx(1e-4)
    # a budget of 328 epochs shrinks every pass tenfold
    # (the last pass starts at 1093 of 3280, i.e. after epoch 109.3 of 328)
    assert burda_learning_rate(110, 328) == pytest.approx(1e-3 * 10 ** (-7 / 7))
    assert burda_learning_rate(109, 328) == pytest.approx(1e-3 * 10 ** (-6 / 7))


def test_burda_even_schedule_gives_each_rate_an_equal_share():
    rates = [burda_learning_rate(e, 80, 2e-3, even=True) for e in range(80)]
    for i in range(8):
        assert rates[10 * i : 10 * i + 10] == [pytest.approx(2e-3 * 10 ** (-i / 7))] * 10
    # the same rates as the paper's schedule, in the same order
    assert sorted(set(rates), reverse=True) == pytest.approx(
        sorted({burda_learning_rate(e, 3280, 2e-3) for e in range(3280)}, reverse=True))


def test_beta_warmup_rises_linearly_to_beta():
    config = TrainConfig(beta=0.5, beta_warmup_epochs=4)
    assert [beta_at(config, e) for e in range(1, 7)] == [0.125, 0.25, 0.375, 0.5, 0.5, 0.5]
    assert beta_at(TrainConfig(beta=2.0), 1) == 2.0


BAD_VALUES = {
    "epochs": (0, "epochs must be a positive integer, got 0"),
    "batch_size": (True, "batch_size must be int, got True"),
    "lr": (float("nan"), "lr must be a positive finite number, got nan"),
    "beta": ("abc", "beta must be float or int, got 'abc'"),
    "hidden_sizes": (5, "hidden_sizes must be tuple or None, got 5"),
    "latent_dim": (2.5, "latent_dim must be int or None, got 2.5"),
    "seed": (-1, r"seed must be an integer in \[0, 2\*\*32 - 1\], got -1"),
    "estimator": ("elbo", "unknown estimator 'elbo'"),
    "likelihood": ("mse", "unknown likelihood 'mse'; known: bernoulli"),
    "lr_schedule": ("cosine", "unknown lr_schedule 'cosine'"),
    "dataset": ("cifar", "unknown dataset 'cifar'; known: mnist, fashion-mnist"),
    "scale_to_data": (1, "scale_to_data must be bool, got 1"),
    "device": ("tpu", "unknown device 'tpu'|unsupported device 'tpu'"),
    "extra": ([], "extra must be dict, got \\[\\]"),
}


@pytest.mark.parametrize("field", list(BAD_VALUES))
def test_every_field_is_checked_and_named(field):
    value, message = BAD_VALUES[field]
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**{field: value}).validate()


def test_the_seed_range_is_what_pyro_set_rng_seed_accepts():
    TrainConfig(seed=2**32 - 1).validate()
    with pytest.raises(ConfigError, match="seed must be an integer in"):
        TrainConfig(seed=2**32).validate()


def test_config_round_trips_through_a_dict_and_refuses_unknown_keys():
    config = TrainConfig(hidden_sizes=(8, 4), estimator="iwae", num_particles=3)
    assert TrainConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match="unknown configuration keys: learning_rate"):
        TrainConfig.from_dict({**config.to_dict(), "learning_rate": 1})
    with pytest.raises(ConfigError, match="a configuration is a dict, found a list"):
        TrainConfig.from_dict([])


def test_a_resumed_run_may_change_only_the_resumable_fields():
    saved = TrainConfig(epochs=3, batch_size=64)
    resumed = resumed_config(saved, {"epochs": 10, "data_dir": "/data", "device": "cpu",
                                     "batch_size": 64})  # same batch size: not a change
    assert (resumed.epochs, resumed.data_dir, resumed.batch_size) == (10, "/data", 64)
    assert set(RESUMABLE_FIELDS) == {"epochs", "data_dir", "device"}
    names = {"estimator": "--estimator", "lr": "--lr", "batch_size": "--batch-size"}
    with pytest.raises(ConfigError, match=r"cannot resume with a different configuration: "
                       r"--estimator 'iwae' \(saved: 'meanfield'\), --lr 0.5 \(saved: 0.001\), "
                       r"--batch-size 7 \(saved: 64\)\. These would change"):
        resumed_config(saved, {"estimator": "iwae", "lr": 0.5, "batch_size": 7, "epochs": 9},
                       names=names)
    assert dataclasses.asdict(saved)["epochs"] == 3  # the saved config is left alone


def test_cuda_without_a_gpu_is_refused():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ConfigError, match="no CUDA GPU is available; use --device cpu"):
        check_device("cuda")
