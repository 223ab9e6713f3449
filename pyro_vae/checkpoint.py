"""Crash-safe files: atomic writes, and checkpoints that load with ``weights_only=True``.

Every file is written to a temporary file in the same folder, flushed and fsynced, then
renamed over the target (:func:`os.replace` is atomic on POSIX), so a process killed at any
moment leaves either the old file or the new one, never a torn one.

A checkpoint is a plain dict of tensors and Python literals (no pickled classes):
``format``, ``format_version``, ``config`` (a dict), ``x_dim``, ``epoch``, ``model_state``,
``optimizer_state``, ``rng_state`` and ``history`` (the per-epoch metrics so far).
"""

from __future__ import annotations

import io
import json
import os
import pickle
import tempfile
import zipfile
from pathlib import Path

import torch

from pyro_vae.errors import CheckpointError

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "atomic_write_bytes",
    "atomic_write_json",
    "load_checkpoint",
    "save_checkpoint",
]

CHECKPOINT_FORMAT = "pyro_vae.checkpoint"
CHECKPOINT_VERSION = 1
_REQUIRED = ("config", "x_dim", "epoch", "model_state")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, allow_nan=True) + "\n").encode())


def save_checkpoint(path: str | os.PathLike, checkpoint: dict) -> None:
    """Save a checkpoint dict (see the module docstring) atomically."""
    buffer = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION,
                **checkpoint}, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: str | os.PathLike, *, map_location="cpu") -> dict:
    """Load a checkpoint with ``torch.load(weights_only=True)``.

    :raises CheckpointError: if the file is missing, not a checkpoint of this package, or of
        another format version.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.pt"
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError, OSError,
            ValueError, AttributeError, TypeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: not a loadable pyro_vae checkpoint ({first})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a pyro_vae checkpoint (no '{CHECKPOINT_FORMAT}' tag)")
    version = ckpt.get("format_version")
    if version != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {version!r}, this pyro_vae reads version "
            f"{CHECKPOINT_VERSION}"
        )
    missing = [k for k in _REQUIRED if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {', '.join(missing)}")
    return ckpt
