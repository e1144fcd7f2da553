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


class GELU(Module):
    """Y = X Phi(X) (exact), or 0.5 X (1 + tanh(sqrt(2/pi) (X + 0.044715 X^3))) with approximate='tanh'."""

    K = math.sqrt(2.0 / math.pi)
    PIECE = 1 << 18  # elements per piece of the backward's arithmetic (1 MiB in float32)

    def __init__(self, approximate: str = "none") -> None:
        super().__init__()
        if approximate not in ("none", "tanh"):
            raise ValueError(f"GELU approximate must be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate

    def backward_reads_output(self) -> bool:
        return False  # the derivative comes from the input

    def forward(self, x: Tensor) -> Tensor:
        return torch.nn.functional.gelu(x, approximate=self.approximate)  # torch's kernel: one pass

    def bwd(self, dy: Tensor, x: Tensor) -> Tensor:
        """exact: dX = dY (Phi(X) + X phi(X)),  phi(X) = exp(-X^2 / 2) / sqrt(2 pi);
        tanh: dX = dY (0.5 (1 + t) + 0.5 X (1 - t^2) K (1 + 3 c X^2)),  t = tanh(K (X + c X^3))."""
        if self.approximate == "tanh":
            t = torch.tanh(self.K * (x + 0.044715 * x.pow(3)))
            return dy * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * self.K * (1.0 + 3 * 0.044715 * x * x))
        # Phi(X) + X phi(X) = (1 + erf(X / sqrt 2) + sqrt(2 / pi) X exp(-X^2 / 2)) / 2, formed PIECE elements at a
        # time (the temporaries stay small and in cache); inside lean(), dX is written over the output, which only the
        # next layer read (its backward has run)
        out = self.out
        reuse = self.lean and self.out_private and isinstance(out, Tensor) and out.is_contiguous()
        dx = out if reuse else torch.empty(dy.shape, dtype=dy.dtype, device=dy.device)
        xs, dys, dxs = x.reshape(-1), dy.reshape(-1), dx.view(-1)
        zero = x.new_zeros(())
        for lo in range(0, xs.numel(), self.PIECE):
            xp, dyp = xs[lo:lo + self.PIECE], dys[lo:lo + self.PIECE]
            e = torch.addcmul(zero, xp, xp, value=-0.5).exp_()  # exp(-X^2 / 2)
            t = torch.mul(xp, 1.0 / math.sqrt(2.0)).erf_().addcmul_(xp, e, value=math.sqrt(2.0 / math.pi))
            torch.addcmul(dyp, dyp, t, out=dxs[lo:lo + self.PIECE]).mul_(0.5)  # dY (1 + t) / 2
        return dx

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
