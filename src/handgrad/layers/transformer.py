"""What a GPT needs beyond attention: a learned position embedding and the pre-LayerNorm residual block.

`PositionEmbedding(block_size, d)` adds a learned vector per position to a batch of token embeddings (N, T, d);
`Block(d_model, n_head)` is GPT-2's block, x + attn(ln_1(x)) then x + mlp(ln_2(x)) with causal self-attention and
a 4x GELU MLP, composed of handgrad layers (its backward is the replay of theirs).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..module import Module, Parameter, Sequential, add_grad
from .activation import GELU
from .attention import MultiheadAttention
from .linear import Linear
from .normalization import LayerNorm
from .residual import Residual


class PositionEmbedding(Module):
    """Y[n, t] = X[n, t] + P[t]   (X: (N, T, d), P: (block_size, d), N(0, 0.02^2) as GPT-2 starts it)."""

    def __init__(self, block_size: int, embedding_dim: int, *, dtype: torch.dtype | None = None,
                 device: torch.device | str | None = None) -> None:
        super().__init__()
        self.block_size, self.embedding_dim = block_size, embedding_dim
        self.weight = Parameter(torch.randn(block_size, embedding_dim, dtype=dtype, device=device) * 0.02)

    def backward_reads_input(self) -> bool:
        return False

    def backward_reads_output(self) -> bool:
        return False

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 3 or x.shape[-1] != self.embedding_dim or x.shape[1] > self.block_size:
            raise ValueError(f"PositionEmbedding({self.block_size}, {self.embedding_dim}) expects [N, T, "
                             f"{self.embedding_dim}] with T <= {self.block_size}, got {list(x.shape)}")
        return x + self.weight[: x.shape[1]]

    def bwd(self, dy: Tensor, x: Tensor) -> Tensor:
        """dX = dY,  dP[t] = sum over the batch of dY[:, t]  (rows past T get none)."""
        dp = torch.zeros_like(self.weight)
        dp[: dy.shape[1]] = dy.sum(0)
        add_grad(self.weight, dp)
        return dy

    def extra_repr(self) -> str:
        return f"{self.block_size}, {self.embedding_dim}"


class CausalSelfAttention(Module):
    """LayerNorm then causal self-attention (batch first), its output alone: the first branch of a GPT block."""

    def __init__(self, d_model: int, n_head: int, *, recompute: bool = False, dtype: torch.dtype | None = None,
                 device: torch.device | str | None = None) -> None:
        super().__init__()
        self.ln = LayerNorm(d_model, dtype=dtype, device=device)
        self.attn = MultiheadAttention(d_model, n_head, batch_first=True, recompute=recompute, dtype=dtype,
                                       device=device)

    def forward(self, x: Tensor) -> Tensor:
        h = self.ln(x)
        out, _ = self.attn(h, h, h, is_causal=True, need_weights=False)
        return out


def Block(d_model: int, n_head: int, *, recompute: bool = False, dtype: torch.dtype | None = None,
          device: torch.device | str | None = None) -> Sequential:  # noqa: N802 - a layer's name, as torch's
    """GPT-2's pre-LayerNorm block: x + attn(ln_1(x)), then x + mlp(ln_2(x)), mlp = Linear(d, 4d), GELU, Linear."""
    kw = {"dtype": dtype, "device": device}
    mlp = Sequential(LayerNorm(d_model, **kw), Linear(d_model, 4 * d_model, init="torch", **kw), GELU(),
                     Linear(4 * d_model, d_model, init="torch", **kw))
    return Sequential(Residual(CausalSelfAttention(d_model, n_head, recompute=recompute, **kw)), Residual(mlp))
