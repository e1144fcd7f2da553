"""A tiny GPT (float64) against its torch twin: logits, every gradient, and 5 AdamW steps, step for step."""

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
