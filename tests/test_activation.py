import pytest
import torch
import torch.nn.functional as F
from helpers import check_against_torch
from hypothesis import given
from hypothesis import strategies as st

import handgrad as hg
from handgrad.interop import TorchGeneralRelu

ACTIVATIONS = {
    "LeakyReLU": (lambda: hg.LeakyReLU(0.2), lambda x: F.leaky_relu(x, 0.2)),
    "GELU": (hg.GELU, F.gelu),
    "GELU-tanh": (lambda: hg.GELU("tanh"), lambda x: F.gelu(x, approximate="tanh")),
    "Sigmoid": (hg.Sigmoid, torch.sigmoid),
    "Tanh": (hg.Tanh, torch.tanh),
    "SiLU": (hg.SiLU, F.silu),
    "Softmax": (lambda: hg.Softmax(1), lambda x: F.softmax(x, 1)),
    "GeneralRelu": (lambda: hg.GeneralRelu(0.1, 0.4, 2.0), TorchGeneralRelu(0.1, 0.4, 2.0)),
    "GeneralRelu-plain": (hg.GeneralRelu, TorchGeneralRelu()),
}


@pytest.mark.parametrize("name", ACTIVATIONS)
@given(shape=st.lists(st.integers(1, 7), min_size=2, max_size=3), dtype=st.sampled_from([torch.float64,
                                                                                          torch.float32]))
def test_activation_matches_torch(name, shape, dtype):
    make, ref = ACTIVATIONS[name]
    torch.manual_seed(sum(shape))
    check_against_torch(make(), ref, 3 * torch.randn(*shape), dtype=dtype)


def test_gelu_rejects_unknown_approximation():
    with pytest.raises(ValueError, match="GELU approximate must be 'none' or 'tanh', got 'fast'"):
        hg.GELU("fast")


def test_sigmoid_and_tanh_saturate_without_nan():
    x = torch.tensor([-1e4, -50.0, 0.0, 50.0, 1e4])
    for layer in (hg.Sigmoid(), hg.Tanh(), hg.SiLU(), hg.Softmax(0)):
        layer(x)
        layer.backward(torch.ones(5))
        assert torch.isfinite(x.g).all()
        del x.g
