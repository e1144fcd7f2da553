"""The layers' work in pieces (attention in tiles of heads and causal row blocks, GELU's backward in pieces, the
LSTM's gate factors in blocks of steps): made small here so that the small float64 cases cross several pieces, and
compared with torch autograd as the layers' own tests compare them."""

import pytest
import torch
import torch.nn.functional as F

import handgrad as hg

D = torch.float64


@pytest.mark.parametrize("batch_first, recompute, row_block, chunk", [
    (True, True, 2, 8),  # 4 blocks of query rows, 2 heads per chunk
    (False, True, 3, 30),  # blocks of 3 rows (the last one short), chunks of heads of uneven size
    (True, False, 2, 8),  # P kept: one tile
])
def test_causal_attention_in_tiles_matches_torch(monkeypatch, batch_first, recompute, row_block, chunk):
    monkeypatch.setattr(hg.MultiheadAttention, "ROW_BLOCK", row_block)
    monkeypatch.setattr(hg.MultiheadAttention, "CHUNK_FLOATS", chunk)
    torch.manual_seed(0)
    n, length, e, heads = 3, 7, 8, 2
    mine = hg.MultiheadAttention(e, heads, batch_first=batch_first, recompute=recompute, dtype=D)
    theirs = torch.nn.MultiheadAttention(e, heads, batch_first=batch_first, dtype=D)
    theirs.load_state_dict(mine.state_dict())
    x = torch.randn((n, length, e) if batch_first else (length, n, e), dtype=D)
    out, _ = mine(x, x, x, is_causal=True, need_weights=False)
    xt = x.clone().requires_grad_()
    out_t, _ = theirs(xt, xt, xt, attn_mask=torch.ones(length, length, dtype=torch.bool).triu(1), need_weights=False)
    torch.testing.assert_close(out, out_t.detach(), rtol=1e-9, atol=1e-12)
    dy = torch.randn_like(out)
    mine.backward((dy, None))
    out_t.backward(dy)
    torch.testing.assert_close(x.g, xt.grad, rtol=1e-9, atol=1e-12)
    ref = dict(theirs.named_parameters())
    for name, p in mine.named_parameters():
        torch.testing.assert_close(p.g.t() if name == "out_proj.weight" else p.g, ref[name].grad, rtol=1e-9,
                                   atol=1e-12, msg=name)


def test_causal_attention_with_more_keys_than_queries_in_tiles(monkeypatch):
    """is_causal on (L, S) with S > L: row i sees keys 0..i (torch's triu(1) mask), so no block sees the last keys,
    whose gradients are zero."""
    monkeypatch.setattr(hg.MultiheadAttention, "ROW_BLOCK", 2)
    monkeypatch.setattr(hg.MultiheadAttention, "CHUNK_FLOATS", 8)
    torch.manual_seed(5)
    length, source, n, e = 5, 7, 2, 6
    mine = hg.MultiheadAttention(e, 3, recompute=True, dtype=D)
    theirs = torch.nn.MultiheadAttention(e, 3, dtype=D)
    theirs.load_state_dict(mine.state_dict())
    q, k, v = torch.randn(length, n, e, dtype=D), torch.randn(source, n, e, dtype=D), torch.randn(source, n, e, dtype=D)
    out, _ = mine(q, k, v, is_causal=True, need_weights=False)
    qt, kt, vt = (t.clone().requires_grad_() for t in (q, k, v))
    out_t, _ = theirs(qt, kt, vt, attn_mask=torch.ones(length, source, dtype=torch.bool).triu(1), need_weights=False)
    torch.testing.assert_close(out, out_t.detach(), rtol=1e-9, atol=1e-12)
    dy = torch.randn_like(out)
    mine.backward((dy, None))
    out_t.backward(dy)
    for got, want in ((q.g, qt.grad), (k.g, kt.grad), (v.g, vt.grad)):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
    assert k.g[length:].abs().max() == 0


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_backward_in_pieces_matches_autograd(monkeypatch, approximate):
    monkeypatch.setattr(hg.GELU, "PIECE", 7)  # 60 elements: 9 pieces, the last one short
    torch.manual_seed(1)
    x = torch.randn(3, 4, 5, dtype=D) * 3
    x[0, 0, 0] = 0.0
    gelu = hg.GELU(approximate)
    y = gelu(x)
    dy = torch.randn_like(y)
    gelu.backward(dy)
    xt = x.clone().requires_grad_()
    F.gelu(xt, approximate=approximate).backward(dy)
    torch.testing.assert_close(y, F.gelu(x, approximate=approximate), rtol=0, atol=0)
    torch.testing.assert_close(x.g, xt.grad, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("time_block", [1, 3, 100])
def test_lstm_backward_in_blocks_of_steps_matches_torch(monkeypatch, time_block):
    monkeypatch.setattr(hg.LSTM, "TIME_BLOCK", time_block)
    torch.manual_seed(2)
    mine = hg.LSTM(3, 5, 2, batch_first=True, dtype=D)
    theirs = torch.nn.LSTM(3, 5, 2, batch_first=True, dtype=D)
    theirs.load_state_dict(mine.state_dict())
    x, h0, c0 = torch.randn(4, 7, 3, dtype=D), torch.randn(2, 4, 5, dtype=D), torch.randn(2, 4, 5, dtype=D)
    y, (hn, cn) = mine(x, (h0, c0))
    xt, h0t, c0t = (t.clone().requires_grad_() for t in (x, h0, c0))
    yt, (hnt, cnt) = theirs(xt, (h0t, c0t))
    dy, dhn, dcn = torch.randn_like(y), torch.randn_like(hn), torch.randn_like(cn)
    mine.backward((dy, (dhn, dcn)))
    torch.autograd.backward([yt, hnt, cnt], [dy, dhn, dcn])
    for got, want in [(y, yt), (x.g, xt.grad), (h0.g, h0t.grad), (c0.g, c0t.grad)]:
        torch.testing.assert_close(got, want.detach(), rtol=1e-9, atol=1e-12)
    ref = dict(theirs.named_parameters())
    for name, p in mine.named_parameters():
        torch.testing.assert_close(p.g, ref[name].grad, rtol=1e-9, atol=1e-12, msg=name)


def test_lstm_forward_recorded_by_autograd_is_the_same_forward():
    """With autograd recording (as `handgrad check` runs it), the forward makes new tensors instead of writing into
    buffers: the same outputs, and autograd's gradient through it is torch's."""
    torch.manual_seed(3)
    mine = hg.LSTM(3, 4, 2, dtype=D)
    x = torch.randn(5, 2, 3, dtype=D)
    y, (hn, cn) = mine(x)
    xr = x.clone().requires_grad_()
    yr, (hnr, cnr) = mine(xr)
    for a, b in ((y, yr), (hn, hnr), (cn, cnr)):  # (the GEMMs read W_hh in another layout: rounding apart)
        torch.testing.assert_close(a, b.detach(), rtol=1e-14, atol=1e-15)
    theirs = torch.nn.LSTM(3, 4, 2, dtype=D)
    theirs.load_state_dict(mine.state_dict())
    xt = x.clone().requires_grad_()
    dy = torch.randn_like(y)
    yr.backward(dy)
    theirs(xt)[0].backward(dy)
    torch.testing.assert_close(xr.grad, xt.grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("affine, bias", [(False, False), (True, False)])
def test_layer_norm_without_affine_or_bias_matches_torch(affine, bias):
    torch.manual_seed(4)
    ln = hg.LayerNorm((3, 4), elementwise_affine=affine, bias=bias, dtype=D)
    if affine:
        ln.weight.data.normal_()
    x = torch.randn(2, 5, 3, 4, dtype=D)
    y = ln(x)
    dy = torch.randn_like(y)
    ln.backward(dy)
    xt = x.clone().requires_grad_()
    wt = ln.weight.detach().clone().requires_grad_() if affine else None
    yt = F.layer_norm(xt, (3, 4), wt, None, 1e-5)
    yt.backward(dy)
    torch.testing.assert_close(y, yt.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(x.g, xt.grad, rtol=1e-9, atol=1e-12)
    if affine:
        torch.testing.assert_close(ln.weight.g, wt.grad, rtol=1e-9, atol=1e-12)
