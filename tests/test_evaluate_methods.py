"""``pyro-vae evaluate --method is|ais``, ``--bdmc`` and ``--gaps``: what evaluation.json
records, that it equals the library's figures on the same seeds, bad values ending in one
line and exit status 2, every option's default in its help, and torchrun giving the same
numbers as one process."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pyro_vae.build import load_data
from pyro_vae.cli import build_parser, main
from pyro_vae.config import TrainConfig
from pyro_vae.evaluation import AISSettings, LayeredTarget, ais, estimate_log_px
from pyro_vae.fit import fit
from pyro_vae.runs import RunFolder, load_checkpoint, vae_from_checkpoint
from tests.conftest import assert_close

REPO = Path(__file__).resolve().parents[1]
TEST_SIZE = 12
AIS_ARGS = ["--method", "ais", "--ais-steps", "12", "--chains", "6", "--leapfrog-steps", "2",
            "--quiet"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny") / "run"
    config = TrainConfig(train_size=256, test_size=TEST_SIZE, hidden_sizes=(16,), latent_dim=3,
                         batch_size=64, epochs=1, eval_batch_size=TEST_SIZE)
    fit(config, folder, progress=False, log=lambda *a, **k: None)
    return folder


def evaluate(tiny_run, tmp_path, *args) -> dict:
    out = tmp_path / "evaluation.json"
    assert main(["evaluate", str(tiny_run), *args, "-o", str(out)]) == 0
    return json.loads(out.read_text())


def test_ais_report_records_method_settings_and_per_datapoint_values(tiny_run, tmp_path):
    report = evaluate(tiny_run, tmp_path, *AIS_ARGS, "--seed", "3")
    assert report["method"] == "ais"
    assert report["settings"]["num_steps"] == 12 and report["settings"]["num_chains"] == 6
    assert report["settings"]["start"] == "the encoder q(z|x)"
    per = report["per_datapoint"]
    assert len(per["log_px"]) == TEST_SIZE == report["num_datapoints"]
    # the same numbers as the library, in test-set order
    checkpoint = load_checkpoint(tiny_run)
    vae, _ = vae_from_checkpoint(checkpoint)
    x = load_data(checkpoint.config, train=False).test
    est = ais(LayeredTarget(vae), x, AISSettings(num_steps=12, num_chains=6, num_leapfrog=2),
              seed=3, pareto_k=False)
    assert_close(per["log_px"], est.log_px, rtol=1e-12, atol=1e-12)
    assert report["log_px"]["mean"] == pytest.approx(est.mean, abs=1e-12)
    assert report["pareto_k"] is None  # 6 chains: too few, and it says so
    assert any("21 chains" in note for note in report["notes"]) and not report["warnings"]
    assert RunFolder(tmp_path).read_evaluation()["method"] == "ais"  # the schema's checks


def test_bdmc_and_gaps_sections(tiny_run, tmp_path, capsys):
    report = evaluate(tiny_run, tmp_path, *AIS_ARGS, "--bdmc", "5", "--gaps", "--gap-steps",
                      "10")
    bdmc, gaps = report["bdmc"], report["gaps"]
    assert len(bdmc["per_datapoint"]["gap"]) == 5 == bdmc["num_datapoints"]
    assert bdmc["gap"]["mean"] == pytest.approx(bdmc["upper"]["mean"] - bdmc["lower"]["mean"])
    assert gaps["log_px_from"] == "AIS"
    assert gaps["per_datapoint"]["log_px"] == report["per_datapoint"]["log_px"]
    assert gaps["total"] == pytest.approx(
        gaps["log_px"]["mean"] - gaps["encoder_elbo"]["mean"], abs=1e-9)
    assert gaps["amortization"]["mean"] + gaps["approximation"]["mean"] == pytest.approx(
        gaps["total"], abs=1e-9)
    out = capsys.readouterr().out
    assert "BDMC on 5 simulated datapoints" in out and "amortization" in out


def test_method_is_still_writes_the_importance_sampling_report(tiny_run, tmp_path):
    report = evaluate(tiny_run, tmp_path, "-K", "30", "--quiet", "--gaps", "--gap-steps", "5")
    assert report["method"] == "is" and report["num_samples"] == 30
    assert len(report["per_datapoint"]["log_px"]) == TEST_SIZE
    assert report["gaps"]["log_px_from"].startswith("IS")


@pytest.mark.parametrize("args,message", [
    (["--ais-steps", "0"], "--ais-steps"), (["--chains", "-2"], "--chains"),
    (["--method", "hmc"], "--method"), (["--target-accept", "1.5"], "--target-accept"),
    (["--bdmc", "0"], "--bdmc"), (["--ais-start", "posterior"], "--ais-start"),
    (["--schedule", "cosine"], "--schedule"), (["--gap-steps", "x"], "--gap-steps")])
def test_bad_values_end_in_one_line_and_exit_status_2(tiny_run, args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", str(tiny_run), *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err


def test_every_option_shows_its_default():
    parser = build_parser()
    evaluate_parser = parser._subparsers._group_actions[0].choices["evaluate"]
    for action in evaluate_parser._actions:
        if action.option_strings and action.dest != "help":
            assert "default" in (action.help or ""), action.option_strings


def test_torchrun_splits_the_datapoints_and_gives_the_numbers_of_one_process(tiny_run,
                                                                              tmp_path):
    out = tmp_path / "two.json"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
               "--standalone", "-m", "pyro_vae", "evaluate", str(tiny_run), *AIS_ARGS,
               "--no-psis", "--memory-mb", "0.05", "-o", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.count("log p(x) >= AIS") == 1  # rank 0 alone prints
    two = json.loads(out.read_text())
    assert two["processes"] == 2
    # --memory-mb 0.05: blocks of one datapoint, so both ranks get work; same seeds per block
    small = evaluate(tiny_run, tmp_path, *AIS_ARGS, "--no-psis", "--memory-mb", "0.05")
    assert_close(two["per_datapoint"]["log_px"], small["per_datapoint"]["log_px"],
                 rtol=1e-12, atol=1e-12)
    assert two["log_px"]["mean"] == pytest.approx(small["log_px"]["mean"], abs=1e-12)


def test_a_flow_guide_checkpoint_is_evaluated_by_the_generic_and_the_fast_path(tmp_path):
    """--method is takes Pyro's traces for a flow guide (the fast path assumes a Gaussian q);
    --method ais the fast VAE target, started at q in the flow's input coordinates; both
    give the library's numbers."""
    folder = tmp_path / "flow"
    config = TrainConfig(train_size=128, test_size=6, hidden_sizes=(16,), latent_dim=3,
                         batch_size=64, epochs=1, eval_batch_size=6, flow="iaf",
                         estimator="trace")
    fit(config, folder, progress=False, log=lambda *a, **k: None)
    report = evaluate(folder, tmp_path, "-K", "25", "--quiet")
    assert report["settings"]["proposal"].startswith("the guide q(z|x), generic path")
    checkpoint = load_checkpoint(folder)
    vae, _ = vae_from_checkpoint(checkpoint)
    x = load_data(checkpoint.config, train=False).test
    expected = estimate_log_px(vae.model, vae.guide, x, num_samples=25)
    assert_close(report["per_datapoint"]["log_px"], expected.log_px, rtol=1e-10, atol=1e-10)
    report = evaluate(folder, tmp_path, *AIS_ARGS)
    assert report["settings"]["start"] == "the encoder q(z|x), in its flow's input coordinates"
    assert len(report["per_datapoint"]["log_px"]) == 6
