import pytest
import torch

import handgrad as hg
from handgrad.check import TOLERANCES, builtin_cases, check_module, format_table
from handgrad.cli import main


class HalfLinear(hg.Linear):
    """A wrong backward: the weight gradient comes out halved."""

    def bwd(self, dy, x):
        dx = super().bwd(dy, x)
        self.weight.g.mul_(0.5)
        return dx


class NoBiasGrad(hg.Linear):
    def bwd(self, dy, x):
        hg.add_grad(self.weight, x.t() @ dy)
        return dy @ self.weight.t()


class OverwritesWeightGrad(hg.Linear):
    """Right for one call, but `.g =` drops what an earlier call (or a tied layer) added."""

    def bwd(self, dy, x):
        self.weight.g = x.t() @ dy
        hg.add_grad(self.bias, dy.sum(0))
        return dy @ self.weight.t()


class SignFlippedReLU(hg.ReLU):
    def bwd(self, dy, x):
        return -dy * (x > 0)


def test_every_builtin_case_passes_in_float64_and_float32():
    for case in builtin_cases(seed=3, repeats=2):
        for dtype in (torch.float64, torch.float32):
            rtol = case.float32_rtol if dtype == torch.float32 else None
            report = check_module(case.module, *case.inputs, dtype=dtype, name=case.name, rtol=rtol)
            assert report.passed, format_table([report])
            if dtype == torch.float64:
                assert all(t.fd is not None for t in report.tensors if t.shape and 0 not in t.shape)
                # the stated float64 figures hold outright for the single layers
                if "res_block" not in case.name:
                    assert report.worst_rel("autograd") <= TOLERANCES[dtype]["autograd"][0], case.name
                    assert report.worst_rel("fd") <= TOLERANCES[dtype]["fd"][0], case.name


def test_wrong_weight_gradient_is_caught_with_its_index():
    torch.manual_seed(0)
    report = check_module(HalfLinear(4, 3), torch.randn(5, 4))
    bad = {t.name: t for t in report.failures()}
    assert set(bad) == {"weight"}
    assert bad["weight"].autograd.max_rel > 0.1 and bad["weight"].fd.max_rel > 0.1
    assert len(bad["weight"].autograd.worst_index) == 2


def test_a_layer_overwriting_its_weight_gradient_fails_with_that_diagnosis():
    from handgrad.check.diagnose import diagnose_report

    report = check_module(OverwritesWeightGrad(4, 3), torch.randn(5, 4))
    assert [t.name for t in report.failures()] == ["weight"]
    (_, says), = diagnose_report(report)
    assert "overwrites .g instead of adding to it" in says and "add_grad" in says
    assert check_module(hg.Linear(4, 3), torch.randn(5, 4)).passed


def test_missing_parameter_gradient_is_named():
    report = check_module(NoBiasGrad(4, 3), torch.randn(5, 4))
    assert [(t.name, t.problem) for t in report.failures()] == [("bias", "hand-written gradient missing (no .g)")]


def test_sign_error_is_caught():
    report = check_module(SignFlippedReLU(), torch.randn(6, 5))
    assert not report.passed and report.tensors[0].autograd.max_rel > 1


def test_caller_module_and_inputs_are_untouched():
    lin = hg.Linear(3, 2)
    x = torch.randn(4, 3)
    before = lin.weight.clone()
    check_module(lin, x)
    assert torch.equal(lin.weight, before) and lin.weight.dtype == torch.float32 and lin.weight.g is None
    assert getattr(x, "g", None) is None


def test_cli_check_prints_a_table_and_passes(capsys):
    """`handgrad check` as a user types it (the default 2 shapes per layer), every built-in layer in both dtypes
    (the second call of each check, too, at the case's own float32 tolerance)."""
    assert main(["check"]) == 0
    out = capsys.readouterr().out
    for layer in ("Linear", "ReLU", "LogSoftmax", "Sequential", "MSELoss", "CrossEntropyLoss", "NLLLoss", "RNN(",
                  "LSTM("):
        assert layer in out
    assert "FAIL" not in out and "checks passed" in out


def test_cli_check_fails_when_a_layer_is_wrong(monkeypatch, capsys):
    from handgrad.check import cases

    monkeypatch.setitem(cases.BUILTIN_CASES, "ReLU", lambda gen: cases.Case("ReLU", SignFlippedReLU(),
                                                                           (torch.randn(3, 4),)))
    assert main(["check", "--repeats", "1"]) == 1
    assert "FAILED" in capsys.readouterr().out


# ------------------------------------------------------------- handgrad check path/to/file.py:Class
USER_LAYERS = '''
import torch
import handgrad as hg


class SquareLinear(hg.Module):
    def __init__(self, n=4):
        super().__init__()
        self.w = hg.Parameter(torch.randn(n, n))

    def forward(self, x):
        return x @ self.w

    def bwd(self, dy, x):
        hg.add_grad(self.w, x.t() @ dy)
        return dy @ self.w.t()


class SquareLinearTransposed(SquareLinear):
    def bwd(self, dy, x):
        hg.add_grad(self.w, dy.t() @ x)  # right shape, wrong layout
        return dy @ self.w.t()


class Square(hg.Module):
    def forward(self, x):
        return x ** 2

    def bwd(self, dy, x):
        return 2 * dy * dy  # dy where x belongs


class Product(hg.Module):
    def forward(self, a, b):
        return a * b

    def bwd(self, dy, a, b):
        return dy * b, dy * a


class ProductWrongSecond(Product):
    def bwd(self, dy, a, b):
        return dy * b, dy * b


class Embedding(hg.Module):
    def __init__(self, n=10, d=3):
        super().__init__()
        self.w = hg.Parameter(torch.randn(n, d))

    def forward(self, idx):
        return self.w[idx]

    def bwd(self, dy, idx):
        g = torch.zeros_like(self.w)
        g.index_add_(0, idx.reshape(-1), dy.reshape(-1, dy.shape[-1]))
        hg.add_grad(self.w, g)


class NLL(hg.Module):
    def forward(self, logits, labels):
        return -torch.log_softmax(logits, 1).gather(1, labels[:, None]).mean()

    def bwd(self, dy, logits, labels):
        p = torch.softmax(logits, 1)
        p[torch.arange(len(labels)), labels] -= 1
        return dy * p / len(labels)


class NLLNoMean(NLL):
    def bwd(self, dy, logits, labels):
        return super().bwd(dy, logits, labels) * len(labels)


class Indices(hg.Module):
    def forward(self, idx):
        return idx + 1


class ScaledShift(hg.Module):
    """forward(a, b) = a * b + w: b of shape [C] broadcast over a's rows [N, C]."""

    def __init__(self, n=5):
        super().__init__()
        self.w = hg.Parameter(torch.randn(n))

    def forward(self, a, b):
        return a * b + self.w

    def bwd(self, dy, a, b):
        hg.add_grad(self.w, dy.sum(0))
        return dy * b, (dy * a).sum(0)


class ScaledShiftUnreduced(ScaledShift):
    def bwd(self, dy, a, b):
        hg.add_grad(self.w, dy.sum(0))
        return dy * b, dy * a  # b's gradient not summed over the rows it was broadcast to


class PickRows(hg.Module):
    """forward(idx, x): rows of x at int64 idx (the int input first), scaled by w."""

    def __init__(self, d=4):
        super().__init__()
        self.w = hg.Parameter(torch.randn(d))

    def forward(self, idx, x):
        return x[idx] * self.w

    def bwd(self, dy, idx, x):
        hg.add_grad(self.w, (dy * x[idx]).sum(0))
        dx = torch.zeros_like(x)
        dx.index_add_(0, idx, dy * self.w)
        return None, dx
'''


def check_cli(tmp_path, cls: str, *args: str) -> int:
    path = tmp_path / "user_layers.py"
    path.write_text(USER_LAYERS)
    return main(["check", f"{path}:{cls}", *args])


def test_cli_check_square_layer_with_transposed_weight_gradient_exits_1(tmp_path, capsys):
    assert check_cli(tmp_path, "SquareLinearTransposed", "--input-shape", "8,4") == 1
    out = capsys.readouterr().out
    assert "diagnosis: w: transposed" in out and "FAILED: 1 of 2 gradients" in out


def test_cli_check_elementwise_backward_using_dy_for_x_exits_1(tmp_path, capsys):
    assert check_cli(tmp_path, "Square", "--input-shape", "8,4") == 1
    assert "diagnosis: input: " in capsys.readouterr().out


def test_cli_check_correct_square_layer_exits_0(tmp_path, capsys):
    for dtype in ("float64", "float32"):
        assert check_cli(tmp_path, "SquareLinear", "--input-shape", "8,4", "--dtype", dtype) == 0
        assert "SquareLinear: all 2 gradients match autograd" in capsys.readouterr().out


def test_cli_check_several_inputs_checks_each_gradient(tmp_path, capsys):
    assert check_cli(tmp_path, "Product", "--input-shape", "8,5", "--input-shape", "8,5") == 0
    out = capsys.readouterr().out
    assert "input[0]" in out and "input[1]" in out and "Product: all 2 gradients match" in out
    assert check_cli(tmp_path, "ProductWrongSecond", "--input-shape", "8,5", "--input-shape", "8,5") == 1
    out = capsys.readouterr().out
    assert "diagnosis: input[1]: " in out and "diagnosis: input[0]" not in out


def test_cli_check_embedding_with_int_indices(tmp_path, capsys):
    assert check_cli(tmp_path, "Embedding", "--input-shape", "4,7:int:10") == 0
    assert "Embedding: all 1 gradients match autograd and finite differences" in capsys.readouterr().out


def test_cli_check_loss_with_logits_and_int_labels(tmp_path, capsys):
    assert check_cli(tmp_path, "NLL", "--input-shape", "8,5", "--input-shape", "8:int:5") == 0
    assert "NLL: all 1 gradients match" in capsys.readouterr().out
    assert check_cli(tmp_path, "NLLNoMean", "--input-shape", "8,5", "--input-shape", "8:int:5") == 1
    assert "diagnosis: input: off by a constant factor 8 = N (batch size 8)" in capsys.readouterr().out


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_cli_check_two_inputs_logits_and_labels_and_two_floats_broadcast(tmp_path, capsys, dtype):
    """forward(logits, labels) with --input-shape 8,10 --input-shape 8:int:10; forward(a, b) with b broadcast
    over a's rows and a parameter; forward(idx, x) with the int input first."""
    both = " and finite differences" if dtype == "float64" else ""
    assert check_cli(tmp_path, "NLL", "--input-shape", "8,10", "--input-shape", "8:int:10", "--dtype", dtype) == 0
    assert f"NLL: all 1 gradients match autograd{both}" in capsys.readouterr().out
    assert check_cli(tmp_path, "ScaledShift", "--input-shape", "8,5", "--input-shape", "5", "--dtype", dtype) == 0
    out = capsys.readouterr().out
    assert "input[0]  [8, 5]" in out and "input[1]  [5]" in out and "ScaledShift: all 3 gradients match" in out
    assert check_cli(tmp_path, "PickRows", "--input-shape", "9:int:6", "--input-shape", "6,4", "--dtype", dtype) == 0
    assert "PickRows: all 2 gradients match" in capsys.readouterr().out


def test_cli_check_a_broadcast_input_whose_gradient_is_not_summed_back_fails(tmp_path, capsys):
    assert check_cli(tmp_path, "ScaledShiftUnreduced", "--input-shape", "8,5", "--input-shape", "5") == 1
    out = capsys.readouterr().out
    assert "input[1]" in out and "gradient has shape [8, 5], expected [5]" in out
    assert "FAILED: 1 of 3 gradients of ScaledShiftUnreduced are wrong" in out


@pytest.mark.parametrize("cls, specs, message", [
    ("Square", ["8,a"], "--input-shape '8,a': SHAPE must be positive sizes like 8,16"),
    ("Square", ["8,0"], "--input-shape '8,0': SHAPE must be positive sizes"),
    ("Square", [":int:3"], "--input-shape ':int:3': SHAPE must be positive sizes"),
    ("Square", ["8,x"], "--input-shape '8,x': SHAPE must be positive sizes"),  # 'x' separates, it used to vanish
    ("Square", ["4x"], "--input-shape '4x': SHAPE must be positive sizes"),
    ("Square", ["100000,100000"], "has 10,000,000,000 elements; a gradient check takes at most"),
    ("Embedding", ["4,7:int"], "an int input needs its value range as SHAPE:int:HIGH, e.g. 4,7:int:10"),
    ("Embedding", ["4,7:int:0"], "HIGH in SHAPE:int:HIGH must be positive (values are drawn from [0, HIGH)), got 0"),
    ("Embedding", ["4,7:int:-2"], "must be positive (values are drawn from [0, HIGH)), got -2"),
    ("Embedding", ["4,7:int:ten"], "HIGH in SHAPE:int:HIGH must be an integer, got 'ten'"),
    ("Embedding", ["4,7:int:3:4"], "expected SHAPE:int:HIGH with one HIGH"),
    ("Square", ["8,4:bogus"], "expected SHAPE, SHAPE:float:LOW:HIGH or SHAPE:int:HIGH, got kind 'bogus'"),
    ("Square", ["8,4:float:3"], "a float input's range is SHAPE:float:LOW:HIGH, e.g. 8,4:float:0.1:2"),
    ("Square", ["8,4:float:2:1"], "SHAPE:float:LOW:HIGH needs finite LOW < HIGH, got 2 and 1"),
    ("Square", ["8,4:float:a:1"], "LOW and HIGH in SHAPE:float:LOW:HIGH must be numbers, got 'a' and '1'"),
    ("Square", ["8,4:float:0:inf"], "needs finite LOW < HIGH, got 0 and inf"),
    ("Square", ["1024,1024", "1024,1024", "8,4"], "have 2,097,184 elements in all; a gradient check takes at most"),
    ("Product", ["8,5"], "Product.forward(a, b) takes 2 inputs, got 1 (one per --input-shape)"),
    ("Square", ["8,5", "8,5"], "Square.forward(x) takes 1 input, got 2 (one per --input-shape)"),
    ("NLL", ["8,5", "8:int:9"], "NLL.forward rejected inputs of shapes [8, 5], [8] int64 in [0, 9): RuntimeError"),
    ("Indices", ["4:int:3"], "nothing to check: Indices has no parameters and every input is int"),
    ("Embedding", ["4,7"], "Embedding.forward rejected an input of shape [4, 7]: IndexError"),
])
def test_cli_check_bad_input_specs_are_one_line_and_exit_2(tmp_path, capsys, cls, specs, message):
    args = [a for spec in specs for a in ("--input-shape", spec)]
    assert check_cli(tmp_path, cls, *args) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    assert lines[0].startswith("handgrad: error: ") and message in lines[0], lines[0]
    assert captured.out == ""


def test_cli_check_non_float_output_is_a_usage_error(tmp_path, capsys):
    source = USER_LAYERS + '''

class IntOut(hg.Module):
    def __init__(self):
        super().__init__()
        self.w = hg.Parameter(torch.randn(3))

    def forward(self, idx):
        return idx * 2
'''
    (tmp_path / "int_out.py").write_text(source)
    assert main(["check", f"{tmp_path / 'int_out.py'}:IntOut", "--input-shape", "4:int:3"]) == 2
    assert "IntOut.forward returned a torch.int64 tensor on an input of shape [4] int64 in [0, 3), expected a " \
           "floating-point tensor" in capsys.readouterr().err


SEEDS_LAYERS = '''
import torch
from handgrad import Module

class Relu(Module):
    def forward(self, inp): return inp.clamp_min(0.)
    def bwd(self, out, inp): inp.g = (inp > 0).float() * out.g

class Lin(Module):
    def __init__(self, n_in=6, n_out=4):
        self.w, self.b = torch.randn(n_in, n_out), torch.zeros(n_out)
    def forward(self, inp): return inp @ self.w + self.b
    def bwd(self, out, inp):
        inp.g = out.g @ self.w.t()
        self.w.g = inp.t() @ out.g
        self.b.g = out.g.sum(0)

class LinTransposed(Lin):
    def bwd(self, out, inp):
        inp.g = out.g @ self.w.t()
        self.w.g = (out.g.t() @ inp).reshape(self.w.shape)
        self.b.g = out.g.sum(0)
'''


@pytest.mark.parametrize("cls, code, verdict", [("Relu", 0, "all 1 gradients match"), ("Lin", 0, "all 3 gradients"),
                                                ("LinTransposed", 1, "FAILED: 1 of 3")])
def test_cli_check_a_seeds_form_layer(tmp_path, capsys, cls, code, verdict):
    """A layer written as the seeds wrote it, bwd(self, out, inp) assigning .g, is checked from the command line."""
    path = tmp_path / "seeds_layers.py"
    path.write_text(SEEDS_LAYERS)
    assert main(["check", f"{path}:{cls}", "--input-shape", "8,6", "--args", '{"n_in": 6, "n_out": 6}'
                 if cls != "Relu" else "{}"]) == code
    assert verdict in capsys.readouterr().out


STALE_LAYERS = '''
import torch
from handgrad import Module

class ReluMaskOnce(Module):  # the mask computed on the first call only
    def forward(self, inp):
        if not hasattr(self, "mask"):
            self.mask = (inp > 0).double()
        return inp.clamp_min(0.)
    def bwd(self, out, inp): inp.g = self.mask * out.g

class LinStaleWT(Module):  # keeps w.t() from construction: stale once an optimizer moves w
    def __init__(self, n_in=6, n_out=4):
        self.w, self.b = torch.randn(n_in, n_out), torch.randn(n_out)
        self.wt = self.w.t().clone()
    def forward(self, inp): return inp @ self.w + self.b
    def bwd(self, out, inp):
        inp.g = out.g @ self.wt
        self.w.g = inp.t() @ out.g
        self.b.g = out.g.sum(0)
'''


@pytest.mark.parametrize("cls", ["ReluMaskOnce", "LinStaleWT"])
def test_cli_check_catches_what_is_kept_from_an_earlier_call(tmp_path, capsys, cls):
    """A second call, with shuffled rows, moved weights and another dY, catches a backward right only once."""
    path = tmp_path / "stale_layers.py"
    path.write_text(STALE_LAYERS)
    assert main(["check", f"{path}:{cls}", "--input-shape", "8,6"]) == 1
    out = capsys.readouterr().out
    assert "diagnosis: input: right on the first call, wrong on a second call" in out
