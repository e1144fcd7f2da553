import pytest
import torch
from torch import nn

import handgrad as hg
from handgrad.check import BUILTIN_CASES
from handgrad.interop import from_torch, to_torch, wrap


@pytest.mark.parametrize("name", list(BUILTIN_CASES))
def test_every_wrapped_builtin_layer_passes_torch_gradcheck(name):
    gen = torch.Generator().manual_seed(7)
    torch.manual_seed(7)
    case = BUILTIN_CASES[name](gen)
    wrapped = wrap(case.module.double())
    inputs = [x.double().requires_grad_() if x.is_floating_point() else x for x in case.inputs]
    n = len(inputs)

    def fn(*args):
        torch.manual_seed(0)  # dropout: the same mask in every evaluation
        out = wrapped(*args[:n])
        return out if isinstance(out, torch.Tensor) else tuple(flat(out))  # LSTM: (output, (h_n, c_n))

    def flat(o):
        return [o] if isinstance(o, torch.Tensor) else [t for p in o for t in flat(p)]

    assert torch.autograd.gradcheck(fn, (*inputs, *wrapped.params), eps=1e-6, atol=1e-5, rtol=1e-3)


def test_mixed_torch_and_handgrad_sequential_trains_like_pure_torch():
    torch.manual_seed(0)
    pure = nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 12), nn.Tanh(), nn.Linear(12, 5))
    hg_middle = from_torch(nn.Sequential(pure[2], pure[3]))  # handgrad copies of the middle layers
    mixed = nn.Sequential(nn.Linear(20, 16), nn.ReLU(), wrap(hg_middle), nn.Linear(12, 5))
    mixed[0].load_state_dict(pure[0].state_dict())
    mixed[3].load_state_dict(pure[4].state_dict())
    opts = [torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9) for m in (pure, mixed)]
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        x, y = torch.randn(32, 20, generator=gen), torch.randint(0, 5, (32,), generator=gen)
        losses, grads = [], []
        for model, opt in zip((pure, mixed), opts):
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            losses.append(loss.detach())
            grads.append([p.grad.clone() for p in model.parameters()])
            opt.step()
        torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=1e-5)
        # pure: W0 b0 W2 b2 W4 b4; mixed: W0 b0 [handgrad: W (in,out) b] W3 b3
        g_pure, g_mixed = grads
        pairs = [(g_pure[0], g_mixed[0]), (g_pure[1], g_mixed[1]), (g_pure[2], g_mixed[2].t()),
                 (g_pure[3], g_mixed[3]), (g_pure[4], g_mixed[4]), (g_pure[5], g_mixed[5])]
        for a, b in pairs:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    # the torch optimizer trained the handgrad layer through shared storage
    torch.testing.assert_close(hg_middle[0].weight.t(), pure[2].weight.detach(), rtol=1e-5, atol=1e-5)


def test_wrapped_layer_follows_dtype_changes_on_the_torch_side():
    w = wrap(hg.Linear(3, 2)).double()
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    w(x).sum().backward()
    assert x.grad.dtype == torch.float64 and w.handgrad_module.weight.dtype == torch.float64


def test_whole_models_convert_both_ways():
    torch.manual_seed(3)
    model = hg.models.cnn(10, (4, 8)).eval()
    twin = to_torch(model)
    back = from_torch(twin)
    x = torch.randn(2, 784)
    torch.testing.assert_close(twin(x), model(x))
    torch.testing.assert_close(back(x), model(x))
