"""The command line's train command, end to end on a small subset of the shipped MNIST."""

import json
import subprocess
import sys

import pytest

from pyro_vae.cli import main

TINY = ["--train-size", "256", "--test-size", "64", "--hidden-sizes", "16", "--latent-dim",
        "3", "--quiet", "--no-plots"]


def test_train_writes_metrics_and_prints_the_test_elbo_in_nats(tmp_path, capsys):
    assert main(["train", "--epochs", "2", "--out", str(tmp_path), *TINY]) == 0
    out = capsys.readouterr()
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    final = metrics["epochs"][-1]["test_elbo"]
    assert f"test ELBO {final:.3f} nats/datapoint" in out.out
    assert (tmp_path / "checkpoint.pt").is_file()


@pytest.mark.integration
def test_console_module_entry_point_runs(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "pyro_vae", "train", "--epochs", "1", "--estimator", "analytic",
         "--out", str(tmp_path), *TINY],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "nats/datapoint" in proc.stdout
    assert json.loads((tmp_path / "metrics.json").read_text())["config"]["estimator"] == "analytic"


def test_validate_every_step_reaches_the_saved_config(tmp_path):
    assert main(["train", "--epochs", "1", "--out", str(tmp_path / "a"), *TINY]) == 0
    assert main(["train", "--epochs", "1", "--validate-every-step", "--out", str(tmp_path / "b"),
                 *TINY]) == 0
    configs = [json.loads((tmp_path / run / "metrics.json").read_text())["config"]
               for run in ("a", "b")]
    assert [c["validate_every_step"] for c in configs] == [False, True]
    # validation changes no number: the same seed gives the same run
    results = [json.loads((tmp_path / run / "metrics.json").read_text())["epochs"][0]
               for run in ("a", "b")]
    assert results[0]["test_elbo"] == results[1]["test_elbo"]


def test_terminal_output_is_plain_ascii(tmp_path, capsys):
    """One notation per medium: the terminal and logs get ASCII (k-hat, >=, sigma); pictures
    and documents keep the mathematical symbols."""
    run = tmp_path / "run"
    assert main(["train", "--epochs", "1", "--out", str(run), *TINY]) == 0
    assert main(["evaluate", str(run), "-K", "30", "--quiet"]) == 0
    assert main(["evaluate", str(run), "--ais-steps", "3", "--chains", "2", "--test-size", "4",
                 "--quiet", "-o", str(tmp_path / "ais.json")]) == 0
    assert main(["sample", str(run), "-n", "4", "--seed", "1"]) == 0
    assert main(["plot", str(run), "--curves-only"]) == 0
    out = capsys.readouterr()
    text = out.out + out.err
    assert text and all(ord(c) < 128 for c in text), sorted({c for c in text if ord(c) > 127})


def test_ctrl_c_before_the_first_epoch_ends_says_nothing_was_saved(tmp_path, capsys,
                                                                   monkeypatch):
    from pyro_vae.commands import train

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "fit", interrupted)
    assert main(["train", "--epochs", "1", "--out", str(tmp_path / "run"), *TINY]) == 130
    err = capsys.readouterr().err
    assert "pyro-vae: interrupted (exit status 130). No epoch had finished: nothing was " \
           "saved." in err


def test_every_option_that_takes_a_value_shows_its_default():
    """`--help` of every command names each option's default (flags are off unless
    given; `--resume RUN_DIR` has no default: without it a new run starts)."""
    from pyro_vae.cli import build_parser

    commands = build_parser()._subparsers._group_actions[0].choices
    assert set(commands) >= {"train", "evaluate", "sample", "plot"}
    missing = [(name, action.option_strings) for name, sub in commands.items()
               for action in sub._actions
               if action.option_strings and action.nargs != 0 and action.dest != "resume"
               and "default" not in (action.help or "")]
    assert missing == []
