"""MultiheadAttention: torch.nn's, with the backward through both matmuls and the softmax written by hand.

Parameters as torch.nn.MultiheadAttention names them (`in_proj_weight` (3E, E), `in_proj_bias` (3E,), `out_proj`
a Linear), so each loads the other's state_dict. forward(query, key, value, attn_mask=None, is_causal=False,
need_weights=True) returns (attn_output, weights averaged over the heads, or None), inputs (L, N, E) or, with
batch_first, (N, L, E). `recompute=True` keeps only the projected q, k, v and recomputes the attention
probabilities (and their product with v) in backward instead of keeping the (N*heads, L, S) matrix. Forward and
backward walk the scores in tiles (see `_tiles`): with the causal mask, the keys a block of queries cannot see are
never multiplied.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..module import Module, Parameter, accumulate_mm, accumulate_sum, add_grad
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
    # Inside, the layer works in its input's layout, (N, L, E) with batch_first or (L, N, E): "rows" are its L*N
    # tokens in that order. The per-head computations run batched over N*H: (N*H, L, d), head h of sample n at
    # n*H + h, as torch orders them.
    def _project(self, x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
        """X W^T + b for the rows of x (..., E) -> (..., rows of W): one GEMM, then the bias added in place (torch's
        addmm spreads the bias over its output first, which costs more)."""
        y = x.reshape(-1, x.shape[-1]) @ w.t()
        if b is not None:
            y.add_(b)
        return y.view(*x.shape[:-1], w.shape[0])

    def _in_proj(self) -> tuple[Tensor, Tensor | None]:
        """W_in and b_in with their q rows scaled by 1/sqrt(d): the projection then gives Q / sqrt(d) (kept as
        such), and the scores Q K^T / sqrt(d) are one plain batched GEMM."""
        e, scale = self.embed_dim, 1.0 / math.sqrt(self.head_dim)
        w, b = self.in_proj_weight, self.in_proj_bias
        w = torch.cat([w[:e] * scale, w[e:]])
        return w, None if b is None else torch.cat([b[:e] * scale, b[e:]])

    def _heads(self, t: Tensor, n: int) -> Tensor:
        """(B1, B2, k*E) in the layer's layout (k projections side by side) -> (k, N*H, L, d): a copy, but for shapes
        where the permutation moves nothing."""
        heads, d = self.num_heads, self.head_dim
        k = t.shape[-1] // self.embed_dim
        t = t.view(*t.shape[:2], k, heads, d)  # (B1, B2, k, H, d)
        t = t.permute(2, 0, 3, 1, 4) if self.batch_first else t.permute(2, 1, 3, 0, 4)  # (k, N, H, L, d)
        return t.reshape(k, n * heads, -1, d)

    def _unheads(self, t: Tensor, n: int) -> Tensor:
        """(k, N*H, L, d) -> (B1, B2, k*E) in the layer's layout: the inverse of _heads (a copy, but for shapes where
        the permutation moves nothing)."""
        k, _, length, d = t.shape
        t = t.view(k, n, self.num_heads, length, d)
        t = t.permute(1, 3, 0, 2, 4) if self.batch_first else t.permute(3, 1, 0, 2, 4)  # (B1, B2, k, H, d)
        return t.reshape(t.shape[0], t.shape[1], k * self.embed_dim)

    def _mask(self, attn_mask: Tensor | None, is_causal: bool, length: int, source: int, like: Tensor
              ) -> Tensor | None:
        """An additive (L, S) or (N*H, L, S) mask: -inf where a bool mask is True (the causal one: above the
        diagonal), a float mask as it is; None for none."""
        if attn_mask is None and not is_causal:
            return None
        if attn_mask is None:
            attn_mask = torch.ones(length, source, dtype=torch.bool, device=like.device).triu(1)
        if attn_mask.dtype == torch.bool:
            return torch.zeros(attn_mask.shape, dtype=like.dtype, device=like.device).masked_fill_(attn_mask,
                                                                                                   float("-inf"))
        return attn_mask.to(like.dtype)

    def _probs(self, q: Tensor, k: Tensor, mask: Tensor | None) -> Tensor:
        """P = softmax(Q K^T / sqrt(d) + mask) over the keys, from the pre-scaled Q; the mask added in place over
        the scores."""
        scores = torch.bmm(q, k.transpose(1, 2))
        if mask is None:
            return torch.softmax(scores, dim=-1)
        scores.add_(mask)
        p = torch.softmax(scores, dim=-1)
        if not self.__dict__.get("causal"):  # a row whose keys a mask hides all attends to nothing: P = 0, as torch
            p.masked_fill_(torch.isneginf(scores).all(-1, keepdim=True), 0.0)  # (not NaN from exp(-inf - -inf))
        return p

    ROW_BLOCK = 64  # causal attention: query rows per block
    CHUNK_FLOATS = 1 << 20  # scores per chunk of heads and block of rows (4 MiB in float32)

    def _tiles(self, heads: int, length: int, source: int, causal: bool, whole: bool
               ) -> list[tuple[slice, list[tuple[slice, slice]]]]:
        """How forward and backward walk the (N*H, L, S) scores: chunks of heads, each as blocks of query rows
        with the keys they see, [(heads, [(rows, keys), ...]), ...]. With the causal mask, rows r0..r1-1 see keys
        0..r1-1 only, so the keys after a block's last row are never multiplied (a quarter of the work for two
        blocks), and the scores of a block are never all of them alive. `whole`: one chunk, one block (P is kept or
        returned whole)."""
        if whole:
            return [(slice(0, heads), [(slice(0, length), slice(0, source))])]
        rb = self.ROW_BLOCK if causal and length > self.ROW_BLOCK else length
        blocks = [(slice(r0, min(r0 + rb, length)), slice(0, min(r0 + rb, source) if causal else source))
                  for r0 in range(0, length, rb)]
        chunk = max(1, self.CHUNK_FLOATS // (rb * source))
        return [(slice(h0, min(h0 + chunk, heads)), blocks) for h0 in range(0, heads, chunk)]

    @staticmethod
    def _bmm_into(dst: Tensor, a: Tensor, b: Tensor) -> None:
        """dst = a @ b, batched; through a temporary where dst is a window of rows (torch's bmm would fill that
        matrix by matrix)."""
        if dst.is_contiguous():
            torch.bmm(a, b, out=dst)
        else:
            dst.copy_(torch.bmm(a, b))

    @staticmethod
    def _part(mask: Tensor | None, heads: slice, rows: slice, keys: slice) -> Tensor | None:
        """The mask's window for a tile: an (L, S) mask is shared by all heads, an (N*H, L, S) one is sliced."""
        if mask is None:
            return None
        return mask[rows, keys] if mask.dim() == 2 else mask[heads, rows, keys]

    # ---------------------------------------------------------------- forward
    def forward(self, query: Tensor, key: Tensor, value: Tensor, attn_mask: Tensor | None = None,
                is_causal: bool = False, need_weights: bool = True) -> tuple[Tensor, Tensor | None]:
        e = self.embed_dim
        for name, t in (("query", query), ("key", key), ("value", value)):
            if t.dim() != 3 or t.shape[-1] != e:
                raise ValueError(f"MultiheadAttention({e}, {self.num_heads}) expects {name} "
                                 f"{'[N, L, E]' if self.batch_first else '[L, N, E]'} with E = {e}, got "
                                 f"{list(t.shape)}")
        n, length, source = (query.shape[0], query.shape[1], key.shape[1]) if self.batch_first else \
            (query.shape[1], query.shape[0], key.shape[0])
        w, b = self._in_proj()
        if query is key and key is value:  # self-attention: q, k and v from one GEMM, split into heads in one copy
            q, k, v = self._heads(self._project(query, w, b), n).unbind(0)  # (N*H, L, d) each, q / sqrt(d)
        else:
            bs = (None, None, None) if b is None else b.split(e)
            q, k, v = (self._heads(self._project(t, wj, bj), n)[0] for t, wj, bj in zip((query, key, value),
                                                                                        w.split(e), bs))
        mask = self._mask(attn_mask, is_causal, length, source, q)
        causal = is_causal and attn_mask is None  # only then are the keys after a row known to be masked
        self.causal = causal  # (read by _probs: a causal row always sees its own key)
        whole = need_weights or not self.recompute  # P is returned or kept: made whole
        o_parts, p = [], None
        for hs, blocks in self._tiles(q.shape[0], length, source, causal, whole):
            rows = []
            for r, c in blocks:
                p = self._probs(q[hs, r], k[hs, c], self._part(mask, hs, r, c))  # (heads, rows, keys)
                rows.append(torch.bmm(p, v[hs, c]))
            o_parts.append(torch.cat(rows, 1) if len(rows) > 1 else rows[0])
        o_heads = torch.cat(o_parts) if len(o_parts) > 1 else o_parts[0]  # (N*H, L, d)
        o = self._unheads(o_heads[None], n)  # (B1, B2, E)
        out = self._project(o, self.out_proj.weight.t(), self.out_proj.bias)  # O W_o + b_o   (W_o kept (in, out))
        self.q, self.k, self.v, self.mask, self.causal, self.need_weights = q, k, v, mask, causal, need_weights
        self.o = None if self.recompute else o  # with recompute, O = P V is made again in backward
        self.p = None if self.recompute else p
        weights = p.view(n, self.num_heads, length, source).mean(1) if need_weights else None  # (N, L, S)
        return out, weights

    def backward_reads_output(self) -> bool:
        return False

    def bwd(self, douts: tuple[Tensor, Tensor | None], query: Tensor, key: Tensor, value: Tensor,
            attn_mask: Tensor | None = None, is_causal: bool = False, need_weights: bool = True
            ) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        """dO = dY W_o^T,  dW_o = O^T dY,  db_o = sum dY;  per head: dP = dO V^T (+ dweights / H),  dV = P^T dO,
        dS = P * (dP - rowsum(dP * P)),  dQ = dS K / sqrt(d),  dK = dS^T Q / sqrt(d);  dX_q = dQ W_q,
        dW_q = dQ^T X_q, db_q = sum dQ (and so for K and V). A tensor passed as query, key and value gets the sum of
        the three, from one GEMM with the stacked dQ, dK, dV.

        With recompute=True, P (and O = P V with it) is recomputed tile by tile from Q and K, as forward made it
        (see _tiles); dS is formed in place over dP."""
        dy, dweights = douts
        e, heads = self.embed_dim, self.num_heads
        n = dy.shape[0] if self.batch_first else dy.shape[1]
        q, k, v, mask = self.q, self.k, self.v, self.mask
        length, source = q.shape[1], k.shape[1]
        dy2 = dy.reshape(-1, e)
        if self.out_proj.bias is not None:
            accumulate_sum(self.out_proj.bias, dy2, 0)
        do = self._heads(self._project(dy, self.out_proj.weight, None), n)[0]  # dY W_o^T as (N*H, L, d)
        if dweights is not None and self.need_weights:  # weights = mean over heads of P: dP gets dweights / H
            dweights = (dweights / heads).unsqueeze(1).expand(n, heads, length, source).reshape(-1, length, source)
        else:
            dweights = None
        one = query is key and key is value  # self-attention: dQ, dK, dV stacked, for one GEMM below
        tiles = self._tiles(q.shape[0], length, source, self.causal, self.p is not None)
        # the row blocks run last to first: the last one sees every key (but for a causal mask with more keys than
        # queries) and writes dK and dV; the earlier ones add theirs into the keys they see
        new = torch.empty if tiles[0][1][-1][1].stop == source else torch.zeros
        dqkv = new(3, *q.shape, dtype=q.dtype, device=q.device) if one else None
        dq, dk, dv = dqkv.unbind(0) if one else (new(q.shape, dtype=q.dtype, device=q.device),
                                                 new(k.shape, dtype=q.dtype, device=q.device),
                                                 new(v.shape, dtype=q.dtype, device=q.device))
        o_heads = None if self.o is not None else q.new_empty(q.shape[0], length, v.shape[2])  # O = P V, for dW_o
        p = dp = ds = None
        for hs, blocks in tiles:
            for j, (r, c) in enumerate(reversed(blocks)):
                p = self.p if self.p is not None else self._probs(q[hs, r], k[hs, c], self._part(mask, hs, r, c))
                if o_heads is not None:
                    self._bmm_into(o_heads[hs, r], p, v[hs, c])
                dp = torch.bmm(do[hs, r], v[hs, c].transpose(1, 2))  # (heads, rows, keys)
                if dweights is not None:
                    dp += dweights[hs, r, c]
                ds = dp.mul_(p)  # P * dP, then minus P * rowsum(P * dP): dS over dP's memory
                ds.addcmul_(p, ds.sum(-1, keepdim=True), value=-1.0)
                self._bmm_into(dq[hs, r], ds, k[hs, c])  # dQ = dS K / sqrt(d)  (scaled below)
                if j == 0 and new is torch.empty:  # dV = P^T dO,  dK = dS^T Q / sqrt(d)  (q kept divided by it)
                    torch.bmm(p.transpose(1, 2), do[hs, r], out=dv[hs])
                    torch.bmm(ds.transpose(1, 2), q[hs, r], out=dk[hs])
                else:
                    dv[hs, c] += torch.bmm(p.transpose(1, 2), do[hs, r])
                    dk[hs, c] += torch.bmm(ds.transpose(1, 2), q[hs, r])
        dq.mul_(1.0 / math.sqrt(self.head_dim))
        o = self.o if self.o is not None else self._unheads(o_heads[None], n)  # (B1, B2, E)
        accumulate_mm(self.out_proj.weight, o.reshape(-1, e).t(), dy2)  # (E, E) in handgrad's (in, out) layout
        if self.lean:  # nothing reads them any more: let their memory go now, not at the next forward
            self.q = self.k = self.v = self.o = self.p = self.mask = None
        del p, o, o_heads, dp, ds, do
        w = self.in_proj_weight
        if dqkv is not None:  # one tensor: its gradient from the stacked rows [dQ dK dV] (L*N, 3E)
            rows = self._unheads(dqkv, n).reshape(-1, 3 * e)
            accumulate_mm(w, rows.t(), query.reshape(-1, e))  # (3E, E)
            if self.in_proj_bias is not None:
                accumulate_sum(self.in_proj_bias, rows, 0)
            return ((rows @ w).view(query.shape), None, None) if self.needs_input_grad else (None, None, None)
        d_in = []
        dw = torch.empty_like(w)
        db = []
        for j, (x, dj) in enumerate(zip((query, key, value), (dq, dk, dv))):
            rows = self._unheads(dj[None], n).reshape(-1, e)  # (rows of x, E)
            torch.mm(rows.t(), x.reshape(-1, e), out=dw[j * e:(j + 1) * e])  # (E, E)
            db.append(rows.sum(0))
            d_in.append((rows @ w[j * e:(j + 1) * e]).view(x.shape))
        add_grad(w, dw)
        if self.in_proj_bias is not None:
            add_grad(self.in_proj_bias, torch.cat(db))
        return tuple(d_in) if self.needs_input_grad else (None, None, None)

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}" + \
            (", batch_first=True" if self.batch_first else "") + (", recompute=True" if self.recompute else "")
