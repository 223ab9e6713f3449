"""A catalogue of bad inputs and faults, and a runner that tries each the way a user would.

Every case ends in one of: success (exit 0), a clean error (exit 2, one line on stderr naming
what is wrong), or an interrupt (exit 130). What counts against the project:

- **traceback**: an exception that escaped ``pyro_vae.cli.main`` (or, through the Python API,
  an exception that is not one of the project's errors);
- **silent**: a case that should fail (a damaged file, a contradiction) and exited 0, or whose
  own check of the result failed;
- **lost**: a run folder's earlier files (checkpoints, metrics) changed by a case that failed.

``tests/test_faults.py`` runs the whole catalogue and asserts 0 of each;
``python -m tests.faults`` prints the table and writes ``docs/failure_cases.md``.

Cases run in-process (``cli.main``), in a scratch folder each, with
``PYRO_VAE_MEMORY_LIMIT_MB`` set so that sizes that cannot fit are refused fast, and tiny
data sizes so that the cases that do train take a second.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import math
import os
import random
import shutil
import struct
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT / "pyro_vae" / "datasets" / "mnist"
TINY = ["--train-size", "48", "--test-size", "16", "--hidden-sizes", "8", "--latent-dim", "2",
        "--batch-size", "16", "--quiet", "--no-plots"]
TINY_FIXED = TINY[:4] + TINY[8:]  # for a preset of fixed sizes (burda2)
STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
         "t10k-labels-idx1-ubyte")
MEMORY_LIMIT_MB = "2000"


@dataclass
class Outcome:
    status: int | None  # exit status; None for an API call that returned
    stderr: str
    traceback: str | None = None  # set when an unexpected exception escaped
    check_failed: str | None = None  # the case's own check of its result, when it failed


@dataclass
class Fault:
    """One bad input or fault: ``action(folder)`` does it in a scratch ``folder`` (a finished
    tiny run sits in ``folder/run``) and returns its :class:`Outcome`."""

    kind: str
    name: str
    command: str  # what a user would type (or call), for the report
    action: Callable[[Path], Outcome]
    succeeds: bool = False  # the expected outcome: exit 0 (else a clean error)
    changes_run: bool = False  # a success that may rewrite folder/run
    needs_data: bool = False  # gets its own copy of the data files in folder/data
    prepare: Callable[[Path], None] | None = None  # the damage, done before the fingerprint


# --- running -----------------------------------------------------------------------------


def run_cli(argv: list[str], check: Callable[[], str | None] | None = None) -> Outcome:
    """``pyro-vae ARGV`` in this process: exit status, stderr, and any escaped exception."""
    from pyro_vae import cli

    err, out = io.StringIO(), io.StringIO()
    trace = None
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            status = cli.main(argv)
        except SystemExit as e:  # argparse
            status = e.code if isinstance(e.code, int) else 2
        except BaseException:
            status, trace = None, traceback.format_exc()
    outcome = Outcome(status, err.getvalue(), trace)
    if trace is None and check is not None:
        outcome.check_failed = check()
    return outcome


def run_api(call: Callable[[], object], check: Callable[[object], str | None] | None = None
            ) -> Outcome:
    """A Python API call: the project's errors are clean when their message is one line (no
    tensor dump, no appendix); any other exception escapes."""
    from pyro_vae import PyroVAEError

    try:
        value = call()
    except PyroVAEError as e:
        outcome = Outcome(2, f"{type(e).__name__}: {' '.join(str(e).split())}\n")
        if "\n" in str(e).strip():
            outcome.check_failed = f"a message of {len(str(e).strip().splitlines())} lines"
        return outcome
    except Exception:
        return Outcome(None, "", traceback.format_exc())
    outcome = Outcome(0, "")
    if check is not None:
        outcome.check_failed = check(value)
    return outcome


def fingerprint(run: Path) -> dict[str, str]:
    """The run folder's files that must survive a failure, by content hash."""
    names = ("checkpoint.pt", "checkpoint.prev.pt", "metrics.json", "evaluation.json")
    return {n: hashlib.sha256((run / n).read_bytes()).hexdigest() for n in names
            if (run / n).exists()}


def judge(fault: Fault, outcome: Outcome, before: dict, after: dict) -> dict:
    lines = [line for line in outcome.stderr.splitlines() if line.strip()]
    error_lines = [line for line in lines if "error" in line.lower()]
    verdict = {"status": outcome.status, "message": error_lines[-1] if error_lines else "",
               "traceback": outcome.traceback is not None or "Traceback" in outcome.stderr,
               "silent": False, "lost": False, "ok": True}
    if verdict["traceback"]:
        verdict["ok"] = False
    elif fault.succeeds:
        verdict["silent"] = outcome.status != 0 or outcome.check_failed is not None
    else:
        verdict["silent"] = outcome.status == 0 or outcome.check_failed is not None
        if outcome.status == 2 and len(error_lines) != 1:
            verdict["silent"] = True  # an error must be one line
    if not (fault.succeeds and fault.changes_run):
        verdict["lost"] = any(after.get(k) != v for k, v in before.items())
    verdict["ok"] = not (verdict["traceback"] or verdict["silent"] or verdict["lost"])
    if outcome.check_failed:
        verdict["message"] = f"{verdict['message']} [check: {outcome.check_failed}]"
    return verdict


def run_all(faults: list[Fault], scratch: Path, template: Path, *, log=None) -> list[dict]:
    """Run every fault in its own copy of the template's run folder (and data, for the cases
    that damage it); return one verdict each."""
    previous = os.environ.get("PYRO_VAE_MEMORY_LIMIT_MB")
    os.environ["PYRO_VAE_MEMORY_LIMIT_MB"] = MEMORY_LIMIT_MB
    verdicts = []
    try:
        for i, fault in enumerate(faults):
            folder = scratch / f"case{i:03d}"
            shutil.copytree(template / "run", folder / "run")
            if fault.needs_data:
                shutil.copytree(template / "data", folder / "data")
            else:
                (folder / "data").symlink_to(template / "data")  # read, never damaged
            if log is not None:
                log(f"{i + 1}/{len(faults)} {fault.kind}: {fault.name}")
            cwd = os.getcwd()
            os.chdir(folder)
            try:
                if fault.prepare is not None:
                    fault.prepare(folder)
                before = fingerprint(folder / "run")
                outcome = fault.action(folder)
                after = fingerprint(folder / "run")
            finally:
                os.chdir(cwd)
            verdicts.append({"kind": fault.kind, "name": fault.name, "command": fault.command,
                             "expected": "success" if fault.succeeds else "error",
                             **judge(fault, outcome, before, after),
                             "trace": outcome.traceback})
            shutil.rmtree(folder, ignore_errors=True)
    finally:
        if previous is None:
            os.environ.pop("PYRO_VAE_MEMORY_LIMIT_MB", None)
        else:
            os.environ["PYRO_VAE_MEMORY_LIMIT_MB"] = previous
    return verdicts


def make_template(folder: Path) -> Path:
    """A scratch template: ``run/`` (a finished 2-epoch tiny run, evaluated) and ``data/``
    (a copy of the MNIST files)."""
    from pyro_vae import cli

    folder.mkdir(parents=True, exist_ok=True)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert cli.main(["train", "--epochs", "2", "--out", str(folder / "run"), *TINY]) == 0
        assert cli.main(["evaluate", str(folder / "run"), "-K", "30", "--quiet"]) == 0
    shutil.copytree(MNIST, folder / "data", ignore=shutil.ignore_patterns("README.md"))
    _write_npz_data_sets(folder / "data")
    return folder


def _write_npz_data_sets(folder: Path) -> None:
    """Data sets of one's own: ``own.npz`` (MNIST's first images, uint8, (N, 28, 28)),
    ``tiny.npz`` (images of one row of 5 pixels), ``bad.npz`` (no test array) and one
    ``{kind}.npz`` whose images are not numbers for each kind of :data:`NOT_NUMBERS`."""
    import numpy as np

    from pyro_vae.data import load_dataset

    mnist = load_dataset("mnist")
    np.savez(folder / "own.npz", train=mnist.train_images[:48].reshape(-1, 28, 28).numpy(),
             test=mnist.test_images[:16].reshape(-1, 28, 28).numpy())
    np.savez(folder / "tiny.npz", train=np.full((8, 5), 0.5), test=np.full((4, 5), 0.5))
    np.savez(folder / "bad.npz", train=np.zeros((8, 5)))
    for kind, dtype in NOT_NUMBERS.items():
        np.savez(folder / f"{kind}.npz", train=np.zeros((8, 5), dtype), test=np.zeros((4, 5)))


NOT_NUMBERS = {"strings": "<U1", "complex": "complex128", "dates": "datetime64[s]"}


# --- the catalogue -----------------------------------------------------------------------


def _cli(kind: str, name: str, argv: list[str], *, succeeds: bool = False,
         changes_run: bool = False, check=None) -> Fault:
    return Fault(kind, name, "pyro-vae " + " ".join(argv),
                 lambda folder: run_cli(argv, None if check is None else lambda: check(folder)),
                 succeeds, changes_run)


INT_OPTIONS = ["--epochs", "--batch-size", "--latent-dim", "--hidden-sizes", "-K",
               "--train-size", "--test-size", "--beta-warmup", "--seed"]
BAD_INTS = ["0", "-1", "1.5", "abc", "", "1e3", "nan", "-99999999999999999999999"]
FLOAT_OPTIONS = ["--lr", "--beta", "--likelihood-scale", "--dist-timeout"]
BAD_FLOATS = ["0", "-1", "nan", "inf", "-inf", "abc", "1e400"]
CHOICE_OPTIONS = ["--estimator", "--likelihood", "--preset", "--activation", "--lr-schedule",
                  "--dataset", "--device"]
ESTIMATOR_OPTION_FAULTS = {  # (estimator, its option's flag): bad values
    ("renyi", "--alpha"): ["0", "1", "-0.5", "nan", "inf", "abc", ""],
    ("miwae", "-M"): ["0", "-1", "1.5", "abc"],
    ("piwae", "--num-estimates"): ["0", "1e3"],
    ("ciwae", "--ciwae-beta"): ["-0.1", "1.5", "nan"],
}


def _saved_options(expected: dict):
    def check(folder: Path) -> str | None:
        import json

        saved = json.loads((folder / "new" / "metrics.json").read_text())["config"]
        return None if saved["estimator_options"] == expected else (
            f"saved estimator_options {saved['estimator_options']}, expected {expected}")

    return check


def argument_faults() -> list[Fault]:
    faults = []
    for option in INT_OPTIONS:
        for value in BAD_INTS:
            if option in ("--beta-warmup", "--seed") and value == "0":
                continue  # valid values
            faults.append(_cli("argument", f"train {option} {value!r}",
                               ["train", option, value, "--out", "new", *TINY]))
    for option in FLOAT_OPTIONS:
        for value in BAD_FLOATS:
            if option == "--beta" and value == "0":
                continue  # β = 0 is allowed (an autoencoder with a noise-free code)
            faults.append(_cli("argument", f"train {option} {value!r}",
                               ["train", option, value, "--out", "new", *TINY]))
    for option in CHOICE_OPTIONS:
        for value in ("nonsense", ""):
            faults.append(_cli("argument", f"train {option} {value!r}",
                               ["train", option, value, "--out", "new", *TINY]))
    for option, values in ESTIMATOR_OPTION_FAULTS.items():
        estimator, flag = option
        for value in values:
            faults.append(_cli("argument", f"train --estimator {estimator} {flag} {value!r}",
                               ["train", "--estimator", estimator, flag, value, "--out", "new",
                                *TINY]))
    faults += [
        _cli("argument", "--alpha with an estimator that takes none (meanfield)",
             ["train", "--alpha", "0.5", "--out", "new", *TINY]),
        _cli("argument", "--ciwae-beta with miwae", ["train", "--estimator", "miwae",
                                                     "--ciwae-beta", "0.5", "--out", "new",
                                                     *TINY]),
        _cli("argument", "--estimator rws -K 1", ["train", "--estimator", "rws", "-K", "1",
                                                  "--out", "new", *TINY]),
        _cli("argument", "--estimator renyi --alpha 0.3 (valid)",
             ["train", "--estimator", "renyi", "--alpha", "0.3", "--epochs", "1", "--out", "new",
              *TINY], succeeds=True, check=_saved_options({"alpha": 0.3})),
    ]
    for value in ("0", "-1", "1.5", "abc", ""):
        faults.append(_cli("argument", f"train --flow iaf --flow-layers {value!r}",
                           ["train", "--flow", "iaf", "--flow-layers", value, "--out", "new",
                            *TINY]))
    faults += [
        _cli("argument", "--flow-layers 3 without --flow",
             ["train", "--flow-layers", "3", "--out", "new", *TINY]),
        _cli("argument", "--flow maf (unknown)", ["train", "--flow", "maf", "--out", "new", *TINY]),
        _cli("argument", "--flow iaf --latent-dim 1 (an IAF needs 2 dimensions)",
             ["train", "--flow", "iaf", "--out", "new", *TINY, "--latent-dim", "1"]),
        _cli("argument", "--preset burda2 --latent-dim 3 (fixed sizes)",
             ["train", "--preset", "burda2", "--latent-dim", "3", "--out", "new", *TINY_FIXED]),
        _cli("argument", "--preset burda2 --hidden-sizes 8 (fixed sizes)",
             ["train", "--preset", "burda2", "--hidden-sizes", "8", "--out", "new",
              *TINY_FIXED]),
        _cli("argument", "--estimator jit-meanfield --preset burda2",
             ["train", "--estimator", "jit-meanfield", "--preset", "burda2", "--out", "new",
              *TINY_FIXED]),
        *[_cli("argument", f"--estimator {name} --flow iaf",
               ["train", "--estimator", name, "--flow", "iaf", "--out", "new", *TINY])
          for name in ("stl", "dreg", "rws", "analytic", "mc")],
        _cli("argument", "--preset burda2 --tensorboard (valid: the top layer's prior samples)",
             ["train", "--preset", "burda2", "--tensorboard", "--epochs", "1", "--out", "new",
              *TINY_FIXED], succeeds=True),
        _cli("argument", "--preset burda2 --flow iaf --estimator piwae (valid)",
             ["train", "--preset", "burda2", "--flow", "iaf", "--flow-layers", "1", "--estimator",
              "piwae", "--epochs", "1", "--out", "new", *TINY_FIXED], succeeds=True),
    ]
    seeds = ["-1", str(2**64), str(2**63), str(2**32), "4294967295.5"]
    faults += [_cli("argument", f"train --seed {s}", ["train", "--seed", s, "--out", "new", *TINY])
               for s in seeds]
    faults.append(_cli("argument", "train --seed 4294967295 (valid: 2^32 - 1)",
                       ["train", "--seed", "4294967295", "--epochs", "1", "--out", "new", *TINY],
                       succeeds=True))
    faults += [_cli("argument", f"evaluate -o {where} (refused before the work)",
                    ["evaluate", "run", "-K", "10", "-o", where])
               for where in ("data", "run/checkpoint.pt/evaluation.json")]
    faults += [_cli("argument", f"{command} --threads 100000 (libgomp cannot start them)",
                    [command, *where, "--threads", "100000"])
               for command, where in (("train", ["--out", "new", *TINY]), ("evaluate", ["run"]))]
    faults += [
        _cli("argument", "no command", []),
        _cli("argument", "unknown command", ["fit"]),
        _cli("argument", "unknown option", ["train", "--learning-rate", "1"]),
        _cli("argument", "--beta 0.5 with the gaussian scale on bernoulli",
             ["train", "--likelihood-scale", "0.5", "--out", "new", *TINY]),
        _cli("argument", "--learn-likelihood-scale with continuous-bernoulli",
             ["train", "--likelihood", "continuous-bernoulli", "--learn-likelihood-scale",
              "--out", "new", *TINY]),
        _cli("argument", "--resume and --out", ["train", "--resume", "run", "--out", "other"]),
        _cli("argument", "--resume and --overwrite", ["train", "--resume", "run",
                                                       "--overwrite"]),
        _cli("argument", "--resume of a missing folder", ["train", "--resume", "nowhere"]),
        _cli("argument", "--data-dir that does not exist",
             ["train", "--data-dir", "nowhere", "--out", "new", *TINY]),
        _cli("argument", "--dataset fashion-mnist not found in an empty --data-dir",
             ["train", "--dataset", "fashion-mnist", "--data-dir", "run", "--out", "new",
              *TINY]),
    ]
    for argv, name in (
        (["evaluate", "run", "-K", "0"], "evaluate -K 0"),
        (["evaluate", "run", "-K", "abc"], "evaluate -K abc"),
        (["evaluate", "run", "-K", "-5"], "evaluate -K -5"),
        (["evaluate", "run", "--seed", "-1"], "evaluate --seed -1"),
        (["evaluate", "run", "--seed", str(2**64)], "evaluate --seed 2^64"),
        (["evaluate", "run", "--memory-mb", "0"], "evaluate --memory-mb 0"),
        (["evaluate", "run", "--memory-mb", "nan"], "evaluate --memory-mb nan"),
        (["evaluate", "run", "--memory-mb", "1e12", "-K", "30"], "evaluate --memory-mb 1e12"),
        (["evaluate", "run", "--test-size", "0"], "evaluate --test-size 0"),
        (["evaluate", "run", "--device", "tpu"], "evaluate --device tpu"),
        (["evaluate", "nowhere.pt"], "evaluate a missing file"),
        (["sample", "run", "-n", "0"], "sample -n 0"),
        (["sample", "run", "-T", "-1"], "sample -T -1"),
        (["sample", "run", "-T", "nan"], "sample -T nan"),
        (["sample", "run", "-T", "1e300"], "sample -T 1e300"),
        (["sample", "run", "--seed", "-1"], "sample --seed -1"),
        (["sample", "run", "--ncols", "0"], "sample --ncols 0"),
        (["sample", "run", "--out", "s.jpg"], "sample --out s.jpg"),
        (["plot", "nowhere"], "plot a missing folder"),
        (["plot", "run", "run", "--labels", "a"], "plot with one label for two runs"),
        (["evaluate", "run", "--method", "is", "-K", "10", "--ais-steps", "7", "--chains", "3"],
         "evaluate --method is with AIS's options"),
        (["evaluate", "run", "-K", "10", "--schedule", "linear"], "evaluate -K with --schedule"),
        (["evaluate", "run", "-K", "10", "--ais-start", "prior"], "evaluate -K with --ais-start"),
        (["evaluate", "run", "--gap-steps", "5"], "evaluate --gap-steps without --gaps"),
        (["evaluate", "run", "--dist-timeout", "0"], "evaluate --dist-timeout 0"),
        (["evaluate", "run", "--target-accept", "1"], "evaluate --target-accept 1"),
        (["train", "--model", "nowhere:build", "--out", "new", *TINY[:4]],
         "train --model of a module that does not exist"),
        (["train", "--model", "tests.own_model:missing", "--out", "new", *TINY[:4]],
         "train --model of a function that does not exist"),
        (["train", "--model", "tests.own_model:not_a_model", "--out", "new", *TINY[:4]],
         "train --model returning something without the interface"),
        (["train", "--model", "tests.own_model:build", "--latent-dim", "3", "--out", "new",
          *TINY[:4]], "train --model with --latent-dim"),
        (["train", "--preset", "conv", "--hidden-sizes", "8", "8", "8", "8", "8", "8",
          "--out", "new", *TINY[:4], "--quiet"], "train --preset conv with more layers than the "
         "image has halvings"),
        (["train", "--preset", "conv", "--dataset", "data/tiny.npz", "--out", "new", "--quiet"],
         "train --preset conv on images of one row"),
        (["train", "--dataset", "cifar.tar", "--out", "new"], "train --dataset of another kind"),
        (["train", "--dataset", "data/nowhere.npz", "--out", "new"], "train --dataset of a missing "
         "file"),
        (["train", "--dataset", "data/bad.npz", "--out", "new"], "train --dataset without a test "
         "array"),
        *[(["train", "--dataset", f"data/{kind}.npz", "--out", "new"], f"train --dataset of "
           f"{kind}") for kind in NOT_NUMBERS],
    ):
        faults.append(_cli("argument", name, argv))
    faults += [
        _cli("argument", "train --model tests.own_model:build (success)",
             ["train", "--model", "tests.own_model:build", "--epochs", "1", "--out", "new",
              *TINY[:4], "--quiet", "--no-plots"], succeeds=True),
        _cli("argument", "train --preset conv --hidden-sizes 4 (success)",
             ["train", "--preset", "conv", "--hidden-sizes", "4", "--latent-dim", "2",
              "--epochs", "1", "--out", "new", *TINY[:4], "--quiet", "--no-plots"],
             succeeds=True),
        _cli("argument", "train --dataset own.npz (success)",
             ["train", "--dataset", "data/own.npz", "--epochs", "1", "--out", "new", "--quiet",
              "--no-plots", "--hidden-sizes", "8", "--latent-dim", "2"], succeeds=True),
    ]
    return faults


def _evaluated(folder: Path) -> str | None:
    import json

    report = json.loads((folder / "run" / "evaluation.json").read_text())
    return None if math.isfinite(report["log_px"]["mean"]) else "log p(x) is not finite"


def resource_faults() -> list[Fault]:
    return [
        _cli("resource", "--hidden-sizes 1000000000", ["train", *TINY, "--hidden-sizes",
                                                        "1000000000", "--out", "new"]),
        _cli("resource", "--latent-dim 1000000000", ["train", *TINY, "--latent-dim",
                                                      "1000000000", "--out", "new"]),
        _cli("resource", "-K 10000000 (iwae)", ["train", "--estimator", "iwae", "-K", "10000000",
                                                 "--out", "new", *TINY]),
        _cli("resource", "-K 10000000 (meanfield)", ["train", "-K", "10000000", "--out", "new",
                                                      *TINY]),
        _cli("resource", "--batch-size 100000000 -K 100", ["train", *TINY, "--batch-size",
                                                            "100000000", "-K", "100", "--out",
                                                            "new"]),
        _cli("resource", "--flow iaf --flow-layers 100000", ["train", *TINY, "--flow", "iaf",
                                                              "--flow-layers", "100000",
                                                              "--out", "new"]),
        _cli("resource", "--flow iaf --latent-dim 100000", ["train", *TINY, "--flow", "iaf",
                                                             "--latent-dim", "100000",
                                                             "--out", "new"]),
        _cli("resource", "--preset burda2 --flow iaf --flow-layers 100000",
             ["train", *TINY_FIXED, "--preset", "burda2", "--flow", "iaf", "--flow-layers",
              "100000", "--out", "new"]),
        _cli("resource", "--preset burda2 --batch-size 100000000",
             ["train", *TINY_FIXED, "--preset", "burda2", "--batch-size", "100000000",
              "--out", "new"]),
        _cli("resource", "evaluate -K 10000000", ["evaluate", "run", "-K", "10000000"]),
        _cli("resource", "evaluate -K 1000000000", ["evaluate", "run", "-K", "1000000000"]),
        _cli("resource", "evaluate -K 1000000000 --memory-mb 100000",
             ["evaluate", "run", "-K", "1000000000", "--memory-mb", "100000"]),
        _cli("resource", "sample -n 10000000", ["sample", "run", "-n", "10000000"]),
        _cli("resource", "sample --ncols 1000000", ["sample", "run", "--ncols", "1000000"]),
        _cli("resource", "evaluate -K 1 (success)", ["evaluate", "run", "-K", "1", "--quiet"],
             succeeds=True, changes_run=True, check=_evaluated),
        _cli("resource", "evaluate --test-size 1 (success)",
             ["evaluate", "run", "-K", "30", "--test-size", "1", "--quiet"],
             succeeds=True, changes_run=True, check=_evaluated),
        _cli("resource", "sample -T 100 (success)", ["sample", "run", "-T", "100", "-n", "4",
                                                     "--out", "s.png"], succeeds=True),
        _cli("resource", "evaluate --ais-steps 1000000000",
             ["evaluate", "run", "--ais-steps", "1000000000", "--quiet"]),
        _cli("resource", "evaluate --chains 1000000000",
             ["evaluate", "run", "--chains", "1000000000", "--quiet"]),
        _cli("resource", "evaluate --bdmc 1000000000",
             ["evaluate", "run", "--bdmc", "1000000000", "--quiet"]),
        _cli("resource", "evaluate --bdmc 3 --chains 1000000000",
             ["evaluate", "run", "-K", "30", "--bdmc", "3", "--chains", "1000000000",
              "--quiet"]),
        _cli("resource", "evaluate --ais-steps 3 --chains 3 --bdmc 2 --gaps --gap-steps 2 "
             "(success)", ["evaluate", "run", "--ais-steps", "3", "--chains", "3", "--bdmc", "2",
                          "--gaps", "--gap-steps", "2", "--quiet"],
             succeeds=True, changes_run=True, check=_evaluated),
        Fault("resource", "evaluate with WORLD_SIZE=2 and no second process --dist-timeout 2",
              "RANK=0 WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=<free> pyro-vae evaluate "
              "run -K 30 --dist-timeout 2", _alone_in_a_world_of_two),
    ]


def _alone_in_a_world_of_two(folder: Path) -> Outcome:
    """torchrun's variables for two processes, and only this one: the rendezvous must fail
    within --dist-timeout, with one line, not wait without end."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(port)}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        return run_cli(["evaluate", "run", "-K", "30", "--quiet", "--dist-timeout", "2"])
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _write_idx(path: Path, array_bytes: bytes, shape: tuple, type_byte: int = 8) -> None:
    header = bytes([0, 0, type_byte, len(shape)]) + b"".join(struct.pack(">I", s) for s in shape)
    path.write_bytes(header + array_bytes)


def _damaged_data(case: str) -> Callable[[Path], None]:
    def make(folder: Path) -> None:
        data = folder / "data"
        target = data / "train-images-idx3-ubyte.gz"
        raw = target.read_bytes()
        if case == "missing file":
            target.unlink()
        elif case == "empty file":
            target.write_bytes(b"")
        elif case == "truncated gzip":
            target.write_bytes(raw[: len(raw) // 2])
        elif case == "garbage":
            target.write_bytes(random.Random(0).randbytes(4096))  # fixed: a stable report
        elif case == "html page":
            import gzip

            target.write_bytes(gzip.compress(b"<html><body>404 Not Found</body></html>"))
        elif case == "gzip bomb":
            import zlib

            comp = zlib.compressobj(9, zlib.DEFLATED, 31)
            head = bytes([0, 0, 8, 3]) + struct.pack(">III", 10, 28, 28)
            target.write_bytes(comp.compress(head) + comp.compress(bytes(1 << 26))
                               + comp.flush())
        elif case == "flipped byte inside":
            import gzip

            plain = bytearray(gzip.decompress(raw))
            plain[5000] ^= 0xFF
            target.write_bytes(gzip.compress(bytes(plain)))
        elif case == "wrong type byte":
            _write_idx(data / "train-images-idx3-ubyte.gz", bytes(16), (1, 4, 4), type_byte=0x0D)
        elif case == "labels where images belong":
            shutil.copy(data / "train-labels-idx1-ubyte.gz", target)
        elif case == "a folder instead of a file":
            target.unlink()
            target.mkdir()
        elif case == "image and label counts differ":
            _write_idx(target.with_suffix(""), bytes(5 * 784), (5, 28, 28))
            target.unlink()
        elif case == "huge header":
            import gzip

            target.write_bytes(gzip.compress(bytes([0, 0, 8, 3])
                                             + struct.pack(">III", 2**31, 2**16, 28)))
        else:  # pragma: no cover
            raise AssertionError(case)

    return make


DATA_CASES = ["missing file", "empty file", "truncated gzip", "garbage", "html page",
              "gzip bomb", "flipped byte inside", "wrong type byte",
              "labels where images belong", "a folder instead of a file",
              "image and label counts differ", "huge header"]


def data_faults() -> list[Fault]:
    faults = []
    for case in DATA_CASES:
        damage = _damaged_data(case)
        for command in ("train", "evaluate"):
            argv = (["train", "--data-dir", "data", "--out", "new", *TINY] if command == "train"
                    else ["evaluate", "run", "--data-dir", "data", "-K", "30"])

            faults.append(Fault("data file", f"{case} ({command})",
                                f"pyro-vae {' '.join(argv)}",
                                lambda folder, argv=argv: run_cli(argv), needs_data=True,
                                prepare=damage))
    return faults


def _checkpoint_damage(case: str) -> Callable[[Path], None]:
    def make(folder: Path) -> None:
        path = folder / "run" / "checkpoint.pt"
        raw = bytearray(path.read_bytes())
        if case.startswith("flip byte at "):
            fraction = float(case.split()[-1])
            raw[int(len(raw) * fraction)] ^= 0x40
            path.write_bytes(bytes(raw))
            return
        if case == "truncated":
            path.write_bytes(bytes(raw[: len(raw) // 3]))
            return
        if case == "empty":
            path.write_bytes(b"")
            return
        if case == "text":
            path.write_text("not a checkpoint\n")
            return
        if case == "random bytes":
            path.write_bytes(random.Random(1).randbytes(len(raw)))
            return
        ckpt = torch.load(path, weights_only=True)
        state = dict(ckpt["model_state"])
        first = next(iter(state))
        if case == "extra weight":
            state["encoders.0.extra"] = torch.zeros(3)
        elif case == "weight of the wrong shape":
            state[first] = torch.zeros(3, 3)
        elif case == "no weights":
            state = {}
        elif case == "NaN weights":
            state[first] = torch.full_like(state[first], float("nan"))
        elif case == "config beta 'abc'":
            ckpt["config"]["beta"] = "abc"
        elif case == "config hidden_sizes 5":
            ckpt["config"]["hidden_sizes"] = 5
        elif case == "config not a dict":
            ckpt["config"] = [1, 2]
        elif case == "garbage optimizer state":
            ckpt["trainer_state"] = {"adam": 3, "steps": "x"}
        elif case == "garbage rng state":
            ckpt["rng_state"] = {"torch": torch.zeros(2, dtype=torch.uint8)}
        elif case == "garbage history":
            ckpt["history"] = "history"
        elif case == "epoch -1":
            ckpt["epoch"] = -1
        elif case == "x_dim 0":
            ckpt["x_dim"] = 0
        elif case == "format version 99":
            ckpt["format_version"] = 99
        elif case == "foreign tag":
            ckpt["format"] = "someone.else"
        else:  # pragma: no cover
            raise AssertionError(case)
        ckpt["model_state"] = state
        torch.save(ckpt, path)

    return make


CHECKPOINT_CASES = ["flip byte at 0.3", "flip byte at 0.5", "flip byte at 0.7",
                    "flip byte at 0.9", "truncated", "empty", "text", "random bytes",
                    "extra weight", "weight of the wrong shape", "no weights", "NaN weights",
                    "config beta 'abc'", "config hidden_sizes 5", "config not a dict",
                    "garbage optimizer state", "garbage rng state", "garbage history",
                    "epoch -1", "x_dim 0", "format version 99", "foreign tag"]


def checkpoint_faults() -> list[Fault]:
    faults = []
    for case in CHECKPOINT_CASES:
        damage = _checkpoint_damage(case)
        for argv in (["evaluate", "run", "-K", "30", "--quiet"], ["sample", "run", "-n", "4"],
                     ["train", "--resume", "run", "--epochs", "3", "--quiet", "--no-plots"]):
            faults.append(Fault("checkpoint", f"{case} ({argv[0]})",
                                f"pyro-vae {' '.join(argv)}",
                                lambda folder, argv=argv: run_cli(argv), prepare=damage))
    return faults


def _json_damage(name: str, content: str) -> Callable[[Path], None]:
    def make(folder: Path) -> None:
        (folder / "run" / name).write_text(content)

    return make


JSON_CASES = {"[]": "[]", "null": "null", "a number": "3", "not JSON": "{epochs: [",
              "empty": "", "other schema": '{"schema": "x", "version": 2}',
              "epochs not a list": '{"schema": "pyro_vae.metrics", "version": 2, "config": {},'
                                   ' "epochs": 3}',
              "records without figures": '{"epochs": [{"epoch": 1}]}'}


def metrics_faults() -> list[Fault]:
    faults = []
    for label, content in JSON_CASES.items():
        for name, argv in (("metrics.json", ["plot", "run", "--curves-only"]),
                           ("evaluation.json", ["plot", "run"])):
            damage = _json_damage(name, content)

            faults.append(Fault("metrics", f"{name}: {label}", f"pyro-vae {' '.join(argv)}",
                                lambda folder, argv=argv: run_cli(argv), prepare=damage))
    return faults


def _holder(folder: Path):
    import subprocess

    code = (f"import sys, time\nsys.path.insert(0, {str(ROOT)!r})\n"
            "from pyro_vae.runs import RunFolder\n"
            f"with RunFolder({str(folder / 'run')!r}).lock():\n"
            "    print('locked', flush=True)\n    time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def _while_locked(argv):
    def action(folder):
        proc = _holder(folder)
        try:
            return run_cli(argv)
        finally:
            proc.kill()
            proc.wait()
            proc.stdout.close()

    return action


def _resumed_to(epochs: int):
    def check(folder: Path) -> str | None:
        from pyro_vae.runs import load_checkpoint

        epoch = load_checkpoint(folder / "run").epoch
        return None if epoch == epochs else f"resumed run is at epoch {epoch}"

    return check


RESUME_CONFLICTS = [["--estimator", "iwae"], ["--lr", "0.5"], ["--batch-size", "7"],
                    ["--hidden-sizes", "9"], ["--latent-dim", "5"], ["--seed", "3"],
                    ["--likelihood", "continuous-bernoulli"], ["-K", "3"],
                    ["--preset", "burda"], ["--train-size", "40"], ["--beta", "0.5"],
                    ["--lr-schedule", "burda"], ["--alpha", "0.3"], ["-M", "3"]]


def run_folder_faults() -> list[Fault]:
    faults = [
        _cli("run folder", "--out holds a run (no --overwrite)",
             ["train", "--epochs", "1", "--out", "run", *TINY]),
        _cli("run folder", "--out is a file", ["train", "--out", "data/train-labels-idx1-ubyte.gz",
                                               *TINY]),
        _cli("run folder", "--out inside a file",
             ["train", "--out", "data/train-labels-idx1-ubyte.gz/run", *TINY]),
        Fault("run folder", "second writer while the run is locked",
              "pyro-vae train --resume run --epochs 3 (while another process holds run/)",
              _while_locked(["train", "--resume", "run", "--epochs", "3", *TINY[-2:]])),
        Fault("run folder", "--overwrite while the run is locked",
              "pyro-vae train --out run --overwrite (while another process holds run/)",
              _while_locked(["train", "--out", "run", "--overwrite", "--epochs", "1", *TINY])),
        _cli("run folder", "--overwrite replaces the run (success)",
             ["train", "--out", "run", "--overwrite", "--epochs", "1", *TINY], succeeds=True,
             changes_run=True),
        _cli("run folder", "--resume with more epochs (success)",
             ["train", "--resume", "run", "--epochs", "3", *TINY[-2:]], succeeds=True,
             changes_run=True, check=_resumed_to(3)),
        _cli("run folder", "--resume with the same options (success)",
             ["train", "--resume", "run", "--epochs", "3", *TINY], succeeds=True,
             changes_run=True, check=_resumed_to(3)),
        _cli("run folder", "--resume of a finished run (success, nothing to do)",
             ["train", "--resume", "run", *TINY[-2:]], succeeds=True, check=_resumed_to(2)),
        _cli("run folder", "--resume with another --data-dir (success)",
             ["train", "--resume", "run", "--epochs", "3", "--data-dir", "data", *TINY[-2:]],
             succeeds=True, changes_run=True, check=_resumed_to(3)),
    ]
    for conflict in RESUME_CONFLICTS:
        faults.append(_cli("resume", f"--resume with {' '.join(conflict)}",
                           ["train", "--resume", "run", *conflict, "--epochs", "3",
                            *TINY[-2:]]))
    return faults


def api_faults() -> list[Fault]:
    from pyro_vae import VAE, make_objective
    from pyro_vae.build import build_vae, load_data
    from pyro_vae.config import TrainConfig, resumed_config
    from pyro_vae.data import (
        binarize,
        check_grey_levels,
        from_arrays,
        load_dataset,
        prepare_data,
        preprocess,
    )
    from pyro_vae.evaluation import (
        AISSettings,
        Execution,
        Program,
        ProgramTarget,
        active_units,
        ais,
        annealing_schedule,
        bdmc,
        bdmc_section,
        elbo_per_datapoint,
        estimate_log_px,
        gaps_section,
        inference_gaps,
        pareto_k_hat,
        pareto_k_summary,
        report,
    )
    from pyro_vae.evaluation.elbo import elbo_terms
    from pyro_vae.fit import fit
    from pyro_vae.idx import download, parse_idx, read_idx
    from pyro_vae.models import make_likelihood
    from pyro_vae.models.linear_gaussian import (
        PPCAParams,
        log_marginal,
        max_likelihood,
        sample_model,
    )
    from pyro_vae.plots import (
        plot_elbo_decomposition,
        plot_latent_embedding,
        plot_posterior_vs_guide,
        sample_prior,
        write_run_figures,
    )
    from pyro_vae.runs import RunFolder, load_checkpoint
    from pyro_vae.schedules import beta_at, learning_rate
    from pyro_vae.threads import set_threads
    from pyro_vae.trainer import Trainer

    def vae(**kwargs):
        return VAE(784, latent_dim=2, hidden_sizes=(8,), **kwargs)

    models = {"one layer": vae,
              "two layers": lambda: VAE(784, latent_dim=(3, 2), hidden_sizes=((8,), (4,))),
              "IAF guide": lambda: vae(flow="iaf")}

    def svi_step(x, model=vae, validation=True):
        import pyro

        v = model()
        svi = pyro.infer.SVI(v.model, v.guide, pyro.optim.Adam({"lr": 1e-3}),
                             pyro.infer.Trace_ELBO())
        with pyro.validation_enabled(validation):
            return svi.step(x)

    def trace_model(v, x, **kwargs):
        import pyro

        return pyro.poutine.trace(v.model).get_trace(x, **kwargs)

    def own_model():
        from tests.own_model import build

        return build(x_dim=784, image_shape=(28, 28), beta=1.0,
                     likelihood=make_likelihood("bernoulli", x_dim=784))

    def with_context(*contexts):
        v = vae(context_dim=3)
        for context in contexts:
            v.guide(ones, context)

    def objective_loss(name, x):
        return make_objective(name, vae()).differentiable_loss(x)

    def in_outer_plate(plate: bool):
        """The user's plate over x's rows (3), or a plate of 64 of something else."""
        import pyro

        v = vae()
        with pyro.plate("outer", 64 if plate else ones.shape[0]):
            return pyro.poutine.trace(v.model).get_trace(ones, plate=plate)

    def gaussian_fit_on_0_255(tmp):
        from pyro_vae.build import load_data
        from pyro_vae.data import PreparedData

        config = TrainConfig(likelihood="gaussian", epochs=1, train_size=32, test_size=16,
                             hidden_sizes=(8,), latent_dim=2)
        data = load_data(config)
        return fit(config, data=PreparedData(data.train, data.test * 255, data.test_labels,
                                             data.dataset), progress=False, log=lambda *a: None)

    def checked(call, must_not: str):
        """A one-line project error whose message does not say ``must_not``."""
        def run():
            from pyro_vae import PyroVAEError

            try:
                call()
            except PyroVAEError as e:
                if must_not in str(e) or "\n" in str(e):
                    raise AssertionError(f"message {str(e)!r}") from None
                raise
        return run

    ones = torch.ones(3, 784)
    binary = torch.zeros(3, 784)
    ppca = PPCAParams(W=torch.eye(4)[:, :2], mu=torch.zeros(4), sigma=torch.tensor(0.5))
    calls = {
        "VAE(beta=nan)": lambda: VAE(784, beta=float("nan")),
        "VAE(latent_dim=0)": lambda: VAE(784, latent_dim=0),
        "VAE(x_dim=-1)": lambda: VAE(-1),
        "VAE(hidden_sizes=(0,))": lambda: VAE(784, hidden_sizes=(0,)),
        "VAE(hidden_sizes=(8.5,))": lambda: VAE(784, hidden_sizes=(8.5,)),
        "VAE(likelihood='mse')": lambda: VAE(784, likelihood="mse"),
        "VAE(activation='sigmoidal')": lambda: VAE(784, activation="sigmoidal"),
        "SVI step, x of the wrong width": lambda: svi_step(torch.ones(3, 100)),
        "SVI step, 3-D x": lambda: svi_step(torch.ones(2, 3, 784)),
        "SVI step, 1-D x of 784 pixels": lambda: svi_step(torch.ones(784)),
        "SVI step, float64 x": lambda: svi_step(ones.double()),
        "SVI step, uint8 x": lambda: svi_step(ones.to(torch.uint8)),
        "SVI step, int64 x": lambda: svi_step(ones.long()),
        "SVI step, x a list": lambda: svi_step([[0.0] * 784]),
        "binarize(values up to 255.0)": lambda: binarize(torch.full((2, 3), 255.0)),
        "binarize(int64)": lambda: binarize(torch.ones(2, 3, dtype=torch.int64)),
        "check_grey_levels(uint8)": lambda: check_grey_levels(torch.ones(2, 3,
                                                                         dtype=torch.uint8)),
        "vae.check_data(float64)": lambda: vae().check_data(ones.double()),
        "vae.check_data(grey levels, bernoulli)": lambda: vae().check_data(ones * 0.5),
        "make_objective('elbo')": lambda: make_objective("elbo", vae()),
        "make_objective(num_particles=0)": lambda: make_objective("iwae", vae(),
                                                                  num_particles=0),
        "make_objective(num_particles=2.5)": lambda: make_objective("iwae", vae(),
                                                                    num_particles=2.5),
        "make_objective('renyi', alpha=1.0)": lambda: make_objective("renyi", vae(), alpha=1.0),
        "make_objective('iwae', alpha=0.5)": lambda: make_objective("iwae", vae(), alpha=0.5),
        "make_objective('rws', num_particles=1)": lambda: make_objective("rws", vae(),
                                                                         num_particles=1),
        "make_objective('miwae', num_estimates=True)": lambda: make_objective(
            "miwae", vae(), num_estimates=True),
        "TrainConfig(estimator_options=[]).validate()": lambda: TrainConfig(
            estimator_options=[]).validate(),
        "TrainConfig(estimator='renyi', estimator_options={'alpha': 'x'}).validate()":
            lambda: TrainConfig(estimator="renyi", estimator_options={"alpha": "x"}).validate(),
        "TrainConfig(estimator_options={1: 2}).validate()": lambda: TrainConfig(
            estimator_options={1: 2}).validate(),
        "estimate_log_px(x of the wrong width)": lambda: estimate_log_px(
            vae(), torch.ones(3, 10), num_samples=10),
        "estimate_log_px(num_samples=0)": lambda: estimate_log_px(vae(), ones,
                                                                  num_samples=0),
        "estimate_log_px(grey levels)": lambda: estimate_log_px(vae(), ones * 0.5,
                                                                num_samples=10),
        "TrainConfig(beta='abc').validate()": lambda: TrainConfig(beta="abc").validate(),
        "TrainConfig(hidden_sizes=5).validate()": lambda: TrainConfig(
            hidden_sizes=5).validate(),
        "TrainConfig.from_dict([])": lambda: TrainConfig.from_dict([]),
        "fit(None) without a run to resume": lambda: fit(None),
        "fit(config, run=3)": lambda: fit(TrainConfig(), 3),
        **{f"fit({name}={value!r})": (lambda name=name, value=value: fit(TrainConfig(
            epochs=1, train_size=48, test_size=16, hidden_sizes=(8,)), **{name: value}))
           for name, value in (("resume", 3), ("world", 3), ("progress", "yes"), ("log", 3))},
        "write_run_figures(3)": lambda: write_run_figures(3),
        "fit(resume=True) without a folder": lambda: fit(TrainConfig(), resume=True),
        "SVI step, empty batch": lambda: svi_step(ones[:0]),
        "SVI step, x on the meta device": lambda: svi_step(ones.to("meta")),
        "SVI step, uint8 x (message without vae.to(uint8))": checked(
            lambda: svi_step(ones.to(torch.uint8)), "vae.to(torch.uint8)"),
        "SVI step, a DataError is one line (no Trace Shapes)": checked(
            lambda: svi_step(ones * 0.5), "Trace Shapes"),
        "vae.model inside the user's plate": lambda: in_outer_plate(True),
        "vae.model(plate=False) inside the user's plate (success)": lambda: in_outer_plate(False),
        "parse_idx('a string')": lambda: parse_idx("a string"),
        "estimate_log_px of a VAE with a context, x alone": lambda: estimate_log_px(
            vae(context_dim=3), ones, num_samples=10),
        "a VAE with a context: a NaN context after a good call": lambda: with_context(
            torch.zeros(3, 3), torch.full((3, 3), math.nan)),
        "a VAE with a context: a context of other rows": lambda: with_context(torch.zeros(5, 3)),
        "a VAE with a context: encode(x) alone": lambda: vae(context_dim=3).encode(ones),
        "a VAE with a context: decode(z) alone": lambda: vae(context_dim=3).decode(
            torch.zeros(2, 2)),
        "a VAE with a context: report given x alone": lambda: report(
            vae(context_dim=3), ones, estimate_log_px(vae(context_dim=3), (ones, torch.zeros(
                3, 3)), num_samples=2)),
        "sample_prior(nn.Linear)": lambda: sample_prior(torch.nn.Linear(784, 2), 4),
        "Trainer(3, lr)": lambda: Trainer(3, 1e-3),
        **{f"{f.__name__}(3, ...)": (lambda f=f, n=n: f(*[3] * n)) for f, n in (
            (pareto_k_hat, 1), (pareto_k_summary, 1), (bdmc_section, 1), (ProgramTarget, 1),
            (build_vae, 2), (load_data, 1), (resumed_config, 2), (check_grey_levels, 1),
            (read_idx, 1), (max_likelihood, 2))},
        "gaps_section(3, log_px_from=...)": lambda: gaps_section(3, log_px_from="AIS"),
        "download(3, ...)": lambda: download("http://localhost/x.gz", 3, md5="0"),
        "Trainer.set_lr(-1)": lambda: Trainer(make_objective("meanfield", vae()), 1e-3).set_lr(-1),
        "objective.scaled_loss(x, nan)": lambda: make_objective("iwae", vae()).scaled_loss(
            ones, math.nan),
        "learning_rate(3, 1)": lambda: learning_rate(3, 1),
        "beta_at(config, epoch=0)": lambda: beta_at(TrainConfig(beta_warmup_epochs=2), 0),
        "prepare_data(3)": lambda: prepare_data(3),
        "prepare_data(test_size=-5) (the last 5 left out, silently)": lambda: prepare_data(
            load_dataset("mnist"), train_size=5, test_size=-5),
        "prepare_data(device='gpu')": lambda: prepare_data(load_dataset("mnist"), train_size=5,
                                                           test_size=5, device="gpu"),
        "plot_posterior_vs_guide of a model of one's own (not layered)": lambda: (
            plot_posterior_vs_guide(own_model(), ones, "posterior.png")),
        "make_objective('analytic') of a VAE with a context": lambda: make_objective(
            "analytic", vae(context_dim=3)),
        "estimate_log_px(memory_mb=0)": lambda: estimate_log_px(
            vae(), ones, num_samples=10, execution=Execution(memory_mb=0)),
        "estimate_log_px(execution=Execution(seed=-1))": lambda: estimate_log_px(
            vae(), ones, num_samples=10, execution=Execution(seed=-1)),
        "ais(chains=10**9)": lambda: ais(vae(), ones, AISSettings(num_chains=10**9)),
        "ais(num_steps=10**9)": lambda: ais(vae(), ones, AISSettings(num_steps=10**9)),
        "ais(start='posterior')": lambda: ais(vae(), ones, AISSettings(start="posterior")),
        "bdmc(10**9 datapoints)": lambda: bdmc(vae(), ones[:1].expand(10**9, 784),
                                              AISSettings(num_steps=2)),
        "VAE(latent_dim=(3, 2), hidden_sizes=(8,))": lambda: VAE(784, latent_dim=(3, 2),
                                                                 hidden_sizes=(8,)),
        "VAE(latent_dim='a')": lambda: VAE(784, latent_dim="a"),
        "VAE(encoder=[3 modules] for 1 layer)": lambda: VAE(
            784, encoder=[torch.nn.Linear(1, 1)] * 3),
        "fit of a gaussian model on a test set in [0, 255]": lambda: gaussian_fit_on_0_255(None),
        "from_arrays(train 3-D of floats above 1)": lambda: from_arrays(
            torch.full((4, 3, 3), 2.0), torch.zeros(2, 3, 3)),
        "from_arrays(labels of the wrong length)": lambda: from_arrays(
            torch.zeros(4, 9), torch.zeros(2, 9), train_labels=torch.zeros(3, dtype=torch.long)),
        "from_arrays(empty test)": lambda: from_arrays(torch.zeros(4, 9), torch.zeros(0, 9)),
        "from_arrays(int pixels above 255)": lambda: from_arrays(
            torch.full((4, 9), 300), torch.zeros(2, 9, dtype=torch.uint8)),
        "Trainer(lr=-1)": lambda: Trainer(make_objective("meanfield", vae()), lr=-1.0),
        "Trainer(lr=nan)": lambda: Trainer(make_objective("meanfield", vae()), lr=math.nan),
        "Trainer(lr='a')": lambda: Trainer(make_objective("meanfield", vae()), lr="a"),
        "Trainer(seed=-1)": lambda: Trainer(make_objective("meanfield", vae()), lr=0.1, seed=-1),
        "Trainer.step(num_data=-1)": lambda: Trainer(make_objective("meanfield", vae()),
                                                     lr=1e-3).step(ones, num_data=-1),
        "Trainer.step(num_data=2.5), hand-written loss": lambda: Trainer(
            make_objective("analytic", vae()), lr=1e-3).step(ones, num_data=2.5),
        "vae.model(num_data=0)": lambda: trace_model(vae(), ones, num_data=0),
        "vae.model(num_data='a')": lambda: trace_model(vae(), ones, num_data="a"),
        "VAE(likelihood=5)": lambda: VAE(784, likelihood=5),
        "VAE(encoder=5)": lambda: VAE(784, encoder=5),
        "make_objective of a string, not a model": lambda: make_objective("iwae", "vae"),
        "vae.init_output_bias(mean of the wrong shape)": lambda: vae().init_output_bias(
            torch.ones(10)),
        "vae.sample_prior(shape=(-1,))": lambda: vae().sample_prior((-1,)),
        "estimate_log_px(execution=None)": lambda: estimate_log_px(vae(), ones, num_samples=3,
                                                                   execution=None),
        "ais(settings a dict)": lambda: ais(vae(), ones, {"num_steps": 3}),
        "bdmc(settings a tensor)": lambda: bdmc(vae(), ones, torch.ones(2)),
        "inference_gaps(log_px=None)": lambda: inference_gaps(vae(), ones, None),
        "elbo_per_datapoint(grey levels, bernoulli)": lambda: elbo_per_datapoint(vae(),
                                                                                  ones * 0.5),
        "elbo_per_datapoint(x a list)": lambda: elbo_per_datapoint(vae(), [[1.0] * 784]),
        "active_units(empty x)": lambda: active_units(vae(), ones[:0]),
        "fit(config a dict)": lambda: fit({"epochs": 1}),
        "fit(data a string)": lambda: fit(TrainConfig(epochs=1), data="x"),
        "binarize(a list)": lambda: binarize([0.5]),
        "binarize(generator a string)": lambda: binarize(torch.tensor([0.5]), "g"),
        "preprocess(a list)": lambda: preprocess([1, 2]),
        "preprocess(floats up to 300)": lambda: preprocess(torch.full((2, 2), 300.0)),
        "load_checkpoint(5)": lambda: load_checkpoint(5),
        "RunFolder(5)": lambda: RunFolder(5),
        "RunFolder.write_evaluation({}) (a file no reader takes)": lambda: RunFolder(
            "run").write_evaluation({}),
        "RunFolder.write_metrics(config, epochs=3) (a file no reader takes)": lambda: RunFolder(
            "run").write_metrics(TrainConfig(), 3, {}),
        "RunFolder.save_checkpoint(3)": lambda: RunFolder("run").save_checkpoint(3),
        "RunFolder.prepare_new(overwrite='no') (taken as yes: the run deleted)": lambda: (
            RunFolder("run").prepare_new(overwrite="no", log=lambda m: None)),
        "set_threads(0)": lambda: set_threads(0),
        "set_threads('a')": lambda: set_threads("a"),
        "set_threads(100000) (libgomp cannot start them)": lambda: set_threads(100_000),
        "report(vae, x, estimate=5)": lambda: report(vae(), binary, 5),
        "pareto_k_hat(NaN log-weights)": lambda: pareto_k_hat(torch.full((30,), math.nan)),
        "annealing_schedule(-1)": lambda: annealing_schedule(-1),
        "elbo_terms(num_samples=0)": lambda: elbo_terms(vae(), binary, num_samples=0),
        "vae.encode(x of the wrong width)": lambda: vae().encode(torch.ones(3, 10)),
        "vae.decode(z of the wrong width)": lambda: vae().decode(torch.ones(3, 10)),
        "plot_posterior_vs_guide of a 50-dimensional latent": lambda: plot_posterior_vs_guide(
            VAE(784, hidden_sizes=(8,)), binary, "unused.png"),
        "plot_elbo_decomposition({})": lambda: plot_elbo_decomposition({}, "unused.png"),
        "plot_latent_embedding(labels of the wrong length)": lambda: plot_latent_embedding(
            vae(), binary, torch.zeros(5), "unused.png"),
        "estimate_log_px(Program(5, 6))": lambda: estimate_log_px(Program(5, 6), binary,
                                                                  num_samples=3),
        "make_likelihood('bernoulli', scale=2)": lambda: make_likelihood("bernoulli", x_dim=3,
                                                                         scale=2.0),
        "estimate_log_px(x on the meta device)": lambda: estimate_log_px(
            vae(), binary.to("meta"), num_samples=3),
        "vae.model(plate='no')": lambda: trace_model(vae(), binary, plate="no"),
        "VAE.from_preset('conv', image_shape=(28,))": lambda: VAE.from_preset(
            "conv", 784, image_shape=(28,)),
        "VAE.from_preset('conv', image_shape='a')": lambda: VAE.from_preset(
            "conv", 784, image_shape="a"),
        "sample_model(params, n=-1)": lambda: sample_model(ppca, -1),
        "log_marginal(x, params=5)": lambda: log_marginal(torch.zeros(3, 4), 5),
    }
    for bad, value in (("grey levels", 0.5), ("a pixel of 2.0", 2.0), ("a pixel of -1", -1.0),
                       ("a NaN pixel", float("nan"))):
        x = ones.clone()
        x[1, 5] = value if bad != "grey levels" else x[1, 5]
        x = x * 0.5 if bad == "grey levels" else x
        for label, model in models.items():
            for validation in (True, False):
                calls[f"SVI step, {bad}, {label}, validation {'on' if validation else 'off'}"] = (
                    lambda x=x, model=model, validation=validation: svi_step(x, model,
                                                                             validation))
        for name in ("meanfield", "iwae", "dreg", "rws"):
            calls[f"make_objective('{name}').differentiable_loss, {bad}"] = (
                lambda name=name, x=x: objective_loss(name, x))
    return [Fault("api", name, name, lambda folder, call=call: run_api(call),
                  succeeds="(success)" in name) for name, call in calls.items()]


def catalogue() -> list[Fault]:
    return (argument_faults() + resource_faults() + data_faults() + checkpoint_faults()
            + metrics_faults() + run_folder_faults() + api_faults())


# --- the report ----------------------------------------------------------------------------


def summary(verdicts: list[dict]) -> dict:
    return {"tried": len(verdicts),
            "clean error": sum(v["expected"] == "error" and v["ok"] for v in verdicts),
            "success": sum(v["expected"] == "success" and v["ok"] for v in verdicts),
            "traceback": sum(v["traceback"] for v in verdicts),
            "silent": sum(v["silent"] for v in verdicts),
            "lost": sum(v["lost"] for v in verdicts)}


def markdown(verdicts: list[dict], scratch: Path) -> str:
    s = summary(verdicts)
    lines = [
        "# Failure cases and what they produce",
        "",
        "Generated by `python -m tests.faults` from the catalogue in `tests/faults.py`, which "
        "`tests/test_faults.py` runs in the test suite. Each case runs as a user would run it "
        "(the command line in-process, or the Python API) in a scratch folder holding a "
        "finished tiny run (`run/`) and a copy of the MNIST files (`data/`), with "
        f"`PYRO_VAE_MEMORY_LIMIT_MB={MEMORY_LIMIT_MB}`. Paths are shown relative to it; `…` in "
        f"a command stands for the tiny sizes `{' '.join(TINY)}` (or `--quiet --no-plots`).",
        "",
        "Every failure a user can cause ends in one of the project's errors "
        "(`pyro_vae.errors`) and, on the command line, **one line** on stderr and exit status "
        "**2**; Ctrl-C ends with exit status 130. A case counts as a *traceback* if an "
        "exception escapes, *silent* if it should fail and does not (or its check of the "
        "result fails), and *lost* if a failed case changed the run folder's checkpoints, "
        "metrics or evaluation.",
        "",
        "| tried | clean error | success (as expected) | traceback | silent wrong result "
        "| data lost |",
        "|---|---|---|---|---|---|",
        f"| {s['tried']} | {s['clean error']} | {s['success']} | {s['traceback']} | "
        f"{s['silent']} | {s['lost']} |",
        "",
    ]
    kinds = list(dict.fromkeys(v["kind"] for v in verdicts))
    for kind in kinds:
        lines += [f"## {kind[0].upper() + kind[1:]}", "", "| case | command | exit | message |",
                  "|---|---|---|---|"]
        for v in (v for v in verdicts if v["kind"] == kind):
            message = (v["message"] or ("(success)" if v["status"] == 0 else "")).replace(
                str(scratch), ".").replace("|", "\\|")
            message = _relative(message)
            status = "-" if v["command"] == v["name"] and v["status"] == 2 else v["status"]
            flag = "" if v["ok"] else " **(fails)**"
            command = v["command"].replace(" ".join(TINY), "…").replace(" ".join(TINY[-2:]),
                                                                       "…")
            lines.append(f"| {v['name']}{flag} | `{command}` | {status} | {message} |")
        lines.append("")
    return "\n".join(lines)


def _relative(message: str) -> str:
    import re

    return re.sub(r"/\S*/case\d{3}/", "", message)


def main() -> int:
    import json
    import tempfile

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        template = make_template(scratch / "template")
        verdicts = run_all(catalogue(), scratch / "cases", template,
                           log=lambda line: print(line, file=sys.__stderr__, flush=True))
        text = markdown(verdicts, scratch)
    (ROOT / "docs" / "failure_cases.md").write_text(text + "\n")
    print(json.dumps(summary(verdicts)))
    for v in verdicts:
        if not v["ok"]:
            print(f"FAILS: {v['kind']}: {v['name']}: {v['message']}\n{v['trace'] or ''}")
    return 0 if all(v["ok"] for v in verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
