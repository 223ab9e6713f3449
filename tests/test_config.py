"""pyro_vae.config: every field of TrainConfig checked (type and range) before any work, the
sizes it describes, and what a resumed run may change. (What a configuration builds is
tests/test_build.py's; its schedules tests/test_schedules.py's.)"""

import dataclasses

import pytest

from pyro_vae import ConfigError
from pyro_vae.config import RESUMABLE_FIELDS, TrainConfig, resumed_config

BAD_VALUES = {
    "epochs": (0, "epochs must be (a positive integer|an integer >= 1), got 0"),
    "batch_size": (True, "batch_size must be int, got True"),
    "lr": (float("nan"), "lr must be (a positive (finite )?number|a number > 0), got nan"),
    "beta": ("abc", "beta must be float or int, got 'abc'"),
    "hidden_sizes": (5, "hidden_sizes must be tuple or None, got 5"),
    "latent_dim": (2.5, "latent_dim must be int or None, got 2.5"),
    # the exact bound: 2**32 - 1 written as 4.29497e+09 would be another number
    "seed": (-1, r"seed must be an integer in \[0, (2\*\*32 - 1|4294967295)\], got -1"),
    "estimator": ("elbo", "unknown estimator 'elbo'"),
    "likelihood": ("mse", "unknown likelihood 'mse'; known: bernoulli"),
    "lr_schedule": ("cosine", "unknown lr_schedule 'cosine'"),
    "dataset": ("cifar", r"unknown data set 'cifar'; known: mnist, fashion-mnist, or an \.npz "
                          r"file of your own"),
    "scale_to_data": (1, "scale_to_data must be bool, got 1"),
    "device": ("tpu", r"unknown device 'tpu'; use 'cpu' or 'cuda'"),
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


@pytest.mark.parametrize("device", ["cpu", "cuda", "cuda:0", "cuda:7"])
def test_validate_checks_the_form_of_the_device_not_this_machine(device):
    """A run trained on a GPU has device "cuda" in its saved configuration, and must load on
    a machine without one: whether this machine has the device is asked where a run starts
    (pyro_vae.checks.device, tests/test_build.py)."""
    assert TrainConfig(device=device).validate().device == device
    assert TrainConfig.from_dict(TrainConfig(device=device).to_dict()).device == device


@pytest.mark.parametrize("device", ["gpu", "cpu:0", "cuda:", "cuda:x", "cuda:-1", "mps", ""])
def test_a_device_of_another_form_is_refused(device):
    with pytest.raises(ConfigError, match=rf"^unknown device {device!r}; use 'cpu' or 'cuda'$"):
        TrainConfig(device=device).validate()


def test_config_round_trips_through_a_dict_and_refuses_unknown_keys():
    config = TrainConfig(hidden_sizes=(8, 4), estimator="iwae", num_particles=3)
    assert TrainConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match="unknown configuration keys: learning_rate"):
        TrainConfig.from_dict({**config.to_dict(), "learning_rate": 1})
    with pytest.raises(ConfigError, match="a configuration is a dict, found a list"):
        TrainConfig.from_dict([])


def test_layer_sizes_are_the_presets_with_the_overrides_of_a_one_layer_network():
    assert TrainConfig().layer_sizes == ((50,), ((400,),), "softplus")
    assert TrainConfig(preset="burda", latent_dim=8, hidden_sizes=(16, 4),
                       activation="relu").layer_sizes == ((8,), ((16, 4),), "relu")
    assert TrainConfig(preset="burda2").layer_sizes == (
        (100, 50), ((200, 200), (100, 100)), "tanh")
    with pytest.raises(ConfigError, match="the burda2 preset has 2 stochastic layers of fixed "
                                          "sizes"):
        TrainConfig(preset="burda2", latent_dim=8).validate()


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


def test_a_run_trained_on_a_gpu_may_resume_on_the_cpu_and_back():
    """The device is resumable, in either direction, whatever this machine has (its form is
    checked: a device of another form is refused)."""
    on_gpu = resumed_config(TrainConfig(device="cpu"), {"device": "cuda"})
    assert on_gpu.device == "cuda"
    assert resumed_config(on_gpu, {"device": "cpu"}).device == "cpu"
    with pytest.raises(ConfigError, match="unknown device 'tpu'"):
        resumed_config(on_gpu, {"device": "tpu"})
