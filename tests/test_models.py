import pytest
import torch
import torch.nn.functional as F

import handgrad as hg
from handgrad.check import check_module
from handgrad.interop import from_torch, to_torch
from handgrad.models import cnn, mlp


@pytest.mark.parametrize("dtype, rtol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_cnn_and_its_torch_twin_agree_step_by_step(dtype, rtol):
    torch.manual_seed(0)
    model = cnn(10, (4, 8, 8)).to(dtype=dtype)
    twin = to_torch(model)
    opt = hg.SGD(model.parameters(), lr=0.05, momentum=0.9)
    topt = torch.optim.SGD(twin.parameters(), lr=0.05, momentum=0.9)
    step = hg.WithLoss(model, hg.CrossEntropyLoss())
    gen = torch.Generator().manual_seed(1)
    for i in range(4):
        x = torch.randn(16, 784, generator=gen, dtype=dtype)
        y = torch.randint(0, 10, (16,), generator=gen)
        loss = step(x, y)
        opt.zero_grad()
        step.backward(needs_input_grad=False)
        opt.step()
        tloss = F.cross_entropy(twin(x), y)
        topt.zero_grad()
        tloss.backward()
        topt.step()
        assert float(loss) == pytest.approx(float(tloss.detach()), rel=rtol), f"step {i}"
    for (k, v), tv in zip(model.state_dict().items(), twin.state_dict().values()):
        torch.testing.assert_close(v, tv.to(v.dtype), rtol=rtol * 100, atol=rtol * 10, msg=lambda m, k=k: f"{k}: {m}")
    model.eval()
    twin.eval()
    x = torch.randn(8, 784, dtype=dtype)
    torch.testing.assert_close(model(x), twin(x).detach(), rtol=rtol * 100, atol=rtol * 10)


def test_cnn_gradients_check_out_in_train_and_eval():
    torch.manual_seed(1)
    model = cnn(3, (2, 3), image=(1, 8, 8))
    x, y = torch.randn(4, 64), torch.randint(0, 3, (4,))
    for mode in (True, False):
        report = check_module(hg.WithLoss(model.train(mode), hg.CrossEntropyLoss()), x, y, fd_max_elements=32)
        assert report.passed, [(t.name, t.autograd, t.fd) for t in report.failures()]


def test_models_round_trip_through_torch():
    torch.manual_seed(2)
    for model in (mlp(784, [32], 10), cnn(10, (4, 8))):
        back = from_torch(to_torch(model))
        x = torch.randn(3, 784)
        model.eval()
        back.eval()
        torch.testing.assert_close(back(x), model(x))
        assert repr(back) == repr(model)
