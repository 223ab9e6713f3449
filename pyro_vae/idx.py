"""The IDX file format of MNIST-format data sets (LeCun et al.): parsing, with a message for
every malformed input; reading a file, gzip-compressed or raw, with the decompression capped
by the size its header declares; downloading one, verified before it takes its name.

An IDX file is a 4-byte magic number ``0x00 0x00 type ndim``, then ``ndim`` big-endian uint32
sizes, then the data in C order.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import math
import os
import struct
import tempfile
import urllib.request
import zlib
from pathlib import Path

import numpy as np

from pyro_vae import checks
from pyro_vae.errors import DataError, DataTypeError

__all__ = ["MAX_IDX_BYTES", "check_md5", "download", "parse_idx", "read_idx", "read_idx_bytes"]

_UINT8 = 0x08  # the IDX type byte of unsigned bytes, the only type MNIST-format files use
_IDX_TYPES = {0x08: "unsigned byte", 0x09: "signed byte", 0x0B: "int16", 0x0C: "int32",
              0x0D: "float32", 0x0E: "float64"}
_GZIP_MAGIC = b"\x1f\x8b"


def parse_idx(raw: bytes, *, name: str = "<bytes>", ndim: int | None = None) -> np.ndarray:
    """Parse the bytes of an uncompressed IDX file of unsigned bytes (type ``0x08``) into a
    read-only ``uint8`` array of the header's shape.

    :param name: the file name for error messages.
    :param ndim: the number of dimensions expected (1 for labels, 3 for images), if any.
    :raises DataError: on a wrong magic number or data type, an unexpected number of
        dimensions, or a size that disagrees with the header.

    >>> parse_idx(bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 8, 9])).tolist()
    [7, 8, 9]
    """
    if not isinstance(raw, (bytes, bytearray, memoryview)):
        raise DataTypeError(f"{name}: expected the bytes of an IDX file, got a "
                            f"{type(raw).__name__}")
    if len(raw) < 4:
        raise DataError(
            f"{name}: truncated IDX file: {len(raw)} bytes, expected at least a 4-byte header"
        )
    zero, dtype, found_ndim = raw[0:2], raw[2], raw[3]
    if zero != b"\0\0":
        raise DataError(
            f"{name}: wrong IDX magic number 0x{raw[:4].hex()}; expected 0x00000801 (labels) "
            "or 0x00000803 (images); this is not an IDX file"
        )
    if dtype != _UINT8:
        kind = _IDX_TYPES.get(dtype, "unknown")
        raise DataError(
            f"{name}: IDX data type byte 0x{dtype:02x} ({kind}); expected 0x08 (unsigned byte)"
        )
    if found_ndim == 0 or (ndim is not None and found_ndim != ndim):
        expected = f"{ndim}" if ndim is not None else "at least 1"
        raise DataError(
            f"{name}: IDX file has {found_ndim} dimensions (magic number "
            f"0x{raw[:4].hex()}); expected {expected}"
        )
    header = 4 + 4 * found_ndim
    if len(raw) < header:
        raise DataError(
            f"{name}: truncated IDX header: {len(raw)} bytes, expected {header} for "
            f"{found_ndim} dimensions"
        )
    shape = struct.unpack(f">{found_ndim}I", raw[4:header])
    expected = math.prod(shape)  # Python ints: no overflow for absurd headers
    found = len(raw) - header
    if found != expected:
        what = "truncated" if found < expected else "longer than its header says"
        raise DataError(
            f"{name}: file is {what}: header says shape {shape} = {expected} bytes of data, "
            f"found {found}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


MAX_IDX_BYTES = 2**31  # no MNIST-format data set comes near 2 GiB; a header that says more lies


def read_idx_bytes(path: Path) -> bytes:
    """The bytes of ``path``, decompressed if it starts with the gzip magic number; a gzip
    stream is read no further than its IDX header says the file is long (plus one byte), so a
    decompression bomb is refused after its header."""
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if not path.is_file():
        raise DataError(f"{path}: expected an IDX file, found a folder or special file")
    try:
        with path.open("rb") as f:
            if f.read(2) != _GZIP_MAGIC:
                if path.stat().st_size > MAX_IDX_BYTES:
                    raise DataError(f"{path}: {path.stat().st_size} bytes, more than the "
                                    f"{MAX_IDX_BYTES} bytes an IDX data file may have here")
                f.seek(0)
                return f.read()
    except OSError as e:
        raise DataError(f"{path}: cannot be read ({e.strerror or e})") from None
    try:
        with gzip.open(path, "rb") as stream:
            head = stream.read(4)
            dims = stream.read(4 * head[3]) if len(head) == 4 else b""
            declared = _declared_size(head + dims, path)
            chunks, total = [head, dims], len(head) + len(dims)
            while total <= declared and (chunk := stream.read(min(1 << 22,
                                                                  declared + 1 - total))):
                chunks.append(chunk)
                total += len(chunk)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: corrupt or truncated gzip file ({e})") from None
    if total > declared > len(head) + len(dims):
        raise DataError(f"{path}: decompresses to more than the {declared} bytes its IDX header "
                        "declares; stopped reading there (a damaged file, or a decompression "
                        "bomb)")
    return b"".join(chunks)


def _declared_size(header: bytes, path: Path) -> int:
    """The file size an IDX header declares (header + data), or the header's own length when
    it is too short or malformed to say (:func:`parse_idx` then says what is wrong)."""
    if len(header) < 4 or len(header) < 4 + 4 * header[3]:
        return len(header)
    shape = struct.unpack(f">{header[3]}I", header[4:])
    declared = len(header) + math.prod(shape)
    if declared > MAX_IDX_BYTES:
        raise DataError(f"{path}: the IDX header declares shape {shape} = {declared} bytes, "
                        f"more than the {MAX_IDX_BYTES} bytes an IDX data file may have here; "
                        "the file is damaged or not a data set")
    return declared


def check_md5(raw: bytes, md5: str, path) -> None:
    found = hashlib.md5(raw).hexdigest()
    if found != md5:
        raise DataError(
            f"{path}: checksum mismatch: md5 of the uncompressed file is {found}, "
            f"expected {md5}; the file is corrupt or not the canonical one"
        )


def read_idx(
    path: str | os.PathLike, *, md5: str | None = None, ndim: int | None = None
) -> np.ndarray:
    """Read an IDX file (gzip-compressed or raw) with :func:`parse_idx`, then check the md5 of
    the uncompressed bytes when ``md5`` is given (structure first: a truncated file says so).

    :raises DataError: if the file is missing, unreadable, a corrupt gzip, malformed (see
        :func:`parse_idx`) or has another checksum; the message names the file.
    """
    path = Path(checks.instance("path", path, (str, os.PathLike)))
    raw = read_idx_bytes(path)
    array = parse_idx(raw, name=str(path), ndim=ndim)
    if md5 is not None:
        check_md5(raw, md5, path)
    return array


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
    destination = Path(checks.instance("destination", destination, (str, os.PathLike)))
    checks.instance("url", url, str)
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
