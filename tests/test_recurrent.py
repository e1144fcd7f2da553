"""RNN and LSTM against torch.nn's, in float64: outputs, the input's and initial states' gradients, every parameter's."""

import pytest
import torch

import handgrad as hg

D = torch.float64
SHAPES = [  # (T, N, input_size, hidden_size, num_layers, batch_first, bias)
    (5, 3, 4, 6, 2, False, True),
    (1, 1, 2, 3, 1, True, False),
    (7, 2, 3, 2, 3, True, True),
    (4, 5, 1, 8, 2, True, True),
]


def twins(kind, shape, **kw):
    t_steps, n, i, h, layers, batch_first, bias = shape
    mine = getattr(hg, kind)(i, h, layers, bias=bias, batch_first=batch_first, dtype=D, **kw)
    theirs = getattr(torch.nn, kind)(i, h, layers, bias=bias, batch_first=batch_first, dtype=D, **kw)
    theirs.load_state_dict(mine.state_dict())  # torch's names and layouts
    x = torch.randn((n, t_steps, i) if batch_first else (t_steps, n, i), dtype=D)
    return mine, theirs, x


def assert_params_match(mine, theirs):
    ref = dict(theirs.named_parameters())
    assert sorted(n for n, _ in mine.named_parameters()) == sorted(ref)
    for name, p in mine.named_parameters():
        torch.testing.assert_close(p.g, ref[name].grad, rtol=1e-9, atol=1e-12, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("with_state", [False, True])
def test_lstm_matches_torch(shape, with_state):
    torch.manual_seed(0)
    mine, theirs, x = twins("LSTM", shape)
    layers, n, h = shape[4], shape[1], shape[3]
    h0, c0 = torch.randn(layers, n, h, dtype=D), torch.randn(layers, n, h, dtype=D)
    y, (hn, cn) = mine(x, (h0, c0) if with_state else None)
    xt, h0t, c0t = (t.clone().requires_grad_() for t in (x, h0, c0))
    yt, (hnt, cnt) = theirs(xt, (h0t, c0t) if with_state else None)
    for a, b in ((y, yt), (hn, hnt), (cn, cnt)):
        torch.testing.assert_close(a, b.detach(), rtol=1e-9, atol=1e-12)
    dy, dhn, dcn = torch.randn_like(y), torch.randn_like(hn), torch.randn_like(cn)
    mine.backward((dy, (dhn, dcn)))
    torch.autograd.backward([yt, hnt, cnt], [dy, dhn, dcn])
    torch.testing.assert_close(x.g, xt.grad, rtol=1e-9, atol=1e-12)
    if with_state:
        torch.testing.assert_close(h0.g, h0t.grad, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(c0.g, c0t.grad, rtol=1e-9, atol=1e-12)
    assert_params_match(mine, theirs)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_rnn_matches_torch(shape, nonlinearity):
    torch.manual_seed(1)
    mine, theirs, x = twins("RNN", shape, nonlinearity=nonlinearity)
    h0 = torch.randn(shape[4], shape[1], shape[3], dtype=D)
    y, hn = mine(x, h0)
    xt, h0t = x.clone().requires_grad_(), h0.clone().requires_grad_()
    yt, hnt = theirs(xt, h0t)
    torch.testing.assert_close(y, yt.detach(), rtol=1e-9, atol=1e-12)
    dy, dhn = torch.randn_like(y), torch.randn_like(hn)
    mine.backward((dy, dhn))
    torch.autograd.backward([yt, hnt], [dy, dhn])
    torch.testing.assert_close(x.g, xt.grad, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(h0.g, h0t.grad, rtol=1e-9, atol=1e-12)
    assert_params_match(mine, theirs)


def test_backward_of_the_first_output_alone_counts_the_others_as_zero():
    torch.manual_seed(2)
    mine, theirs, x = twins("LSTM", (4, 2, 3, 5, 2, False, True))
    y, _ = mine(x)
    dy = torch.randn_like(y)
    mine.backward(dy)
    xt = x.clone().requires_grad_()
    theirs(xt)[0].backward(dy)
    torch.testing.assert_close(x.g, xt.grad, rtol=1e-9, atol=1e-12)
    assert_params_match(mine, theirs)


class LastStep(hg.Module):
    """No bwd: an LSTM read at its last step by a Linear, the LSTM called twice (weights shared)."""

    def __init__(self):
        super().__init__()
        self.lstm = hg.LSTM(3, 4, batch_first=True, dtype=D)
        self.head = hg.Linear(4, 2, dtype=D)

    def forward(self, x):
        y, (h, c) = self.lstm(x)
        y2, _ = self.lstm(x, (h, c))  # the state carried into a second pass
        return self.head(y2[:, -1])


def test_a_model_reading_an_lstms_outputs_is_replayed_and_sums_a_reused_lstm():
    torch.manual_seed(3)
    model = LastStep()
    lstm_t = torch.nn.LSTM(3, 4, batch_first=True, dtype=D)
    lstm_t.load_state_dict(model.lstm.state_dict())
    head_t = hg.interop.to_torch(model.head)
    x = torch.randn(2, 5, 3, dtype=D)
    out = model(x)
    dy = torch.randn_like(out)
    model.backward(dy)
    xt = x.clone().requires_grad_()
    y, hc = lstm_t(xt)
    y2, _ = lstm_t(xt, hc)
    head_t(y2[:, -1]).backward(dy)
    torch.testing.assert_close(x.g, xt.grad, rtol=1e-9, atol=1e-12)
    assert_params_match(model.lstm, lstm_t)


def test_bad_inputs_are_one_line():
    lstm = hg.LSTM(3, 4, num_layers=2)
    with pytest.raises(ValueError, match=r"^LSTM\(3, 4\) expects input \[T, N, input_size\] \(or unbatched \[T, "
                                         r"input_size\]\) with input_size 3, got \[5, 2, 7\]"):
        lstm(torch.randn(5, 2, 7))
    with pytest.raises(ValueError, match=r"^LSTM: with an unbatched input \(T, input_size\) the states are "
                                         r"\(num_layers, hidden_size\), got \[2, 1, 4\]"):
        lstm(torch.randn(5, 3), (torch.zeros(2, 1, 4), torch.zeros(2, 4)))
    with pytest.raises(ValueError, match=r"^RNN: h0 must be \[2, 3\] \(num_layers, hidden_size\) for an unbatched input, "
                                         r"got \[1, 3\]"):
        hg.RNN(2, 3, 2)(torch.randn(4, 2), torch.randn(1, 3))
    with pytest.raises(ValueError, match=r"^RNN\(2, 3\): the input holds no time step"):
        hg.RNN(2, 3)(torch.randn(0, 2))
    with pytest.raises(ValueError, match=r"^LSTM: h0 must be \[2, 2, 4\] \(num_layers, batch, hidden_size\), got"):
        lstm(torch.randn(5, 2, 3), (torch.zeros(1, 2, 4), torch.zeros(2, 2, 4)))
    with pytest.raises(ValueError, match=r"^RNN: nonlinearity must be 'tanh' or 'relu'"):
        hg.RNN(3, 4, nonlinearity="gelu")
    with pytest.raises(ValueError, match=r"^LSTM: hidden_size must be a positive integer, got 0"):
        hg.LSTM(3, 0)
    lstm(torch.randn(5, 2, 3))
    with pytest.raises(ValueError, match=r"expected 2 gradients for output \(its nesting\)"):
        lstm.backward((torch.zeros(5, 2, 4),))


def test_to_torch_and_from_torch_carry_the_weights():
    torch.manual_seed(4)
    for mine in (hg.LSTM(3, 5, 2, batch_first=True, dtype=D), hg.RNN(3, 5, 2, "relu", dtype=D)):
        twin = hg.interop.to_torch(mine)
        back = hg.interop.from_torch(twin)
        x = torch.randn(4, 6, 3, dtype=D)
        torch.testing.assert_close(mine(x)[0], twin(x)[0].detach(), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(back(x)[0], mine(x)[0], rtol=0, atol=0)
    with pytest.raises(TypeError, match="bidirectional"):
        hg.interop.from_torch(torch.nn.LSTM(3, 5, bidirectional=True))


@pytest.mark.parametrize("kind", ["LSTM", "RNN"])
def test_wrapped_inside_torch_passes_gradcheck_on_every_output(kind):
    torch.manual_seed(5)
    wrapped = hg.interop.wrap(getattr(hg, kind)(3, 4, 2, batch_first=True, dtype=D))
    x = torch.randn(2, 5, 3, dtype=D, requires_grad=True)
    out = wrapped(x)
    assert isinstance(out, tuple) and out[0].shape == (2, 5, 4)

    def every_output(x):
        y, state = wrapped(x)
        return (y, *state) if isinstance(state, tuple) else (y, state)

    assert torch.autograd.gradcheck(every_output, (x,))
    if kind == "RNN":  # an initial state passed as a tensor gets its gradient too
        h0 = torch.randn(2, 2, 4, dtype=D, requires_grad=True)
        assert torch.autograd.gradcheck(lambda x, h: wrapped(x, h), (x, h0))


@pytest.mark.parametrize("cell", ["lstm", "rnn"])
def test_a_character_model_matches_its_torch_twin(cell):
    torch.manual_seed(6)
    vocab = 11
    model = hg.models.CharRNN(vocab, 5, 7, 2, cell, dtype=D)
    twin = torch.nn.ModuleDict({"emb": torch.nn.Embedding(vocab, 5, dtype=D),
                                "rnn": getattr(torch.nn, cell.upper())(5, 7, 2, batch_first=True, dtype=D),
                                "head": torch.nn.Linear(7, vocab, dtype=D)})
    twin.load_state_dict(model.state_dict())
    idx = torch.randint(0, vocab, (3, 6))
    logits = model(idx)
    dy = torch.randn_like(logits)
    model.backward(dy)
    logits_t = twin["head"](twin["rnn"](twin["emb"](idx))[0])
    logits_t.backward(dy)
    torch.testing.assert_close(logits, logits_t.detach(), rtol=1e-9, atol=1e-12)
    ref = dict(twin.named_parameters())
    for name, p in model.named_parameters():
        got = p.g.t() if name == "head.weight" else p.g
        torch.testing.assert_close(got, ref[name].grad, rtol=1e-9, atol=1e-12, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("cell", ["lstm", "rnn"])
def test_wrap_takes_the_initial_state_and_passes_gradcheck(cell):
    """wrap(LSTM)(x, (h0, c0)) and wrap(RNN)(x, h0): gradients of x, h0, c0 from the hand-written backward equal
    torch's LSTM/RNN under autograd, and gradcheck passes on every output (run twice: reentrant)."""
    from handgrad.interop import to_torch, wrap

    torch.manual_seed(3)
    m = (hg.LSTM if cell == "lstm" else hg.RNN)(3, 4, 2, dtype=D)
    w, t = wrap(m), to_torch(m)
    x = torch.randn(5, 2, 3, dtype=D, requires_grad=True)
    h0 = torch.randn(2, 2, 4, dtype=D, requires_grad=True)
    c0 = torch.randn(2, 2, 4, dtype=D, requires_grad=True)

    def outputs(net, x, h0, c0):
        out, s = net(x, (h0, c0) if cell == "lstm" else h0)
        return (out, *s) if cell == "lstm" else (out, s)

    grads = []
    for net in (w, t):
        for v in (x, h0, c0):
            v.grad = None
        outs = outputs(net, x, h0, c0)
        sum((o * (i + 1.5)).sum() + (o * o).sum() for i, o in enumerate(outs)).backward()
        grads.append([v.grad for v in (x, h0, c0) if v.grad is not None] + [p.grad for p in net.parameters()])
    assert len(grads[0]) == len(grads[1]) == (3 if cell == "lstm" else 2) + len(m.parameters())
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert torch.autograd.gradcheck(lambda x, h0, c0: outputs(w, x, h0, c0), (x, h0, c0))
    assert w(x, None)[0].shape == w(x)[0].shape == (5, 2, 4)


@pytest.mark.parametrize("kind", ["LSTM", "RNN"])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("with_state", [False, True])
def test_unbatched_input_as_torch_takes_it(kind, batch_first, with_state):
    """An input (T, input_size) and states (num_layers, hidden_size): outputs without a batch dim, and every
    gradient (x, the states, the weights) as torch's under autograd."""
    torch.manual_seed(4)
    mine, theirs, _ = twins(kind, (5, 1, 3, 4, 2, batch_first, True))
    x = torch.randn(5, 3, dtype=D)
    states = [torch.randn(2, 4, dtype=D) for _ in range(2 if kind == "LSTM" else 1)]
    state = (tuple(states) if kind == "LSTM" else states[0]) if with_state else None
    out, st = mine(x, state)
    xt, st_t = x.clone().requires_grad_(), [s.clone().requires_grad_() for s in states]
    out_t, st_out_t = theirs(xt, (tuple(st_t) if kind == "LSTM" else st_t[0]) if with_state else None)
    mine_states = list(st) if kind == "LSTM" else [st]
    their_states = list(st_out_t) if kind == "LSTM" else [st_out_t]
    assert out.shape == out_t.shape == (5, 4) and all(s.shape == (2, 4) for s in mine_states)
    torch.testing.assert_close(out, out_t.detach(), rtol=1e-12, atol=1e-14)
    dout = torch.randn(5, 4, dtype=D)
    dstates = [torch.randn(2, 4, dtype=D) for _ in mine_states]
    mine.backward((dout, tuple(dstates)) if kind == "LSTM" else (dout, dstates[0]))
    (out_t * dout).sum().add(sum((s * d).sum() for s, d in zip(their_states, dstates))).backward()
    torch.testing.assert_close(x.g, xt.grad, rtol=1e-9, atol=1e-12)
    if with_state:
        for s, t in zip(states, st_t):
            torch.testing.assert_close(s.g, t.grad, rtol=1e-9, atol=1e-12)
    assert_params_match(mine, theirs)
