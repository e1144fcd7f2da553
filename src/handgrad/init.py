"""Weight initialisation schemes for layers stored in the seeds' (n_in, n_out) layout."""

from __future__ import annotations

import math

import torch
from torch import Tensor

INITS = ("kaiming", "randn", "torch")


def init_weight(n_in: int, n_out: int, scheme: str = "kaiming", *, dtype: torch.dtype | None = None,
                device: torch.device | str | None = None) -> Tensor:
    """A (n_in, n_out) weight.

    kaiming: N(0, 2 / n_in), which keeps activations' variance steady through ReLUs (He et al.).
    randn:   N(0, 1), the seeds' `torch.randn(m, nh)`.
    torch:   U(-1/sqrt(n_in), 1/sqrt(n_in)), what torch.nn.Linear draws by default.
    """
    w = torch.empty(n_in, n_out, dtype=dtype, device=device)
    if scheme == "kaiming":
        return w.normal_(0.0, math.sqrt(2.0 / n_in))
    if scheme == "randn":
        return w.normal_(0.0, 1.0)
    if scheme == "torch":
        bound = 1.0 / math.sqrt(n_in)
        return w.uniform_(-bound, bound)
    raise ValueError(f"unknown init scheme {scheme!r}: expected one of {', '.join(INITS)}")
