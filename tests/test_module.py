import copy
import pickle

import pytest
import torch

import handgrad as hg


def mlp(dtype=torch.float64):
    torch.manual_seed(0)
    return hg.Sequential(hg.Linear(5, 4, dtype=dtype), hg.ReLU(), hg.Linear(4, 3, dtype=dtype))


def test_parameters_are_discovered_with_torch_names():
    model = mlp()
    names = [n for n, _ in model.named_parameters()]
    assert names == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert [p.shape for p in model.parameters()] == [(5, 4), (4,), (4, 3), (3,)]
    assert all(isinstance(p, hg.Parameter) and not p.requires_grad for p in model.parameters())


def test_modules_in_a_list_attribute_are_found_like_a_module_list():
    class Model(hg.Module):
        def __init__(self):
            super().__init__()
            self.layers = [hg.Linear(3, 2), hg.ReLU()]
            self.head = hg.Linear(2, 1)

    names = [n for n, _ in Model().named_parameters()]
    assert names == ["layers.0.weight", "layers.0.bias", "head.weight", "head.bias"]


def run_backward(model, x, dy):
    out = model(x)
    model.backward(dy)
    return out


def test_gradients_accumulate_until_zero_grad():
    model = mlp()
    x = torch.randn(6, 5, dtype=torch.float64)
    dy = torch.randn(6, 3, dtype=torch.float64)
    run_backward(model, x, dy)
    once = [p.g.clone() for p in model.parameters()]
    run_backward(model, x.clone(), dy)
    for p, g in zip(model.parameters(), once):
        torch.testing.assert_close(p.g, 2 * g)
    buffers = [p.g.data_ptr() for p in model.parameters()]
    model.zero_grad()
    assert all(p.g is None for p in model.parameters())
    run_backward(model, x.clone(), dy)
    for p, g in zip(model.parameters(), once):
        torch.testing.assert_close(p.g, g)
    assert [p.g.data_ptr() for p in model.parameters()] == buffers  # the same storage, reused


def test_backward_twice_for_one_forward_raises():
    model = mlp()
    x = torch.randn(2, 5, dtype=torch.float64)
    run_backward(model, x, torch.ones(2, 3, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="backward called twice"):
        model.backward(torch.ones(2, 3, dtype=torch.float64))


def test_backward_before_forward_and_wrong_grad_shape_raise():
    lin = hg.Linear(3, 2)
    with pytest.raises(RuntimeError, match="before any forward"):
        lin.backward(torch.ones(1, 2))
    lin(torch.randn(4, 3))
    with pytest.raises(ValueError, match=r"expected a gradient of shape \[4, 2\].*got \[4, 3\]"):
        lin.backward(torch.ones(4, 3))


def test_backward_without_output_gradient_on_non_scalar_says_what_is_needed():
    relu = hg.ReLU()
    relu(torch.randn(3))
    with pytest.raises(RuntimeError, match="needs the gradient of its output"):
        relu.backward()


def test_sequential_chain_leaves_every_intermediate_gradient_visible():
    model = mlp()
    x = torch.randn(4, 5, dtype=torch.float64, requires_grad=False)
    out = model(x)
    dy = torch.randn(4, 3, dtype=torch.float64)
    model.backward(dy)
    # each layer's input .g is the previous layer's output .g, as in the seeds
    for a, b in zip(model.layers[:-1], model.layers[1:]):
        assert a.out is b.args[0]
        assert a.out.g is not None
    assert out.g is dy
    xa = x.clone().requires_grad_()
    tm = hg.interop.to_torch(model)
    torch.autograd.backward(tm(xa), dy)
    torch.testing.assert_close(x.g, xa.grad)


def test_fan_out_tensor_consumed_twice_gets_the_sum():
    torch.manual_seed(1)
    a, b = hg.Linear(4, 3, dtype=torch.float64), hg.Linear(4, 3, dtype=torch.float64)
    x = torch.randn(5, 4, dtype=torch.float64)
    ya, yb = a(x), b(x)
    dy = torch.randn(5, 3, dtype=torch.float64)
    ya.g, yb.g = dy, 2 * dy  # loss = sum(dy * (ya + 2 yb))
    a.backward()
    b.backward()
    xt = x.clone().requires_grad_()
    wa, wb = a.weight.clone().requires_grad_(), b.weight.clone().requires_grad_()
    loss = (dy * (xt @ wa + a.bias) + 2 * dy * (xt @ wb + b.bias)).sum()
    loss.backward()
    torch.testing.assert_close(x.g, xt.grad)
    torch.testing.assert_close(a.weight.g, wa.grad)
    torch.testing.assert_close(b.weight.g, wb.grad)


def test_fan_out_inside_a_module_residual():
    class Residual(hg.Module):
        """y = x + f(x)"""

        def __init__(self, f):
            super().__init__()
            self.f = f

        def forward(self, x):
            return x + self.f(x)

        def bwd(self, dy, x):
            self.f.backward(dy)  # adds f's path into x.g
            return dy  # the skip path, added by Module.backward

    torch.manual_seed(2)
    block = hg.Sequential(Residual(hg.Sequential(hg.Linear(4, 4, dtype=torch.float64), hg.ReLU())),
                          hg.Linear(4, 2, dtype=torch.float64))
    x = torch.randn(3, 4, dtype=torch.float64)
    report = hg.check.check_module(block, x)
    assert report.passed, report.failures()


def test_identity_forward_output_is_a_distinct_tensor():
    class Identity(hg.Module):
        def forward(self, x):
            return x

        def bwd(self, dy, x):
            return dy

    ident = Identity()
    x = torch.randn(3)
    y = ident(x)
    assert y is not x
    ident.backward(torch.ones(3))
    torch.testing.assert_close(x.g, torch.ones(3))


def test_train_eval_flags_reach_every_submodule():
    model = mlp()
    model.eval()
    assert not any(m.training for m in model.modules())
    model.train()
    assert all(m.training for m in model.modules())


def test_to_casts_parameters_in_place():
    model = mlp(torch.float32)
    before = model.parameters()
    model.double()
    assert all(p.dtype == torch.float64 and isinstance(p, hg.Parameter) for p in model.parameters())
    assert all(a is b for a, b in zip(before, model.parameters()))  # an optimizer's references stay valid


@pytest.mark.parametrize("call", ["dtype", "device_dtype", "keywords", "tensor"])
def test_to_takes_torch_nn_module_to_arguments(call):
    model = hg.Sequential(hg.Linear(3, 2), hg.BatchNorm1d(2))
    args, kwargs = {"dtype": ((torch.float64,), {}), "device_dtype": (("cpu", torch.float64), {}),
                    "keywords": ((), {"device": "cpu", "dtype": torch.float64}),
                    "tensor": ((torch.zeros(1, dtype=torch.float64),), {})}[call]
    assert model.to(*args, **kwargs) is model
    assert {p.dtype for p in model.parameters()} == {torch.float64}
    bn = model[1]
    assert bn.running_mean.dtype == torch.float64 and bn.num_batches_tracked.dtype == torch.int64
    torch.testing.assert_close(model(torch.ones(4, 3, dtype=torch.float64)).shape, torch.Size([4, 2]))


@pytest.mark.parametrize("args, kwargs, message", [
    ((torch.int64,), {}, r"^Module.to: parameters can only take a floating point dtype, got torch.int64$"),
    ((torch.zeros(1, dtype=torch.long),), {}, r"floating point dtype, got torch.int64$"),
    ((1.5,), {}, r"^Module.to expects a device, a dtype or a tensor, got float: 1.5$"),
    ((True,), {}, r"^Module.to expects a device, a dtype or a tensor, got bool: True$"),
    ((), {"dtype": "float64"}, r"^Module.to: dtype must be a torch.dtype \(e.g. torch.float64\), got str: 'float64'$"),
    ((), {"device": torch.float64}, r"^Module.to: device must be a str, torch.device or int, got dtype"),
    ((torch.float64, torch.float32), {}, r"^Module.to: two dtypes given \(torch.float64 and torch.float32\)$"),
    ((torch.float64,), {"dtype": torch.float32}, r"^Module.to: two dtypes given"),
    (("cpu", torch.zeros(1, dtype=torch.float64)), {}, r"^Module.to: two devices given \(cpu and cpu\)$"),
    (("gpu0",), {}, r"^Module.to: 'gpu0' is not a device \("),
])
def test_to_rejects_what_torch_rejects_with_one_line(args, kwargs, message):
    model = hg.Linear(3, 2)
    model.weight.g = torch.ones(3, 2)
    with pytest.raises(TypeError, match=message) as info:
        model.to(*args, **kwargs)
    assert "\n" not in str(info.value)
    assert model.weight.dtype == torch.float32 and model.weight.g is not None  # nothing changed


def test_to_takes_non_blocking_and_none_and_keeps_gradients_when_nothing_moves():
    model = hg.Linear(3, 2)
    model.weight.g = torch.ones(3, 2)
    assert model.to("cpu").weight.g is not None and model.to(None).weight.g is not None
    assert model.to("cpu", torch.float64, False).weight.dtype == torch.float64  # non_blocking positionally
    assert model.weight.g is None  # cast: the old gradient no longer matches
    assert model.to(torch.float32, non_blocking=True).weight.dtype == torch.float32
    conv = hg.Conv2d(2, 3, 3).to(memory_format=torch.channels_last)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and conv.bias.dim() == 1


@pytest.mark.parametrize("make_opt", [lambda ps: hg.AdamW(ps, lr=1e-2, weight_decay=0.1),
                                      lambda ps: hg.SGD(ps, lr=0.1, momentum=0.9), lambda ps: hg.Adam(ps)])
def test_an_optimizer_with_state_follows_its_model_to_another_dtype(make_opt):
    """Cast after some steps (state in float32): the next step moves the state to float64 and gives what a
    model cast together with its state gives (torch.optim raises a dtype error there)."""
    from handgrad.fused import training_step

    torch.manual_seed(0)
    model = hg.Sequential(hg.Linear(4, 3), hg.ReLU(), hg.Linear(3, 2))
    x, y = torch.randn(5, 4), torch.randint(0, 2, (5,))
    opt = make_opt(model.parameters())
    training_step(model, hg.CrossEntropyLoss(), opt)(x, y)
    twin, twin_opt = copy.deepcopy((model, opt))
    twin.double()
    twin_opt.state = [{k: v.double() if v.shape == p.shape else v for k, v in s.items()}
                      for s, p in zip(twin_opt.state, twin_opt.params)]
    model.double()
    for m, o in ((model, opt), (twin, twin_opt)):
        training_step(m, hg.CrossEntropyLoss(), o)(x.double(), y)
    assert {v.dtype for s in opt.state for k, v in s.items() if k != "step"} == {torch.float64}
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.equal(a, b)


def test_state_dict_round_trips_with_torch_linear_both_ways():
    torch.manual_seed(3)
    lin = hg.Linear(6, 4)
    t = torch.nn.Linear(6, 4)
    t.load_state_dict(lin.state_dict())  # handgrad -> torch
    x = torch.randn(2, 6)
    torch.testing.assert_close(t(x), lin(x))
    t2 = torch.nn.Linear(6, 4)
    lin.load_state_dict(t2.state_dict())  # torch -> handgrad
    torch.testing.assert_close(lin(x), t2(x))
    torch.testing.assert_close(lin.weight, t2.weight.detach().t())


def test_load_state_dict_names_the_mismatch_and_changes_nothing():
    model = mlp(torch.float32)
    before = copy.deepcopy(model.state_dict())
    bad = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.ReLU(), torch.nn.Linear(4, 7)).state_dict()
    with pytest.raises(ValueError, match=r"'2.weight': expected shape \[3, 4\], got \[7, 4\]"):
        model.load_state_dict(bad)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k])
    with pytest.raises(ValueError, match="missing"):
        model.load_state_dict({"0.weight": before["0.weight"]})


def test_parameter_survives_deepcopy_and_pickle():
    lin = hg.Linear(3, 2)
    c = copy.deepcopy(lin)
    assert isinstance(c.weight, hg.Parameter) and c.weight is not lin.weight
    p = pickle.loads(pickle.dumps(lin.weight))
    assert isinstance(p, hg.Parameter) and torch.equal(p, lin.weight)


def test_repr_reads_like_torch():
    assert repr(mlp()).splitlines()[1] == "  (0): Linear(in_features=5, out_features=4, bias=True)"
