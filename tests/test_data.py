"""pyro_vae.data: IDX parsing, every malformed-input case with its message, checksums,
data-set loading, downloads (offline, through ``file://`` URLs), and the grey-level checks."""

import gzip
import hashlib
import os
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyro_vae import VAE, ConfigError, DataError
from pyro_vae import data as data_module
from pyro_vae import idx as idx_module
from pyro_vae.data import (
    Dataset,
    check_grey_levels,
    download,
    from_arrays,
    load_dataset,
    parse_idx,
    prepare_data,
    read_idx,
)

STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
         "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def idx_bytes(array: np.ndarray, *, type_byte: int = 0x08) -> bytes:
    """The IDX encoding of a uint8 array, written from the format's description."""
    header = bytes([0, 0, type_byte, array.ndim]) + b"".join(
        struct.pack(">I", size) for size in array.shape
    )
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def reference_parse(raw: bytes):
    """An independent reading of the IDX format: the array, or None if ``raw`` is not a
    well-formed IDX file of unsigned bytes."""
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or raw[3] == 0:
        return None
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        return None
    shape = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    size = 1
    for s in shape:
        size *= s
    body = raw[4 + 4 * ndim :]
    if len(body) != size:
        return None
    return np.array(list(body), dtype=np.uint8).reshape(shape)


def make_split(rng, n, rows=4, cols=3):
    images = rng.integers(0, 256, size=(n, rows, cols), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    return images, labels


def write_dataset(folder: Path, arrays: dict, *, compress=True) -> dict:
    """Write the four files of a small data set; return the md5 of each uncompressed file."""
    folder.mkdir(parents=True, exist_ok=True)
    md5 = {}
    for stem, array in arrays.items():
        raw = idx_bytes(array)
        md5[stem] = hashlib.md5(raw).hexdigest()
        if compress:
            (folder / f"{stem}.gz").write_bytes(gzip.compress(raw))
        else:
            (folder / stem).write_bytes(raw)
    return md5


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """A registered data set "tiny" (5 train, 3 test images of 4×3 pixels) in tmp_path/tiny,
    with its checksums; returns (folder, arrays)."""
    rng = np.random.default_rng(0)
    train_images, train_labels = make_split(rng, 5)
    test_images, test_labels = make_split(rng, 3)
    arrays = dict(zip(STEMS, (train_images, train_labels, test_images, test_labels), strict=True))
    folder = tmp_path / "tiny"
    md5 = write_dataset(folder, arrays)
    source = data_module._Source(md5=md5, urls=(folder.as_uri() + "/",), n_train=5, n_test=3)
    monkeypatch.setitem(data_module.DATASETS, "tiny", source)
    return folder, arrays


def rewrite(folder: Path, stem: str, raw: bytes) -> Path:
    path = folder / f"{stem}.gz"
    path.write_bytes(gzip.compress(raw))
    return path


# --- parse_idx -------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(7,), (3, 4, 5), (0, 28, 28), (2, 1)], ids=str)
def test_parse_idx_round_trip(shape):
    array = np.arange(int(np.prod(shape)), dtype=np.uint8).reshape(shape)
    parsed = parse_idx(idx_bytes(array))
    assert parsed.dtype == np.uint8 and parsed.shape == shape
    np.testing.assert_array_equal(parsed, array)


BAD_IDX = {
    "empty": (b"", ["truncated IDX file", "0 bytes"]),
    "wrong magic": (b"\x12\x34\x08\x03" + bytes(12), ["wrong IDX magic number 0x12340803",
                                                       "expected 0x00000801"]),
    "png file": (b"\x89PNG\r\n\x1a\n" + bytes(20), ["wrong IDX magic number 0x89504e47"]),
    "float32 type byte": (bytes([0, 0, 0x0D, 1, 0, 0, 0, 1]) + bytes(4),
                          ["type byte 0x0d (float32)", "expected 0x08"]),
    "int32 type byte": (bytes([0, 0, 0x0C, 1, 0, 0, 0, 1]) + bytes(4),
                        ["type byte 0x0c (int32)"]),
    "zero dimensions": (bytes([0, 0, 8, 0]), ["0 dimensions", "expected at least 1"]),
    "truncated header": (bytes([0, 0, 8, 3, 0, 0, 0, 2]), ["truncated IDX header",
                                                           "8 bytes, expected 16"]),
    "truncated data": (idx_bytes(np.zeros((4, 2, 2), np.uint8))[:-5],
                       ["truncated", "(4, 2, 2) = 16 bytes", "found 11"]),
    "longer than header": (idx_bytes(np.zeros(3, np.uint8)) + b"xx",
                           ["longer than its header says", "found 5"]),
    # 3 × (2^32 − 1) overflows int64; the size check must not wrap around
    "absurd header": (bytes([0, 0, 8, 3]) + b"\xff" * 12 + bytes(8),
                      ["truncated", "found 8"]),
}


@pytest.mark.parametrize("case", list(BAD_IDX), ids=list(BAD_IDX))
def test_parse_idx_rejects_malformed_bytes_naming_the_file(case):
    raw, phrases = BAD_IDX[case]
    with pytest.raises(DataError) as info:
        parse_idx(raw, name="some/file-idx")
    message = str(info.value)
    assert message.startswith("some/file-idx: ")
    for phrase in phrases:
        assert phrase in message
    assert "\n" not in message


def test_parse_idx_checks_the_expected_number_of_dimensions():
    labels = idx_bytes(np.zeros(10, np.uint8))
    with pytest.raises(DataError, match=r"labels-file: IDX file has 1 dimensions .*expected 3"):
        parse_idx(labels, name="labels-file", ndim=3)
    assert parse_idx(labels, ndim=1).shape == (10,)


def parses_like_the_reference(raw: bytes) -> None:
    """parse_idx returns what the reference parser returns, or raises DataError where the
    reference finds the bytes invalid; nothing else."""
    expected = reference_parse(raw)
    if expected is None:
        with pytest.raises(DataError):
            parse_idx(raw)
    else:
        np.testing.assert_array_equal(parse_idx(raw), expected)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_parse_idx_on_random_bytes_returns_the_right_array_or_raises_data_error(raw):
    parses_like_the_reference(raw)


VALID = idx_bytes(np.arange(24, dtype=np.uint8).reshape(2, 3, 4))


@st.composite
def mutated_idx(draw):
    """A valid IDX file with a few bytes changed, inserted or deleted."""
    raw = bytearray(VALID)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "insert", "delete", "cut"]))
        at = draw(st.integers(0, max(len(raw) - 1, 0)))
        if kind == "flip" and raw:
            raw[at] = draw(st.integers(0, 255))
        elif kind == "insert":
            raw[at:at] = bytes([draw(st.integers(0, 255))])
        elif kind == "delete" and raw:
            del raw[at]
        elif kind == "cut":
            del raw[at:]
    return bytes(raw)


@settings(max_examples=300, deadline=None)
@given(mutated_idx())
def test_parse_idx_on_mutated_files_returns_the_right_array_or_raises_data_error(raw):
    parses_like_the_reference(raw)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=mutated_idx(), compressed=st.booleans(), corrupt_at=st.integers(0, 200))
def test_read_idx_on_mutated_gzip_or_raw_files_never_raises_anything_else(
    tmp_path, raw, compressed, corrupt_at
):
    path = tmp_path / "file-idx.gz"
    content = gzip.compress(raw) if compressed else raw
    if compressed and corrupt_at < len(content):  # damage the compressed stream too
        content = content[:corrupt_at] + bytes([content[corrupt_at] ^ 0x5A]) + content[
            corrupt_at + 1 :]
    path.write_bytes(content)
    try:
        array = read_idx(path)
    except DataError as e:
        assert str(e).startswith(str(path))
    else:  # it parsed, so the decompressed bytes are a well-formed IDX file
        np.testing.assert_array_equal(array, reference_parse(gzip.decompress(content)
                                                             if content[:2] == b"\x1f\x8b"
                                                             else content))


# --- read_idx: files ------------------------------------------------------------------------
def test_read_idx_reads_gzip_and_raw_files_alike(tmp_path):
    array = np.arange(60, dtype=np.uint8).reshape(5, 3, 4)
    (tmp_path / "a.gz").write_bytes(gzip.compress(idx_bytes(array)))
    (tmp_path / "a").write_bytes(idx_bytes(array))
    np.testing.assert_array_equal(read_idx(tmp_path / "a.gz"), array)
    np.testing.assert_array_equal(read_idx(tmp_path / "a"), array)


def test_read_idx_missing_file_and_folder(tmp_path):
    with pytest.raises(DataError, match=rf"^{tmp_path / 'nope.gz'}: file not found$"):
        read_idx(tmp_path / "nope.gz")
    with pytest.raises(DataError, match=rf"^{tmp_path}: expected an IDX file, found a folder"):
        read_idx(tmp_path)


def test_read_idx_gzip_that_decompresses_to_garbage(tmp_path):
    path = tmp_path / "garbage.gz"
    path.write_bytes(gzip.compress(b"<html>404 Not Found</html>"))
    with pytest.raises(DataError, match=rf"^{path}: wrong IDX magic number 0x3c68746d"):
        read_idx(path)


def test_read_idx_corrupt_and_truncated_gzip(tmp_path):
    compressed = gzip.compress(idx_bytes(np.arange(256, dtype=np.uint8).repeat(40)))
    truncated = tmp_path / "truncated.gz"
    truncated.write_bytes(compressed[: len(compressed) // 2])
    with pytest.raises(DataError, match=rf"^{truncated}: corrupt or truncated gzip file"):
        read_idx(truncated)
    corrupt = tmp_path / "corrupt.gz"
    damaged = bytearray(compressed)
    damaged[len(damaged) - 6] ^= 0xFF  # inside the CRC-32 trailer
    corrupt.write_bytes(bytes(damaged))
    with pytest.raises(DataError, match=rf"^{corrupt}: corrupt or truncated gzip file \(CRC"):
        read_idx(corrupt)


def test_read_idx_checks_the_md5_after_the_structure(tmp_path):
    raw = idx_bytes(np.arange(12, dtype=np.uint8).reshape(1, 3, 4))
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(raw))
    good = hashlib.md5(raw).hexdigest()
    assert read_idx(path, md5=good).shape == (1, 3, 4)
    with pytest.raises(DataError) as info:
        read_idx(path, md5="0" * 32)
    assert str(info.value) == (
        f"{path}: checksum mismatch: md5 of the uncompressed file is {good}, expected "
        f"{'0' * 32}; the file is corrupt or not the canonical one"
    )
    path.write_bytes(gzip.compress(raw[:-1]))  # truncated: say so, not only "checksum"
    with pytest.raises(DataError, match=rf"^{path}: file is truncated: .* found 11$"):
        read_idx(path, md5=good)


# --- load_dataset ---------------------------------------------------------------------------
def test_load_dataset_reads_the_shipped_mnist():
    mnist = load_dataset("mnist")
    assert mnist.train_images.shape == (60000, 784) and mnist.test_images.shape == (10000, 784)
    assert mnist.train_images.dtype == torch.uint8 and mnist.image_shape == (28, 28)
    # the first ten training labels of MNIST (LeCun et al.), and the class counts of the test set
    assert mnist.train_labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert torch.bincount(mnist.test_labels).tolist() == [
        980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_load_dataset_small_registered_set(tiny):
    folder, arrays = tiny
    ds = load_dataset("tiny", folder)
    assert ds.image_shape == (4, 3) and ds.x_dim == 12 and ds.source == str(folder)
    np.testing.assert_array_equal(ds.train_images.numpy(), arrays[STEMS[0]].reshape(5, 12))
    np.testing.assert_array_equal(ds.test_labels.numpy(), arrays[STEMS[3]])


def test_load_dataset_unknown_name_lists_the_known_ones():
    with pytest.raises(ConfigError, match=r"unknown data set 'cifar'; known: mnist, fashion"):
        load_dataset("cifar")


def test_load_dataset_missing_file_names_folder_and_file(tiny):
    folder, _ = tiny
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError) as info:
        load_dataset("tiny", folder)
    message = str(info.value)
    assert f"looked in {folder}" in message
    assert "missing in the first: t10k-labels-idx1-ubyte (.gz or raw)" in message


def test_load_dataset_images_and_labels_count_mismatch(tiny):
    folder, arrays = tiny
    path = rewrite(folder, "train-labels-idx1-ubyte", idx_bytes(arrays[STEMS[1]][:4]))
    with pytest.raises(DataError) as info:
        load_dataset("tiny", folder)
    assert str(info.value) == (
        f"{folder / 'train-images-idx3-ubyte.gz'} holds 5 images but {path} holds 4 labels; "
        "expected one label per image"
    )


def test_load_dataset_train_and_test_image_shape_mismatch(tiny):
    folder, _ = tiny
    path = rewrite(folder, "t10k-images-idx3-ubyte", idx_bytes(np.zeros((3, 5, 3), np.uint8)))
    with pytest.raises(DataError, match=rf"^{path}: test images are 5x3 pixels, expected 4x3"):
        load_dataset("tiny", folder)


def test_load_dataset_labels_file_where_images_belong(tiny):
    folder, arrays = tiny
    path = rewrite(folder, "train-images-idx3-ubyte", idx_bytes(arrays[STEMS[1]]))
    with pytest.raises(DataError, match=rf"^{path}: IDX file has 1 dimensions .*expected 3$"):
        load_dataset("tiny", folder)


def test_load_dataset_checksum_mismatch_of_a_known_data_set(tiny):
    folder, arrays = tiny
    changed = arrays[STEMS[2]].copy()
    changed[0, 0, 0] ^= 1  # one pixel off: structure fine, content not the canonical one
    path = rewrite(folder, "t10k-images-idx3-ubyte", idx_bytes(changed))
    with pytest.raises(DataError, match=rf"^{path}: checksum mismatch: md5 .* is "
                                        rf"{hashlib.md5(idx_bytes(changed)).hexdigest()}"):
        load_dataset("tiny", folder)


# --- download -------------------------------------------------------------------------------
def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".part"))


def test_download_good_file_arrives_verified(tiny, tmp_path):
    folder, arrays = tiny
    target = tmp_path / "downloads" / "train-labels-idx1-ubyte.gz"
    md5 = hashlib.md5(idx_bytes(arrays[STEMS[1]])).hexdigest()
    download((folder / "train-labels-idx1-ubyte.gz").as_uri(), target, md5=md5)
    np.testing.assert_array_equal(read_idx(target, md5=md5), arrays[STEMS[1]])
    assert leftovers(target.parent) == []


@pytest.mark.parametrize("damage", ["other content", "truncated gzip", "not found"])
def test_download_corrupt_file_leaves_nothing(tiny, tmp_path, damage):
    _, arrays = tiny
    source = tmp_path / "server" / "file.gz"
    source.parent.mkdir()
    raw = idx_bytes(arrays[STEMS[1]])
    if damage == "other content":
        source.write_bytes(gzip.compress(raw[:-1] + bytes([raw[-1] ^ 1])))
    elif damage == "truncated gzip":
        source.write_bytes(gzip.compress(raw)[:-9])
    target = tmp_path / "downloads" / "file.gz"
    with pytest.raises(DataError) as info:
        download(source.as_uri(), target, md5=hashlib.md5(raw).hexdigest())
    message = str(info.value)
    assert message.startswith(f"download of {source.as_uri()}")
    expected = {"other content": "checksum mismatch", "truncated gzip": "corrupt or truncated",
                "not found": "failed"}[damage]
    assert expected in message
    assert not target.exists()
    assert leftovers(target.parent) == []


def test_download_interrupted_leaves_no_partial_file(tiny, tmp_path, monkeypatch):
    folder, _ = tiny

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(idx_module, "read_idx", interrupted)
    target = tmp_path / "dl" / "x.gz"
    with pytest.raises(KeyboardInterrupt):
        download((folder / "train-labels-idx1-ubyte.gz").as_uri(), target, md5="0" * 32)
    assert not target.exists() and leftovers(target.parent) == []


def test_load_dataset_download_fetches_all_four_files(tiny, tmp_path):
    _, arrays = tiny
    target = tmp_path / "fresh"
    ds = load_dataset("tiny", target, download=True)
    assert sorted(os.listdir(target)) == sorted(f"{s}.gz" for s in STEMS)
    np.testing.assert_array_equal(ds.test_images.numpy(), arrays[STEMS[2]].reshape(3, 12))


# --- grey levels, feature sizes, empty sets ------------------------------------------------
BAD_GREY = {
    "nan": (torch.tensor([[0.5, float("nan")], [0.0, 1.0]]),
            "1 of 4 values are NaN or infinite; expected grey levels in [0, 1]"),
    "inf": (torch.tensor([[float("inf"), 0.0]]), "1 of 2 values are NaN or infinite"),
    "out of range": (torch.tensor([[0.0, 255.0]]),
                     "expected grey levels in [0, 1], found values in [0, 255]"),
    "negative": (torch.tensor([[-0.5, 0.5]]), "found values in [-0.5, 0.5]"),
    "empty": (torch.zeros(0, 784), "empty data set, shape (0, 784)"),
    "1-D": (torch.zeros(784), "expected a 2-D tensor (N, D), found shape (784,)"),
    "uint8": (torch.zeros(2, 3, dtype=torch.uint8), "found dtype torch.uint8"),
}


@pytest.mark.parametrize("case", list(BAD_GREY), ids=list(BAD_GREY))
def test_check_grey_levels(case):
    x, phrase = BAD_GREY[case]
    with pytest.raises(DataError) as info:
        check_grey_levels(x, where="train.gz")
    assert str(info.value).startswith("train.gz: ") and phrase in str(info.value)


@pytest.mark.parametrize("value, accepted", [(0.0, True), (1.0, True),
                                             (float(np.nextafter(1.0, 2.0)), False),
                                             (float(np.nextafter(0.0, -1.0)), False)])
def test_check_grey_levels_accepts_exactly_the_closed_interval(value, accepted):
    x = torch.tensor([[0.25, value]], dtype=torch.float64)
    if accepted:
        assert check_grey_levels(x) is None
    else:
        with pytest.raises(DataError, match=r"expected grey levels in \[0, 1\]"):
            check_grey_levels(x)


def test_vae_check_data_names_expected_and_found():
    vae = VAE(784, latent_dim=2, hidden_sizes=(8,))
    with pytest.raises(DataError, match=r"^test set must have shape \(N, 784\), "
                                        r"found \(5, 100\)$"):
        vae.check_data(torch.zeros(5, 100), where="test set")
    with pytest.raises(DataError, match=r"^test set is empty, shape \(0, 784\)$"):
        vae.check_data(torch.zeros(0, 784), where="test set")
    grey = torch.full((2, 784), 0.5)
    with pytest.raises(DataError) as info:
        vae.check_data(grey, where="test set")
    message = str(info.value)
    assert "bernoulli likelihood needs binary values" in message
    assert "found 1568 other values (e.g. 0.5)" in message
    assert "binarize the data or use the continuous-bernoulli likelihood" in message
    nan = torch.zeros(2, 784)
    nan[1, 3] = float("nan")
    with pytest.raises(DataError, match=r"^test set: 1 of 1568 values are NaN or infinite$"):
        vae.check_data(nan, where="test set")
    cb = VAE(784, latent_dim=2, hidden_sizes=(8,), likelihood="continuous-bernoulli")
    cb.check_data(grey)
    grey[0, 0] = 2.0
    with pytest.raises(DataError, match=r"needs values in \[0, 1\], found values in \[0.5, 2\]"):
        cb.check_data(grey, where="x")


def test_prepare_data_rejects_an_empty_data_set():
    empty = Dataset("empty", torch.zeros(0, 4, dtype=torch.uint8), torch.zeros(0).long(),
                    torch.zeros(3, 4, dtype=torch.uint8), torch.zeros(3).long(), (2, 2), "/x")
    with pytest.raises(DataError, match=r"^/x: empty data set \(0 training, 3 test images\)$"):
        prepare_data(empty)


def test_a_gzip_bomb_is_refused_after_its_header_not_inflated(tmp_path):
    """A small archive with a valid header for 10 images that inflates to 256 MB: refused
    having read no more than the header declares, plus one byte."""
    import zlib

    path = tmp_path / "train-images-idx3-ubyte.gz"
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: the gzip container
    with path.open("wb") as f:
        f.write(compressor.compress(bytes([0, 0, 8, 3]) + struct.pack(">III", 10, 28, 28)))
        for _ in range(16):
            f.write(compressor.compress(bytes(1 << 24)))
        f.write(compressor.flush())
    assert path.stat().st_size < 500_000
    with pytest.raises(DataError, match=r"decompresses to more than the 7856 bytes its IDX "
                                        r"header declares; stopped reading there"):
        read_idx(path)


def test_a_header_declaring_an_impossible_size_is_refused(tmp_path):
    path = tmp_path / "huge.gz"
    path.write_bytes(gzip.compress(bytes([0, 0, 8, 3]) + struct.pack(">III", 2**31, 2**16, 28)))
    with pytest.raises(DataError, match=r"the IDX header declares shape \(2147483648, 65536, "
                                        r"28\) = .* bytes, more than the 2147483648 bytes"):
        read_idx(path)


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "uint32", "uint64", "int64", "bool",
                                   "float16", "float64"])
def test_from_arrays_reads_every_kind_of_real_number(dtype):
    """Integers as uint8 grey levels (the same values), bools and floats as float32."""
    images = np.array([[0, 1, 0], [1, 1, 0]], dtype=dtype)
    train = from_arrays(images, images).train_images
    assert train.dtype == (torch.uint8 if images.dtype.kind in "iu" else torch.float32)
    assert torch.equal(train.float(), torch.tensor([[0.0, 1.0, 0.0], [1.0, 1.0, 0.0]]))


@pytest.mark.parametrize("values, found", [
    (np.array([["a", "b"]]), "dtype <U1"), (np.zeros((2, 3), complex), "dtype complex128"),
    (torch.zeros(2, 3, dtype=torch.complex64), "dtype torch.complex64"),
    (np.zeros((2, 3), "datetime64[s]"), "dtype datetime64[s]"), (None, "dtype object")])
def test_from_arrays_refuses_what_is_not_numbers_in_one_line(values, found):
    with pytest.raises(DataError, match=rf"^arrays: train: expected numbers \(uint8 grey "
                       rf"levels, or floats in \[0, 1\]\), found {re.escape(found)}$"):
        from_arrays(values, np.zeros((2, 3)))
    with pytest.raises(DataError, match=r"^arrays: train: not an array \(its rows differ"):
        from_arrays([[1, 2], [3]], np.zeros((2, 3)))
    with pytest.raises(DataError, match=r"^arrays: train: integer pixels must lie in 0\.\.255, "
                       r"found 300\.\.300$"):
        from_arrays(np.full((2, 3), 300, np.uint16), np.zeros((2, 3)))
