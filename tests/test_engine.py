"""The engine: modules called many times, models without bwd, tied weights, lean() and wrap(), each against
plain torch autograd on the same computation."""

import copy

import pytest
import torch
from torch import nn

import handgrad as hg
from handgrad.interop import to_torch, wrap

D = torch.float64


def autograd_reference(model, *xs, dy=None, loss_fn=None, target=None):
    """(output, input gradients, parameter gradients by name) from torch autograd through model.forward."""
    model = copy.deepcopy(model)
    params = dict(model.named_parameters())
    xs = [x.detach().clone().requires_grad_(x.is_floating_point()) for x in xs]
    for p in params.values():
        p.requires_grad_(True)
    with torch.enable_grad():
        out = model.forward(*xs)
        if loss_fn is not None:
            loss = loss_fn.forward(out, target)
            grads = torch.autograd.grad(loss, [x for x in xs if x.requires_grad] + list(params.values()),
                                        allow_unused=True)
        else:
            grads = torch.autograd.grad(out, [x for x in xs if x.requires_grad] + list(params.values()), dy,
                                        allow_unused=True)
    n = sum(x.requires_grad for x in xs)
    return out.detach(), grads[:n], dict(zip(params, grads[n:]))


def assert_grads(model, ref_params, tol=1e-10):
    for name, p in model.named_parameters():
        ref = ref_params[name]
        ref = torch.zeros_like(p) if ref is None else ref
        assert p.g is not None, f"{name}: no gradient"
        torch.testing.assert_close(p.g, ref, rtol=tol, atol=tol, msg=lambda m, name=name: f"{name}: {m}")


def reused_model():
    torch.manual_seed(0)
    lin = hg.Linear(4, 4, dtype=D)
    return hg.Sequential(lin, hg.Tanh(), lin)


class LoopModel(hg.Module):
    """A user's model: one cell called 12 times in a loop over time, no backward written."""

    def __init__(self, n_in=3, hidden=5, n_out=4):
        super().__init__()
        self.inp = hg.Linear(n_in, hidden, dtype=D)
        self.cell = hg.Sequential(hg.Linear(hidden, hidden, dtype=D), hg.Tanh())
        self.head = hg.Linear(hidden, n_out, dtype=D)

    def forward(self, x):  # x: (B, T, n_in)
        h = self.inp(x[:, 0])  # (B, hidden)
        for t in range(12):
            h = self.cell(h)
        return self.head(h)  # (B, n_out)


@pytest.mark.parametrize("make, shape", [(reused_model, (6, 4)), (lambda: (torch.manual_seed(1), LoopModel())[1],
                                                                   (6, 12, 3))])
def test_reused_modules_match_autograd_on_every_path(make, shape):
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(*shape, generator=gen, dtype=D)
    model = make()
    out = model(x)
    dy = torch.randn(out.shape, generator=gen, dtype=D)
    ref_out, (ref_dx,), ref_params = autograd_reference(model, x, dy=dy)
    torch.testing.assert_close(out, ref_out, rtol=1e-12, atol=1e-12)
    # the module path
    model.zero_grad()
    model.backward(dy)
    torch.testing.assert_close(x.g, ref_dx, rtol=1e-10, atol=1e-10)
    assert_grads(model, ref_params)
    # inside lean()
    lean_model, xl = copy.deepcopy(model), x.clone()
    lean_model.zero_grad()
    with hg.lean():
        lean_model(xl)
        lean_model.backward(dy)
    torch.testing.assert_close(xl.g, ref_dx, rtol=1e-10, atol=1e-10)
    assert_grads(lean_model, ref_params)
    # training_step: one SGD step equals torch's on the same loss
    y = torch.randn(out.shape, generator=gen, dtype=D)
    stepped = copy.deepcopy(model)
    _, _, loss_grads = autograd_reference(model, x, loss_fn=hg.MSELoss(), target=y)
    step = hg.training_step(stepped, hg.MSELoss(), hg.SGD(stepped.parameters(), lr=0.1))
    step(x, y)
    for (name, p), (_, p0) in zip(stepped.named_parameters(), model.named_parameters()):
        torch.testing.assert_close(p, p0 - 0.1 * loss_grads[name], rtol=1e-10, atol=1e-12)


def test_a_reused_layer_is_listed_once_and_stepped_once():
    model = reused_model()
    assert [n for n, _ in model.named_parameters()] == ["0.weight", "0.bias"]
    assert list(model.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias"]  # as torch's
    assert list(to_torch(model).state_dict()) == list(model.state_dict())


def test_the_fused_path_refuses_a_reused_layer_and_the_step_is_right():
    torch.manual_seed(3)
    lin = hg.Linear(5, 5)
    model = hg.Sequential(lin, hg.ReLU(), lin)
    assert "more than once" in hg.fused.unsupported(model, hg.CrossEntropyLoss())
    x, y = torch.randn(8, 5), torch.randint(0, 5, (8,))
    _, _, grads = autograd_reference(model, x, loss_fn=hg.CrossEntropyLoss(), target=y)
    before = copy.deepcopy(model)
    loss = hg.training_step(model, hg.CrossEntropyLoss(), hg.SGD(model.parameters(), lr=0.5))(x, y)
    ref_loss = nn.functional.cross_entropy(to_torch(before)(x), y)
    torch.testing.assert_close(loss, ref_loss)
    for (name, p), (_, p0) in zip(model.named_parameters(), before.named_parameters()):
        torch.testing.assert_close(p, p0 - 0.5 * grads[name], rtol=1e-5, atol=1e-6)


def test_tied_linear_weights_share_one_parameter_and_sum_both_gradients():
    torch.manual_seed(4)
    model = hg.Sequential(hg.Linear(4, 4, dtype=D), hg.Tanh(), hg.Linear(4, 4, dtype=D))
    model[2].weight = model[0].weight
    assert len(model.parameters()) == 3
    x = torch.randn(5, 4, dtype=D)
    dy = torch.randn(5, 4, dtype=D)
    _, _, ref = autograd_reference(model, x, dy=dy)
    model(x)
    model.backward(dy)
    assert_grads(model, ref)
    twin = to_torch(model)
    assert twin[2].weight is twin[0].weight


def tied_language_model(padding_idx=None):
    torch.manual_seed(5)
    emb = hg.Embedding(11, 6, padding_idx=padding_idx, dtype=D)
    return hg.Sequential(emb, hg.Tanh(), hg.Linear(6, 6, dtype=D), hg.TiedLinear(emb.weight))


@pytest.mark.parametrize("padding_idx", [None, 0])
def test_embedding_tied_to_its_output_projection_trains_like_the_torch_twin(padding_idx):
    """With a padding row too: the output layer's gradient moves it, and the embedding then reads it (as torch's;
    handgrad's Embedding used to output zeros there)."""
    model = tied_language_model(padding_idx)
    twin = to_torch(model)
    assert twin[3].weight is twin[0].weight
    assert [n for n, _ in model.named_parameters()] == [n for n, _ in twin.named_parameters()]
    opt = hg.SGD(model.parameters(), lr=0.2, momentum=0.9)
    topt = torch.optim.SGD(twin.parameters(), lr=0.2, momentum=0.9)
    step = hg.training_step(model, hg.CrossEntropyLoss(), opt)
    gen = torch.Generator().manual_seed(6)
    for _ in range(20):
        idx, target = torch.randint(0, 11, (16,), generator=gen), torch.randint(0, 11, (16,), generator=gen)
        loss = step(idx, target)
        topt.zero_grad()
        tloss = nn.functional.cross_entropy(twin(idx), target)
        tloss.backward()
        topt.step()
        torch.testing.assert_close(loss, tloss.detach(), rtol=1e-10, atol=1e-12)
    for name, t in twin.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], t, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("make", [
    lambda: hg.Sequential(hg.Linear(8, 16), hg.Dropout(0.0), hg.ReLU(), hg.Linear(16, 3)),
    lambda: hg.Sequential(hg.Linear(8, 16), hg.Sequential(), hg.Tanh(), hg.Linear(16, 3)),
    lambda: hg.Sequential(hg.Linear(8, 16), hg.Dropout(0.5).eval(), hg.ReLU(), hg.Linear(16, 3)),
    lambda: hg.Sequential(hg.Linear(8, 16), hg.BatchNorm1d(16), hg.Flatten(), hg.ReLU(), hg.Linear(16, 3)),
])
def test_lean_gives_the_plain_paths_output_and_gradients_with_layers_returning_views(make):
    torch.manual_seed(7)
    model = make().double()
    x, y = torch.randn(6, 8, dtype=D), torch.randint(0, 3, (6,))
    plain = hg.WithLoss(copy.deepcopy(model), hg.CrossEntropyLoss())
    ref_loss = plain(x, y)
    plain.backward(needs_input_grad=False)
    lean = hg.WithLoss(model, hg.CrossEntropyLoss())
    with hg.lean():
        out = model(x)
        torch.testing.assert_close(out, plain.model.out)
        loss = lean(x, y)
        lean.backward(needs_input_grad=False)
    torch.testing.assert_close(loss, ref_loss)
    for (name, p), q in zip(model.named_parameters(), plain.model.parameters()):
        torch.testing.assert_close(p.g, q.g, rtol=1e-10, atol=1e-12, msg=lambda m, name=name: f"{name}: {m}")
    # and the training step (module path inside lean) takes the same step as the plain one
    stepped = copy.deepcopy(plain.model)
    hg.training_step(stepped, hg.CrossEntropyLoss(), hg.SGD(stepped.parameters(), lr=0.1))(x, y)
    for p, q in zip(stepped.parameters(), plain.model.parameters()):
        assert torch.isfinite(p).all()
        torch.testing.assert_close(p, q - 0.1 * q.g, rtol=1e-10, atol=1e-12)


def test_a_view_returning_user_layer_under_lean_keeps_what_later_layers_read():
    class View(hg.Module):
        def forward(self, x):
            return x.view(x.shape[0], -1)

        def bwd(self, dy, x):
            return dy.reshape(x.shape)

        def backward_reads_input(self):
            return False

        def backward_reads_output(self):
            return False

    torch.manual_seed(8)
    model = hg.Sequential(hg.Linear(6, 6), View(), hg.Linear(6, 2)).double()
    x = torch.randn(3, 6, dtype=D)
    ref = model(x).clone()
    with hg.lean():
        torch.testing.assert_close(model(x), ref)


def test_a_model_without_bwd_using_a_torch_op_refuses_to_backward_in_one_line():
    class Doubles(hg.Module):
        def __init__(self):
            super().__init__()
            self.lin = hg.Linear(3, 3)

        def forward(self, x):
            return self.lin(x * 2)

    m = Doubles()
    m(torch.randn(2, 3))
    with pytest.raises(RuntimeError, match=r"^Doubles.forward applies torch's mul .* write Doubles.bwd$"):
        m.backward(torch.ones(2, 3))


def test_each_call_keeps_its_own_dropout_mask_and_batch_norm_state():
    torch.manual_seed(9)
    drop = hg.Dropout(0.5)
    model = hg.Sequential(hg.Linear(5, 5, dtype=D), drop, hg.Linear(5, 5, dtype=D), drop, hg.BatchNorm1d(5, dtype=D))
    x, dy = torch.randn(7, 5, dtype=D), torch.randn(7, 5, dtype=D)
    torch.manual_seed(10)
    _, (dx,), ref = autograd_reference(model, x, dy=dy)
    torch.manual_seed(10)
    model(x)
    model.backward(dy)
    torch.testing.assert_close(x.g, dx, rtol=1e-10, atol=1e-12)
    assert_grads(model, ref)


def test_backward_twice_for_one_call_still_raises():
    model = reused_model()
    model(torch.randn(2, 4, dtype=D))
    model.backward(torch.ones(2, 4, dtype=D))
    with pytest.raises(RuntimeError, match="backward called twice for one forward"):
        model.backward(torch.ones(2, 4, dtype=D))


# ----------------------------------------------------------------------------------------------- wrap


def test_a_wrapped_module_used_twice_in_one_graph_gets_both_uses_gradients():
    torch.manual_seed(11)
    block = hg.Sequential(hg.Linear(4, 4, dtype=D), hg.Tanh())
    twin = to_torch(block)
    w = wrap(block)
    x = torch.randn(3, 4, dtype=D, requires_grad=True)
    xt = x.detach().clone().requires_grad_()
    (w(w(x)) ** 2).sum().backward()
    (twin(twin(xt)) ** 2).sum().backward()
    torch.testing.assert_close(x.grad, xt.grad)
    torch.testing.assert_close(w.get_parameter("0.weight").grad, twin[0].weight.grad.t())
    torch.testing.assert_close(w.get_parameter("0.bias").grad, twin[0].bias.grad)


def test_wrapped_batch_norm_updates_running_statistics_once_per_forward_and_moves_with_to():
    bn = hg.BatchNorm1d(3)
    w = wrap(bn)
    x = torch.randn(8, 3, requires_grad=True)
    w(x).sum().backward()
    assert int(bn.num_batches_tracked) == 1
    ref = nn.BatchNorm1d(3)
    ref(x.detach())
    torch.testing.assert_close(bn.running_mean, ref.running_mean)
    assert set(w.state_dict()) == {"weight", "bias", "running_mean", "running_var", "num_batches_tracked"}
    w.to(torch.float64)
    assert bn.running_mean.dtype == torch.float64 and bn.weight.dtype == torch.float64
    w(torch.randn(8, 3, dtype=torch.float64, requires_grad=True)).sum().backward()
    assert int(bn.num_batches_tracked) == 2


def test_wrapped_parameters_keep_their_handgrad_names():
    torch.manual_seed(12)
    model = hg.Sequential(hg.Linear(3, 4), hg.BatchNorm1d(4))
    names = [n for n, _ in wrap(model).named_parameters()]
    assert names == ["0.weight", "0.bias", "1.weight", "1.bias"]
    assert "1.running_var" in wrap(model).state_dict()


def test_double_backward_through_wrap_is_refused_in_one_line():
    w = wrap(hg.Tanh())
    x = torch.randn(3, dtype=D, requires_grad=True)
    with pytest.raises(RuntimeError, match="double backward .* is not supported"):
        torch.autograd.grad(w(x).sum(), x, create_graph=True)
    assert torch.autograd.gradcheck(w, (x,))


@pytest.mark.parametrize("tie", [False, True])
def test_gradient_all_reduce_starts_only_when_every_call_of_a_reused_or_tied_layer_is_done(tie):
    """Data-parallel training packs a parameter's gradient for the all-reduce when backward has finished with
    it: for a layer called twice, or a weight shared by two layers, that is after the last call's backward,
    never after the first (the all-reduce would sum half a gradient)."""
    from handgrad.distributed import GradSync

    torch.manual_seed(0)
    lin, other = hg.Linear(4, 4).double(), hg.Linear(4, 4).double()
    if tie:
        other.weight = lin.weight
        model = hg.Sequential(lin, hg.Tanh(), other, hg.Tanh(), hg.Linear(4, 2).double())
    else:
        model = hg.Sequential(lin, hg.Tanh(), lin, hg.Tanh(), hg.Linear(4, 2).double())
    sync = GradSync(None, model.parameters(), bucket_mb=1e-9, model=model)  # one bucket per parameter
    packed = {}

    def launch(b):  # what the all-reduce would send: each parameter's gradient at that moment
        for p in sync.buckets[b]:
            packed[id(p)] = p.g.clone()
        sync.works[b] = "launched"

    sync._launch = launch
    x = torch.randn(3, 4, dtype=D)
    sync.begin(1.0)
    with sync.overlapping():
        out = model(x)
        model.backward(torch.randn(3, 2, dtype=D), needs_input_grad=False)
    assert len(packed) == len(model.parameters())  # every bucket was launched during backward
    for name, p in model.named_parameters():
        torch.testing.assert_close(packed[id(p)], p.g, rtol=0, atol=0, msg=f"{name} sent before it was final")
    assert out.shape == (3, 2)


# ------------------------------------------------- found by an adversarial review (each failed before its fix)


class _Two(hg.Module):
    def __init__(self, forward):
        super().__init__()
        self.a, self.b = hg.Linear(4, 4, dtype=D), hg.Linear(4, 3, dtype=D)
        self._fwd = forward

    def forward(self, x):
        return self._fwd(self, x)


def _assign_into_slice(s, x):
    h = s.a(x)
    h[:, 0] = 0.0
    return s.b(h)


def _op_on_a_nested_output(s, x):
    body = s.__dict__.setdefault("_body", hg.Sequential(s.a, hg.Tanh(), s.b))
    body(x)
    return body[1].out[:, :3] * 2.0  # a torch op on a tensor made inside a sub-module (a feature tap)


@pytest.mark.parametrize("forward, says", [(_assign_into_slice, "an assignment into a slice"),
                                           (_op_on_a_nested_output, "torch's mul")])
def test_ops_a_composite_applies_that_replay_cannot_follow_refuse_backward_in_one_line(forward, says):
    """They used to pass silently with wrong gradients."""
    m = _Two(forward)
    out = m(torch.randn(5, 4, dtype=D))
    with pytest.raises(RuntimeError, match=says) as caught:
        m.backward(torch.ones_like(out))
    assert "\n" not in str(caught.value)


def test_a_sequential_subclass_with_its_own_forward_is_watched():
    class Scaled(hg.Sequential):
        def forward(self, x):
            return super().forward(x) * 2.0

    m = Scaled(hg.Linear(4, 3, dtype=D))
    out = m(torch.randn(5, 4, dtype=D))
    with pytest.raises(RuntimeError, match=r"Scaled.forward applies torch's mul"):
        m.backward(torch.ones_like(out))
    plain = hg.Sequential(hg.Linear(4, 3, dtype=D))  # not watched: its forward only calls modules
    plain(torch.randn(5, 4, dtype=D))
    plain.backward(torch.ones(5, 3, dtype=D))
    assert plain[0].weight.g is not None


def test_a_sub_module_returning_a_tuple_inside_a_composite_gets_the_gradients_of_both_outputs():
    """(Refused in one line before layers with several outputs (RNN, LSTM) came: now its bwd gets them all.)"""
    class Split(hg.Module):
        def forward(self, x):
            return x * 2, x * 3

        def bwd(self, dys, x):
            return 2 * dys[0] + 3 * dys[1]

    class Join(hg.Module):
        def forward(self, a, b):
            return a + b

        def bwd(self, dy, a, b):
            return dy, dy

    class M(hg.Module):
        def __init__(self):
            super().__init__()
            self.lin, self.split, self.join = hg.Linear(4, 3, dtype=D), Split(), Join()

        def forward(self, x):
            return self.join(*self.split(self.lin(x)))

    m = M()
    x = torch.randn(5, 4, dtype=D)
    m(x)
    dy = torch.randn(5, 3, dtype=D)
    m.backward(dy)
    w, b = m.lin.weight.detach().clone().requires_grad_(), m.lin.bias.detach().clone().requires_grad_()
    xt = x.clone().requires_grad_()
    h = xt @ w + b
    (h * 2 + h * 3).backward(dy)
    for got, want in ((x.g, xt.grad), (m.lin.weight.g, w.grad), (m.lin.bias.g, b.grad)):
        torch.testing.assert_close(got, want)


def test_backward_without_a_gradient_on_a_non_scalar_output_says_what_is_missing():
    """A later forward (a logging prediction of one sample) took the loss's call's place: a [1, 1] output used to
    be differentiated from 1, silently."""
    model = hg.Sequential(hg.Linear(4, 1, dtype=D))
    lf = hg.MSELoss()
    lf(model(torch.randn(8, 4, dtype=D)), torch.randn(8, 1, dtype=D))
    model(torch.randn(1, 4, dtype=D))
    lf.backward()
    with pytest.raises(RuntimeError, match=r"needs the gradient of its output \(shape \[1, 1\]\).*latest call"):
        model.backward()


@pytest.mark.parametrize("make, after", [
    (lambda: hg.Tanh(), lambda x, y: y.mul_(2)),
    (lambda: hg.Linear(4, 4, dtype=D), lambda x, y: x.mul_(10)),
])
def test_wrap_refuses_backward_after_an_in_place_change_to_what_it_reads(make, after):
    """As torch's own layers do ('modified by an inplace operation'); it used to give wrong gradients."""
    w = wrap(make())
    x = torch.randn(3, 4, dtype=D, requires_grad=True)
    x2 = x * 1.0  # a non-leaf, so that torch allows the in-place change
    y = w(x2)
    after(x2, y)
    with pytest.raises(RuntimeError, match=r"modified by an in-place operation after the forward"):
        y.sum().backward()
    w2 = wrap(hg.Linear(4, 4, dtype=D))
    y2 = w2(x * 1.0)
    y2.mul_(2)  # Linear's backward does not read its output: fine, as in torch
    y2.sum().backward()


def test_wrap_state_dict_has_handgrads_and_torchs_layout():
    model = hg.Sequential(hg.Linear(4, 3, dtype=D), hg.ReLU(), hg.Linear(3, 3, dtype=D))
    w = wrap(model)
    state = w.state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == {k: tuple(v.shape) for k, v in model.state_dict().items()}
    for k, v in model.state_dict().items():
        torch.testing.assert_close(state[k], v, rtol=0, atol=0)
    other = hg.Sequential(hg.Linear(4, 3, dtype=D), hg.ReLU(), hg.Linear(3, 3, dtype=D))
    w2 = wrap(other)
    w2.load_state_dict(state)
    x = torch.randn(2, 4, dtype=D)
    torch.testing.assert_close(other(x), model(x), rtol=0, atol=0)
    to_torch(model).load_state_dict(state)  # torch's own layout


@pytest.mark.parametrize("vocab, d", [(7, 3), (4, 4)])
def test_an_embedding_tied_to_its_output_survives_to_torch_and_back(vocab, d):
    """from_torch used to refuse torch's Linear(d, vocab) sharing the Embedding's table; it now builds a
    TiedLinear (and a Linear placed twice stays one module)."""
    torch.manual_seed(0)
    emb = hg.Embedding(vocab, d, dtype=D)
    lin = hg.Linear(d, d, dtype=D)
    model = hg.Sequential(emb, lin, hg.Tanh(), lin, hg.TiedLinear(emb.weight, bias=True))
    back = hg.interop.from_torch(to_torch(model))
    assert isinstance(back[4], hg.TiedLinear) and back[4].weight is back[0].weight and back[1] is back[3]
    idx = torch.randint(0, vocab, (5,))
    torch.testing.assert_close(back(idx), model(idx), rtol=0, atol=0)


def test_a_composite_may_compute_statistics_for_logging_without_losing_its_backward():
    """Operations whose results reach no sub-call and not the output (a logged mean, a finiteness assert) are
    harmless; they used to make backward refuse. The same result passed on to a layer still refuses."""
    class Logged(hg.Module):
        def __init__(self, pass_on):
            super().__init__()
            self.a, self.b, self.pass_on, self.log = hg.Linear(4, 4, dtype=D), hg.Linear(4, 3, dtype=D), pass_on, []

        def forward(self, x):
            h = self.a(x)
            self.log.append(h.mean().item())
            assert torch.isfinite(h).all()
            scaled = h * 2.0
            return self.b(scaled if self.pass_on else h)

    torch.manual_seed(0)
    m = Logged(pass_on=False)
    x, dy = torch.randn(5, 4, dtype=D), torch.randn(5, 3, dtype=D)
    m(x)
    m.backward(dy)
    w = [p.detach().clone().requires_grad_() for p in (m.a.weight, m.a.bias, m.b.weight, m.b.bias)]
    xr = x.clone().requires_grad_()
    ((xr @ w[0] + w[1]) @ w[2] + w[3]).backward(dy)
    torch.testing.assert_close(m.a.weight.g, w[0].grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(x.g, xr.grad, rtol=1e-12, atol=1e-12)
    m = Logged(pass_on=True)
    m(x)
    with pytest.raises(RuntimeError, match="Logged.forward applies torch's mul"):
        m.backward(dy)


def test_keyword_options_reach_forward_and_a_keyword_tensor_of_the_computation_is_refused():
    class Scale(hg.Module):
        def forward(self, x, factor=1.0, shift=None):
            self.factor = factor
            return x * factor if shift is None else x * factor + shift

        def bwd(self, dy, x):
            return dy * self.factor

    class Net(hg.Module):
        def __init__(self, by_keyword):
            super().__init__()
            self.lin, self.scale, self.by_keyword = hg.Linear(4, 4, dtype=D), Scale(), by_keyword

        def forward(self, x):
            h = self.lin(x)
            return self.scale(h, factor=3.0, shift=h if self.by_keyword else None)

    x = torch.randn(2, 4, dtype=D)
    net = Net(by_keyword=False)
    net(x)
    net.backward(torch.ones(2, 4, dtype=D))
    torch.testing.assert_close(net.lin.bias.g, torch.full((4,), 6.0, dtype=D))
    net = Net(by_keyword=True)
    net(x)
    with pytest.raises(RuntimeError, match=r"Net.forward passes a tensor of its computation by keyword \(shift=\)"):
        net.backward(torch.ones(2, 4, dtype=D))
