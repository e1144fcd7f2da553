import json
import subprocess
import sys

import torch

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
