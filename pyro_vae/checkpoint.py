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
import tempfile
import warnings
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
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since torch 1.6
_PICKLE_PROTOCOL = b"\x80"  # a bare pickle (protocol >= 2), which torch.load also reads


def _fsync_folder(folder: Path) -> None:
    """Persist a rename in ``folder`` (POSIX); a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot fsync a folder; the rename stands regardless
        pass
    finally:
        os.close(fd)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()  # read once, at import: os.umask can only be read by setting it


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: a temporary file in the same folder, written,
    flushed and fsynced, then renamed over ``path`` (and the folder fsynced), so that a crash
    at any moment leaves the old file or the new one, whole. On an error the temporary file is
    removed and the old file is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            # mkstemp makes the file private (0600); give it the mode open() would
            os.fchmod(f.fileno(), 0o666 & ~_UMASK)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_folder(path.parent)


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, allow_nan=True) + "\n").encode())


_LITERALS = (str, int, float, bool, type(None))  # exact types: np.float64 is not one


def _check_plain(obj, where: str) -> None:
    """Raise ``TypeError`` unless ``obj`` is made of dicts, lists, tuples, tensors and Python
    literals only: what ``torch.load(weights_only=True)`` reads back."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            if type(key) not in (str, int):
                raise TypeError(f"checkpoint key {where}[{key!r}] is a {type(key).__name__}")
            _check_plain(value, f"{where}[{key!r}]")
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            _check_plain(value, f"{where}[{i}]")
    elif type(obj) not in _LITERALS and not isinstance(obj, torch.Tensor):
        raise TypeError(
            f"checkpoint entry {where} is a {type(obj).__module__}.{type(obj).__qualname__}; "
            "a checkpoint holds only tensors, dicts, lists and Python literals"
        )


def save_checkpoint(path: str | os.PathLike, checkpoint: dict) -> None:
    """Save a checkpoint dict (see the module docstring) atomically.

    :raises TypeError: if an entry is not plain data (it could not be loaded back with
        ``weights_only=True``); nothing is written then.
    """
    checkpoint = {"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION,
                  **checkpoint}
    _check_plain(checkpoint, "checkpoint")
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def _load_error_reason(e: Exception) -> str:
    """One line saying why ``torch.load`` failed (its weights-only message is a page long)."""
    text = str(e)
    if "WeightsUnpickler error:" in text:
        reason = text.split("WeightsUnpickler error:", 1)[1].strip().splitlines()[0]
        return f"refused by the weights-only unpickler: {reason.split('. Please')[0]}"
    first = text.strip().splitlines()[0] if text.strip() else ""
    if len(first) > 120 and ". " in first:  # e.g. miniz's paragraph on corrupted files
        first = first.split(". ")[0] + "."
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


def load_checkpoint(path: str | os.PathLike, *, map_location="cpu") -> dict:
    """Load a checkpoint with ``torch.load(weights_only=True)``: no code in the file runs,
    whatever it holds.

    :param path: the checkpoint file, or a run folder holding ``checkpoint.pt``.
    :raises CheckpointError: if the file is missing, not a checkpoint of this package
        (random bytes, a text file, a pickle of other objects, a dict without the
        ``format`` tag), of another format version, or lacks an entry; the message names the
        file and what was found.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.pt"
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        with path.open("rb") as f:
            head = f.read(8)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot be read ({e.strerror or e})") from None
    if not head.startswith((_ZIP_MAGIC, _PICKLE_PROTOCOL)):
        raise CheckpointError(
            f"{path}: not a pyro_vae checkpoint: expected a torch.save zip archive, found "
            f"{'an empty file' if not head else f'a file starting with {head!r}'}"
        )
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": we raise instead
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # whatever the bytes make torch.load raise, it is not a checkpoint
        raise CheckpointError(
            f"{path}: not a loadable pyro_vae checkpoint ({_load_error_reason(e)})"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        found = (f"a dict with keys {sorted(map(str, ckpt))[:6]}" if isinstance(ckpt, dict)
                 else f"a {type(ckpt).__name__}")
        raise CheckpointError(
            f"{path}: not a pyro_vae checkpoint: expected a dict tagged "
            f"format={CHECKPOINT_FORMAT!r}, found {found}"
        )
    version = ckpt.get("format_version")
    if version != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {version!r}, this pyro_vae reads version "
            f"{CHECKPOINT_VERSION}"
        )
    missing = [k for k in _REQUIRED if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {', '.join(missing)}")
    _check_entries(ckpt, path)
    return ckpt


def _check_entries(ckpt: dict, path: Path) -> None:
    """The types of the required entries, so that a damaged checkpoint fails here, clearly."""
    problems = []
    if not isinstance(ckpt["config"], dict):
        problems.append(f"config is a {type(ckpt['config']).__name__}, expected a dict")
    for key, low in (("x_dim", 1), ("epoch", 0)):
        value = ckpt[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            problems.append(f"{key} is {value!r}, expected an integer >= {low}")
    state = ckpt["model_state"]
    if not isinstance(state, dict) or not all(
        isinstance(v, torch.Tensor) for v in state.values()
    ):
        problems.append("model_state is not a dict of tensors")
    if problems:
        raise CheckpointError(f"{path}: damaged checkpoint: {'; '.join(problems)}")
