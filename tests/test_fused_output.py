"""LinearCrossEntropy (logits in chunks, never all alive) against the unfused TiedLinear + CrossEntropyLoss."""

import pytest
import torch

import handgrad as hg
from handgrad.layers import LinearCrossEntropy

D = torch.float64


@pytest.mark.parametrize("n, chunk, bias", [(17, 4, False), (17, 17, True), (5, 100, True), (64, 7, False)])
def test_chunked_loss_and_gradients_equal_the_unfused_pair(n, chunk, bias):
    torch.manual_seed(0)
    d, vocab = 6, 11
    emb = hg.Embedding(vocab, d, dtype=D)
    fused = LinearCrossEntropy(d, vocab, weight=emb.weight, bias=bias, chunk=chunk)
    x, target = torch.randn(n, d, dtype=D), torch.randint(0, vocab, (n,))
    loss = fused(x, target)
    fused.backward(torch.tensor(0.7, dtype=D))
    wt = emb.weight.detach().clone().requires_grad_()
    bt = fused.bias.detach().clone().requires_grad_() if bias else None
    xt = x.clone().requires_grad_()
    logits = xt @ wt.t() + (bt if bias else 0)
    loss_t = torch.nn.functional.cross_entropy(logits, target)
    (loss_t * 0.7).backward()
    torch.testing.assert_close(loss, loss_t.detach(), rtol=1e-12, atol=0)
    torch.testing.assert_close(x.g, xt.grad, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(emb.weight.g, wt.grad, rtol=1e-10, atol=1e-14)
    if bias:
        torch.testing.assert_close(fused.bias.g, bt.grad, rtol=1e-10, atol=1e-14)
    assert hg.check.check_module(LinearCrossEntropy(d, vocab, bias=bias, chunk=chunk), x, target).passed


def test_the_logits_are_never_all_alive():
    """What the layer keeps for backward: x and one log-sum-exp per token, nothing of size tokens x vocab."""
    n, d, vocab = 256, 8, 1000
    fused = LinearCrossEntropy(d, vocab, chunk=16)
    fused(torch.randn(n, d), torch.randint(0, vocab, (n,)))
    kept = [v for v in fused._last.saved.values() if isinstance(v, torch.Tensor)]
    assert all(t.numel() < n * vocab // 10 for t in kept) and fused.lse.shape == (n,)


def test_bad_inputs_are_one_line():
    with pytest.raises(ValueError, match=r"^LinearCrossEntropy: chunk must be a positive number of tokens, got 0"):
        LinearCrossEntropy(4, 5, chunk=0)
    with pytest.raises(ValueError, match=r"^LinearCrossEntropy expects a weight Parameter of shape \[5, 4\]"):
        LinearCrossEntropy(4, 5, weight=hg.Parameter(torch.zeros(4, 5)))
    with pytest.raises(ValueError, match=r"class label 7 out of range"):
        LinearCrossEntropy(4, 5)(torch.randn(3, 4), torch.tensor([0, 7, 1]))
