"""Activations: each forward beside its hand-written backward, with the derivative in the docstring."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..functional import log_softmax, log_softmax_grad, relu, relu_grads, relu_grads_
from ..module import Module


class ReLU(Module):
    """Y = max(X, 0)."""

    def backward_reads_input(self) -> bool:
        return False  # the mask comes from the output

    def forward(self, x: Tensor) -> Tensor:
        return relu(x)

    def bwd(self, dy: Tensor, x: Tensor) -> Tensor:
        """dX = dY * (Y > 0)  (the mask read from the saved output; inside `lean()`, where nothing else reads
        the output any more, dX overwrites it)."""
        return relu_grads_(dy, self.out) if self.lean and self.out_private else relu_grads(dy, self.out)


class LeakyReLU(Module):
    """Y = X where X > 0, a X elsewhere."""

    def __init__(self, negative_slope: float = 0.01) -> None:
        super().__init__()
        self.negative_slope = negative_slope

    def forward(self, x: Tensor) -> Tensor:
        return torch.where(x > 0, x, x * self.negative_slope)

    def bwd(self, dy: Tensor, x: Tensor) -> Tensor:
        """dX = dY * (1 where X > 0, a elsewhere)."""
        return torch.where(x > 0, dy, dy * self.negative_slope)

    def extra_repr(self) -> str:
        return f"negative_slope={self.negative_slope}"


class GeneralRelu(Module):
    """The course's Y = min(leaky_relu(X, leak) - sub, maxv); leak, sub and maxv are optional."""

    def __init__(self, leak: float | None = None, sub: float | None = None, maxv: float | None = None) -> None:
        super().__init__()
        self.leak, self.sub, self.maxv = leak, sub, maxv

    def forward(self, x: Tensor) -> Tensor:
        y = torch.where(x > 0, x, x * self.leak) if self.leak is not None else torch.relu(x)
        if self.sub is not None:
            y = y - self.sub
        if self.maxv is not None:
            y = y.clamp_max(self.maxv)
        return y

    def bwd(self, dy: Tensor, x: Tensor) -> Tensor:
        """dX = dY * slope(X) * (not clipped at maxv),  slope = 1 where X > 0, leak (or 0) elsewhere."""
        dx = torch.where(x > 0, dy, dy * self.leak if self.leak is not None else torch.zeros_like(dy))
        if self.maxv is not None:
            dx = dx * (self.out < self.maxv)
        return dx

    def extra_repr(self) -> str:
        return f"leak={self.leak}, sub={self.sub}, maxv={self.maxv}"


def _normal_cdf(x: Tensor) -> Tensor:
    return 0.5 * (1.0 + torch.erf(x * (1.0 / math.sqrt(2.0))))


class GELU(Module):
    """Y = X Phi(X) (exact), or 0.5 X (1 + tanh(sqrt(2/pi) (X + 0.044715 X^3))) with approximate='tanh'."""

    K = math.sqrt(2.0 / math.pi)

    def __init__(self, approximate: str = "none") -> None:
        super().__init__()
        if approximate not in ("none", "tanh"):
            raise ValueError(f"GELU approximate must be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate

    def forward(self, x: Tensor) -> Tensor:
        if self.approximate == "tanh":
            return 0.5 * x * (1.0 + torch.tanh(self.K * (x + 0.044715 * x.pow(3))))
        return x * _normal_cdf(x)

    def bwd(self, dy: Tensor, x: Tensor) -> Tensor:
        """exact: dX = dY (Phi(X) + X phi(X));  tanh: dX = dY (0.5 (1 + t) + 0.5 X (1 - t^2) K (1 + 3 c X^2))."""
        if self.approximate == "tanh":
            t = torch.tanh(self.K * (x + 0.044715 * x.pow(3)))
            return dy * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * self.K * (1.0 + 3 * 0.044715 * x * x))
        pdf = torch.exp(-0.5 * x * x) * (1.0 / math.sqrt(2.0 * math.pi))
        return dy * (_normal_cdf(x) + x * pdf)

    def extra_repr(self) -> str:
        return f"approximate={self.approximate!r}"


class Sigmoid(Module):
    """Y = 1 / (1 + exp(-X))."""

    def backward_reads_input(self) -> bool:
        return False  # the derivative comes from the output

    def forward(self, x: Tensor) -> Tensor:
        return torch.sigmoid(x)

    def bwd(self, dy: Tensor, x: Tensor) -> Tensor:
        """dX = dY Y (1 - Y)."""
        y = self.out
        return dy * y * (1.0 - y)


class Tanh(Module):
    """Y = tanh(X)."""

    def backward_reads_input(self) -> bool:
        return False  # the derivative comes from the output

    def forward(self, x: Tensor) -> Tensor:
        return torch.tanh(x)

    def bwd(self, dy: Tensor, x: Tensor) -> Tensor:
        """dX = dY (1 - Y^2)."""
        y = self.out
        return dy * (1.0 - y * y)


class SiLU(Module):
    """Y = X sigmoid(X)."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(x)

    def bwd(self, dy: Tensor, x: Tensor) -> Tensor:
        """dX = dY s (1 + X (1 - s)),  s = sigmoid(X)."""
        s = torch.sigmoid(x)
        return dy * s * (1.0 + x * (1.0 - s))


class Softmax(Module):
    """Y = exp(X - logsumexp(X)) along `dim`."""

    def __init__(self, dim: int = -1) -> None:
        super().__init__()
        self.dim = dim

    def backward_reads_input(self) -> bool:
        return False  # the derivative comes from the output

    def forward(self, x: Tensor) -> Tensor:
        return log_softmax(x, self.dim).exp()

    def bwd(self, dy: Tensor, x: Tensor) -> Tensor:
        """dX = Y (dY - sum(dY Y, dim))."""
        y = self.out
        return y * (dy - (dy * y).sum(dim=self.dim, keepdim=True))

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class LogSoftmax(Module):
    """Y = X - logsumexp(X) along `dim`."""

    def __init__(self, dim: int = -1) -> None:
        super().__init__()
        self.dim = dim

    def backward_reads_input(self) -> bool:
        return False  # the derivative comes from the output

    def forward(self, x: Tensor) -> Tensor:
        return log_softmax(x, self.dim)

    def bwd(self, dy: Tensor, x: Tensor) -> Tensor:
        """dX = dY - softmax(X) * sum(dY, dim), softmax(X) = exp(Y)."""
        return log_softmax_grad(dy, self.out, self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"
