"""Text for character models: Debian's `fortunes` and `wamerican`, or any UTF-8 file; a character vocabulary;
seeded (batch, block) windows of a training split and a held-out one.

    load_text("fortunes")        the plain-text files of /usr/share/games/fortunes (apt-get install fortunes)
    load_text("words")           /usr/share/dict/american-english, one word a line (apt-get install wamerican)
    load_text("text:PATH")       any UTF-8 file

Bad input is one DataError line naming the file: missing, empty, binary or not UTF-8, larger than MAX_BYTES,
shorter than a block, or a vocabulary that is not the run's.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..errors import DataError
from .loader import shard_bounds

FORTUNES_DIR = Path("/usr/share/games/fortunes")
WORDS_FILE = Path("/usr/share/dict/american-english")
MAX_BYTES = 512 * 2**20  # a text a character model trains on here; more is refused before it is read
VALID_SHARE = 0.1  # the last tenth of the text, held out


@dataclass
class TextData:
    name: str  # fortunes | words | text:PATH
    source: str  # the file or folder read
    vocab: str  # the characters, sorted: id i is vocab[i]
    train: Tensor  # (n_train,) int64 ids
    valid: Tensor  # (n_valid,) int64 ids
    chars: int = 0  # characters in all
    sha256: str = ""  # of the text's UTF-8 bytes

    def encode(self, text: str) -> Tensor:
        index = {c: i for i, c in enumerate(self.vocab)}
        unknown = next((c for c in text if c not in index), None)
        if unknown is not None:
            raise DataError(f"{unknown!r} is not in this text's vocabulary of {len(self.vocab)} characters")
        return torch.tensor([index[c] for c in text], dtype=torch.long)

    def decode(self, ids: Tensor) -> str:
        return "".join(self.vocab[i] for i in ids.tolist())

    def fingerprint(self) -> dict:
        """What identifies this text: its length in characters and the sha256 of its UTF-8 bytes."""
        return {"chars": self.chars, "sha256": self.sha256}


def _read(path: Path) -> str:
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise DataError(f"{path}: {size:,} bytes; at most {MAX_BYTES:,} are read as text")
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    if b"\0" in raw:
        raise DataError(f"{path}: a binary file (it holds NUL bytes), expected UTF-8 text")
    try:
        return raw.decode("utf-8-sig")  # a byte-order mark is the file's encoding, not a character of its text
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start} is {raw[e.start]:#04x})") from None


def _chars(n: int) -> str:
    return f"{n} character{'' if n == 1 else 's'}"


def fortune_files(folder: Path = FORTUNES_DIR) -> list[Path]:
    """The plain-text fortune files in `folder` (not the .dat indexes, nor the .u8 links), by name."""
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.is_symlink() and p.suffix not in (".dat", ".u8"))


def load_text(spec: str, fortunes_dir: Path = FORTUNES_DIR, words_file: Path = WORDS_FILE) -> TextData:
    if spec == "fortunes":
        if not fortunes_dir.is_dir() or not fortune_files(fortunes_dir):
            raise DataError(f"{fortunes_dir}: no fortune files (apt-get install fortunes)")
        text = "".join(_read(p) for p in fortune_files(fortunes_dir))
        source = str(fortunes_dir)
    elif spec == "words":
        if not words_file.is_file():
            raise DataError(f"{words_file}: no such file (apt-get install wamerican)")
        text, source = _read(words_file), str(words_file)
    elif spec.startswith("text:") and len(spec) > 5:
        path = Path(spec[5:]).expanduser()
        if not path.exists():
            raise DataError(f"{path}: no such file")
        if not path.is_file():
            raise DataError(f"{path}: not a regular file (a folder, a device or a pipe), expected a UTF-8 text file")
        text, source = _read(path), str(path.resolve())
    else:
        raise DataError(f"unknown text data set {spec!r}: expected fortunes, words or text:PATH")
    if not text:
        raise DataError(f"{source}: empty, expected some text")
    vocab = "".join(sorted(set(text)))
    codes = np.frombuffer(text.encode("utf-32-le"), dtype="<u4")  # each character's code point
    table = np.array([ord(c) for c in vocab], dtype="<u4")  # sorted: the id of a character is its place here
    encoded = torch.from_numpy(np.searchsorted(table, codes).astype(np.int64))
    cut = len(encoded) - max(1, int(len(encoded) * VALID_SHARE))
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return TextData(spec, source, vocab, encoded[:cut].clone(), encoded[cut:].clone(), len(text), digest)


def windows(ids: Tensor, block: int, batch: int, gen: torch.Generator, where: str = "text") -> tuple[Tensor, Tensor]:
    """`batch` windows of `block` characters at seeded random places, and the same shifted by one (the targets)."""
    if ids.numel() <= block:
        raise DataError(f"{where}: {_chars(ids.numel())}, shorter than one block of {block} (+1 for the target)")
    starts = torch.randint(0, ids.numel() - block, (batch,), generator=gen)
    offsets = torch.arange(block)
    x = ids[starts[:, None] + offsets]  # (batch, block)
    y = ids[starts[:, None] + offsets + 1]  # (batch, block)
    return x, y


def valid_windows(ids: Tensor, block: int, max_windows: int = 256, where: str = "held-out text") -> tuple[Tensor, Tensor]:
    """Up to `max_windows` non-overlapping windows of `block` characters spread evenly over `ids` (all of them
    where there are fewer), and their targets: the fixed set a run's valid_loss is measured on."""
    n_full = (ids.numel() - 1) // block
    if n_full < 1:
        raise DataError(f"{where}: {_chars(ids.numel())}, shorter than one block of {block} (+1 for the target)")
    k = min(n_full, max_windows)
    starts = (torch.arange(k) * n_full // k) * block  # (k,)
    offsets = torch.arange(block)
    return ids[starts[:, None] + offsets], ids[starts[:, None] + offsets + 1]  # (k, block) each


class TextLoader:
    """Training batches of (batch, block) windows at seeded random places in `ids`, and their targets.

    An "epoch" is `batches` batches (the stretch between two validations); batch i of epoch e draws its window
    starts from a generator seeded with (seed, e, i), so any batch can be rebuilt on its own (exact resume) and every
    rank draws the same global batch. Data-parallel: rank `rank` of `world_size` takes its contiguous slice of each global batch.
    """

    def __init__(self, ids: Tensor, block: int, batch_size: int, batches: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1, where: str = "training text") -> None:
        if ids.numel() <= block:
            raise DataError(f"{where}: {_chars(ids.numel())}, shorter than one block of {block} (+1 for the "
                            "target)")
        if batch_size < 1 or batches < 1:
            raise ValueError(f"batch size and batches per epoch must be positive, got {batch_size} and {batches}")
        self.ids, self.block, self.batch_size, self.batches, self.seed = ids, block, batch_size, batches, seed
        self.rank, self.world_size = rank, world_size
        self.offsets = torch.arange(block, device=ids.device)
        self.epoch = 0

    def __len__(self) -> int:
        return self.batches

    def global_batch_size(self, i: int) -> int:
        return self.batch_size

    def starts(self, epoch: int, i: int) -> Tensor:
        """(batch_size,) window starts of batch i of `epoch`, from a generator seeded with (seed, epoch, i)."""
        gen = torch.Generator().manual_seed(((self.seed * 1_000_003 + epoch) * 1_000_003 + i) % 2**63)
        return torch.randint(0, self.ids.numel() - self.block, (self.batch_size,), generator=gen)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        batches = self.epoch_batches(self.epoch)
        self.epoch += 1
        return batches

    def epoch_batches(self, epoch: int, start: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        lo, hi = shard_bounds(self.batch_size, self.rank, self.world_size)
        for i in range(start, self.batches):
            at = self.starts(epoch, i)[lo:hi].to(self.ids.device)[:, None] + self.offsets  # (batch, block)
            yield self.ids[at], self.ids[at + 1]


def check_vocab(saved: str, data: TextData, where: str) -> None:
    """DataError unless `data` has the vocabulary a run was trained with (`saved`)."""
    if saved != data.vocab:
        if set(saved) == set(data.vocab):
            raise DataError(f"{where}: the run's vocabulary holds this text's {len(saved)} characters in another order "
                            "(ids are places in the sorted vocabulary: was vocab.json edited?)")
        extra = sorted(set(data.vocab) - set(saved))[:5]
        missing = sorted(set(saved) - set(data.vocab))[:5]
        raise DataError(f"{where}: the run's vocabulary has {len(saved)} characters, this text's {len(data.vocab)} "
                        f"(new: {extra!r}, gone: {missing!r}); the model's embedding is for the run's")
