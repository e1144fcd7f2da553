"""A formula of x typed by the user (`handgrad derive --expr "x*sigmoid(x)"`), read safely into sympy and
evaluated on torch tensors.

Reading: the text is first parsed as a Python expression tree and every node checked against a short list
(numbers, x, the operators + - * / ** ^, calls of the functions in FUNCTIONS): no attribute, subscript,
string, keyword or other name gets through. Only then does sympy's parser read it, with a namespace holding
x and those functions alone (no builtins). Evaluating: `to_torch` lambdifies with torch functions.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Callable
from functools import reduce

import sympy as sp
import torch
from torch import Tensor

from .errors import UsageError

x = sp.Symbol("x", real=True)
_t = sp.Symbol("t", real=True)

# the functions an expression may call, each with a torch counterpart (below) so autograd can check it
FUNCTIONS: dict[str, object] = {
    **{name: getattr(sp, name) for name in ("exp", "log", "sqrt", "sin", "cos", "tan", "asin", "acos", "atan",
                                            "sinh", "cosh", "tanh", "asinh", "acosh", "atanh", "erf", "erfc",
                                            "Abs", "sign", "Max", "Min")},
    "ln": sp.log, "abs": sp.Abs, "max": sp.Max, "min": sp.Min,
    "sigmoid": sp.Lambda(_t, 1 / (1 + sp.exp(-_t))),
    "softplus": sp.Lambda(_t, sp.log(1 + sp.exp(_t))),
    "relu": sp.Lambda(_t, sp.Max(_t, 0)),
}
CONSTANTS = {"pi": sp.pi, "E": sp.E}
MAX_LENGTH = 1000
MAX_ARGS = 4  # max(...)/min(...) of many arguments: sympy's work grows steeply with their number
MAX_DEPTH = 60  # calls and operators nested in one another
MAX_CONSTANT_POWER = 64  # 9**9**9 would have sympy compute a number of 370 million digits

_OPERATORS = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.Pow, ast.BitXor)


def _names() -> str:
    return ", ".join(sorted(FUNCTIONS, key=str.lower))


def parse_expression(text: str) -> sp.Expr:
    """The sympy expression of x that `text` spells; UsageError (one line, naming what is wrong) otherwise."""
    if len(text) > MAX_LENGTH:
        raise UsageError(f"--expr: at most {MAX_LENGTH} characters, got {len(text)}")
    if not text.isascii():  # Python reads look-alikes (a full-width x) as x, sympy does not: refuse them
        odd = next(ch for ch in text if not ch.isascii())
        raise UsageError(f"--expr {text!r}: only ASCII characters, got {odd!r} (U+{ord(odd):04X})")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
        raise UsageError(f"--expr {text!r}: not a formula ({type(e).__name__}: {getattr(e, 'msg', e)})") from None
    try:
        _check(tree.body, text)
        deep = _depth(tree.body)
    except RecursionError:
        deep = MAX_DEPTH + 1
    if deep > MAX_DEPTH:
        raise UsageError(f"--expr: nested too deeply (at most {MAX_DEPTH} calls and operators within one another)")
    from sympy.parsing.sympy_parser import convert_xor, parse_expr, rationalize, standard_transformations

    namespace = {"x": x, **FUNCTIONS, **CONSTANTS}
    try:  # the tree holds only the nodes _check allows; sympy's parser sees no builtins
        expr = parse_expr(text.strip(), local_dict=namespace, global_dict={"__builtins__": {}, **_SYMPY_NUMBERS},
                          transformations=standard_transformations + (convert_xor, rationalize))
    except (TypeError, ValueError, SyntaxError, AttributeError, ZeroDivisionError, RecursionError) as e:
        raise UsageError(f"--expr {text!r}: sympy cannot read it ({type(e).__name__}: {e})") from None
    if not isinstance(expr, sp.Expr) or expr.has(sp.zoo, sp.nan, sp.oo, -sp.oo):
        raise UsageError(f"--expr {text!r}: expected a finite formula of x, got {expr}")
    return expr


_SYMPY_NUMBERS = {"Integer": sp.Integer, "Float": sp.Float, "Rational": sp.Rational, "Symbol": sp.Symbol}


def _check(node: ast.AST, text: str) -> None:
    """Every node of the tree is a number, x, a constant, an allowed operator or a call of FUNCTIONS."""
    bad = f"--expr {text!r}:"
    if isinstance(node, ast.Constant):
        value = node.value
        if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                (isinstance(value, float) and not math.isfinite(value)):
            raise UsageError(f"{bad} {ast.get_source_segment(text.strip(), node)} is not a finite number")
    elif isinstance(node, ast.Name):
        if node.id != "x" and node.id not in CONSTANTS:
            what = "a function: call it, e.g. exp(x)" if node.id in FUNCTIONS else "unknown"
            raise UsageError(f"{bad} {node.id!r} is {what} (an expression of x alone, with pi, E and the "
                             f"functions {_names()})")
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
        _check(node.operand, text)
    elif isinstance(node, ast.BinOp) and isinstance(node.op, _OPERATORS):
        _check(node.left, text)
        _check(node.right, text)
        if isinstance(node.op, (ast.Pow, ast.BitXor)) and not _has_x(node.left) and not _has_x(node.right):
            exponent = _number(node.right)  # sympy works such a power out exactly: keep the number small
            if exponent is None or abs(exponent) > MAX_CONSTANT_POWER or _has_power(node.left):
                raise UsageError(f"{bad} a power of numbers takes a number as its base and an exponent from "
                                 f"-{MAX_CONSTANT_POWER} to {MAX_CONSTANT_POWER}, got "
                                 f"{ast.get_source_segment(text.strip(), node)}")
    elif isinstance(node, ast.Call):
        name = node.func.id if isinstance(node.func, ast.Name) else None
        if name not in FUNCTIONS:
            shown = name or ast.get_source_segment(text.strip(), node.func)
            raise UsageError(f"{bad} unknown function {shown!r} (expected one of {_names()})")
        if node.keywords or any(isinstance(a, ast.Starred) for a in node.args) or not node.args:
            raise UsageError(f"{bad} {name}() takes plain arguments, e.g. {name}(x)")
        if len(node.args) > MAX_ARGS:
            raise UsageError(f"{bad} {name}() takes at most {MAX_ARGS} arguments here, got {len(node.args)}")
        for arg in node.args:
            _check(arg, text)
    else:
        raise UsageError(f"{bad} {ast.get_source_segment(text.strip(), node) or type(node).__name__!r} is not "
                         "allowed (numbers, x, pi, E, + - * / ** ^ and function calls only)")


def _depth(node: ast.AST) -> int:
    """How many calls and operators sit within one another."""
    children = [c for c in ast.iter_child_nodes(node) if isinstance(c, ast.expr)]
    return 1 + max((_depth(c) for c in children), default=0)


def _has_x(node: ast.AST) -> bool:
    return any(isinstance(n, ast.Name) and n.id == "x" for n in ast.walk(node))


def _has_power(node: ast.AST) -> bool:
    return any(isinstance(n, ast.BinOp) and isinstance(n.op, (ast.Pow, ast.BitXor)) for n in ast.walk(node))


def _number(node: ast.AST) -> float | None:
    """The value of a small tree of numbers and + - * /, or None (anything else, or too large)."""
    try:
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return float(node.value)
        if isinstance(node, ast.UnaryOp):
            v = _number(node.operand)
            return None if v is None else (-v if isinstance(node.op, ast.USub) else v)
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult, ast.Div)):
            a, b = _number(node.left), _number(node.right)
            if a is None or b is None:
                return None
            return {ast.Add: a + b, ast.Sub: a - b, ast.Mult: a * b}.get(type(node.op), a / b if b else None)
    except OverflowError:
        return None
    return None


# ------------------------------------------------------------------------------------------- evaluation


def _tensors(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """fn taking numbers too (sympy prints sqrt(2), exp(-2)): each becomes a float64 tensor."""
    return lambda *args: fn(*(a if isinstance(a, Tensor) else torch.tensor(float(a), dtype=torch.float64)
                               for a in args))


TORCH: dict[str, object] = {
    **{name: _tensors(getattr(torch, name)) for name in ("exp", "log", "sqrt", "sin", "cos", "tan", "asin", "acos",
                                                         "atan", "sinh", "cosh", "tanh", "asinh", "acosh", "atanh",
                                                         "erf", "erfc", "sign")},
    "Abs": _tensors(torch.abs),
    "Max": _tensors(lambda *a: reduce(torch.maximum, a)), "Min": _tensors(lambda *a: reduce(torch.minimum, a)),
    # in derivatives (of Max, Abs, sign), not callable in --expr: autograd has no derivative of it to check against
    "Heaviside": _tensors(lambda v, at0=torch.tensor(0.5, dtype=torch.float64): torch.heaviside(v, at0.to(v))),
    "DiracDelta": _tensors(lambda v, *k: torch.zeros_like(v)),  # never evaluated at its point (see derive)
    "pi": math.pi, "E": math.e,
}


def _printer():  # type: ignore[no-untyped-def]
    """sympy's Python printer, with every function of TORCH called by its name (sign included: the plain printer
    writes `0.0 if x == 0 else copysign(1, x)`, which a tensor cannot take)."""
    from sympy.printing.pycode import PythonCodePrinter

    class TorchNames(PythonCodePrinter):
        def _print_sign(self, e: sp.Expr) -> str:
            return f"sign({self._print(e.args[0])})"

    return TorchNames({"fully_qualified_modules": False, "inline": True, "allow_unknown_functions": True,
                       "user_functions": {name: name for name in TORCH}})


def to_torch(expr: sp.Expr) -> Callable[[Tensor], Tensor]:
    """expr as a function of a float64 tensor xs, returning a tensor of xs's shape (autograd flows through)."""
    f = sp.lambdify(x, expr, modules=[TORCH], printer=_printer())

    def call(xs: Tensor) -> Tensor:
        out = f(xs)
        if not isinstance(out, Tensor):
            out = torch.tensor(float(out), dtype=torch.float64)
        return out + 0 * xs  # a constant broadcast to xs's shape, and joined to autograd's graph

    return call
