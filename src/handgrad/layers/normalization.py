"""BatchNorm1d, BatchNorm2d and LayerNorm, with the closed-form backward of a normalisation."""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor

from ..module import Module, Parameter, add_grad


def check_eps(owner: str, eps: object) -> None:
    """Raise ValueError unless eps is a positive finite number (it keeps 1 / sqrt(var + eps) finite)."""
    if not (isinstance(eps, numbers.Real) and not isinstance(eps, bool) and math.isfinite(eps) and eps > 0):
        raise ValueError(f"{owner}: eps must be a positive finite number, got {eps!r}")


class _BatchNorm(Module):
    """Y = gamma * (X - mean) / sqrt(var + eps) + beta, per channel (dim 1).

    Training: mean and (biased) var of the batch, and running statistics updated with
    `momentum` (running_var from the unbiased var), as torch.nn does; momentum=None makes them
    the cumulative average of all batches so far (factor 1 / num_batches_tracked). Eval: the running ones.
    """

    dims_allowed: tuple[int, ...] = ()
    input_desc = ""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True, *,
                 dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> None:
        super().__init__()
        name = type(self).__name__
        if not (isinstance(num_features, numbers.Integral) and not isinstance(num_features, bool)
                and num_features >= 1):
            raise ValueError(f"{name}: num_features must be a positive int, got {num_features!r}")
        check_eps(name, eps)
        if momentum is not None and not (isinstance(momentum, numbers.Real) and not isinstance(momentum, bool)
                                         and 0 <= momentum <= 1):
            raise ValueError(f"{name}: momentum must be None or a number in [0, 1], got {momentum!r}")
        num_features = int(num_features)
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        kw = {"dtype": dtype, "device": device}
        self.weight = Parameter(torch.ones(num_features, **kw)) if affine else None
        self.bias = Parameter(torch.zeros(num_features, **kw)) if affine else None
        self.running_mean = torch.zeros(num_features, **kw)
        self.running_var = torch.ones(num_features, **kw)
        self.num_batches_tracked = torch.zeros((), dtype=torch.long, device=device)

    def buffer_names(self) -> tuple[str, ...]:
        return ("running_mean", "running_var", "num_batches_tracked")

    def _shape(self, x: Tensor) -> tuple[int, ...]:
        """(1, C, 1, ...) to broadcast per-channel vectors against x."""
        name = type(self).__name__
        if x.dim() not in self.dims_allowed:
            raise ValueError(f"{name} expects input {self.input_desc}, got {list(x.shape)}")
        if x.shape[1] != self.num_features:
            raise ValueError(f"{name}({self.num_features}) expects {self.num_features} channels, got {x.shape[1]} "
                             f"(input {list(x.shape)})")
        return (1, -1) + (1,) * (x.dim() - 2)

    def backward_reads_input(self) -> bool:
        return getattr(self, "xhat", None) is None  # training keeps xhat; eval recomputes it from X

    def backward_reads_output(self) -> bool:
        return False

    def forward(self, x: Tensor) -> Tensor:
        shape = self._shape(x)
        if not self.training:  # one fused pass of the running statistics' affine map
            self.xhat = None
            self.invstd = (self.running_var + self.eps).rsqrt()
            y, _, _ = torch.native_batch_norm(x, self.weight, self.bias, self.running_mean, self.running_var, False,
                                              0.0, self.eps)  # momentum: unused in eval
            return y
        dims = (0,) + tuple(range(2, x.dim()))
        m = x.numel() // x.shape[1]
        if m == 1:
            raise ValueError(f"{type(self).__name__} in training needs more than one value per channel; got "
                             f"input {list(x.shape)} (batch size 1): use a larger batch or eval()")
        # two-pass statistics (centre, then square); xhat is kept for the backward. In place where nothing
        # tracks these tensors (autograd does only when the gradient checker runs this forward as reference)
        tracked = torch.is_grad_enabled() and (x.requires_grad or (self.weight is not None and
                                                                  self.weight.requires_grad))
        mean = x.mean(dims, keepdim=True)  # (1, C, 1, ...)
        xc = x - mean
        var = (xc * xc).mean(dims, keepdim=True)  # biased, as the normalisation uses
        invstd = (var + self.eps).rsqrt()
        self.xhat = xc * invstd if tracked else xc.mul_(invstd)  # (N, C, ...)
        self.invstd = invstd.view(-1)
        # running statistics: r <- (1 - f) r + f batch (the variance unbiased, as torch keeps it), f = momentum, or
        # f = 1 / num_batches_tracked (counting this batch) for momentum=None: the mean of all batches so far
        self.num_batches_tracked.add_(1)
        f = self.momentum if self.momentum is not None else \
            self.num_batches_tracked.to(self.running_mean.dtype).reciprocal()  # a tensor: no device sync
        self.running_mean.lerp_(mean.detach().view(-1), f)
        self.running_var.lerp_(var.detach().view(-1) * (m / (m - 1)), f)
        if self.weight is None:
            return self.xhat.clone()
        return torch.addcmul(self.bias.view(shape), self.xhat, self.weight.view(shape)) if tracked else \
            (self.xhat * self.weight.view(shape)).add_(self.bias.view(shape))

    def bwd(self, dy: Tensor, x: Tensor) -> Tensor | None:
        """train: dX = gamma invstd (dY - dbeta / M - xhat dgamma / M);  eval: dX = gamma invstd dY;
        dgamma = sum(dY xhat), dbeta = sum(dY), sums over the M values of each channel.

        (The closed form of invstd (g - mean(g) - xhat mean(g xhat)) with g = gamma dY per channel.)
        """
        shape = self._shape(x)
        dims = (0,) + tuple(range(2, x.dim()))
        xhat = self.xhat
        if xhat is None:  # eval: normalised with the running statistics
            xhat = (x - self.running_mean.view(shape)).mul_(self.invstd.view(shape))
        dgamma = (dy * xhat).sum(dims)
        dbeta = dy.sum(dims)
        if self.weight is not None:
            add_grad(self.weight, dgamma)
            add_grad(self.bias, dbeta)
        if not self.needs_input_grad:
            return None
        scale = self.invstd if self.weight is None else self.weight * self.invstd  # (C,)
        if self.xhat is None:
            return dy * scale.view(shape)
        m = x.numel() // x.shape[1]
        # scale (dY - dbeta / M - xhat dgamma / M): in place over the saved xhat inside lean() (in-place ops
        # with a per-channel operand are several times faster on CPU than out-of-place broadcasting ones)
        k = (-scale * dgamma / m).view(shape)
        dx = xhat.mul_(k) if self.lean else xhat * k  # - scale xhat dgamma / M
        return dx.addcmul_(dy, scale.view(shape)).sub_((scale * dbeta / m).view(shape))  # + scale (dY - dbeta / M)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.weight is not None}"


class BatchNorm1d(_BatchNorm):
    """Batch normalisation of [N, C] or [N, C, L] inputs, per channel."""

    dims_allowed = (2, 3)
    input_desc = "[N, C] or [N, C, L]"


class BatchNorm2d(_BatchNorm):
    """Batch normalisation of [N, C, H, W] inputs, per channel."""

    dims_allowed = (4,)
    input_desc = "[N, C, H, W]"


class LayerNorm(Module):
    """Y = gamma * (X - mean) / sqrt(var + eps) + beta, statistics over the last len(normalized_shape) dims."""

    def __init__(self, normalized_shape: int | tuple[int, ...], eps: float = 1e-5, elementwise_affine: bool = True,
                 bias: bool = True, *, dtype: torch.dtype | None = None,
                 device: torch.device | str | None = None) -> None:
        super().__init__()
        shape = (normalized_shape,) if isinstance(normalized_shape, numbers.Integral) else \
            tuple(normalized_shape) if isinstance(normalized_shape, (tuple, list, torch.Size)) else None
        if not shape or not all(isinstance(d, numbers.Integral) and not isinstance(d, bool) and d >= 1
                                for d in shape):
            raise ValueError(f"LayerNorm: normalized_shape must be a positive int or a non-empty tuple of them, "
                             f"got {normalized_shape!r}")
        check_eps("LayerNorm", eps)
        self.normalized_shape = tuple(int(d) for d in shape)
        self.eps = eps
        kw = {"dtype": dtype, "device": device}
        self.weight = Parameter(torch.ones(self.normalized_shape, **kw)) if elementwise_affine else None
        self.bias = Parameter(torch.zeros(self.normalized_shape, **kw)) if elementwise_affine and bias else None

    def _dims(self, x: Tensor) -> tuple[int, ...]:
        k = len(self.normalized_shape)
        if tuple(x.shape[-k:]) != self.normalized_shape:
            raise ValueError(f"LayerNorm({list(self.normalized_shape)}) expects input [..., "
                             f"{', '.join(map(str, self.normalized_shape))}], got {list(x.shape)}")
        return tuple(range(x.dim() - k, x.dim()))

    def forward(self, x: Tensor) -> Tensor:
        self._dims(x)
        # torch's fused kernel for the forward (statistics in one pass); backward keeps the mean and 1/std
        y, self.mean, self.invstd = torch.native_layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return y

    def backward_reads_output(self) -> bool:
        return False

    def bwd(self, dy: Tensor, x: Tensor) -> Tensor | None:
        """xhat = (X - mean) invstd, rebuilt from X and the statistics forward kept;
        dgamma = sum(dY xhat), dbeta = sum(dY), the sums over the leading dims (none for an unbatched input);
        dX = invstd (g - mean(g) - xhat mean(g xhat)), g = dY gamma, the means over the normalised dims.

        Worked on rows of D = prod(normalized_shape) values: the row means of g and g xhat are matrix-vector
        products with gamma, and dX is formed in place over xhat."""
        self._dims(x)
        d = math.prod(self.normalized_shape)
        mean, invstd = self.mean.reshape(-1, 1), self.invstd.reshape(-1, 1)  # (M, 1)
        if self.lean:  # nothing reads them any more: their memory goes with this backward
            self.mean = self.invstd = None
        x2, dy2 = x.reshape(-1, d), dy.reshape(-1, d)  # (M, D); an unbatched input is one row
        batched = x.dim() > len(self.normalized_shape)
        xhat = torch.sub(x2, mean).mul_(invstd)
        dyx = dy2 * xhat
        gamma = None if self.weight is None else self.weight.reshape(d)
        if gamma is not None:
            add_grad(self.weight, (dyx.sum(0) if batched else dyx[0]).view(self.normalized_shape))
        if self.bias is not None:
            add_grad(self.bias, (dy2.sum(0) if batched else dy2[0]).view(self.normalized_shape))
        if not self.needs_input_grad:
            return None
        mean_gx = (dyx @ gamma if gamma is not None else dyx.sum(1)).div_(d)[:, None]  # mean(g xhat), (M, 1)
        mean_g = (dy2 @ gamma if gamma is not None else dy2.sum(1)).div_(d)[:, None]  # mean(g)
        del dyx
        dx = xhat.mul_(mean_gx.neg_()).sub_(mean_g)  # - xhat mean(g xhat) - mean(g)
        dx = dx.addcmul_(dy2, gamma) if gamma is not None else dx.add_(dy2)  # + g
        return dx.mul_(invstd).view(x.shape)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.weight is not None}"
