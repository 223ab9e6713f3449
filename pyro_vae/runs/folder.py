"""A run folder: everything one training run writes, and the only way the rest of the package
reads it back (``docs/runs.md``).

================================  ==============================================================
``checkpoint.pt``                 weights, optimizer and RNG states, config (:class:`Checkpoint`)
``checkpoint.prev.pt``            the checkpoint before it, to recover a damaged latest one
``metrics.json``                  config, data and per-epoch figures (schema ``pyro_vae.metrics``)
``evaluation.json``               ``pyro-vae evaluate``'s report (schema ``pyro_vae.evaluation``)
``run.lock``                      held (``flock``) by the process writing the folder
``*.png``                         pictures (:mod:`pyro_vae.plots`)
================================  ==============================================================

The writer holds the lock for the life of the run (the kernel releases it if the process dies);
a folder that holds a run is replaced only on request (:meth:`RunFolder.prepare_new`). Readers
accept each file's current schema version, older ones through :mod:`.migrations`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from pyro_vae import checks
from pyro_vae.build import build_vae
from pyro_vae.config import TrainConfig
from pyro_vae.errors import CheckpointError, ConfigTypeError, DataError, RunFolderError
from pyro_vae.files import atomic_write_json, read_torch_file, save_torch_file
from pyro_vae.runs.migrations import (
    migrate_checkpoint,
    migrate_evaluation,
    migrate_metrics_v1,
)
from pyro_vae.runs.schema import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    EVALUATION_SCHEMA,
    EVALUATION_VERSION,
    METRICS_SCHEMA,
    METRICS_VERSION,
    Checkpoint,
    check_checkpoint,
    check_evaluation,
    check_metrics,
    read_json,
)

try:  # POSIX; elsewhere run folders are not locked
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

__all__ = ["PICTURES", "RunFolder", "load_checkpoint", "vae_from_checkpoint"]

# Pictures that pyro-vae writes into a run folder (removed with the run by --overwrite).
PICTURES = ("reconstructions.png", "prior_samples.png", "latent_manifold.png",
            "latent_embedding.png", "learning_curves.png", "log_px_vs_k.png", "pareto_k.png",
            "samples.png")


class RunFolder:
    """The folder of one run. Nothing is created until a method writes."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(checks.instance("path", path, (str, os.PathLike)))
        self._lock_fd: int | None = None
        self._lock_depth = 0

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    @classmethod
    def of(cls, run: RunFolder | str | os.PathLike) -> RunFolder:
        """``run`` if it is a :class:`RunFolder`, else the one at the path ``run``."""
        if isinstance(run, cls):
            return run
        return cls(checks.instance("run", run, (cls, str, os.PathLike)))

    @property
    def checkpoint(self) -> Path:
        return self.path / "checkpoint.pt"

    @property
    def previous_checkpoint(self) -> Path:
        return self.path / "checkpoint.prev.pt"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.json"

    @property
    def evaluation(self) -> Path:
        """``evaluation.json``: in :attr:`output_folder`, else beside the checkpoint (where
        older versions wrote it)."""
        made = self.output_folder / "evaluation.json"
        return made if made.exists() or self.output_folder == self.path else (
            self.path / "evaluation.json")

    @functools.cached_property
    def output_folder(self) -> Path:
        """Where the commands write what they make of this run (evaluation, pictures, samples):
        the folder itself, or ``runs/<its name>`` in the current folder for a folder that git
        tracks, so that the checkout stays as it was."""
        return Path("runs") / self.path.resolve().name if _tracked(self.path) else self.path

    @property
    def lock_file(self) -> Path:
        return self.path / "run.lock"

    def picture(self, name: str) -> Path:
        """The path of picture ``name`` (e.g. ``"reconstructions"``) in :attr:`output_folder`."""
        return self.output_folder / f"{name}.png"

    def holds_run(self) -> bool:
        """Whether a run has written here (a checkpoint or metrics)."""
        return any(p.exists() for p in (self.checkpoint, self.previous_checkpoint,
                                        self.metrics))

    def describe(self) -> str:
        """A few words on the run this folder holds, for messages."""
        try:
            metrics = self.read_metrics()
            config, epochs = metrics["config"], metrics["epochs"]
            done = epochs[-1]["epoch"] if epochs else 0
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(self.metrics.stat().st_mtime))
            return (f"{config['estimator']}, {done} of {config['epochs']} epochs, last "
                    f"written {when}")
        except (DataError, OSError, KeyError, TypeError, IndexError):
            return "a run whose metrics cannot be read"

    # --- ownership --------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self):
        """Hold this folder's lock (creating the folder) until the block ends; nested uses
        by the same :class:`RunFolder` are free. :class:`RunFolderError` at once if another
        process holds it, naming that process. If nothing but the lock file was written, the
        lock file goes, and so do the folders this lock created."""
        if self._lock_depth:
            self._lock_depth += 1
            try:
                yield self
            finally:
                self._lock_depth -= 1
            return
        created = [p for p in (self.path, *self.path.parents) if not p.exists()]
        self._check_folder()
        try:
            fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise RunFolderError(f"{self.path}: cannot write in this folder ({e.strerror or e})"
                                 ) from None
        try:
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    holder = _read_holder(fd)
                    raise RunFolderError(
                        f"{self.path} is in use by {holder}; wait for it to finish, or choose "
                        "another folder"
                    ) from None
            _write_holder(fd)
            self._lock_fd, self._lock_depth = fd, 1
            yield self
        finally:
            if self._lock_fd == fd:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, 0)
                    if os.listdir(self.path) == [self.lock_file.name]:
                        self.lock_file.unlink()  # still held: no other process is inside
                        for folder in created:  # the run folder, then any parents made
                            folder.rmdir()
                self._lock_fd, self._lock_depth = None, 0
            os.close(fd)  # releases the flock

    def _check_folder(self) -> None:
        if self.path.exists() and not self.path.is_dir():
            raise RunFolderError(f"{self.path} is a file; a run needs a folder")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RunFolderError(f"{self.path}: cannot create the run folder "
                                 f"({e.strerror or e})") from None
        if not os.access(self.path, os.W_OK | os.X_OK):
            raise RunFolderError(f"{self.path}: this folder is not writable")

    def prepare_new(self, *, overwrite: bool = False, log: Callable = print) -> None:
        """Make the folder ready for a new run (under :meth:`lock`): refuse one that holds a
        run unless ``overwrite``, which removes that run's files and says so."""
        checks.instance("overwrite", overwrite, bool)
        self._check_folder()
        if not self.holds_run():
            return
        if not overwrite:
            raise RunFolderError(
                f"{self.path} already holds a run ({self.describe()}); nothing was changed. "
                f"Continue it with --resume {self.path}, replace it with --overwrite, or "
                "choose another --out"
            )
        log(f"--overwrite: replacing the run in {self.path} ({self.describe()})")
        for path in (self.checkpoint, self.previous_checkpoint, self.metrics, self.evaluation,
                     *(self.path / name for name in PICTURES)):
            path.unlink(missing_ok=True)

    # --- checkpoints ------------------------------------------------------------------
    def save_checkpoint(self, checkpoint: Checkpoint) -> None:
        """Write ``checkpoint.pt`` atomically, keeping the one it replaces as
        ``checkpoint.prev.pt``: at every moment both files are whole."""
        checks.instance("checkpoint", checkpoint, Checkpoint)
        if self.checkpoint.exists():
            _keep_previous(self.checkpoint, self.previous_checkpoint)
        save_torch_file(self.checkpoint, {"format": CHECKPOINT_FORMAT,
                                          "format_version": CHECKPOINT_VERSION,
                                          **checkpoint.to_dict()})

    def load_checkpoint(self, *, map_location="cpu") -> Checkpoint:
        """The verified checkpoint; a damaged one's error says how to recover the previous."""
        try:
            return load_checkpoint(self.checkpoint, map_location=map_location)
        except CheckpointError as e:
            raise CheckpointError(f"{e}{self._recovery_hint()}") from None

    def _recovery_hint(self) -> str:
        if not self.previous_checkpoint.exists():
            return ""
        try:
            epoch = load_checkpoint(self.previous_checkpoint).epoch
        except CheckpointError:
            return f". The previous checkpoint, {self.previous_checkpoint}, is damaged too"
        return (f". The previous checkpoint, {self.previous_checkpoint} (epoch {epoch}), is "
                f"intact: to go on from it, replace the damaged file with it (mv "
                f"{self.previous_checkpoint} {self.checkpoint}) and run the command again")

    def load_vae(self, *, device="cpu"):
        """``(vae, checkpoint)``: the trained VAE (β = 1, eval mode, on ``device``)."""
        return vae_from_checkpoint(self.load_checkpoint(), device=device)

    # --- metrics.json and evaluation.json ---------------------------------------------
    def write_metrics(self, config: TrainConfig, history: list, data_info: dict) -> None:
        """Write ``metrics.json`` atomically, checked as :meth:`read_metrics` checks it."""
        checks.instance("config", config, TrainConfig)
        atomic_write_json(self.metrics, check_metrics({
            "schema": METRICS_SCHEMA,
            "version": METRICS_VERSION,
            "units": "nats per datapoint; test_elbo is a lower bound on log p(x), "
                     "train_objective_nats the training objective named by train_objective "
                     "(higher is better)",
            "config": config.to_dict(),
            "data": data_info,
            "epochs": history,
        }, self.metrics))

    def read_metrics(self) -> dict:
        """``metrics.json``, checked (and migrated from version 1)."""
        document = read_json(self.metrics)
        if isinstance(document, dict) and "schema" not in document and "epochs" in document:
            document = migrate_metrics_v1(document)
        return check_metrics(document, self.metrics)

    def evaluation_path(self, path: str | os.PathLike | None = None) -> Path:
        """Where :meth:`write_evaluation` writes: ``path``, else ``evaluation.json`` in
        :attr:`output_folder`."""
        return Path(path) if path is not None else self.output_folder / "evaluation.json"

    def write_evaluation(self, report: dict, path: str | os.PathLike | None = None) -> Path:
        """Write ``report`` (from :func:`pyro_vae.evaluation.evaluate`, with the command's
        fields) to :meth:`evaluation_path`."""
        path = self.evaluation_path(path)
        checks.instance("report", report, dict)
        atomic_write_json(path, check_evaluation({"schema": EVALUATION_SCHEMA,
                                                  "version": EVALUATION_VERSION, **report}, path))
        return path

    def read_evaluation(self) -> dict | None:
        """``evaluation.json`` checked (and migrated from versions 1 and 2), or ``None``."""
        if not self.evaluation.exists():
            return None
        document = read_json(self.evaluation)
        if isinstance(document, dict) and document.get("version", 1) in (1, 2) and (
                "schema" in document or "log_px" in document):
            document = migrate_evaluation(document)
        return check_evaluation(document, self.evaluation)


def _keep_previous(current: Path, previous: Path) -> None:
    """Make ``previous`` a whole copy of ``current`` atomically (a hard link where the file
    system allows it, else a copy), fsynced."""
    fd, tmp = tempfile.mkstemp(dir=current.parent, prefix=f".{previous.name}.", suffix=".tmp")
    os.close(fd)
    try:
        os.unlink(tmp)
        try:
            os.link(current, tmp)
        except OSError:
            shutil.copyfile(current, tmp)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, previous)
    except OSError as e:
        raise OSError(e.errno, f"cannot write {previous}: {e.strerror or e}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _tracked(folder: Path) -> bool:
    """Whether a git repository tracks files in ``folder`` (False where git is missing)."""
    if not folder.is_dir():
        return False
    try:
        out = subprocess.run(["git", "ls-files", "--", "."], cwd=folder, capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return False
    return out.returncode == 0 and bool(out.stdout.strip())


def _write_holder(fd: int) -> None:
    info = {"pid": os.getpid(), "host": socket.gethostname(),
            "command": " ".join(sys.argv[:6]) or "python", "started": time.strftime("%c")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        return (f"process {info['pid']} on {info['host']} ({info['command']}, started "
                f"{info['started']})")
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


def load_checkpoint(path: str | os.PathLike, *, map_location="cpu") -> Checkpoint:
    """Read, migrate and verify the checkpoint at ``path`` (a file, or a run folder), its
    tensors on ``map_location`` (the CPU: a run trained on a GPU loads anywhere)."""
    path = Path(checks.instance("path", path, (str, os.PathLike)))
    if path.is_dir():
        path = path / "checkpoint.pt"
    raw = read_torch_file(path, map_location=map_location)
    if not isinstance(raw, dict) or raw.get("format") != CHECKPOINT_FORMAT:
        found = (f"a dict with keys {sorted(map(str, raw))[:6]}" if isinstance(raw, dict)
                 else f"a {type(raw).__name__}")
        raise CheckpointError(f"{path}: not a pyro_vae checkpoint: expected a dict tagged "
                              f"format={CHECKPOINT_FORMAT!r}, found {found}")
    version = raw.get("format_version")
    if version in (1, 2):
        raw = migrate_checkpoint(raw, path)
    elif version != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {version!r}; this pyro_vae "
                              f"reads versions 1 to {CHECKPOINT_VERSION}")
    return check_checkpoint(raw, path)


def vae_from_checkpoint(checkpoint: Checkpoint | str | os.PathLike, *, device="cpu"):
    """``(vae, checkpoint)``: the model of ``checkpoint`` (a :class:`Checkpoint`, or the path
    of a ``checkpoint.pt`` or of its run folder), with β = 1, in eval mode, on ``device``."""
    if not isinstance(checkpoint, Checkpoint):
        if not isinstance(checkpoint, (str, os.PathLike)):
            raise ConfigTypeError(f"checkpoint must be a Checkpoint or a path; got "
                                  f"{type(checkpoint).__name__}")
        checkpoint = load_checkpoint(checkpoint)
    device = checks.device(device)
    with torch.random.fork_rng(devices=[]):  # the initial weights are overwritten anyway
        vae = build_vae(checkpoint.config, checkpoint.x_dim, checkpoint.image_shape)
    vae.load_state_dict(checkpoint.model_state)
    vae.beta = 1.0
    return vae.to(device).eval(), checkpoint
