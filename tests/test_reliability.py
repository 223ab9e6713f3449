"""Training under faults: a run that diverges stops with a message naming the epoch and step
and leaves the last good checkpoint loadable; a run killed with SIGKILL resumes and loses at
most the epoch it was in; bad data is refused before training starts."""

import json
import math
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pyro
import pytest
import torch

import pyro_vae.build as build_module
import pyro_vae.fit as fit_module
from pyro_vae import DataError, TrainingDivergedError, cli
from pyro_vae.build import load_data
from pyro_vae.config import TrainConfig
from pyro_vae.data import load_dataset
from pyro_vae.evaluation import mean_elbo
from pyro_vae.fit import fit
from pyro_vae.runs import RunFolder, load_checkpoint
from pyro_vae.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(hidden_sizes=(16,), latent_dim=2, batch_size=32, train_size=96, test_size=64)
TINY_ARGS = ["--hidden-sizes", "16", "--latent-dim", "2", "--batch-size", "32",
             "--train-size", "96", "--test-size", "64", "--quiet", "--no-plots"]


@pytest.fixture(scope="module")
def mnist():
    return load_dataset("mnist")


def finite_weights(state: dict) -> bool:
    return all(bool(torch.isfinite(v).all()) for v in state.values() if v.is_floating_point())


def explode_lr_after_first_epoch(monkeypatch):
    """Epoch 1 keeps its learning rate and every later epoch gets 1e6: a real optimizer
    blow-up, with the first epoch's checkpoint as the last good state."""
    monkeypatch.setattr(fit_module, "learning_rate",
                        lambda config, epoch: config.lr if epoch == 1 else 1e6)


# what a divergence at a step is said to be, from the values alone
DIVERGED = (r"training diverged at epoch \d+, step \d+: (the loss is (nan|-?inf)(: a "
            r"distribution's parameter left its support \(an encoder's scale that underflowed "
            r"to 0, say\))?|a parameter became NaN or infinite \(through its gradient\))\. "
            r"Likely causes: ")


def before_step(monkeypatch, step: int, action):
    """Run ``action(vae)`` just before the trainer's step number ``step`` (from 1)."""
    real_step = Trainer.step

    def sabotaged(self, x, **kwargs):
        if self.steps == step - 1:
            action(self.objective.vae)
        return real_step(self, x, **kwargs)

    monkeypatch.setattr(Trainer, "step", sabotaged)


# --- numerical faults ---------------------------------------------------------------------
@pytest.mark.parametrize("every_step", [False, True], ids=["validate-first-step", "validate-all"])
def test_divergence_stops_with_epoch_and_step_and_keeps_the_last_good_checkpoint(
    tmp_path, mnist, monkeypatch, every_step
):
    """Caught by the loss check (validation off after the first step) or, with validation on
    every step, by torch's constraint check inside the step, which fit then confirms from the
    values (the parameters, and the loss computed again without the checks): the same message
    either way."""
    config = TrainConfig(epochs=4, lr_schedule="burda", validate_every_step=every_step, **TINY)
    data = load_data(config, dataset=mnist)
    explode_lr_after_first_epoch(monkeypatch)
    with pytest.raises(TrainingDivergedError) as info:
        fit(config, tmp_path, data=data, progress=False, log=lambda *a: None)
    message = str(info.value)
    assert message.startswith("training diverged at epoch 2, step ")
    assert re.match(DIVERGED, message), message
    assert "Likely causes: a learning rate too high" in message
    assert f"The last good checkpoint, {tmp_path / 'checkpoint.pt'}, is intact." in message
    assert "\n" not in message

    ckpt = load_checkpoint(tmp_path / "checkpoint.pt")
    assert ckpt.epoch == 1 and finite_weights(ckpt.model_state)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert [r["epoch"] for r in metrics["epochs"]] == [1]
    assert math.isfinite(metrics["epochs"][0]["test_elbo"])

    # the checkpoint is exactly the state after epoch 1 of the same run, undiverged
    monkeypatch.undo()
    one_epoch = fit(TrainConfig(epochs=1, **TINY), None, data=data, progress=False,
                    log=lambda *a: None)
    for name, value in one_epoch.vae.state_dict().items():
        assert torch.equal(ckpt.model_state[name], value), name
    vae, _ = RunFolder(tmp_path).load_vae()
    assert mean_elbo(vae, data.test) == pytest.approx(
        metrics["epochs"][0]["test_elbo"], rel=1e-6)


@pytest.mark.parametrize("every_step", [False, True], ids=["validate-first-step", "validate-all"])
def test_an_encoder_scale_that_underflows_to_zero_is_a_divergence(tmp_path, mnist, monkeypatch,
                                                                  every_step):
    """Finite weights whose encoder scale is exp(-1000) = 0: torch's check refuses the Normal
    inside the step (validation on), and the loss computed again without the check is not
    finite; without validation the step's loss itself is not. Either way a divergence at that
    step, one line, the last good checkpoint intact."""
    config = TrainConfig(epochs=3, validate_every_step=every_step, **TINY)
    steps_per_epoch = math.ceil(TINY["train_size"] / TINY["batch_size"])

    def underflow(vae):
        with torch.no_grad():
            vae.encoders[0].log_scale.weight.zero_()
            vae.encoders[0].log_scale.bias.fill_(-1000.0)

    before_step(monkeypatch, steps_per_epoch + 2, underflow)
    with pytest.raises(TrainingDivergedError) as info:
        fit(config, tmp_path, data=load_data(config, dataset=mnist), progress=False,
            log=lambda *a: None)
    message = str(info.value)
    assert re.match(DIVERGED, message) and "\n" not in message, message
    assert message.startswith("training diverged at epoch 2, step 2: the loss is ")
    if every_step:  # torch's check raised, and the values confirmed it
        assert isinstance(info.value.__cause__, ValueError)
        assert "a distribution's parameter left its support" in message
    assert message.endswith(f"The last good checkpoint, {tmp_path / 'checkpoint.pt'}, is "
                            "intact.")
    ckpt = load_checkpoint(tmp_path)
    assert ckpt.epoch == 1 and finite_weights(ckpt.model_state)


def test_a_non_finite_parameter_is_a_divergence_whatever_the_error_says(tmp_path, mnist,
                                                                      monkeypatch):
    """Divergence is judged from the values, not from the words of the error raised."""
    config = TrainConfig(epochs=1, **TINY)

    def blow_up(vae):
        with torch.no_grad():
            vae.decoder.out.bias[0] = float("inf")
        raise ValueError("some error whose words name no distribution")

    before_step(monkeypatch, 2, blow_up)
    with pytest.raises(TrainingDivergedError, match=r"^training diverged at epoch 1, step 2: a "
                       r"parameter became NaN or infinite \(through its gradient\)\. Likely "
                       r"causes: [^\n]*$"):
        fit(config, tmp_path / "run", data=load_data(config, dataset=mnist), progress=False,
            log=lambda *a: None)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


@pytest.mark.parametrize("error", [
    ValueError("Expected parameter scale (Tensor of shape (32, 2)) of distribution Normal to "
               "satisfy the constraint GreaterThan(lower_bound=0.0), but found invalid values"),
    DataError("x: 3 of 32 values are NaN or infinite"),
], ids=["torch-like message", "project error"])
def test_an_error_of_a_network_that_has_not_diverged_is_raised_as_it_is(tmp_path, mnist,
                                                                        monkeypatch, error):
    """Finite weights and a finite loss: whatever the error's words (even torch's constraint
    message), it is no divergence, and it reaches the caller unchanged."""
    config = TrainConfig(epochs=2, **TINY)

    def fail(vae):
        raise error

    before_step(monkeypatch, 5, fail)
    with pytest.raises(type(error)) as info:
        fit(config, tmp_path, data=load_data(config, dataset=mnist), progress=False,
            log=lambda *a: None)
    assert info.value is error
    assert load_checkpoint(tmp_path).epoch == 1  # epoch 1's checkpoint, as it was


def test_divergence_without_validation_is_caught_by_the_loss_check(tmp_path, mnist, monkeypatch):
    """With distribution validation off, nothing raises inside the step: the non-finite loss
    itself must stop the run."""
    config = TrainConfig(epochs=4, lr_schedule="burda", **TINY)
    data = load_data(config, dataset=mnist)
    explode_lr_after_first_epoch(monkeypatch)
    pyro.enable_validation(False)
    try:
        with pytest.raises(TrainingDivergedError, match=r"^training diverged at epoch 2, "
                                                        r"step \d+: the loss is (inf|nan)\. "):
            fit(config, tmp_path, data=data, progress=False, log=lambda *a: None)
    finally:
        pyro.enable_validation(True)
    assert load_checkpoint(tmp_path).epoch == 1


def test_cli_divergence_is_one_line_and_exit_2(tmp_path, mnist, monkeypatch, capsys):
    explode_lr_after_first_epoch(monkeypatch)
    monkeypatch.setattr(build_module, "load_dataset", lambda *a, **k: mnist)
    status = cli.main(["train", "--epochs", "3", "--lr-schedule", "burda", "--out",
                       str(tmp_path), *TINY_ARGS])
    assert status == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1
    assert errors[0].startswith("pyro-vae: error: training diverged at epoch 2, step ")
    assert load_checkpoint(tmp_path).epoch == 1


def test_cli_divergence_in_the_first_epoch(tmp_path, mnist, monkeypatch, capsys):
    """lr = 1e6: Adam moves every weight by about 1e6 at the first step, and the encoder's
    scale underflows to 0 at the second; there is no good checkpoint to point to yet."""
    monkeypatch.setattr(build_module, "load_dataset", lambda *a, **k: mnist)
    status = cli.main(["train", "--epochs", "3", "--lr", "1e6", "--out", str(tmp_path / "run"),
                       *TINY_ARGS])
    assert status == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1
    assert re.match(r"pyro-vae: error: training diverged at epoch 1, step \d+: .*\. Likely "
                    r"causes: a learning rate too high \(try --lr 1e-4\)", errors[0])
    assert "checkpoint" not in errors[0] and not (tmp_path / "run" / "checkpoint.pt").exists()


@pytest.mark.parametrize("estimator", ["meanfield", "analytic"])
@pytest.mark.parametrize("every_step", [False, True])
def test_validation_runs_on_the_first_step_of_each_fit_call(tmp_path, mnist, monkeypatch,
                                                           estimator, every_step):
    """Pyro's and torch's validation is on for the first step of a run and of its resumption,
    then off unless ``validate_every_step``; a global ``enable_validation(False)`` wins."""
    seen = []
    step = Trainer.step

    def checked_step(self, *a, **k):
        seen.append((pyro.infer.util.is_validation_enabled(),
                     torch.distributions.Distribution._validate_args))
        return step(self, *a, **k)

    monkeypatch.setattr(Trainer, "step", checked_step)
    config = TrainConfig(epochs=2, estimator=estimator, validate_every_step=every_step, **TINY)
    steps_per_epoch = math.ceil(TINY["train_size"] / TINY["batch_size"])
    fit(config, tmp_path, data=load_data(config, dataset=mnist), progress=False,
        log=lambda *a: None)
    fit(TrainConfig(**{**config.to_dict(), "epochs": 3}), tmp_path, resume=True,
        progress=False, log=lambda *a: None)
    first_of_each_call = [0, 2 * steps_per_epoch]
    assert len(seen) == 3 * steps_per_epoch
    for i, flags in enumerate(seen):
        assert flags == ((True, True) if every_step or i in first_of_each_call
                         else (False, False)), i
    assert pyro.infer.util.is_validation_enabled()  # restored after the run

    seen.clear()
    pyro.enable_validation(False)
    try:
        fit(config, None, data=load_data(config, dataset=mnist), progress=False,
            log=lambda *a: None)
    finally:
        pyro.enable_validation(True)
    assert seen and all(flags == (False, False) for flags in seen)


# --- bad data reaching fit ------------------------------------------------------------------
def test_fit_refuses_nan_in_training_data(mnist):
    config = TrainConfig(epochs=1, **TINY)
    prepared = load_data(config, dataset=mnist)
    train = prepared.train.clone()
    train[3, 100] = float("nan")
    with pytest.raises(DataError, match=r"training set: 1 of 75264 values are NaN or infinite"):
        fit(config, None, data=prepared._replace(train=train), progress=False)


def test_fit_refuses_a_test_set_with_another_feature_size(mnist):
    config = TrainConfig(epochs=1, **TINY)
    prepared = load_data(config, dataset=mnist)
    with pytest.raises(DataError, match=r"mnist test set must have shape \(N, 784\), found "
                                        r"\(64, 100\)$"):
        fit(config, None, data=prepared._replace(test=prepared.test[:, :100]), progress=False)


def test_resume_with_data_of_another_feature_size(tmp_path, mnist):
    config = TrainConfig(epochs=1, **TINY)
    prepared = load_data(config, dataset=mnist)
    fit(config, tmp_path, data=prepared, progress=False, log=lambda *a: None)
    smaller = prepared._replace(train=prepared.train[:, :100], test=prepared.test[:, :100])
    with pytest.raises(DataError, match=rf"100 features per datapoint, expected 784 like "
                                        rf"{tmp_path / 'checkpoint.pt'}"):
        fit(TrainConfig(epochs=2, **TINY), tmp_path, resume=True, data=smaller, progress=False)


# --- crash safety: SIGKILL and resume ----------------------------------------------------------
def read_epochs(path: Path) -> list:
    try:
        return json.loads(path.read_text())["epochs"]
    except FileNotFoundError:
        return []


STALL_AFTER_EPOCH = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {root!r})
    import torch
    torch.set_num_threads(1)
    from pyro_vae.config import TrainConfig
    from pyro_vae.fit import fit

    def log(line):
        print(line, flush=True)
        if line.startswith("epoch   5/"):  # epoch 5 trained, its files not yet written
            print("stalled", flush=True)
            time.sleep(600)

    fit(TrainConfig(epochs={epochs}, **{tiny!r}), {run!r}, progress=False, log=log)
""")


@pytest.mark.integration
def test_sigkill_then_resume_loses_at_most_the_epoch_under_way(tmp_path, mnist):
    """Kill a training process with SIGKILL at a known point (epoch 5 trained and reported,
    its checkpoint not yet written), resume it from the command line, and check that (a) the
    checkpoint holds every epoch before the one under way, (b) the resumed process trains
    only the remaining epochs, (c) the final metrics list epochs 1..E once each, finite, with
    the epochs before the kill unchanged, and equal to those of an uninterrupted run."""
    epochs, run = 8, tmp_path / "run"
    child = STALL_AFTER_EPOCH.format(root=str(ROOT), epochs=epochs, tiny=TINY, run=str(run))
    with subprocess.Popen([sys.executable, "-c", child], cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True) as proc:
        try:
            for line in proc.stdout:
                if line.strip() == "stalled":
                    break
            else:
                raise AssertionError(proc.stderr.read())
            os.kill(proc.pid, signal.SIGKILL)
            assert proc.wait(timeout=30) == -signal.SIGKILL
        finally:
            if proc.poll() is None:
                proc.kill()
    done = load_checkpoint(run).epoch
    assert done == 4  # only the epoch under way (5) is lost
    before_kill = read_epochs(run / "metrics.json")
    assert [r["epoch"] for r in before_kill] == [1, 2, 3, 4]

    resumed = subprocess.run([sys.executable, "-m", "pyro_vae", "train", "--resume", str(run),
                              "--quiet", "--no-plots"],
                             cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {run / 'checkpoint.pt'} after epoch {done} of {epochs}" in resumed.stdout
    trained = [line.split()[1] for line in resumed.stdout.splitlines()
               if line.startswith("epoch ")]
    assert trained == [f"{e}/{epochs}" for e in range(done + 1, epochs + 1)]

    final = read_epochs(run / "metrics.json")
    assert [r["epoch"] for r in final] == list(range(1, epochs + 1))
    for record in final:
        assert math.isfinite(record["train_objective_nats"])
        assert record["test_elbo"] < 0  # a bound on a log-probability of binary images
    assert final[:done] == before_kill
    ckpt = load_checkpoint(run)
    assert ckpt.epoch == epochs and finite_weights(ckpt.model_state)

    # and the interrupted run ends where an uninterrupted one does
    config = TrainConfig(epochs=epochs, **TINY)
    straight = fit(config, None, data=load_data(config, dataset=mnist), progress=False,
                   log=lambda *a: None)
    for record, expected in zip(final, straight.history, strict=True):
        assert record["train_objective_nats"] == pytest.approx(
            expected["train_objective_nats"], rel=1e-6)
        assert record["test_elbo"] == pytest.approx(expected["test_elbo"], rel=1e-6)
