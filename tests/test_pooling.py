import pytest
import torch
import torch.nn.functional as F
from helpers import check_against_torch
from hypothesis import given
from hypothesis import strategies as st

import handgrad as hg


@st.composite
def pool_configs(draw):
    k, s = draw(st.integers(1, 4)), draw(st.integers(1, 3))
    p = draw(st.integers(0, k // 2))
    return k, s, p, draw(st.integers(k, 9)), draw(st.integers(k, 9))


@given(pool_configs(), st.sampled_from([torch.float64, torch.float32]))
def test_max_pool_matches_torch(cfg, dtype):
    k, s, p, h, w = cfg
    x = torch.randn(2, 3, h, w)
    check_against_torch(hg.MaxPool2d(k, s, p), lambda x: F.max_pool2d(x, k, s, p), x, dtype=dtype)


@given(pool_configs(), st.sampled_from([torch.float64, torch.float32]))
def test_avg_pool_matches_torch(cfg, dtype):
    k, s, p, h, w = cfg
    x = torch.randn(2, 3, h, w)
    check_against_torch(hg.AvgPool2d(k, s, p), lambda x: F.avg_pool2d(x, k, s, p), x, dtype=dtype)


@pytest.mark.parametrize("out, size", [(1, 7), (1, 4), (2, 6), ((2, 3), 6)])
def test_adaptive_avg_pool_matches_torch(out, size):
    x = torch.randn(2, 3, size, size, dtype=torch.float64)
    check_against_torch(hg.AdaptiveAvgPool2d(out), lambda x: F.adaptive_avg_pool2d(x, out), x)


def test_pooling_bad_input():
    with pytest.raises(ValueError, match=r"MaxPool2d expects input \[N, C, H, W\], got \[3, 4\]"):
        hg.MaxPool2d(2)(torch.randn(3, 4))
    with pytest.raises(ValueError, match="input spatial size 2x2 is smaller than the window 3x3"):
        hg.AvgPool2d(3)(torch.randn(1, 1, 2, 2))
    with pytest.raises(ValueError, match="output size 2x2 must divide the input size 7x7"):
        hg.AdaptiveAvgPool2d(2)(torch.randn(1, 1, 7, 7))
