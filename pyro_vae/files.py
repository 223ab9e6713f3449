"""Crash-safe files: atomic writes, so that a process killed at any moment leaves the old file or
the new one, never a torn one; and torch files of plain data (tensors and Python literals, such
as a checkpoint) that load with ``weights_only=True`` after their archive's checksums are
verified. What a checkpoint's entries mean is :mod:`pyro_vae.runs`'s business.
"""

from __future__ import annotations

import errno
import io
import json
import os
import pickle
import tempfile
import warnings
import zipfile
import zlib
from pathlib import Path

import torch

from pyro_vae.errors import CheckpointError

__all__ = ["atomic_write_bytes", "atomic_write_json", "check_writable", "probe_folder",
           "read_torch_file", "save_torch_file"]

_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since torch 1.6


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
    flushed and fsynced, then renamed over ``path`` (and the folder fsynced). On an error the
    temporary file is removed and the old file is left as it was."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise OSError(e.errno, f"cannot write {path}: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            # mkstemp makes the file private (0600); give it the mode open() would
            os.fchmod(f.fileno(), 0o666 & ~_UMASK)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError):  # e.g. a full disk: say which file, keep the old one
            raise OSError(e.errno, f"cannot write {path}: {e.strerror or e}; the previous "
                          "version of the file, if any, is unchanged") from None
        raise
    _fsync_folder(path.parent)


def probe_folder(folder: Path) -> None:
    """Make ``folder`` if need be and a temporary file in it, removed at once: what writing
    there will meet, raised now as the ``OSError`` it is."""
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=folder):
        pass


def check_writable(path: str | os.PathLike) -> Path:
    """``path`` if a file can be written there: not a folder, in a folder that can be made and
    written (a temporary file is made there and removed); ``OSError`` naming it otherwise.
    For work that would otherwise fail only at its end."""
    path = Path(path)
    try:
        if path.is_dir():
            raise IsADirectoryError(errno.EISDIR, "it is a folder")
        probe_folder(path.parent)
    except (FileExistsError, NotADirectoryError):
        raise NotADirectoryError(errno.ENOTDIR, f"cannot write {path}: a file is in the way "
                                 "of its folder") from None
    except OSError as e:
        raise OSError(e.errno, f"cannot write {path}: {e.strerror or e}") from None
    return path


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


def save_torch_file(path: str | os.PathLike, data: dict) -> None:
    """Save a dict of plain data (tensors, dicts, lists, Python literals) atomically;
    :class:`TypeError`, and nothing written, if an entry is not plain data."""
    _check_plain(data, "checkpoint")
    buffer = io.BytesIO()
    torch.save(data, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def _load_error_reason(e: Exception) -> str:
    """One line saying why ``torch.load`` failed, from the error's type (its text is torch's
    and may change): a refused unpickling, or the type and the start of the first line."""
    if isinstance(e, pickle.UnpicklingError):
        return ("refused by the weights-only unpickler: the file holds Python objects other than "
                "tensors and plain data")
    lines = str(e).strip().splitlines()
    first = "".join(c for c in lines[0] if c.isprintable())[:120] if lines else ""
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


def _verify_archive(path: Path) -> None:
    """Check the CRC-32 of every member of the zip archive that ``torch.save`` wrote:
    ``torch.load`` does not, so a flipped bit in a tensor would load as a wrong number."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError,
            zlib.error, NotImplementedError) as e:
        raise CheckpointError(f"{path}: damaged checkpoint: the zip archive cannot be read "
                              f"({_load_error_reason(e)})") from None
    if bad is not None:
        raise CheckpointError(f"{path}: damaged checkpoint: the archive member {bad!r} fails "
                              "its CRC-32 check (the file was changed or corrupted on disk)")


def read_torch_file(path: str | os.PathLike, *, map_location="cpu"):
    """What :func:`save_torch_file` saved at ``path``, its tensors on ``map_location``: loaded
    with ``torch.load(weights_only=True)`` (no code in the file runs) after the CRC-32 of every
    archive member is checked.

    :raises CheckpointError: if the file is missing, unreadable, damaged, or not a torch file
        of plain data; the message names the file and what was found.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        with path.open("rb") as f:
            head = f.read(8)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot be read ({e.strerror or e})") from None
    if not head.startswith(_ZIP_MAGIC):
        raise CheckpointError(
            f"{path}: not a pyro_vae checkpoint: expected a torch.save zip archive, found "
            f"{'an empty file' if not head else f'a file starting with {head!r}'}"
        )
    _verify_archive(path)
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": we raise instead
            warnings.simplefilter("ignore")
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # whatever the bytes make torch.load raise, it is not a checkpoint
        raise CheckpointError(
            f"{path}: not a loadable pyro_vae checkpoint ({_load_error_reason(e)})"
        ) from None
