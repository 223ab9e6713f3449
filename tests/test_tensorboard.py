"""TensorBoard logs (pyro_vae.tensorboard): the event files read back hold the run's own
numbers, epoch by epoch, and its image grids; a missing extra is one line."""

import io
import sys

import matplotlib.image
import numpy as np
import pytest
import torch

from pyro_vae.build import load_data
from pyro_vae.cli import main
from pyro_vae.config import TrainConfig
from pyro_vae.errors import ConfigError
from pyro_vae.evaluation import Execution
from pyro_vae.evaluation.elbo import elbo_terms
from pyro_vae.fit import fit
from pyro_vae.plots.images import image_grid, sample_prior

event_accumulator = pytest.importorskip(
    "tensorboard.backend.event_processing.event_accumulator")

TINY = TrainConfig(train_size=256, test_size=100, batch_size=64, hidden_sizes=(16,),
                   latent_dim=2, epochs=2, seed=0)


def read(folder):
    events = event_accumulator.EventAccumulator(str(folder), size_guidance={"images": 0})
    events.Reload()
    scalars = {tag: [(e.step, e.value) for e in events.Scalars(tag)]
               for tag in events.Tags()["scalars"]}
    images = {tag: [e.step for e in events.Images(tag)] for tag in events.Tags()["images"]}
    return scalars, images


def test_the_event_files_hold_the_runs_numbers(tmp_path):
    result = fit(TINY, tmp_path / "run", tensorboard=tmp_path / "tb", progress=False,
                 log=lambda *a: None)
    scalars, images = read(tmp_path / "tb")
    history = result.history
    assert scalars["test/ELBO (nats)"] == [
        (r["epoch"], pytest.approx(r["test_elbo"], rel=1e-6)) for r in history]
    assert scalars["train/ELBO (nats)"] == [
        (r["epoch"], pytest.approx(r["train_objective_nats"], rel=1e-6)) for r in history]
    assert [v for _, v in scalars["train/learning rate"]] == [pytest.approx(r["lr"], rel=1e-6)
                                                           for r in history]
    steps = [v for _, v in scalars["train/step time (ms)"]]
    assert steps == [pytest.approx(1e3 * r["epoch_seconds"] / r["steps"], rel=1e-5)
                     for r in history]
    # the last epoch's terms, computed again on the trained model from the same seed
    terms = elbo_terms(result.vae.eval(), load_data(TINY).test, num_samples=1,
                       execution=Execution(seed=0))
    assert scalars["test/KL(q(z|x) || p(z)) (nats)"][-1] == (
        2, pytest.approx(float(terms["kl_to_prior"].mean()), rel=1e-6))
    assert scalars["test/E_q[log p(x|z)] (nats)"][-1] == (
        2, pytest.approx(float(terms["expected_loglik"].mean()), rel=1e-6))
    assert images == {"test/inputs and reconstructions": [1, 2],
                      "prior samples (decoder means)": [1, 2]}


@pytest.mark.parametrize("model", [{"preset": "burda2"}, {"model": "tests.own_model:build"}],
                         ids=["two layers", "a model of one's own"])
def test_the_prior_samples_are_the_top_layers_draws_of_any_model(tmp_path, model):
    # the top layer's z, decoded: a two-layer model's z_1 is not what decode takes
    config = TrainConfig(train_size=128, test_size=64, batch_size=64, epochs=1, seed=0, **model)
    result = fit(config, tensorboard=tmp_path / "tb", progress=False, log=lambda *a: None)
    events = event_accumulator.EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0})
    events.Reload()
    (logged,) = events.Images("prior samples (decoder means)")
    pixels = matplotlib.image.imread(io.BytesIO(logged.encoded_image_string), format="png")
    expected = image_grid(sample_prior(result.vae, 64, generator=torch.Generator().manual_seed(
        0)).mean, (28, 28))
    assert pixels.shape[:2] == expected.shape
    # TensorBoard stores 8-bit grey levels, truncated
    assert np.abs(pixels[..., 0] - np.clip(expected, 0, 1)).max() <= 1 / 255 + 1e-6


def test_a_missing_tensorboard_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ConfigError, match=r'pip install -e "\.\[tensorboard\]"'):
        fit(TINY, tensorboard=tmp_path / "tb", progress=False, log=lambda *a: None)
    with pytest.raises(ConfigError, match="folder path"):
        fit(TINY, tensorboard=3, progress=False, log=lambda *a: None)


def test_train_logs_into_the_run_folder_and_a_resumed_run_continues(tmp_path):
    run = tmp_path / "run"
    args = ["--train-size", "128", "--test-size", "64", "--hidden-sizes", "8", "--latent-dim",
            "2", "--quiet", "--no-plots"]
    assert main(["train", "--epochs", "1", "--out", str(run), "--tensorboard", *args]) == 0
    assert main(["train", "--resume", str(run), "--epochs", "2", "--tensorboard",
                 "--quiet", "--no-plots"]) == 0
    scalars, _ = read(run / "tensorboard")
    assert [step for step, _ in scalars["test/ELBO (nats)"]] == [1, 2]
