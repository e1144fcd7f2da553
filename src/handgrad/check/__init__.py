"""Gradient verification: hand-written backward vs autograd and finite differences."""

from .assertions import assert_gradients_correct, explain
from .cases import BUILTIN_CASES, Case, builtin_cases
from .core import TOLERANCES, CheckReport, Comparison, TensorCheck, check_module, compare
from .diagnose import diagnose, diagnose_report
from .table import format_table

__all__ = [
    "BUILTIN_CASES", "Case", "CheckReport", "Comparison", "TOLERANCES", "TensorCheck", "assert_gradients_correct",
    "builtin_cases", "check_module", "compare", "diagnose", "diagnose_report", "explain", "format_table",
]
