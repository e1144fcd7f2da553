import pytest
import torch
import torch.nn.functional as F
from helpers import check_against_torch
from hypothesis import given
from hypothesis import strategies as st

import handgrad as hg


@given(n=st.integers(1, 9), c=st.integers(2, 9))
def test_cross_entropy_matches_torch(n, c):
    torch.manual_seed(n * c)
    logits, y = 3 * torch.randn(n, c, dtype=torch.float64), torch.randint(0, c, (n,))
    check_against_torch(hg.CrossEntropyLoss(), F.cross_entropy, logits, y)


def test_cross_entropy_sum_reduction():
    logits, y = torch.randn(4, 5, dtype=torch.float64), torch.tensor([0, 4, 2, 2])
    check_against_torch(hg.CrossEntropyLoss(reduction="sum"), lambda a, b: F.cross_entropy(a, b, reduction="sum"),
                        logits, y)


def test_cross_entropy_does_not_overflow_for_huge_logits():
    logits = torch.tensor([[1e4, 0.0, -1e4], [0.0, 1e4, 1e4]])
    y = torch.tensor([0, 2])
    ce = hg.CrossEntropyLoss()
    loss = ce(logits, y)
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss, F.cross_entropy(logits, y))
    ce.backward()
    assert torch.isfinite(logits.g).all()
    torch.testing.assert_close(logits.g, torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.25, -0.25]]))


def test_nll_after_log_softmax_equals_cross_entropy():
    logits, y = torch.randn(6, 4, dtype=torch.float64), torch.randint(0, 4, (6,))
    check_against_torch(hg.NLLLoss(), F.nll_loss, F.log_softmax(logits, 1), y)
    model = hg.Sequential(hg.LogSoftmax(dim=1))
    nll = hg.NLLLoss()
    loss = nll(model(logits), y)
    nll.backward()
    model.backward()
    torch.testing.assert_close(loss, F.cross_entropy(logits, y))
    ce = hg.CrossEntropyLoss()
    x2 = logits.clone()
    ce(x2, y)
    ce.backward()
    torch.testing.assert_close(logits.g, x2.g)


def test_mse_matches_torch_same_shapes():
    a, b = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    check_against_torch(hg.MSELoss(), F.mse_loss, a, b)


def test_mse_follows_the_seeds_for_n1_against_n():
    out = torch.randn(7, 1, dtype=torch.float64)
    y = torch.randint(0, 10, (7,))
    check_against_torch(hg.MSELoss(), lambda o, t: F.mse_loss(o[:, 0], t.double()), out, y)
    mse = hg.MSELoss()
    mse(out, y)
    mse.backward()
    assert out.g.shape == (7, 1)


@pytest.mark.parametrize("out_shape, target_shape", [((6, 3), (6,)), ((6,), (6, 1)), ((6, 1), (5,)), ((2, 3), (3, 2))])
def test_mse_refuses_a_silent_broadcast(out_shape, target_shape):
    with pytest.raises(ValueError) as e:
        hg.MSELoss()(torch.randn(*out_shape), torch.randn(*target_shape))
    msg = str(e.value)
    assert str(list(out_shape)) in msg and str(list(target_shape)) in msg and "\n" not in msg


@pytest.mark.parametrize("target, match", [
    (torch.tensor([0, 3, 10]), r"class label 10 out of range: expected labels in \[0, 9\]"),
    (torch.tensor([0, -1, 2]), r"class label -1 out of range"),
    (torch.tensor([0.0, 1.0, 2.0]), "expected integer class labels.*got dtype torch.float32"),
    (torch.tensor([0, 1]), r"expected 3 class labels \(target \[N\]\).*got target \[2\]"),
])
def test_cross_entropy_rejects_bad_labels(target, match):
    for loss in (hg.CrossEntropyLoss(), hg.NLLLoss()):
        with pytest.raises(ValueError, match=match):
            loss(torch.randn(3, 10), target)


def test_cross_entropy_rejects_non_2d_logits():
    with pytest.raises(ValueError, match=r"expected logits of shape \[N, C\], got \[3\]"):
        hg.CrossEntropyLoss()(torch.randn(3), torch.tensor([0, 1, 2]))


def test_unknown_reduction():
    with pytest.raises(ValueError, match="reduction must be one of"):
        hg.MSELoss(reduction="avg")
