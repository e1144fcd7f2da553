"""Optimizers that read the hand-written gradients in `.g` and update in place."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from .module import Parameter


class SGD:
    """p <- p - lr * p.g, in place, for every parameter that has a gradient."""

    def __init__(self, params: Iterable[Parameter], lr: float) -> None:
        self.params = list(params)
        if not lr > 0:
            raise ValueError(f"learning rate must be positive, got {lr}")
        self.lr = lr

    @torch.no_grad()
    def step(self) -> None:
        for p in self.params:
            if p.g is not None:
                p.add_(p.g, alpha=-self.lr)

    def zero_grad(self) -> None:
        for p in self.params:
            if p.g is not None:
                p.g.zero_()
