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


@pytest.mark.parametrize("arg, message", [(torch.int64, "floating point dtype, got torch.int64"),
                                          (1.5, "expects a device, a dtype or a tensor, got float")])
def test_to_rejects_what_is_not_a_device_or_float_dtype(arg, message):
    model = hg.Linear(3, 2)
    with pytest.raises(TypeError, match=message):
        model.to(arg)
    assert model.weight.dtype == torch.float32  # nothing changed


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
