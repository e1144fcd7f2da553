"""Run folders: the config a run used, its metrics, its checkpoint and its pictures.

    runs/NAME/config.json          the TrainConfig
    runs/NAME/metrics.jsonl        one line per epoch (with the training loss of each of its batches)
    runs/NAME/checkpoint.safetensors  weights, optimizer state, RNG states, position (latest)
    runs/NAME/*.png                loss and accuracy curves, confusion matrix, validation samples
    runs/NAME/lr_find.png          `handgrad lr-find --run NAME`'s plot
    runs/NAME/error.log            the traceback of an unforeseen error in a command on this run
    runs/NAME/.handgrad-run        the marker: this folder is a handgrad run (written at creation)
    runs/NAME/.handgrad.lock       held (flock) by the process writing the run; its PID inside

Every file is written to a temporary name and renamed into place, so a crash mid-write
leaves the previous version intact. `--overwrite` replaces only a folder holding the marker, and
only the files handgrad writes (anything else in it stays), and only once the new run has been
prepared (data found and checked, model built): until then the old run is untouched.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from ..errors import DataError, UsageError

if TYPE_CHECKING:
    from .config import TrainConfig

try:
    import fcntl
except ImportError:  # not on Windows: no lock there
    fcntl = None  # type: ignore[assignment]

CONFIG, METRICS, CHECKPOINT = "config.json", "metrics.jsonl", "checkpoint.safetensors"
MARKER, LOCK, LR_FIND, ERROR_LOG = ".handgrad-run", ".handgrad.lock", "lr_find.png", "error.log"
# every file handgrad writes into a run folder: what --overwrite removes (nothing else)
WRITTEN = (CONFIG, METRICS, CHECKPOINT, "loss.png", "accuracy.png", "confusion.png", "samples.png", LR_FIND,
           ERROR_LOG)


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """write(tmp_name), fsync, rename over `path` and fsync the folder: readers see the old file or the new,
    never half, even after a power cut. A write that fails (read-only folder, disk full) leaves the old file and
    no temporary one, and says so in one line."""
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
        os.close(fd)
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # as an ordinary new file (mkstemp makes it private)
        os.replace(tmp, path)
        tmp = None
        fsync_dir(path.parent)
    except (OSError, SafetensorError) as e:  # a read-only folder, a full disk: the CLI says `path: why`, exit 1
        raise OSError(getattr(e, "errno", None), f"cannot write it ({getattr(e, 'strerror', None) or e})",
                      str(path)) from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)


def fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable (where the system allows opening a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class RunFolder:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock_fd: int | None = None

    @classmethod
    def create(cls, path: str | Path, overwrite: bool = False) -> "RunFolder":
        """A new run folder (or, with overwrite, an old run's replaced): `prepare` then `commit`."""
        folder = cls.prepare(path, overwrite)
        folder.commit(overwrite)
        return folder

    @classmethod
    def prepare(cls, path: str | Path, overwrite: bool = False) -> "RunFolder":
        """Check that `path` can take a new run, touching nothing: it is absent or empty, or (with overwrite) a
        handgrad run folder that is neither the working directory, home, nor a folder above them."""
        path = Path(path)
        if path.is_symlink():
            raise UsageError(f"--out {path} is a symbolic link; give the folder itself")
        if path.exists() and not path.is_dir():
            raise UsageError(f"--out {path} is a file, not a folder")
        if path.is_dir() and any(path.iterdir()):
            if not overwrite:
                raise UsageError(f"{path} already exists; pass --overwrite to replace it or --resume to continue it")
            real = path.resolve()
            for name, protected in (("the working directory", Path.cwd()), ("your home folder", Path.home())):
                protected = protected.resolve()
                if real == protected or real in protected.parents:
                    raise UsageError(f"--out {path} is {name} or a folder above it; refusing to --overwrite it")
            if not (path / MARKER).is_file():
                raise UsageError(f"{path} is not a handgrad run folder (no {MARKER} marker); refusing to "
                                 "--overwrite it: choose another --out or remove it yourself")
        return cls(path)

    def commit(self, overwrite: bool = False) -> None:
        """Make the folder, take its lock, remove an old run's files (overwrite: only those handgrad writes), and
        write the marker."""
        path = self.path
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UsageError(f"--out {path}: cannot create the folder ({e.strerror or e})") from None
        self.lock()
        if (path / MARKER).is_file() and any(path.iterdir()) and (path / CONFIG).exists() and not overwrite:
            raise UsageError(f"{path} already exists; pass --overwrite to replace it or --resume to continue it")
        if overwrite:
            for name in WRITTEN:
                if (path / name).is_file():
                    (path / name).unlink()
            for part in path.glob(".*.part"):  # an interrupted atomic write
                part.unlink()
        atomic_write(path / MARKER, lambda tmp: Path(tmp).write_text(json.dumps({"handgrad": "run folder"}) + "\n"))

    def lock(self) -> None:
        """Hold the folder's lock until `close()` or the end of the process (the system releases it even for a
        killed process): a second writer stops with one line naming the PID that holds it."""
        if self._lock_fd is not None or fcntl is None:
            return
        try:
            fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        except OSError as e:
            why = "it is a symbolic link" if (self.path / LOCK).is_symlink() else e.strerror or e
            raise UsageError(f"{self.path}: cannot open its lock file {LOCK} ({why})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise UsageError(f"{self.path} is in use by another handgrad process (PID {holder}); wait for it to "
                             "finish or stop it") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd
        for part in self.path.glob(".*.part"):  # left by a writer killed mid-write: nobody else writes here now
            part.unlink(missing_ok=True)

    def close(self) -> None:
        """Let go of the lock."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    @classmethod
    def open(cls, path: str | Path) -> "RunFolder":
        path = Path(path)
        if not path.is_dir():
            raise UsageError(f"{path}: no such run folder")
        if not (path / CONFIG).is_file():
            raise UsageError(f"{path} is not a run folder: no {CONFIG} in it")
        return cls(path)

    # ---------------------------------------------------------------- config and metrics
    def write_config(self, config: dict) -> None:
        atomic_write(self.path / CONFIG, lambda tmp: Path(tmp).write_text(json.dumps(config, indent=2) + "\n"))

    def read_config(self) -> "TrainConfig":
        """The run's TrainConfig, checked against its typed fields (one line naming the key if not)."""
        from .schema import config_from_json

        path = self.path / CONFIG
        try:
            d = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
            raise DataError(f"{path}: unreadable ({getattr(e, 'strerror', None) or e})") from None
        return config_from_json(d, path)

    def write_metrics(self, rows: list[dict]) -> None:
        """All epochs so far, one JSON object per line (rewritten whole, so a resume never duplicates lines)."""
        text = "".join(json.dumps(r) + "\n" for r in rows)
        atomic_write(self.path / METRICS, lambda tmp: Path(tmp).write_text(text))

    def read_metrics(self) -> list[dict]:
        """The epochs so far (none before the first ends), each line checked (DataError naming the line and key)."""
        from .schema import check_epochs

        path = self.path / METRICS
        if not path.exists():
            return []
        rows = []
        try:
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if line.strip():
                    rows.append(json.loads(line))
        except (OSError, UnicodeDecodeError, RecursionError) as e:
            raise DataError(f"{path}: unreadable ({getattr(e, 'strerror', None) or e})") from None
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: line {number} is not JSON ({e.msg})") from None
        return check_epochs(rows, str(path))

    # ------------------------------------------------------------------------ checkpoint
    def save_checkpoint(self, tensors: dict[str, Tensor], meta: dict) -> None:
        flat = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
        atomic_write(self.path / CHECKPOINT,
                     lambda tmp: save_file(flat, tmp, metadata={"handgrad": json.dumps(meta)}))

    def has_checkpoint(self) -> bool:
        return (self.path / CHECKPOINT).is_file()

    def load_checkpoint(self) -> tuple[dict[str, Tensor], dict]:
        path = self.path / CHECKPOINT
        if not path.is_file():
            raise UsageError(f"{self.path}: no checkpoint yet ({CHECKPOINT} missing)")
        from .schema import check_meta, check_rng

        try:
            tensors = load_file(path)
            from safetensors import safe_open

            with safe_open(path, "pt") as f:
                meta = json.loads((f.metadata() or {})["handgrad"])
        except (SafetensorError, OSError, KeyError, ValueError, RecursionError) as e:
            raise DataError(f"{path}: not a readable handgrad checkpoint ({type(e).__name__}: {e})") from None
        check_rng(tensors, path)
        return tensors, check_meta(meta, path)
