import json
import subprocess
import sys
import time

import pytest
import torch

import handgrad as hg
from handgrad.bench import _gemm_floor, bench_config
from handgrad.data import locate
from handgrad.models import mlp


def test_bench_rows_and_json(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "handgrad", "bench", "--configs", "mlp-784-50-10-bs64", "--rounds",
                           "1", "--no-compile", "--json", str(out), "--plot", str(tmp_path / "bench.png")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [(r["config"], r["impl"]) for r in rows] == [("mlp-784-50-10-bs64", i)
                                                         for i in ("handgrad", "eager", "gemm_floor")]
    assert all(r["step_ms"] > 0 for r in rows) and rows[0]["peak_mb"] > 0
    assert (tmp_path / "bench.png").stat().st_size > 5000
    assert "vs eager" in proc.stdout
    if locate("fashion-mnist") is not None:  # time to 0.85 accuracy, handgrad and eager on the same batches
        tta = json.loads(out.read_text())["time_to_accuracy"]
        assert [r["impl"] for r in tta] == ["handgrad", "eager"]
        for r in tta:
            assert r["target"] == 0.85 and r["batches"] > 0 and r["batches"] % 100 == 0
            assert (r["seconds"] is not None) == (r["valid_acc"] >= 0.85)
        assert "fashion-mnist-0.85" in proc.stdout


def test_gemm_floor_counts_the_steps_matrix_multiplies():
    model = mlp(784, [50], 10)
    run = _gemm_floor(model, torch.randn(8, 784))
    run()  # forward + weight gradient per layer, input gradient for the second: 5 matmuls, no error


def test_bench_config_reports_a_failure_instead_of_crashing(monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda m: (_ for _ in ()).throw(RuntimeError("no compiler")))
    rows = bench_config("mlp-784-50-10-bs64", torch.device("cpu"), rounds=1, steps=2, impls=("compile",),
                        log=lambda s: None)
    assert rows[0].step_ms is None and "no compiler" in rows[0].note


def test_character_model_rows_time_both_steps_and_their_memory(monkeypatch):
    from handgrad.bench import CONFIGS
    from handgrad.layers import LSTM, MultiheadAttention
    from handgrad.models import char_lstm, gpt

    gpt_name, lstm_name = "gpt-4l-4h-d128-block128-bs32", "lstm-2l-h256-d64-seq128-bs32"
    attention = [m for m in CONFIGS[gpt_name][0]().modules() if isinstance(m, MultiheadAttention)]
    assert len(attention) == 4 and all(m.recompute for m in attention)  # as `handgrad train --model gpt` builds it
    assert [m.hidden_size for m in CONFIGS[lstm_name][0]().modules() if isinstance(m, LSTM)] == [256]
    # the rows' machinery on small models of the same kinds (the full-size steps take seconds under the profiler)
    monkeypatch.setitem(CONFIGS, gpt_name, (lambda: gpt(96, 1, 2, 16, 128, recompute=True), 2, "gpt"))
    monkeypatch.setitem(CONFIGS, lstm_name, (lambda: char_lstm(96, 8, 16, 1), 2, "lstm"))
    for name in (gpt_name, lstm_name):
        rows = bench_config(name, torch.device("cpu"), rounds=1, steps=1, impls=("handgrad", "eager", "gemm_floor"),
                            log=lambda s: None)
        assert [r.impl for r in rows] == ["handgrad", "eager", "gemm_floor"]
        assert all(r.step_ms > 0 and not r.note for r in rows), rows
        assert rows[0].peak_mb > 0 and rows[1].peak_mb > 0 and rows[2].peak_mb is None


def test_the_checkpointed_gpt_row_keeps_less_than_the_plain_gpt_and_is_timed_against_it(monkeypatch):
    """The checkpoint row's handgrad model wraps its blocks in Recompute; its torch side (and floor) is the plain
    GPT with the same weights; handgrad's peak is below eager's there (the full-size figure: README)."""
    from handgrad.bench import CONFIGS, TORCH_SIDE
    from handgrad.layers import Recompute
    from handgrad.models import gpt

    name = "gpt-4l-4h-d128-block128-bs32-checkpoint"
    assert sum(isinstance(m, Recompute) for m in CONFIGS[name][0]().modules()) == 4
    monkeypatch.setitem(CONFIGS, name, (lambda: gpt(96, 3, 2, 32, 128, recompute=True, checkpoint=True), 4, "gpt"))
    monkeypatch.setitem(TORCH_SIDE, name, lambda: gpt(96, 3, 2, 32, 128))
    rows = bench_config(name, torch.device("cpu"), rounds=1, steps=1, impls=("handgrad", "eager", "gemm_floor"),
                        log=lambda s: None)
    assert all(r.step_ms > 0 and not r.note for r in rows), rows
    assert rows[0].peak_mb < 0.8 * rows[1].peak_mb, rows


def test_a_compiled_model_without_len_is_benched(monkeypatch):
    """torch.compile of a twin that is not a Sequential: its truth value would ask the model for len(); the bench
    never takes it (the LSTM row's compile once failed so)."""
    from handgrad.bench import CONFIGS
    from handgrad.models import char_lstm

    class Compiled(torch.nn.Module):  # as torch.compile's wrapper: no truth value of its own for such a model
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, x):
            return self.model(x)

        def __len__(self):
            raise TypeError(f"{type(self.model).__name__} does not support len()")

    monkeypatch.setattr(torch, "compile", Compiled)
    monkeypatch.setitem(CONFIGS, "lstm-2l-h256-d64-seq128-bs32", (lambda: char_lstm(96, 4, 8, 1), 2, "lstm"))
    rows = bench_config("lstm-2l-h256-d64-seq128-bs32", torch.device("cpu"), rounds=1, steps=1, impls=("compile",),
                        log=lambda s: None)
    assert rows[0].step_ms > 0 and rows[0].peak_mb > 0, rows[0].note


@pytest.mark.parametrize("kind", ["gpt", "lstm"])
def test_the_character_rows_compare_like_with_like(kind):
    """handgrad's step (what `handgrad train` runs) and the torch twin's, on a small model of the kind: the same loss,
    and after one AdamW step the same weights."""
    from handgrad.bench import _task
    from handgrad.fused import training_step
    from handgrad.interop import to_torch
    from handgrad.models import char_lstm, gpt

    torch.manual_seed(0)
    model = gpt(96, 1, 2, 8, 16, recompute=True, dtype=torch.float64) if kind == "gpt" else \
        char_lstm(96, 4, 8, 2, dtype=torch.float64)
    task = _task(kind, 3, torch.device("cpu"))
    x, y = task.x[:, :16], task.y[:, :16]
    twin = to_torch(model)
    loss = training_step(model, task.loss(), task.optimizer(model.parameters()))(x, y)
    topt = task.torch_optimizer(list(twin.parameters()))
    loss_t = task.torch_loss(twin(x), y)
    loss_t.backward()
    topt.step()
    torch.testing.assert_close(loss, loss_t.detach(), rtol=1e-10, atol=0)
    for name, value in twin.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], value, rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize("kind", ["gpt", "lstm"])
def test_gemm_floor_of_the_character_models(kind):
    from handgrad.models import char_lstm, gpt

    model = gpt(96, 2, 2, 8, 16) if kind == "gpt" else char_lstm(96, 4, 8, 2)
    _gemm_floor(model, torch.randint(0, 96, (2, 16)))()  # attention / LSTM products included: no error


def test_a_row_under_the_floor_is_flagged(monkeypatch):
    """A step measured faster than its matrix multiplies alone means the floor is not one: the row says so."""
    import handgrad.bench as bench

    def slow_floor(model, x):
        return lambda: time.sleep(0.02)

    monkeypatch.setattr(bench, "_gemm_floor", slow_floor)
    rows = bench_config("mlp-784-50-10-bs64", torch.device("cpu"), rounds=1, steps=2,
                        impls=("handgrad", "eager", "gemm_floor"), log=lambda s: None)
    assert all("UNDER THE FLOOR" in r.note for r in rows[:2]), rows
    assert "UNDER THE FLOOR" not in rows[2].note


def test_the_floor_takes_each_convolution_in_its_fastest_layout_and_computes_the_same():
    """_fastest_conv times NCHW against channels-last and keeps the faster; whichever it keeps computes the
    convolution's forward and both gradients as the plain NCHW kernels do."""
    import torch.nn.functional as F

    from handgrad.bench import _fastest_conv

    torch.manual_seed(0)
    conv = hg.Conv2d(3, 8, 3, stride=2, padding=1)
    a, dy = torch.randn(4, 3, 12, 12), None
    out = conv(a)
    dy = torch.randn_like(out)
    fwd, bwd = _fastest_conv(a, conv.weight.detach(), dy, conv, (True, True, False))
    torch.testing.assert_close(fwd(), F.conv2d(a, conv.weight, None, 2, 1))
    dx, dw, _ = bwd()
    ref = torch.ops.aten.convolution_backward(dy, a, conv.weight, None, (2, 2), (1, 1), (1, 1), False, (0, 0), 1,
                                              (True, True, False))
    torch.testing.assert_close(dx, ref[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(dw, ref[1], rtol=1e-4, atol=1e-5)


def test_cnn_time_to_accuracy_runs_every_contender_on_the_same_batches(monkeypatch):
    """The CNN's time to accuracy: handgrad, eager and (when torch.compile works) compile, each from the same
    weights over the same batches and learning rates; a failing compiler is reported, not fatal. (Small stand-in
    data: the real run is `handgrad bench`'s.)"""
    from types import SimpleNamespace

    from handgrad.bench import format_time_to_accuracy, time_to_accuracy

    gen = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (512,), generator=gen)
    x = torch.randn(512, 784, generator=gen) * 0.3 + y[:, None].float()  # three separable classes
    data = SimpleNamespace(x_train=x[:384], y_train=y[:384], x_valid=x[384:], y_valid=y[384:], classes=["a", "b", "c"])
    monkeypatch.setattr(torch, "compile", lambda m: (_ for _ in ()).throw(RuntimeError("no compiler")))
    import handgrad.train.loop as loop

    real, modes = loop.evaluate, []

    def spy(net, *args, **kw):  # scored as `handgrad train` scores: batch norms on their running statistics
        modes.append(net.training)
        return real(net, *args, **kw)

    monkeypatch.setattr(loop, "evaluate", spy)
    logged = []
    res = time_to_accuracy(torch.device("cpu"), "cnn", target=0.9, every=1, max_epochs=1, data=data,
                           log=logged.append)
    assert [r.impl for r in res] == ["handgrad", "eager"] and any("no compiler" in s for s in logged)
    for r in res:
        assert r.model == "cnn" and (r.seconds is not None) == (r.valid_acc >= 0.9)
    assert modes and not any(modes)
    assert res[0].batches == res[1].batches  # the same batches until the same accuracy
    assert abs(res[0].valid_acc - res[1].valid_acc) < 0.02
    assert "cnn-fashion-mnist-0.90" in format_time_to_accuracy(res)
