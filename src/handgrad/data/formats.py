"""Readers for the file formats MNIST-like data comes in: IDX, the seeds' pickle, and .npz.

Every reader raises DataError with a one-line message naming the file.
"""

from __future__ import annotations

import gzip
import io
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np

from ..errors import DataError

GZIP_MAGIC = b"\x1f\x8b"

# IDX type byte -> numpy dtype (big-endian, as the format stores it)
IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_bytes(path: str | Path) -> bytes:
    """The file's bytes, gunzipped when they start with the gzip magic (whatever the file is called)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    if raw[:2] != GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as e:
        raise DataError(f"{path}: corrupted or truncated gzip data ({e})") from None


def read_idx(path: str | Path) -> np.ndarray:
    """An IDX file (as published for MNIST and Fashion-MNIST), raw or gzipped, as a native-endian array."""
    data = read_bytes(path)
    if len(data) < 4:
        raise DataError(f"{path}: too short for an IDX file ({len(data)} bytes)")
    zero, type_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or type_code not in IDX_TYPES or ndim == 0:
        raise DataError(
            f"{path}: not an IDX file: magic number 0x{data[:4].hex()}, expected 0x0000TTDD "
            f"(e.g. 0x00000803 for images, 0x00000801 for labels)"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: IDX header is cut short ({len(data)} bytes, {header} expected)")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(IDX_TYPES[type_code])
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(data) - header != expected:
        raise DataError(
            f"{path}: IDX header says shape {list(dims)} ({expected} bytes of data), "
            f"but the file holds {len(data) - header} bytes"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    return array.astype(dtype.newbyteorder("="))


def write_idx(path: str | Path, array: np.ndarray, compress: bool | None = None) -> None:
    """Write `array` as an IDX file (gzipped when `compress`, or when the name ends in .gz)."""
    path = Path(path)
    codes = {np.dtype(v).newbyteorder("="): k for k, v in IDX_TYPES.items()}
    native = np.dtype(array.dtype).newbyteorder("=")
    if native not in codes:
        raise ValueError(f"IDX cannot store dtype {array.dtype}")
    body = struct.pack(">HBB", 0, codes[native], array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    body += np.ascontiguousarray(array, dtype=IDX_TYPES[codes[native]]).tobytes()
    if compress if compress is not None else path.suffix == ".gz":
        body = gzip.compress(body)
    path.write_bytes(body)


# ----------------------------------------------------------------- pickles

# The only globals a pickle of plain numpy arrays needs (numpy 1.x and 2.x names).
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("only latin-1 byte strings are allowed")
    return text.encode("latin1")


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Admits numpy arrays (and the tuples/lists around them) and nothing else, so no code can run."""

    def __init__(self, file: io.BytesIO, path: Path) -> None:
        super().__init__(file, encoding="latin-1")  # the seeds' file is a Python 2 pickle
        self.path = path

    def find_class(self, module: str, name: str) -> object:
        if (module, name) == ("_codecs", "encode"):
            return _latin1_encode  # how protocol 2 stores bytes written by Python 3
        if (module, name) in _ALLOWED_GLOBALS:
            import importlib

            return getattr(importlib.import_module(module), name)
        raise DataError(f"{self.path}: pickle refers to {module}.{name}; only numpy arrays are allowed")


def _only_arrays(obj: object, path: Path) -> None:
    if isinstance(obj, (tuple, list)):
        for item in obj:
            _only_arrays(item, path)
    elif isinstance(obj, np.ndarray):
        if obj.dtype.hasobject:
            raise DataError(f"{path}: pickle holds an object array; only numeric numpy arrays are allowed")
    else:
        raise DataError(f"{path}: pickle holds a {type(obj).__name__}; only numpy arrays are allowed")


def read_array_pickle(path: str | Path) -> object:
    """A (gzipped) pickle of numpy arrays, e.g. the seeds' mnist.pkl.gz, read without running code."""
    path = Path(path)
    data = read_bytes(path)
    try:
        obj = _ArraysOnlyUnpickler(io.BytesIO(data), path).load()
    except DataError:
        raise
    except Exception as e:  # any malformed pickle: say so in one line
        raise DataError(f"{path}: not a readable pickle of numpy arrays ({type(e).__name__}: {e})") from None
    _only_arrays(obj, path)
    return obj


def read_npz(path: str | Path) -> dict[str, np.ndarray]:
    """A .npz archive of arrays (never unpickles)."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except Exception as e:
        raise DataError(f"{path}: not a readable .npz archive ({type(e).__name__}: {e})") from None
