"""The output projection and cross-entropy as one layer, in chunks of tokens: the (tokens x vocab) logits are never
all alive.

A language model's last Linear makes logits of N tokens x V classes (GPT-2: 50257 per token), which the loss
reads once and the backward once more. `LinearCrossEntropy` computes them `chunk` tokens at a time in forward,
keeping only each token's log-sum-exp, and again in backward, where each chunk's softmax minus the one-hot target
becomes that chunk's gradient at once: memory of chunk x V instead of N x V, for one more matrix multiply.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..functional import check_class_targets
from ..module import Module, Parameter, add_grad


class LinearCrossEntropy(Module):
    """L = mean over tokens of (logsumexp(z) - z[target]),  z = X W^T + b   (W: (V, d), as torch.nn.Linear(d, V)).

    `weight`: a Parameter (V, d) to share, e.g. the token embedding's table (tied), or None for a fresh one of
    `num_classes` x `in_features`. forward(x (N, d), target (N,)) -> the loss (a scalar).
    """

    def __init__(self, in_features: int, num_classes: int, weight: Parameter | None = None, bias: bool = False,
                 chunk: int = 1024, *, dtype: torch.dtype | None = None,
                 device: torch.device | str | None = None) -> None:
        super().__init__()
        if weight is not None and (not isinstance(weight, Parameter) or tuple(weight.shape) != (num_classes,
                                                                                                in_features)):
            raise ValueError(f"LinearCrossEntropy expects a weight Parameter of shape [{num_classes}, {in_features}], "
                             f"got {type(weight).__name__} {list(getattr(weight, 'shape', []))}")
        if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
            raise ValueError(f"LinearCrossEntropy: chunk must be a positive number of tokens, got {chunk!r}")
        self.in_features, self.num_classes, self.chunk = in_features, num_classes, chunk
        self.weight = weight if weight is not None else Parameter(
            torch.randn(num_classes, in_features, dtype=dtype, device=device) * in_features ** -0.5)
        self.bias = Parameter(torch.zeros(num_classes, dtype=self.weight.dtype, device=self.weight.device)) \
            if bias else None

    def backward_reads_output(self) -> bool:
        return False

    def _logits(self, x: Tensor) -> Tensor:
        z = x @ self.weight.t()  # (chunk, V)
        return z if self.bias is None else z + self.bias

    def forward(self, x: Tensor, target: Tensor) -> Tensor:
        if x.dim() != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"LinearCrossEntropy({self.in_features} -> {self.num_classes}) expects x [N, "
                             f"{self.in_features}], got {list(x.shape)}")
        check_class_targets(x.new_empty(()).expand(x.shape[0], self.num_classes), target)  # (a view: no memory)
        n = x.shape[0]
        lse = x.new_empty(n)  # per token: the log-sum-exp of its logits (all the backward keeps besides x)
        total = x.new_zeros(())
        for lo in range(0, n, self.chunk):
            z = self._logits(x[lo:lo + self.chunk])  # (chunk, V): the only logits alive
            lse[lo:lo + self.chunk] = torch.logsumexp(z, dim=1)
            total = total + (lse[lo:lo + self.chunk] - z.gather(1, target[lo:lo + self.chunk, None])[:, 0]).sum()
        self.lse = lse
        return total / max(n, 1)

    def bwd(self, dloss: Tensor, x: Tensor, target: Tensor) -> tuple[Tensor | None, None]:
        """Per chunk: dZ = (softmax(z) - onehot(target)) * dL / N  (softmax = exp(z - lse), z recomputed);
        dX = dZ W,  dW = dZ^T X,  db = sum dZ."""
        n = x.shape[0]
        scale = dloss / max(n, 1)
        dx = torch.empty_like(x) if self.needs_input_grad else None
        dw = torch.zeros_like(self.weight)
        db = torch.zeros_like(self.bias) if self.bias is not None else None
        for lo in range(0, n, self.chunk):
            xc, tc = x[lo:lo + self.chunk], target[lo:lo + self.chunk]
            dz = torch.exp(self._logits(xc) - self.lse[lo:lo + self.chunk, None])  # softmax, (chunk, V)
            dz[torch.arange(dz.shape[0], device=dz.device), tc] -= 1.0
            dz *= scale
            if dx is not None:
                torch.mm(dz, self.weight, out=dx[lo:lo + self.chunk])
            dw.addmm_(dz.t(), xc)
            if db is not None:
                db += dz.sum(0)
        add_grad(self.weight, dw)
        if db is not None:
            add_grad(self.bias, db)
        return dx, None

    def extra_repr(self) -> str:
        return f"{self.in_features} -> {self.num_classes}, chunk={self.chunk}, bias={self.bias is not None}"
