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


# ------------------------------------------------------------------ the seeds' code, as they wrote it
# The cells below are the lesson's own class code and checks, run unchanged against handgrad's names
# (Lin, Relu, Mse, Model, Module): only the imports differ.

def _seeds_data():
    """The seeds' first cell: ./data/mnist.pkl.gz read with pickle, mapped to tensors."""
    from pathlib import Path
    from torch import tensor

    path_data = Path('data')
    path_gz = path_data/'mnist.pkl.gz'
    with gzip.open(path_gz, 'rb') as f:
        ((x_train, y_train), (x_valid, y_valid), _) = pickle.load(f, encoding='latin-1')
    x_train, y_train, x_valid, y_valid = map(tensor, [x_train, y_train, x_valid, y_valid])
    return x_train, y_train, x_valid, y_valid


def _seeds_reference(x_train, y_train):
    """The seeds' functional path and their saved gradients (w1g, w2g, b1g, b2g, ig)."""
    from handgrad.functional import lin_grad

    torch.manual_seed(42)
    n, m = x_train.shape
    nh = 50
    w1 = torch.randn(m, nh)
    b1 = torch.zeros(nh)
    w2 = torch.randn(nh, 1)
    b2 = torch.zeros(1)

    def forward_and_backward(inp, targ):
        l1 = lin(inp, w1, b1)
        l2 = relu(l1)
        out = lin(l2, w2, b2)
        diff = out[:, 0] - targ
        loss = diff.pow(2).mean()
        out.g = 2. * diff[:, None] / inp.shape[0]
        lin_grad(l2, out, w2, b2)
        l1.g = (l1 > 0).float() * l2.g
        lin_grad(inp, l1, w1, b1)

    forward_and_backward(x_train, y_train)

    def get_grad(x): return x.g.clone()
    chks = w1, w2, b1, b2, x_train
    grads = tuple(map(get_grad, chks))
    return (w1, b1, w2, b2), grads


def test_the_seeds_classes_as_written(seeds_pickle):
    from handgrad import Lin, Model, Mse, Relu  # noqa: F401 - the names the seeds' cells use

    x_train, y_train, x_valid, y_valid = _seeds_data()
    (w1, b1, w2, b2), (w1g, w2g, b1g, b2g, ig) = _seeds_reference(x_train, y_train)

    # the seeds' cells, unchanged
    model = Model(w1, b1, w2, b2)
    loss = model(x_train, y_train)
    assert model.preds.shape == (1000, 1) and model.final_loss is loss
    model.backward()
    test_close(w2g, w2.g, eps=0.01)
    test_close(b2g, b2.g, eps=0.01)
    test_close(w1g, w1.g, eps=0.01)
    test_close(b1g, b1.g, eps=0.01)
    test_close(ig, x_train.g, eps=0.01)
    assert model.layers[0].w.shape == model.layers[0].w.g.shape == (784, 50)

    # the layers one by one, as the seeds' Model.backward runs them
    layers = [Lin(w1, b1), Relu(), Lin(w2, b2)]
    loss_fn = Mse()
    x = x_train
    for l in layers:
        x = l(x)
    loss_fn(x, y_train)
    loss_fn.backward()
    for l in reversed(layers):
        l.backward()
    test_close(w1g, w1.g, eps=0.01)
    test_close(ig, x_train.g, eps=0.01)

    # the other seed's order, Model(w1, w2, b1, b2), and its torch.nn-style Model(n_in, nh, n_out)
    model = Model(w1, w2, b1, b2)
    model(x_train, y_train)
    model.backward()
    test_close(w1g, w1.g, eps=0.01)
    test_close(b2g, b2.g, eps=0.01)
    assert Model(784, 50, 1)(x_valid, y_valid).dim() == 0


def test_the_seeds_module_subclasses_as_written(seeds_pickle):
    """The seeds' Module-style layers, subclassing handgrad's Module: bwd(self, out, inp) assigning .g."""
    from handgrad import Module

    x_train, y_train, _, _ = _seeds_data()
    (w1, b1, w2, b2), (w1g, w2g, b1g, b2g, ig) = _seeds_reference(x_train, y_train)

    class Relu(Module):
        def forward(self, inp): return inp.clamp_min(0.)
        def bwd(self, out, inp):
            inp.g = (inp>0).float() * out.g

    class Lin(Module):
        def __init__(self, w, b): self.w,self.b = w,b
        def forward(self, inp):
            return inp@self.w + self.b
        def bwd(self, out, inp):
            inp.g = self.out.g @ self.w.t()
            self.w.g = inp.t() @ self.out.g
            self.b.g = self.out.g.sum(0)

    class Mse(Module):
        def forward (self, inp, targ):
            self.diff = (inp.squeeze() - targ)
            return self.diff.pow(2).mean()
        def bwd(self, out, inp, targ):
            inp.g = 2*(self.diff).unsqueeze(-1) / targ.shape[0]

    class Model():
        def __init__(self, w1, b1, w2, b2):
            self.layers = [Lin(w1,b1), Relu(), Lin(w2,b2)]
            self.loss = Mse()
        def __call__(self, x, targ):
            for l in self.layers:
                x = l(x)
            self.preds = x
            self.final_loss = self.loss(x, targ)
            return self.final_loss
        def backward(self):
            self.loss.backward()
            for l in reversed(self.layers):
                l.backward()

    model = Model(w1, b1, w2, b2)
    loss = model(x_train, y_train)
    model.backward()
    test_close(w2g, w2.g, eps=0.01)
    test_close(b2g, b2.g, eps=0.01)
    test_close(w1g, w1.g, eps=0.01)
    test_close(b1g, b1.g, eps=0.01)
    test_close(ig, x_train.g, eps=0.01)

    # the plain tensors such a layer is given are its parameters: checked, and summed when the layer is reused
    from handgrad.check import check_module

    lin = Lin(torch.randn(6, 4), torch.randn(4))
    assert [n for n, _ in lin.named_parameters()] == ["w", "b"]
    report = check_module(lin, torch.randn(5, 6))
    assert report.passed and [t.name for t in report.tensors] == ["input", "w", "b"]
    assert check_module(Relu(), torch.randn(5, 6)).passed

    class Twice(Module):  # one seeds'-form layer called twice: its weight's .g is the sum of both calls
        def __init__(self): self.lin = Lin(torch.randn(4, 4, dtype=torch.float64), torch.zeros(4, dtype=torch.float64))
        def forward(self, x): return self.lin(self.lin(x))

    report = check_module(Twice(), torch.randn(3, 4))
    assert report.passed and [t.name for t in report.tensors] == ["input", "lin.w", "lin.b"]


def test_a_wrong_seeds_form_layer_is_caught():
    """The seeds' form is checked like any other: a transposed weight gradient or a missing 1/N fails."""
    from handgrad import Module
    from handgrad.check import check_module

    class BadLin(Module):
        def __init__(self, w, b): self.w, self.b = w, b
        def forward(self, inp): return inp @ self.w + self.b
        def bwd(self, out, inp):
            inp.g = out.g @ self.w.t()
            self.w.g = (out.g.t() @ inp).t() * 1.01
            self.b.g = out.g.sum(0)

    report = check_module(BadLin(torch.randn(5, 5), torch.randn(5)), torch.randn(4, 5))
    assert [t.name for t in report.failures()] == ["w"]

    class Returns(Module):
        def forward(self, inp): return inp * 2
        def bwd(self, out, inp):
            inp.g = 2 * out.g
            return inp.g

    with pytest.raises(TypeError, match="seeds' form"):
        m = Returns()
        m(torch.randn(3))
        m.backward(torch.ones(3))

    class MisNamed(Module):  # the seeds' body under another first name: told how to fix it
        def forward(self, inp): return inp * 2
        def bwd(self, o, inp):
            inp.g = 2 * o.g

    m = MisNamed()
    m(torch.randn(3))
    with pytest.raises(AttributeError, match="name it `out`"):
        m.backward(torch.ones(3))


def test_the_seeds_functional_grads_assign_g():
    from handgrad.functional import lin_grad, mse_grad, relu_grad

    x = torch.randn(8, 5)
    w, b = torch.randn(5, 1), torch.zeros(1)
    targ = torch.randn(8)
    l1 = lin(x, w, b)
    l2 = relu(l1)
    mse_grad(l2, targ)
    relu_grad(l1, l2)
    lin_grad(x, l1, w, b)
    xa, wa, ba = (t.clone().requires_grad_() for t in (x, w, b))
    mse(relu(lin(xa, wa, ba)), targ).backward()
    for h, a in [(x.g, xa.grad), (w.g, wa.grad), (b.g, ba.grad)]:
        torch.testing.assert_close(h, a)


# ------------------------------------------------------------------ Lin(w, b) and seeds'-form layers, attacked

def _torch_grads(fn, *tensors):
    ts = [t.detach().clone().requires_grad_() for t in tensors]
    fn(*ts).backward()
    return [t.grad for t in ts]


def test_two_lins_given_one_w_sum_its_gradient():
    torch.manual_seed(0)
    w, b1, b2 = torch.randn(4, 4, dtype=torch.float64), torch.randn(4, dtype=torch.float64), \
        torch.randn(4, dtype=torch.float64)
    model = hg.Sequential(hg.Lin(w, b1), hg.Relu(), hg.Lin(w, b2))
    x = torch.randn(5, 4, dtype=torch.float64)
    out = model(x)
    model.backward(torch.ones_like(out))
    ref = _torch_grads(lambda w_, x_: (relu(x_ @ w_ + b1) @ w_ + b2).sum(), w, x)
    torch.testing.assert_close(w.g, ref[0])
    torch.testing.assert_close(x.g, ref[1])
    assert sum(1 for _ in model.parameters()) == 3  # w once, b1, b2


def test_lin_given_a_layers_parameters_is_tied_to_it():
    """Lin(L.weight, L.bias) uses L's Parameters themselves: one SGD step moves them once, as torch's."""
    torch.manual_seed(0)
    first = hg.Linear(4, 4, dtype=torch.float64)
    model = hg.Sequential(first, hg.Relu(), hg.Lin(first.weight, first.bias))
    w0, b0 = first.weight.detach().clone(), first.bias.detach().clone()
    x = torch.randn(6, 4, dtype=torch.float64)
    opt = hg.SGD(model.parameters(), lr=0.1)
    out = model(x)
    model.backward(torch.ones_like(out))
    opt.step()
    gw, gb = _torch_grads(lambda w_, b_: (relu(x @ w_ + b_) @ w_ + b_).sum(), w0, b0)
    torch.testing.assert_close(first.weight.detach(), w0 - 0.1 * gw)
    torch.testing.assert_close(first.bias.detach(), b0 - 0.1 * gb)
    assert sorted(model[2].state_dict()) == ["bias", "weight"]


def test_a_hand_written_loop_over_model_matches_torch():
    """The lesson's own update, p -= lr * p.g, over Model(w1, b1, w2, b2), step for step with torch."""
    torch.manual_seed(0)
    ws = [torch.randn(6, 5, dtype=torch.float64) * 0.3, torch.zeros(5, dtype=torch.float64),
          torch.randn(5, 1, dtype=torch.float64) * 0.3, torch.zeros(1, dtype=torch.float64)]
    ts = [w.clone().requires_grad_() for w in ws]
    x, y = torch.randn(16, 6, dtype=torch.float64), torch.randn(16, dtype=torch.float64)
    model = hg.Model(*ws)
    for _ in range(3):
        loss = model(x, y)
        model.backward()
        with torch.no_grad():
            for p in ws:
                p -= 0.1 * p.g
        loss_t = mse(lin(relu(lin(x, ts[0], ts[1])), ts[2], ts[3]), y)
        loss_t.backward()
        with torch.no_grad():
            for t in ts:
                t -= 0.1 * t.grad
                t.grad = None
        torch.testing.assert_close(loss, loss_t.detach())
    for w, t in zip(ws, ts):
        torch.testing.assert_close(w, t.detach())


def test_seeds_form_layers_in_torch_through_wrap_and_to_torch():
    from handgrad.interop import to_torch, wrap

    from helpers import SeedsLin as Lin

    layer = wrap(Lin(torch.randn(4, 3, dtype=torch.float64), torch.randn(3, dtype=torch.float64)))
    assert torch.autograd.gradcheck(layer, (torch.randn(5, 4, dtype=torch.float64, requires_grad=True),))
    twin = to_torch(hg.Sequential(hg.Lin(torch.randn(4, 3), torch.randn(3)), hg.Relu()))
    assert isinstance(twin[0], torch.nn.Linear)


def test_seeds_form_misuse_is_one_clear_error():
    class Add(hg.Module):
        def forward(self, a, c): return a + c
        def bwd(self, out, a, c):
            a.g = out.g
            c.g = out.g

    h = torch.randn(3)
    add = Add()
    add(h, h)
    with pytest.raises(TypeError, match="same tensor as two of its inputs"):
        add.backward(torch.ones(3))
    with pytest.raises(ValueError, match=r"^Lin\(w, b\) expects w a 2-d floating-point tensor"):
        hg.Lin(torch.ones(4, 3, dtype=torch.long), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"^Lin\(w, b\) expects b of shape \[3\] with w's dtype"):
        hg.Lin(torch.randn(4, 3), torch.zeros(3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"^SGD: parameter 1 \(shape \[3\]\) has a gradient of shape \[\]"):
        lin = hg.Lin(torch.randn(4, 3), torch.zeros(3))
        opt = hg.SGD(lin.parameters(), lr=0.1)
        lin.weight.g, lin.bias.g = torch.zeros(4, 3), torch.tensor(1.0)  # a bias gradient not summed
        opt.step()


def test_a_one_element_loss_needs_its_gradient_said():
    """The third seed's loss, `.mean(dim=0)` of an (N, 1) difference, has shape [1], not a scalar: backward says so
    in one line (a [1, 1] output is also what a later one-sample forward leaves, which must not pass for a loss),
    and runs from the gradient given."""
    class Mse(hg.Module):
        def forward(self, inp, targ): return (inp - targ).pow(2).mean(dim=0)
        def bwd(self, output, inp, targ): inp.g = 2 * (inp - targ) / inp.shape[0] * output.g

    inp, targ = torch.randn(5, 1), torch.randn(5, 1)
    loss = Mse()
    loss(inp, targ)
    with pytest.raises(RuntimeError, match=r"needs the gradient of its output \(shape \[1\]\)"):
        loss.backward()
    loss.backward(torch.ones(1))
    torch.testing.assert_close(inp.g, 2 * (inp - targ) / 5)
