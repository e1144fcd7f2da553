"""Deliberately wrong hand-written backward passes (and right ones), for the diagnosis tests."""

import torch

import handgrad as hg


class GoodLinear(hg.Module):
    def __init__(self, n_in=4, n_out=3):
        super().__init__()
        self.w = hg.Parameter(torch.randn(n_in, n_out))
        self.b = hg.Parameter(torch.randn(n_out))

    def forward(self, x):
        return x @ self.w + self.b

    def bwd(self, dy, x):
        hg.add_grad(self.w, x.t() @ dy)
        hg.add_grad(self.b, dy.sum(0))
        return dy @ self.w.t()


class TransposedWeightGrad(GoodLinear):
    def bwd(self, dy, x):
        hg.add_grad(self.w, dy.t() @ x)  # (out, in) instead of (in, out)
        hg.add_grad(self.b, dy.sum(0))
        return dy @ self.w.t()


class BiasNotSummed(GoodLinear):
    def bwd(self, dy, x):
        hg.add_grad(self.w, x.t() @ dy)
        hg.add_grad(self.b, dy)  # forgot .sum(0)
        return dy @ self.w.t()


class ForgottenBiasGrad(GoodLinear):
    def bwd(self, dy, x):
        hg.add_grad(self.w, x.t() @ dy)
        return dy @ self.w.t()


class SignFlippedInputGrad(GoodLinear):
    def bwd(self, dy, x):
        hg.add_grad(self.w, x.t() @ dy)
        hg.add_grad(self.b, dy.sum(0))
        return -(dy @ self.w.t())


class MeanSquare(hg.Module):
    """Y = mean(X^2) over the batch rows: (N, D) -> (D,)."""

    def forward(self, x):
        return (x * x).mean(0)

    def bwd(self, dy, x):
        return 2 * x * dy / x.shape[0]


class MeanSquareMissingN(MeanSquare):
    def bwd(self, dy, x):
        return 2 * x * dy  # missing 1/N


class ShiftedReLU(hg.Module):
    """Y = max(X, 0) - 0.5: the mask must come from X, not from Y."""

    def forward(self, x):
        return x.clamp_min(0) - 0.5

    def bwd(self, dy, x):
        return dy * (x > 0)


class ShiftedReLUMaskOnOutput(ShiftedReLU):
    def bwd(self, dy, x):
        return dy * (self.out > 0)  # wrong where 0 < X < 0.5


class Square(hg.Module):
    """Y = X^2 element-wise: shape in == shape out, where dY drawn like X would hide a mix-up."""

    def forward(self, x):
        return x * x

    def bwd(self, dy, x):
        return 2 * x * dy


class SquareUsesDyForX(Square):
    def bwd(self, dy, x):
        return 2 * dy * dy  # dy where x belongs: right only when dY == X


class NotAModule:
    pass


class NeedsFourFeatures(GoodLinear):
    def forward(self, x):
        if x.shape[-1] != 4:
            raise ValueError(f"expected 4 features, got {x.shape[-1]}")
        return super().forward(x)
