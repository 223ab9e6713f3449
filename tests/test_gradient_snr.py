"""benchmarks/gradient_snr.py: its quick mode runs every estimator of the registry and writes
finite numbers (nothing here judges the SNR values), its pPCA training brings q towards the
exact posterior, and its running moments equal torch's."""

import json
import math

import pytest
import torch

from benchmarks import gradient_snr
from pyro_vae.objectives import ESTIMATORS


def test_running_moments_equal_torch_mean_and_std():
    g = torch.Generator().manual_seed(0)
    rows = 3.0 + 1e-3 * torch.randn(50, 7, generator=g, dtype=torch.float64)  # |mean| ≫ std
    moments = gradient_snr.RunningMoments(7)
    for row in rows:
        moments.update(row)
    torch.testing.assert_close(moments.mean, rows.mean(0), rtol=1e-13, atol=0)
    torch.testing.assert_close(moments.std, rows.std(0), rtol=1e-9, atol=0)


def test_group_snr_leaves_out_zero_variance_parameters():
    moments = gradient_snr.RunningMoments(3)
    for row in ([1.0, 2.0, 5.0], [3.0, 2.0, -5.0]):
        moments.update(torch.tensor(row))
    summary = gradient_snr.group_snr(moments)
    # means (2, 2, 0), stds (√2, 0, √50): the constant parameter is left out
    assert summary["zero_variance"] == 1 and summary["parameters"] == 3
    assert summary["snr"] == pytest.approx((2 / math.sqrt(2) + 0.0) / 2)


def test_noise_floor_is_the_snr_of_pure_noise():
    g = torch.Generator().manual_seed(1)
    draws = 100
    moments = gradient_snr.RunningMoments(20_000)
    for _ in range(draws):
        moments.update(torch.randn(20_000, generator=g))
    snr = gradient_snr.group_snr(moments)["snr"]
    assert snr == pytest.approx(gradient_snr.noise_floor(draws), rel=0.03)


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)  # the benchmark sets its own thread count


SOURCES = {  # setting source: (command-line options, config field listing the settings)
    "mnist": (["--model", "mnist"], "snapshot_epochs"),
    "ppca-training": (["--model", "ppca"], "snapshot_steps"),
    "ppca-perturbation": (["--model", "ppca", "--ppca-settings", "perturbation"], "perturbations"),
}


@pytest.mark.integration
@pytest.mark.parametrize("source", SOURCES)
def test_quick_run_writes_json_markdown_and_png(tmp_path, one_thread, source):
    options, listing = SOURCES[source]
    assert gradient_snr.main(["--quick", "--quiet", *options, "--out", str(tmp_path)]) == 0
    document = json.loads((tmp_path / "gradient_snr.json").read_text())
    config, settings = document["config"], document["settings"]
    assert config["estimators"] == list(ESTIMATORS)  # the registry, unless --estimators
    assert len(settings) == len(config[listing])
    assert len(document["results"]) == len(settings) * len(config["estimators"]) * len(
        config["ks"]
    )
    for cell in document["results"]:
        if "refused" in cell:  # rws at K = 1
            assert cell["K"] < ESTIMATORS[cell["estimator"]].min_particles
            continue
        for group in ("encoder", "decoder"):
            assert math.isfinite(cell[group]["snr"]) and cell[group]["snr"] >= 0
            assert cell[group]["parameters"] > cell[group]["zero_variance"]
        assert math.isfinite(cell["bound_mean"])
        if cell["bound"] == "IWAE_K":
            assert 1 - 1e-9 <= cell["importance_ess"] <= cell["K"] + 1e-9
    for setting in settings:
        value = setting["test_elbo" if source == "mnist" else "kl_to_posterior"]
        assert math.isfinite(value)
    table = (tmp_path / "gradient_snr.md").read_text()
    for name in config["estimators"]:
        assert table.count(f"| {name} |") == len(settings)
    assert "nan" not in table.lower()
    assert (tmp_path / "gradient_snr.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_estimator_options_reach_the_objectives(tmp_path, one_thread):
    """--estimators NAME,OPTION=VALUE: each cell's objective gets the option (recorded as it
    received it) and a K below the estimator's smallest is refused, shown as —."""
    assert gradient_snr.main(["--quick", "--quiet", "--model", "ppca", "--ppca-settings",
                              "perturbation", "--ks", "1", "3", "--estimators",
                              "renyi,alpha=0.2", "miwae,num_estimates=3", "piwae", "rws",
                              "--out", str(tmp_path)]) == 0
    document = json.loads((tmp_path / "gradient_snr.json").read_text())
    options = {(r["entry"], r["K"]): r["options"] for r in document["results"]}
    assert options["renyi,alpha=0.2", 3] == {"alpha": 0.2}
    assert options["miwae,num_estimates=3", 1] == {"num_estimates": 3}
    assert options["piwae", 3] == {"num_estimates": 2}  # the registry's default
    refused = [(r["entry"], r["K"]) for r in document["results"] if "refused" in r]
    assert refused == [("rws", 1)]
    assert "| rws | IWAE_K | — | " in (tmp_path / "gradient_snr.md").read_text()
    with pytest.raises(SystemExit):
        gradient_snr.main(["--estimators", "renyi,alpha=1.5"])


def test_ppca_training_brings_the_encoder_to_the_posterior(tmp_path, one_thread):
    # from q(z|x) = N(0, I), about 15 nats/datapoint from p(z|x) after 10 of the quick run's
    # steps, to under 1 after 200
    assert gradient_snr.main(["--quick", "--quiet", "--model", "ppca", "--snapshot-steps",
                              "10", "200", "--out", str(tmp_path)]) == 0
    document = json.loads((tmp_path / "gradient_snr.json").read_text())
    assert [s["step"] for s in document["settings"]] == [10, 200]
    early, late = (s["kl_to_posterior"] for s in document["settings"])
    assert 0 < late < 1 < early
    assert "After 200 steps of training the encoder" in (tmp_path / "gradient_snr.md").read_text()


def test_bad_options_are_refused(capsys):
    for argv in (["--estimators", "elbo"], ["--snapshot-epochs", "3", "1"], ["--draws", "1"],
                 ["--snapshot-steps", "100", "10", "--model", "ppca"],
                 ["--ppca-settings", "training"],
                 ["--model", "ppca", "--snapshot-epochs", "2"],
                 ["--model", "ppca", "--ppca-settings", "perturbation", "--snapshot-steps", "5"]):
        with pytest.raises(SystemExit) as exit_info:
            gradient_snr.main(argv)
        assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "unknown estimator 'elbo'" in err
    assert "--snapshot-steps must be increasing positive integers" in err
    assert "--ppca-settings and --snapshot-steps apply to --model ppca only" in err
