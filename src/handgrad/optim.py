"""Optimizers that read the hand-written gradients in `.g` and update in place."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from .module import Parameter


class SGD:
    """Stochastic gradient descent on `.g`, as torch.optim.SGD computes it:

        d = p.g + weight_decay * p
        b = momentum * b + d          (b = d on the first step)
        d = d + momentum * b if nesterov else b
        p = p - lr * d
    """

    def __init__(self, params: Iterable[Parameter], lr: float, momentum: float = 0.0, weight_decay: float = 0.0,
                 nesterov: bool = False) -> None:
        self.params = list(params)
        if not lr > 0:
            raise ValueError(f"learning rate must be positive, got {lr}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if weight_decay < 0:
            raise ValueError(f"weight decay must be >= 0, got {weight_decay}")
        if nesterov and momentum == 0:
            raise ValueError("Nesterov momentum needs momentum > 0")
        self.lr, self.momentum, self.weight_decay, self.nesterov = lr, momentum, weight_decay, nesterov
        self.buffers: list[Tensor | None] = [None] * len(self.params)

    @torch.no_grad()
    def step(self) -> None:
        for i, p in enumerate(self.params):
            if p.g is None:
                continue
            d = p.g if self.weight_decay == 0 else p.g.add(p, alpha=self.weight_decay)
            if self.momentum:
                buf = self.buffers[i]
                if buf is None:
                    buf = self.buffers[i] = d.clone()
                else:
                    buf.mul_(self.momentum).add_(d)
                d = d.add(buf, alpha=self.momentum) if self.nesterov else buf
            p.add_(d, alpha=-self.lr)

    def zero_grad(self) -> None:
        for p in self.params:
            if p.g is not None:
                p.g.zero_()
