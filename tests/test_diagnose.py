import subprocess
import sys
from pathlib import Path

import pytest
import torch
import wrong_layers as W

from handgrad.check import assert_gradients_correct, check_module, diagnose, diagnose_report, explain
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


# ---- what a first review of the check passed or failed wrongly: each case below went the other way before


def layer_problems(report):
    return [line for line in explain(report).splitlines() if line.startswith(report.module + ": ")]


@pytest.mark.parametrize("cls, stage, name", [(W.ChangesDyInPlace, "backward", "dY"),
                                              (W.SquareIntoDy, "backward", "dY"),
                                              (W.SquareIntoX, "backward", "input"),
                                              (W.SquareOverInput, "forward", "input")])
def test_a_layer_changing_dy_or_its_input_in_place_fails_with_that_said(cls, stage, name):
    """The references are computed from the dY and inputs as given (they once read a dY the backward had doubled:
    a false pass), and changing them is a failure in itself: dY is the output's .g and a residual's other branch
    reads it, the input is the previous layer's output."""
    torch.manual_seed(0)
    report = check_module(cls(), torch.randn(8, 4))
    assert not report.passed
    said = layer_problems(report)
    assert len(said) == 1 and f"its {stage} changed {name} in place" in said[0], explain(report)
    if cls is W.ChangesDyInPlace:  # and its doubled gradients are caught as such
        found = dict((t.name, why) for t, why in diagnose_report(report))
        assert set(found) == {"input", "w", "b"} and all("constant factor 2" in why for why in found.values())
    if cls is W.SquareIntoX:  # the second call's reference sees the input as given too: no second complaint
        assert report.failures() == []


@pytest.mark.parametrize("cls, shape, tensors", [
    (W.DropoutMaskOnce, (8, 4), ["input"]),  # the second call draws other random numbers
    (W.BatchStatsOnce, (32, 6), ["input"]),  # values shuffled across rows, and shrunk: other batch statistics
    (W.AbsWeightSignOnce, (8, 4), ["w"]),  # some weights' signs flipped
    (W.ReluMaskOnceFromInput, (1, 8), ["input"]),  # one example: its values shuffled within it
])
def test_what_a_backward_keeps_from_its_first_call_is_caught_by_the_second(cls, shape, tensors):
    torch.manual_seed(0)
    report = check_module(cls(), torch.randn(*shape))
    found = {t.name: why for t, why in diagnose_report(report)}
    assert list(found) == tensors, found
    assert all(why.startswith("right on the first call, wrong on a second call") for why in found.values())


def test_a_backward_that_skips_the_parameters_without_the_input_gradient_fails():
    """Training runs a model's first layer with needs_input_grad=False; the check runs that path too."""
    report = check_module(W.SkipsWorkWithoutInputGrad(), torch.randn(8, 4))
    found = {t.name: why for t, why in diagnose_report(report)}
    assert list(found) == ["w", "b"], found
    assert all("wrong with backward(needs_input_grad=False)" in why for why in found.values())
    assert check_module(W.GoodLinear(), torch.randn(8, 4)).passed


def test_parameters_made_in_the_first_forward_are_checked():
    report = check_module(W.LazyLinearSignFlipped(), torch.randn(8, 4))
    assert [t.name for t in report.tensors] == ["input", "w"]
    assert [(t.name, why) for t, why in diagnose_report(report)] == [("w", diagnose(report.tensors[1].hand,
                                                                                   report.tensors[1].reference))]
    assert "sign flipped" in explain(report)


def test_the_verdict_does_not_change_when_the_layer_is_scaled_down():
    """The absolute tolerance is relative to the check's largest gradient: a zero input gradient of a layer whose
    gradients are all ~1e-14 once passed ('max rel err 1.0 ... ok')."""
    report = check_module(W.TinyOutputZeroGrad(), torch.randn(8, 4))
    found = {t.name: why for t, why in diagnose_report(report)}
    assert list(found) == ["input"] and "zero everywhere" in found["input"], found
    torch.manual_seed(0)
    assert check_module(W.GoodLinear(), torch.randn(8, 4) * 1e-12).passed


def test_autograd_and_finite_differences_disagreeing_is_said_so():
    report = check_module(W.ScaleReadByFloat(), torch.randn(8, 4))  # a right backward autograd cannot follow
    found = {t.name: why for t, why in diagnose_report(report)}
    assert list(found) == ["a"] and found["a"].startswith("matches finite differences but not autograd "
                                                          "(autograd's gradient is zero)"), found
    report = check_module(W.ReluOfBias(), torch.randn(8, 4))  # on the kink: finite differences see 1/2
    found = {t.name: why for t, why in diagnose_report(report)}
    assert list(found) == ["b"] and found["b"].startswith("matches autograd but not finite differences"), found


def test_a_forward_autograd_cannot_follow_is_refused_with_one_line():
    with pytest.raises(ValueError, match=r"NoGradForward.forward's output does not depend on its inputs or "
                                         r"parameters for autograd \(computed under torch.no_grad"):
        check_module(W.NoGradForward(), torch.randn(8, 4))


@pytest.mark.parametrize("make, x", [
    (W.EmptyParameter, lambda: torch.randn(8, 4)),  # an empty parameter with no .g (crashed)
    (W.TwoOutputs, lambda: torch.randn(8, 4)),
    (lambda: W.GoodLinear(8, 3), lambda: torch.randn(8, 8, dtype=torch.float64).t()),  # a non-contiguous input
    (W.Sqrt, lambda: torch.rand(8, 4) + 0.1),
    (W.SqrtOfXMinusOne, lambda: torch.rand(8, 4) * 0.2 + 1.01),  # shrunk below 1 in the second call: not judged
])
def test_right_layers_on_unusual_inputs_pass(make, x):
    torch.manual_seed(0)
    assert_gradients_correct(make(), x())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_checks_of_a_right_layer_pass(dtype):
    """The second call's prefilled .g is of the gradients' own size: adding it and taking it back lost the
    gradient in float16 (STALE on a right layer)."""
    torch.manual_seed(0)
    assert check_module(W.GoodLinear(), torch.randn(8, 4), dtype=dtype).passed


def test_bad_arguments_to_check_module_are_one_line():
    with pytest.raises(ValueError, match="finite differences run in float64 only"):
        check_module(W.GoodLinear(), torch.randn(8, 4), dtype=torch.float32, finite_differences=True)
    with pytest.raises(TypeError, match="input 0 is a tuple, expected a tensor"):
        check_module(W.GoodLinear(), (torch.randn(8, 4), torch.randn(8, 4)))


@pytest.mark.parametrize("cls, spec, code, said", [
    ("ReturnsNumpy", "8,4", 1, "FAILED: ReturnsNumpy.backward raised TypeError: ReturnsNumpy.bwd returned a "
                               "numpy.ndarray; expected the input's gradient as a tensor"),
    ("NoGradForward", "8,4", 1, "FAILED: NoGradForward.forward's output does not depend on its inputs"),
    ("SquareOverInput", "8,4", 1, "diagnosis: SquareOverInput: its forward changed input in place"),
    ("TwoOutputs", "8,4", 0, "TwoOutputs: all 1 gradients match autograd and finite differences"),
    ("Sqrt", "8,4:float:0.1:2", 0, "Sqrt: all 1 gradients match"),
])
def test_cli_check_on_what_the_review_tried(cls, spec, code, said):
    proc = cli(f"{HERE / 'wrong_layers.py'}:{cls}", "--input-shape", spec)
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert said in proc.stdout and "Traceback" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
