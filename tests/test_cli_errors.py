"""Bad arguments and bad inputs on the command line: each is refused before any work starts,
with one line on stderr (``pyro-vae...: error: ...``), exit status 2 and no traceback; the
same values given to the Python API raise ConfigError naming the argument."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pyro_vae import VAE, ConfigError, cli, make_likelihood, make_objective
from pyro_vae.checks import device as check_device
from pyro_vae.config import TrainConfig
from pyro_vae.files import save_torch_file
from pyro_vae.fit import fit
from pyro_vae.models.likelihoods import LIKELIHOODS
from pyro_vae.objectives import ESTIMATORS, get_estimator
from pyro_vae.runs.schema import CHECKPOINT_FORMAT

ROOT = Path(__file__).resolve().parents[1]
KNOWN_ESTIMATORS = ", ".join(repr(name) for name in ESTIMATORS)
KNOWN_LIKELIHOODS = ", ".join(repr(name) for name in LIKELIHOODS)
NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")

# argv after "train" → the one line expected on stderr (a regular expression)
BAD_ARGUMENTS = {
    "batch size 0": (["--batch-size", "0"], r"pyro-vae train: error: argument --batch-size: "
                     r"expected a positive integer, got 0 \(see pyro-vae train --help\)"),
    "negative epochs": (["--epochs", "-3"], r"pyro-vae train: error: argument --epochs: "
                        r"expected a positive integer, got -3"),
    "latent size 0": (["--latent-dim", "0"], r"argument --latent-dim: expected a positive "
                      r"integer, got 0"),
    "K = 0": (["-K", "0"], r"argument --num-particles/-K: expected a positive integer, got 0"),
    "K not a number": (["-K", "five"], r"argument --num-particles/-K: expected a positive "
                       r"integer, got 'five'"),
    "hidden size 0": (["--hidden-sizes", "400", "0"], r"argument --hidden-sizes: expected a "
                      r"positive integer, got 0"),
    "lr 0": (["--lr", "0"], r"argument --lr: expected a positive number, got 0.0"),
    "lr nan": (["--lr", "nan"], r"argument --lr: expected a positive number, got nan"),
    "unknown estimator": (["--estimator", "elbo"], r"argument --estimator: invalid choice: "
                          rf"'elbo' \(choose from {KNOWN_ESTIMATORS}\)"),
    "unknown likelihood": (["--likelihood", "mse"], r"argument --likelihood: invalid choice: "
                           rf"'mse' \(choose from {KNOWN_LIKELIHOODS}\)"),
    "unknown data set": (["--dataset", "cifar10"], r"argument --dataset: unknown data set "
                         r"'cifar10'; known: mnist, fashion-mnist, or an .npz file"),
    "cuda without a GPU": (["--device", "cuda"], r"pyro-vae: error: device 'cuda' requested "
                           r"but no CUDA GPU is available; use --device cpu"),
    "unknown device": (["--device", "tpu"], r"pyro-vae: error: unknown device 'tpu'; use "
                       r"'cpu' or 'cuda'"),
    "negative warm-up": (["--beta-warmup", "-1"], r"argument --beta-warmup: expected an "
                         r"integer >= 0, got -1"),
    "negative beta": (["--beta", "-0.5"], r"argument --beta: expected a finite number >= 0, "
                      r"got -0.5"),
}
IN_A_PROCESS = ["batch size 0", "K = 0", "unknown likelihood", "cuda without a GPU"]


def marks(case):
    return [NO_GPU] if "cuda" in case else []


@pytest.fixture(scope="module")
def processes(tmp_path_factory):
    """Run each IN_A_PROCESS case as ``python -m pyro_vae train ...``, all at once."""
    root = tmp_path_factory.mktemp("cli")
    running = {}
    for case in IN_A_PROCESS:
        out = root / case.replace(" ", "_")
        argv = [sys.executable, "-m", "pyro_vae", "train", *BAD_ARGUMENTS[case][0],
                "--out", str(out), "--quiet", "--no-plots"]
        running[case] = (subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True), out)
    finished = {}
    for case, (proc, out) in running.items():
        stdout, stderr = proc.communicate(timeout=180)
        finished[case] = (proc.returncode, stdout, stderr, out)
    return finished


@pytest.mark.parametrize(
    "case", [pytest.param(c, marks=marks(c)) for c in IN_A_PROCESS], ids=IN_A_PROCESS
)
@pytest.mark.integration
def test_bad_argument_in_a_real_process(processes, case):
    returncode, stdout, stderr, out = processes[case]
    assert returncode == 2
    assert "Traceback" not in stderr
    assert stderr.endswith("\n") and stderr.count("\n") == 1, stderr  # exactly one line
    assert stderr.startswith("pyro-vae") and re.search(BAD_ARGUMENTS[case][1], stderr), stderr
    assert stdout == "" and not out.exists()  # no work started, nothing written


@pytest.mark.parametrize(
    "case", [pytest.param(c, marks=marks(c)) for c in BAD_ARGUMENTS], ids=list(BAD_ARGUMENTS)
)
def test_bad_argument_through_main(case, tmp_path, capsys):
    argv, expected = BAD_ARGUMENTS[case]
    status, stderr = run_main(["train", *argv, "--out", str(tmp_path / "run")], capsys)
    assert status == 2
    assert stderr.count("\n") == 1 and "Traceback" not in stderr
    assert stderr.startswith("pyro-vae") and re.search(expected, stderr), stderr
    assert not (tmp_path / "run").exists()


def run_main(argv, capsys):
    """``cli.main(argv)``'s exit status (argparse exits through SystemExit) and its stderr."""
    try:
        status = cli.main(argv)
    except SystemExit as e:
        status = e.code
    return status, capsys.readouterr().err


def test_no_command(capsys):
    status, stderr = run_main([], capsys)
    assert status == 2
    assert stderr == ("pyro-vae: error: the following arguments are required: COMMAND "
                      "(see pyro-vae --help)\n")


def test_missing_data_folder(tmp_path, capsys):
    status, stderr = run_main(["train", "--data-dir", str(tmp_path / "nowhere"), "--out",
                               str(tmp_path / "run"), "--quiet"], capsys)
    assert status == 2 and stderr.count("\n") == 1
    assert stderr.startswith(f"pyro-vae: error: data set 'mnist': no complete set of IDX files "
                             f"found; looked in {tmp_path / 'nowhere'}; missing in the first: "
                             "train-images-idx3-ubyte, ")


def test_corrupt_data_file(tmp_path, capsys, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                 "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (data / stem).write_bytes(bytes([0, 0, 8, 3, 0, 0, 0, 1, 0, 0, 0, 3, 0, 0, 0, 3])
                                  + b"abc")
    monkeypatch.chdir(tmp_path)  # the default run folder, runs/meanfield-<time>, goes here
    status, stderr = run_main(["train", "--data-dir", str(data), "--quiet"], capsys)
    assert status == 2
    assert stderr == (f"pyro-vae: error: {data / 'train-images-idx3-ubyte'}: file is "
                      "truncated: header says shape (1, 3, 3) = 9 bytes of data, found 3\n")
    # the run failed before writing anything: neither runs/ nor its folder is left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


@pytest.mark.parametrize("content", ["missing", "text", "foreign dict", "version 99"])
def test_resume_from_something_that_is_not_a_checkpoint(tmp_path, capsys, content):
    run = tmp_path / "run"
    run.mkdir()
    path = run / "checkpoint.pt"
    if content == "text":
        path.write_text("not a checkpoint\n")
    elif content == "foreign dict":
        torch.save({"state_dict": {"w": torch.ones(2)}}, path)
    elif content == "version 99":
        save_torch_file(path, {"format": CHECKPOINT_FORMAT, "format_version": 99, "config": {},
                               "x_dim": 4, "epoch": 1, "model_state": {}})
    status, stderr = run_main(["train", "--resume", str(run), "--quiet"], capsys)
    assert status == 2 and stderr.count("\n") == 1 and "Traceback" not in stderr
    expected = {"missing": "checkpoint file not found",
                "text": "not a pyro_vae checkpoint: expected a torch.save zip archive, found "
                        "a file starting with b'not a ch'",
                "foreign dict": "not a pyro_vae checkpoint: expected a dict tagged",
                "version 99": "checkpoint format version 99; this pyro_vae reads versions 1 to 3"}
    assert stderr.startswith(f"pyro-vae: error: {path}: {expected[content]}"), stderr


def test_unwritable_run_folder_is_one_line_before_any_work(tmp_path, capsys):
    """A run folder that is a file is refused before training: one line, exit 2."""
    out = tmp_path / "a-file"
    out.write_text("")
    status, stderr = run_main(["train", "--out", str(out), "--epochs", "1", "--train-size",
                               "32", "--test-size", "32", "--hidden-sizes", "8",
                               "--latent-dim", "2", "--quiet", "--no-plots"], capsys)
    assert status == 2 and "Traceback" not in stderr
    assert stderr == f"pyro-vae: error: {out} is a file; a run needs a folder\n"


# --- the same checks through the Python API ---------------------------------------------------
@pytest.mark.parametrize(
    "field, value, message",
    [("batch_size", 0, "batch_size must be a positive integer, got 0"),
     ("epochs", -1, "epochs must be a positive integer, got -1"),
     ("latent_dim", 0, "latent_dim must be a positive integer, got 0"),
     ("num_particles", 0, "num_particles must be a positive integer, got 0"),
     ("epochs", 2.5, "epochs must be int, got 2.5 (float)"),
     ("lr", float("inf"), "lr must be a positive number, got inf"),
     ("estimator", "elbo", f"unknown estimator 'elbo'; known estimators: {', '.join(ESTIMATORS)}"),
     ("likelihood", "mse", f"unknown likelihood 'mse'; known: {', '.join(LIKELIHOODS)}"),
     ("lr_schedule", "cosine", "unknown lr_schedule 'cosine'; known: constant, burda, burda-even"),
     ("hidden_sizes", (400, -1), "hidden_sizes must be positive integers, got (400, -1)")],
    ids=lambda v: str(v)[:20],
)
def test_train_config_validate(field, value, message):
    with pytest.raises(ConfigError) as info:
        TrainConfig(**{field: value}).validate()
    assert str(info.value) == message


@NO_GPU
def test_train_config_cuda_without_gpu(tmp_path):
    """A configuration names its device (a run trained on a GPU loads anywhere); training
    refuses a device this machine lacks, before any work."""
    config = TrainConfig(device="cuda", train_size=32, test_size=32, epochs=1).validate()
    with pytest.raises(ConfigError, match=r"^device 'cuda' requested but no CUDA GPU"):
        check_device("cuda")
    with pytest.raises(ConfigError, match=r"^device 'cuda' requested but no CUDA GPU"):
        fit(config, tmp_path / "run", progress=False, log=lambda *a: None)
    with pytest.raises(ConfigError, match=r"^unknown device 'tpu'"):
        TrainConfig(device="tpu").validate()


def test_api_constructors_refuse_bad_sizes_and_names():
    with pytest.raises(ConfigError, match=r"^latent_dim must be a positive integer, got 0$"):
        VAE(4, latent_dim=0)
    vae = VAE(4, latent_dim=2, hidden_sizes=(8,))
    with pytest.raises(ConfigError, match=r"^num_particles must be a positive integer, got 0$"):
        make_objective("iwae", vae, num_particles=0)
    with pytest.raises(ConfigError, match=rf"^unknown estimator 'x'; known estimators: "
                                          rf"{', '.join(ESTIMATORS)}$"):
        get_estimator("x")
    with pytest.raises(ConfigError, match=rf"^unknown likelihood 'x'; known likelihoods: "
                                          rf"{', '.join(LIKELIHOODS)}$"):
        make_likelihood("x", x_dim=4)
