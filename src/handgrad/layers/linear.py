"""Linear: Y = X @ W + b, with the weight in the seeds' (n_in, n_out) layout."""

from __future__ import annotations

import torch
from torch import Tensor

from ..functional import lin
from ..init import init_weight
from ..module import Module, Parameter, accumulate_mm, accumulate_sum


class Linear(Module):
    """Y = X @ W + b   (X: (N, in_features), W: (in_features, out_features)).

    The weight is kept as the seeds keep it, (n_in, n_out), so `x @ w` needs no
    transpose and `weight.g` has the weight's shape. `state_dict()` exports it as
    torch.nn.Linear's (out_features, in_features), so the two load each other's
    state. init: 'kaiming' (default, for ReLU nets), 'randn' (the seeds') or
    'torch' (torch.nn.Linear's default); the bias starts at zero.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, init: str = "kaiming",
                 dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = Parameter(init_weight(in_features, out_features, init, dtype=dtype, device=device))
        self.bias = Parameter(torch.zeros(out_features, dtype=dtype, device=device)) if bias else None

    @classmethod
    def from_weights(cls, w: Tensor, b: Tensor | None = None) -> "Linear":
        """A Linear holding copies of the seeds' tensors: w (n_in, n_out) and b (n_out,)."""
        layer = cls(w.shape[0], w.shape[1], bias=b is not None, dtype=w.dtype, device=w.device)
        layer.weight.data.copy_(w)
        if b is not None:
            layer.bias.data.copy_(b)
        return layer

    def backward_reads_output(self) -> bool:
        return False

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1:] != (self.in_features,):
            raise ValueError(
                f"Linear({self.in_features} -> {self.out_features}) expects input [..., {self.in_features}], "
                f"got {list(x.shape)}"
            )
        return lin(x, self.weight, self.bias)  # (N, out_features)

    def bwd(self, dy: Tensor, x: Tensor) -> Tensor | None:
        """dX = dY @ W.T,  dW = X.T @ dY,  db = dY.sum(0)   (leading dims of X folded into N).

        dW and db go straight into the parameters' gradient buffers (`X.T @ dY` is a BLAS call on a
        transposed view: no copy); dX is skipped when nothing below needs it.
        """
        x2 = x.reshape(-1, x.shape[-1])  # (N, in_features)
        dy2 = dy.reshape(-1, dy.shape[-1])  # (N, out_features)
        accumulate_mm(self.weight, x2.t(), dy2)  # (in_features, out_features)
        if self.bias is not None:
            accumulate_sum(self.bias, dy2, 0)  # (out_features,)
        return dy @ self.weight.t() if self.needs_input_grad else None  # (..., in_features)

    def _export(self, name: str, t: Tensor) -> Tensor:
        return t.t() if name == "weight" else t

    def _import(self, name: str, t: Tensor) -> Tensor:
        return t.t() if name == "weight" else t

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class TiedLinear(Module):
    """Y = X @ E.T + b, E an (out_features, in_features) weight shared with another layer.

    The output projection of a language model tied to its token embedding: `TiedLinear(emb.weight)`
    reads the Embedding's (vocab, d) table as torch.nn.Linear(d, vocab) reads its weight, so the same
    Parameter sits in both layers, `parameters()` lists it once, and its `.g` is the sum of both uses.
    """

    def __init__(self, weight: Parameter, bias: bool = False) -> None:
        super().__init__()
        if not isinstance(weight, Parameter) or weight.dim() != 2:
            raise ValueError(f"TiedLinear expects another layer's 2-d Parameter (out_features, in_features), got "
                             f"{type(weight).__name__} of shape {list(getattr(weight, 'shape', []))}")
        self.out_features, self.in_features = weight.shape
        self.weight = weight
        self.bias = Parameter(torch.zeros(self.out_features, dtype=weight.dtype, device=weight.device)) \
            if bias else None

    def backward_reads_output(self) -> bool:
        return False

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1:] != (self.in_features,):
            raise ValueError(f"TiedLinear({self.in_features} -> {self.out_features}) expects input "
                             f"[..., {self.in_features}], got {list(x.shape)}")
        return lin(x, self.weight.t(), self.bias)  # (N, out_features)

    def bwd(self, dy: Tensor, x: Tensor) -> Tensor | None:
        """dX = dY @ E,  dE = dY.T @ X,  db = dY.sum(0)   (leading dims of X folded into N)."""
        x2 = x.reshape(-1, x.shape[-1])  # (N, in_features)
        dy2 = dy.reshape(-1, dy.shape[-1])  # (N, out_features)
        accumulate_mm(self.weight, dy2.t(), x2)  # (out_features, in_features)
        if self.bias is not None:
            accumulate_sum(self.bias, dy2, 0)
        return dy @ self.weight if self.needs_input_grad else None  # (..., in_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"
