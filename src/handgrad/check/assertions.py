"""Checks for users' own test suites: one call that fails with the table and a diagnosis."""

from __future__ import annotations

import torch
from torch import Tensor

from ..module import Module
from .core import CheckReport, check_module
from .diagnose import diagnose_report
from .table import format_table


def explain(report: CheckReport) -> str:
    """One line per problem of the layer as a whole (it changed dY or its input in place), then one per failing
    tensor: its name and what is wrong with its gradient."""
    return "\n".join([f"{report.module}: {p}" for p in report.problems] +
                     [f"{t.name}: {why}" for t, why in diagnose_report(report)])


def assert_gradients_correct(module: Module, *inputs: Tensor, dtype: torch.dtype = torch.float64,
                             **kwargs: object) -> CheckReport:
    """Assert that `module`'s hand-written backward matches autograd (and finite differences in float64).

    Raises AssertionError with the table and one diagnosis per failing tensor; returns the report.
    Use it in pytest:  `assert_gradients_correct(MyLayer(16, 8), torch.randn(4, 16))`.
    """
    report = check_module(module, *inputs, dtype=dtype, **kwargs)
    if not report.passed:
        raise AssertionError(f"{report.module}: hand-written gradients are wrong\n{explain(report)}\n"
                             f"{format_table([report])}")
    return report
