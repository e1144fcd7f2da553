"""The fused MLP step against the plain module path it replaces, and the lean module path."""

import copy
import math
import weakref

import pytest
import torch

import handgrad as hg
from handgrad.allocator import keep_freed_memory
from handgrad.fused import FusedStep, training_step, unsupported
from handgrad.interop import to_torch
from handgrad.models import mlp
from handgrad.optim import AdamW
from handgrad.calls import Freed
from handgrad.module import WithLoss, lean
from handgrad.trace import recording


def data(n=24, n_in=12, n_out=4, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, n_in, generator=gen, dtype=dtype)
    y = torch.randint(0, n_out, (n,), generator=gen)
    return x, y


def reference_step(model, loss_fn, opt, x, y):
    """The plain step: module forward and backward, everything kept, then the optimizer."""
    step = WithLoss(model, loss_fn)
    loss = step(x, y)
    opt.zero_grad()
    step.backward(needs_input_grad=False)
    opt.step()
    return loss


def assert_same_weights(a, b, tol):
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=tol, atol=tol, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.float64, 1e-12)])
@pytest.mark.parametrize("loss", ["cross-entropy", "mse"])
@pytest.mark.parametrize("hidden,bias", [([16], True), ([16, 8], True), ([10], False)])
def test_one_fused_step_equals_the_plain_reference_step(dtype, tol, loss, hidden, bias):
    torch.manual_seed(0)
    model = mlp(12, hidden, 4 if loss == "cross-entropy" else 1).to(dtype=dtype)
    if not bias:
        for m in model:
            if isinstance(m, hg.Linear):
                m.bias = None
    twin = copy.deepcopy(model)
    x, y = data(dtype=dtype)
    if loss == "mse":
        y = y.to(dtype)
    make = hg.CrossEntropyLoss if loss == "cross-entropy" else hg.MSELoss
    fused = FusedStep(model, make(), hg.SGD(model.parameters(), lr=0.1))
    assert fused.fused_update()
    ref_loss = reference_step(twin, make(), hg.SGD(twin.parameters(), lr=0.1), x, y)
    loss_value = fused(x, y)
    torch.testing.assert_close(loss_value, ref_loss, rtol=tol, atol=tol)
    assert_same_weights(model, twin, tol)
    assert all(p.g is None for p in model.parameters())  # applied as formed: no gradient buffers


@pytest.mark.parametrize("opt_kind", ["momentum", "nesterov-wd", "adam"])
def test_gradients_path_with_other_optimizers_equals_the_module_path(opt_kind):
    torch.manual_seed(1)
    model = mlp(12, [16, 8], 4).double()
    twin = copy.deepcopy(model)

    def make(m):
        if opt_kind == "momentum":
            return hg.SGD(m.parameters(), lr=0.05, momentum=0.9)
        if opt_kind == "nesterov-wd":
            return hg.SGD(m.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-2)
        return AdamW(m.parameters(), lr=1e-2)

    fused = FusedStep(model, hg.CrossEntropyLoss(), make(model))
    assert not fused.fused_update()
    topt = make(twin)
    for seed in range(3):
        x, y = data(dtype=torch.float64, seed=seed)
        loss = fused(x, y)
        ref = reference_step(twin, hg.CrossEntropyLoss(), topt, x, y)
        torch.testing.assert_close(loss, ref, rtol=1e-12, atol=1e-12)
        for p, q in zip(model.parameters(), twin.parameters()):
            torch.testing.assert_close(p.g, q.g, rtol=1e-12, atol=1e-12)
        assert_same_weights(model, twin, 1e-12)


def test_weight_decay_is_folded_into_the_update():
    torch.manual_seed(2)
    model = mlp(12, [16], 4).double()
    twin = copy.deepcopy(model)
    fused = FusedStep(model, hg.CrossEntropyLoss(), hg.SGD(model.parameters(), lr=0.1, weight_decay=0.05))
    topt = hg.SGD(twin.parameters(), lr=0.1, weight_decay=0.05)
    for seed in range(3):
        x, y = data(dtype=torch.float64, seed=seed)
        fused(x, y)
        reference_step(twin, hg.CrossEntropyLoss(), topt, x, y)
    assert_same_weights(model, twin, 1e-12)


def test_batch_sizes_dtypes_and_devices_get_their_own_buffers():
    torch.manual_seed(3)
    model = mlp(12, [16], 4)
    twin = copy.deepcopy(model)
    fused = FusedStep(model, hg.CrossEntropyLoss(), hg.SGD(model.parameters(), lr=0.1))
    topt = hg.SGD(twin.parameters(), lr=0.1)
    for n in (24, 7, 24):  # a short last batch, then full ones again
        x, y = data(n=n, seed=n)
        fused(x, y)
        reference_step(twin, hg.CrossEntropyLoss(), topt, x, y)
    assert_same_weights(model, twin, 1e-6)
    model.double()  # new weight storage: the step must not write into the old one
    x, y = data(dtype=torch.float64)
    assert fused(x, y).dtype == torch.float64


def test_a_non_finite_loss_is_not_applied():
    torch.manual_seed(4)
    model = mlp(12, [16], 4)
    before = copy.deepcopy(model)
    fused = FusedStep(model, hg.CrossEntropyLoss(), hg.SGD(model.parameters(), lr=0.1))
    x, y = data()
    x[0, 0] = float("inf")
    assert not math.isfinite(float(fused(x, y)))
    assert_same_weights(model, before, 0.0)


def test_bad_inputs_and_models():
    model = mlp(12, [16], 4)
    fused = FusedStep(model, hg.CrossEntropyLoss(), hg.SGD(model.parameters(), lr=0.1))
    x, y = data()
    with pytest.raises(ValueError, match=r"class label 4 out of range: expected labels in \[0, 3\]"):
        fused(x, torch.full_like(y, 4))
    with pytest.raises(ValueError, match=r"expects input \[N, 12\], got \[24, 11\]"):
        fused(x[:, :11], y)
    with pytest.raises(ValueError, match="integer class labels"):
        fused(x, y.float())
    conv = hg.Sequential(hg.Linear(12, 4), hg.Tanh(), hg.Linear(4, 4))
    assert unsupported(conv, hg.CrossEntropyLoss()) == "Linear followed by Tanh is not a Linear/ReLU chain"
    assert unsupported(model, hg.NLLLoss()).startswith("the loss is NLLLoss")
    with pytest.raises(ValueError, match="no fused step for this model: the model does not start and end"):
        FusedStep(hg.Sequential(hg.ReLU(), hg.Linear(12, 4)), hg.CrossEntropyLoss(), hg.SGD(model.parameters(), 1))


def test_training_step_falls_back_to_the_lean_module_path():
    torch.manual_seed(5)
    model = hg.Sequential(hg.Linear(12, 16), hg.Tanh(), hg.Linear(16, 4))
    twin = copy.deepcopy(model)
    step = training_step(model, hg.CrossEntropyLoss(), hg.SGD(model.parameters(), lr=0.1))
    assert not isinstance(step, FusedStep)
    x, y = data()
    torch.testing.assert_close(step(x, y), reference_step(twin, hg.CrossEntropyLoss(),
                                                          hg.SGD(twin.parameters(), lr=0.1), x, y))
    assert_same_weights(model, twin, 1e-6)
    assert all(m.out is None and m.args == () for m in model.modules())  # freed during backward


def test_lean_backward_frees_what_it_saved_and_gives_the_same_gradients():
    torch.manual_seed(6)
    model = mlp(12, [16, 8], 4).double()
    twin = copy.deepcopy(model)
    x, y = data(dtype=torch.float64)
    x2 = x.clone()
    kept = WithLoss(twin, hg.CrossEntropyLoss())
    kept(x2, y)
    kept.backward()
    relu = model[1]
    step = WithLoss(model, hg.CrossEntropyLoss())
    with lean():
        step(x, y)
        saved = relu.out
        step.backward()
        with pytest.raises(RuntimeError, match="backward called twice"):
            step.backward()
    assert not hg.Module.lean
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p.g, q.g, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(x.g, x2.g, rtol=1e-12, atol=1e-12)
    assert relu.out is None and relu.args == () and saved.g is None
    torch.testing.assert_close(saved, twin[0].out.g, rtol=1e-12, atol=1e-12)  # ReLU's dX written over its Y
    with lean(), lean(False):
        assert not hg.Module.lean


def test_sgd_momentum_buffers_start_per_parameter():
    """A parameter that had no gradient on the first step starts its momentum buffer when it first has one."""
    torch.manual_seed(7)
    a, b = hg.Parameter(torch.randn(3)), hg.Parameter(torch.randn(3))
    ta, tb = (torch.nn.Parameter(t.detach().clone()) for t in (a, b))
    opt, topt = hg.SGD([a, b], lr=0.1, momentum=0.9), torch.optim.SGD([ta, tb], lr=0.1, momentum=0.9)
    for step in range(3):
        ga, gb = torch.randn(3), torch.randn(3)
        a.g, ta.grad = ga.clone(), ga.clone()
        b.g, tb.grad = (gb.clone(), gb.clone()) if step else (None, None)
        opt.step()
        topt.step()
        torch.testing.assert_close(a, ta.detach())
        torch.testing.assert_close(b, tb.detach())


def test_keep_freed_memory_applies_on_linux_glibc():
    import platform
    applied = keep_freed_memory()
    assert applied == (platform.system() == "Linux" and platform.libc_ver()[0] == "glibc")


def test_lean_releases_the_tensors_themselves():
    """No reference to a dropped activation remains anywhere: its memory is gone once the next layer ran."""
    refs = []

    class Spy(hg.Linear):
        def forward(self, x):
            out = super().forward(x)
            refs.append(weakref.ref(out))
            return out

    model = hg.Sequential(Spy(4, 8), hg.BatchNorm1d(8), hg.ReLU(), Spy(8, 3))
    with lean():
        loss = WithLoss(model, hg.CrossEntropyLoss())(torch.randn(5, 4), torch.randint(0, 3, (5,)))
        assert refs[0]() is None  # Linear -> BatchNorm: neither backward reads it
        assert refs[1]() is not None  # the model's output: the loss reads it
        del loss


def test_lean_cnn_frees_activations_between_layers_and_keeps_the_gradients():
    """conv -> BN -> ReLU: the conv output and the BN output are freed after the next layer's forward."""
    from handgrad.models import cnn

    torch.manual_seed(8)
    model = cnn(10, (4, 8)).double()
    twin = copy.deepcopy(model)
    x, y = torch.randn(6, 784, dtype=torch.float64), torch.randint(0, 10, (6,))
    plain = WithLoss(twin, hg.CrossEntropyLoss())
    plain(x, y)
    plain.backward(needs_input_grad=False)
    step = WithLoss(model, hg.CrossEntropyLoss())
    with lean(), recording() as calls:
        step(x, y)
        stem = model[1]  # conv_bn: Sequential(Conv2d, BatchNorm2d)
        assert isinstance(stem[0].out, Freed)  # the conv output: only BN read it, and BN keeps xhat
        assert isinstance(model[2].args[0], Freed)  # the BN output: ReLU reads its own output
        assert isinstance(model[2].out, torch.Tensor)
        residual = model[3][0]  # res_block: the branches' outputs go once summed, the sum once ReLU ran
        assert isinstance(residual.body.out, Freed) and isinstance(residual.shortcut.out, Freed)
        assert isinstance(residual.out, Freed)
        del calls
        step.backward(needs_input_grad=False)
    for (name, p), q in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(p.g, q.g, rtol=1e-10, atol=1e-12, msg=lambda m, name=name: f"{name}: {m}")


def test_lean_keeps_what_activation_statistics_read():
    from handgrad.train.stats import ActivationStats

    # no activations: the stats watch the layers with parameters, here the last of a nested Sequential
    model = hg.Sequential(hg.Sequential(hg.Linear(4, 3), hg.BatchNorm1d(3)), hg.Dropout(0.5), hg.Linear(3, 2))
    stats = ActivationStats(model)
    with lean():
        model(torch.randn(5, 4))
    stats.record()
    assert isinstance(model[0][0].out, torch.Tensor) and isinstance(model[0][1].out, torch.Tensor)
    unwatched = hg.Sequential(hg.Sequential(hg.Linear(4, 3), hg.BatchNorm1d(3)), hg.Dropout(0.5), hg.Linear(3, 2))
    with lean():
        unwatched(torch.randn(5, 4))
    assert isinstance(unwatched[0][0].out, Freed)  # dropped where nobody reads it
    assert isinstance(unwatched[0][1].out, Freed)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_inputs_other_than_n_by_f_take_the_module_path_and_train_like_torch(momentum):
    """A Linear takes [..., F]; the fused step is written for [N, F]: a sequence batch [N, L, F] (or one sample
    [F]) goes through the module path and trains like torch (it used to raise 'expects input [N, F]')."""
    torch.manual_seed(0)
    model = hg.Sequential(hg.Linear(3, 4), hg.ReLU(), hg.Linear(4, 2)).double()
    twin = to_torch(model)
    step = training_step(model, hg.MSELoss(), hg.SGD(model.parameters(), lr=0.1, momentum=momentum))
    topt = torch.optim.SGD(twin.parameters(), lr=0.1, momentum=momentum)
    assert isinstance(step, FusedStep)
    gen = torch.Generator().manual_seed(1)
    for shape in [(5, 7, 3), (6, 3), (3,), (2, 1, 1, 3)]:
        x = torch.randn(shape, generator=gen, dtype=torch.float64)
        y = torch.randn(*shape[:-1], 2, generator=gen, dtype=torch.float64)
        loss = step(x, y)
        topt.zero_grad()
        tloss = torch.nn.functional.mse_loss(twin(x), y)
        tloss.backward()
        topt.step()
        torch.testing.assert_close(loss, tloss.detach(), rtol=1e-12, atol=1e-12)
    for name, t in twin.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], t, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("model", ["mlp", "cnn", "unfused"])
@pytest.mark.parametrize("loss", ["ce", "mse"])
def test_an_empty_batch_is_refused_before_anything_changes(model, loss):
    """Every training path (the fused MLP and CNN steps, the module path) refuses a batch of no examples with
    the same one-line error, the model and the optimizer untouched (it gave -0.0, nan or a gradient-shape
    error depending on the path)."""
    from handgrad.fused import fused_step, module_step
    from handgrad.models import cnn

    torch.manual_seed(0)
    net = {"mlp": lambda: mlp(8, [5], 3), "cnn": lambda: cnn(3, (4, 8), image=(1, 6, 6)),
           "unfused": lambda: hg.Sequential(hg.Linear(8, 5), hg.ReLU(), hg.Dropout(0.0), hg.Linear(5, 3))}[model]()
    x = torch.randn(0, 36 if model == "cnn" else 8)
    loss_fn = hg.CrossEntropyLoss() if loss == "ce" else hg.MSELoss()
    y = torch.zeros(0, dtype=torch.long) if loss == "ce" else torch.zeros(0, 3)
    opt = hg.SGD(net.parameters(), lr=0.1, momentum=0.9)
    before = copy.deepcopy(net.state_dict())
    steps = [lambda: module_step(WithLoss(net, loss_fn), opt, x, y)]
    if model != "unfused":  # Dropout: no fused step
        fused = fused_step(net, loss_fn, opt)
        assert fused is not None
        steps.append(lambda: fused(x, y))
    for step in steps:
        with pytest.raises(ValueError, match=r"^training step: expected a batch of at least one example, got an "
                                             r"empty batch \(input \[0, \d+\]\)$"):
            step()
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert opt.steps == 0 and not any(opt.state_dict()["state"][i] for i in range(len(opt.params)))


@pytest.mark.parametrize("path", ["module_step", "learner"])
def test_sequences_of_length_zero_are_refused_before_anything_changes(path):
    """A GPT on [N, 0] tokens gave loss nan, counted a step and decayed the weights (AdamW)."""
    from handgrad.data import DataLoader
    from handgrad.fused import module_step
    from handgrad.models import gpt
    from handgrad.train import Learner

    torch.manual_seed(0)
    model = gpt(11, 1, 2, 8, 6)
    opt = AdamW(model.parameters(), lr=0.1, weight_decay=0.5)
    before = copy.deepcopy(model.state_dict())
    x, y = torch.zeros(2, 0, dtype=torch.long), torch.zeros(2, 0, dtype=torch.long)
    with pytest.raises(ValueError, match=r"^training step: expected examples with at least one value, got an "
                                         r"empty input \[2, 0\]$"):
        if path == "module_step":
            module_step(WithLoss(model, hg.CrossEntropyLoss()), opt, x, y)
        else:
            learn = Learner(model, hg.CrossEntropyLoss(), opt, DataLoader(x, y, 2), x, y, 11, fused=False)
            learn._forward_backward(x, y)
    assert opt.steps == 0
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
