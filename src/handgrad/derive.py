"""Symbolic derivatives (the seeds' sympy cells, made useful): sympy differentiates an activation's
forward formula, and the hand-written backward is checked against it at many points. The same for a formula
typed by the user (`--expr`, checked against autograd) and for an elementwise layer of the user's own."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import sympy as sp
import torch

from . import layers as L
from .errors import GradientCheckError, UsageError
from .expression import to_torch
from .module import Module

x = sp.Symbol("x", real=True)


@dataclass(frozen=True)
class Activation:
    formula: sp.Expr  # the forward, as the layer computes it
    make: Callable[[], Module]  # the handgrad layer


ACTIVATIONS: dict[str, Activation] = {
    "relu": Activation(sp.Max(x, 0), L.ReLU),
    "leaky_relu": Activation(sp.Piecewise((x, x > 0), (sp.Rational(1, 100) * x, True)), L.LeakyReLU),
    "general_relu": Activation(sp.Min(sp.Piecewise((x, x > 0), (x / 10, True)) - sp.Rational(2, 5), 6),
                               lambda: L.GeneralRelu(0.1, 0.4, 6.0)),
    "gelu": Activation(x * (1 + sp.erf(x / sp.sqrt(2))) / 2, L.GELU),
    "gelu_tanh": Activation(x * (1 + sp.tanh(sp.sqrt(2 / sp.pi) * (x + sp.Rational(44715, 1000000) * x**3))) / 2,
                            lambda: L.GELU("tanh")),
    "sigmoid": Activation(1 / (1 + sp.exp(-x)), L.Sigmoid),
    "tanh": Activation(sp.tanh(x), L.Tanh),
    "silu": Activation(x / (1 + sp.exp(-x)), L.SiLU),
}


@dataclass
class Derivation:
    name: str
    forward: sp.Expr
    derivative: sp.Expr
    points: int
    max_abs_err: float
    worst_x: float

    @property
    def passed(self) -> bool:
        return self.max_abs_err <= 1e-10


def derive(name: str, points: int = 2001, lo: float = -6.0, hi: float = 6.0) -> Derivation:
    """Differentiate `name`'s forward with sympy; compare with the layer's backward (dY = 1) in float64."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}: expected one of {', '.join(ACTIVATIONS)}, a layer of "
                         "yours as path/to/file.py:ClassName, or --expr FORMULA")
    act = ACTIVATIONS[name]
    derivative = sp.simplify(sp.diff(act.formula, x))
    xs = torch.linspace(lo, hi, points, dtype=torch.float64)
    xs = xs[(xs.abs() > 1e-9) & ((xs - 6.4).abs() > 1e-9)]  # not on a kink, where the derivative is undefined
    heaviside = {"Heaviside": lambda v, h0=0.5: 1.0 if v > 0 else (0.0 if v < 0 else h0)}
    f = sp.lambdify(x, derivative, modules=[heaviside, "math"])
    symbolic = torch.tensor([float(f(v)) for v in xs.tolist()], dtype=torch.float64)
    layer = act.make()
    layer(xs)
    hand = layer.backward(torch.ones_like(xs))
    err = (hand - symbolic).abs()
    i = int(err.argmax())
    return Derivation(name, act.formula, derivative, xs.numel(), float(err[i]), float(xs[i]))


# ------------------------------------------- an expression of the user's, or an elementwise layer of theirs

POINTS, LO, HI = 2001, -6.0, 6.0
RTOL = 1e-9  # float64: a point agrees when |got - ref| <= RTOL * max(1, |ref|)


def grid(points: int = POINTS, lo: float = LO, hi: float = HI) -> torch.Tensor:
    """`points` float64 points spread over [lo, hi], shifted by an irrational fraction of a step so that none
    falls on a kink at a round number (0, 1, 0.5, ...), where a derivative is not defined."""
    offset = (5 ** 0.5 - 1) / 2
    return lo + (hi - lo) * (torch.arange(points, dtype=torch.float64) + offset) / points  # (points,)


@dataclass
class Agreement:
    """`what` against `reference` at many points: where the reference is finite, the largest error."""

    what: str
    reference: str
    points: int  # compared
    skipped: int  # where the reference (or the expression) is not finite
    max_err: float  # max |got - ref| / max(1, |ref|)
    worst_x: float

    @property
    def passed(self) -> bool:
        return self.points > 0 and self.max_err <= RTOL

    def line(self) -> str:
        verdict = "matches" if self.passed else "DIFFERS from"
        skipped = f", {self.skipped} skipped where it is not finite" if self.skipped else ""
        return (f"{self.what} {verdict} {self.reference} at {self.points} points in [{LO:g}, {HI:g}]{skipped}: "
                f"max |got - ref| / max(1, |ref|) {self.max_err:.1e} (at x = {self.worst_x:.3f})")


def agree(what: str, reference: str, xs: torch.Tensor, got: torch.Tensor, ref: torch.Tensor,
          valid: torch.Tensor | None = None) -> Agreement:
    """Compare got with ref where ref (and `valid`) is finite; a non-finite `got` there is an error."""
    keep = torch.isfinite(ref) if valid is None else torch.isfinite(ref) & valid
    got, ref, at = got.detach()[keep], ref.detach()[keep], xs.detach()[keep]
    if not at.numel():
        return Agreement(what, reference, 0, xs.numel(), float("nan"), float("nan"))
    err = ((got - ref).abs() / ref.abs().clamp(min=1)).nan_to_num(nan=float("inf"))
    i = int(err.argmax())
    return Agreement(what, reference, at.numel(), xs.numel() - at.numel(), float(err[i]), float(at[i]))


def symbolic_derivative(expr: sp.Expr) -> sp.Expr:
    """d expr / dx as sympy's diff gives it; UsageError when sympy can only leave it unevaluated. Not simplified:
    sympy's simplify can take minutes on a formula of a few terms (and turn Heaviside into a Piecewise)."""
    derivative = sp.diff(expr, x)
    if derivative.has(sp.Derivative, sp.Subs):
        raise UsageError(f"--expr {expr}: sympy has no closed form for its derivative ({derivative})")
    return derivative


def _evaluate(expr: sp.Expr, xs: torch.Tensor, what: str) -> torch.Tensor:
    try:
        return to_torch(expr)(xs)
    except Exception as e:  # a function torch cannot take this way (Piecewise from sympy, ...)
        raise UsageError(f"{what} {expr} cannot be evaluated with torch ({type(e).__name__}: {e})") from None


def derive_expression(expr: sp.Expr) -> tuple[sp.Expr, Agreement]:
    """sympy's derivative of expr, and how autograd of the same expression (lambdified to torch) agrees."""
    derivative = symbolic_derivative(expr)
    xs = grid().requires_grad_()
    with torch.enable_grad():
        y = _evaluate(expr, xs, "the expression")  # (P,)
        (auto,) = torch.autograd.grad(y.sum(), xs, allow_unused=True)
    auto = torch.zeros_like(xs) if auto is None else auto  # an expression without x
    sym = _evaluate(derivative, xs.detach(), "its derivative")
    result = agree("autograd of the same expression", "sympy's derivative", xs, auto, sym, torch.isfinite(y))
    if not result.points:
        raise UsageError(f"--expr {expr}: neither it nor its derivative is finite at any of {POINTS} points in "
                         f"[{LO:g}, {HI:g}]")
    return derivative, result


def derive_layer(module: Module, expr: sp.Expr | None = None,
                 seed: int = 0) -> tuple[sp.Expr | None, list[Agreement]]:
    """An elementwise layer's hand-written backward at many points, for a random upstream gradient dY:
    dX against dY * (sympy's derivative of `expr`) and its forward against `expr`, or, without an expression,
    dX against autograd of its own forward. Returns sympy's derivative (None without `expr`) and the agreements."""
    name = type(module).__name__
    xs = grid()  # (P,)
    dy = torch.randn(xs.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)  # (P,)
    layer = copy.deepcopy(module).to(dtype=torch.float64)
    try:
        out = layer(xs)
    except Exception as e:
        raise UsageError(f"{name}.forward failed on {xs.numel()} points (a 1-d float64 tensor): "
                         f"{type(e).__name__}: {e}") from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != tuple(xs.shape):
        got = f"shape {list(out.shape)}" if isinstance(out, torch.Tensor) else f"a {type(out).__name__}"
        raise UsageError(f"derive checks elementwise layers (one value in, one out): {name} maps {xs.numel()} "
                         f"points [{xs.numel()}] to {got}")
    try:
        layer.backward(dy)
    except Exception as e:
        raise GradientCheckError(f"{name}.backward raised {type(e).__name__}: {e}") from None
    hand = getattr(xs, "g", None)
    if hand is None or tuple(hand.shape) != tuple(xs.shape):
        got = "nothing" if hand is None else f"shape {list(hand.shape)}"
        raise GradientCheckError(f"{name}.backward gave its input a gradient of {got}, expected shape "
                                 f"[{xs.numel()}]")
    if expr is not None:
        derivative = symbolic_derivative(expr)
        ref = _evaluate(expr, xs, "the expression")
        slope = _evaluate(derivative, xs, "its derivative")
        return derivative, [agree("forward", f"the expression {expr}", xs, out, ref),
                            agree("hand-written backward", "dY * sympy's derivative", xs, hand, dy * slope,
                                  torch.isfinite(ref))]
    xs_ad = xs.clone().requires_grad_()
    with torch.enable_grad():
        out_ad = copy.deepcopy(module).to(dtype=torch.float64).forward(xs_ad)
        if not out_ad.requires_grad:
            raise UsageError(f"autograd cannot follow {name}.forward (its output has no grad_fn); give --expr to "
                             "compare with sympy's derivative instead")
        (ref,) = torch.autograd.grad(out_ad, xs_ad, dy)
    return None, [agree("hand-written backward", "autograd of its forward", xs, hand, ref, torch.isfinite(out))]
