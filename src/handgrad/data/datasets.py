"""Data sets by name (`mnist`, `fashion-mnist`), found where users keep them or downloaded.

Look-up order, first hit wins:
  1. an explicit path (a file, or a folder holding the files)
  2. $HANDGRAD_DATA
  3. ./data (where the seeds keep mnist.pkl.gz)
  4. the user cache dir (where downloads go)
  5. the system datasets dir (/usr/share/datasets/<name>, e.g. Debian's dataset-fashion-mnist)
  6. download from the canonical URLs, checked against their sha256

In a folder, a data set is `mnist.pkl.gz` (the seeds' pickle, MNIST only),
`<name>.npz`, or the four IDX files in `<name>/` (or in the folder itself when
it is an explicit path or the system dir).

Splits: the seeds' pickle has train/valid/test; IDX and .npz files without a
valid split give the last 10,000 training images to `valid`, as the pickle did.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from platformdirs import user_cache_dir
from torch import Tensor

from ..errors import DataError
from .formats import read_array_pickle, read_idx, read_npz

IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    classes: tuple[str, ...]
    urls: tuple[str, ...]  # mirrors, tried in order; each + file name
    sha256: dict[str, str]  # of the .gz files


DATASETS = {
    "mnist": DatasetInfo(
        "mnist",
        tuple(str(i) for i in range(10)),
        ("https://ossci-datasets.s3.amazonaws.com/mnist/", "https://storage.googleapis.com/cvdf-datasets/mnist/"),
        {
            "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
            "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
            "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
            "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
        },
    ),
    "fashion-mnist": DatasetInfo(
        "fashion-mnist",
        ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
        ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        {
            "train-images-idx3-ubyte.gz": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
            "train-labels-idx1-ubyte.gz": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
            "t10k-images-idx3-ubyte.gz": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
            "t10k-labels-idx1-ubyte.gz": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
        },
    ),
}

SYSTEM_DIR = Path("/usr/share/datasets")
VALID_SIZE = 10_000


@dataclass
class Dataset:
    """Images flattened to (N, 784) float32 in [0, 1], labels (N,) int64, in three splits."""

    name: str
    source: str
    classes: tuple[str, ...]
    x_train: Tensor
    y_train: Tensor
    x_valid: Tensor
    y_valid: Tensor
    x_test: Tensor | None = None
    y_test: Tensor | None = None
    mean: float | None = None  # set by normalized(): what was subtracted ...
    std: float | None = None  # ... and divided by

    def to(self, device: torch.device | str) -> "Dataset":
        moved = {k: (v.to(device) if isinstance(v, Tensor) else v) for k, v in vars(self).items()}
        return Dataset(**moved)

    def normalized(self) -> "Dataset":
        """Images standardised with the training set's mean and std (one scalar each), as SGD likes them."""
        mean, std = float(self.x_train.mean()), float(self.x_train.std())
        norm = lambda x: None if x is None else (x - mean) / std  # noqa: E731
        return Dataset(self.name, self.source, self.classes, norm(self.x_train), self.y_train, norm(self.x_valid),
                       self.y_valid, norm(self.x_test), self.y_test, mean, std)

    def subset(self, n_train: int, n_valid: int) -> "Dataset":
        """The first n_train training and n_valid validation samples (views, no copies)."""
        return Dataset(self.name, self.source, self.classes, self.x_train[:n_train], self.y_train[:n_train],
                       self.x_valid[:n_valid], self.y_valid[:n_valid], self.x_test, self.y_test, self.mean, self.std)


# ------------------------------------------------------------------ parsing


def _images(a: np.ndarray, path: Path) -> Tensor:
    if a.ndim < 2:
        raise DataError(f"{path}: expected images [N, 784] or [N, 28, 28], got shape {list(a.shape)}")
    x = torch.from_numpy(np.ascontiguousarray(a)).reshape(a.shape[0], -1)
    return x.float().div_(255.0) if not x.is_floating_point() else x.float()


def _labels(a: np.ndarray, n: int, path: Path) -> Tensor:
    if a.ndim != 1 or a.shape[0] != n:
        raise DataError(f"{path}: expected {n} labels [N], got shape {list(a.shape)}")
    if not np.issubdtype(a.dtype, np.integer):
        raise DataError(f"{path}: expected integer labels, got dtype {a.dtype}")
    return torch.from_numpy(a.astype(np.int64))


def _split_valid(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    n_valid = min(VALID_SIZE, x.shape[0] // 6)  # small test files keep a sensible share
    return x[:-n_valid], y[:-n_valid], x[-n_valid:], y[-n_valid:]


def load_seeds_pickle(path: Path, name: str = "mnist") -> Dataset:
    """The seeds' mnist.pkl.gz: ((x_train, y_train), (x_valid, y_valid), (x_test, y_test))."""
    obj = read_array_pickle(path)
    if not (isinstance(obj, (tuple, list)) and len(obj) in (2, 3)
            and all(isinstance(s, (tuple, list)) and len(s) == 2 for s in obj)):
        raise DataError(f"{path}: expected ((x_train, y_train), (x_valid, y_valid), (x_test, y_test)) arrays")
    splits = []
    for x, y in obj:
        xt = _images(x, path)
        splits += [xt, _labels(y, xt.shape[0], path)]
    if len(splits) == 4:
        splits += [None, None]
    return Dataset(name, str(path), DATASETS[name].classes, *splits)


def load_npz(path: Path, name: str) -> Dataset:
    """A .npz with x_train, y_train and optionally x_valid, y_valid, x_test, y_test."""
    arrays = read_npz(path)
    if "x_train" not in arrays or "y_train" not in arrays:
        raise DataError(f"{path}: expected arrays x_train and y_train, found {sorted(arrays)}")
    x = _images(arrays["x_train"], path)
    y = _labels(arrays["y_train"], x.shape[0], path)
    if "x_valid" in arrays:
        xv = _images(arrays["x_valid"], path)
        parts = (x, y, xv, _labels(arrays["y_valid"], xv.shape[0], path))
    else:
        parts = _split_valid(x, y)
    test: tuple[Tensor | None, Tensor | None] = (None, None)
    if "x_test" in arrays:
        xt = _images(arrays["x_test"], path)
        test = (xt, _labels(arrays["y_test"], xt.shape[0], path))
    return Dataset(name, str(path), DATASETS[name].classes, *parts, *test)


def _idx_file(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    return None


def load_idx_folder(folder: Path, name: str) -> Dataset:
    """The four IDX files (gzipped or raw) in `folder`."""
    files = {k: _idx_file(folder, stem) for k, stem in IDX_FILES.items()}
    missing = [IDX_FILES[k] for k, f in files.items() if f is None]
    if missing:
        raise DataError(f"{folder}: missing IDX files {missing}")
    x = _images(read_idx(files["train_images"]), files["train_images"])
    y = _labels(read_idx(files["train_labels"]), x.shape[0], files["train_labels"])
    xt = _images(read_idx(files["test_images"]), files["test_images"])
    yt = _labels(read_idx(files["test_labels"]), xt.shape[0], files["test_labels"])
    return Dataset(name, str(folder), DATASETS[name].classes, *_split_valid(x, y), xt, yt)


# ------------------------------------------------------------------ look-up


def _has_idx(folder: Path) -> bool:
    return all(_idx_file(folder, stem) is not None for stem in IDX_FILES.values())


def _find_in(folder: Path, name: str, idx_at_top: bool) -> Path | None:
    """Where `name` lies in `folder`, or None."""
    if not folder.is_dir():
        return None
    candidates = ([folder / "mnist.pkl.gz", folder / "mnist.pkl"] if name == "mnist" else []) + [
        folder / f"{name}.npz"
    ]
    for c in candidates:
        if c.is_file():
            return c
    if _has_idx(folder / name):
        return folder / name
    if idx_at_top and _has_idx(folder):
        return folder
    return None


def load_path(path: Path, name: str) -> Dataset:
    """Read a data set from a file (pickle or .npz, told apart by content) or a folder of IDX files."""
    if path.is_dir():
        return load_idx_folder(path, name)
    if path.suffix == ".npz" or path.read_bytes()[:4] == b"PK\x03\x04":
        return load_npz(path, name)
    return load_seeds_pickle(path, name)


def cache_dir() -> Path:
    return Path(user_cache_dir("handgrad"))


def search_locations(name: str, path: str | Path | None = None) -> list[tuple[str, Path | None]]:
    """(label, folder) in look-up order; the folder is None where the option is not set."""
    env = os.environ.get("HANDGRAD_DATA")
    return [
        ("path given", Path(path) if path else None),
        ("$HANDGRAD_DATA", Path(env) if env else None),
        ("./data", Path.cwd() / "data"),
        ("user cache", cache_dir()),
        ("system datasets", SYSTEM_DIR / name),
    ]


def locate(name: str, path: str | Path | None = None) -> Path | None:
    """The first place in the look-up order that holds `name`, without downloading."""
    _info(name)
    if path is not None:
        p = Path(path)
        if p.is_file():
            return p
        if not p.exists():
            raise DataError(f"{p}: no such file or folder")
        found = _find_in(p, name, idx_at_top=True)
        if found is None:
            raise DataError(f"{p}: holds no {name} files (mnist.pkl.gz, {name}.npz or the four IDX files)")
        return found
    for label, folder in search_locations(name)[1:]:
        if folder is not None:
            found = _find_in(folder, name, idx_at_top=label in ("system datasets", "$HANDGRAD_DATA"))
            if found is not None:
                return found
    return None


def _info(name: str) -> DatasetInfo:
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}: expected one of {', '.join(DATASETS)}")
    return DATASETS[name]


def download(name: str, dest: Path | None = None, timeout: float = 20.0) -> Path:
    """Fetch the four IDX .gz files into `dest` (default: cache dir/<name>), checking sha256.

    Each file is written to a temporary name and renamed only once its checksum
    matches, so an interrupted or corrupted download never looks complete.
    """
    info = _info(name)
    dest = dest or cache_dir() / name
    dest.mkdir(parents=True, exist_ok=True)
    for fname, sha in info.sha256.items():
        target = dest / fname
        if target.is_file() and hashlib.sha256(target.read_bytes()).hexdigest() == sha:
            continue
        errors = []
        for base in info.urls:
            url = base + fname
            try:
                with urllib.request.urlopen(url, timeout=timeout) as r:
                    data = r.read()
            except Exception as e:  # network errors come in many types; each is reported
                errors.append(f"{url}: {getattr(e, 'reason', e)}")
                continue
            digest = hashlib.sha256(data).hexdigest()
            if digest != sha:
                errors.append(f"{url}: sha256 {digest[:12]}... does not match the expected {sha[:12]}...")
                continue
            with tempfile.NamedTemporaryFile(dir=dest, delete=False, suffix=".part") as tmp:
                tmp.write(data)
            os.replace(tmp.name, target)
            break
        else:
            raise DataError("download failed: " + "; ".join(errors))
    return dest


def load_dataset(name: str, path: str | Path | None = None, allow_download: bool = True) -> Dataset:
    """Load `name` from the first location that has it (see the module docstring)."""
    info = _info(name)
    found = locate(name, path)
    if found is not None:
        return load_path(found, name)
    reason = "download not allowed"
    if allow_download:
        try:
            return load_path(download(name), name)
        except DataError as e:
            reason = str(e)
    tried = ", ".join(f"{label} ({folder if folder else 'not set'})" for label, folder in search_locations(name))
    hint = " or `apt-get install dataset-fashion-mnist`" if name == "fashion-mnist" else ""
    raise DataError(
        f"{info.name} not found. Tried: {tried}; download: {reason}. "
        f"Put mnist.pkl.gz, {name}.npz or the four IDX files in one of these folders (or pass --data PATH){hint}."
    )
