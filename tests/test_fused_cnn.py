"""The fused CNN step (handgrad.fused_cnn) against the module path it replaces and against torch's autograd, on
randomly drawn CNNs; what it keeps; where it steps aside."""

import copy
import random

import pytest
import torch

import handgrad as hg
from handgrad import fused_cnn
from handgrad.bench import _peak_mb
from handgrad.fused import module_step, training_step
from handgrad.fused_cnn import FusedCNNStep, unsupported
from handgrad.interop import to_torch
from handgrad.models import cnn
from handgrad.module import WithLoss

DT = torch.float64


def conv_bn(rng, ci, co, k, stride, relu, bn=True):
    # a bias before a batch norm has a gradient of zero up to rounding, which Adam would blow up to full steps
    layers = [hg.Conv2d(ci, co, k, stride, padding=k // 2, bias=not bn and rng.random() < 0.5)]
    if bn:
        layers.append(hg.BatchNorm2d(co, affine=rng.random() < 0.8, momentum=rng.choice([0.1, 0.5])))
    if relu:
        layers.append(hg.ReLU())
    return hg.Sequential(*layers)


def block(rng, ci, co, size, depth=0):
    """A residual block of drawn shape: identity or projection shortcut, ReLU after or not, sometimes a block
    nested in the body, sometimes a convolution without batch norm."""
    stride = rng.choice([1, 2]) if size >= 4 and depth == 0 else 1
    body = [conv_bn(rng, ci, co, rng.choice([1, 3]), stride, True, bn=rng.random() < 0.85)]
    if depth == 0 and rng.random() < 0.3:
        body.append(block(rng, co, co, size, depth + 1))
    body.append(conv_bn(rng, co, co, 3, 1, rng.random() < 0.2))
    shortcut = None if (ci == co and stride == 1 and rng.random() < 0.7) else conv_bn(rng, ci, co, 1, stride, False)
    layers = [hg.Residual(hg.Sequential(*body), shortcut)]
    if rng.random() < 0.8:
        layers.append(hg.ReLU())
    return hg.Sequential(*layers)


def random_cnn(seed):
    """(model, input shape, classes): a stem, 0-2 residual blocks, pooling and a 1- or 2-layer head."""
    rng = random.Random(seed)
    torch.manual_seed(seed)
    c, size = rng.choice([1, 2, 3]), rng.choice([5, 6, 7, 8])
    flat = rng.random() < 0.6
    layers = [hg.Unflatten(1, (c, size, size))] if flat else []
    width = rng.choice([2, 3, 4])
    layers.append(conv_bn(rng, c, width, rng.choice([1, 3, 5]), 1, rng.random() < 0.9,
                          bn=rng.random() < 0.9))
    for _ in range(rng.choice([0, 1, 2])):
        nxt = rng.choice([width, width + 2])
        layers.append(block(rng, width, nxt, size))
        width = nxt
    layers += [hg.AdaptiveAvgPool2d(1), hg.Flatten()]
    classes = rng.choice([2, 5])
    if rng.random() < 0.4:
        layers += [hg.Linear(width, 6), hg.ReLU(), hg.Linear(6, classes)]
    else:
        layers.append(hg.Linear(width, classes))
    shape = (c * size * size,) if flat else (c, size, size)
    return hg.Sequential(*layers).to(dtype=DT), shape, classes


def batch(shape, classes, n=6, seed=0, loss="ce"):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *shape, generator=gen, dtype=DT)
    y = torch.randint(0, classes, (n,), generator=gen)
    if loss == "mse":
        y = torch.randn(n, classes, generator=gen, dtype=DT)
    return x, y


def make_loss(loss, reduction="mean"):
    return hg.CrossEntropyLoss(reduction=reduction) if loss == "ce" else hg.MSELoss(reduction=reduction)


def make_opt(kind, params):
    if kind == "sgd":
        return hg.SGD(params, lr=0.05)
    if kind == "momentum":
        return hg.SGD(params, lr=0.05, momentum=0.9, weight_decay=1e-3)
    return hg.AdamW(params, lr=1e-2, weight_decay=0.01)


def assert_same_state(a, b, tol):
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=tol, atol=tol, msg=lambda m, name=name: f"{name}: {m}")
    for (name, t), u in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(t, u, rtol=tol, atol=tol, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("seed", range(16))
def test_fused_cnn_steps_equal_the_module_path(seed):
    """Three steps of a drawn CNN (loss, optimizer, reduction drawn too): losses, parameters and running
    statistics as the module path computes them, to float64 rounding."""
    model, shape, classes = random_cnn(seed)
    twin = copy.deepcopy(model)
    rng = random.Random(1000 + seed)
    loss, reduction, opt = rng.choice(["ce", "mse"]), rng.choice(["mean", "sum"]), \
        rng.choice(["sgd", "momentum", "adamw"])
    assert unsupported(model, make_loss(loss)) is None
    step = training_step(model, make_loss(loss, reduction), make_opt(opt, model.parameters()))
    assert isinstance(step, FusedCNNStep)
    ref = WithLoss(twin, make_loss(loss, reduction))
    ref_opt = make_opt(opt, twin.parameters())
    for i in range(3):  # batches of several sizes, as an epoch's last one
        x, y = batch(shape, classes, n=rng.choice([2, 3, 6, 7]), seed=i, loss=loss)
        got = step(x, y)
        want = module_step(ref, ref_opt, x, y)
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    assert_same_state(model, twin, 1e-9)


@pytest.mark.parametrize("seed", range(16, 28))
def test_fused_cnn_gradients_equal_torch_autograd(seed):
    """One step's gradients (every parameter's .g) against the torch.nn twin under autograd."""
    model, shape, classes = random_cnn(seed)
    twin = to_torch(model)
    x, y = batch(shape, classes, seed=seed)
    step = FusedCNNStep(model, hg.CrossEntropyLoss(), hg.SGD(model.parameters(), lr=0.1))
    loss = step(x, y, step=False)
    ref = torch.nn.functional.cross_entropy(twin(x), y)
    ref.backward()
    torch.testing.assert_close(loss, ref.detach(), rtol=1e-10, atol=1e-12)
    theirs = dict(twin.named_parameters())
    for name, p in model.named_parameters():
        g = p.g.t() if p.dim() == 2 else p.g  # Linear keeps (in, out); torch (out, in)
        torch.testing.assert_close(g, theirs[name].grad, rtol=1e-9, atol=1e-11, msg=lambda m, n=name: f"{n}: {m}")


def test_rebuilt_outputs_have_the_bits_forward_computed():
    """What backward rebuilds (a batch norm's output, a residual sum, the data-reading layer's Z) is what forward
    computed, bit for bit: the ReLU masks and weight gradients read the very values forward used."""
    model = cnn(10, (4, 8, 8)).to(dtype=torch.float32)
    step = FusedCNNStep(model, hg.CrossEntropyLoss(), hg.SGD(model.parameters(), lr=0.1))
    x = torch.randn(16, 784)
    outs, src, h = [], x, x
    for node in step.nodes:
        h, src = node.forward(h, src)
        outs.append((node, h.clone()))
    checked = 0
    for node, y in outs:
        if isinstance(node, (fused_cnn._ConvBN, fused_cnn._Residual)):
            assert torch.equal(node.rebuild(), y), type(node).__name__
            checked += 1
    assert checked == 3  # the stem and two residual blocks
    assert step.nodes[1].recompute_z and step.nodes[1].saved[1] is None  # the stem keeps no Z
    step._clear(step.nodes)


def test_fused_cnn_keeps_less_than_the_module_path():
    """Peak bytes over two steps (parameters and batch excluded): the fused step keeps the convolutions' outputs
    only, the module path in lean() every activation a backward reads."""
    torch.manual_seed(0)
    model = cnn(10, (8, 16, 32))
    x, y = torch.randn(64, 784), torch.randint(0, 10, (64,))

    def fresh(fused):
        def make():
            for p in model.parameters():
                p.g = None
                p.__dict__.pop("_gbuf", None)
            opt = hg.SGD(model.parameters(), lr=1e-3)
            if fused:
                step = FusedCNNStep(model, hg.CrossEntropyLoss(), opt)
                return lambda: step(x, y)
            ref = WithLoss(model, hg.CrossEntropyLoss())
            return lambda: module_step(ref, opt, x, y)
        return make

    fused, module = _peak_mb(fresh(True), torch.device("cpu")), _peak_mb(fresh(False), torch.device("cpu"))
    assert fused < 0.6 * module, (fused, module)


def test_eval_mode_takes_the_module_path():
    """With batch norms in eval mode (running statistics) the step is the module path's, result for result."""
    model, shape, classes = random_cnn(3)
    model.eval()
    twin = copy.deepcopy(model)
    step = FusedCNNStep(model, hg.CrossEntropyLoss(), hg.SGD(model.parameters(), lr=0.1))
    ref, ref_opt = WithLoss(twin, hg.CrossEntropyLoss()), hg.SGD(twin.parameters(), lr=0.1)
    x, y = batch(shape, classes)
    torch.testing.assert_close(step(x, y), module_step(ref, ref_opt, x, y), rtol=0, atol=0)
    assert_same_state(model, twin, 0)


def test_backward_hooks_hear_of_every_layer_once():
    """The data-parallel gradient all-reduce starts a layer's bucket when its hook fires: once per layer, after
    its gradients are final."""
    model = cnn(10, (4, 8))
    step = FusedCNNStep(model, hg.CrossEntropyLoss(), hg.SGD(model.parameters(), lr=0.1))
    heard = []

    def hook(m):
        heard.append(m)
        assert all(p.g is not None for _, p in m._own_parameters())

    hg.Module._post_backward_hooks.append(hook)
    try:
        step(torch.randn(4, 784), torch.randint(0, 10, (4,)), step=False)
    finally:
        hg.Module._post_backward_hooks.remove(hook)
    with_params = [m for m in model.modules() if list(m._own_parameters())]
    assert sorted(map(id, heard)) == sorted(map(id, with_params))


@pytest.mark.parametrize("model,why", [
    (lambda: hg.Sequential(hg.Conv2d(1, 2, 3), hg.MaxPool2d(2), hg.Flatten(), hg.Linear(2, 2)),
     "MaxPool2d has no fused form"),
    (lambda: hg.Sequential(hg.Conv2d(1, 2, 3), hg.BatchNorm2d(2, momentum=None), hg.AdaptiveAvgPool2d(1),
                           hg.Flatten(), hg.Linear(2, 2)), "momentum=None"),
    (lambda: hg.Sequential(hg.Conv2d(1, 2, 3), hg.AdaptiveAvgPool2d(2), hg.Flatten(), hg.Linear(8, 2)),
     "AdaptiveAvgPool2d(output_size=(2, 2)) has no fused form"),
    (lambda: hg.Sequential(hg.Linear(4, 2)), "the model has no Conv2d"),
    (lambda: hg.Sequential(hg.Conv2d(1, 2, 3), hg.AdaptiveAvgPool2d(1), hg.Flatten()), "does not end with Linear"),
    (lambda: hg.Sequential(hg.Conv2d(1, 2, 3), hg.BatchNorm2d(2), hg.ReLU(), hg.Flatten(start_dim=2),
                           hg.Linear(1, 4), hg.ReLU(), hg.Flatten(), hg.Linear(8, 3)), "not flattened to [N, F]"),
    (lambda: (lambda c: hg.Sequential(c, c, hg.AdaptiveAvgPool2d(1), hg.Flatten(), hg.Linear(1, 2)))(
        hg.Conv2d(1, 1, 3, padding=1)), "used more than once"),
])
def test_models_without_a_fused_form_take_the_module_path(model, why):
    m = model()
    assert why in unsupported(m, hg.CrossEntropyLoss())
    assert not isinstance(training_step(m, hg.CrossEntropyLoss(), hg.SGD(m.parameters(), lr=0.1)), FusedCNNStep)
    with pytest.raises(ValueError, match="no fused CNN step for this model"):
        FusedCNNStep(m, hg.CrossEntropyLoss(), hg.SGD(m.parameters(), lr=0.1))


def test_other_losses_take_the_module_path():
    m = cnn(10, (4, 8))
    assert "NLLLoss" in unsupported(m, hg.NLLLoss()) if hasattr(hg, "NLLLoss") else True
    assert "reduction" in unsupported(m, hg.CrossEntropyLoss(reduction="none"))


@pytest.mark.parametrize("x_shape", [(4, 783), (4, 1, 28, 28), (4, 2, 28, 28)])
def test_bad_inputs_raise_what_the_module_path_raises(x_shape):
    """A wrongly shaped batch: the one-line error the module path gives, and nothing of the step is left."""
    torch.manual_seed(0)
    model = cnn(10, (4, 8))
    msgs = []
    for fused in (True, False):
        m = copy.deepcopy(model)
        opt = hg.SGD(m.parameters(), lr=0.1)
        step = FusedCNNStep(m, hg.CrossEntropyLoss(), opt) if fused else \
            (lambda x, y, ref=WithLoss(m, hg.CrossEntropyLoss()), opt=opt: module_step(ref, opt, x, y))
        with pytest.raises(ValueError) as e:
            step(torch.randn(*x_shape), torch.randint(0, 10, (4,)))
        msgs.append(str(e.value))
        if fused:
            assert all(getattr(n, "saved", None) is None for n in step.nodes)
    assert msgs[0] == msgs[1]
    assert "\n" not in msgs[0]


def test_batch_norm_of_one_value_per_channel_is_refused_in_one_line():
    model = hg.Sequential(hg.Conv2d(1, 2, 3), hg.BatchNorm2d(2), hg.AdaptiveAvgPool2d(1), hg.Flatten(),
                          hg.Linear(2, 2))
    step = FusedCNNStep(model, hg.CrossEntropyLoss(), hg.SGD(model.parameters(), lr=0.1))
    with pytest.raises(ValueError, match=r"more than one value per channel; got input \[1, 2, 1, 1\]"):
        step(torch.randn(1, 1, 3, 3), torch.tensor([0]))


def test_a_callback_acting_after_the_loss_keeps_the_module_path():
    """after_loss runs between forward and backward, a moment the fused step does not have: a callback that
    defines it gets the module path, where it runs every batch."""
    from handgrad.data import DataLoader
    from handgrad.train.learner import Callback, Learner

    class Count(Callback):
        seen = 0

        def after_loss(self, learn):
            Count.seen += 1

    x, y = torch.randn(64, 784), torch.randint(0, 10, (64,))
    model = cnn(10, (4, 8))
    learn = Learner(model, hg.CrossEntropyLoss(), hg.AdamW(model.parameters(), lr=1e-2),
                    DataLoader(x, y, 32, shuffle=True, seed=0), x[:32], y[:32], 10, callbacks=[Count()])
    assert learn.fused is None
    learn.fit(1)
    assert Count.seen == 2


def test_the_learner_trains_cnns_through_the_fused_step():
    """The Learner picks the fused CNN step (any optimizer) unless told not to; both train alike."""
    from handgrad.data import DataLoader
    from handgrad.train.learner import Learner

    torch.manual_seed(0)
    x, y = torch.randn(96, 784), torch.randint(0, 10, (96,))
    results = []
    for fused in (True, False):
        torch.manual_seed(1)
        model = cnn(10, (4, 8))
        learn = Learner(model, hg.CrossEntropyLoss(), hg.AdamW(model.parameters(), lr=1e-2),
                        DataLoader(x, y, 32, shuffle=True, seed=0), x[:32], y[:32], 10, fused=fused)
        assert isinstance(learn.fused, FusedCNNStep) == fused
        learn.fit(2)
        results.append(model)
    assert_same_state(results[0], results[1], 1e-4)
