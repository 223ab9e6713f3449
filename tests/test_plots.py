"""Pictures: the numbers behind them against closed forms and independent computations, the
PNG files a run gets (from ``write_run_figures``, ``pyro-vae train``, ``plot`` and
``sample``), and which panel shows what."""

import dataclasses
import json
import math
import warnings

import numpy as np
import pytest
import torch
from matplotlib.image import imread

from pyro_vae import VAE, ConfigError, DataError
from pyro_vae.build import load_data
from pyro_vae.cli import main
from pyro_vae.config import TrainConfig
from pyro_vae.evaluation import (
    AISSettings,
    Execution,
    ReliabilityWarning,
    ais,
    estimate_log_px,
    report,
)
from pyro_vae.fit import fit
from pyro_vae.plots import (
    decoder_mean,
    image_grid,
    normal_quantile_grid,
    pca_2d,
    plot_comparison,
    plot_learning_curves,
    plot_reconstructions,
    sample_prior,
    write_run_figures,
)
from pyro_vae.runs import RunFolder
from tests.conftest import assert_close

TINY = TrainConfig(train_size=256, test_size=200, batch_size=128, hidden_sizes=(16,),
                   latent_dim=2, epochs=2, seed=0)
CLI_TINY = ["--train-size", "256", "--test-size", "100", "--hidden-sizes", "16", "--quiet"]
RUN_PICTURES = {"learning_curves.png", "reconstructions.png", "prior_samples.png",
                "latent_embedding.png"}


def evaluate(vae, x, *, num_samples, seed=0, pareto_k=True):
    """The report of ``pyro-vae evaluate --method is`` on ``x`` (importance sampling)."""
    execution = Execution(seed=seed)
    estimate = estimate_log_px(vae, x, num_samples=num_samples, pareto_k=pareto_k,
                               execution=execution)
    return report(vae, x, estimate, execution=execution)


@pytest.fixture(scope="module")
def data():
    return load_data(TINY)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, data):
    """A finished two-epoch run with a 2-D latent space (metrics.json, checkpoint.pt)."""
    out = tmp_path_factory.mktemp("run")
    fit(TINY, out, data=data, log=lambda *args: None)
    return out


def png(path):
    """The picture at ``path`` as an (H, W, channels) array in [0, 1]; fails if not a PNG."""
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return imread(path)


# --- the numbers ---------------------------------------------------------------------------


def test_image_grid_places_each_image_in_its_cell():
    images = torch.rand(7, 12)
    grid = image_grid(images, (3, 4), ncols=3, pad=2, pad_value=-1.0)
    assert grid.shape == (3 * 3 + 2 * 2, 3 * 4 + 2 * 2)  # 3 rows of 3 cells
    filled = np.zeros(grid.shape, dtype=bool)
    for i in range(7):
        r, c = divmod(i, 3)
        cell = (slice(r * 5, r * 5 + 3), slice(c * 6, c * 6 + 4))
        np.testing.assert_array_equal(grid[cell], images[i].reshape(3, 4).numpy())
        filled[cell] = True
    assert (grid[~filled] == -1.0).all()  # separators and the two empty cells


def test_image_grid_rejects_images_of_another_size():
    with pytest.raises(DataError, match=r"\(N > 0, 784\)"):
        image_grid(torch.zeros(4, 100), (28, 28))


@pytest.mark.parametrize("steps", [1, 4, 15])
def test_quantile_grid_is_evenly_spaced_in_probability(steps):
    z = normal_quantile_grid(steps)  # (steps², 2)
    assert z.shape == (steps**2, 2)
    expected = (torch.arange(steps, dtype=torch.float64) + 0.5) / steps
    phi = torch.distributions.Normal(0.0, 1.0).cdf(z.double())
    # image order: z₁ rises along a row, z₂ falls down the rows
    assert_close(phi[:steps, 0], expected, atol=1e-6)
    assert_close(phi[::steps, 1], expected.flip(0), atol=1e-6)
    assert_close(normal_quantile_grid(steps, 1).squeeze(-1), z[:steps, 0])
    with pytest.raises(ConfigError):
        normal_quantile_grid(steps, 3)


def test_pca_2d_agrees_with_the_covariance_eigendecomposition():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 5, generator=g, dtype=torch.float64) @ torch.randn(
        5, 5, generator=g, dtype=torch.float64)
    pca = pca_2d(x)
    eigenvalues, eigenvectors = torch.linalg.eigh(torch.cov(x.T))  # ascending
    top = eigenvalues.flip(0)[:2]
    assert_close(pca.projection.var(0), top, rtol=1e-9)  # variance along each axis
    assert_close(pca.explained, top / eigenvalues.sum(), rtol=1e-9)
    assert_close(torch.cov(pca.projection.T)[0, 1], 0.0, atol=1e-9)  # uncorrelated axes
    axes = eigenvectors.flip(1)[:, :2]
    assert_close((x - x.mean(0)) @ axes, pca.projection * torch.sign(
        ((x - x.mean(0)) @ axes)[0] / pca.projection[0]), atol=1e-9)  # up to sign


def test_pca_2d_of_planar_data_keeps_all_distances():
    g = torch.Generator().manual_seed(1)
    plane = torch.linalg.qr(torch.randn(6, 2, generator=g, dtype=torch.float64))[0]  # (6, 2)
    x = torch.randn(50, 2, generator=g, dtype=torch.float64) @ plane.T + 3.0
    pca = pca_2d(x)
    assert_close(pca.explained.sum(), 1.0, atol=1e-12)
    exact = "donot_use_mm_for_euclid_dist"
    assert_close(torch.cdist(pca.projection, pca.projection, compute_mode=exact),
                 torch.cdist(x, x, compute_mode=exact), atol=1e-9)


@pytest.mark.parametrize("temperature", [0.0, 0.5, 1.0, 2.0])
def test_sample_prior_decodes_temperature_times_standard_normal(temperature):
    vae = VAE(12, latent_dim=3, hidden_sizes=(8,))
    sample = sample_prior(vae, 6, temperature=temperature,
                          generator=torch.Generator().manual_seed(5))
    eps = torch.randn(6, 3, generator=torch.Generator().manual_seed(5))
    assert_close(sample.z, temperature * eps)
    with torch.no_grad():
        assert_close(sample.mean, torch.sigmoid(vae.decoder(temperature * eps)))
    if temperature == 0:
        assert (sample.mean == sample.mean[0]).all()


def test_sample_prior_rejects_negative_temperature():
    vae = VAE(4, latent_dim=2, hidden_sizes=(4,))
    with pytest.raises(ConfigError, match="temperature"):
        sample_prior(vae, 3, temperature=-1.0)


@pytest.mark.parametrize("likelihood", ["bernoulli", "continuous-bernoulli", "gaussian"])
def test_decoder_mean_is_the_likelihoods_mean(likelihood):
    vae = VAE(10, latent_dim=2, hidden_sizes=(6,), likelihood=likelihood)
    z = torch.randn(4, 2)
    with torch.no_grad():
        out = vae.decoder(z).double()
    if likelihood == "bernoulli":
        expected = torch.sigmoid(out)
    elif likelihood == "gaussian":
        expected = out
    else:  # Loaiza-Ganem & Cunningham (2019): λ/(2λ − 1) + 1/(2 artanh(1 − 2λ))
        lam = torch.sigmoid(out)
        expected = lam / (2 * lam - 1) + 1 / (2 * torch.atanh(1 - 2 * lam))
    assert_close(decoder_mean(vae, z), expected, rtol=1e-4, atol=1e-5)


# --- the pictures of a run ------------------------------------------------------------------


def test_write_run_figures_writes_every_picture(run_dir):
    written = write_run_figures(RunFolder(run_dir))
    assert {p.name for p in written} == RUN_PICTURES | {"latent_manifold.png"}
    for path in written:
        assert path.parent == run_dir
        image = png(path)
        assert image.shape[0] >= 250 and image.shape[1] >= 600, path.name
        assert image[..., :3].std() > 0.05, f"{path.name} is blank"
    manifold = png(run_dir / "latent_manifold.png")
    assert manifold.shape[:2] == (700, 700)  # 7 × 7 inches at 100 dpi
    # a path names the folder as well as a RunFolder does
    assert write_run_figures(str(run_dir)) == written


def test_no_manifold_above_two_latent_dimensions(tmp_path, data):
    result = fit(dataclasses.replace(TINY, latent_dim=3, epochs=1), tmp_path, data=data,
                 log=lambda *args: None)
    written = write_run_figures(RunFolder(tmp_path), vae=result.vae, data=data)
    assert {p.name for p in written} == RUN_PICTURES


def test_evaluation_json_adds_log_px_and_pareto_pictures(tmp_path, run_dir, data):
    for f in run_dir.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    run = RunFolder(tmp_path)
    vae, _ = run.load_vae()
    x = data.test[:40]
    run.write_evaluation(evaluate(vae, x, num_samples=100, seed=1))
    written = {p.name for p in write_run_figures(run, vae=vae, data=data)}
    assert {"log_px_vs_k.png", "pareto_k.png"} <= written
    png(run.picture("log_px_vs_k"))

    run.write_evaluation(evaluate(vae, x, num_samples=100, seed=1, pareto_k=False))
    run.picture("pareto_k").unlink()  # without k̂ values there is no histogram to draw
    assert "pareto_k.png" not in {p.name for p in write_run_figures(run, vae=vae, data=data)}


def test_reconstructions_sit_right_of_their_inputs(tmp_path):
    """Inputs all black, a decoder that outputs p ≈ 1 everywhere: the left panel is dark and
    the right one white."""
    vae = VAE(16, latent_dim=2, hidden_sizes=(4,))
    with torch.no_grad():
        vae.decoder.out.weight.zero_()
        vae.decoder.out.bias.fill_(20.0)
    path = plot_reconstructions(vae, torch.zeros(8, 16), (4, 4), tmp_path / "r.png")
    grey = png(path)[..., :3].mean(-1)
    rows = slice(grey.shape[0] // 4, 3 * grey.shape[0] // 4)
    left = grey[rows, : grey.shape[1] // 2]
    right = grey[rows, grey.shape[1] // 2 :]
    assert (right > 0.9).mean() > 5 * (left > 0.9).mean()


def test_comparison_of_runs_evaluated_or_not(tmp_path, run_dir, data):
    run = RunFolder(run_dir)
    metrics = run.read_metrics()
    vae, _ = run.load_vae()
    evaluation = json.loads(json.dumps(evaluate(vae, data.test[:20], num_samples=30, seed=0)))
    path = plot_comparison([("evaluated", metrics, evaluation), ("not", metrics, None)],
                           tmp_path / "c.png")
    assert png(path).shape[:2] == (480, 1500)
    with pytest.raises(DataError, match="no finished epoch"):
        plot_comparison([("empty", {"epochs": []}, None)], tmp_path / "d.png")


def test_an_ais_evaluation_gets_its_pareto_picture_and_a_place_in_the_comparison(
        tmp_path, run_dir, data):
    """AIS has no curve over K: no log_px_vs_k picture; with 21 chains or more, the
    histogram of k̂ over the chains; in the comparison, the estimate labelled AIS."""
    for f in run_dir.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    run = RunFolder(tmp_path)
    vae, _ = run.load_vae()
    x = data.test[:10]
    estimate = ais(vae, x, AISSettings(num_steps=3, num_chains=21))
    with warnings.catch_warnings():  # 3 steps: k̂ may flag the weights (warned and listed)
        warnings.simplefilter("ignore", ReliabilityWarning)
        evaluation = report(vae, x, estimate)
    run.write_evaluation(evaluation)
    written = {p.name for p in write_run_figures(run, vae=vae, data=data)}
    assert "pareto_k.png" in written and "log_px_vs_k.png" not in written
    png(run.picture("pareto_k"))
    path = plot_comparison([("ais", run.read_metrics(), json.loads(json.dumps(evaluation)))],
                           tmp_path / "c.png")
    assert png(path).shape[:2] == (480, 1500)


def test_learning_curves_of_several_runs(tmp_path, run_dir):
    metrics = json.loads((run_dir / "metrics.json").read_text())
    other = json.loads(json.dumps(metrics))
    for record in other["epochs"]:
        record["test_elbo"] += 5.0
    path = plot_learning_curves([("a", metrics), ("b", other)], tmp_path / "c.png")
    assert png(path).shape[:2] == (480, 1200)
    with pytest.raises(DataError, match="no finished epoch"):
        plot_learning_curves([("empty", {"epochs": []})], tmp_path / "d.png")


# --- the command line ------------------------------------------------------------------------


def test_train_writes_and_lists_the_pictures(tmp_path, capsys):
    assert main(["train", "--epochs", "1", "--latent-dim", "2", "--out", str(tmp_path),
                 *CLI_TINY]) == 0
    out = capsys.readouterr().out
    names = RUN_PICTURES | {"latent_manifold.png"}
    assert all((tmp_path / name).is_file() for name in names)
    assert all(name in out for name in names)
    assert main(["train", "--epochs", "1", "--out", str(tmp_path / "bare"), "--no-plots",
                 *CLI_TINY]) == 0
    assert not list((tmp_path / "bare").glob("*.png"))


def test_plot_command_compares_runs(tmp_path, run_dir, capsys, monkeypatch):
    second = tmp_path / "second"
    second.mkdir()
    (second / "metrics.json").write_text((run_dir / "metrics.json").read_text())
    out = tmp_path / "compare.png"
    assert main(["plot", str(run_dir), str(second), "--curves-only", "--compare-out",
                 str(out)]) == 0
    assert png(out).shape[:2] == (480, 1500)
    assert (second / "learning_curves.png").is_file()
    assert "nats per datapoint" in capsys.readouterr().out
    # by default the comparison goes to the current folder, not next to the runs
    monkeypatch.chdir(tmp_path / "second")
    assert main(["plot", str(run_dir), str(second), "--curves-only"]) == 0
    assert (second / "comparison.png").is_file() and not (run_dir.parent / "comparison.png"
                                                          ).exists()


def test_plot_command_without_metrics_is_a_one_line_error(tmp_path, capsys):
    assert main(["plot", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pyro-vae: error:") and "metrics.json" in err
    assert err.count("\n") == 1


def test_sample_command_writes_the_decoder_means_it_drew(tmp_path, run_dir, capsys):
    out = tmp_path / "grid.png"
    assert main(["sample", str(run_dir / "checkpoint.pt"), "-n", "12", "--temperature", "0.7",
                 "--seed", "4", "--out", str(out), "--save-arrays"]) == 0
    assert "12 images" in capsys.readouterr().out
    png(out)
    means, z = np.load(tmp_path / "grid.npy"), np.load(tmp_path / "grid_z.npy")
    assert means.shape == (12, 784) and z.shape == (12, 2) and means.dtype == np.float32
    vae, _ = RunFolder(run_dir).load_vae()
    expected = sample_prior(vae, 12, temperature=0.7, generator=torch.Generator().manual_seed(4))
    np.testing.assert_array_equal(z, expected.z.numpy())
    np.testing.assert_allclose(means, expected.mean.numpy(), rtol=1e-6)
    assert math.isclose(float(np.std(z / 0.7)), 1.0, abs_tol=0.5)


def test_sample_command_at_zero_temperature_repeats_one_image(tmp_path, run_dir):
    out = tmp_path / "zero.png"
    assert main(["sample", str(run_dir), "-n", "4", "-T", "0", "--out", str(out),
                 "--save-arrays"]) == 0
    means = np.load(tmp_path / "zero.npy")
    assert (means == means[0]).all()


def test_sample_command_refuses_a_non_png_name(tmp_path, run_dir, capsys):
    assert main(["sample", str(run_dir), "--out", str(tmp_path / "s.jpg")]) == 2
    assert "PNG" in capsys.readouterr().err
