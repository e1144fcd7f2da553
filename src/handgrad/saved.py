"""What a call keeps for its backward, two ways: handgrad's record and torch autograd's saved tensors.

handgrad: the inputs or output the call's backward reads (as its module's backward_reads_input /
backward_reads_output declare) and the tensors its forward saved on the module: what `lean()` keeps.
autograd: every tensor `saved_tensors_hooks` sees packed while the layer's torch.nn twin runs (or the
layer's own forward, with autograd, where it has no twin). Bytes are storage bytes, each storage once: a
view keeps its whole storage alive.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import calls
from .calls import Call
from .losses import CrossEntropyLoss, MSELoss, NLLLoss
from .module import Module


@dataclass
class Kept:
    """Bytes kept for a backward, each storage once: `activations` (made by this batch) and `weights` (the
    model's parameters and buffers, which exist anyway: autograd references them, handgrad's backward reads
    them from the module)."""

    storages: dict[Hashable, tuple[int, bool]] = field(default_factory=dict)  # storage -> (bytes, a weight's)

    @classmethod
    def of(cls, tensors: Iterable[Tensor], weights: Iterable[Tensor]) -> Kept:
        keys = {storage_key(w) for w in weights}
        kept = cls()
        for t in tensors:
            if t.untyped_storage().nbytes():
                kept.storages[storage_key(t)] = (t.untyped_storage().nbytes(), storage_key(t) in keys)
        return kept

    @classmethod
    def union(cls, parts: Iterable[Kept]) -> Kept:
        """What several calls keep together: a storage two of them keep counts once."""
        kept = cls()
        for part in parts:
            kept.storages.update(part.storages)
        return kept

    @classmethod
    def summed(cls, parts: Iterable[Kept]) -> Kept:
        """The sum of parts measured apart (each on its own copies, so no storage is shared)."""
        kept = cls()
        for i, part in enumerate(parts):
            kept.storages.update({(i, key): v for key, v in part.storages.items()})
        return kept

    @property
    def activations(self) -> int:
        return sum(n for n, weight in self.storages.values() if not weight)

    @property
    def weights(self) -> int:
        return sum(n for n, weight in self.storages.values() if weight)


def storage_key(t: Tensor) -> tuple[torch.device, int]:
    return t.device, t.untyped_storage().data_ptr()


def handgrad_keeps(call: Call) -> list[Tensor]:
    """The inputs and output this call's backward reads (a layer's own; a composite's sub-calls are nodes of
    their own) and every tensor its forward saved on the module."""
    m = call.module
    call.restore()  # backward_reads_input may depend on what this call saved (BatchNorm's xhat)
    kept = []
    if not has_subcalls(call):
        if m.backward_reads_input():
            kept += calls._tensors(call.args)
        if m.backward_reads_output():
            kept += calls._tensors(call.out)
    return kept + calls._tensors(list(call.saved.values()))


def autograd_saves(call: Call, log: list[Call]) -> Kept:
    """What torch autograd saves for this call's computation, on copies of its inputs: the torch.nn twin of a
    layer, else the layer's own forward run with autograd (a composite's: its own operations only)."""
    m = call.module
    args = [_fresh(a) if isinstance(a, Tensor) else a for a in call.args]
    composite = has_subcalls(call)
    twin = None if composite else _twin(m)
    if twin is None:
        # a copy (the forward may update buffers); the recorded activations stay shared, not copied
        memo: dict[int, Any] = {id(c): c for c in log}
        memo |= {id(t): t for c in log for t in calls._tensors([c.args, c.out, list(c.saved.values())])}
        twin = copy.deepcopy(m, memo)
        for p in twin.parameters():
            p.requires_grad_(True)
        run: Callable[[], Any] = lambda: twin.forward(*args, **call.kwargs)  # noqa: E731
        state = [*twin.parameters(), *(b for _, b in twin.named_buffers())]
    else:
        run = lambda: twin(*args, **call.kwargs)  # noqa: E731
        state = [*twin.parameters(), *twin.buffers()] if isinstance(twin, nn.Module) else []
    return Kept.of(_saved_by_autograd(run, own_only=composite), state)


def _fresh(t: Tensor) -> Tensor:
    """A leaf copy of t for autograd, on a copy of t's whole storage: a view keeps all of it alive, in
    autograd's graph as in handgrad's record."""
    storage = t.untyped_storage().clone()
    copied = torch.empty(0, dtype=t.dtype, device=t.device).set_(storage, t.storage_offset(), t.size(), t.stride())
    return copied.requires_grad_(t.is_floating_point())


def _saved_by_autograd(run: Callable[[], Any], own_only: bool = False) -> list[Tensor]:
    """Every tensor autograd saves while `run` runs (own_only: not inside a handgrad module call)."""
    saved: list[Tensor] = []

    def pack(t: Tensor) -> Tensor:
        if not (own_only and calls.STACK):
            saved.append(t)
        return t

    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        run()
    return saved


def _mse_twin(reduction: str) -> Callable[[Tensor, Tensor], Tensor]:
    def mse(output: Tensor, target: Tensor) -> Tensor:  # handgrad's shapes: [N, 1] against [N], int targets
        if output.dim() == target.dim() + 1 and output.shape[-1] == 1:
            output = output.squeeze(-1)
        return F.mse_loss(output, target.to(output.dtype), reduction=reduction)
    return mse


LOSS_TWINS: dict[type, Callable[[Any], Any]] = {
    CrossEntropyLoss: lambda m: nn.CrossEntropyLoss(reduction=m.reduction),
    NLLLoss: lambda m: nn.NLLLoss(reduction=m.reduction),
    MSELoss: lambda m: _mse_twin(m.reduction),
}


def _twin(m: Module) -> Any:
    """The torch.nn twin of a layer or a loss (None where there is none)."""
    from .interop import to_torch

    if type(m) in LOSS_TWINS:
        return LOSS_TWINS[type(m)](m)
    try:
        return to_torch(m)
    except TypeError:
        return None


def autograd_total(model: Module, x: Tensor, y: Tensor | None, loss_fn: Module | None) -> Kept | None:
    """What autograd saves for the whole forward of the model's torch.nn twin (and the loss), each storage once;
    None when some layer has no twin."""
    twin, loss_twin = _twin(model), _twin(loss_fn) if loss_fn is not None else None
    if twin is None or (loss_fn is not None and loss_twin is None):
        return None
    xa = _fresh(x)
    saved = _saved_by_autograd(lambda: loss_twin(twin(xa), y) if loss_twin is not None else twin(xa))
    return Kept.of(saved, [*twin.parameters(), *twin.buffers()])




def has_subcalls(call: Call) -> bool:
    return any(isinstance(ev, Call) for ev in call.events)
