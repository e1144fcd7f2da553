"""Gradient verification: hand-written backward vs autograd and finite differences."""

from .cases import BUILTIN_CASES, Case, builtin_cases
from .core import TOLERANCES, CheckReport, Comparison, TensorCheck, check_module, compare
from .table import format_table

__all__ = ["BUILTIN_CASES", "Case", "CheckReport", "Comparison", "TOLERANCES", "TensorCheck", "builtin_cases",
           "check_module", "compare", "format_table"]
