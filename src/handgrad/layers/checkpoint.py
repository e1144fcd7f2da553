"""Recompute: activation checkpointing by hand, as torch.utils.checkpoint does it under autograd.

`Recompute(body)` runs `body` in forward and keeps only its input: everything body's layers saved for their
backward is let go at once. Its backward runs body's forward again on the same input (the same random numbers,
running statistics left as they were), then body's backward on the fresh record. Memory: one body's activations
at a time instead of all of them, for one more forward of body in every backward. A GPT with each block wrapped
keeps four block inputs instead of four blocks' activations.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import calls
from ..module import Module, run_backward


def _forget(call: calls.Call) -> None:
    """Let go of everything `call` and its sub-calls recorded for backward (inputs, outputs, saved attributes,
    the module attributes that show them), so that only what the caller holds stays alive."""
    for ev in call.events:
        if isinstance(ev, calls.Call):
            _forget(ev)
    d = call.module.__dict__
    for key in call.saved:
        d.pop(key, None)
    call.saved.clear()
    call.events.clear()
    call.args, call.out = (), None
    d["args"], d["out"] = (), None
    d["_let_go"] = call  # for the one-line error of a backward asked of it (see Module.backward)
    call.done = True  # nothing is left to run backward on: a stray backward of it raises


class Recompute(Module):
    """Y = body(X), keeping X only; backward: Y = body(X) again, then body's backward from dY."""

    def __init__(self, body: Module) -> None:
        super().__init__()
        if not isinstance(body, Module):
            raise TypeError(f"Recompute expects a handgrad Module as its body, got {type(body).__name__}")
        self.body = body

    def backward_reads_output(self) -> bool:
        return False

    def forward(self, x: Tensor) -> Tensor:
        self.rng = torch.get_rng_state()  # dropout draws again the same masks in backward
        self.cuda_rng = torch.cuda.get_rng_state(x.device) if x.is_cuda else None
        out = self.body(x)
        body_call = self.body.__dict__["_last"]
        _forget(body_call)
        if calls.STACK:  # this call's own record: no sub-calls to keep (its backward records them afresh)
            calls.STACK[-1].events.clear()
        return out

    def bwd(self, dy: Tensor, x: Tensor) -> Tensor | None:
        """Y = body(X) recomputed, then dX = body's backward from dY (its parameters' .g added to as always)."""
        buffers = [(m, name, getattr(m, name).clone()) for m in self.body.modules() for name in m.buffer_names()
                   if isinstance(getattr(m, name, None), Tensor)]
        xr = x.view_as(x)  # a tensor object of its own: body's backward fills xr.g, returned as this call's dX
        with torch.random.fork_rng(devices=[x.device] if x.is_cuda else []):
            torch.set_rng_state(self.rng)
            if self.cuda_rng is not None:
                torch.cuda.set_rng_state(self.cuda_rng, x.device)
            self.body(xr)
        for m, name, value in buffers:  # running statistics as the first forward left them
            getattr(m, name).copy_(value)
        run_backward(self.body.__dict__["_last"], dy, self.needs_input_grad)
        return getattr(xr, "g", None) if self.needs_input_grad else None

    def extra_repr(self) -> str:
        return ""
