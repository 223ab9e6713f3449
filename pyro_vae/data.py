"""MNIST-format data sets (IDX files, gzip or raw, read by :mod:`pyro_vae.idx`) as tensors, with
every file checked, and their preparation for training and evaluation.

The package ships the four canonical MNIST files (11 MB gzip-compressed, CC BY-SA 3.0), so
training works offline on a fresh clone. Other locations, tried in this order:
``data_dir`` argument → ``$PYRO_VAE_DATA`` → the data set's system folder (Fashion-MNIST from
Debian's ``dataset-fashion-mnist``) → the copy shipped with the package (MNIST) → a download
(only with ``download=True``), verified against the known checksum before it is used.

Pixels come back as ``uint8`` tensors of shape ``(N, rows·cols)``; :func:`preprocess` turns
them into what a likelihood needs (binarized for Bernoulli, grey levels in [0, 1] else).
"""

from __future__ import annotations

import http.client
import os
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from pyro_vae.errors import ConfigError, DataError, DataNotFoundError
from pyro_vae.idx import check_md5, parse_idx, read_idx, read_idx_bytes

__all__ = [
    "DATASETS",
    "TEST_BINARIZATION_SEED",
    "Dataset",
    "PreparedData",
    "binarize",
    "check_grey_levels",
    "download",
    "load_dataset",
    "parse_idx",
    "prepare_data",
    "preprocess",
    "read_idx",
]

TEST_BINARIZATION_SEED = 0  # one fixed binarized test set, whatever the training seed

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

    :raises DataNotFoundError: if no complete set of files is found (the message lists the
        folders looked at).
    :raises DataError: if a file is corrupt, has the wrong checksum, or disagrees with its labels.
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
    raise DataNotFoundError(
        f"data set {name!r}: no complete set of IDX files found; looked in {looked}; "
        f"missing in the first: {', '.join(missing)} (.gz or raw). Pass --data-dir, set "
        "PYRO_VAE_DATA, or use download=True / --download when online"
    )


def _default_download_dir(name: str) -> Path:
    return Path(os.environ.get("PYRO_VAE_DATA", Path.home() / ".cache" / "pyro_vae")) / name


def _load_from(name: str, source: _Source, folder: Path) -> Dataset:
    """Read the four files in ``folder``: structure of each file first, then agreement between
    the files (image and label counts, train and test image shapes), then the checksums, so
    that each fault gets the most specific message."""
    paths = {stem: _find_file(folder, stem) for stem in source.md5}
    raws = {stem: read_idx_bytes(path) for stem, path in paths.items()}
    arrays = {
        stem: parse_idx(raw, name=str(paths[stem]), ndim=3 if "images" in stem else 1)
        for stem, raw in raws.items()
    }
    for split in ("train", "t10k"):
        images, labels = f"{split}-images-idx3-ubyte", f"{split}-labels-idx1-ubyte"
        n_images, n_labels = arrays[images].shape[0], arrays[labels].shape[0]
        if n_images != n_labels:
            raise DataError(
                f"{paths[images]} holds {n_images} images but {paths[labels]} holds "
                f"{n_labels} labels; expected one label per image"
            )
    train_shape = arrays["train-images-idx3-ubyte"].shape[1:]
    test_shape = arrays["t10k-images-idx3-ubyte"].shape[1:]
    if train_shape != test_shape:
        raise DataError(
            f"{paths['t10k-images-idx3-ubyte']}: test images are {test_shape[0]}x{test_shape[1]} "
            f"pixels, expected {train_shape[0]}x{train_shape[1]} like the training images in "
            f"{paths['train-images-idx3-ubyte']}"
        )
    for stem, md5 in source.md5.items():
        check_md5(raws[stem], md5, paths[stem])
    splits = []
    for split in ("train", "t10k"):
        images = arrays[f"{split}-images-idx3-ubyte"]
        labels = arrays[f"{split}-labels-idx1-ubyte"]
        flat = torch.from_numpy(images.reshape(images.shape[0], -1).copy())
        splits += [flat, torch.from_numpy(labels.astype(np.int64))]
    return Dataset(name, *splits, image_shape=tuple(train_shape), source=str(folder))


def download(url: str, destination: str | os.PathLike, *, md5: str, timeout: float = 60.0):
    """Download ``url`` to ``destination``, verifying the md5 of the uncompressed content
    before the file appears under its final name.

    The bytes go to a temporary ``*.part`` file in the destination folder, which is checked
    (gzip, IDX structure, md5) and only then renamed to ``destination``; on any failure, or an
    interruption, the temporary file is removed, so a partial or corrupt download never
    appears under the final name.

    :raises DataError: if the download fails or the file is not the expected one; the message
        names the URL.
    """
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        dir=destination.parent, prefix=f".{destination.name}.", suffix=".part"
    )
    try:
        with os.fdopen(fd, "wb") as out:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        try:
            read_idx(tmp, md5=md5)
        except DataError as e:  # name the URL, not the temporary file
            reason = str(e).removeprefix(f"{tmp}: ")
            raise DataError(f"download of {url}: {reason}; nothing was saved") from None
        os.replace(tmp, destination)
    except (OSError, ValueError, http.client.HTTPException) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"download of {url} failed: {e}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return destination


def fetch(name: str, folder: str | os.PathLike) -> Path:
    """Download the four files of data set ``name`` into ``folder`` (see :func:`download`)."""
    try:
        source = DATASETS[name]
    except KeyError:
        raise ConfigError(f"unknown data set {name!r}; known: {', '.join(DATASETS)}") from None
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
    Salakhutdinov & Murray 2008); ``images`` are uint8, or floats in [0, 1].

    :raises DataError: for another dtype or floats outside [0, 1] (e.g. 0-255 as floats)."""
    if images.dtype == torch.uint8:
        return torch.bernoulli(images.float() / 255.0, generator=generator)
    if not images.is_floating_point():
        raise DataError(f"binarize: expected uint8 pixels or float grey levels in [0, 1], "
                        f"found dtype {images.dtype}")
    if images.numel() and not (images.min() >= 0 and images.max() <= 1):
        raise DataError(f"binarize: expected grey levels in [0, 1], found values in "
                        f"[{float(images.min()):.4g}, {float(images.max()):.4g}]; divide 0-255 "
                        "pixels by 255 (pyro_vae.data.preprocess)")
    return torch.bernoulli(images, generator=generator)


def preprocess(images: torch.Tensor) -> torch.Tensor:
    """uint8 grey levels → float32 in [0, 1]."""
    return images.float() / 255.0


def check_grey_levels(x: torch.Tensor, *, where: str = "data") -> None:
    """Raise :class:`DataError` unless ``x`` is a non-empty ``(N, D)`` float tensor of grey
    levels in [0, 1] (what :func:`preprocess` returns and :func:`binarize` accepts); the
    message names ``where``, what was expected and what was found.

    >>> check_grey_levels(torch.tensor([[0.5, 1.5]]), where="my data")
    Traceback (most recent call last):
        ...
    pyro_vae.errors.DataError: my data: expected grey levels in [0, 1], found values in [0.5, 1.5]
    """
    if x.dim() != 2:
        raise DataError(f"{where}: expected a 2-D tensor (N, D), found shape {tuple(x.shape)}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise DataError(f"{where}: empty data set, shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise DataError(f"{where}: expected float grey levels in [0, 1], found dtype {x.dtype}")
    finite = torch.isfinite(x)
    if not finite.all():
        raise DataError(
            f"{where}: {int((~finite).sum())} of {x.numel()} values are NaN or infinite; "
            "expected grey levels in [0, 1]"
        )
    low, high = float(x.min()), float(x.max())
    if low < 0 or high > 1:
        raise DataError(
            f"{where}: expected grey levels in [0, 1], found values in [{low:.4g}, {high:.4g}]"
        )


class PreparedData(NamedTuple):
    """What training and evaluation read: tensors on the device."""

    train: torch.Tensor | None  # (N, D) float grey levels in [0, 1]; None when not asked for
    test: torch.Tensor  # (M, D) float: what the likelihood models (binarized once for Bernoulli)
    test_labels: torch.Tensor  # (M,) int64
    dataset: Dataset


def prepare_data(
    dataset: Dataset,
    *,
    train_size: int | None = None,
    test_size: int | None = None,
    binarize_test: bool = True,
    device: str | torch.device = "cpu",
    train: bool = True,
) -> PreparedData:
    """The first ``train_size`` training and ``test_size`` test images of ``dataset`` (all by
    default) as float grey levels on ``device``; with ``binarize_test`` the test images are
    binarized once, with :data:`TEST_BINARIZATION_SEED`, so that every run and every
    evaluation sees the same binary test set. ``train=False`` leaves the training images out
    (evaluation needs only the test set).

    :raises DataError: if a requested split is empty.
    """
    test = dataset.test_images[:test_size]
    train_images = dataset.train_images[:train_size] if train else None
    if test.shape[0] == 0 or (train_images is not None and train_images.shape[0] == 0):
        raise DataError(
            f"{dataset.source}: empty data set ({len(dataset.train_images[:train_size])} "
            f"training, {test.shape[0]} test images)"
        )
    test = preprocess(test)
    if binarize_test:
        test = binarize(test, torch.Generator().manual_seed(TEST_BINARIZATION_SEED))
    return PreparedData(
        train=None if train_images is None else preprocess(train_images).to(device),
        test=test.to(device),
        test_labels=dataset.test_labels[: test.shape[0]],
        dataset=dataset,
    )
