"""Weight initialisation schemes."""

from __future__ import annotations

import math

import torch
from torch import Tensor

INITS = ("kaiming", "randn", "torch")


def init_tensor(shape: tuple[int, ...], fan_in: int, scheme: str = "kaiming", *, dtype: torch.dtype | None = None,
                device: torch.device | str | None = None) -> Tensor:
    """A weight of `shape` whose units each see `fan_in` inputs.

    kaiming: N(0, 2 / fan_in), which keeps activations' variance steady through ReLUs (He et al.).
    randn:   N(0, 1), the seeds' `torch.randn(m, nh)`.
    torch:   U(-1/sqrt(fan_in), 1/sqrt(fan_in)), what torch.nn.Linear and Conv2d draw by default.
    """
    w = torch.empty(shape, dtype=dtype, device=device)
    if scheme == "kaiming":
        return w.normal_(0.0, math.sqrt(2.0 / fan_in))
    if scheme == "randn":
        return w.normal_(0.0, 1.0)
    if scheme == "torch":
        bound = 1.0 / math.sqrt(fan_in)
        return w.uniform_(-bound, bound)
    raise ValueError(f"unknown init scheme {scheme!r}: expected one of {', '.join(INITS)}")


def init_weight(n_in: int, n_out: int, scheme: str = "kaiming", *, dtype: torch.dtype | None = None,
                device: torch.device | str | None = None) -> Tensor:
    """A (n_in, n_out) weight in the seeds' layout (see init_tensor for the schemes)."""
    return init_tensor((n_in, n_out), n_in, scheme, dtype=dtype, device=device)
