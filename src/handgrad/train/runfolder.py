"""Run folders: the config a run used, its metrics, its checkpoint and its pictures.

    runs/NAME/config.json          the TrainConfig
    runs/NAME/metrics.jsonl        one line per epoch
    runs/NAME/checkpoint.safetensors  weights, optimizer state, RNG states, position (latest)
    runs/NAME/*.png                loss and accuracy curves, confusion matrix, validation samples

Every file is written to a temporary name and renamed into place, so a crash mid-write
leaves the previous version intact.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from ..errors import UsageError

CONFIG, METRICS, CHECKPOINT = "config.json", "metrics.jsonl", "checkpoint.safetensors"


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """write(tmp_name) then fsync and rename over `path`: readers see the old file or the new, never half."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # as an ordinary new file (mkstemp makes it private)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


class RunFolder:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @classmethod
    def create(cls, path: str | Path, overwrite: bool = False) -> "RunFolder":
        """A new, empty run folder; an existing non-empty one only with overwrite (its files are removed)."""
        path = Path(path)
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            if not overwrite:
                raise UsageError(f"{path} already exists; pass --overwrite to replace it or --resume to continue it")
            if not (path / CONFIG).is_file() and path.is_dir():
                raise UsageError(f"{path} exists and is not a run folder (no {CONFIG}); refusing to delete it")
            shutil.rmtree(path)
        path.mkdir(parents=True, exist_ok=True)
        return cls(path)

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

    def read_config(self) -> dict:
        try:
            return json.loads((self.path / CONFIG).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise UsageError(f"{self.path / CONFIG}: unreadable ({e})") from None

    def write_metrics(self, rows: list[dict]) -> None:
        """All epochs so far, one JSON object per line (rewritten whole, so a resume never duplicates lines)."""
        text = "".join(json.dumps(r) + "\n" for r in rows)
        atomic_write(self.path / METRICS, lambda tmp: Path(tmp).write_text(text))

    def read_metrics(self) -> list[dict]:
        path = self.path / METRICS
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []

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
        try:
            tensors = load_file(path)
            from safetensors import safe_open

            with safe_open(path, "pt") as f:
                meta = json.loads((f.metadata() or {})["handgrad"])
        except (SafetensorError, OSError, KeyError, json.JSONDecodeError) as e:
            raise UsageError(f"{path}: not a readable handgrad checkpoint ({type(e).__name__}: {e})") from None
        return tensors, meta
