"""Flatten and Unflatten: reshapes whose backward reshapes the gradient back."""

from __future__ import annotations

from torch import Tensor

from ..module import Module


class Flatten(Module):
    """Y = X with dims start_dim..end_dim merged into one."""

    def __init__(self, start_dim: int = 1, end_dim: int = -1) -> None:
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim

    def backward_reads_input(self) -> bool:
        return False  # only its shape

    def backward_reads_output(self) -> bool:
        return False

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(self.start_dim, self.end_dim)

    def bwd(self, dy: Tensor, x: Tensor) -> Tensor:
        """dX = dY reshaped to X's shape."""
        return dy.reshape(x.shape)

    def extra_repr(self) -> str:
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"


class Unflatten(Module):
    """Y = X with dim `dim` split into `sizes` (e.g. [N, 784] -> [N, 1, 28, 28])."""

    def __init__(self, dim: int, sizes: tuple[int, ...]) -> None:
        super().__init__()
        self.dim, self.sizes = dim, tuple(sizes)

    def backward_reads_input(self) -> bool:
        return False  # only its shape

    def backward_reads_output(self) -> bool:
        return False

    def forward(self, x: Tensor) -> Tensor:
        n = 1
        for s in self.sizes:
            n *= s
        if x.dim() <= self.dim or x.shape[self.dim] != n:
            raise ValueError(f"Unflatten({self.dim}, {list(self.sizes)}) expects dim {self.dim} of size {n}, "
                             f"got input {list(x.shape)}")
        return x.unflatten(self.dim, self.sizes)

    def bwd(self, dy: Tensor, x: Tensor) -> Tensor:
        """dX = dY reshaped to X's shape."""
        return dy.reshape(x.shape)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, sizes={self.sizes}"
