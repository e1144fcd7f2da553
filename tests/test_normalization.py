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


@pytest.mark.parametrize("lead", [(), (3,), (2, 3)])
def test_layer_norm_param_grads_keep_the_param_shape_for_any_leading_dims(lead):
    """weight.g and bias.g are (2, 5) for an unbatched (2, 5) input too (a sum over no leading dims)."""
    torch.manual_seed(len(lead))
    ln = hg.LayerNorm((2, 5))
    ln.weight.data.normal_()
    ln.bias.data.normal_()
    check_against_torch(ln, lambda x, weight, bias: F.layer_norm(x, (2, 5), weight, bias, 1e-5),
                        torch.randn(*lead, 2, 5))
    assert ln.weight.g.shape == (2, 5) and ln.bias.g.shape == (2, 5)


@pytest.mark.parametrize("cls, tcls, shape", [(hg.BatchNorm2d, torch.nn.BatchNorm2d, (4, 3, 2, 5)),
                                               (hg.BatchNorm1d, torch.nn.BatchNorm1d, (6, 3))])
def test_batch_norm_momentum_none_is_a_cumulative_average(cls, tcls, shape):
    """momentum=None: running stats are the plain mean over all batches so far (factor 1/num_batches_tracked)."""
    torch.manual_seed(0)
    bn, ref = cls(3, momentum=None).double(), tcls(3, momentum=None).double()
    batches = [(i + 1) * torch.randn(*shape, dtype=torch.float64) + i for i in range(5)]
    for x in batches:
        torch.testing.assert_close(bn(x), ref(x))
    torch.testing.assert_close(bn.running_mean, ref.running_mean)
    torch.testing.assert_close(bn.running_var, ref.running_var)
    assert int(bn.num_batches_tracked) == int(ref.num_batches_tracked) == 5
    dims = (0,) + tuple(range(2, len(shape)))
    torch.testing.assert_close(bn.running_mean, torch.stack([x.mean(dims) for x in batches]).mean(0))
    torch.testing.assert_close(bn.running_var, torch.stack([x.var(dims) for x in batches]).mean(0))
    bn.eval(), ref.eval()
    x = torch.randn(*shape, dtype=torch.float64)
    torch.testing.assert_close(bn(x), ref(x))
    bn.backward(torch.ones_like(x))  # eval backward runs with momentum=None too


def test_batch_norm_momentum_none_gradients_match_torch():
    bn = hg.BatchNorm2d(3, momentum=None)
    bn.running_var.uniform_(0.5, 2.0)
    bn.num_batches_tracked.fill_(2)
    rm, rv = bn.running_mean.double(), bn.running_var.double()

    def ref(x, weight, bias):  # torch's momentum=None: factor 1 / num_batches_tracked, counting this batch
        return F.batch_norm(x, rm, rv, weight, bias, True, 1 / 3, bn.eps)

    check_against_torch(bn, ref, 2 * torch.randn(4, 3, 2, 2) + 1)
    torch.testing.assert_close(bn.running_mean, rm)  # the 3rd batch: factor 1/3, as torch
    torch.testing.assert_close(bn.running_var, rv)


def test_batch_norm_momentum_none_through_interop():
    from handgrad.interop import from_torch, to_torch

    t = torch.nn.BatchNorm2d(3, momentum=None)
    t(torch.randn(4, 3, 2, 2))
    h = from_torch(t)
    assert h.momentum is None and int(h.num_batches_tracked) == 1
    x = torch.randn(4, 3, 2, 2)
    h(x), t(x)
    torch.testing.assert_close(h.running_mean, t.running_mean)
    torch.testing.assert_close(h.running_var, t.running_var)
    back = to_torch(h)
    assert back.momentum is None
    torch.testing.assert_close(back.running_var, h.running_var)


@pytest.mark.parametrize("kwargs, match", [
    ({"momentum": -0.1}, r"momentum must be None or a number in \[0, 1\], got -0.1"),
    ({"momentum": 1.5}, r"momentum must be None or a number in \[0, 1\], got 1.5"),
    ({"momentum": "0.1"}, r"momentum must be None or a number in \[0, 1\], got '0.1'"),
    ({"momentum": float("nan")}, r"momentum must be None or a number in \[0, 1\], got nan"),
    ({"eps": 0.0}, r"eps must be a positive finite number, got 0.0"),
    ({"eps": -1e-5}, r"eps must be a positive finite number, got -1e-05"),
    ({"eps": float("inf")}, r"eps must be a positive finite number, got inf"),
    ({"num_features": 0}, r"num_features must be a positive int, got 0"),
    ({"num_features": -3}, r"num_features must be a positive int, got -3"),
    ({"num_features": 3.0}, r"num_features must be a positive int, got 3.0"),
    ({"num_features": True}, r"num_features must be a positive int, got True"),
])
@pytest.mark.parametrize("cls", [hg.BatchNorm1d, hg.BatchNorm2d])
def test_batch_norm_rejects_bad_arguments_at_construction(cls, kwargs, match):
    kwargs = {"num_features": 3, **kwargs}
    with pytest.raises(ValueError, match=rf"{cls.__name__}: {match}") as e:
        cls(**kwargs)
    assert "\n" not in str(e.value)


def test_batch_norm_accepts_momentum_bounds():
    for momentum in (0, 0.0, 1, 1.0, None):
        assert hg.BatchNorm2d(3, momentum=momentum).momentum == momentum


@pytest.mark.parametrize("kwargs, match", [
    ({"eps": 0}, r"eps must be a positive finite number, got 0"),
    ({"eps": -1e-5}, r"eps must be a positive finite number, got -1e-05"),
    ({"eps": float("nan")}, r"eps must be a positive finite number, got nan"),
    ({"normalized_shape": ()}, r"normalized_shape must be a positive int or a non-empty tuple of them, got \(\)"),
    ({"normalized_shape": 0}, r"normalized_shape must be .*, got 0"),
    ({"normalized_shape": (4, -1)}, r"normalized_shape must be .*, got \(4, -1\)"),
    ({"normalized_shape": 2.5}, r"normalized_shape must be .*, got 2.5"),
    ({"normalized_shape": "6"}, r"normalized_shape must be .*, got '6'"),
])
def test_layer_norm_rejects_bad_arguments_at_construction(kwargs, match):
    kwargs = {"normalized_shape": 6, **kwargs}
    with pytest.raises(ValueError, match=rf"LayerNorm: {match}") as e:
        hg.LayerNorm(**kwargs)
    assert "\n" not in str(e.value)


def test_layer_norm_accepts_shapes_as_torch():
    assert hg.LayerNorm(6).normalized_shape == (6,)
    assert hg.LayerNorm([2, 3]).normalized_shape == (2, 3)
    assert hg.LayerNorm(torch.Size([2, 3])).normalized_shape == (2, 3)
