import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import handgrad as hg
from handgrad.derive import ACTIVATIONS, Activation, derive
from handgrad.models import mlp
from handgrad.train import TrainConfig, run
from handgrad.train.stats import ActivationStats
from handgrad.trace import format_trace, trace

HERE = Path(__file__).parent


def test_trace_of_the_seeds_mlp_shows_the_seeds_shapes():
    torch.manual_seed(0)
    rows = trace(mlp(784, [50], 10), torch.randn(64, 784), torch.randint(0, 10, (64,)), hg.CrossEntropyLoss())
    assert [(r.input_shape, r.output_shape) for r in rows] == [
        ("[64, 784]", "[64, 50]"), ("[64, 50]", "[64, 50]"), ("[64, 50]", "[64, 10]")]
    assert rows[0].param_grads == [("weight", "[784, 50]"), ("bias", "[50]")]
    assert rows[2].param_grads == [("weight", "[50, 10]"), ("bias", "[10]")]
    relu_zeros = rows[1].out_stats[2]
    assert 0.2 < relu_zeros < 0.8  # the fraction of dead units is reported
    text = format_trace(rows)
    assert "[64, 784] -> [64, 50]" in text and "weight.g [784, 50]" in text


def test_trace_does_not_disturb_later_calls():
    model = mlp(10, [5], 2)
    trace(model, torch.randn(3, 10))
    assert not hg.Module._call_log
    model(torch.randn(3, 10))  # plain calls still work, nothing recorded


def test_cli_trace_builtin_and_user_model():
    proc = subprocess.run([sys.executable, "-m", "handgrad", "trace", "--bs", "16"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "[16, 784] -> [16, 50]" in proc.stdout and "weight.g [784, 50]" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "handgrad", "trace", f"{HERE / 'wrong_layers.py'}:GoodLinear",
                           "--input-shape", "8,4"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "[8, 4] -> [8, 3]" in proc.stdout and "w.g [4, 3]" in proc.stdout


def test_cli_trace_bad_usage():
    proc = subprocess.run([sys.executable, "-m", "handgrad", "trace", f"{HERE / 'wrong_layers.py'}:GoodLinear",
                           "--input-shape", "8,5"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "GoodLinear failed on an input of shape [8, 5]" in proc.stderr.strip().splitlines()[0]


def test_activation_stats_png_decodes_and_is_not_blank(tmp_path):
    import matplotlib.image

    torch.manual_seed(0)
    model = mlp(20, [16, 16], 3)
    stats = ActivationStats(model)
    assert [n for n, _ in stats.layers] == ["1", "3"]
    for _ in range(12):
        model(torch.randn(32, 20))
        stats.record()
    path = stats.plot(tmp_path / "stats.png")
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 400
    assert float(np.asarray(image[..., :3]).std()) > 0.05  # not a blank canvas
    assert not list(tmp_path.glob("*.part"))


def test_train_with_stats_writes_the_png_and_refuses_to_overwrite(tmp_path):
    x = torch.randn(300, 784)
    y = torch.randint(0, 10, (300,))
    np.savez(tmp_path / "mnist.npz", x_train=x.numpy(), y_train=y.numpy())
    cfg = TrainConfig(dataset="mnist", data=str(tmp_path / "mnist.npz"), epochs=1, download=False,
                      stats=str(tmp_path / "act.png"))
    run(cfg, log=lambda s: None, progress=False)
    assert (tmp_path / "act.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="act.png: the file exists"):
        run(cfg, log=lambda s: None, progress=False)


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_symbolic_derivative_matches_every_hand_written_activation(name):
    d = derive(name)
    assert d.passed and d.points > 1000, (d.derivative, d.max_abs_err, d.worst_x)


def test_derive_catches_a_wrong_backward(monkeypatch):
    class WrongSigmoid(hg.Sigmoid):
        def bwd(self, dy, x):
            return dy * self.out  # forgot (1 - y)

    monkeypatch.setitem(ACTIVATIONS, "sigmoid", Activation(ACTIVATIONS["sigmoid"].formula, WrongSigmoid))
    d = derive("sigmoid")
    assert not d.passed and d.max_abs_err > 0.1


def test_cli_derive():
    proc = subprocess.run([sys.executable, "-m", "handgrad", "derive", "silu"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and "silu:  d/dx" in proc.stdout and "matches" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "handgrad", "derive", "nope"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and proc.stderr.startswith("handgrad: error: unknown activation 'nope'")
