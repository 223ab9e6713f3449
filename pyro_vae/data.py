"""MNIST-format data sets (IDX files, gzip or raw) as tensors, with every file checked.

The package ships the four canonical MNIST files (11 MB gzip-compressed, CC BY-SA 3.0), so
training works offline on a fresh clone. Other locations, tried in this order:
``data_dir`` argument → ``$PYRO_VAE_DATA`` → the data set's system folder (Fashion-MNIST from
Debian's ``dataset-fashion-mnist``) → the copy shipped with the package (MNIST) → a download
(only with ``download=True``), verified against the known checksum before it is used.

Pixels come back as ``uint8`` tensors of shape ``(N, rows·cols)``; :func:`preprocess` turns
them into what a likelihood needs (binarized for Bernoulli, grey levels in [0, 1] else).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from pyro_vae.errors import ConfigError, DataError

__all__ = [
    "DATASETS",
    "Dataset",
    "binarize",
    "download",
    "load_dataset",
    "parse_idx",
    "preprocess",
    "read_idx",
]

_MAGIC = {0x00000801: 1, 0x00000803: 3}  # IDX magic → number of dimensions (uint8 data)
_PACKAGE_DIR = Path(__file__).parent / "datasets"


@dataclass(frozen=True)
class _Source:
    """Where a data set's files live and the md5 of each canonical uncompressed file."""

    md5: dict[str, str]
    urls: tuple[str, ...]
    system_dirs: tuple[str, ...] = ()
    packaged: bool = False
    n_train: int = 60000
    n_test: int = 10000


DATASETS = {
    # md5 of the uncompressed files, as published by LeCun et al. and in shared/data/mnist.
    "mnist": _Source(
        md5={
            "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
            "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
            "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
            "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
        },
        urls=("https://ossci-datasets.s3.amazonaws.com/mnist/",),
        packaged=True,
    ),
    # md5 of the uncompressed files of zalandoresearch/fashion-mnist (git 55506a9), measured
    # on Debian's dataset-fashion-mnist package, which recompresses the same files.
    "fashion-mnist": _Source(
        md5={
            "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
            "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
            "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
            "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
        },
        urls=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        system_dirs=("/usr/share/datasets/fashion-mnist",),
    ),
}


class Dataset(NamedTuple):
    """A train/test split: images ``(N, D)`` uint8, labels ``(N,)`` int64."""

    name: str
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    image_shape: tuple[int, int]
    source: str  # the folder the files were read from

    @property
    def x_dim(self) -> int:
        return self.train_images.shape[1]


def parse_idx(raw: bytes, *, name: str = "<bytes>") -> np.ndarray:
    """Parse the bytes of an uncompressed IDX file of uint8 data into an array.

    :raises DataError: on a wrong magic number, a header that disagrees with the file size,
        or a truncated file; the message names ``name``.
    """
    if len(raw) < 4:
        raise DataError(f"{name}: truncated IDX file: {len(raw)} bytes, no 4-byte header")
    (magic,) = struct.unpack(">I", raw[:4])
    if magic not in _MAGIC:
        raise DataError(
            f"{name}: wrong IDX magic number 0x{magic:08x}; expected 0x00000801 (labels) "
            "or 0x00000803 (images) of unsigned bytes"
        )
    ndim = _MAGIC[magic]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{name}: truncated IDX header: {len(raw)} of {header} bytes")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(shape, dtype=np.int64))
    found = len(raw) - header
    if found != expected:
        what = "truncated" if found < expected else "longer than its header says"
        raise DataError(
            f"{name}: file is {what}: header says shape {shape} = {expected} bytes of data, "
            f"found {found}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _read_bytes(path: Path) -> bytes:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(data)
        except (OSError, EOFError, gzip.BadGzipFile) as e:
            raise DataError(f"{path}: corrupt or truncated gzip file ({e})") from None
    return data


def read_idx(path: str | os.PathLike, *, md5: str | None = None) -> np.ndarray:
    """Read an IDX file (gzip-compressed or raw), checking the md5 of the uncompressed bytes
    when ``md5`` is given."""
    path = Path(path)
    raw = _read_bytes(path)
    if md5 is not None:
        found = hashlib.md5(raw).hexdigest()
        if found != md5:
            raise DataError(
                f"{path}: checksum mismatch: md5 of the uncompressed file is {found}, "
                f"expected {md5}; the file is corrupt or not the canonical one"
            )
    return parse_idx(raw, name=str(path))


def _find_file(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    return None


def _candidate_dirs(name: str, source: _Source, data_dir) -> list[Path]:
    if data_dir is not None:
        return [Path(data_dir)]  # an explicit folder is the only place looked at
    dirs = []
    env = os.environ.get("PYRO_VAE_DATA")
    if env:
        dirs += [Path(env) / name, Path(env)]
    dirs += [Path(d) for d in source.system_dirs]
    if source.packaged:
        dirs.append(_PACKAGE_DIR / name)
    return dirs


def load_dataset(name: str = "mnist", data_dir=None, *, download: bool = False) -> Dataset:
    """Load data set ``name`` (``"mnist"`` or ``"fashion-mnist"``), see the module docstring.

    :raises DataError: if no complete set of files is found (the message lists the folders
        looked at), or a file is corrupt, has the wrong checksum, or disagrees with its labels.
    """
    try:
        source = DATASETS[name]
    except KeyError:
        raise ConfigError(f"unknown data set {name!r}; known: {', '.join(DATASETS)}") from None
    dirs = _candidate_dirs(name, source, data_dir)
    for folder in dirs:
        if all(_find_file(folder, stem) for stem in source.md5):
            return _load_from(name, source, folder)
    if download:
        target = Path(data_dir) if data_dir is not None else _default_download_dir(name)
        fetch(name, target)
        return _load_from(name, source, target)
    looked = ", ".join(str(d) for d in dirs) or "(nowhere)"
    missing = [stem for stem in source.md5 if not dirs or not _find_file(dirs[0], stem)]
    raise DataError(
        f"data set {name!r}: no complete set of IDX files found; looked in {looked}; "
        f"missing in the first: {', '.join(missing)} (.gz or raw). Pass --data-dir, set "
        "PYRO_VAE_DATA, or use download=True / --download when online"
    )


def _default_download_dir(name: str) -> Path:
    return Path(os.environ.get("PYRO_VAE_DATA", Path.home() / ".cache" / "pyro_vae")) / name


def _load_from(name: str, source: _Source, folder: Path) -> Dataset:
    arrays = {}
    for stem, md5 in source.md5.items():
        arrays[stem] = read_idx(_find_file(folder, stem), md5=md5)
    splits = []
    for split in ("train", "t10k"):
        images = arrays[f"{split}-images-idx3-ubyte"]
        labels = arrays[f"{split}-labels-idx1-ubyte"]
        if images.ndim != 3 or labels.ndim != 1:
            raise DataError(f"{folder}: {split} images must be 3-D and labels 1-D")
        if images.shape[0] != labels.shape[0]:
            raise DataError(
                f"{folder}: {split} images file holds {images.shape[0]} images but the labels "
                f"file holds {labels.shape[0]} labels"
            )
        flat = torch.from_numpy(images.reshape(images.shape[0], -1).copy())
        splits += [flat, torch.from_numpy(labels.astype(np.int64))]
    shape = tuple(arrays["train-images-idx3-ubyte"].shape[1:])
    return Dataset(name, *splits, image_shape=shape, source=str(folder))


def download(url: str, destination: str | os.PathLike, *, md5: str, timeout: float = 60.0):
    """Download ``url`` to ``destination``, verifying the md5 of the uncompressed content
    before the file appears under its final name (a partial or corrupt download never does).
    """
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=destination.parent, prefix=destination.name, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        read_idx(tmp, md5=md5)  # raises DataError on a bad file
        os.replace(tmp, destination)
    except OSError as e:
        raise DataError(f"download of {url} failed: {e}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return destination


def fetch(name: str, folder: str | os.PathLike) -> Path:
    """Download the four files of data set ``name`` into ``folder`` (see :func:`download`)."""
    source = DATASETS[name]
    folder = Path(folder)
    for stem, md5 in source.md5.items():
        if _find_file(folder, stem):
            continue
        errors = []
        for base in source.urls:
            try:
                download(base + stem + ".gz", folder / f"{stem}.gz", md5=md5)
                break
            except DataError as e:
                errors.append(str(e))
        else:
            raise DataError(f"could not download {stem} of {name!r}: " + "; ".join(errors))
    return folder


def binarize(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """A Bernoulli draw per pixel with probability = grey level / 255 (dynamic binarization,
    Salakhutdinov & Murray 2008); ``images`` are uint8 or floats in [0, 1]."""
    probs = images.float() / 255.0 if images.dtype == torch.uint8 else images
    return torch.bernoulli(probs, generator=generator)


def preprocess(images: torch.Tensor) -> torch.Tensor:
    """uint8 grey levels → float32 in [0, 1]."""
    return images.float() / 255.0
