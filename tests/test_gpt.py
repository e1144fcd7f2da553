"""A tiny GPT (float64) against its torch twin: logits, every gradient, and 5 AdamW steps, step for step."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import handgrad as hg

D = torch.float64


class TorchPositions(nn.Module):
    def __init__(self, block, d):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(block, d, dtype=D))

    def forward(self, x):
        return x + self.weight[: x.shape[1]]


class TorchCausalSelfAttention(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.ln = nn.LayerNorm(d, dtype=D)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True, dtype=D)

    def forward(self, x):
        h = self.ln(x)
        mask = torch.ones(x.shape[1], x.shape[1], dtype=torch.bool).triu(1)
        return self.attn(h, h, h, attn_mask=mask, need_weights=False)[0]


class TorchResidual(nn.Module):
    def __init__(self, body):
        super().__init__()
        self.body = body

    def forward(self, x):
        return x + self.body(x)


def torch_twin(vocab, n_layer, heads, d, block):
    """The same GPT in torch.nn, its modules named as handgrad's, so that it loads handgrad's state_dict."""
    blocks = [nn.Sequential(TorchResidual(TorchCausalSelfAttention(d, heads)),
                            TorchResidual(nn.Sequential(nn.LayerNorm(d, dtype=D), nn.Linear(d, 4 * d, dtype=D),
                                                        nn.GELU(), nn.Linear(4 * d, d, dtype=D))))
              for _ in range(n_layer)]
    twin = nn.Sequential(nn.Embedding(vocab, d, dtype=D), TorchPositions(block, d), *blocks, nn.LayerNorm(d, dtype=D),
                         nn.Linear(d, vocab, bias=False, dtype=D))
    twin[-1].weight = twin[0].weight  # tied
    return twin


def step_hg(model, loss_fn, idx, targets, vocab):
    logits = model(idx)  # (N, T, vocab)
    flat = logits.reshape(-1, vocab)
    loss = loss_fn(flat, targets.reshape(-1))
    model.zero_grad()
    loss_fn.backward()
    model.backward(flat.g.view_as(logits))
    return logits, loss


def test_tiny_gpt_matches_its_torch_twin_for_five_adamw_steps():
    torch.manual_seed(0)
    vocab, n_layer, heads, d, block = 13, 2, 2, 8, 7
    model = hg.models.gpt(vocab, n_layer, heads, d, block, dtype=D)
    twin = torch_twin(vocab, n_layer, heads, d, block)
    twin.load_state_dict(model.state_dict())
    assert len(model.parameters()) == len(list(twin.parameters()))  # the tied weight once in both
    idx, targets = torch.randint(0, vocab, (3, block)), torch.randint(0, vocab, (3, block))
    loss_fn = hg.CrossEntropyLoss()
    opt = hg.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    opt_t = torch.optim.AdamW(twin.parameters(), lr=1e-2, weight_decay=0.1)
    for step in range(5):
        logits, loss = step_hg(model, loss_fn, idx, targets, vocab)
        opt_t.zero_grad()
        logits_t = twin(idx)
        loss_t = F.cross_entropy(logits_t.reshape(-1, vocab), targets.reshape(-1))
        loss_t.backward()
        torch.testing.assert_close(logits, logits_t.detach(), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(loss, loss_t.detach(), rtol=1e-10, atol=0)
        ref = dict(twin.named_parameters())
        transposed = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, hg.Linear)}
        for name, p in model.named_parameters():
            want = ref[name].grad
            got = p.g.t() if name in transposed else p.g  # handgrad's Linear keeps (in, out)
            torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12, msg=lambda m, n=name: f"step {step} {n}: {m}")
        opt.step()
        opt_t.step()
    state, state_t = model.state_dict(), twin.state_dict()
    for name in state:  # to 1e-10 (Adam divides by sqrt(v): a gradient of ~1e-16 in one element moves it ~1e-12)
        torch.testing.assert_close(state[name], state_t[name], rtol=1e-10, atol=1e-10)


def test_recompute_gives_the_same_gradients_and_the_check_passes():
    torch.manual_seed(1)
    a = hg.models.gpt(9, 1, 2, 4, 5, dtype=D)
    b = hg.models.gpt(9, 1, 2, 4, 5, recompute=True, dtype=D)
    b.load_state_dict(a.state_dict())
    idx = torch.randint(0, 9, (2, 5))
    dy = torch.randn(2, 5, 9, dtype=D)
    for m in (a, b):
        m(idx)
        m.backward(dy)
    for (name, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        torch.testing.assert_close(p.g, q.g, rtol=1e-12, atol=1e-14, msg=lambda m, n=name: f"{n}: {m}")
    block = hg.layers.transformer.Block(4, 2, dtype=D)
    assert hg.check.check_module(block, torch.randn(2, 3, 4, dtype=D)).passed


@pytest.mark.parametrize("dropout_in_body", [False, True])
def test_block_checkpointing_matches_the_plain_gpt_and_its_torch_checkpoint_twin(dropout_in_body):
    """gpt(checkpoint=True) wraps each block in Recompute: the same loss and gradients as the plain GPT, inside
    lean() and out, and as its torch twin (torch.utils.checkpoint); a Dropout inside a recomputed body draws the
    same mask again in backward."""
    from handgrad.interop import to_torch

    torch.manual_seed(2)
    plain = hg.models.gpt(11, 2, 2, 8, 6, dtype=D)
    torch.manual_seed(2)
    ckpt = hg.models.gpt(11, 2, 2, 8, 6, checkpoint=True, dtype=D)
    if dropout_in_body:
        for model in (plain, ckpt):
            for block in [m for m in model if isinstance(m, (hg.Sequential, hg.layers.Recompute))]:
                seq = block.body if isinstance(block, hg.layers.Recompute) else block
                seq.layers.insert(1, hg.Dropout(0.3))
    assert [type(m).__name__ for m in ckpt][2:4] == ["Recompute", "Recompute"]
    idx, y = torch.randint(0, 11, (3, 6)), torch.randint(0, 11, (3, 6))
    grads = []
    for model, lean in ((plain, False), (ckpt, False), (ckpt, True)):
        step = hg.WithLoss(model, hg.TokenCrossEntropyLoss())
        torch.manual_seed(9)  # the dropout masks
        with hg.lean(lean):
            loss = step(idx, y)
            model.zero_grad()
            step.backward(needs_input_grad=False)
        grads.append((float(loss), [p.g.clone() for p in model.parameters()]))
    for loss, gs in grads[1:]:
        assert loss == grads[0][0]
        for a, b in zip(grads[0][1], gs):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    if not dropout_in_body:
        twin = to_torch(ckpt)
        assert type(twin[2]).__name__ == "TorchRecompute"
        loss_t = F.cross_entropy(twin(idx).reshape(-1, 11), y.reshape(-1))
        loss_t.backward()
        assert float(loss_t.detach()) == pytest.approx(grads[0][0], rel=1e-12)
        ref = dict(twin.named_parameters())
        transposed = {f"{n}.weight" for n, m in ckpt.named_modules() if isinstance(m, hg.Linear)}
        for name, p in ckpt.named_parameters():
            got = p.g.t() if name in transposed else p.g
            torch.testing.assert_close(got, ref[name].grad, rtol=1e-9, atol=1e-12)


def test_recompute_forgets_what_its_body_saved_and_keeps_running_statistics():
    """After Recompute's forward nothing of its body's record is alive but the input; its backward leaves a
    BatchNorm's running statistics as the one forward left them."""
    body = hg.Sequential(hg.Linear(4, 6, dtype=D), hg.BatchNorm1d(6, dtype=D), hg.ReLU(), hg.Linear(6, 3, dtype=D))
    r = hg.layers.Recompute(body)
    x = torch.randn(5, 4, dtype=D)
    r(x)
    assert all(m.__dict__.get("args") == () and m.__dict__.get("out") is None for m in body.layers)
    assert "xhat" not in body.layers[1].__dict__  # what BatchNorm's forward saved for its backward
    stats = body.layers[1].running_mean.clone()
    r.backward(torch.randn(5, 3, dtype=D))
    assert torch.equal(body.layers[1].running_mean, stats) and x.g is not None
    assert hg.check.check_module(hg.layers.Recompute(hg.Sequential(hg.Linear(4, 3, dtype=D), hg.Tanh())), x).passed


def test_the_torch_twin_of_recompute_keeps_running_statistics_as_handgrad_does():
    """torch.utils.checkpoint alone runs a BatchNorm's forward twice a step; TorchRecompute restores its buffers
    after the recomputation, as Recompute does: running statistics equal after a training step."""
    torch.manual_seed(0)
    model = hg.Sequential(hg.layers.Recompute(hg.Sequential(hg.Linear(4, 3, dtype=D), hg.BatchNorm1d(3, dtype=D))))
    twin = hg.interop.to_torch(model)
    x = torch.randn(5, 4, dtype=D)
    y = model(x)
    model.backward(torch.ones_like(y))
    twin(x.clone().requires_grad_()).sum().backward()
    ours, theirs = model.state_dict(), twin.state_dict()
    assert int(theirs["0.body.1.num_batches_tracked"]) == 1
    for name in ("0.body.1.running_mean", "0.body.1.running_var"):
        torch.testing.assert_close(ours[name], theirs[name], rtol=1e-12, atol=1e-14)
    with pytest.raises(TypeError, match="Recompute expects a handgrad Module as its body, got Linear"):
        hg.layers.Recompute(torch.nn.Linear(2, 2))


def test_a_backward_asked_of_a_recomputed_body_says_why_it_cannot_run():
    body = hg.Sequential(hg.Linear(3, 2, dtype=D), hg.Tanh())
    r = hg.layers.Recompute(body)
    y = r(torch.randn(4, 3, dtype=D))
    with pytest.raises(RuntimeError, match="^Sequential.backward: its latest call ran inside a Recompute, which let go"):
        body.backward(torch.ones_like(y))
    r.backward(torch.ones_like(y))  # the Recompute's own backward runs it again
    assert body[0].weight.g is not None
    body(torch.randn(4, 3, dtype=D))  # a call of its own afterwards: its backward runs as usual
    body.backward(torch.ones(4, 2, dtype=D))
