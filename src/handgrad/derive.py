"""Symbolic derivatives (the seeds' sympy cells, made useful): sympy differentiates an activation's
forward formula, and the hand-written backward is checked against it at many points."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import sympy as sp
import torch

from . import layers as L
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
        raise ValueError(f"unknown activation {name!r}: expected one of {', '.join(ACTIVATIONS)}")
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
