"""Minibatches: seeded shuffling, views where no shuffle is needed."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor


class DataLoader:
    """Batches of (x, y) from tensors.

    With shuffle, epoch e visits the samples in the order `randperm(n)` drawn from
    a generator seeded with (seed, e): the same seed gives the same batches in
    every run, and any epoch's order can be rebuilt on its own. Without shuffle,
    batches are slices (views) of x and y, so nothing is copied.
    """

    def __init__(self, x: Tensor, y: Tensor, batch_size: int, shuffle: bool = False, seed: int = 0,
                 drop_last: bool = False) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch size must be a positive integer, got {batch_size}")
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"x and y must hold the same number of samples, got {x.shape[0]} and {y.shape[0]}")
        self.x, self.y = x, y
        self.batch_size, self.shuffle, self.seed, self.drop_last = batch_size, shuffle, seed, drop_last
        self.epoch = 0

    def __len__(self) -> int:
        n, bs = self.x.shape[0], self.batch_size
        return n // bs if self.drop_last else -(-n // bs)

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
        if self.shuffle:
            order = self.order(epoch).to(self.x.device)
            for i in range(start * bs, stop, bs):
                idx = order[i:i + bs]
                yield self.x[idx], self.y[idx]  # one gather per batch: the copy shuffling needs
        else:
            for i in range(start * bs, stop, bs):
                yield self.x[i:i + bs], self.y[i:i + bs]
