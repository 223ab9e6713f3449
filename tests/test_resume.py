"""Resuming a run: an interrupted and resumed run gives the same per-epoch figures and the
same final parameters as an uninterrupted one with the same seed (weights, optimizer state,
epoch counter, RNG states, β warm-up and the learning-rate schedule all carried over)."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pyro_vae.build import load_data
from pyro_vae.cli import main
from pyro_vae.config import TrainConfig
from pyro_vae.errors import ConfigError
from pyro_vae.fit import fit
from pyro_vae.runs import load_checkpoint
from tests.conftest import assert_close

REPO = Path(__file__).resolve().parents[1]
TINY = TrainConfig(train_size=384, test_size=128, batch_size=128, hidden_sizes=(24,),
                   latent_dim=3, epochs=4, seed=3)
SCHEDULES = {
    "constant": {},
    "burda+warmup": {"lr_schedule": "burda", "beta_warmup_epochs": 3, "lr": 3e-3},
}
COMPARED = ("epoch", "train_objective_nats", "test_elbo", "beta", "lr", "steps")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread, here and in the CLI test's subprocess: bit-equal figures need the
    same thread count on both sides of a comparison, and one thread is fastest on shared
    cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data():
    """The tiny data set, read once for the module (every ``fit`` would read MNIST again)."""
    return load_data(TINY)


def quiet(*args, **kwargs):
    pass


def interrupt_after(out_dir: Path, epoch: int):
    """A ``log`` for :func:`fit` that raises KeyboardInterrupt (as Ctrl-C would) once the
    checkpoint of ``epoch`` is on disk: the run stops between two epochs."""

    def log(*args, **kwargs):
        path = out_dir / "checkpoint.pt"
        if path.exists() and load_checkpoint(path).epoch >= epoch:
            raise KeyboardInterrupt

    return log


def assert_same_run(history_a, history_b, vae_a, vae_b):
    assert [r["epoch"] for r in history_a] == [r["epoch"] for r in history_b]
    for a, b in zip(history_a, history_b, strict=True):
        for key in COMPARED:
            assert_close(b[key], a[key], rtol=0, atol=1e-6, msg=f"epoch {a['epoch']}: {key}")
    state_a, state_b = vae_a.state_dict(), vae_b.state_dict()
    assert state_a.keys() == state_b.keys()
    for name in state_a:
        assert_close(state_b[name], state_a[name], rtol=0, atol=1e-6, msg=name)


@pytest.mark.parametrize("schedule", list(SCHEDULES))
@pytest.mark.parametrize("estimator", ["meanfield", "analytic"])
def test_interrupted_and_resumed_run_equals_uninterrupted(tmp_path, data, estimator, schedule):
    config = dataclasses.replace(TINY, estimator=estimator, **SCHEDULES[schedule])
    whole = fit(config, tmp_path / "whole", data=data, log=quiet)

    with pytest.raises(KeyboardInterrupt):
        fit(config, tmp_path / "cut", data=data, log=interrupt_after(tmp_path / "cut", 2))
    assert load_checkpoint(tmp_path / "cut").epoch == 2
    torch.manual_seed(12345)  # whatever the global RNG did since, the checkpoint's wins
    resumed = fit(None, tmp_path / "cut", resume=True, data=data, log=quiet)

    assert_same_run(whole.history, resumed.history, whole.vae, resumed.vae)
    saved = json.loads((tmp_path / "cut" / "metrics.json").read_text())["epochs"]
    assert [r["test_elbo"] for r in saved] == [r["test_elbo"] for r in resumed.history]
    if schedule != "constant":  # the schedules did change across the cut
        assert len({r["lr"] for r in whole.history}) > 1
        assert [r["beta"] for r in whole.history] == pytest.approx([1 / 3, 2 / 3, 1, 1])


def test_iwae_resumes_exactly(tmp_path, data):
    config = dataclasses.replace(TINY, estimator="iwae", num_particles=3, epochs=3,
                                 **SCHEDULES["burda+warmup"])
    whole = fit(config, tmp_path / "whole", data=data, log=quiet)
    with pytest.raises(KeyboardInterrupt):
        fit(config, tmp_path / "cut", data=data, log=interrupt_after(tmp_path / "cut", 1))
    resumed = fit(None, tmp_path / "cut", resume=True, data=data, log=quiet)
    assert_same_run(whole.history, resumed.history, whole.vae, resumed.vae)


@pytest.mark.parametrize("model", [
    {"flow": "iaf", "estimator": "meanfield"},
    {"preset": "burda2", "hidden_sizes": None, "latent_dim": None, "estimator": "analytic"},
], ids=["iaf", "two-layers"])
def test_every_kind_of_model_resumes_exactly(tmp_path, data, model):
    """A flow guide and two stochastic layers: their weights sit in lists of networks
    (encoders, priors, flows), restored by name, and the optimizer state by position."""
    config = dataclasses.replace(TINY, epochs=3, **model)
    whole = fit(config, tmp_path / "whole", data=data, log=quiet)
    with pytest.raises(KeyboardInterrupt):
        fit(config, tmp_path / "cut", data=data, log=interrupt_after(tmp_path / "cut", 1))
    resumed = fit(None, tmp_path / "cut", resume=True, data=data, log=quiet)
    assert_same_run(whole.history, resumed.history, whole.vae, resumed.vae)


@pytest.mark.parametrize("estimator", ["meanfield", "analytic"])
def test_resume_with_more_epochs_extends_the_run(tmp_path, data, estimator):
    """E1 epochs, then ``fit(config with epochs=E, resume=True)``: the same as E epochs at
    once (constant learning rate; a β warm-up depends only on the epoch number)."""
    config = dataclasses.replace(TINY, estimator=estimator, beta_warmup_epochs=2)
    whole = fit(config, tmp_path / "whole", data=data, log=quiet)
    fit(dataclasses.replace(config, epochs=1), tmp_path / "short", data=data, log=quiet)
    extended = fit(config, tmp_path / "short", resume=True, data=data, log=quiet)
    assert_same_run(whole.history, extended.history, whole.vae, extended.vae)


def test_resume_refuses_a_different_configuration(tmp_path, data):
    fit(dataclasses.replace(TINY, epochs=1), tmp_path, data=data, log=quiet)
    with pytest.raises(ConfigError, match=r"lr 0\.01 \(saved: 0\.001\)"):
        fit(dataclasses.replace(TINY, lr=1e-2), tmp_path, resume=True, data=data, log=quiet)
    with pytest.raises(ConfigError, match="train_size"):  # a bare TrainConfig(epochs=E)
        fit(TrainConfig(epochs=4), tmp_path, resume=True, data=data, log=quiet)


def test_cli_resume_refuses_options_that_change_the_run_and_changes_nothing(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--epochs", "1", *CLI_TINY, "--out", str(run)]) == 0
    capsys.readouterr()
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    code = main(["train", "--resume", str(run), "--estimator", "iwae", "--lr", "0.5",
                 "--batch-size", "7", "--epochs", "2", "--quiet", "--no-plots"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "cannot resume with a different configuration: " in err
    for conflict in ("--estimator 'iwae' (saved: 'meanfield')", "--lr 0.5 (saved: 0.001)",
                     "--batch-size 7 (saved: 128)"):
        assert conflict in err
    assert "--epochs" not in err
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    # the options that may change are honoured: more epochs, another (equal) data folder
    data_dir = str(REPO / "pyro_vae" / "datasets" / "mnist")
    assert main(["train", "--resume", str(run), "--epochs", "2", "--data-dir", data_dir,
                 "--quiet", "--no-plots"]) == 0
    assert load_checkpoint(run).epoch == 2 and load_checkpoint(run).config.data_dir == data_dir


def test_resuming_a_finished_run_trains_nothing(tmp_path, data):
    first = fit(dataclasses.replace(TINY, epochs=2), tmp_path, data=data, log=quiet)
    again = fit(None, tmp_path, resume=True, data=data, log=quiet)
    assert again.history == first.history
    assert_same_run(first.history, again.history, first.vae, again.vae)


CLI_TINY = ["--train-size", "384", "--test-size", "128", "--hidden-sizes", "24",
            "--latent-dim", "3", "--seed", "3", "--quiet", "--no-plots"]


# The command line in a child whose standard output stalls once epoch 2 is reported (before
# its files are written), so that Ctrl-C arrives at a known point, not wherever the tiny epochs
# have got to when the parent reads the line.
STALL_AFTER_EPOCH_2 = """
import sys, time
sys.path.insert(0, {root!r})

class Stalling:
    def __init__(self, stream):
        self.stream = stream
    def write(self, text):
        written = self.stream.write(text)
        self.stream.flush()
        if text.startswith("epoch") and " 2/6 " in text:
            self.stream.write("\\nstalled\\n")
            self.stream.flush()
            time.sleep(600)
        return written
    def __getattr__(self, name):
        return getattr(self.stream, name)

sys.stdout = Stalling(sys.stdout)
from pyro_vae.cli import main
sys.exit(main({argv!r}))
"""


@pytest.mark.integration
def test_cli_ctrl_c_then_resume_equals_uninterrupted(tmp_path):
    """``pyro-vae train`` stopped by SIGINT after its second epoch line, then
    ``pyro-vae train --resume``, against one uninterrupted ``pyro-vae train``."""
    args = ["--epochs", "6", "--lr-schedule", "burda", "--beta-warmup", "2", *CLI_TINY]
    assert main(["train", *args, "--out", str(tmp_path / "whole")]) == 0

    cut = tmp_path / "cut"
    child = STALL_AFTER_EPOCH_2.format(root=str(REPO), argv=["train", *args, "--out", str(cut)])
    # SIGINT as from a terminal: a test run started in the background by a shell without job
    # control (`pytest &` in a script) ignores SIGINT, and a child inherits that; the child then
    # never saw the Ctrl-C, and the test failed for a reason outside the package.
    proc = subprocess.Popen(
        [sys.executable, "-c", child], cwd=REPO, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"),
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        for line in proc.stdout:
            if line.strip() == "stalled":
                proc.send_signal(signal.SIGINT)
                break
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "interrupted" in err
    assert load_checkpoint(cut).epoch == 1  # epoch 2 was reported, not yet saved

    assert main(["train", "--resume", str(cut), "--quiet", "--no-plots"]) == 0
    whole = json.loads((tmp_path / "whole" / "metrics.json").read_text())["epochs"]
    resumed = json.loads((cut / "metrics.json").read_text())["epochs"]
    assert len(resumed) == 6
    for a, b in zip(whole, resumed, strict=True):
        for key in COMPARED:
            assert_close(b[key], a[key], rtol=0, atol=1e-6, msg=f"epoch {a['epoch']}: {key}")


def test_cli_resume_with_epochs_extends(tmp_path, capsys):
    assert main(["train", "--epochs", "3", *CLI_TINY, "--out", str(tmp_path / "whole")]) == 0
    assert main(["train", "--epochs", "1", *CLI_TINY, "--out", str(tmp_path / "short")]) == 0
    assert main(["train", "--resume", str(tmp_path / "short"), "--epochs", "3", "--quiet",
                 "--no-plots"]) == 0
    assert "after 3 epochs" in capsys.readouterr().out
    whole = json.loads((tmp_path / "whole" / "metrics.json").read_text())["epochs"]
    extended = json.loads((tmp_path / "short" / "metrics.json").read_text())["epochs"]
    assert [r["test_elbo"] for r in extended] == pytest.approx(
        [r["test_elbo"] for r in whole], rel=0, abs=1e-6)
