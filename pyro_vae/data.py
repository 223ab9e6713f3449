"""Data sets as tensors, every file checked, and their preparation for training and
evaluation: MNIST-format data sets (IDX files, :mod:`pyro_vae.idx`) and data sets of one's own
(an ``.npz`` file, or arrays: :func:`from_arrays`); ``docs/data.md`` says where each is looked
for and the ``.npz`` format. MNIST ships with the package (CC BY-SA 3.0), so training works
offline. Images come back ``(N, D)``, ``uint8`` or float grey levels in [0, 1];
:func:`prepare_data` makes them what a likelihood needs (binarized for Bernoulli).
"""

from __future__ import annotations

import math
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from pyro_vae import checks
from pyro_vae.errors import ConfigError, DataError, DataNotFoundError, DataTypeError
from pyro_vae.idx import check_md5, download, parse_idx, read_idx, read_idx_bytes

__all__ = ["DATASETS", "TEST_BINARIZATION_SEED", "Dataset", "PreparedData", "binarize",
           "check_dataset_name", "check_grey_levels", "download", "from_arrays", "load_dataset",
           "parse_idx", "prepare_data", "preprocess", "read_idx"]

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
    """A train/test split: images ``(N, D)``, uint8 or float grey levels in [0, 1]; labels
    ``(N,)`` int64 (``None`` where there are none)."""

    name: str
    train_images: torch.Tensor
    train_labels: torch.Tensor | None
    test_images: torch.Tensor
    test_labels: torch.Tensor | None
    image_shape: tuple[int, int]
    source: str  # the folder or file the data were read from

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


def check_dataset_name(name) -> str:
    """``name`` if it names a data set: one of :data:`DATASETS`, or an ``.npz`` file."""
    if not isinstance(name, str) or (name not in DATASETS and not name.endswith(".npz")):
        raise ConfigError(f"unknown data set {name!r}; known: {', '.join(DATASETS)}, or an "
                          ".npz file of your own (docs/data.md)")
    return name


def load_dataset(name: str = "mnist", data_dir=None, *, download: bool = False) -> Dataset:
    """Load data set ``name`` (``"mnist"``, ``"fashion-mnist"`` or an ``.npz`` file), see the
    module docstring.

    :raises DataNotFoundError: if no complete set of files is found (the message lists the
        folders looked at).
    :raises DataError: if a file is corrupt, has the wrong checksum, or disagrees with its labels.
    """
    checks.instance("data_dir", data_dir, (str, os.PathLike), optional=True)
    if check_dataset_name(name).endswith(".npz"):
        return load_npz(name)
    source = DATASETS[name]
    dirs = _candidate_dirs(name, source, data_dir)
    passed_over: list[DataError] = []
    for folder in dirs:
        if all(_find_file(folder, stem) for stem in source.md5):
            try:
                return _load_from(name, source, folder)
            except DataError as e:  # $PYRO_VAE_DATA may hold another data set's files
                if data_dir is not None:
                    raise
                passed_over.append(e)
    if download:
        target = Path(data_dir) if data_dir is not None else _default_download_dir(name)
        fetch(name, target)
        return _load_from(name, source, target)
    if passed_over:
        raise passed_over[0]
    looked = ", ".join(str(d) for d in dirs) or "(nowhere)"
    missing = [stem for stem in source.md5 if not dirs or not _find_file(dirs[0], stem)]
    raise DataNotFoundError(
        f"data set {name!r}: no complete set of IDX files found; looked in {looked}; "
        f"missing in the first: {', '.join(missing)} (.gz or raw). Pass --data-dir, set "
        "PYRO_VAE_DATA, or use download=True / --download when online"
    )


def load_npz(path: str | os.PathLike) -> Dataset:
    """A data set of one's own from an ``.npz`` file (the module docstring), checked."""
    path = Path(checks.instance("path", path, (str, os.PathLike)))
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except FileNotFoundError:
        raise DataNotFoundError(f"{path}: no such file") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"{path}: not a readable .npz file ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:120] if str(e) else ''})") from None
    missing = [key for key in ("train", "test") if key not in arrays]
    if missing:
        raise DataError(f"{path}: no {' and no '.join(repr(k) for k in missing)} array; an "
                        f".npz data set holds 'train' and 'test' images (found: "
                        f"{', '.join(sorted(arrays)) or 'nothing'})")
    return from_arrays(arrays["train"], arrays["test"], train_labels=arrays.get("train_labels"),
                       test_labels=arrays.get("test_labels"), name=path.stem, source=str(path))


def from_arrays(train, test, *, train_labels=None, test_labels=None, name: str = "custom",
                source: str = "arrays") -> Dataset:
    """A :class:`Dataset` of one's own from arrays or tensors of images, ``(N, H, W)`` or
    ``(N, D)``: ``uint8`` grey levels 0–255, or floats in [0, 1]; labels optional. Each
    problem (a wrong shape, a value out of range, an empty split, labels that do not match)
    is a one-line :class:`DataError` naming the array."""
    splits = []
    for split, images in (("train", train), ("test", test)):
        images = checks.real_numbers(f"{source}: {split}", images)
        if images.dim() not in (2, 3):
            raise DataError(f"{source}: {split} must be images (N, H, W) or (N, D), found "
                            f"shape {tuple(images.shape)}")
        if images.shape[0] == 0 or images[0].numel() == 0:
            raise DataError(f"{source}: {split} is empty, shape {tuple(images.shape)}")
        splits.append(_pixels(images, f"{source}: {split}"))
    if splits[0].shape[1:] != splits[1].shape[1:]:
        raise DataError(f"{source}: test images have shape {tuple(splits[1].shape[1:])}, the "
                        f"training images {tuple(splits[0].shape[1:])}")
    shape = tuple(splits[0].shape[1:])
    image_shape = shape if len(shape) == 2 else _square(shape[0])
    labels = [_labels(labels, images.shape[0], f"{source}: {split}_labels")
              for split, labels, images in (("train", train_labels, splits[0]),
                                            ("test", test_labels, splits[1]))]
    return Dataset(name, splits[0].reshape(splits[0].shape[0], -1), labels[0],
                   splits[1].reshape(splits[1].shape[0], -1), labels[1], image_shape, source)


def _pixels(images: torch.Tensor, where: str) -> torch.Tensor:
    """uint8 as they are; other integers in 0..255 as uint8; floats in [0, 1] as float32."""
    if images.dtype == torch.uint8:
        return images
    if images.dtype == torch.bool:
        return images.float()
    if not images.is_floating_point():
        low, high = int(images.min()), int(images.max())
        if low < 0 or high > 255:
            raise DataError(f"{where}: integer pixels must lie in 0..255, found {low}..{high}")
        return images.to(torch.uint8)
    check_grey_levels(images.reshape(images.shape[0], -1).float(), where=where)
    return images.float()


def _labels(labels, n: int, where: str) -> torch.Tensor | None:
    if labels is None:
        return None
    labels = checks.real_numbers(where, labels)
    if labels.shape != (n,) or labels.is_floating_point() or labels.dtype == torch.bool:
        raise DataError(f"{where}: expected {n} integer labels, found dtype {labels.dtype}, "
                        f"shape {tuple(labels.shape)}")
    return labels.long()


def _square(d: int) -> tuple[int, int]:
    """(side, side) for a square number of pixels, else one row of ``d``."""
    side = math.isqrt(d)
    return (side, side) if side * side == d else (1, d)


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
    # the packaged copy by its place in the package: no path of this machine in a run's files
    where = f"pyro_vae/datasets/{name}" if folder == _PACKAGE_DIR / name else str(folder)
    return Dataset(name, *splits, image_shape=tuple(train_shape), source=where)


def fetch(name: str, folder: str | os.PathLike) -> Path:
    """Download the four files of data set ``name`` into ``folder`` (see :func:`download`)."""
    source = DATASETS[checks.choice("data set", name, DATASETS)]  # an IDX one: no .npz
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


def _default_download_dir(name: str) -> Path:
    return Path(os.environ.get("PYRO_VAE_DATA", Path.home() / ".cache" / "pyro_vae")) / name


def binarize(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """A Bernoulli draw per pixel with probability = grey level / 255 (dynamic binarization,
    Salakhutdinov & Murray 2008); ``images`` are uint8, or floats in [0, 1].

    :raises DataError: for another dtype or floats outside [0, 1] (e.g. 0-255 as floats)."""
    _check_pixels(images, "binarize")
    checks.instance("generator", generator, torch.Generator, optional=True)
    probs = images.float() / 255.0 if images.dtype == torch.uint8 else images
    return torch.bernoulli(probs, generator=generator)


def preprocess(images: torch.Tensor) -> torch.Tensor:
    """Grey levels → float32 in [0, 1]: uint8 pixels divided by 255, floats as they are."""
    _check_pixels(images, "preprocess")
    return images.float() / 255.0 if images.dtype == torch.uint8 else images.float()


def _check_pixels(images, where: str) -> None:
    """uint8 pixels, or float grey levels in [0, 1] (NaN is refused too)."""
    checks.tensor(f"{where}: images", images, nonempty=False, finite=False, floating=False)
    if images.dtype != torch.uint8 and not images.is_floating_point():
        raise DataTypeError(f"{where}: expected uint8 pixels or float grey levels in [0, 1], "
                            f"found dtype {images.dtype}")
    if images.is_floating_point() and images.numel() and not (images.min() >= 0
                                                              and images.max() <= 1):
        raise DataError(f"{where}: expected grey levels in [0, 1], found values in "
                        f"[{float(images.min()):.4g}, {float(images.max()):.4g}]; divide 0-255 "
                        "pixels by 255 (pyro_vae.data.preprocess)")


def check_grey_levels(x: torch.Tensor, *, where: str = "data") -> None:
    """Raise :class:`DataError` unless ``x`` is a non-empty ``(N, D)`` float tensor of grey
    levels in [0, 1] (what :func:`preprocess` returns and :func:`binarize` accepts); the
    message names ``where``, what was expected and what was found.

    >>> check_grey_levels(torch.tensor([[0.5, 1.5]]), where="my data")
    Traceback (most recent call last):
        ...
    pyro_vae.errors.DataError: my data: expected grey levels in [0, 1], found values in [0.5, 1.5]
    """
    checks.instance(where, x, torch.Tensor)
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
    test_labels: torch.Tensor | None  # (M,) int64, or None
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
    checks.instance("dataset", dataset, Dataset)
    checks.integer("train_size", train_size, optional=True)
    checks.integer("test_size", test_size, optional=True)
    device = checks.device(device)
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
        test_labels=None if dataset.test_labels is None else dataset.test_labels[:test.shape[0]],
        dataset=dataset,
    )
