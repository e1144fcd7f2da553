"""MultiheadAttention against torch.nn's, in float64: output, weights, every input's and parameter's gradient."""

import pytest
import torch

import handgrad as hg
from handgrad.interop import from_torch, to_torch, wrap

D = torch.float64
CASES = [  # (L, S, N, E, heads, batch_first, bias, causal, need_weights, recompute, self-attention)
    (5, 5, 2, 8, 2, False, True, True, True, False, True),
    (4, 6, 3, 6, 3, True, False, False, True, True, False),
    (3, 3, 1, 4, 1, False, True, False, False, False, True),
    (6, 6, 2, 8, 4, True, True, True, False, True, True),
    (2, 7, 4, 12, 3, False, True, False, True, False, False),
]


@pytest.mark.parametrize("case", CASES)
def test_attention_matches_torch(case):
    length, source, n, e, heads, batch_first, bias, causal, need_weights, recompute, self_attention = case
    torch.manual_seed(0)
    mine = hg.MultiheadAttention(e, heads, bias=bias, batch_first=batch_first, recompute=recompute, dtype=D)
    theirs = torch.nn.MultiheadAttention(e, heads, bias=bias, batch_first=batch_first, dtype=D)
    theirs.load_state_dict(mine.state_dict())

    def shaped(t):
        return torch.randn((n, t, e) if batch_first else (t, n, e), dtype=D)

    if self_attention:
        x = shaped(length)
        q = k = v = x
    else:
        q, k, v = shaped(length), shaped(source), shaped(source)
    mask = torch.ones(length, k.shape[1 if batch_first else 0], dtype=torch.bool).triu(1) if causal else None
    out, weights = mine(q, k, v, is_causal=causal, need_weights=need_weights)
    if self_attention:
        xt = x.clone().requires_grad_()
        qt = kt = vt = xt
    else:
        qt, kt, vt = (t.clone().requires_grad_() for t in (q, k, v))
    out_t, weights_t = theirs(qt, kt, vt, attn_mask=mask, need_weights=need_weights)
    torch.testing.assert_close(out, out_t.detach(), rtol=1e-9, atol=1e-12)
    dy = torch.randn_like(out)
    dw = torch.randn_like(weights) if need_weights else None
    mine.backward((dy, dw))
    if need_weights:
        torch.testing.assert_close(weights, weights_t.detach(), rtol=1e-9, atol=1e-12)
        torch.autograd.backward([out_t, weights_t], [dy, dw])
    else:
        assert weights is None and weights_t is None
        out_t.backward(dy)
    pairs = [(x.g, xt.grad)] if self_attention else [(q.g, qt.grad), (k.g, kt.grad), (v.g, vt.grad)]
    ref = dict(theirs.named_parameters())
    for name, p in mine.named_parameters():  # out_proj.weight is kept (in, out), as handgrad's Linear keeps it
        pairs.append((p.g.t() if name == "out_proj.weight" else p.g, ref[name].grad))
    for got, want in pairs:
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


def test_the_first_output_alone_and_conversions_and_wrap():
    torch.manual_seed(1)
    mine = hg.MultiheadAttention(6, 2, batch_first=True, dtype=D)
    x = torch.randn(2, 4, 6, dtype=D)
    out, _ = mine(x, x, x)
    mine.backward(torch.ones_like(out))  # the weights' gradient counts as zero
    twin = to_torch(mine)
    xt = x.clone().requires_grad_()
    twin(xt, xt, xt)[0].backward(torch.ones_like(out))
    torch.testing.assert_close(x.g, xt.grad, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(from_torch(twin)(x, x, x)[0], out, rtol=0, atol=0)
    wrapped = wrap(hg.MultiheadAttention(4, 2, dtype=D))
    q = torch.randn(3, 2, 4, dtype=D, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a: wrapped(a, a, a, is_causal=True), (q,))


def test_bad_inputs_are_one_line():
    with pytest.raises(ValueError, match=r"^MultiheadAttention: embed_dim must be a positive multiple of num_heads"):
        hg.MultiheadAttention(10, 3)
    attention = hg.MultiheadAttention(4, 2)
    with pytest.raises(ValueError, match=r"^MultiheadAttention\(4, 2\) expects key \[L, N, E\] with E = 4, got"):
        attention(torch.randn(3, 2, 4), torch.randn(3, 2, 5), torch.randn(3, 2, 4))


@pytest.mark.parametrize("recompute", [False, True])
def test_a_row_whose_keys_are_all_masked_attends_to_nothing_as_torch(recompute):
    """need_weights=False: torch gives 0 for a query row whose every key is masked, and finite gradients; so does
    handgrad (not NaN from the softmax of an all -inf row)."""
    torch.manual_seed(0)
    theirs = torch.nn.MultiheadAttention(4, 2, batch_first=True, dtype=D)
    mine = hg.MultiheadAttention(4, 2, batch_first=True, recompute=recompute, dtype=D)
    mine.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 3, 4, dtype=D)
    mask = torch.zeros(3, 3, dtype=torch.bool)
    mask[1] = True
    out, _ = mine(x, x, x, attn_mask=mask, need_weights=False)
    xt = x.clone().requires_grad_()
    out_t, _ = theirs(xt, xt, xt, attn_mask=mask, need_weights=False)
    dy = torch.randn_like(out)
    mine.backward(dy)
    (out_t * dy).sum().backward()
    torch.testing.assert_close(out, out_t.detach(), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(x.g, xt.grad, rtol=1e-9, atol=1e-12)
    assert torch.isfinite(x.g).all() and torch.isfinite(mine.in_proj_weight.g).all()
