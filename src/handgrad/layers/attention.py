"""MultiheadAttention: torch.nn's, with the backward through both matmuls and the softmax written by hand.

Parameters as torch.nn.MultiheadAttention names them (`in_proj_weight` (3E, E), `in_proj_bias` (3E,), `out_proj`
a Linear), so each loads the other's state_dict. forward(query, key, value, attn_mask=None, is_causal=False,
need_weights=True) returns (attn_output, weights averaged over the heads, or None), inputs (L, N, E) or, with
batch_first, (N, L, E). `recompute=True` keeps only the projected q, k, v and recomputes the attention
probabilities in backward instead of keeping the (N*heads, L, S) matrix.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..module import Module, Parameter, accumulate_mm, accumulate_sum
from .linear import Linear


class MultiheadAttention(Module):
    """Y = softmax(Q K^T / sqrt(d) + mask) V, per head, with Q, K, V = X_q W_q^T + b_q, ... and Y W_o + b_o."""

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True,
                 batch_first: bool = False, *, recompute: bool = False, dtype: torch.dtype | None = None,
                 device: torch.device | str | None = None) -> None:
        super().__init__()
        if isinstance(embed_dim, bool) or not isinstance(embed_dim, int) or embed_dim < 1 or \
                isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 1 or \
                embed_dim % num_heads:
            raise ValueError(f"MultiheadAttention: embed_dim must be a positive multiple of num_heads, got "
                             f"{embed_dim!r} and {num_heads!r}")
        if dropout != 0.0:
            raise ValueError(f"MultiheadAttention: dropout on the attention weights is not written yet, got {dropout}")
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, embed_dim // num_heads
        self.batch_first, self.recompute, self.dropout = batch_first, recompute, dropout
        kw = {"dtype": dtype, "device": device}
        bound = math.sqrt(6.0 / (embed_dim + 3 * embed_dim))  # torch's xavier_uniform_ on (3E, E)
        self.in_proj_weight = Parameter(torch.empty(3 * embed_dim, embed_dim, **kw).uniform_(-bound, bound))
        self.in_proj_bias = Parameter(torch.zeros(3 * embed_dim, **kw)) if bias else None
        self.out_proj = Linear(embed_dim, embed_dim, bias=bias, init="torch", dtype=dtype, device=device)
        if bias:
            self.out_proj.bias.data.zero_()

    # ---------------------------------------------------------------- helpers
    def _heads(self, t: Tensor) -> Tensor:
        """(L, N, E) -> (N*H, L, d)."""
        length, n, _ = t.shape
        return t.reshape(length, n * self.num_heads, self.head_dim).transpose(0, 1)

    def _unheads(self, t: Tensor, n: int) -> Tensor:
        """(N*H, L, d) -> (L, N, E)."""
        return t.transpose(0, 1).reshape(t.shape[1], n, self.embed_dim)

    def _mask(self, attn_mask: Tensor | None, is_causal: bool, length: int, source: int, like: Tensor) -> Tensor | None:
        """An additive (L, S) or (N*H, L, S) mask: -inf where a bool mask is True, a float mask as it is."""
        if attn_mask is None and not is_causal:
            return None
        if attn_mask is None:
            attn_mask = torch.ones(length, source, dtype=torch.bool, device=like.device).triu(1)
        if attn_mask.dtype == torch.bool:
            return torch.zeros(attn_mask.shape, dtype=like.dtype, device=like.device).masked_fill(attn_mask,
                                                                                                  float("-inf"))
        return attn_mask.to(like.dtype)

    def _probs(self, q: Tensor, k: Tensor, mask: Tensor | None) -> Tensor:
        scores = torch.baddbmm(mask.expand(q.shape[0], -1, -1), q, k.transpose(1, 2), alpha=1 / math.sqrt(
            self.head_dim)) if mask is not None else torch.bmm(q, k.transpose(1, 2)) / math.sqrt(self.head_dim)
        return torch.softmax(scores, dim=-1)  # (N*H, L, S)

    # ---------------------------------------------------------------- forward
    def forward(self, query: Tensor, key: Tensor, value: Tensor, attn_mask: Tensor | None = None,
                is_causal: bool = False, need_weights: bool = True) -> tuple[Tensor, Tensor | None]:
        e = self.embed_dim
        if self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        for name, t in (("query", query), ("key", key), ("value", value)):
            if t.dim() != 3 or t.shape[-1] != e:
                raise ValueError(f"MultiheadAttention({e}, {self.num_heads}) expects {name} "
                                 f"{'[N, L, E]' if self.batch_first else '[L, N, E]'} with E = {e}, got "
                                 f"{list(t.shape)}")
        length, n, _ = query.shape
        source = key.shape[0]
        w, b = self.in_proj_weight, self.in_proj_bias
        bq, bk, bv = (None, None, None) if b is None else b.split(e)
        wq, wk, wv = w.split(e)
        q = self._heads(query @ wq.t() + (0 if bq is None else bq))  # (N*H, L, d)
        k = self._heads(key @ wk.t() + (0 if bk is None else bk))  # (N*H, S, d)
        v = self._heads(value @ wv.t() + (0 if bv is None else bv))  # (N*H, S, d)
        mask = self._mask(attn_mask, is_causal, length, source, q)
        p = self._probs(q, k, mask)  # (N*H, L, S)
        o = self._unheads(torch.bmm(p, v), n)  # (L, N, E)
        out = o @ self.out_proj.weight + (0 if self.out_proj.bias is None else self.out_proj.bias)  # (L, N, E)
        self.q, self.k, self.v, self.o, self.mask = q, k, v, o, mask
        self.p = None if self.recompute else p
        self.need_weights = need_weights
        weights = p.view(n, self.num_heads, length, source).mean(1) if need_weights else None  # (N, L, S)
        if self.batch_first:
            out = out.transpose(0, 1)
        return out, weights

    def backward_reads_output(self) -> bool:
        return False

    def bwd(self, douts: tuple[Tensor, Tensor | None], query: Tensor, key: Tensor, value: Tensor,
            attn_mask: Tensor | None = None, is_causal: bool = False, need_weights: bool = True
            ) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        """dO = dY W_o^T,  dW_o = O^T dY,  db_o = sum dY;  per head: dP = dO V^T (+ dweights / H),  dV = P^T dO,
        dS = P * (dP - rowsum(dP * P)) / sqrt(d),  dQ = dS K,  dK = dS^T Q;  dX_q = dQ W_q, dW_q = dQ^T X_q,
        db_q = sum dQ (and so for K and V). A tensor passed as query, key and value gets the sum of the three."""
        dy, dweights = douts
        e, heads = self.embed_dim, self.num_heads
        if self.batch_first:
            dy = dy.transpose(0, 1)
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        length, n, _ = dy.shape
        q, k, v, o = self.q, self.k, self.v, self.o
        p = self.p if self.p is not None else self._probs(q, k, self.mask)
        dy2, o2 = dy.reshape(-1, e), o.reshape(-1, e)
        accumulate_mm(self.out_proj.weight, o2.t(), dy2)  # (E, E) in handgrad's (in, out) layout
        if self.out_proj.bias is not None:
            accumulate_sum(self.out_proj.bias, dy2, 0)
        do = self._heads(dy @ self.out_proj.weight.t())  # (N*H, L, d)
        dp = torch.bmm(do, v.transpose(1, 2))  # (N*H, L, S)
        if dweights is not None and self.need_weights:  # weights = mean over heads of P
            dp = dp + (dweights / heads).unsqueeze(1).expand(n, heads, length, -1).reshape_as(dp)
        dv = torch.bmm(p.transpose(1, 2), do)  # (N*H, S, d)
        ds = p * (dp - (dp * p).sum(-1, keepdim=True)) / math.sqrt(self.head_dim)  # (N*H, L, S)
        dq = torch.bmm(ds, k)  # (N*H, L, d)
        dk = torch.bmm(ds.transpose(1, 2), q)  # (N*H, S, d)
        wq, wk, wv = self.in_proj_weight.split(e)
        d_in = []
        dw = torch.empty_like(self.in_proj_weight)
        db = []
        for j, (dproj, x, wj) in enumerate(((dq, query, wq), (dk, key, wk), (dv, value, wv))):
            d2 = self._unheads(dproj, n).reshape(-1, e)  # (L*N, E)
            torch.mm(d2.t(), x.reshape(-1, e), out=dw[j * e:(j + 1) * e])  # (E, E)
            db.append(d2.sum(0))
            dx = (d2 @ wj).view(x.shape)  # (L, N, E)
            d_in.append(dx.transpose(0, 1) if self.batch_first else dx)
        from ..module import add_grad

        add_grad(self.in_proj_weight, dw)
        if self.in_proj_bias is not None:
            add_grad(self.in_proj_bias, torch.cat(db))
        return tuple(d_in) if self.needs_input_grad else (None, None, None)

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}" + \
            (", batch_first=True" if self.batch_first else "") + (", recompute=True" if self.recompute else "")
