"""pyro_vae.fit.fit: reproducibility, metrics, checkpoints, schedules in use, labels."""

import json

import pytest
import torch

from pyro_vae import ConfigError
from pyro_vae.build import load_data
from pyro_vae.config import TrainConfig
from pyro_vae.data import binarize
from pyro_vae.evaluation import mean_elbo
from pyro_vae.fit import fit
from pyro_vae.runs import RunFolder, load_checkpoint
from pyro_vae.schedules import burda_learning_rate
from tests.conftest import assert_close

TINY = dict(train_size=512, test_size=128, hidden_sizes=(32,), latent_dim=4, batch_size=64)


def tiny_config(**kwargs):
    return TrainConfig(**{**TINY, "epochs": 2, **kwargs})


def quiet(*args):
    pass


def test_same_seed_same_result_and_another_seed_differs(tmp_path):
    a = fit(tiny_config(seed=3), progress=False, log=quiet)
    b = fit(tiny_config(seed=3), progress=False, log=quiet)
    c = fit(tiny_config(seed=4), progress=False, log=quiet)
    for key in ("train_objective_nats", "test_elbo"):
        assert [r[key] for r in a.history] == [r[key] for r in b.history]
        assert [r[key] for r in a.history] != [r[key] for r in c.history]
    for p, q in zip(a.vae.parameters(), b.vae.parameters(), strict=True):
        assert torch.equal(p, q)


def test_metrics_and_checkpoint_agree_with_an_independent_evaluation(tmp_path):
    config = tiny_config(epochs=3)
    result = fit(config, tmp_path, progress=False, log=quiet)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert "nats per datapoint" in metrics["units"]
    assert [r["epoch"] for r in metrics["epochs"]] == [1, 2, 3]
    assert metrics["data"]["train_size"] == 512 and metrics["data"]["image_shape"] == [28, 28]
    assert metrics["config"]["estimator"] == "meanfield"
    vae, ckpt = RunFolder(tmp_path).load_vae()
    loaded_config = ckpt.config
    assert ckpt.epoch == 3 and loaded_config == config
    for p, q in zip(vae.parameters(), result.vae.parameters(), strict=True):
        assert torch.equal(p, q)
    # the saved test ELBO, recomputed from the reloaded checkpoint
    data = load_data(loaded_config)
    assert_close(mean_elbo(vae, data.test), metrics["epochs"][-1]["test_elbo"], rtol=1e-6)
    assert metrics["epochs"][-1]["test_elbo"] < 0  # a bound on log p(x) of binary data


def test_training_improves_the_test_elbo():
    result = fit(tiny_config(epochs=6, lr=3e-3), progress=False, log=quiet)
    first, last = result.history[0]["test_elbo"], result.history[-1]["test_elbo"]
    assert last > first + 5  # nats per datapoint


@pytest.mark.parametrize("estimator", ["trace", "iwae", "jit-meanfield", "analytic", "mc"])
def test_every_kind_of_estimator_trains(estimator):
    result = fit(tiny_config(estimator=estimator, epochs=1), progress=False, log=quiet)
    record = result.history[0]
    assert record["train_objective"] == ("IWAE_5" if estimator == "iwae" else "ELBO")
    assert -600 < record["test_elbo"] < 0


def test_scale_to_data_reports_per_datapoint_figures():
    a = fit(tiny_config(epochs=1, scale_to_data=True), progress=False, log=quiet)
    b = fit(tiny_config(epochs=1), progress=False, log=quiet)
    # same seed and sample; Adam is invariant to the loss scale up to its epsilon
    assert_close(a.history[0]["train_objective_nats"], b.history[0]["train_objective_nats"],
                 rtol=1e-3)


def test_beta_warmup_schedule_is_recorded_and_labels_the_objective_of_each_epoch():
    result = fit(tiny_config(epochs=4, beta=0.5, beta_warmup_epochs=2), progress=False,
                 log=quiet)
    assert [r["beta"] for r in result.history] == [0.25, 0.5, 0.5, 0.5]
    assert {r["train_objective"] for r in result.history} == {"beta-ELBO"}
    # warming up to the ELBO: the β-weighted objective until β reaches 1
    result = fit(tiny_config(epochs=3, beta_warmup_epochs=2), progress=False, log=quiet)
    assert [r["train_objective"] for r in result.history] == ["beta-ELBO", "ELBO", "ELBO"]


def test_the_burda_even_schedule_is_what_fit_uses():
    config = tiny_config(epochs=8, lr=2e-3, lr_schedule="burda-even")
    result = fit(config, progress=False, log=quiet)
    assert [r["lr"] for r in result.history] == pytest.approx(
        [burda_learning_rate(e, 8, 2e-3, even=True) for e in range(8)])


def test_test_set_binarization_is_fixed_and_training_binarization_is_dynamic():
    a, b = load_data(tiny_config(seed=1)), load_data(tiny_config(seed=2))
    assert torch.equal(a.test, b.test)
    assert set(a.test.unique().tolist()) == {0.0, 1.0}
    g = torch.Generator().manual_seed(0)
    first, second = binarize(a.train[:64], g), binarize(a.train[:64], g)
    assert not torch.equal(first, second)
    # a fresh draw per minibatch is unbiased: its mean over many draws is the grey level
    draws = torch.stack([binarize(a.train[:8], g) for _ in range(2000)]).mean(0)
    assert (draws - a.train[:8]).abs().max() < 0.05


def test_checkpoint_is_written_every_epoch(tmp_path):
    epochs_seen = []

    def log(line):
        if (tmp_path / "checkpoint.pt").exists():
            epochs_seen.append(load_checkpoint(tmp_path / "checkpoint.pt").epoch)

    fit(tiny_config(epochs=3), tmp_path, progress=False, log=log)
    # log() runs before each epoch's files are written: it sees epochs 1 and 2 saved
    assert epochs_seen == [1, 2]
    assert load_checkpoint(tmp_path).epoch == 3


def test_a_gpu_run_is_refused_at_once_on_a_machine_without_one(tmp_path):
    """TrainConfig.validate checks the device's form only; fit asks whether this machine has
    it, before it reads any data or writes any file."""
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    config = tiny_config(device="cuda").validate()
    with pytest.raises(ConfigError, match=r"^device 'cuda' requested but no CUDA GPU is "
                                          r"available; use --device cpu$"):
        fit(config, tmp_path / "run", progress=False, log=quiet)
    assert not (tmp_path / "run").exists()
    with pytest.raises(ConfigError, match="no CUDA GPU is available"):
        fit(config, progress=False, log=quiet, data=load_data(tiny_config()))
