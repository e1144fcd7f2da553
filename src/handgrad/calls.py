"""One record per call of a Module, and the backward of a Module written as a composition of others.

Every call `m(*args)` makes a `Call`: the inputs, the output and whatever the forward set on `m`
(`self.mask = ...`, `self.xhat = ...`: the call's context, as torch's autograd.Function has `ctx`).
A module called three times in one forward has three records; the backward of each call first puts
that call's context back on the module, then runs its hand-written `bwd`. So a layer reads
`self.out`, `self.args` and what it saved in forward as if it had been called once, and is correct
under reuse without knowing about it.

Calls made while another call's forward runs are that call's `events`, in order. A Module that
writes no `bwd` (a model class whose forward calls its layers, in a loop or not) is differentiated
by replaying its events backward: each sub-call's backward in reverse order, parameter gradients
adding up over calls. That is exact only if every tensor its forward passes on came from a
sub-module or is a view of one (`x[:, t]`, `h.view(...)`). So while such a forward runs, every
torch operation on a tensor of the computation is watched: a view is recorded and differentiated
by writing the gradient back into the window it came from; any other operation (`x * 2`,
`torch.cat`) marks the call as not replayable, and its backward raises a one-line error naming
the operation instead of silently dropping that path.
"""

from __future__ import annotations

import itertools
import weakref
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode

if TYPE_CHECKING:
    from .module import Module


class Freed:
    """Stands in, inside `lean()`, for an activation whose values no backward reads (see Sequential).

    It keeps what backward may still use, the shape, dtype, device and the gradient in `.g`, and drops
    the reference to the tensor, so its memory goes as soon as nothing else (a view, the caller) holds it.
    """

    __slots__ = ("shape", "dtype", "device", "g", "_g_pass", "_stride", "_offset")

    def __init__(self, t: Tensor) -> None:
        self.shape, self.dtype, self.device, self.g = t.shape, t.dtype, t.device, getattr(t, "g", None)
        self._g_pass = getattr(t, "_g_pass", None)
        self._stride, self._offset = t.stride(), t.storage_offset()  # where it sat, for the views of it

    def stride(self) -> tuple[int, ...]:
        return self._stride

    def storage_offset(self) -> int:
        return self._offset

    def size(self, dim: int | None = None) -> Any:
        return self.shape if dim is None else self.shape[dim]

    def dim(self) -> int:
        return len(self.shape)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def numel(self) -> int:
        return self.shape.numel()

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(f"'{name}' of a tensor freed by lean(): a backward read the values of a tensor that "
                             "its layer declared unread (backward_reads_input/backward_reads_output)")


def is_tensor(t: object) -> bool:
    return isinstance(t, (Tensor, Freed))


class View:
    """`out` is a view (or a copy, `copy=True`) of `src` made in a composite's forward; backward sends
    out.g into the window of src.g it came from."""

    __slots__ = ("src", "out", "copy")

    def __init__(self, src: Tensor, out: Tensor, copy: bool = False) -> None:
        self.src, self.out, self.copy = src, out, copy

    def grad(self) -> Tensor:
        """dSrc = dOut written where out's elements sit in src (summed where a view repeats an element)."""
        g, src, out = self.out.g, self.src, self.out
        if self.copy:
            return g.reshape(src.shape)
        if not _distinct_elements(src):
            raise RuntimeError(f"a view of a tensor whose elements share memory (shape {list(src.shape)}, strides "
                               f"{list(src.stride())}) cannot be differentiated by replay; write the module's bwd")
        # positions in src's memory, relative to src's first element; out reads src's memory at its own strides
        if out.numel() == 0:
            return torch.zeros(src.shape, dtype=g.dtype, device=g.device)
        span = sum((s - 1) * st for s, st in zip(src.shape, src.stride())) + 1 if src.numel() else 1
        offset = out.storage_offset() - src.storage_offset()
        where = torch.arange(span, device=g.device).as_strided(out.shape, out.stride(), offset)
        flat = torch.zeros(span, dtype=g.dtype, device=g.device)
        flat.index_add_(0, where.reshape(-1), g.reshape(-1))
        return flat.as_strided(src.shape, src.stride(), 0).clone()


def _distinct_elements(t: Tensor) -> bool:
    """True when no two elements of t share memory (dims sorted by stride, each stride spans the ones below)."""
    extent = 1
    for stride, size in sorted((st, s) for s, st in zip(t.shape, t.stride()) if s > 1):
        if stride < extent:
            return False
        extent = stride * (size - 1) + extent
    return True


class Call:
    """One call of `module`: inputs, output, the attributes its forward set, and the calls made inside it."""

    __slots__ = ("module", "args", "kwargs", "out", "saved", "events", "done", "private", "opaque", "watched",
                 "tainted", "serial", "__weakref__")
    count = itertools.count()

    def __init__(self, module: Module, args: tuple) -> None:
        self.module, self.args, self.out = module, args, None
        self.kwargs: dict[str, Any] = {}
        self.serial = next(Call.count)  # calls are numbered in the order they start
        self.saved: dict[str, Any] = {}  # attributes set on the module by this call's forward
        self.events: list[Call | View] = []  # sub-calls (and, in a composite, views) in forward order
        self.done = False  # backward has run
        self.private = False  # the output is read by one later call only and aliases nothing (lean may reuse it)
        self.opaque = ""  # a composite forward used a torch operation its replay cannot differentiate
        self.watched: dict[int, Tensor] | None = None  # tensors of a composite's computation, while it runs
        # results of torch operations the replay cannot follow, while it runs: harmless until one reaches a
        # sub-call or the output (a logged statistic is fine), then the call is opaque
        self.tainted: dict[int, tuple[Tensor, str]] | None = None

    def restore(self) -> None:
        """Put this call's context back on its module (what `bwd` reads as self.out, self.args, self.mask, ...)."""
        m = self.module
        d = m.__dict__
        d.update(self.saved)
        d["args"], d["out"], d["out_private"] = self.args, self.out, self.private

    def reopen(self) -> None:
        """Allow another backward of this call: clear the done flags and the `.g` of every non-parameter
        tensor in its record and its sub-calls' (for several vector-Jacobian products of one forward)."""
        from .module import Parameter

        self.done = False
        for t in (*self.args, self.out):
            if is_tensor(t) and not isinstance(t, Parameter) and getattr(t, "g", None) is not None:
                t.g = None
        for ev in self.events:
            if isinstance(ev, Call):
                ev.reopen()
            elif getattr(ev.out, "g", None) is not None:
                ev.out.g = None

    def replace(self, t: Tensor, stand_in: Freed) -> None:
        """Replace tensor `t` by `stand_in` in this record and in the sub-calls that hold it."""
        if self.out is t:
            self.out = stand_in
        if any(a is t for a in self.args):
            self.args = tuple(stand_in if a is t else a for a in self.args)
        m = self.module
        if m.__dict__.get("_last") is self:
            m.__dict__["args"], m.__dict__["out"] = self.args, self.out
        for ev in self.events:
            if isinstance(ev, Call):
                if ev.out is t or any(a is t for a in ev.args):
                    ev.replace(t, stand_in)
            else:
                if ev.src is t:
                    ev.src = stand_in
                if ev.out is t:
                    ev.out = stand_in


# ----------------------------------------------------------------------------------------- the call stack

STACK: list[Call] = []  # calls whose forward is running, innermost last
SCOPES: list[Call] = []  # calls whose backward is running: `m.backward()` inside one finds m's sub-call there


def parameter_ids(module: Module) -> set[int]:
    return {id(p) for p in module._all_parameters()}


# What a composite's forward may do with a tensor of its computation besides passing it to modules.
COPIES = {"clone", "contiguous", "reshape", "flatten", "reshape_as", "view_as", "squeeze", "unsqueeze"}
GRADIENT_STOPS = {"detach", "data"}  # torch's own meaning: no gradient flows back through them
NOT_DATA = {"requires_grad_", "retain_grad", "share_memory_"}  # in place, but on flags, not on the values
ESCAPES = {"numpy", "tolist", "__array__", "__dlpack__"}  # the values leave torch: any use afterwards is untracked


def _name(func: Any) -> str:
    if getattr(func, "__name__", "") == "__get__":  # a property such as x.shape or x.data
        return getattr(getattr(func, "__self__", None), "__name__", "__get__")
    return getattr(func, "__name__", str(func))


def _tensors(obj: Any) -> list[Tensor]:
    if isinstance(obj, Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for o in obj for t in _tensors(o)]
    if isinstance(obj, dict):
        return [t for o in obj.values() for t in _tensors(o)]
    return []


def _shares_memory(a: Tensor, b: Tensor) -> bool:
    return a.device == b.device and a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr() and \
        a.untyped_storage().nbytes() > 0


class Watch(TorchFunctionMode):
    """Watches the torch operations of composite forwards (the innermost running call's, when it is one)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        kwargs = kwargs or {}
        call = STACK[-1] if STACK else None
        if call is None or call.watched is None:  # a layer's own forward: not ours to watch
            return func(*args, **kwargs)
        watched, tainted = call.watched, call.tainted
        tensors = _tensors(args) + _tensors(kwargs)
        inputs = [t for t in tensors if id(t) in watched]
        from_tainted = [tainted[id(t)][1] for t in tensors if id(t) in tainted]
        result = func(*args, **kwargs)
        if not inputs and not from_tainted:
            return result
        name = _name(func)
        if inputs and name in ESCAPES:
            call.opaque = call.opaque or f"x.{name}()"
            return result
        if inputs and name == "__setitem__":  # h[i] = v writes into a tensor of the computation (returns None)
            call.opaque = call.opaque or "an assignment into a slice (x[...] = v)"
            return result
        outputs = _tensors(result)
        in_place = (name.endswith("_") and not name.endswith("__") or "out" in kwargs) and name not in NOT_DATA
        for r in outputs:
            if any(r is t for t in inputs):
                if in_place:
                    call.opaque = call.opaque or f"the in-place {name}"
                continue
            if not (r.is_floating_point() or r.is_complex()) or name in GRADIENT_STOPS:
                continue  # integer or boolean results (comparisons, argmax) and detach carry no gradient
            if from_tainted or not inputs:
                tainted[id(r)] = (r, from_tainted[0])
                continue
            src = inputs[0]
            if _shares_memory(r, src) and r.dtype == src.dtype:
                record = View(src, r)
            elif name in COPIES and len(inputs) == 1 and r.numel() == src.numel() and r.dtype == src.dtype:
                record = View(src, r, copy=True)
            else:
                tainted[id(r)] = (r, f"torch's {name}")
                continue
            watched[id(r)] = r
            call.events.append(record)
        return result


def check_tainted(call: Call, tensors: list[Tensor]) -> None:
    """A tensor made by an operation the replay cannot follow reaches a sub-call or the output: opaque."""
    if call.tainted:
        for t in tensors:
            if id(t) in call.tainted:
                call.opaque = call.opaque or call.tainted[id(t)][1]
                return


WATCH = Watch()


def watching(call: Call) -> Any:
    """Context for a composite's forward: its inputs and every parameter under it are watched from the start
    (the mode is entered once, by the outermost watched call)."""
    call.watched = {id(a): a for a in call.args if isinstance(a, Tensor)}
    call.tainted = {}
    for p in call.module._all_parameters():
        call.watched[id(p)] = p
    return _Enter()


class _Enter:
    depth = 0

    def __enter__(self) -> None:
        if _Enter.depth == 0:
            WATCH.__enter__()
        _Enter.depth += 1

    def __exit__(self, *exc: object) -> None:
        _Enter.depth -= 1
        if _Enter.depth == 0:
            WATCH.__exit__(*exc)


def note_output(parent: Call, child: Call) -> None:
    """A sub-call finished inside `parent`'s forward: its output is part of the parent's computation, and of every
    watched call around it, as is what it saved (a composite may read a nested layer's `.out` and apply an op
    to it: that must be seen)."""
    parent.events.append(child)
    for call in STACK:
        check_tainted(call, _tensors(child.args))
        if call.watched is not None and child.kwargs:
            for key, t in child.kwargs.items():
                if isinstance(t, Tensor) and (id(t) in call.watched or id(t) in (call.tainted or {})) and \
                        (t.is_floating_point() or t.is_complex()):
                    call.opaque = call.opaque or (f"!passes a tensor of its computation by keyword ({key}=) to "
                                                  f"{type(child.module).__name__}, whose backward sends gradients "
                                                  "to positional inputs only")
        if call.watched is not None:
            for t in _tensors(child.out) + _tensors(list(child.saved.values())):
                call.watched[id(t)] = t


def pending(module: Module, with_grad: bool = False) -> Call | None:
    """The call of `module` that `module.backward()` means: inside a running backward, the latest of its
    sub-calls not yet done; else (with_grad: the latest whose output has a `.g`, if any) the module's latest
    call still alive and not done."""
    if SCOPES:
        for ev in reversed(SCOPES[-1].events):
            if isinstance(ev, Call) and ev.module is module and not ev.done:
                return ev
    refs = module.__dict__.get("_pending", [])
    if with_grad:  # backward() without a gradient means the call whose output got one (a later call may be a probe)
        for ref in reversed(refs):
            call = ref()
            if call is not None and not call.done and getattr(call.out, "g", None) is not None:
                return call
    while refs:
        call = refs[-1]()
        if call is not None and not call.done:
            return call
        refs.pop()
    return None


def remember(module: Module, call: Call) -> None:
    """Keep a weak reference to a new call (alive while its parent call, the module's last call or another
    holder keeps it), dropping finished or dead ones once the list has grown."""
    refs = module.__dict__.setdefault("_pending", [])
    refs.append(weakref.ref(call))
    if len(refs) > 2 * module.__dict__.get("_pending_kept", 8):
        refs[:] = [r for r in refs if (c := r()) is not None and not c.done]
        module.__dict__["_pending_kept"] = max(8, len(refs))
