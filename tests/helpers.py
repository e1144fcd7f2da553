"""The one shared test helper: a handgrad module against its torch counterpart.

`check_against_torch` compares output shape, dtype and values with a torch
function, then the hand-written gradients (input and parameters) with
torch.autograd.grad under a random upstream gradient, and in float64 with
central finite differences (through handgrad.check).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

import handgrad as hg
from handgrad.check import check_module

# (rtol, atol) for forward values and gradients, by dtype
TOL = {torch.float64: (1e-10, 1e-12), torch.float32: (1e-4, 1e-5)}  # elementwise, as torch.testing


def check_against_torch(module: hg.Module, torch_fn: Callable[..., Tensor], *inputs: Tensor,
                        params_to_torch: Callable[[dict[str, Tensor]], dict[str, Tensor]] | None = None,
                        dtype: torch.dtype = torch.float64, seed: int = 0) -> None:
    """Assert `module(*inputs)` and its hand-written gradients equal `torch_fn`'s under autograd.

    torch_fn(*inputs, **params) computes the same function with torch ops, where
    params are the module's parameters by name (mapped by `params_to_torch`,
    e.g. to transpose a weight into torch's layout).
    """
    rtol, atol = TOL[dtype]
    module = module.to(dtype=dtype)
    xs = [x.to(dtype) if x.is_floating_point() else x for x in inputs]
    out = module(*xs)
    named = dict(module.named_parameters())
    t_params = {k: v.detach().clone().requires_grad_(True) for k, v in named.items()}
    t_xs = [x.detach().clone().requires_grad_(x.is_floating_point()) for x in xs]
    mapped = params_to_torch(t_params) if params_to_torch else t_params
    t_out = torch_fn(*t_xs, **mapped)

    assert out.shape == t_out.shape, f"shape {list(out.shape)} != torch {list(t_out.shape)}"
    assert out.dtype == t_out.dtype, f"dtype {out.dtype} != torch {t_out.dtype}"
    torch.testing.assert_close(out, t_out.detach(), rtol=rtol, atol=atol)

    gen = torch.Generator().manual_seed(seed)
    dy = torch.randn(out.shape, generator=gen, dtype=dtype)
    module.zero_grad()
    module.backward(dy)
    wrt = [x for x in t_xs if x.requires_grad] + list(t_params.values())
    ref = torch.autograd.grad(t_out, wrt, dy, allow_unused=True)
    hand = [x.g for x in xs if x.is_floating_point()] + [p.g for p in named.values()]
    names = [f"input{i}" for i, x in enumerate(xs) if x.is_floating_point()] + list(named)
    for name, h, r, t in zip(names, hand, ref, wrt):
        r = torch.zeros_like(t) if r is None else r
        assert h is not None, f"no hand-written gradient for {name}"
        torch.testing.assert_close(h, r, rtol=rtol, atol=atol, msg=lambda m, name=name: f"gradient of {name}: {m}")

    if dtype == torch.float64:
        report = check_module(module, *inputs, dtype=torch.float64, seed=seed)
        assert report.passed, "\n".join(f"{t.name}: {t.problem or (t.autograd, t.fd)}" for t in report.failures())


def test_close(a: Tensor, b: Tensor, eps: float = 1e-5) -> None:
    """The seeds' check: every element of a within eps of b."""
    assert a.shape == b.shape, f"shapes differ: {list(a.shape)} vs {list(b.shape)}"
    worst = float((a.double() - b.double()).abs().max()) if a.numel() else 0.0
    assert worst < eps, f"max |a - b| = {worst:.3g} is not below eps = {eps}"


test_close.__test__ = False  # a helper, not a test


class SeedsLin(hg.Module):
    """The seeds' Module-style linear layer: plain tensors for parameters, bwd(self, out, inp) assigning .g."""

    def __init__(self, w: Tensor, b: Tensor) -> None:
        self.w, self.b = w, b

    def forward(self, inp: Tensor) -> Tensor:
        return inp @ self.w + self.b

    def bwd(self, out: Tensor, inp: Tensor) -> None:
        inp.g = out.g @ self.w.t()
        self.w.g = inp.t() @ out.g
        self.b.g = out.g.sum(0)
