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


# ---- wrong in ways a single call with shuffled rows did not show, or right but failed before (the check's review)


class ChangesDyInPlace(GoodLinear):
    def bwd(self, dy, x):
        dy *= 2  # every gradient doubled, and the caller's dY with it (the references once read it: a false pass)
        hg.add_grad(self.w, x.t() @ dy)
        hg.add_grad(self.b, dy.sum(0))
        return dy @ self.w.t()


class SquareIntoDy(Square):
    def bwd(self, dy, x):
        return dy.mul_(2 * x)  # the right dX, written over dY (which is the output's .g, shared)


class SquareIntoX(Square):
    def bwd(self, dy, x):
        return x.mul_(2).mul_(dy)  # the right dX, written over the input


class SquareOverInput(Square):
    def forward(self, x):
        return x.mul_(x)  # the right Y, written over the input


class DropoutMaskOnce(hg.Module):
    """Dropout whose backward keeps the mask of its first call."""

    def forward(self, x):
        self.mask = (torch.rand_like(x) > 0.5).to(x.dtype) * 2
        return x * self.mask

    def bwd(self, dy, x):
        if "first_mask" not in self.__dict__:
            self.__dict__["first_mask"] = self.mask
        return dy * self.__dict__["first_mask"]


class BatchStatsOnce(hg.Module):
    """Y = (X - mean) / std over the batch (per feature); backward keeps the statistics of its first call (rows
    shuffled leave them as they are)."""

    def forward(self, x):
        return (x - x.mean(0)) / x.std(0, unbiased=False)

    def bwd(self, dy, x):
        if "stats" not in self.__dict__:
            self.__dict__["stats"] = (x.mean(0), x.std(0, unbiased=False))
        mean, std = self.__dict__["stats"]
        xhat = (x - mean) / std
        return (dy - dy.mean(0) - xhat * (dy * xhat).mean(0)) / std


class AbsWeightSignOnce(hg.Module):
    """Y = X |W|; backward keeps sign(W) from its first call (right until a weight crosses zero)."""

    def __init__(self, n_in=4, n_out=3):
        super().__init__()
        self.w = hg.Parameter(torch.randn(n_in, n_out))

    def forward(self, x):
        return x @ self.w.abs()

    def bwd(self, dy, x):
        if "sign" not in self.__dict__:
            self.__dict__["sign"] = torch.sign(self.w)
        hg.add_grad(self.w, (x.t() @ dy) * self.__dict__["sign"])
        return dy @ self.w.abs().t()


class ReluMaskOnceFromInput(hg.Module):
    def forward(self, x):
        return x.clamp_min(0)

    def bwd(self, dy, x):
        if "mask" not in self.__dict__:
            self.__dict__["mask"] = x > 0
        return dy * self.__dict__["mask"]


class SkipsWorkWithoutInputGrad(GoodLinear):
    def bwd(self, dy, x):
        if not self.needs_input_grad:
            return None  # the parameters' gradients skipped too: the first layer of a model never learns
        return super().bwd(dy, x)


class LazyLinearSignFlipped(hg.Module):
    """Makes its weight at the first forward (its input's width known then); its weight gradient's sign is wrong."""

    def forward(self, x):
        if "w" not in self.__dict__:
            self.w = hg.Parameter(torch.randn(x.shape[1], 3, dtype=x.dtype, generator=torch.Generator().manual_seed(0)))
        return x @ self.w

    def bwd(self, dy, x):
        hg.add_grad(self.w, -(x.t() @ dy))
        return dy @ self.w.t()


class TinyOutputZeroGrad(GoodLinear):
    def forward(self, x):
        return 1e-14 * (x @ self.w + self.b)

    def bwd(self, dy, x):
        hg.add_grad(self.w, 1e-14 * (x.t() @ dy))
        hg.add_grad(self.b, 1e-14 * dy.sum(0))
        return torch.zeros_like(x)  # wrong: 1e-14 dY W^T


class ScaleReadByFloat(hg.Module):
    """Y = a X with `a` read through float(): autograd cannot see it; the backward is right."""

    def __init__(self):
        super().__init__()
        self.a = hg.Parameter(torch.tensor(1.7))

    def forward(self, x):
        return float(self.a) * x

    def bwd(self, dy, x):
        hg.add_grad(self.a, (dy * x).sum())
        return dy * float(self.a)


class NoGradForward(Square):
    def forward(self, x):
        with torch.no_grad():
            return x * x


class ReluOfBias(hg.Module):
    """Y = X relu(b) with b at 0: on the kink, where finite differences see a slope of 1/2."""

    def __init__(self, n=4):
        super().__init__()
        self.b = hg.Parameter(torch.zeros(n))

    def forward(self, x):
        return x * torch.relu(self.b)

    def bwd(self, dy, x):
        hg.add_grad(self.b, (dy * x).sum(0) * (self.b > 0))  # relu'(0) = 0, as torch takes it
        return dy * torch.relu(self.b)


class EmptyParameter(Square):
    def __init__(self):
        super().__init__()
        self.unused = hg.Parameter(torch.zeros(0))


class TwoOutputs(hg.Module):
    def forward(self, x):
        return torch.tanh(x), 3 * x

    def bwd(self, douts, x):
        d1, d2 = douts
        return d1 * (1 - torch.tanh(x) ** 2) + 3 * d2


class ReturnsNumpy(Square):
    def bwd(self, dy, x):
        return (2 * x * dy).numpy()


class Sqrt(hg.Module):
    def forward(self, x):
        return x.sqrt()

    def bwd(self, dy, x):
        return dy / (2 * x.sqrt())


class SqrtOfXMinusOne(hg.Module):
    """Y = sqrt(X - 1): defined for X >= 1 only (the check's second call shrinks its inputs)."""

    def forward(self, x):
        return torch.sqrt(x - 1)

    def bwd(self, dy, x):
        return dy / (2 * torch.sqrt(x - 1))
