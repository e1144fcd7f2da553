"""Dropout: zero each element with probability p in training, scale the rest by 1 / (1 - p)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..module import Module


class Dropout(Module):
    """Y = X * M / (1 - p), M ~ Bernoulli(1 - p), in training; Y = X in eval.

    The mask is drawn from torch's global generator exactly as torch.nn.Dropout draws
    it, so `torch.manual_seed` makes it reproducible and the torch twin gets the same mask.
    """

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"Dropout probability must be in [0, 1], got {p}")
        self.p = p

    def backward_reads_input(self) -> bool:
        return False  # the saved mask only

    def backward_reads_output(self) -> bool:
        return False

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            self.mask = None
            return x
        if self.p == 1.0:
            self.mask = torch.zeros_like(x)
        else:
            self.mask = torch.empty_like(x).bernoulli_(1.0 - self.p).div_(1.0 - self.p)
        return x * self.mask

    def bwd(self, dy: Tensor, x: Tensor) -> Tensor:
        """dX = dY * M / (1 - p)  (the saved, scaled mask); dX = dY in eval."""
        return dy if self.mask is None else dy * self.mask

    def extra_repr(self) -> str:
        return f"p={self.p}"
