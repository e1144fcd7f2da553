"""The CUDA path: the fused steps, the module path and the bench on a GPU, against the same computation on the
CPU. Skipped where torch sees no CUDA device; `pytest -m cuda` runs just these."""

import copy

import pytest
import torch

import handgrad as hg
from handgrad.fused import FusedStep, module_step, training_step
from handgrad.fused_cnn import FusedCNNStep
from handgrad.models import cnn, gpt, mlp
from handgrad.module import WithLoss

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]


def run_steps(model, x, y, steps=3, opt=lambda ps: hg.SGD(ps, lr=0.05, momentum=0.9)):
    step = training_step(model, hg.CrossEntropyLoss(), opt(model.parameters()))
    losses = [step(x, y) for _ in range(steps)]
    return step, torch.stack(losses).cpu()


@pytest.mark.parametrize("make,shape,kind", [(lambda: cnn(10, (4, 8, 16)), (784,), FusedCNNStep),
                                             (lambda: mlp(784, [32], 10), (784,), FusedStep)])
def test_fused_steps_on_cuda_equal_the_cpu(make, shape, kind):
    torch.manual_seed(0)
    model = make().to(dtype=torch.float64)
    gpu = copy.deepcopy(model).to(device="cuda")
    x, y = torch.randn(16, *shape, dtype=torch.float64), torch.randint(0, 10, (16,))
    step, cpu_losses = run_steps(model, x, y)
    gstep, gpu_losses = run_steps(gpu, x.cuda(), y.cuda())
    assert isinstance(step, kind) and isinstance(gstep, kind)
    torch.testing.assert_close(gpu_losses, cpu_losses, rtol=1e-9, atol=1e-11)
    for (name, p), q in zip(model.named_parameters(), gpu.parameters()):
        torch.testing.assert_close(q.cpu(), p, rtol=1e-8, atol=1e-10, msg=lambda m, n=name: f"{n}: {m}")


def test_gpt_module_path_on_cuda_equals_the_cpu():
    torch.manual_seed(0)
    model = gpt(20, 2, 2, 16, 12).to(dtype=torch.float64)
    gpu = copy.deepcopy(model).to(device="cuda")
    x, y = torch.randint(0, 20, (4, 12)), torch.randint(0, 20, (4, 12))
    losses = []
    for m, dev in ((model, "cpu"), (gpu, "cuda")):
        opt = hg.AdamW(m.parameters(), lr=1e-2)
        losses.append(torch.stack([module_step(WithLoss(m, hg.TokenCrossEntropyLoss()), opt, x.to(dev), y.to(dev))
                                   for _ in range(3)]).cpu())
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-9, atol=1e-11)


def test_bench_rows_on_cuda():
    from handgrad.bench import bench_config

    rows = bench_config("cnn-bs128", torch.device("cuda"), rounds=1, steps=2, impls=("handgrad", "eager"),
                        log=lambda s: None)
    assert all(r.step_ms and r.step_ms > 0 and r.peak_mb and r.peak_mb > 0 for r in rows)
