"""Trace one forward and backward: every layer's shapes and statistics, as the seeds did by hand in pdb."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor

from .calls import Call
from .module import Module


@contextmanager
def recording() -> Iterator[list[Call]]:
    """Within the block, the record of every Module call is appended (in call order) to the yielded list."""
    calls: list[Call] = []
    Module._call_log.append(calls)
    try:
        yield calls
    finally:
        Module._call_log.remove(calls)


def _shape(t: object) -> str:
    return "[" + ", ".join(map(str, t.shape)) + "]" if isinstance(t, Tensor) else "-"


def _stats(t: object) -> tuple[float, float, float] | None:
    if not isinstance(t, Tensor) or not t.is_floating_point() or t.numel() == 0:
        return None
    t = t.detach().double()
    return float(t.mean()), float(t.std()) if t.numel() > 1 else 0.0, float((t == 0).double().mean())


@dataclass
class LayerTrace:
    name: str  # position in the model, as named_modules names it
    layer: str  # the layer's repr
    input_shape: str
    output_shape: str
    grad_shape: str  # of the output's gradient (out.g)
    out_stats: tuple[float, float, float] | None  # mean, std, fraction of zeros
    grad_stats: tuple[float, float, float] | None
    param_grads: list[tuple[str, str]]  # (name, shape of .g)


def trace(model: Module, x: Tensor, target: Tensor | None = None, loss_fn: Module | None = None,
          seed: int = 0) -> list[LayerTrace]:
    """Run one forward and backward through `model` and describe every call of a leaf layer, in call order
    (a layer called twice has two rows).

    With `loss_fn` and `target` the backward starts from the loss; otherwise from a random
    upstream gradient (standard normal, seeded) on the output.
    """
    names = {id(m): n for n, m in model.named_modules()}
    with recording() as calls:
        out = model(x)
        if loss_fn is not None and target is not None:
            loss_fn(out, target)
    model.zero_grad()
    if loss_fn is not None and target is not None:
        loss_fn.backward()
        model.backward()
    else:
        model.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype))
    rows = []
    for call in calls:
        m = call.module
        if any(True for _ in m.children()) or id(m) not in names:
            continue  # containers and the loss: their leaves tell the story
        first = call.args[0] if call.args else None
        params = [(n, _shape(p.g)) for n, p in m._own_parameters()]
        rows.append(LayerTrace(names[id(m)], repr(m).split("\n")[0], _shape(first), _shape(call.out),
                               _shape(getattr(call.out, "g", None)), _stats(call.out),
                               _stats(getattr(call.out, "g", None)), params))
    return rows


def format_trace(rows: list[LayerTrace]) -> str:
    header = ("layer", "", "input -> output", "grad of output", "out mean", "out std", "zeros", "grad mean",
              "grad std", "parameter gradients")
    body = []
    for r in rows:
        o, g = r.out_stats, r.grad_stats
        body.append((r.name, r.layer, f"{r.input_shape} -> {r.output_shape}", r.grad_shape,
                     f"{o[0]:+.3f}" if o else "-", f"{o[1]:.3f}" if o else "-", f"{100 * o[2]:.0f}%" if o else "-",
                     f"{g[0]:+.2e}" if g else "-", f"{g[1]:.2e}" if g else "-",
                     ", ".join(f"{n}.g {s}" for n, s in r.param_grads) or "-"))
    widths = [max(len(str(c)) for c in col) for col in zip(header, *body)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(b) for b in body])
