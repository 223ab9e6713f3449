"""pyro_vae.runs: a run folder is owned (locked, never overwritten by accident), its checkpoint
is verified entry by entry (its format tag and version first) and kept with its predecessor,
it loads on the CPU whatever device it was trained on, and files of older format versions
(1 and 2) are read through explicit migrations that give the numbers the old code gave."""

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from pyro_vae import CheckpointError, ConfigError, DataError, RunFolderError
from pyro_vae.config import TrainConfig
from pyro_vae.files import read_torch_file, save_torch_file
from pyro_vae.fit import fit
from pyro_vae.runs import METRICS_SCHEMA, RunFolder, load_checkpoint, vae_from_checkpoint
from pyro_vae.runs.schema import CHECKPOINT_FORMAT, CHECKPOINT_VERSION
from tests.conftest import binary_batch

ROOT = Path(__file__).resolve().parents[1]
V1 = Path(__file__).parent / "data" / "v1"
TINY = dict(train_size=64, test_size=32, hidden_sizes=(8,), latent_dim=2, batch_size=32)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A finished 2-epoch run folder (copy it before changing it)."""
    out = tmp_path_factory.mktemp("trained") / "run"
    fit(TrainConfig(epochs=2, **TINY), out, progress=False, log=lambda *a: None)
    return out


@pytest.fixture(scope="module")
def trained_flow(tmp_path_factory) -> Path:
    """The same run with an IAF guide: weights under encoders.0.* and flows.0.*."""
    out = tmp_path_factory.mktemp("trained_flow") / "run"
    fit(TrainConfig(epochs=2, flow="iaf", **TINY), out, progress=False, log=lambda *a: None)
    return out


def same_outputs(a, b) -> None:
    """Two VAEs compute the same numbers, bit for bit, on the same inputs: the guide layer by
    layer (with its flow), the prior, the likelihood, and the pictures' encode and decode."""
    x = binary_batch(5, 784, seed=7)
    path_a = a.guide_path(x, num_samples=3, generator=torch.Generator().manual_seed(1))
    path_b = b.guide_path(x, num_samples=3, generator=torch.Generator().manual_seed(1))
    for name in ("u", "zs", "locs", "scales", "log_q", "log_det"):
        p, q = getattr(path_a, name), getattr(path_b, name)
        if isinstance(p, torch.Tensor):
            p, q = [p], [q]
        assert len(p) == len(q) == (1 if name in ("u", "log_det") else a.num_layers), name
        assert all(torch.equal(s, t) for s, t in zip(p, q, strict=True)), name
    zs = path_a.zs
    assert torch.equal(a.log_likelihood(x, zs[0]), b.log_likelihood(x, zs[0]))
    for p, q in zip(a.log_prior(zs), b.log_prior(zs), strict=True):
        assert torch.equal(p, q)
    for p, q in zip(a.encode(x), b.encode(x), strict=True):
        assert torch.equal(p, q)
    z = torch.randn(4, a.latent_dim, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a.decode(z).base_dist.logits, b.decode(z).base_dist.logits)


def copy_of(run: Path, tmp_path: Path) -> RunFolder:
    target = tmp_path / run.name
    shutil.copytree(run, target)
    return RunFolder(target)


# --- checkpoints ------------------------------------------------------------------------------
def test_checkpoint_round_trip_and_the_previous_one_is_kept(trained, tmp_path):
    run = copy_of(trained, tmp_path)
    ckpt = run.load_checkpoint()
    assert ckpt.epoch == 2 and len(ckpt.history) == 2 and ckpt.x_dim == 784
    assert ckpt.image_shape == (28, 28) and ckpt.config.hidden_sizes == (8,)
    previous = load_checkpoint(run.previous_checkpoint)
    assert previous.epoch == 1 and previous.history == ckpt.history[:1]
    run.save_checkpoint(ckpt._replace(epoch=2))  # the third write: the second becomes previous
    assert load_checkpoint(run.previous_checkpoint).epoch == 2
    again = run.load_checkpoint()
    for name, tensor in ckpt.model_state.items():
        assert torch.equal(again.model_state[name], tensor)
    assert torch.equal(again.rng_state["torch"], ckpt.rng_state["torch"])


def test_reading_a_checkpoint_leaves_the_global_random_state_alone(trained):
    """Its shapes are checked against the VAE its configuration builds, without drawing that
    VAE's initial weights from torch's generator (a resumed run would go on differently)."""
    state = torch.get_rng_state()
    load_checkpoint(trained)
    RunFolder(trained).load_vae()
    assert torch.equal(torch.get_rng_state(), state)


def _damage(raw: dict, case: str) -> dict:
    state, trainer = dict(raw["model_state"]), dict(raw["trainer_state"])
    first = next(iter(state))
    if case == "extra weight":
        state["encoders.0.extra"] = torch.zeros(3)
    elif case == "wrong shape":
        state[first] = torch.zeros(5, 5)
    elif case == "no weights":
        state = {}
    elif case == "NaN weight":
        state[first] = torch.full_like(state[first], math.nan)
    elif case == "integer weight":
        state[first] = state[first].long()
    elif case == "beta not a number":
        return {**raw, "config": {**raw["config"], "beta": "abc"}}
    elif case == "hidden sizes not a list":
        return {**raw, "config": {**raw["config"], "hidden_sizes": 5}}
    elif case == "unknown config key":
        return {**raw, "config": {**raw["config"], "learning_rate": 1}}
    elif case == "garbage optimizer state":
        trainer = {"adam": "nonsense", "steps": 3}
    elif case == "optimizer moments of another shape":
        adam = dict(trainer["adam"])
        adam["state"] = {0: {"step": torch.tensor(1.0), "exp_avg": torch.zeros(2),
                             "exp_avg_sq": torch.zeros(2)}}
        trainer = {**trainer, "adam": adam}
    elif case == "garbage rng state":
        return {**raw, "rng_state": {"torch": torch.zeros(3, dtype=torch.uint8),
                                     "data": torch.zeros(3, dtype=torch.uint8), "python": [1]}}
    elif case == "history of another length":
        return {**raw, "history": raw["history"][:1]}
    elif case == "history of strings":
        return {**raw, "history": ["a", "b"]}
    elif case == "image shape of another size":
        return {**raw, "image_shape": [28, 27]}
    elif case == "format version 99":
        return {**raw, "format_version": 99}
    return {**raw, "model_state": state, "trainer_state": trainer}


DAMAGE = {
    "extra weight": r"model_state does not match the saved configuration: .*unexpected "
                    r"\['encoders.0.extra'\]",
    "wrong shape": r"model_state\['encoders.0.body.0.weight'\] has shape \(5, 5\)",
    "no weights": r"model_state does not match the saved configuration: missing",
    "NaN weight": r"model_state\['encoders.0.body.0.weight'\] holds NaN or infinite values",
    "integer weight": r"model_state\['encoders.0.body.0.weight'\] .* dtype torch.int64",
    "beta not a number": r"entry config: beta must be float or int, got 'abc'",
    "hidden sizes not a list": r"entry config: hidden_sizes must be tuple or None, got 5",
    "unknown config key": r"entry config: unknown configuration keys: learning_rate",
    "garbage optimizer state": r"entry trainer_state is not \{'adam': \.\.\., 'steps': int\}",
    "optimizer moments of another shape": r"trainer_state\['adam'\]\['state'\]\[0\]"
                                          r"\['exp_avg'\] is not a finite tensor of shape",
    "garbage rng state": r"rng_state holds states that no generator accepts",
    "history of another length": r"history is not a list of 2 per-epoch records",
    "history of strings": r"history\[0\] is not a metrics record",
    "image shape of another size": r"image_shape is \[28, 27\], expected two sizes whose "
                                   r"product is x_dim = 784",
    "format version 99": r"checkpoint format version 99; this pyro_vae reads versions 1 to 3$",
}


@pytest.mark.parametrize("case", list(DAMAGE), ids=list(DAMAGE))
def test_a_damaged_entry_is_refused_naming_the_file_and_the_entry(trained, tmp_path, case):
    run = copy_of(trained, tmp_path)
    torch.save(_damage(read_torch_file(run.checkpoint), case), run.checkpoint)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(run.checkpoint)
    message = str(info.value)
    assert message.startswith(f"{run.checkpoint}: ") and "\n" not in message
    assert re.search(DAMAGE[case], message), message


def test_a_run_of_ones_own_model_away_from_its_code_says_so_not_damaged(tmp_path, monkeypatch):
    code, elsewhere = tmp_path / "code", tmp_path / "elsewhere"
    code.mkdir(), elsewhere.mkdir()
    (code / "my_model.py").write_text("from tests.own_model import build  # noqa: F401\n")
    monkeypatch.chdir(code)  # --model MODULE is imported from the current folder
    fit(TrainConfig(epochs=1, model="my_model:build", train_size=64, test_size=32,
                    batch_size=32), code / "run", progress=False, log=lambda *a: None)
    monkeypatch.delitem(sys.modules, "my_model")
    monkeypatch.chdir(elsewhere)
    with pytest.raises(CheckpointError, match=r"checkpoint.pt: its model cannot be built here: "
                       r"model 'my_model:build': cannot import it \(ModuleNotFoundError: No "
                       r"module named 'my_model'\); expected MODULE:FUNCTION of a module "
                       r"importable here \(from the current folder or \$PYTHONPATH\)$"):
        load_checkpoint(code / "run")
    monkeypatch.chdir(code)
    assert load_checkpoint(code / "run").config.model == "my_model:build"


def test_a_damaged_latest_checkpoint_says_how_to_recover_the_previous(trained, tmp_path):
    run = copy_of(trained, tmp_path)
    raw = bytearray(run.checkpoint.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    run.checkpoint.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=r"The previous checkpoint, .*checkpoint.prev.pt "
                       r"\(epoch 1\), is intact: to go on from it, replace the damaged file "
                       r"with it \(mv "):
        run.load_checkpoint()
    os.replace(run.previous_checkpoint, run.checkpoint)  # what the message says to do
    result = fit(None, run, resume=True, progress=False, log=lambda *a: None)
    straight = json.loads((trained / "metrics.json").read_text())["epochs"]
    assert [r["test_elbo"] for r in result.history] == [r["test_elbo"] for r in straight]


def test_a_checkpoint_without_optimizer_state_evaluates_but_does_not_resume(trained, tmp_path):
    run = copy_of(trained, tmp_path)
    raw = read_torch_file(run.checkpoint)
    save_torch_file(run.checkpoint, {k: v for k, v in raw.items() if k != "trainer_state"})
    vae, ckpt = run.load_vae()
    assert ckpt.trainer_state is None and vae.x_dim == 784
    with pytest.raises(CheckpointError, match="holds no optimizer or RNG state: it can be "
                       "evaluated, not resumed"):
        fit(TrainConfig(epochs=3, **TINY), run, resume=True, progress=False)


@pytest.mark.parametrize("case, refusal", [
    ("dict without the tag", r"not a pyro_vae checkpoint: expected a dict tagged "
                             r"format='pyro_vae.checkpoint', found a dict with keys "
                             r"\['epoch', 'model_state'\]$"),
    ("another tag", r"not a pyro_vae checkpoint: expected a dict tagged "
                    r"format='pyro_vae.checkpoint', found a dict with keys \['config', "),
    ("a tensor", r"not a pyro_vae checkpoint: expected a dict tagged "
                 r"format='pyro_vae.checkpoint', found a Tensor$"),
    ("no format version", r"checkpoint format version None; this pyro_vae reads versions 1 "
                          r"to 3$"),
    ("text file", r"not a pyro_vae checkpoint: expected a torch.save zip archive, found a file "
                  r"starting with b'epoch 3\\n"),
])
def test_a_file_that_is_no_checkpoint_is_refused_naming_the_file(trained, tmp_path, case,
                                                                  refusal):
    """The format tag and version are checked where a checkpoint is read (read_torch_file, in
    pyro_vae.files, reads any torch file of plain data: tests/test_files.py)."""
    raw = read_torch_file(trained / "checkpoint.pt")
    assert raw["format"] == CHECKPOINT_FORMAT and raw["format_version"] == CHECKPOINT_VERSION == 3
    path = tmp_path / "checkpoint.pt"
    if case == "dict without the tag":
        torch.save({"model_state": raw["model_state"], "epoch": 2}, path)
    elif case == "another tag":
        torch.save({**raw, "format": "other.checkpoint"}, path)
    elif case == "a tensor":
        torch.save(torch.ones(3), path)
    elif case == "no format version":
        torch.save({k: v for k, v in raw.items() if k != "format_version"}, path)
    else:
        path.write_text("epoch 3\nthis is not a checkpoint\n")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    assert re.search(refusal, message), message


def test_a_checkpoint_of_a_gpu_run_loads_on_the_cpu(trained, tmp_path):
    """A run trained with device "cuda" (its saved configuration says so) loads, evaluates
    and resumes on a machine without a GPU, given device="cpu"."""
    run = copy_of(trained, tmp_path)
    raw = read_torch_file(run.checkpoint)
    save_torch_file(run.checkpoint, {**raw, "config": {**raw["config"], "device": "cuda"}})
    ckpt = load_checkpoint(run.checkpoint)
    assert ckpt.config.device == "cuda"
    vae, same = vae_from_checkpoint(ckpt, device="cpu")
    assert same is ckpt and not vae.training and vae.beta == 1.0
    assert {p.device.type for p in vae.parameters()} == {"cpu"}
    cpu_vae, _ = RunFolder(trained).load_vae()
    same_outputs(vae, cpu_vae)
    folder_vae, _ = run.load_vae(device="cpu")
    same_outputs(folder_vae, cpu_vae)
    if torch.cuda.is_available():
        return
    with pytest.raises(ConfigError, match="no CUDA GPU is available; use --device cpu"):
        fit(None, run, resume=True, progress=False, log=lambda *a: None)
    result = fit(TrainConfig(**{**ckpt.config.to_dict(), "device": "cpu", "epochs": 3}), run,
                 resume=True, progress=False, log=lambda *a: None)
    assert [r["epoch"] for r in result.history] == [1, 2, 3]
    assert result.history[:2] == ckpt.history
    assert load_checkpoint(run.checkpoint).config.device == "cpu"


# --- older format versions --------------------------------------------------------------------
def as_version_2(raw: dict) -> dict:
    """A version-3 checkpoint of a one-layer model as pyro_vae 0.2 wrote it: its encoder's
    weights under encoder.*, its flow's under flow.*, in the same order."""
    renames = (("encoders.0.", "encoder."), ("flows.0.", "flow."))
    state = {next((old + k[len(new):] for new, old in renames if k.startswith(new)), k): v
             for k, v in raw["model_state"].items()}
    return {**raw, "format_version": 2, "model_state": state}


@pytest.mark.parametrize("which", ["trained", "trained_flow"])
def test_a_version_2_checkpoint_of_a_one_layer_model_loads_through_the_migration(
        request, tmp_path, which):
    run = RunFolder(request.getfixturevalue(which))
    raw = read_torch_file(run.checkpoint)
    v2 = as_version_2(raw)
    prefixes = {k.split(".")[0] for k in v2["model_state"]}
    assert prefixes == ({"encoder", "decoder", "flow"} if which == "trained_flow"
                        else {"encoder", "decoder"})
    path = tmp_path / "checkpoint.pt"
    save_torch_file(path, v2)

    migrated, current = load_checkpoint(path), run.load_checkpoint()
    assert list(migrated.model_state) == list(current.model_state)  # names and order
    for name, tensor in current.model_state.items():
        assert torch.equal(migrated.model_state[name], tensor), name
    assert migrated.config == current.config and migrated.history == current.history
    same_outputs(vae_from_checkpoint(migrated)[0], vae_from_checkpoint(current)[0])


@pytest.mark.parametrize("which", ["trained", "trained_flow"])
def test_a_version_2_run_resumes_exactly_as_it_would_have_gone_on(request, tmp_path, which):
    """The migration renames the weights and keeps their order, so the optimizer state, by
    position, still fits: epoch 2 from a version-2 checkpoint of epoch 1 is the epoch 2 of the
    uninterrupted run, bit for bit."""
    whole = request.getfixturevalue(which)
    run = copy_of(whole, tmp_path)
    epoch_1 = read_torch_file(run.previous_checkpoint)
    assert epoch_1["epoch"] == 1
    run.previous_checkpoint.unlink()
    save_torch_file(run.checkpoint, as_version_2(epoch_1))
    result = fit(None, run, resume=True, progress=False, log=lambda *a: None)
    straight = json.loads((whole / "metrics.json").read_text())["epochs"]
    for key in ("train_objective_nats", "test_elbo"):
        assert [r[key] for r in result.history] == [r[key] for r in straight]
    final = load_checkpoint(whole)
    for name, tensor in result.vae.state_dict().items():
        assert torch.equal(tensor, final.model_state[name]), name
    assert read_torch_file(run.checkpoint)["format_version"] == 3  # written anew as version 3


@pytest.mark.parametrize("estimator", ["meanfield", "iwae", "analytic"])
def test_a_version_1_run_resumes_to_the_numbers_the_old_code_gave(tmp_path, estimator):
    """Written by pyro_vae 0.1 (tests/data/v1/README.md): Pyro's per-parameter optimizer
    states (meanfield, iwae) and torch Adam's (analytic) migrate to one format, and the run
    goes on exactly as the old code's uninterrupted 2-epoch run did."""
    run = copy_of(V1 / estimator, tmp_path)
    assert read_torch_file(run.checkpoint)["format_version"] == 1
    result = fit(TrainConfig.from_dict({**run.load_checkpoint().config.to_dict(), "epochs": 2}),
                 run, resume=True, progress=False, log=lambda *a: None)
    expected = json.loads((V1 / estimator / "metrics_2_epochs.json").read_text())["epochs"]
    for new, old in zip(result.history, expected, strict=True):
        assert new["train_objective"] == old["train_objective"].replace("IWAE_K", "IWAE_5")
        assert new["train_objective_nats"] == pytest.approx(old["train_elbo"], rel=1e-6)
        assert new["test_elbo"] == pytest.approx(old["test_elbo"], rel=1e-6)


def test_version_1_metrics_and_evaluation_are_migrated(tmp_path):
    run = copy_of(V1 / "meanfield", tmp_path)
    metrics = run.read_metrics()
    assert metrics["schema"] == METRICS_SCHEMA and metrics["version"] == 2
    record = metrics["epochs"][0]
    assert "train_elbo" not in record and record["train_objective"] == "ELBO"
    old = json.loads((V1 / "meanfield" / "metrics.json").read_text())["epochs"][0]
    assert record["train_objective_nats"] == old["train_elbo"]
    evaluation = run.read_evaluation()
    assert evaluation["method"] == "is" and evaluation["version"] == 3
    old = json.loads((V1 / "meanfield" / "evaluation.json").read_text())
    assert evaluation["log_px"]["mean"] == old["log_px"]["mean"]
    assert evaluation["settings"]["num_samples"] == old["num_samples"]
    assert "num_samples" not in evaluation


@pytest.mark.parametrize("content", ["[]", "null", "3", '{"schema": "other", "version": 2}',
                                     '{"epochs": [{"epoch": 1}]}', "{not json"])
def test_metrics_of_the_wrong_shape_are_refused_naming_the_file(tmp_path, content):
    run = RunFolder(tmp_path)
    run.metrics.write_text(content)
    with pytest.raises(DataError, match=rf"^{run.metrics}: "):
        run.read_metrics()


# --- ownership --------------------------------------------------------------------------------
def test_a_folder_with_a_run_is_refused_unless_overwritten(trained, tmp_path):
    run = copy_of(trained, tmp_path)
    before = {p.name: p.read_bytes() for p in run.path.iterdir() if p.is_file()}
    with pytest.raises(RunFolderError, match=r"already holds a run \(meanfield, 2 of 2 epochs, "
                       r"last written .*\); nothing was changed. Continue it with --resume"):
        fit(TrainConfig(epochs=1, **TINY), run, progress=False)
    assert {p.name: p.read_bytes() for p in run.path.iterdir() if p.is_file()} == before
    said = []
    fit(TrainConfig(epochs=1, estimator="analytic", **TINY), run, overwrite=True,
        progress=False, log=said.append)
    assert said[0].startswith(f"--overwrite: replacing the run in {run.path} (meanfield, 2 of 2")
    assert run.read_metrics()["config"]["estimator"] == "analytic"
    assert load_checkpoint(run.checkpoint).epoch == 1
    assert not run.previous_checkpoint.exists()  # the old run's files are gone, not mixed in


def test_a_file_or_a_folder_that_cannot_be_made_is_refused_before_any_work(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunFolderError, match="is a file; a run needs a folder"):
        fit(TrainConfig(epochs=1, **TINY), tmp_path / "file", progress=False)
    with pytest.raises(RunFolderError, match=r"file/run: cannot create the run folder \(Not a "
                       r"directory\)"):
        fit(TrainConfig(epochs=1, **TINY), tmp_path / "file" / "run", progress=False)
    assert (tmp_path / "file").read_text() == "x"


def test_a_run_that_fails_before_its_first_file_leaves_no_folder_and_no_lock(tmp_path):
    bad = TrainConfig(epochs=1, **{**TINY, "data_dir": str(tmp_path / "nowhere")})
    with pytest.raises(DataError, match="no complete set of IDX files"):
        fit(bad, tmp_path / "runs" / "new", progress=False)
    assert not (tmp_path / "runs").exists()  # the folder and the parent it made are gone
    (tmp_path / "mine").mkdir()  # a folder the user made stays, empty as it was
    with pytest.raises(DataError):
        fit(bad, tmp_path / "mine", progress=False)
    assert list((tmp_path / "mine").iterdir()) == []
    fit(TrainConfig(epochs=1, **TINY), tmp_path / "mine", progress=False, log=lambda *a: None)
    assert (tmp_path / "mine" / "run.lock").exists()  # a folder with a run keeps its lock


HOLDER = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {root!r})
    from pyro_vae.runs import RunFolder
    with RunFolder({path!r}).lock():
        print("locked", flush=True)
        time.sleep(120)
""")


def test_a_second_writer_fails_at_once_and_a_dead_holders_lock_is_recovered(tmp_path):
    run = RunFolder(tmp_path / "run")
    code = HOLDER.format(root=str(ROOT), path=str(run.path))
    with subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                          text=True) as holder:
        try:
            assert holder.stdout.readline().strip() == "locked"
            with pytest.raises(RunFolderError, match=rf"{run.path} is in use by process "
                               rf"{holder.pid} on .*; wait for it to finish"):
                fit(TrainConfig(epochs=1, **TINY), run, progress=False)
            assert not run.holds_run()
            os.kill(holder.pid, signal.SIGKILL)  # dies holding the lock
            holder.wait(timeout=30)
        finally:
            if holder.poll() is None:
                holder.kill()
    fit(TrainConfig(epochs=1, **TINY), run, progress=False, log=lambda *a: None)
    assert load_checkpoint(run.checkpoint).epoch == 1
    assert run.lock_file.read_text() == ""  # released, and no holder left behind
