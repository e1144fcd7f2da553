"""Residual connections: Y = body(X) + shortcut(X), and the ResNet basic block built from them."""

from __future__ import annotations

from torch import Tensor

from ..calls import Freed
from ..module import Module, Sequential
from .activation import ReLU
from .conv import Conv2d
from .normalization import BatchNorm2d


class Residual(Module):
    """Y = body(X) + shortcut(X); the shortcut is the identity when None."""

    def __init__(self, body: Module, shortcut: Module | None = None) -> None:
        super().__init__()
        self.body, self.shortcut = body, shortcut

    def forward(self, x: Tensor) -> Tensor:
        y = self.body(x)
        body_call = self.body.__dict__["_last"]
        skip = x if self.shortcut is None else self.shortcut(x)
        if y.shape != skip.shape:
            raise ValueError(f"Residual: body output {list(y.shape)} and shortcut output {list(skip.shape)} differ; "
                             "give a shortcut that projects X to the body's shape")
        out = y + skip
        if Module.lean:  # the sum is all that reads the branches' outputs: drop them where no backward reads them
            branches = [(self.body, body_call, y)]
            if self.shortcut is not None:
                branches.append((self.shortcut, self.shortcut.__dict__["_last"], skip))
            for branch, call, t in branches:
                if call.out is t and not branch.backward_reads_output() and not branch.keeps_output():
                    call.replace(t, Freed(t))
        return out

    def backward_reads_input(self) -> bool:
        return self.body.backward_reads_input() or (self.shortcut is not None and
                                                    self.shortcut.backward_reads_input())

    def backward_reads_output(self) -> bool:
        return False

    def bwd(self, dy: Tensor, x: Tensor) -> Tensor | None:
        """dX = body.bwd(dY) + shortcut.bwd(dY)  (dY itself for the identity): X fans out, so both add into X.g."""
        self.body.backward(dy, needs_input_grad=self.needs_input_grad)
        if self.shortcut is None:
            return dy  # added into X.g by Module.backward
        self.shortcut.backward(dy, needs_input_grad=self.needs_input_grad)
        return None


def conv_bn(ni: int, nf: int, kernel_size: int = 3, stride: int = 1) -> Sequential:
    """Conv2d (no bias: the batch norm's beta takes its place) then BatchNorm2d."""
    return Sequential(Conv2d(ni, nf, kernel_size, stride, padding=kernel_size // 2, bias=False), BatchNorm2d(nf))


def res_block(ni: int, nf: int, stride: int = 1) -> Sequential:
    """The ResNet basic block: relu(conv_bn(relu(conv_bn(X))) + shortcut(X)).

    The shortcut is the identity when shapes agree, else a 1x1 conv_bn with the block's stride.
    """
    body = Sequential(conv_bn(ni, nf, 3, stride), ReLU(), conv_bn(nf, nf, 3, 1))
    shortcut = None if (ni == nf and stride == 1) else conv_bn(ni, nf, 1, stride)
    return Sequential(Residual(body, shortcut), ReLU())
