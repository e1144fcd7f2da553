"""Activations: ReLU and LogSoftmax, forward beside hand-written backward."""

from __future__ import annotations

from torch import Tensor

from ..functional import log_softmax, log_softmax_grad, relu, relu_grad
from ..module import Module


class ReLU(Module):
    """Y = max(X, 0)."""

    def forward(self, x: Tensor) -> Tensor:
        return relu(x)

    def bwd(self, dy: Tensor, x: Tensor) -> Tensor:
        """dX = dY * (Y > 0)  (the mask read from the saved output)."""
        return relu_grad(dy, self.out)


class LogSoftmax(Module):
    """Y = X - logsumexp(X) along `dim`."""

    def __init__(self, dim: int = -1) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, x: Tensor) -> Tensor:
        return log_softmax(x, self.dim)

    def bwd(self, dy: Tensor, x: Tensor) -> Tensor:
        """dX = dY - softmax(X) * sum(dY, dim), softmax(X) = exp(Y)."""
        return log_softmax_grad(dy, self.out, self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"
