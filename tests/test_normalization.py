import pytest
import torch
import torch.nn.functional as F
from helpers import check_against_torch
from hypothesis import given
from hypothesis import strategies as st

import handgrad as hg


def bn_ref(bn):
    rm, rv = bn.running_mean.clone(), bn.running_var.clone()

    def ref(x, weight, bias):
        return F.batch_norm(x, rm, rv, weight, bias, bn.training, bn.momentum, bn.eps)

    return ref, rm, rv


@given(st.sampled_from([(5, 3), (4, 3, 6), (2, 3, 5, 4), (1, 3, 1, 2)]), st.booleans(),
       st.sampled_from([torch.float64, torch.float32]))
def test_batch_norm_matches_torch_in_train_and_eval(shape, training, dtype):
    torch.manual_seed(len(shape))
    bn = (hg.BatchNorm2d if len(shape) == 4 else hg.BatchNorm1d)(3)
    bn.running_mean.normal_()
    bn.running_var.uniform_(0.5, 2.0)
    bn.weight.data.normal_()
    bn.bias.data.normal_()
    bn.train(training)
    x = 2 * torch.randn(*shape) + 1
    ref, rm, rv = bn_ref(bn.to(dtype=dtype))
    check_against_torch(bn, ref, x, dtype=dtype)
    if training:  # running statistics moved as torch moves them
        torch.testing.assert_close(bn.running_mean, rm)
        torch.testing.assert_close(bn.running_var, rv)
        assert int(bn.num_batches_tracked) >= 1


def test_batch_norm_state_dict_loads_into_torch():
    bn = hg.BatchNorm2d(4)
    bn(torch.randn(3, 4, 2, 2))
    t = torch.nn.BatchNorm2d(4)
    t.load_state_dict(bn.state_dict())
    torch.testing.assert_close(t.running_var, bn.running_var)


@pytest.mark.parametrize("cls, shape", [(hg.BatchNorm1d, (1, 3)), (hg.BatchNorm2d, (1, 3, 1, 1))])
def test_batch_norm_batch_of_one_in_training(cls, shape):
    with pytest.raises(ValueError, match=r"needs more than one value per channel; got input \[1, 3.*batch size 1"):
        cls(3)(torch.randn(*shape))
    bn = cls(3).eval()
    assert bn(torch.randn(*shape)).shape == shape  # fine in eval


def test_batch_norm_bad_input():
    with pytest.raises(ValueError, match=r"BatchNorm2d expects input \[N, C, H, W\], got \[4, 3\]"):
        hg.BatchNorm2d(3)(torch.randn(4, 3))
    with pytest.raises(ValueError, match=r"BatchNorm1d\(3\) expects 3 channels, got 5"):
        hg.BatchNorm1d(3)(torch.randn(4, 5))


@given(st.sampled_from([((4, 6), (6,)), ((2, 3, 5), (5,)), ((2, 3, 4), (3, 4))]),
       st.sampled_from([torch.float64, torch.float32]))
def test_layer_norm_matches_torch(shapes, dtype):
    shape, norm = shapes
    torch.manual_seed(len(shape))
    ln = hg.LayerNorm(norm)
    ln.weight.data.normal_()
    ln.bias.data.normal_()
    check_against_torch(ln, lambda x, weight, bias: F.layer_norm(x, norm, weight, bias, 1e-5),
                        torch.randn(*shape), dtype=dtype)


def test_layer_norm_bad_input():
    with pytest.raises(ValueError, match=r"LayerNorm\(\[6\]\) expects input \[\.\.\., 6\], got \[4, 5\]"):
        hg.LayerNorm(6)(torch.randn(4, 5))
