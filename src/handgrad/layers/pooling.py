"""Pooling: MaxPool2d, AvgPool2d, AdaptiveAvgPool2d. Backward routes dY back to the window inputs."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from ..module import Module
from .conv import _pair


def _check_4d(name: str, x: Tensor, kernel: tuple[int, int], padding: tuple[int, int],
              dilation: tuple[int, int] = (1, 1)) -> None:
    if x.dim() != 4:
        raise ValueError(f"{name} expects input [N, C, H, W], got {list(x.shape)}")
    eh, ew = dilation[0] * (kernel[0] - 1) + 1, dilation[1] * (kernel[1] - 1) + 1
    if x.shape[2] + 2 * padding[0] < eh or x.shape[3] + 2 * padding[1] < ew:
        raise ValueError(f"{name}: input spatial size {x.shape[2]}x{x.shape[3]} is smaller than the window {eh}x{ew}")


def _padding_only_window(size: int, k: int, s: int, p: int, d: int) -> int | None:
    """The first output position (along one dim) whose window reads padding only, or None."""
    n_out = (size + 2 * p - d * (k - 1) - 1) // s + 1
    for i in range(n_out):
        if all(not 0 <= i * s - p + d * j < size for j in range(k)):
            return i
    return None


def avg_pool_grad(dy: Tensor, input_shape: tuple[int, ...], kernel: tuple[int, int], stride: tuple[int, int],
                  padding: tuple[int, int]) -> Tensor:
    """dX[p] = sum over the windows w containing p of dY[w] / (kh kw)  (a fold of dY spread over each window)."""
    n, c, h, w = input_shape
    k = kernel[0] * kernel[1]
    cols = (dy / k).reshape(n * c, 1, -1).expand(n * c, k, dy.shape[2] * dy.shape[3])  # (N*C, kh*kw, L)
    return F.fold(cols, (h, w), kernel, padding=padding, stride=stride).view(n, c, h, w)


class _Pool(Module):
    """A pooling layer: its backward reads shapes (and MaxPool2d's saved indices), not X or Y."""

    def backward_reads_input(self) -> bool:
        return False

    def backward_reads_output(self) -> bool:
        return False


class MaxPool2d(_Pool):
    """Y = max of X over each window."""

    def __init__(self, kernel_size: int | tuple[int, int], stride: int | tuple[int, int] | None = None,
                 padding: int | tuple[int, int] = 0, dilation: int | tuple[int, int] = 1) -> None:
        super().__init__()
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride) if stride is not None else self.kernel_size
        self.padding, self.dilation = _pair(padding), _pair(dilation)

    def forward(self, x: Tensor) -> Tensor:
        _check_4d("MaxPool2d", x, self.kernel_size, self.padding, self.dilation)
        for dim, size, k, st, p, d in zip(("height", "width"), x.shape[2:], self.kernel_size, self.stride,
                                          self.padding, self.dilation):
            if p > k // 2:
                raise ValueError(f"MaxPool2d: padding {p} is more than half the kernel size {k}")
            i = _padding_only_window(size, k, st, p, d)
            if i is not None:
                raise ValueError(f"MaxPool2d: window {i} along the {dim} ({size} wide input, kernel {k}, stride "
                                 f"{st}, padding {p}, dilation {d}) covers padding only; lower the padding or "
                                 "the dilation")
        y, self.indices = F.max_pool2d(x, self.kernel_size, self.stride, self.padding, self.dilation,
                                       return_indices=True)
        return y

    def bwd(self, dy: Tensor, x: Tensor) -> Tensor:
        """dX[argmax of window w] += dY[w]  (a scatter-add through the saved argmax indices)."""
        n, c = x.shape[:2]
        dx = dy.new_zeros(n, c, x.shape[2] * x.shape[3])
        dx.scatter_add_(2, self.indices.reshape(n, c, -1), dy.reshape(n, c, -1))
        return dx.view(x.shape)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class AvgPool2d(_Pool):
    """Y = mean of X over each window (zero padding counted, as torch's default)."""

    def __init__(self, kernel_size: int | tuple[int, int], stride: int | tuple[int, int] | None = None,
                 padding: int | tuple[int, int] = 0) -> None:
        super().__init__()
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride) if stride is not None else self.kernel_size
        self.padding = _pair(padding)

    def forward(self, x: Tensor) -> Tensor:
        _check_4d("AvgPool2d", x, self.kernel_size, self.padding)
        return F.avg_pool2d(x, self.kernel_size, self.stride, self.padding)

    def bwd(self, dy: Tensor, x: Tensor) -> Tensor:
        """dX[p] = sum over windows w containing p of dY[w] / (kh kw)."""
        return avg_pool_grad(dy, tuple(x.shape), self.kernel_size, self.stride, self.padding)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class AdaptiveAvgPool2d(_Pool):
    """Y = mean of X over an (H/oh, W/ow) grid of windows; output_size 1 is global average pooling.

    Output sizes must divide the input's (then the windows tile it exactly).
    """

    def __init__(self, output_size: int | tuple[int, int]) -> None:
        super().__init__()
        self.output_size = _pair(output_size)

    def _window(self, x: Tensor) -> tuple[int, int]:
        if x.dim() != 4:
            raise ValueError(f"AdaptiveAvgPool2d expects input [N, C, H, W], got {list(x.shape)}")
        (oh, ow), (h, w) = self.output_size, x.shape[2:]
        if h % oh or w % ow:
            raise ValueError(f"AdaptiveAvgPool2d: output size {oh}x{ow} must divide the input size {h}x{w}")
        return h // oh, w // ow

    def forward(self, x: Tensor) -> Tensor:
        kernel = self._window(x)
        if self.output_size == (1, 1):
            return x.mean((2, 3), keepdim=True)  # (N, C, 1, 1)
        return F.avg_pool2d(x, kernel, kernel)

    def bwd(self, dy: Tensor, x: Tensor) -> Tensor:
        """dX[p] = dY[window of p] / (kh kw)."""
        kernel = self._window(x)
        if self.output_size == (1, 1):
            return (dy / (x.shape[2] * x.shape[3])).expand(x.shape)
        return avg_pool_grad(dy, tuple(x.shape), kernel, kernel, (0, 0))

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"
