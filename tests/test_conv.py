import pytest
import torch
import torch.nn.functional as F
from helpers import check_against_torch
from hypothesis import given
from hypothesis import strategies as st

import handgrad as hg


@st.composite
def conv_configs(draw):
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    ci, co = groups * draw(st.integers(1, 3)), groups * draw(st.integers(1, 3))
    k, s, p, d = draw(st.integers(1, 4)), draw(st.integers(1, 3)), draw(st.integers(0, 2)), draw(st.integers(1, 2))
    size = max(d * (k - 1) + 1 - 2 * p, 1) + draw(st.integers(0, 5))
    return dict(ci=ci, co=co, k=k, s=s, p=p, d=d, groups=groups, bias=draw(st.booleans()),
                n=draw(st.integers(1, 3)), h=size, w=size + draw(st.integers(0, 2)))


def conv_case(c, dtype):
    torch.manual_seed(c["ci"] * 7 + c["k"])
    conv = hg.Conv2d(c["ci"], c["co"], c["k"], c["s"], c["p"], c["d"], c["groups"], c["bias"])
    x = torch.randn(c["n"], c["ci"], c["h"], c["w"], dtype=dtype)

    def ref(x, weight, bias=None):
        return F.conv2d(x, weight, bias, c["s"], c["p"], c["d"], c["groups"])

    return conv, ref, x


@pytest.mark.parametrize("pointwise,unfold", [(False, 0), (True, 9), (True, 10**9)],
                         ids=["conv-form", "pointwise-gemm", "unfold-gemm"])
@given(c=conv_configs())
def test_conv2d_matches_torch_float64(c, pointwise, unfold):
    """Every way of computing the gradients: the convolution forms, GEMMs for 1x1 kernels, and dW as a GEMM
    over unfolded patches (for few input channels by default; forced for every kernel in 'unfold-gemm')."""
    conv, ref, x = conv_case(c, torch.float64)
    conv.POINTWISE, conv.UNFOLD_MAX = pointwise, unfold  # this instance only
    check_against_torch(conv, ref, x)


@given(c=conv_configs())
def test_input_grad_added_into_a_given_tensor(c):
    """_input_grad(dY, X, into) adds dX into `into` (in place, for the fused CNN step's residual sums)."""
    conv, _, x = conv_case(c, torch.float64)
    conv = conv.double()
    dy = torch.randn_like(conv(x))
    for pointwise in (False, True):
        conv.POINTWISE = pointwise
        alone = conv._input_grad(dy, x)
        base = torch.randn_like(x)
        into = base.clone()
        got = conv._input_grad(dy, x, into)
        assert got is into
        torch.testing.assert_close(got, base + alone, rtol=1e-12, atol=1e-12)


@given(conv_configs())
def test_conv2d_matches_torch_float32(c):
    conv, ref, x = conv_case(c, torch.float32)
    check_against_torch(conv, ref, x, dtype=torch.float32)


def test_conv2d_rectangular_kernel_and_stride():
    torch.manual_seed(0)
    conv = hg.Conv2d(2, 3, (2, 3), stride=(2, 1), padding=(1, 0), dilation=(1, 2))
    x = torch.randn(2, 2, 7, 8, dtype=torch.float64)
    check_against_torch(conv, lambda x, weight, bias: F.conv2d(x, weight, bias, (2, 1), (1, 0), (1, 2)), x)


def test_conv2d_backward_uses_no_torch_backward_op(monkeypatch):
    """The weight and input gradients come from convolutions, GEMMs and conv_transpose2d, not torch's backward
    kernels."""
    calls = []
    real = torch.ops.aten.convolution_backward.default

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.ops.aten.convolution_backward, "default", spy)
    conv = hg.Conv2d(2, 4, 3, padding=1)
    conv(torch.randn(2, 2, 5, 5))
    conv.backward(torch.randn(2, 4, 5, 5))
    assert conv.weight.g is not None and not calls


@pytest.mark.parametrize("shape, match", [
    ((3, 8, 8), r"expects input \[N, C, H, W\], got \[3, 8, 8\]"),
    ((2, 4, 8, 8), r"expects 3 input channels, got 4 \(input \[2, 4, 8, 8\]\)"),
    ((2, 3, 2, 2), r"input spatial size 2x2 \(2x2 with padding\) is smaller than the kernel \(5x5 with dilation\)"),
])
def test_conv2d_bad_input(shape, match):
    with pytest.raises(ValueError, match=match):
        hg.Conv2d(3, 8, 5)(torch.randn(*shape))


def test_conv2d_bad_groups():
    with pytest.raises(ValueError, match=r"must both be divisible by groups \(2\)"):
        hg.Conv2d(3, 4, 3, groups=2)


@pytest.mark.parametrize("stride,padding,groups", [(1, 0, 1), (2, 0, 1), (2, 1, 2), (3, 2, 1)])
def test_pointwise_gemm_gradients_of_1x1_kernels(stride, padding, groups):
    torch.manual_seed(stride * 10 + padding)
    conv = hg.Conv2d(4, 6, 1, stride, padding, groups=groups)
    assert conv._pointwise()
    x = torch.randn(3, 4, 7, 8, dtype=torch.float64)
    check_against_torch(conv, lambda x, weight, bias: F.conv2d(x, weight, bias, stride, padding, 1, groups), x)


@pytest.mark.parametrize("kernel, stride, groups, pointwise, unfold", [
    (3, 1, 1, True, 9), (3, 2, 1, False, 0), (1, 2, 1, True, 9), (1, 1, 2, True, 9), (3, 1, 2, False, 0),
    (3, 1, 1, True, 10**9)])
def test_an_empty_batch_gives_zero_weight_gradients_of_the_weights_shape(kernel, stride, groups, pointwise, unfold):
    """N = 0: dW is an empty sum, zeros shaped as W, as torch's autograd gives (the convolution form swapped the
    empty batch into the channels and gave [0, C, kh, kw])."""
    torch.manual_seed(0)
    conv = hg.Conv2d(4, 6, kernel, stride=stride, padding=kernel // 2, groups=groups)
    conv.POINTWISE, conv.UNFOLD_MAX = pointwise, unfold
    x = torch.randn(0, 4, 5, 5)
    out = conv(x)
    conv.backward(torch.zeros(out.shape))
    w = conv.weight.detach().clone().requires_grad_(True)
    b = conv.bias.detach().clone().requires_grad_(True)
    xt = x.clone().requires_grad_(True)
    ref = torch.autograd.grad(F.conv2d(xt, w, b, stride, kernel // 2, 1, groups).sum(), [xt, w, b])
    for hand, r in zip([x.g, conv.weight.g, conv.bias.g], ref):
        assert hand.shape == r.shape
        torch.testing.assert_close(hand, r)
