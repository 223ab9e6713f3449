"""What the files of a run folder hold, and the checks that a file read back holds exactly
that: the :class:`Checkpoint` entries (types, shapes against the saved configuration, finite
values), the ``metrics.json`` and ``evaluation.json`` documents. Each error names the file and
the entry."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import NamedTuple

import torch

from pyro_vae.build import build_vae
from pyro_vae.checks import is_int, is_number
from pyro_vae.config import TrainConfig
from pyro_vae.errors import CheckpointError, ConfigError, DataError

__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "EVALUATION_SCHEMA", "EVALUATION_VERSION",
           "METRICS_SCHEMA", "METRICS_VERSION", "RECORD_FIELDS", "Checkpoint", "check_checkpoint",
           "check_evaluation", "check_metrics", "read_json"]

CHECKPOINT_FORMAT = "pyro_vae.checkpoint"  # the tag every checkpoint carries
CHECKPOINT_VERSION = 3  # what is written; older versions are migrated (.migrations)
METRICS_SCHEMA, METRICS_VERSION = "pyro_vae.metrics", 2
EVALUATION_SCHEMA, EVALUATION_VERSION = "pyro_vae.evaluation", 3
RECORD_FIELDS = ("epoch", "train_objective", "train_objective_nats", "test_elbo",
                 "wall_seconds")  # what every per-epoch record of metrics.json holds


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


def bad_entry(path, entry: str, what: str) -> CheckpointError:
    """The error of a checkpoint entry that is not what the schema says."""
    return CheckpointError(f"{path}: damaged checkpoint: {entry} {what}")


def check_checkpoint(raw: dict, path) -> Checkpoint:
    missing = [k for k in ("config", "x_dim", "epoch", "model_state") if k not in raw]
    if missing:
        raise CheckpointError(f"{path}: damaged checkpoint: it lacks {', '.join(missing)}")
    try:
        config = TrainConfig.from_dict(raw["config"])
    except ConfigError as e:
        raise bad_entry(path, "entry config:", str(e)) from None
    for key, low in (("x_dim", 1), ("epoch", 0)):
        if not is_int(raw[key], low):
            raise bad_entry(path, f"entry {key}", f"is {raw[key]!r}, expected an integer >= {low}")
    image_shape = raw.get("image_shape")
    if image_shape is not None:
        if not (isinstance(image_shape, (list, tuple)) and len(image_shape) == 2
                and all(is_int(s, 1) for s in image_shape)
                and image_shape[0] * image_shape[1] == raw["x_dim"]):
            raise bad_entry(path, "entry image_shape", f"is {image_shape!r}, expected two sizes "
                       f"whose product is x_dim = {raw['x_dim']}")
        image_shape = tuple(image_shape)
    params = _check_model_state(raw["model_state"], config, raw["x_dim"], image_shape, path)
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


def _check_model_state(state, config: TrainConfig, x_dim: int, image_shape, path
                       ) -> list[torch.Tensor]:
    """Check the weights against the VAE the configuration builds; return that VAE's
    parameters in order (for the optimizer state's check)."""
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise bad_entry(path, "entry model_state", "is not a dict of named tensors")
    try:
        with torch.device("meta"):  # shapes only: no memory, no draw from the global RNG
            expected = build_vae(config, x_dim, image_shape)
    except (ConfigError, RuntimeError, MemoryError) as e:
        if config.model is not None:  # a model of one's own: its code, not the file, is missing
            raise CheckpointError(f"{path}: its model cannot be built here: {e}") from None
        raise bad_entry(path, "entry config", f"describes no buildable model ({e})") from None
    wanted = expected.state_dict()
    missing, extra = sorted(set(wanted) - set(state)), sorted(set(state) - set(wanted))
    if missing or extra:
        raise bad_entry(path, "entry model_state", f"does not match the saved configuration: "
                   f"missing {missing[:4]}, unexpected {extra[:4]}")
    for name, tensor in state.items():
        floating = wanted[name].is_floating_point()  # not so: an IAF's ordering of z
        if tensor.shape != wanted[name].shape or tensor.is_floating_point() != floating:
            kind = "floating point" if floating else str(wanted[name].dtype)
            raise bad_entry(path, f"entry model_state[{name!r}]",
                            f"has shape {tuple(tensor.shape)} and dtype {tensor.dtype}, "
                            f"expected {tuple(wanted[name].shape)}, {kind}, for the saved "
                            "configuration")
        if not torch.isfinite(tensor).all():
            raise bad_entry(path, f"entry model_state[{name!r}]", "holds NaN or infinite values")
    named = dict(expected.named_parameters())
    return [named[name] for name in named]


def _check_trainer_state(state, params: list[torch.Tensor], path) -> None:
    if not (isinstance(state, dict) and isinstance(state.get("adam"), dict)
            and is_int(state.get("steps"), 0)):
        raise bad_entry(path, "entry trainer_state", "is not {'adam': ..., 'steps': int}")
    adam = state["adam"]
    groups = adam.get("param_groups")
    if not (isinstance(adam.get("state"), dict) and isinstance(groups, list) and groups
            and all(isinstance(g, dict) and isinstance(g.get("params"), list) for g in groups)):
        raise bad_entry(path, "entry trainer_state['adam']", "is not a torch Adam state dict")
    indices = [i for g in groups for i in g["params"]]
    if sorted(indices) != list(range(len(params))):
        raise bad_entry(path, "entry trainer_state['adam']", f"covers parameters {indices[:6]}..., "
                   f"expected the model's {len(params)}")
    for index, moments in adam["state"].items():
        if not (is_int(index, 0) and index < len(params) and isinstance(moments, dict)):
            raise bad_entry(path, "entry trainer_state['adam']['state']",
                            f"has a bad key {index!r}")
        for name in ("exp_avg", "exp_avg_sq"):
            value = moments.get(name)
            if not (isinstance(value, torch.Tensor) and value.shape == params[index].shape
                    and bool(torch.isfinite(value).all())):
                raise bad_entry(path, f"entry trainer_state['adam']['state'][{index}][{name!r}]",
                           f"is not a finite tensor of shape {tuple(params[index].shape)}")


def _check_rng_state(state, path) -> None:
    if not isinstance(state, dict):
        raise bad_entry(path, "entry rng_state", "is not a dict")
    for name in ("torch", "data"):
        value = state.get(name)
        if not (isinstance(value, torch.Tensor) and value.dtype == torch.uint8):
            raise bad_entry(path, f"entry rng_state[{name!r}]", "is not a generator state (uint8)")
    try:
        torch.Generator().set_state(state["torch"])
        random.Random().setstate((3, tuple(state.get("python", ())), None))
    except (RuntimeError, ValueError, TypeError, OverflowError):
        raise bad_entry(path, "entry rng_state", "holds states that no generator accepts") from None


def _check_history(history, epoch: int, path) -> None:
    if not isinstance(history, list) or len(history) != epoch:
        raise bad_entry(path, "entry history", f"is not a list of {epoch} per-epoch records")
    for i, record in enumerate(history, 1):
        _check_record(record, i, lambda what, i=i: bad_entry(path, f"entry history[{i - 1}]", what))


def _check_record(record, epoch: int, error) -> None:
    if not isinstance(record, dict) or any(k not in record for k in RECORD_FIELDS):
        raise error(f"is not a metrics record with {', '.join(RECORD_FIELDS)}")
    if record["epoch"] != epoch or not isinstance(record["train_objective"], str):
        raise error(f"is numbered {record['epoch']!r}, expected epoch {epoch}")
    for key in RECORD_FIELDS[2:]:
        if not isinstance(record[key], (int, float)) or isinstance(record[key], bool):
            raise error(f"has {key} = {record[key]!r}, expected a number")


def check_metrics(document, path) -> dict:
    if not isinstance(document, dict):
        raise DataError(f"{path}: not a pyro_vae metrics file: expected a JSON object, found "
                        f"{type(document).__name__}")
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


def check_evaluation(document, path) -> dict:
    if not isinstance(document, dict):
        raise DataError(f"{path}: not a pyro_vae evaluation file: expected a JSON object, "
                        f"found {type(document).__name__}")
    if (document.get("schema") != EVALUATION_SCHEMA
            or document.get("version") != EVALUATION_VERSION):
        raise DataError(f"{path}: not a pyro_vae evaluation file of version "
                        f"{EVALUATION_VERSION}")
    log_px = document.get("log_px")
    if not (isinstance(log_px, dict) and is_number(log_px.get("mean"))
            and is_int(document.get("num_datapoints"), 1)):
        raise DataError(f"{path}: no log_px.mean and num_datapoints in this evaluation")
    return document

