"""`handgrad derive --expr FORMULA` and `handgrad derive file.py:Layer`: a formula read safely into sympy, its
derivative checked against autograd, and a user's elementwise layer against either (the built-in activations'
derivations are tested in test_trace.py)."""

import pytest
import sympy as sp
import torch

import handgrad as hg
from handgrad.cli import main
from handgrad.derive import POINTS, derive_expression, derive_layer, grid
from handgrad.errors import GradientCheckError, UsageError
from handgrad.expression import parse_expression, to_torch

x = sp.Symbol("x", real=True)


@pytest.mark.parametrize("text, expected", [
    ("x*sigmoid(x)", x / (1 + sp.exp(-x))),
    ("x^2 + 0.1*x", x**2 + x / 10),  # ^ is a power; decimals are exact rationals
    ("2**0.5 * tanh(x)", sp.sqrt(2) * sp.tanh(x)),
    ("softplus(x) - relu(x)", sp.log(1 + sp.exp(x)) - sp.Max(x, 0)),
    ("abs(x) + max(x, 1, 2*x) + E**x + pi", sp.Abs(x) + sp.Max(1, x, 2 * x) + sp.exp(x) + sp.pi),
    ("3", sp.Integer(3)),
])
def test_parse_expression_reads_formulas_of_x(text, expected):
    assert sp.simplify(parse_expression(text) - expected) == 0


@pytest.mark.parametrize("text, piece", [
    ("x*y", "'y' is unknown"),
    ("exp", "'exp' is a function: call it"),
    ("x.__class__", "'x.__class__' is not allowed"),
    ("().__class__.__base__.__subclasses__()", "unknown function"),
    ("__import__('os').system('true')", "unknown function"),
    ("[x for x in ()]", "is not allowed"),
    ("lambda: x", "is not allowed"),
    ("x if x else 1", "is not allowed"),
    ("x > 0", "is not allowed"),
    ("exp(x, base=2)", "exp() takes plain arguments"),
    ("sin(*[x])", "sin() takes plain arguments"),
    ("'x'", "'x' is not a finite number"),
    ("True*x", "True is not a finite number"),
    ("x**1e400", "1e400 is not a finite number"),
    ("9**9**9", "a power of numbers takes a number as its base"),
    ("(9**60)**60", "a power of numbers takes a number as its base"),
    ("x!", "not a formula"),
    ("", "not a formula"),
    ("1/0", "expected a finite formula of x, got zoo"),
    ("(" * 300 + "x" + ")" * 300, "--expr"),
    ("-" * 990 + "x", "--expr"),
])
def test_parse_expression_refuses_anything_else_in_one_line(text, piece):
    with pytest.raises(UsageError) as e:
        parse_expression(text)
    assert piece in str(e.value) and "\n" not in str(e.value)


def test_to_torch_evaluates_constants_and_kinks_on_tensors():
    xs = torch.tensor([-2.0, -0.5, 0.5, 2.0], dtype=torch.float64)
    f = to_torch(sp.sqrt(2) * sp.sign(x) + sp.Heaviside(x) + sp.Max(x, 0) + 3)
    expected = 2 ** 0.5 * xs.sign() + (xs > 0).double() + xs.clamp(min=0) + 3
    assert torch.allclose(f(xs), expected, rtol=1e-15, atol=0)
    assert to_torch(sp.Integer(3))(xs).shape == xs.shape


def test_the_grid_avoids_round_numbers_where_kinks_sit():
    xs = grid()
    assert xs.numel() == POINTS and -6 < float(xs.min()) < float(xs.max()) < 6
    assert not bool((xs * 2 == (xs * 2).round()).any())  # no 0, no integer, no half


@pytest.mark.parametrize("text", ["x*sigmoid(x)", "exp(x)*sin(x)^2 + tanh(2*x)/(1+x^2)", "abs(x)^3 + max(x, 0)",
                                  "sqrt(x) + log(x)", "erf(x)*softplus(x)", "3"])
def test_sympys_derivative_matches_autograd_of_the_same_expression(text):
    derivative, result = derive_expression(parse_expression(text))
    assert result.passed and result.points > 900, (derivative, result)


def test_derive_expression_skips_points_where_it_is_not_finite():
    derivative, result = derive_expression(parse_expression("log(x)"))
    assert derivative == 1 / x and result.points + result.skipped == POINTS and result.skipped > 900


class Swish(hg.Module):
    def forward(self, x):
        return x * torch.sigmoid(x)

    def bwd(self, dy, x):
        s = torch.sigmoid(x)
        return dy * (s + x * s * (1 - s))


class SwishWithoutProductRule(Swish):
    def bwd(self, dy, x):
        return dy * torch.sigmoid(x)


class SwishIgnoringDy(Swish):
    def bwd(self, dy, x):
        s = torch.sigmoid(x)
        return s + x * s * (1 - s)  # right with dY = 1 only: the random dY catches it


def test_derive_layer_against_sympy_and_against_autograd():
    expr = parse_expression("x*sigmoid(x)")
    derivative, results = derive_layer(Swish(), expr)
    assert derivative == sp.diff(expr, x) and [r.what for r in results] == ["forward", "hand-written backward"]
    assert all(r.passed and r.points == POINTS for r in results)
    derivative, results = derive_layer(Swish())
    assert derivative is None and results[0].reference == "autograd of its forward" and results[0].passed


@pytest.mark.parametrize("layer", [SwishWithoutProductRule(), SwishIgnoringDy()])
def test_derive_layer_catches_a_wrong_backward_either_way(layer):
    for expr in (parse_expression("x*sigmoid(x)"), None):
        _, results = derive_layer(layer, expr)
        assert not results[-1].passed and results[-1].max_err > 0.1


def test_derive_layer_with_another_formula_says_the_forward_differs():
    _, results = derive_layer(Swish(), parse_expression("x*tanh(x)"))
    assert not results[0].passed and results[0].what == "forward"


def test_derive_layer_refuses_a_layer_that_is_not_elementwise_and_fails_a_backward_that_raises():
    class Total(hg.Module):
        def forward(self, x):
            return x.sum()

    class Broken(Swish):
        def bwd(self, dy, x):
            raise RuntimeError("oops")

    with pytest.raises(UsageError, match=r"derive checks elementwise layers .* to shape \[\]"):
        derive_layer(Total())
    with pytest.raises(GradientCheckError, match="Broken.backward raised RuntimeError: oops"):
        derive_layer(Broken())


LAYERS = '''
import torch
import handgrad as hg


class Swish(hg.Module):
    def forward(self, x):
        return x * torch.sigmoid(x)

    def bwd(self, dy, x):
        s = torch.sigmoid(x)
        return dy * (s + x * s * (1 - s))


class Wrong(Swish):
    def bwd(self, dy, x):
        return dy * torch.sigmoid(x)
'''


def test_cli_derive_an_expression_and_a_layer(tmp_path, capsys):
    assert main(["derive", "--expr", "x*sigmoid(x)"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "x*sigmoid(x):  d/dx x/(1 + exp(-x))  =  x*exp(-x)/(1 + exp(-x))**2 + 1/(1 + exp(-x))"
    assert out[1].strip().startswith("autograd of the same expression matches sympy's derivative at 2001 points")
    (tmp_path / "acts.py").write_text(LAYERS)
    assert main(["derive", f"{tmp_path / 'acts.py'}:Swish", "--expr", "x*sigmoid(x)"]) == 0
    out = capsys.readouterr().out
    assert "forward matches the expression" in out and "hand-written backward matches dY * sympy's" in out
    assert main(["derive", f"{tmp_path / 'acts.py'}:Swish"]) == 0
    out = capsys.readouterr().out
    assert "no --expr, so its backward is compared with autograd of its forward" in out
    assert main(["derive", f"{tmp_path / 'acts.py'}:Wrong", "--expr", "x*sigmoid(x)"]) == 1
    out = capsys.readouterr().out
    assert "hand-written backward DIFFERS from dY * sympy's derivative" in out
    assert out.strip().splitlines()[-1] == "FAILED: Wrong's hand-written backward"
    assert not (tmp_path / "__pycache__").exists()  # loading the file leaves nothing beside it
