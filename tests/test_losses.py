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


# ------------------------------------------------ reductions: 'mean', 'sum', 'none' as torch, nothing else

REDUCTIONS = ["mean", "sum", "none"]


def _class_data(n=5, c=4, seed=0):
    torch.manual_seed(seed)
    return 3 * torch.randn(n, c, dtype=torch.float64), torch.randint(0, c, (n,))


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_loss_classes_match_torch_for_each_reduction(reduction):
    """Forward values, and hand-written gradients under a random dloss (a vector for 'none') against autograd."""
    logits, y = _class_data()
    check_against_torch(hg.CrossEntropyLoss(reduction=reduction),
                        lambda a, b: F.cross_entropy(a, b, reduction=reduction), logits, y)
    check_against_torch(hg.NLLLoss(reduction=reduction), lambda a, b: F.nll_loss(a, b, reduction=reduction),
                        F.log_softmax(logits, 1), y)
    a, b = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    check_against_torch(hg.MSELoss(reduction=reduction), lambda o, t: F.mse_loss(o, t, reduction=reduction), a, b)


def _autograd(loss_fn, x, dloss):
    x = x.detach().clone().requires_grad_(True)
    loss = loss_fn(x)
    (g,) = torch.autograd.grad(loss, x, dloss)
    return loss.detach(), g


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_functional_losses_match_torch_for_each_reduction(reduction):
    """handgrad.functional's forward and *_grad (with and without dloss) against torch.nn.functional."""
    from handgrad import functional as HF

    logits, y = _class_data(6, 5, seed=1)
    n = logits.shape[0]
    dloss = torch.randn(n, dtype=torch.float64) if reduction == "none" else torch.tensor(1.7, dtype=torch.float64)
    ones = torch.ones_like(dloss)

    ref, ref_g = _autograd(lambda x: F.cross_entropy(x, y, reduction=reduction), logits, dloss)
    loss, m, logsum = HF.cross_entropy(logits, y, reduction)
    assert loss.shape == ref.shape
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(HF.cross_entropy_grad(logits, y, m, logsum, reduction, dloss), ref_g)
    _, ref_g1 = _autograd(lambda x: F.cross_entropy(x, y, reduction=reduction), logits, ones)
    torch.testing.assert_close(HF.cross_entropy_grad(logits, y, m, logsum, reduction), ref_g1)

    logp = F.log_softmax(logits, 1)
    ref, ref_g = _autograd(lambda x: F.nll_loss(x, y, reduction=reduction), logp, dloss)
    loss = HF.nll(logp, y, reduction)
    assert loss.shape == ref.shape
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(HF.nll_grad(logp, y, reduction, dloss), ref_g)
    _, ref_g1 = _autograd(lambda x: F.nll_loss(x, y, reduction=reduction), logp, ones)
    torch.testing.assert_close(HF.nll_grad(logp, y, reduction), ref_g1)

    out, t = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    dloss = torch.randn(4, 3, dtype=torch.float64) if reduction == "none" else torch.tensor(-0.3, dtype=torch.float64)
    ref, ref_g = _autograd(lambda x: F.mse_loss(x, t, reduction=reduction), out, dloss)
    loss = HF.mse(out, t, reduction)
    assert loss.shape == ref.shape
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(HF.mse_grads(out, t, reduction, dloss), ref_g)
    _, ref_g1 = _autograd(lambda x: F.mse_loss(x, t, reduction=reduction), out, torch.ones_like(dloss))
    torch.testing.assert_close(HF.mse_grads(out, t, reduction), ref_g1)


def test_mse_none_follows_the_seeds_for_n1_against_n():
    """reduction='none' with output [N, 1] and target [N]: a per-element loss [N], gradient [N, 1]."""
    out, y = torch.randn(7, 1, dtype=torch.float64), torch.randn(7, dtype=torch.float64)
    check_against_torch(hg.MSELoss(reduction="none"), lambda o, t: F.mse_loss(o[:, 0], t, reduction="none"), out, y)
    mse = hg.MSELoss(reduction="none")
    assert mse(out, y).shape == (7,)
    mse.backward(torch.ones(7, dtype=torch.float64))
    assert out.g.shape == (7, 1) and y.g.shape == (7,)


def test_loss_none_backward_needs_the_per_sample_gradient():
    logits, y = _class_data()
    ce = hg.CrossEntropyLoss(reduction="none")
    assert ce(logits, y).shape == (5,)
    with pytest.raises(RuntimeError, match=r"needs the gradient of its output \(shape \[5\]\)"):
        ce.backward()


@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_functional_loss_grads_reject_a_dloss_of_the_wrong_shape(reduction):
    from handgrad import functional as HF

    logits, y = _class_data()
    bad = torch.ones(3, dtype=torch.float64)
    want = r"\[5\]" if reduction == "none" else r"\[\]"
    with pytest.raises(ValueError, match=rf"expected dloss of shape {want}.*got \[3\]") as e:
        HF.nll_grad(logits, y, reduction, bad)
    assert "\n" not in str(e.value)
    _, m, logsum = HF.cross_entropy(logits, y, reduction)
    with pytest.raises(ValueError, match=rf"expected dloss of shape {want}.*got \[3\]"):
        HF.cross_entropy_grad(logits, y, m, logsum, reduction, bad)
    want = r"\[5, 4\]" if reduction == "none" else r"\[\]"
    with pytest.raises(ValueError, match=rf"expected dloss of shape {want}.*got \[3\]"):
        HF.mse_grads(logits, logits.flip(0), reduction, bad)


@pytest.mark.parametrize("bad", ["avg", "Mean", "", "elementwise_mean", None, 1])
def test_unknown_reduction_is_rejected_by_classes_and_functions(bad):
    from handgrad import functional as HF

    logits, y = _class_data()
    _, m, logsum = HF.cross_entropy(logits, y)
    calls = [
        lambda: hg.MSELoss(reduction=bad), lambda: hg.CrossEntropyLoss(reduction=bad),
        lambda: hg.NLLLoss(reduction=bad),
        lambda: HF.mse(logits, logits, bad), lambda: HF.mse_grads(logits, logits, bad),
        lambda: HF.nll(logits, y, bad), lambda: HF.nll_grad(logits, y, bad),
        lambda: HF.cross_entropy(logits, y, bad), lambda: HF.cross_entropy_grad(logits, y, m, logsum, bad),
    ]
    for call in calls:
        with pytest.raises(ValueError) as e:
            call()
        msg = str(e.value)
        assert "reduction must be one of 'mean', 'sum', 'none'" in msg and repr(bad) in msg and "\n" not in msg


@pytest.mark.parametrize("make, target", [
    (lambda: hg.CrossEntropyLoss(), lambda: torch.zeros(0, dtype=torch.long)),
    (lambda: hg.NLLLoss(), lambda: torch.zeros(0, dtype=torch.long)),
    (lambda: hg.MSELoss(), lambda: torch.zeros(0, 3)),
])
def test_an_empty_batch_gives_nan_and_an_empty_gradient_as_torch(make, target):
    """The mean over no rows is NaN (torch's too); backward used to raise ZeroDivisionError."""
    x, lf = torch.zeros(0, 3), make()
    assert torch.isnan(lf(x, target()))
    lf.backward()
    assert x.g.shape == (0, 3)
