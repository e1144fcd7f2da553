"""Embedding: a table look-up whose backward adds each row's gradient back into the table."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..init import init_tensor
from ..module import Module, Parameter, add_grad


class Embedding(Module):
    """Y[...] = W[idx[...]]  (W: (num_embeddings, embedding_dim), N(0, 1) like torch.nn.Embedding).

    The row `padding_idx` starts at zero and gets no gradient from this layer, as torch.nn.Embedding's: it
    stays a fixed pad unless something else writes into it (e.g. an output layer tied to this table, whose
    gradient does reach it), and positions holding it read whatever the row holds.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None, *,
                 dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> None:
        super().__init__()
        if padding_idx is not None:
            if not -num_embeddings <= padding_idx < num_embeddings:
                raise ValueError(f"Embedding({num_embeddings}, {embedding_dim}): padding_idx must be in "
                                 f"[{-num_embeddings}, {num_embeddings - 1}], got {padding_idx}")
            padding_idx %= num_embeddings  # torch's: a negative index counts from the end
        self.num_embeddings, self.embedding_dim, self.padding_idx = num_embeddings, embedding_dim, padding_idx
        w = init_tensor((num_embeddings, embedding_dim), 1, "randn", dtype=dtype, device=device)
        if padding_idx is not None:
            w[padding_idx] = 0.0
        self.weight = Parameter(w)

    def forward(self, idx: Tensor) -> Tensor:
        name = f"Embedding({self.num_embeddings}, {self.embedding_dim})"
        if idx.is_floating_point() or idx.dtype == torch.bool or idx.is_complex():
            raise ValueError(f"{name} expects integer indices, got dtype {idx.dtype}")
        if idx.numel():
            lo, hi = int(idx.min()), int(idx.max())
            if lo < 0 or hi >= self.num_embeddings:
                bad = lo if lo < 0 else hi
                raise ValueError(f"{name}: index {bad} out of range, expected indices in "
                                 f"[0, {self.num_embeddings - 1}]")
        # W[idx] (..., embedding_dim); through F.embedding so that autograd, where a reference runs this forward,
        # knows the padding row as well
        return F.embedding(idx, self.weight, self.padding_idx)

    def bwd(self, dy: Tensor, idx: Tensor) -> None:
        """dW[k] = sum of dY[...] over the positions where idx[...] == k (none for padding_idx)."""
        dw = torch.zeros_like(self.weight).index_add_(0, idx.reshape(-1), dy.reshape(-1, self.embedding_dim))
        if self.padding_idx is not None:
            dw[self.padding_idx] = 0.0
        add_grad(self.weight, dw)
        return None

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}" + (
            f", padding_idx={self.padding_idx}" if self.padding_idx is not None else "")
