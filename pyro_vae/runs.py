"""A run folder: everything one training run writes, and the only way the rest of the package
reads it back.

================================  ==============================================================
``checkpoint.pt``                 weights, optimizer and RNG states, config, history: to resume
                                  and to evaluate (:class:`Checkpoint`, written every epoch)
``checkpoint.prev.pt``            the checkpoint before it, kept so that a damaged latest one can
                                  be recovered
``metrics.json``                  config, data and per-epoch figures (schema ``pyro_vae.metrics``)
``evaluation.json``               ``pyro-vae evaluate``'s report (schema ``pyro_vae.evaluation``)
``run.lock``                      held (``flock``) by the process writing the folder
``*.png``                         pictures (:mod:`pyro_vae.plots`)
================================  ==============================================================

**Ownership.** A process that trains into a folder holds its lock for the life of the run, so
a second writer fails at once with a message naming the holder; the kernel releases the lock
when a process dies, so a lock left by a dead process is recovered without a stale-lock
heuristic. A folder that already holds a run is never overwritten silently: a new run there
needs ``--resume`` or an explicit ``--overwrite`` (:meth:`RunFolder.prepare_new`).

**Schemas.** Each file has one schema with a version. Readers accept exactly the current one,
and older versions only through an explicit migration (``_migrate_*``). A checkpoint is
verified on load (the archive's CRCs, then every entry: types, shapes against the saved
configuration, finite values), and an error names the file and the entry.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch

from pyro_vae.checkpoint import atomic_write_json, read_checkpoint, save_checkpoint
from pyro_vae.config import TrainConfig, build_vae
from pyro_vae.errors import CheckpointError, ConfigError, DataError, RunFolderError
from pyro_vae.objectives import get_estimator

try:  # POSIX; elsewhere run folders are not locked
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

__all__ = [
    "CHECKPOINT_VERSION",
    "EVALUATION_SCHEMA",
    "EVALUATION_VERSION",
    "METRICS_SCHEMA",
    "METRICS_VERSION",
    "PICTURES",
    "Checkpoint",
    "RunFolder",
    "load_checkpoint",
    "read_json",
]

CHECKPOINT_VERSION = 2
METRICS_SCHEMA, METRICS_VERSION = "pyro_vae.metrics", 2
EVALUATION_SCHEMA, EVALUATION_VERSION = "pyro_vae.evaluation", 2
# Pictures that pyro-vae writes into a run folder (removed with the run by --overwrite).
PICTURES = ("reconstructions.png", "prior_samples.png", "latent_manifold.png",
            "latent_embedding.png", "learning_curves.png", "log_px_vs_k.png", "pareto_k.png",
            "samples.png")
_RECORD_FIELDS = ("epoch", "train_objective", "train_objective_nats", "test_elbo",
                  "wall_seconds")


class Checkpoint(NamedTuple):
    """A verified checkpoint. ``trainer_state`` and ``rng_state`` are ``None`` in a file
    written without them (it can be evaluated, not resumed)."""

    config: TrainConfig
    x_dim: int
    image_shape: tuple[int, int] | None  # (rows, cols) of an image, for pictures
    epoch: int  # epochs done
    model_state: dict  # the VAE's state dict
    trainer_state: dict | None  # pyro_vae.trainer.Trainer.state_dict()
    rng_state: dict | None  # torch's, the data generator's and Python's RNG states
    history: list  # one metrics record per epoch done
    path: Path | None = None  # where it was read from

    def to_dict(self) -> dict:
        d = self._asdict()
        del d["path"]
        d["config"] = self.config.to_dict()
        d["image_shape"] = None if self.image_shape is None else list(self.image_shape)
        return d


# --- the folder ---------------------------------------------------------------------------


class RunFolder:
    """The folder of one run (see the module docstring). Nothing is created until a method
    writes."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._lock_fd: int | None = None
        self._lock_depth = 0

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

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
        return self.path / "evaluation.json"

    @property
    def lock_file(self) -> Path:
        return self.path / "run.lock"

    def picture(self, name: str) -> Path:
        """The path of picture ``name`` (e.g. ``"reconstructions"``) in this folder."""
        return self.path / f"{name}.png"

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
        process holds it, naming that process."""
        if self._lock_depth:
            self._lock_depth += 1
            try:
                yield self
            finally:
                self._lock_depth -= 1
            return
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
        if self.checkpoint.exists():
            _keep_previous(self.checkpoint, self.previous_checkpoint)
        save_checkpoint(self.checkpoint, checkpoint.to_dict())

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
        atomic_write_json(self.metrics, {
            "schema": METRICS_SCHEMA,
            "version": METRICS_VERSION,
            "units": "nats per datapoint; test_elbo is a lower bound on log p(x), "
                     "train_objective_nats the training objective named by train_objective "
                     "(higher is better)",
            "config": config.to_dict(),
            "data": data_info,
            "epochs": history,
        })

    def read_metrics(self) -> dict:
        """``metrics.json``, checked (and migrated from version 1)."""
        return _check_metrics(read_json(self.metrics), self.metrics)

    def write_evaluation(self, report: dict, path: str | os.PathLike | None = None) -> Path:
        """Write ``report`` (from :func:`pyro_vae.evaluation.evaluate`, with the command's
        fields) as ``evaluation.json``, or to ``path``."""
        path = Path(path) if path is not None else self.evaluation
        atomic_write_json(path, {"schema": EVALUATION_SCHEMA, "version": EVALUATION_VERSION,
                                 **report})
        return path

    def read_evaluation(self) -> dict | None:
        """``evaluation.json`` checked (and migrated from version 1), or ``None`` if absent."""
        if not self.evaluation.exists():
            return None
        return _check_evaluation(read_json(self.evaluation), self.evaluation)


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


# --- reading and checking files -----------------------------------------------------------


def read_json(path: str | os.PathLike):
    """The JSON document at ``path``; :class:`DataError` naming the file if it is unreadable."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DataError(f"{path}: expected a JSON file, found a folder") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: not a readable JSON file ({e})") from None


def load_checkpoint(path: str | os.PathLike, *, map_location="cpu") -> Checkpoint:
    """Read, migrate and verify the checkpoint at ``path`` (a file, or a run folder)."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.pt"
    raw = read_checkpoint(path, map_location=map_location)
    version = raw.get("format_version")
    if version == 1:
        raw = _migrate_checkpoint_v1(raw, path)
    elif version != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {version!r}; this pyro_vae "
                              f"reads versions 1 to {CHECKPOINT_VERSION}")
    return _check_checkpoint(raw, path)


def vae_from_checkpoint(checkpoint: Checkpoint, *, device="cpu"):
    """``(vae, checkpoint)``: the checkpoint's VAE, with β = 1, in eval mode, on ``device``."""
    vae = build_vae(checkpoint.config, checkpoint.x_dim)
    vae.load_state_dict(checkpoint.model_state)
    vae.beta = 1.0
    return vae.to(device).eval(), checkpoint


def _bad(path, entry: str, what: str) -> CheckpointError:
    return CheckpointError(f"{path}: damaged checkpoint: {entry} {what}")


def _is_int(value, low: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _check_checkpoint(raw: dict, path) -> Checkpoint:
    missing = [k for k in ("config", "x_dim", "epoch", "model_state") if k not in raw]
    if missing:
        raise CheckpointError(f"{path}: damaged checkpoint: it lacks {', '.join(missing)}")
    try:
        config = TrainConfig.from_dict(raw["config"])
    except ConfigError as e:
        raise _bad(path, "entry config:", str(e)) from None
    for key, low in (("x_dim", 1), ("epoch", 0)):
        if not _is_int(raw[key], low):
            raise _bad(path, f"entry {key}", f"is {raw[key]!r}, expected an integer >= {low}")
    image_shape = raw.get("image_shape")
    if image_shape is not None:
        if not (isinstance(image_shape, (list, tuple)) and len(image_shape) == 2
                and all(_is_int(s, 1) for s in image_shape)
                and image_shape[0] * image_shape[1] == raw["x_dim"]):
            raise _bad(path, "entry image_shape", f"is {image_shape!r}, expected two sizes "
                       f"whose product is x_dim = {raw['x_dim']}")
        image_shape = tuple(image_shape)
    params = _check_model_state(raw["model_state"], config, raw["x_dim"], path)
    trainer_state = raw.get("trainer_state")
    if trainer_state is not None:
        _check_trainer_state(trainer_state, params, path)
    rng_state = raw.get("rng_state")
    if rng_state is not None:
        _check_rng_state(rng_state, path)
    history = raw.get("history", [])
    _check_history(history, raw["epoch"], path)
    return Checkpoint(config, raw["x_dim"], image_shape, raw["epoch"], raw["model_state"],
                      trainer_state, rng_state, history, Path(path))


def _check_model_state(state, config: TrainConfig, x_dim: int, path) -> list[torch.Tensor]:
    """Check the weights against the VAE the configuration builds; return that VAE's
    parameters in order (for the optimizer state's check)."""
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise _bad(path, "entry model_state", "is not a dict of named tensors")
    try:
        expected = build_vae(config, x_dim)
    except (ConfigError, RuntimeError, MemoryError) as e:
        raise _bad(path, "entry config", f"describes no buildable model ({e})") from None
    wanted = expected.state_dict()
    missing, extra = sorted(set(wanted) - set(state)), sorted(set(state) - set(wanted))
    if missing or extra:
        raise _bad(path, "entry model_state", f"does not match the saved configuration: "
                   f"missing {missing[:4]}, unexpected {extra[:4]}")
    for name, tensor in state.items():
        if tensor.shape != wanted[name].shape or not tensor.is_floating_point():
            raise _bad(path, f"entry model_state[{name!r}]", f"has shape {tuple(tensor.shape)} "
                       f"and dtype {tensor.dtype}, expected {tuple(wanted[name].shape)}, "
                       "floating point, for the saved configuration")
        if not torch.isfinite(tensor).all():
            raise _bad(path, f"entry model_state[{name!r}]", "holds NaN or infinite values")
    named = dict(expected.named_parameters())
    return [named[name] for name in named]


def _check_trainer_state(state, params: list[torch.Tensor], path) -> None:
    if not (isinstance(state, dict) and isinstance(state.get("adam"), dict)
            and _is_int(state.get("steps"))):
        raise _bad(path, "entry trainer_state", "is not {'adam': ..., 'steps': int}")
    adam = state["adam"]
    groups = adam.get("param_groups")
    if not (isinstance(adam.get("state"), dict) and isinstance(groups, list) and groups
            and all(isinstance(g, dict) and isinstance(g.get("params"), list) for g in groups)):
        raise _bad(path, "entry trainer_state['adam']", "is not a torch Adam state dict")
    indices = [i for g in groups for i in g["params"]]
    if sorted(indices) != list(range(len(params))):
        raise _bad(path, "entry trainer_state['adam']", f"covers parameters {indices[:6]}..., "
                   f"expected the model's {len(params)}")
    for index, moments in adam["state"].items():
        if not (_is_int(index) and index < len(params) and isinstance(moments, dict)):
            raise _bad(path, "entry trainer_state['adam']['state']", f"has a bad key {index!r}")
        for name in ("exp_avg", "exp_avg_sq"):
            value = moments.get(name)
            if not (isinstance(value, torch.Tensor) and value.shape == params[index].shape
                    and bool(torch.isfinite(value).all())):
                raise _bad(path, f"entry trainer_state['adam']['state'][{index}][{name!r}]",
                           f"is not a finite tensor of shape {tuple(params[index].shape)}")


def _check_rng_state(state, path) -> None:
    if not isinstance(state, dict):
        raise _bad(path, "entry rng_state", "is not a dict")
    for name in ("torch", "data"):
        value = state.get(name)
        if not (isinstance(value, torch.Tensor) and value.dtype == torch.uint8):
            raise _bad(path, f"entry rng_state[{name!r}]", "is not a generator state (uint8)")
    try:
        torch.Generator().set_state(state["torch"])
        random.Random().setstate((3, tuple(state.get("python", ())), None))
    except (RuntimeError, ValueError, TypeError, OverflowError):
        raise _bad(path, "entry rng_state", "holds states that no generator accepts") from None


def _check_history(history, epoch: int, path) -> None:
    if not isinstance(history, list) or len(history) != epoch:
        raise _bad(path, "entry history", f"is not a list of {epoch} per-epoch records")
    for i, record in enumerate(history, 1):
        _check_record(record, i, lambda what, i=i: _bad(path, f"entry history[{i - 1}]", what))


def _check_record(record, epoch: int, error) -> None:
    if not isinstance(record, dict) or any(k not in record for k in _RECORD_FIELDS):
        raise error(f"is not a metrics record with {', '.join(_RECORD_FIELDS)}")
    if record["epoch"] != epoch or not isinstance(record["train_objective"], str):
        raise error(f"is numbered {record['epoch']!r}, expected epoch {epoch}")
    for key in _RECORD_FIELDS[2:]:
        if not isinstance(record[key], (int, float)) or isinstance(record[key], bool):
            raise error(f"has {key} = {record[key]!r}, expected a number")


def _check_metrics(document, path) -> dict:
    if not isinstance(document, dict):
        raise DataError(f"{path}: not a pyro_vae metrics file: expected a JSON object, found "
                        f"{type(document).__name__}")
    if "schema" not in document and "epochs" in document:
        document = _migrate_metrics_v1(document)
    if document.get("schema") != METRICS_SCHEMA or document.get("version") != METRICS_VERSION:
        raise DataError(f"{path}: not a pyro_vae metrics file of version {METRICS_VERSION} "
                        f"(schema {document.get('schema')!r}, version "
                        f"{document.get('version')!r})")
    try:
        TrainConfig.from_dict(document.get("config"))
    except ConfigError as e:
        raise DataError(f"{path}: config: {e}") from None
    epochs = document.get("epochs")
    if not isinstance(epochs, list):
        raise DataError(f"{path}: 'epochs' is not a list of per-epoch records")
    for i, record in enumerate(epochs, 1):
        _check_record(record, i, lambda what, i=i: DataError(f"{path}: epochs[{i - 1}] {what}"))
    return document


def _check_evaluation(document, path) -> dict:
    if not isinstance(document, dict):
        raise DataError(f"{path}: not a pyro_vae evaluation file: expected a JSON object, "
                        f"found {type(document).__name__}")
    if "schema" not in document and "log_px" in document:
        document = _migrate_evaluation_v1(document)
    if (document.get("schema") != EVALUATION_SCHEMA
            or document.get("version") != EVALUATION_VERSION):
        raise DataError(f"{path}: not a pyro_vae evaluation file of version "
                        f"{EVALUATION_VERSION}")
    log_px = document.get("log_px")
    if not (isinstance(log_px, dict) and _finite_number(log_px.get("mean"))
            and _is_int(document.get("num_datapoints"), 1)):
        raise DataError(f"{path}: no log_px.mean and num_datapoints in this evaluation")
    return document


def _finite_number(value) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


# --- migrations ---------------------------------------------------------------------------


def _objective_label(config: dict, label: str) -> str:
    """Version 1 said ``IWAE_K``; version 2 names K (``IWAE_5``)."""
    if "IWAE_K" not in label:
        return label
    k = config.get("num_particles")
    if not _is_int(k, 1):
        k = get_estimator(config.get("estimator")).default_num_particles
    return label.replace("IWAE_K", f"IWAE_{k}")


def _migrate_record_v1(record, config: dict):
    """``train_elbo`` (which held IWAE_K or a β-weighted ELBO too) became
    ``train_objective_nats``."""
    if not isinstance(record, dict) or "train_elbo" not in record:
        return record
    out = {k: v for k, v in record.items() if k != "train_elbo"}
    out["train_objective"] = _objective_label(config, record.get("train_objective", "ELBO"))
    out["train_objective_nats"] = record["train_elbo"]
    return out


def _migrate_metrics_v1(document: dict) -> dict:
    config = document.get("config") if isinstance(document.get("config"), dict) else {}
    epochs = document.get("epochs")
    return {**document, "schema": METRICS_SCHEMA, "version": METRICS_VERSION,
            "epochs": ([_migrate_record_v1(r, config) for r in epochs]
                       if isinstance(epochs, list) else epochs)}


def _migrate_evaluation_v1(document: dict) -> dict:
    """Version 1 had no schema fields and only importance sampling."""
    return {"schema": EVALUATION_SCHEMA, "version": EVALUATION_VERSION, "method": "is",
            **document}


def _migrate_checkpoint_v1(raw: dict, path) -> dict:
    """Version 1 kept Pyro's per-parameter optimizer states for Pyro estimators (one torch
    Adam state dict per param-store name) and torch Adam's for the others, under
    ``optimizer_state``; version 2 keeps one torch Adam state for every run, under
    ``trainer_state``, and names IWAE's K in the history."""
    out = {k: v for k, v in raw.items() if k != "optimizer_state"}
    out["format_version"] = CHECKPOINT_VERSION
    config = raw.get("config") if isinstance(raw.get("config"), dict) else {}
    if isinstance(raw.get("history"), list):
        out["history"] = [_migrate_record_v1(r, config) for r in raw["history"]]
    state = raw.get("optimizer_state")
    if state is not None:
        out["trainer_state"] = _migrate_optimizer_state(state, raw, path)
    return out


def _migrate_optimizer_state(state, raw: dict, path) -> dict:
    if not isinstance(state, dict):
        raise _bad(path, "entry optimizer_state", "is not a dict")
    if "state" in state and "param_groups" in state:  # torch Adam (hand-written or DDP)
        adam = {k: v for k, v in state.items() if k != "distributed_steps"}
        steps = state.get("distributed_steps")
        return {"adam": adam, "steps": steps if _is_int(steps) else _adam_steps(adam)}
    # Pyro's: {"encoder$$$body.0.weight": one-parameter Adam state dict, ...}
    try:
        config = TrainConfig.from_dict(raw["config"])
        names = [n for n, _ in build_vae(config, raw["x_dim"]).named_parameters()]
    except (ConfigError, KeyError, TypeError, RuntimeError) as e:
        raise _bad(path, "entry config", f"cannot be read ({e})") from None
    moments, groups = {}, []
    for pyro_name, per_param in state.items():
        name = str(pyro_name).replace("$$$", ".", 1)
        if name not in names or not isinstance(per_param, dict):
            raise _bad(path, f"entry optimizer_state[{pyro_name!r}]",
                       "names no parameter of the model")
        inner = per_param.get("state", {})
        if isinstance(inner, dict) and 0 in inner:
            moments[names.index(name)] = inner[0]
        groups += per_param.get("param_groups", [])[:1]
    if not groups:
        raise _bad(path, "entry optimizer_state", "holds no optimizer state")
    adam = {"state": moments, "param_groups": [{**groups[0], "params": list(range(len(names)))}]}
    return {"adam": adam, "steps": _adam_steps(adam)}


def _adam_steps(adam: dict) -> int:
    steps = [int(m["step"]) for m in adam.get("state", {}).values()
             if isinstance(m, dict) and "step" in m]
    return max(steps, default=0)
