"""``pyro-vae evaluate --method is|ais``, ``--bdmc`` and ``--gaps``: what evaluation.json
records, that it equals the library's figures on the same seeds, bad values and options the
chosen method would ignore ending in one line and exit status 2, every option's default in
its help, torchrun giving the same numbers as one process, and the committed default model's
recorded figure."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pyro_vae.build import load_data
from pyro_vae.cli import build_parser, main
from pyro_vae.config import TrainConfig
from pyro_vae.evaluation import AISSettings, Execution, ais, estimate_log_px, mean_elbo
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
    est = ais(vae, x, AISSettings(num_steps=12, num_chains=6, num_leapfrog=2), pareto_k=False,
              execution=Execution(seed=3))
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
    assert report["method"] == "is" and report["settings"]["num_samples"] == 30
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


@pytest.mark.integration
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


def test_a_flow_guide_checkpoint_is_evaluated_by_the_fast_path(tmp_path):
    """--method is takes the layered fast path for a flow guide too (it used to take Pyro's
    traces), --method ais the layered target, started at q in the flows' input coordinates;
    both give the library's numbers."""
    folder = tmp_path / "flow"
    config = TrainConfig(train_size=128, test_size=6, hidden_sizes=(16,), latent_dim=3,
                         batch_size=64, epochs=1, eval_batch_size=6, flow="iaf",
                         estimator="trace")
    fit(config, folder, progress=False, log=lambda *a, **k: None)
    report = evaluate(folder, tmp_path, "-K", "25", "--quiet")
    assert report["settings"]["proposal"] == "the guide q(z|x)"
    checkpoint = load_checkpoint(folder)
    vae, _ = vae_from_checkpoint(checkpoint)
    x = load_data(checkpoint.config, train=False).test
    expected = estimate_log_px(vae, x, num_samples=25)
    assert expected.fast
    assert_close(report["per_datapoint"]["log_px"], expected.log_px, rtol=1e-10, atol=1e-10)
    report = evaluate(folder, tmp_path, *AIS_ARGS)
    assert report["settings"]["start"] == "the encoder q(z|x), in its flows' input coordinates"
    assert len(report["per_datapoint"]["log_px"]) == 6


# --- importance sampling: the report, the options, the errors --------------------------------


def test_evaluate_command_writes_the_report(tiny_run, capsys):
    run = tiny_run.parent / "default-output"
    run.mkdir()
    for f in tiny_run.iterdir():
        (run / f.name).write_bytes(f.read_bytes())
    assert main(["evaluate", str(run), "-K", "50", "--quiet", "--seed", "3"]) == 0
    report = json.loads((run / "evaluation.json").read_text())  # by default, in the run
    out = capsys.readouterr().out
    assert "log p(x) >= IWAE_50" in out and "nats/datapoint" in out
    assert (f"on these {TEST_SIZE} images, log p(x) = E_q[log p(x|z)] - KL(q || p(z)) + "
            "KL(q || p(z|x))") in out
    assert report["settings"]["num_samples"] == 50 and report["num_datapoints"] == TEST_SIZE
    for key in ("log_px", "elbo", "gap", "test_elbo", "kl_to_prior", "active_units",
                "pareto_k", "log_px_by_k"):
        assert key in report
    # the same numbers as the library on the same test set, seed and memory budget
    vae, checkpoint = RunFolder(run).load_vae()
    test = load_data(checkpoint.config, train=False).test
    est = estimate_log_px(vae, test, num_samples=50, pareto_k=True,
                          execution=Execution(seed=3))
    assert_close(report["log_px"]["mean"], est.mean, rtol=1e-6)
    assert_close(report["log_px"]["mc_stderr"], est.mean_mc_stderr, rtol=1e-5)
    assert_close(report["pareto_k"]["values"], est.pareto_k, rtol=1e-6)
    test_elbo = mean_elbo(vae, test, execution=Execution(block_size=TEST_SIZE))
    assert report["test_elbo"]["mean"] == pytest.approx(test_elbo, rel=1e-6)
    assert report["log_px"]["mean"] > report["elbo"]["mean"]  # same samples: Jensen
    assert report["log_px"]["mean"] > report["test_elbo"]["mean"]


def test_evaluate_command_options(tiny_run, tmp_path):
    output = tmp_path / "e.json"
    assert main(["evaluate", str(tiny_run / "checkpoint.pt"), "-K", "30", "--test-size", "8",
                 "--no-psis", "--quiet", "--output", str(output)]) == 0
    report = json.loads(output.read_text())
    assert report["num_datapoints"] == 8 and report["pareto_k"] is None


def test_evaluate_command_errors(tmp_path, capsys):
    bad = tmp_path / "not_a_checkpoint.pt"
    bad.write_bytes(b"garbage")
    assert main(["evaluate", str(bad), "-K", "10"]) == 2
    assert capsys.readouterr().err.startswith("pyro-vae: error:")
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", str(tmp_path / "missing.pt")])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit):
        main(["evaluate", str(bad), "-K", "0"])


@pytest.mark.parametrize("args,message", [
    (["-K", "10", "--chains", "5"], "--chains sets AIS, which --method is does not run"),
    (["--method", "is", "--ais-steps", "5", "--schedule", "linear"],
     "--ais-steps, --schedule set AIS"),
    (["--method", "ais", "-K", "10"], "-K/--importance-samples sets importance sampling's K"),
    (["--gap-steps", "5"], "--gap-steps sets the fit of --gaps")])
def test_options_the_method_would_ignore_are_refused_in_one_line(tiny_run, tmp_path, args,
                                                                 message, capsys):
    output = tmp_path / "e.json"
    assert main(["evaluate", str(tiny_run), *args, "--quiet", "-o", str(output)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("pyro-vae: error:")
    assert message in err
    assert not output.exists()


def test_ais_options_go_with_method_is_when_bdmc_runs_ais(tiny_run, tmp_path):
    report = evaluate(tiny_run, tmp_path, "-K", "10", "--bdmc", "2", "--chains", "3",
                      "--ais-steps", "4", "--quiet")
    assert report["method"] == "is"
    assert report["bdmc"]["settings"]["num_chains"] == 3
    assert report["bdmc"]["settings"]["num_steps"] == 4


@pytest.mark.integration
def test_the_committed_default_model_gives_its_recorded_figure(tmp_path):
    """benchmarks/models/default (README): IWAE_5000 on the first 100 test images."""
    model = REPO / "benchmarks" / "models" / "default"
    before = sorted(p.name for p in model.iterdir())
    report = evaluate(model, tmp_path, "--method", "is", "-K", "5000", "--test-size", "100",
                      "--quiet")
    assert round(report["log_px"]["mean"], 3) == -95.069
    assert report["num_datapoints"] == 100 and report["settings"]["num_samples"] == 5000
    assert sorted(p.name for p in model.iterdir()) == before  # nothing written there


@pytest.mark.parametrize("evaluate", ["estimate_log_px", "ais", "mean_elbo", "elbo_terms"])
def test_a_bare_pyro_function_is_refused_in_one_line(evaluate):
    """A Pyro model function, not wrapped in Program(model, guide), is a ConfigTypeError that
    says where it goes, not an AttributeError from deep inside."""
    import pyro_vae.evaluation as evaluation
    from pyro_vae.errors import ConfigTypeError
    from pyro_vae.evaluation.elbo import elbo_terms

    function = elbo_terms if evaluate == "elbo_terms" else getattr(evaluation, evaluate)

    def model(x):
        pass

    with pytest.raises(ConfigTypeError, match=r"goes in Program\(model_fn, guide_fn\)"):
        function(model, torch.zeros(3, 4))
