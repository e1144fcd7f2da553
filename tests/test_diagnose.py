import subprocess
import sys
from pathlib import Path

import pytest
import torch
import wrong_layers as W

from handgrad.check import assert_gradients_correct, check_module, diagnose, diagnose_report
from handgrad.check.core import draw_dy, stream

HERE = Path(__file__).parent
WRONG = [
    (W.TransposedWeightGrad, "w", "transposed"),
    (W.BiasNotSummed, "b", "not summed over the batch dimension"),
    (W.ForgottenBiasGrad, "b", "gradient missing"),
    (W.SignFlippedInputGrad, "input", "sign flipped"),
    (W.MeanSquareMissingN, "input", "off by a constant factor 8 = N (batch size 8): a missing 1/N"),
    (W.ShiftedReLUMaskOnOutput, "input", "zero where it should not be on"),
]


@pytest.mark.parametrize("cls, tensor, diagnosis", WRONG, ids=[c.__name__ for c, _, _ in WRONG])
def test_each_usual_mistake_is_caught_with_the_right_diagnosis(cls, tensor, diagnosis):
    torch.manual_seed(0)
    report = check_module(cls(), torch.randn(8, 4))
    found = {t.name: why for t, why in diagnose_report(report)}
    assert list(found) == [tensor], found
    assert diagnosis in found[tensor]


@pytest.mark.parametrize("cls", [W.GoodLinear, W.MeanSquare, W.ShiftedReLU])
def test_correct_layers_pass(cls):
    torch.manual_seed(0)
    assert_gradients_correct(cls(), torch.randn(8, 4))
    assert_gradients_correct(cls(), torch.randn(8, 4), dtype=torch.float32)


def test_square_transposed_gradient_is_named_by_its_values():
    ref = torch.randn(5, 5, dtype=torch.float64)
    assert diagnose(ref.t(), ref).startswith("transposed")
    assert diagnose(ref.t() * 1.0000001, ref).startswith("transposed")


# The inputs a caller may draw with the checker's own seed: torch's global RNG, a generator seeded alike,
# and the very stream check_module draws dY from (which must then re-draw it).
SAME_SEED_INPUTS = {
    "global": lambda: (torch.manual_seed(0), torch.randn(8, 4, dtype=torch.float64))[1],
    "generator": lambda: torch.randn(8, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64),
    "dy-stream": lambda: torch.randn(8, 4, generator=stream(0, "dy"), dtype=torch.float64),
}


@pytest.mark.parametrize("draw", SAME_SEED_INPUTS.values(), ids=SAME_SEED_INPUTS)
@pytest.mark.parametrize("cls, args, tensor, diagnosis", [
    (W.TransposedWeightGrad, (4, 4), "w", "transposed"),
    (W.SquareUsesDyForX, (), "input", "values differ"),
])
def test_square_layers_are_checked_with_dy_unlike_the_input(draw, cls, args, tensor, diagnosis):
    x = draw()
    report = check_module(cls(*args), x, seed=0)
    found = {t.name: why for t, why in diagnose_report(report)}
    assert list(found) == [tensor], found
    assert diagnosis in found[tensor]
    assert_gradients_correct(W.GoodLinear(4, 4), x, seed=0)
    assert_gradients_correct(W.Square(), x, seed=0)


def test_dy_is_redrawn_when_it_equals_an_input():
    x = torch.randn(8, 4, generator=stream(3, "dy"), dtype=torch.float64)
    dy = draw_dy((8, 4), torch.float64, None, [x], stream(3, "dy"))
    assert dy.shape == x.shape and not torch.equal(dy, x)
    assert torch.equal(draw_dy((8, 4), torch.float64, None, [x.t()], stream(3, "dy")), x)  # other shapes: kept


def test_assert_helper_fails_with_table_and_diagnosis():
    with pytest.raises(AssertionError, match=r"(?s)hand-written gradients are wrong\nw: transposed.*max abs err"):
        assert_gradients_correct(W.TransposedWeightGrad(), torch.randn(8, 4))


def cli(*args):
    return subprocess.run([sys.executable, "-m", "handgrad", "check", *args], capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("cls, tensor, diagnosis", WRONG[:3], ids=[c.__name__ for c, _, _ in WRONG[:3]])
def test_cli_check_of_a_wrong_layer_exits_1_with_its_diagnosis(cls, tensor, diagnosis):
    proc = cli(f"{HERE / 'wrong_layers.py'}:{cls.__name__}", "--input-shape", "8,4")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"diagnosis: {tensor}: " in proc.stdout and diagnosis in proc.stdout


def test_cli_check_of_a_good_layer_by_module_path(monkeypatch):
    proc = subprocess.run([sys.executable, "-m", "handgrad", "check", "wrong_layers:GoodLinear", "--input-shape",
                           "5,6", "--args", '{"n_in": 6, "n_out": 2}', "--dtype", "float32"],
                          capture_output=True, text=True, timeout=120, cwd=HERE,
                          env={**__import__("os").environ, "PYTHONPATH": str(HERE)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "GoodLinear: all 3 gradients match autograd" in proc.stdout


@pytest.mark.parametrize("args, message", [
    (["/nonexistent/layers.py:X", "--input-shape", "2,2"], "/nonexistent/layers.py: no such file"),
    ([f"{HERE / 'wrong_layers.py'}:Nope", "--input-shape", "2,2"], "has no class Nope"),
    ([f"{HERE / 'wrong_layers.py'}:NotAModule", "--input-shape", "2,2"], "is not a handgrad Module subclass"),
    ([f"{HERE / 'wrong_layers.py'}:NeedsFourFeatures", "--input-shape", "8,5"],
     "NeedsFourFeatures.forward rejected an input of shape [8, 5]: ValueError: expected 4 features, got 5"),
    ([f"{HERE / 'wrong_layers.py'}:GoodLinear"], "--input-shape is needed with a TARGET"),
    ([f"{HERE / 'wrong_layers.py'}:GoodLinear", "--input-shape", "8,4", "--args", "[1]"], "--args must be a JSON"),
    ([f"{HERE / 'wrong_layers.py'}:GoodLinear", "--input-shape", "8,4", "--args", '{"bogus": 1}'],
     "cannot construct GoodLinear"),
    (["no_colon_here", "--input-shape", "2"], "expected TARGET as path/to/file.py:ClassName"),
    (["no_such_pkg.mod:X", "--input-shape", "2"], "cannot import no_such_pkg.mod"),
])
def test_cli_check_bad_usage_is_one_line_and_exit_2(args, message):
    proc = cli(*args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert message in lines[0], lines[0]


def test_non_finite_and_nearly_right_gradients_get_their_own_diagnosis():
    """They used to read 'wrong on 0% of the elements, right on the rest'."""
    ref = torch.randn(4, 3, dtype=torch.float64)
    nan = ref.clone()
    nan[0, 0] = float("nan")
    assert diagnose(nan, ref).startswith("not finite (NaN or inf) on 8% of the elements")
    assert diagnose(ref.float().double() * (1 + 1e-7), ref).startswith("close but not exact: off by up to")
