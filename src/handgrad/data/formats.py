"""Readers for the file formats MNIST-like data comes in: IDX, the seeds' pickle, and .npz.

Every reader raises DataError with a one-line message naming the file.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np

from ..errors import DataError

GZIP_MAGIC = b"\x1f\x8b"

# IDX type byte -> numpy dtype (big-endian, as the format stores it)
IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


# A gzip file may expand at most this many times (MNIST's files: about 5; a zero-filled bomb: 1000): past it,
# reading stops with one line instead of filling memory.
MAX_GZIP_RATIO = 250
CHUNK = 1 << 20


def _open(path: Path) -> tuple[io.BufferedIOBase, int, bool]:
    """(stream, file size, gzipped): the file's bytes, gunzipped as they are read when it starts with the gzip
    magic (whatever it is called)."""
    try:
        raw = open(path, "rb")
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, not a file") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    size = os.fstat(raw.fileno()).st_size
    if raw.peek(2)[:2] != GZIP_MAGIC:
        return raw, size, False
    return gzip.GzipFile(fileobj=raw, mode="rb"), size, True  # type: ignore[return-value]


def _limit(path: Path, size: int) -> int:
    return MAX_GZIP_RATIO * size + CHUNK


def _read(stream: io.BufferedIOBase, n: int, path: Path) -> bytearray:
    """Exactly n bytes (fewer only at the end), read in chunks into one buffer allocated once; one-line DataError
    for broken gzip data."""
    out = bytearray(n)
    view = memoryview(out)
    got = 0
    try:
        while got < n:
            k = stream.readinto(view[got:got + CHUNK])
            if not k:
                break
            got += k
    except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as e:
        raise DataError(f"{path}: corrupted or truncated gzip data ({e})") from None
    finally:
        view.release()
    if got < n:
        del out[got:]
    return out


def _read_growing(stream: io.BufferedIOBase, n: int, path: Path) -> bytearray:
    """Up to n bytes, for data of unknown length: the buffer grows as bytes come, never allocated at n."""
    out = bytearray()
    while len(out) < n:
        chunk = _read(stream, min(CHUNK, n - len(out)), path)
        if not chunk:
            break
        out += chunk
    return out


def read_bytes(path: str | Path) -> bytes:
    """The file's bytes, gunzipped when they start with the gzip magic, refusing gzip data that expands more than
    MAX_GZIP_RATIO times (a decompression bomb) before it fills memory."""
    path = Path(path)
    stream, size, gzipped = _open(path)
    with stream:
        if not gzipped:
            return bytes(_read(stream, size, path))
        limit = _limit(path, size)
        data = _read_growing(stream, limit + 1, path)
    if len(data) > limit:
        raise DataError(f"{path}: gzip data expands more than {MAX_GZIP_RATIO} times its {size:,} bytes "
                        "(a decompression bomb?); refusing to read it")
    return bytes(data)


def read_idx(path: str | Path) -> np.ndarray:
    """An IDX file (as published for MNIST and Fashion-MNIST), raw or gzipped, as a native-endian array.

    Streamed: the header first, then exactly the bytes it promises, after checking that the file can hold them
    (its size, or for gzip data MAX_GZIP_RATIO times its size), so memory is bounded by the real data."""
    path = Path(path)
    stream, size, gzipped = _open(path)
    with stream:
        head = _read(stream, 4, path)
        if len(head) < 4:
            raise DataError(f"{path}: too short for an IDX file ({len(head)} bytes)")
        zero, type_code, ndim = struct.unpack(">HBB", head)
        if zero != 0 or type_code not in IDX_TYPES or ndim == 0:
            raise DataError(
                f"{path}: not an IDX file: magic number 0x{head.hex()}, expected 0x0000TTDD "
                f"(e.g. 0x00000803 for images, 0x00000801 for labels)"
            )
        header = 4 + 4 * ndim
        dim_bytes = _read(stream, 4 * ndim, path)
        if len(dim_bytes) < 4 * ndim:
            raise DataError(f"{path}: IDX header is cut short ({4 + len(dim_bytes)} bytes, {header} expected)")
        dims = struct.unpack(f">{ndim}I", dim_bytes)
        dtype = np.dtype(IDX_TYPES[type_code])
        expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
        if not gzipped and expected != size - header:
            raise DataError(f"{path}: IDX header says shape {list(dims)} ({expected} bytes of data), "
                            f"but the file holds {size - header} bytes")
        room = _limit(path, size) if gzipped else size - header
        if expected > room:
            what = (f"gzip data of {size:,} bytes (at most {MAX_GZIP_RATIO}x that unpacked)" if gzipped else
                    f"a file of {size:,} bytes")
            raise DataError(f"{path}: IDX header says shape {list(dims)} ({expected:,} bytes of data), more than "
                            f"{what} can hold")
        data = _read(stream, expected, path)
        extra = len(_read(stream, 1, path)) if len(data) == expected else 0
    if len(data) != expected or extra:
        held = f"{len(data)}" if len(data) < expected else f"more than {expected}"
        raise DataError(
            f"{path}: IDX header says shape {list(dims)} ({expected} bytes of data), "
            f"but the file holds {held} bytes"
        )
    array = np.frombuffer(data, dtype=dtype).reshape(dims)  # the buffer itself, no copy
    return array.astype(dtype.newbyteorder("="), copy=False)


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

    def __init__(self, file: io.RawIOBase, path: Path) -> None:
        super().__init__(file, encoding="latin-1")  # the seeds' file is a Python 2 pickle
        self.path = path

    def find_class(self, module: str, name: str) -> object:
        if (module, name) == ("_codecs", "encode"):
            return _latin1_encode  # how protocol 2 stores bytes written by Python 3
        if (module, name) in _ALLOWED_GLOBALS:
            import importlib

            return getattr(importlib.import_module(module), name)
        raise DataError(f"{self.path}: pickle refers to {module}.{name}; only numpy arrays are allowed")


MAX_PICKLE_DEPTH, MAX_PICKLE_OBJECTS = 16, 10_000


def _only_arrays(obj: object, path: Path) -> None:
    """Tuples and lists of numeric numpy arrays, walked once per object (shared references and cycles are not
    walked again), at most MAX_PICKLE_DEPTH deep and MAX_PICKLE_OBJECTS in all."""
    seen: set[int] = set()
    stack = [(obj, 0)]
    while stack:
        item, depth = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if len(seen) > MAX_PICKLE_OBJECTS:
            raise DataError(f"{path}: pickle holds more than {MAX_PICKLE_OBJECTS:,} objects; a data set is a few "
                            "arrays")
        if isinstance(item, (tuple, list)):
            if depth >= MAX_PICKLE_DEPTH:
                raise DataError(f"{path}: pickle nests lists or tuples more than {MAX_PICKLE_DEPTH} deep; a data "
                                "set is a few arrays")
            stack.extend((child, depth + 1) for child in item)
        elif isinstance(item, np.ndarray):
            if item.dtype.hasobject:
                raise DataError(f"{path}: pickle holds an object array; only numeric numpy arrays are allowed")
        else:
            raise DataError(f"{path}: pickle holds a {type(item).__name__}; only numpy arrays are allowed")


class _Bounded(io.RawIOBase):
    """The file's (gunzipped) bytes for the unpickler, read as it asks, refusing to go past `limit` bytes in all
    (a request past it, such as an array claiming gigabytes, is refused before anything is allocated)."""

    def __init__(self, stream: io.BufferedIOBase, limit: int, path: Path, what: str) -> None:
        self.stream, self.limit, self.path, self.what, self.total = stream, limit, path, what, 0

    def readable(self) -> bool:
        return True

    def _room(self, n: int) -> None:
        if self.total + n > self.limit:
            raise DataError(f"{self.path}: the pickle asks for more bytes than {self.what}; refusing to read it")

    def readinto(self, buffer) -> int:  # type: ignore[override]
        n = len(buffer)
        self._room(min(n, CHUNK) if n > CHUNK else n)
        data = _read(self.stream, min(n, self.limit - self.total), self.path)
        buffer[:len(data)] = data
        self.total += len(data)
        return len(data)

    def read(self, n: int = -1) -> bytes:  # type: ignore[override]
        if n is None or n < 0:
            n = self.limit - self.total + 1
        self._room(n)
        data = bytes(_read(self.stream, n, self.path))
        self.total += len(data)
        return data

    def readline(self, size: int | None = -1) -> bytes:  # type: ignore[override]
        line = bytearray()
        while not line.endswith(b"\n"):
            c = self.read(1)
            if not c:
                break
            line += c
        return bytes(line)


def read_array_pickle(path: str | Path) -> object:
    """A (gzipped) pickle of numpy arrays, e.g. the seeds' mnist.pkl.gz, read without running code, streamed:
    at most the file's size (or MAX_GZIP_RATIO times it, gzipped) is ever read."""
    path = Path(path)
    stream, size, gzipped = _open(path)
    limit = _limit(path, size) if gzipped else size
    what = (f"gzip data of {size:,} bytes may expand to (at most {MAX_GZIP_RATIO}x; a decompression bomb?)"
            if gzipped else f"the file's {size:,}")
    with stream:
        try:
            obj = _ArraysOnlyUnpickler(_Bounded(stream, limit, path, what), path).load()
        except DataError:
            raise
        except RecursionError:
            raise DataError(f"{path}: pickle nests too deep; a data set is a few arrays") from None
        except Exception as e:  # any malformed pickle: say so in one line
            raise DataError(f"{path}: not a readable pickle of numpy arrays ({type(e).__name__}: {e})") from None
    _only_arrays(obj, path)
    return obj


def _check_zip(path: Path) -> None:
    """A compressed .npz whose arrays would expand more than MAX_GZIP_RATIO times the file is refused before
    anything is decompressed (the zip directory says how large each array is)."""
    import zipfile

    try:
        size = path.stat().st_size
        with zipfile.ZipFile(path) as z:
            total = sum(info.file_size for info in z.infolist())
    except (OSError, zipfile.BadZipFile, ValueError):
        return  # np.load says what is wrong, below
    if total > MAX_GZIP_RATIO * size + CHUNK:
        raise DataError(f"{path}: its arrays would expand to {total:,} bytes, more than {MAX_GZIP_RATIO} times the "
                        f"file's {size:,} (a decompression bomb?); refusing to read it")


def read_npz(path: str | Path) -> dict[str, np.ndarray]:
    """A .npz archive of arrays (never unpickles)."""
    path = Path(path)
    _check_zip(path)
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except Exception as e:
        raise DataError(f"{path}: not a readable .npz archive ({type(e).__name__}: {e})") from None
