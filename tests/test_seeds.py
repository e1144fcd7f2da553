"""The seeds' procedure, end to end, on an mnist.pkl.gz made here in the seeds' format."""

import gzip
import pickle

import numpy as np
import pytest
import torch
from helpers import test_close

import handgrad as hg
from handgrad.data import load_dataset
from handgrad.functional import forward_and_backward, lin, mse, relu


@pytest.fixture
def seeds_pickle(tmp_path, monkeypatch):
    """data/mnist.pkl.gz as the seeds keep it: ((x_train, y_train), (x_valid, y_valid), (x_test, y_test))."""
    rng = np.random.default_rng(0)

    def split(n):
        return rng.random((n, 784), dtype=np.float32), rng.integers(0, 10, n).astype(np.int64)

    (tmp_path / "data").mkdir()
    with gzip.open(tmp_path / "data" / "mnist.pkl.gz", "wb") as f:
        pickle.dump((split(1000), split(200), split(200)), f, protocol=2)
    monkeypatch.chdir(tmp_path)  # the seeds read ./data/mnist.pkl.gz
    monkeypatch.delenv("HANDGRAD_DATA", raising=False)
    return tmp_path / "data" / "mnist.pkl.gz"


def seeds_weights(dtype):
    torch.manual_seed(42)
    w1 = torch.randn(784, 50)
    b1 = torch.zeros(50)
    w2 = torch.randn(50, 1)
    b2 = torch.zeros(1)
    return [t.to(dtype) for t in (w1, b1, w2, b2)]


@pytest.mark.parametrize("dtype, eps, rtol", [(torch.float32, 0.01, None), (torch.float64, None, 1e-10)])
def test_functional_classes_and_autograd_agree(seeds_pickle, dtype, eps, rtol):
    ds = load_dataset("mnist", allow_download=False)
    assert ds.source == str(seeds_pickle) and ds.x_train.shape == (1000, 784)
    x_train, y_train = ds.x_train.to(dtype), ds.y_train.float().to(dtype)

    # 1. the functional path: forward_and_backward fills .g
    w1, b1, w2, b2 = seeds_weights(dtype)
    x_fn = x_train.clone()
    loss_fn = forward_and_backward(x_fn, y_train, w1, b1, w2, b2)
    grads_fn = [w1.g, b1.g, w2.g, b2.g, x_fn.g]

    # 2. the classes, with the course names
    model = hg.Sequential(hg.Lin.from_weights(w1, b1), hg.Relu(), hg.Lin.from_weights(w2, b2))
    crit = hg.Mse()
    x_cls = x_train.clone()
    loss_cls = crit(model(x_cls), y_train)
    crit.backward()
    model.backward()
    grads_cls = [model[0].weight.g, model[0].bias.g, model[2].weight.g, model[2].bias.g, x_cls.g]

    # 3. autograd through the same functions
    w12, b12, w22, b22 = (t.clone().requires_grad_() for t in seeds_weights(dtype))
    xt2 = x_train.clone().requires_grad_()
    loss_ag = mse(lin(relu(lin(xt2, w12, b12)), w22, b22), y_train)
    loss_ag.backward()
    grads_ag = [w12.grad, b12.grad, w22.grad, b22.grad, xt2.grad]

    assert [tuple(g.shape) for g in grads_cls] == [(784, 50), (50,), (50, 1), (1,), (1000, 784)]
    for name, a, b, c in zip(["w1", "b1", "w2", "b2", "input"], grads_fn, grads_cls, grads_ag):
        if eps is not None:  # the seeds' test_close
            test_close(a, c, eps=eps)
            test_close(b, c, eps=eps)
        else:
            torch.testing.assert_close(a, c, rtol=rtol, atol=0, msg=lambda m, name=name: f"{name}: {m}")
            torch.testing.assert_close(b, c, rtol=rtol, atol=0, msg=lambda m, name=name: f"{name}: {m}")
    for a in (loss_fn, loss_cls):
        torch.testing.assert_close(a, loss_ag.detach(), rtol=1e-6 if eps else 1e-12, atol=0)


def test_seeds_loss_is_large_with_randn_weights(seeds_pickle):
    """As in the seeds, plain randn weights give a huge initial MSE (thousands)."""
    ds = load_dataset("mnist", allow_download=False)
    w1, b1, w2, b2 = seeds_weights(torch.float32)
    loss = mse(lin(relu(lin(ds.x_train, w1, b1)), w2, b2), ds.y_train.float())
    assert loss.item() > 100
