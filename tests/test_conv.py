"""pyro_vae.models.conv: the convolutional encoder and decoder of ``--preset conv``, for images
of any size; the VAE built from them trains, evaluates and samples like any other."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pyro
import pytest
import torch

from pyro_vae import VAE, ConfigError, make_objective
from pyro_vae.build import build_vae
from pyro_vae.cli import main
from pyro_vae.config import TrainConfig
from pyro_vae.evaluation import estimate_log_px
from pyro_vae.models.conv import ConvDecoder, ConvEncoder
from pyro_vae.trainer import Trainer


@pytest.mark.parametrize("shape", [(28, 28), (13, 17), (4, 5)], ids=str)
def test_the_decoder_restores_the_exact_image_size(shape):
    """Stride-2 layers halve the image (rounding down); the transposed ones give back H × W
    exactly, for odd sizes too, with particles and a batch in front."""
    d = shape[0] * shape[1]
    enc = ConvEncoder(shape, 3, (4, 6), "elu")
    dec = ConvDecoder(3, shape, (4, 6), "elu")
    x = torch.rand(5, d)
    loc, scale = enc(x)
    assert loc.shape == scale.shape == (5, 3) and bool((scale > 0).all())
    assert dec(torch.randn(7, 5, 3)).shape == (7, 5, d)
    assert dec.output_bias.shape == (d,)
    assert enc.features(x).shape == (5, enc.features_dim)


def test_the_encoder_is_a_function_of_the_image_alone():
    """Each image is encoded apart: a batch gives what each image gives alone."""
    enc = ConvEncoder((9, 9), 2, (3,), "tanh")
    x = torch.rand(4, 81)
    together = enc(x)[0]
    alone = torch.cat([enc(x[i : i + 1])[0] for i in range(4)])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-6)


def test_a_context_is_read_beside_the_features():
    enc = ConvEncoder((8, 8), 2, (3,), "relu", context_dim=4)
    dec = ConvDecoder(2, (8, 8), (3,), "relu", context_dim=4)
    x, c = torch.rand(6, 64), torch.eye(4)[torch.arange(6) % 4]
    assert enc(x, c)[0].shape == (6, 2) and dec(torch.randn(6, 2), c).shape == (6, 64)
    assert not torch.equal(enc(x, c)[0], enc(x, c.roll(1, 0))[0])


def test_the_preset_builds_from_a_config_with_the_data_sets_image_shape():
    config = TrainConfig(preset="conv", hidden_sizes=(4, 8), latent_dim=3).validate()
    vae = build_vae(config, 28 * 28, (28, 28))
    assert isinstance(vae.encoder, ConvEncoder) and isinstance(vae.decoder, ConvDecoder)
    assert vae.capabilities == config.capabilities
    with torch.device("meta"):
        meta = build_vae(config, 28 * 28, (28, 28))
    assert {k: v.shape for k, v in meta.state_dict().items()} == {
        k: v.shape for k, v in vae.state_dict().items()}
    with pytest.raises(ConfigError, match="the conv preset needs images"):
        build_vae(config, 28 * 28, None)
    with pytest.raises(ConfigError, match="too small for 6 convolutional layers"):
        VAE.from_preset("conv", 64, image_shape=(8, 8), hidden_sizes=(2,) * 6)


@pytest.mark.parametrize("flow", [None, "iaf"])
def test_every_pyro_estimator_steps_the_conv_vae_and_log_px_is_a_bound(flow):
    """A few steps of iwae lower the loss of a fixed batch; IS of the conv VAE is at most 0 for
    binary images (a probability) and at least the ELBO on the same samples."""
    pyro.set_rng_seed(0)
    vae = VAE.from_preset("conv", 64, image_shape=(8, 8), hidden_sizes=(4,), latent_dim=2,
                          flow=flow)
    x = torch.bernoulli(torch.full((16, 64), 0.3), generator=torch.Generator().manual_seed(1))
    vae.init_output_bias(x.mean(0))
    trainer = Trainer(make_objective("iwae", vae), 1e-2)
    losses = [trainer.step(x) for _ in range(30)]
    assert sum(losses[-5:]) < sum(losses[:5])
    est = estimate_log_px(vae, x, num_samples=64)
    assert bool((est.log_px <= 0).all()) and bool((est.log_px >= est.elbo - 1e-4).all())


# --- the command line end to end, as for the MLP presets ---------------------------------------
CONV = ["--preset", "conv", "--hidden-sizes", "4", "--latent-dim", "2", "--train-size", "64",
        "--test-size", "16", "--batch-size", "16", "--quiet"]


@pytest.mark.integration
def test_the_conv_preset_goes_through_every_command(tmp_path):
    """train, --resume, evaluate (AIS, IS, --gaps, BDMC), sample and plot on one conv run;
    torchrun trains it on two processes; compare_estimators times and trains it. Each figure
    is a finite bound: IS at least the ELBO its samples give, AIS and IS at most 0 nats."""
    run = tmp_path / "run"
    assert main(["train", *CONV, "--epochs", "1", "--out", str(run)]) == 0
    assert main(["train", "--resume", str(run), "--epochs", "2", "--quiet", "--no-plots"]) == 0
    epochs = json.loads((run / "metrics.json").read_text())["epochs"]
    assert [e["epoch"] for e in epochs] == [1, 2]
    assert json.loads((run / "metrics.json").read_text())["config"]["preset"] == "conv"

    ais_json, is_json = tmp_path / "ais.json", tmp_path / "is.json"
    assert main(["evaluate", str(run), "--ais-steps", "3", "--chains", "2", "--gaps",
                 "--gap-steps", "5", "--bdmc", "2", "--quiet", "-o", str(ais_json)]) == 0
    assert main(["evaluate", str(run), "-K", "20", "--quiet", "--no-plots",
                 "-o", str(is_json)]) == 0
    for path in (ais_json, is_json):
        text = path.read_text()
        assert "NaN" not in text and "Infinity" not in text, path.name
    assert {p.name for p in tmp_path.glob("*.png")} >= {"elbo_decomposition.png",
                                                        "ais_diagnostics.png"}
    assert main(["sample", str(run), "-n", "4", "--seed", "1"]) == 0
    assert main(["plot", str(run), "--curves-only"]) == 0

    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    dist_run = tmp_path / "dist"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                           "--standalone", "-m", "pyro_vae", "train", *CONV, "--epochs", "1",
                           "--no-plots", "--out", str(dist_run)],
                          capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert json.loads((dist_run / "metrics.json").read_text())["epochs"][0]["processes"] == 2

    out = tmp_path / "compare"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.compare_estimators", "--quick",
                           "--preset", "conv", "--estimators", "meanfield", "iwae:3",
                           "--threads", "1", "--quiet", "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=300,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads((out / "compare.json").read_text())
    assert "convolutional" in results["network"]
    assert [r["label"] for r in results["results"]][:1] == ["analytic"]
    assert all(r["log_px_mean"] <= 0 for r in results["results"])
