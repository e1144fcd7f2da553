import pytest
import torch
import torch.nn.functional as F
from helpers import check_against_torch
from hypothesis import given
from hypothesis import strategies as st

import handgrad as hg

dims = st.integers(min_value=1, max_value=9)


def to_torch_layout(params):
    return {"weight": params["weight"].t(), "bias": params.get("bias")}


@given(n=dims, n_in=dims, n_out=dims, bias=st.booleans())
def test_linear_matches_torch_float64(n, n_in, n_out, bias):
    torch.manual_seed(n * 100 + n_in * 10 + n_out)
    x = torch.randn(n, n_in, dtype=torch.float64)
    check_against_torch(hg.Linear(n_in, n_out, bias=bias), F.linear, x, params_to_torch=to_torch_layout)


@given(n=dims, n_in=dims, n_out=dims)
def test_linear_matches_torch_float32(n, n_in, n_out):
    torch.manual_seed(n)
    x = torch.randn(n, n_in)
    check_against_torch(hg.Linear(n_in, n_out), F.linear, x, params_to_torch=to_torch_layout,
                        dtype=torch.float32)


def test_linear_on_3d_input_folds_leading_dims():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 4, dtype=torch.float64)
    check_against_torch(hg.Linear(4, 5), F.linear, x, params_to_torch=to_torch_layout)


@given(shape=st.lists(dims, min_size=1, max_size=3))
def test_relu_matches_torch(shape):
    torch.manual_seed(len(shape))
    check_against_torch(hg.ReLU(), torch.relu, torch.randn(*shape, dtype=torch.float64))


@given(n=dims, c=st.integers(min_value=2, max_value=9), dtype=st.sampled_from([torch.float64, torch.float32]))
def test_log_softmax_matches_torch(n, c, dtype):
    torch.manual_seed(c)
    check_against_torch(hg.LogSoftmax(dim=1), lambda x: F.log_softmax(x, dim=1), 5 * torch.randn(n, c), dtype=dtype)


def test_inits():
    torch.manual_seed(0)
    assert abs(hg.Linear(1000, 500).weight.std().item() - (2 / 1000) ** 0.5) < 2e-3  # kaiming
    assert abs(hg.Linear(1000, 500, init="randn").weight.std().item() - 1.0) < 0.02  # the seeds' randn
    w = hg.Linear(100, 50, init="torch").weight
    assert w.abs().max() <= 0.1 and w.abs().max() > 0.09
    assert float(hg.Linear(5, 3).bias.abs().max()) == 0.0
    with pytest.raises(ValueError, match="unknown init scheme 'xavier'"):
        hg.Linear(3, 2, init="xavier")


def test_linear_rejects_wrong_feature_size():
    with pytest.raises(ValueError, match=r"Linear\(784 -> 50\) expects input \[\.\.\., 784\], got \[64, 28\]"):
        hg.Linear(784, 50)(torch.randn(64, 28))


def test_first_layer_can_skip_the_input_gradient():
    lin = hg.Linear(4, 3)
    x = torch.randn(2, 4)
    lin(x)
    lin.backward(torch.ones(2, 3), needs_input_grad=False)
    assert getattr(x, "g", None) is None
    assert lin.weight.g is not None


def test_the_course_names_are_the_layers():
    assert issubclass(hg.Lin, hg.Linear) and hg.Relu is hg.ReLU and hg.Mse is hg.MSELoss
    lin = hg.Lin(4, 3)  # the torch.nn-style arguments too
    assert lin.w is lin.weight and tuple(lin.weight.shape) == (4, 3)
