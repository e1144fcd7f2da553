"""Minibatches: seeded shuffling, views where no shuffle is needed."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor


def shard_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """Rank `rank`'s rows [lo, hi) of a batch of n: contiguous, sizes differing by at most one, none lost."""
    return rank * n // world_size, (rank + 1) * n // world_size


class DataLoader:
    """Batches of (x, y) from tensors.

    With shuffle, epoch e visits the samples in the order `randperm(n)` drawn from
    a generator seeded with (seed, e): the same seed gives the same batches in
    every run, and any epoch's order can be rebuilt on its own. Without shuffle,
    batches are slices (views) of x and y, so nothing is copied.

    Data-parallel: with `world_size` > 1, `batch_size` is the global batch and
    rank `rank` gets its slice of every global batch (contiguous rows, sizes
    differing by at most one): every sample of an epoch goes to exactly one rank,
    none dropped or repeated, and a short last batch is split as far as it goes
    (a rank may get an empty slice). All ranks draw the same order.
    """

    def __init__(self, x: Tensor, y: Tensor, batch_size: int, shuffle: bool = False, seed: int = 0,
                 drop_last: bool = False, rank: int = 0, world_size: int = 1) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch size must be a positive integer, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size), got rank {rank} of {world_size}")
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"x and y must hold the same number of samples, got {x.shape[0]} and {y.shape[0]}")
        self.x, self.y = x, y
        self.batch_size, self.shuffle, self.seed, self.drop_last = batch_size, shuffle, seed, drop_last
        self.rank, self.world_size = rank, world_size
        self.epoch = 0

    def __len__(self) -> int:
        n, bs = self.x.shape[0], self.batch_size
        return n // bs if self.drop_last else -(-n // bs)

    def global_batch_size(self, i: int) -> int:
        """Samples in global batch i (all ranks' slices together)."""
        return min(self.batch_size, self.x.shape[0] - i * self.batch_size)

    def order(self, epoch: int) -> Tensor:
        """The sample order of `epoch` (a permutation of range(n))."""
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.x.shape[0], generator=gen)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        batches = self.epoch_batches(self.epoch)
        self.epoch += 1
        return batches

    def epoch_batches(self, epoch: int, start: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        """The batches of `epoch` from batch number `start` on (to resume in the middle of an epoch)."""
        n, bs = self.x.shape[0], self.batch_size
        stop = n - n % bs if self.drop_last else n
        order = self.order(epoch).to(self.x.device) if self.shuffle else None
        for i in range(start * bs, stop, bs):
            lo, hi = (i + b for b in shard_bounds(min(bs, n - i), self.rank, self.world_size))
            if order is not None:
                idx = order[lo:hi]
                yield self.x[idx], self.y[idx]  # one gather per batch: the copy shuffling needs
            else:
                yield self.x[lo:hi], self.y[lo:hi]
