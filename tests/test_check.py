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
        self.weight.g = x.t() @ dy
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
    assert main(["check", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    for layer in ("Linear", "ReLU", "LogSoftmax", "Sequential", "MSELoss", "CrossEntropyLoss", "NLLLoss"):
        assert layer in out
    assert "FAIL" not in out and "checks passed" in out


def test_cli_check_fails_when_a_layer_is_wrong(monkeypatch, capsys):
    from handgrad.check import cases

    monkeypatch.setitem(cases.BUILTIN_CASES, "ReLU", lambda gen: cases.Case("ReLU", SignFlippedReLU(),
                                                                           (torch.randn(3, 4),)))
    assert main(["check", "--repeats", "1"]) == 1
    assert "FAILED" in capsys.readouterr().out
