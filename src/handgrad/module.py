"""Module, Parameter and Sequential: the seeds' layer base class, grown up.

A Module's `__call__` runs `forward` and keeps what `backward` needs: the inputs
in `self.args` and the output in `self.out`. Each layer writes its backward by
hand in `bwd(dout, *args)`, beside its forward.

How gradients flow (the seeds' `.g` convention, made to add up):

- A tensor's `.g` is the sum of the gradients that its consumers' backward calls
  sent back. `Module.backward` adds what `bwd` returns into the `.g` of each
  input, so a tensor consumed twice (fan-out) gets the sum of both paths.
- `backward(grad)` records `grad` as `self.out.g`; `backward()` with no argument
  reads `self.out.g`, set by the next layer's backward (or, for a scalar output
  such as a loss, starts from 1).
- A parameter's `.g` accumulates across backward calls until `zero_grad()`, which
  sets it to None (as torch's `zero_grad(set_to_none=True)`); the next backward
  writes into the parameter's own gradient buffer again, so no step allocates it.
- A `bwd` that returns None has written the `.g` of its inputs itself (as the
  seeds' `bwd` did, and as containers such as `Sequential` do through their
  children).
- Backward runs once per forward: a second `backward` before the next forward
  raises RuntimeError instead of silently counting the gradients twice.
- Inside `lean()`, each module lets go of what it saved (inputs, output, the
  output's `.g`) as soon as its backward is done, and layers may overwrite their
  own saved output with their input gradient: activations are freed layer by
  layer during backward, as autograd frees its graph. Outside it (the default),
  everything stays for inspection until the next forward.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor


class Parameter(torch.nn.Parameter):
    """A trainable tensor of a handgrad Module.

    Never tracked by autograd (`requires_grad` is False); its gradient lives in
    `.g`, which backward creates and accumulates into, and `zero_grad` clears.
    """

    g: Tensor | None = None

    def __new__(cls, data: Tensor, requires_grad: bool = False) -> "Parameter":
        # `requires_grad` is accepted only so that copy.deepcopy works.
        return super().__new__(cls, data.detach(), requires_grad=False)

    def __reduce_ex__(self, proto: Any) -> Any:
        return (Parameter, (self.data,))

    def __repr__(self) -> str:
        return "Parameter containing:\n" + repr(self.data)

    def grad_buffer(self) -> Tensor:
        """The parameter's own gradient storage, reused from step to step (`.g` is it, or None)."""
        buf = self.__dict__.get("_gbuf")
        if buf is None or buf.shape != self.shape or buf.dtype != self.dtype or buf.device != self.device:
            buf = self._gbuf = torch.empty_like(self.data)
        return buf


def accumulate_mm(p: Parameter, a: Tensor, b: Tensor) -> None:
    """p.g += a @ b, written straight into the parameter's gradient buffer (no temporary)."""
    if p.g is None:
        p.g = torch.mm(a, b, out=p.grad_buffer())
    else:
        p.g.addmm_(a, b)


def accumulate_sum(p: Parameter, t: Tensor, dims: int | tuple[int, ...]) -> None:
    """p.g += t.sum(dims), written straight into the parameter's gradient buffer."""
    if p.g is None:
        p.g = torch.sum(t, dims, out=p.grad_buffer())
    else:
        p.g.add_(t.sum(dims))


def add_grad(t: Tensor, g: Tensor) -> None:
    """Add `g` into `t.g`: in place into a parameter's own buffer, out of place otherwise.

    A parameter owns its `.g` storage (so `zero_grad` can clear it in place and an
    optimizer can keep a reference). Any other tensor's `.g` may alias a gradient
    that another tensor holds too, so it is never modified in place.
    """
    current = getattr(t, "g", None)
    if isinstance(t, Parameter):
        if current is None:
            # a mis-shaped gradient (a bug in someone's bwd) is kept as it came, for the checker to name
            t.g = t.grad_buffer().copy_(g) if g.shape == t.shape else g.detach().clone()
        else:
            current.add_(g)
    elif current is None:
        t.g = g
    else:
        t.g = current + g


@contextmanager
def lean(enabled: bool = True) -> Iterator[None]:
    """Backward frees each module's saved tensors once it is done with them (see the module docstring).

    For training, where nothing reads activations or intermediate gradients after backward;
    parameters' `.g` are kept as always. `lean(False)` turns it off inside an enclosing `lean()`.
    """
    previous = Module.lean
    Module.lean = enabled
    try:
        yield
    finally:
        Module.lean = previous


class Module:
    """Base class of every layer, loss and model.

    Subclasses implement `forward(*args)` and the hand-written `bwd(dout, *args)`,
    which returns the gradient of the input (a tuple of them when `forward` takes
    several differentiable inputs; inputs left out, such as targets, get none) and
    adds into its parameters' `.g` with `add_grad`. When `self.needs_input_grad` is
    False, `bwd` may skip the input gradient and return None.
    """

    training: bool = True
    lean: bool = False  # True inside handgrad.lean(): release saved tensors after backward
    _call_log: list[list[Module]] = []  # filled only inside handgrad.trace.recording()
    _post_backward_hooks: list = []  # called with each module as its backward finishes (gradient all-reduce)

    def __init__(self) -> None:
        self.training = True

    # ----------------------------------------------------------------- calling
    def __call__(self, *args: Any) -> Any:
        out = self.forward(*args)
        if any(out is a for a in args):
            # A distinct tensor object, so that out.g and the input's .g never mix.
            out = out.view_as(out)
        self.args = args
        self.out = out
        self._backward_done = False
        if Module._call_log:
            for log in Module._call_log:
                log.append(self)
        return out

    def forward(self, *args: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} has no forward")

    def bwd(self, dout: Tensor, *args: Any) -> Tensor | tuple[Tensor | None, ...] | None:
        raise NotImplementedError(f"{type(self).__name__} has no hand-written backward (bwd)")

    def backward(self, grad: Tensor | None = None, *, needs_input_grad: bool = True) -> Tensor | None:
        """Run the hand-written backward of the last call.

        grad: gradient of the loss with respect to `self.out`; defaults to `self.out.g`,
        or to 1 when the output is a scalar with no `.g` yet (a loss).
        needs_input_grad: False skips the input gradient where the layer can (the
        first layer of a network does not need the gradient of the data).
        Returns the accumulated gradient of the first input (`self.args[0].g`).
        """
        if self.__dict__.get("_backward_done", True):
            if not hasattr(self, "out"):
                raise RuntimeError(f"{type(self).__name__}.backward called before any forward")
            raise RuntimeError(
                f"{type(self).__name__}.backward called twice for one forward; run the forward "
                "again first (a second backward would count every gradient twice)"
            )
        out = self.out
        if grad is None:
            grad = getattr(out, "g", None)
            if grad is None:
                if out.numel() != 1:
                    raise RuntimeError(
                        f"{type(self).__name__}.backward() needs the gradient of its output "
                        f"(shape {list(out.shape)}): pass it, or run the next layer's backward first"
                    )
                grad = torch.ones_like(out)
        elif tuple(grad.shape) != tuple(out.shape):
            raise ValueError(
                f"{type(self).__name__}.backward: expected a gradient of shape {list(out.shape)} "
                f"(the output's), got {list(grad.shape)}"
            )
        out.g = grad
        self.needs_input_grad = needs_input_grad
        self._backward_done = True
        grads = self.bwd(grad, *self.args)
        if isinstance(grads, Tensor):
            grads = (grads,)
        if grads is not None and needs_input_grad:
            for x, g in zip(self.args, grads):
                if g is not None and isinstance(x, Tensor):
                    add_grad(x, g)
        for hook in Module._post_backward_hooks:
            hook(self)
        first = self.args[0] if self.args else None
        first_g = getattr(first, "g", None) if isinstance(first, Tensor) else None
        if Module.lean:
            out.g = None
            self.args = ()
            self.out = None
        return first_g

    # What the hand-written backward reads besides dY (shapes aside). Inside lean(), Sequential frees the
    # memory of a tensor passed between two layers as soon as neither reads its values (a layer's
    # `keep_output = True` keeps its output, for callers that read it after the forward).
    def backward_reads_input(self) -> bool:
        return True

    def backward_reads_output(self) -> bool:
        return True

    def keeps_output(self) -> bool:
        """True when someone reads this module's output after the forward (`keep_output = True`)."""
        return getattr(self, "keep_output", False)

    def reopen_backward(self) -> None:
        """Allow another backward of the last forward: clear the `.g` of every tensor this module and its
        sub-modules saw (inputs, outputs, intermediates; not parameters) and the once-per-forward flag.
        For callers that need several vector-Jacobian products of one forward (torch.autograd.gradcheck)."""
        for m in self.modules():
            m._backward_done = False
            for t in (*getattr(m, "args", ()), getattr(m, "out", None)):
                if isinstance(t, Tensor) and getattr(t, "g", None) is not None:
                    t.g = None

    # -------------------------------------------------------------- structure
    def named_children(self) -> Iterator[tuple[str, Module]]:
        """Sub-modules held as attributes or in lists/tuples (named `name.i`, as torch's ModuleList)."""
        for name, value in vars(self).items():
            if name in ("args", "out"):
                continue
            if isinstance(value, Module):
                yield name, value
            elif isinstance(value, (list, tuple)) and value and all(isinstance(v, Module) for v in value):
                for i, v in enumerate(value):
                    yield f"{name}.{i}", v

    def children(self) -> Iterator[Module]:
        for _, m in self.named_children():
            yield m

    def modules(self) -> Iterator[Module]:
        yield self
        for child in self.children():
            yield from child.modules()

    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, Module]]:
        yield prefix, self
        for name, child in self.named_children():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def _own_parameters(self) -> Iterator[tuple[str, Parameter]]:
        for name, value in vars(self).items():
            if isinstance(value, Parameter):
                yield name, value

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Parameter]]:
        """(name, parameter) pairs, named as torch.nn names them (`0.weight`, `layers.1.bias`)."""
        for name, module in self.named_modules(prefix):
            for pname, p in module._own_parameters():
                yield (f"{name}.{pname}" if name else pname), p

    def parameters(self) -> list[Parameter]:
        return [p for _, p in self.named_parameters()]

    def _all_parameters(self) -> Iterator[Parameter]:
        for m in self.modules():
            for _, p in m._own_parameters():
                yield p

    def buffer_names(self) -> tuple[str, ...]:
        """Names of this module's own non-trainable state saved in state_dict (none by default)."""
        return ()

    def named_buffers(self, prefix: str = "") -> Iterator[tuple[str, Tensor]]:
        for name, module in self.named_modules(prefix):
            for bname in module.buffer_names():
                yield (f"{name}.{bname}" if name else bname), getattr(module, bname)

    # ------------------------------------------------------------------ state
    def zero_grad(self) -> None:
        """Set every parameter's `.g` to None (its buffer is kept, and the next backward writes into it)."""
        for p in self.parameters():
            p.g = None

    def train(self, mode: bool = True) -> Module:
        for m in self.modules():
            m.training = mode
        return self

    def eval(self) -> Module:
        return self.train(False)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Module:
        """Move (or cast) every parameter and buffer in place; returns self.

        Parameters keep their identity (an optimizer holding them still updates the
        model); their `.g` is dropped, since it no longer matches.
        """
        for m in self.modules():
            for _, p in m._own_parameters():
                p.data = p.data.to(device=device, dtype=dtype)
                p.g = None
                p.__dict__.pop("_gbuf", None)
            for bname in m.buffer_names():
                b = getattr(m, bname)
                b_dtype = dtype if (dtype is not None and b.is_floating_point()) else None
                setattr(m, bname, b.to(device=device, dtype=b_dtype))
        return self

    def double(self) -> Module:
        return self.to(dtype=torch.float64)

    def float(self) -> Module:
        return self.to(dtype=torch.float32)

    # Subclasses whose layout differs from torch.nn's convert here (see Linear).
    def _export(self, name: str, t: Tensor) -> Tensor:
        return t

    def _import(self, name: str, t: Tensor) -> Tensor:
        return t

    def state_dict(self) -> dict[str, Tensor]:
        """Parameters and buffers in torch.nn's names and layouts, so torch modules load them."""
        state: dict[str, Tensor] = {}
        for prefix, m in self.named_modules():
            own = [n for n, _ in m._own_parameters()] + list(m.buffer_names())
            for name in own:
                key = f"{prefix}.{name}" if prefix else name
                state[key] = m._export(name, getattr(m, name).detach()).clone()
        return state

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Load a state dict from handgrad or from the same model in torch.nn.

        Raises ValueError naming the first missing, unexpected or mis-shaped tensor.
        """
        targets: dict[str, tuple[Module, str]] = {}
        for prefix, m in self.named_modules():
            for name in [n for n, _ in m._own_parameters()] + list(m.buffer_names()):
                targets[f"{prefix}.{name}" if prefix else name] = (m, name)
        missing = [k for k in targets if k not in state]
        unexpected = [k for k in state if k not in targets]
        if missing or unexpected:
            raise ValueError(
                f"state dict does not fit {type(self).__name__}: missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
        converted: dict[str, Tensor] = {}
        for key, (m, name) in targets.items():
            current = getattr(m, name)
            value = m._import(name, torch.as_tensor(state[key]))
            if tuple(value.shape) != tuple(current.shape):
                raise ValueError(
                    f"state dict tensor '{key}': expected shape {list(m._export(name, current).shape)}, "
                    f"got {list(state[key].shape)}"
                )
            converted[key] = value
        for key, (m, name) in targets.items():  # only after every tensor fitted
            current = getattr(m, name)
            with torch.no_grad():
                current.copy_(converted[key].to(dtype=current.dtype, device=current.device))

    # ------------------------------------------------------------------- repr
    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        children = list(self.named_children())
        if not children:
            return f"{type(self).__name__}({self.extra_repr()})"
        lines = [f"  ({name}): " + repr(child).replace("\n", "\n  ") for name, child in children]
        return f"{type(self).__name__}(\n" + "\n".join(lines) + "\n)"


class Sequential(Module):
    """A chain of modules: forward in order, backward in reverse, each reading `.g` of its output."""

    def __init__(self, *layers: Module) -> None:
        super().__init__()
        for i, layer in enumerate(layers):
            if not isinstance(layer, Module):
                raise TypeError(f"Sequential expects handgrad Modules, got {type(layer).__name__} at position {i}")
        self.layers = list(layers)

    def named_children(self) -> Iterator[tuple[str, Module]]:
        for i, layer in enumerate(self.layers):
            yield str(i), layer

    def __getitem__(self, i: int) -> Module:
        return self.layers[i]

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self) -> Iterator[Module]:
        return iter(self.layers)

    def backward_reads_input(self) -> bool:
        return self.layers[0].backward_reads_input() if self.layers else False

    def backward_reads_output(self) -> bool:
        return self.layers[-1].backward_reads_output() if self.layers else False

    def keeps_output(self) -> bool:
        return getattr(self, "keep_output", False) or bool(self.layers) and self.layers[-1].keeps_output()

    def forward(self, x: Tensor) -> Tensor:
        prev = None
        for layer in self.layers:
            out = layer(x)
            if Module.lean and prev is not None and not prev.backward_reads_output() and \
                    not layer.backward_reads_input() and not prev.keeps_output():
                _free_private(x, prev)
            prev, x = layer, out
        return x

    def bwd(self, dout: Tensor, x: Tensor) -> Tensor | None:
        """dX = bwd_1(... bwd_n(dY)): each layer reads its output's .g and adds into its input's .g."""
        last = len(self.layers) - 1
        if last < 0:
            return dout
        # Layer i must pass a gradient down only if something below it learns, or the caller wants dX;
        # layers below the first that learns have nothing to do then and are skipped. The scan stops at
        # the first layer with parameters, usually layer 0 or 1, so this costs next to nothing per step.
        first = next((i for i, layer in enumerate(self.layers) if any(True for _ in layer._all_parameters())),
                     last + 1)
        for i in range(last, -1, -1):
            needs_input_grad = self.needs_input_grad or i > first
            if i >= first or needs_input_grad:
                self.layers[i].backward(dout if i == last else None, needs_input_grad=needs_input_grad)
        return None


def _free_private(t: Tensor, producer: Module) -> None:
    """Free `t`'s memory (its shape stays, for the gradient it will carry) unless it may share storage:
    a view, or an output that is (a view of) the producer's input."""
    if t._base is not None:
        return
    ptr = t.untyped_storage().data_ptr()
    if any(isinstance(a, Tensor) and a.untyped_storage().data_ptr() == ptr for a in producer.args):
        return
    t.untyped_storage().resize_(0)


class WithLoss(Module):
    """A model and its loss as one Module: forward(x, target) -> loss; backward fills every `.g`."""

    def __init__(self, model: Module, loss_fn: Module) -> None:
        super().__init__()
        self.model, self.loss_fn = model, loss_fn

    def forward(self, x: Tensor, target: Tensor) -> Tensor:
        return self.loss_fn(self.model(x), target)

    def bwd(self, dloss: Tensor, x: Tensor, target: Tensor) -> None:
        """dX = model.bwd(loss.bwd(dL)); the model's input .g is written by its first layer."""
        self.loss_fn.backward(dloss)
        self.model.backward(needs_input_grad=self.needs_input_grad)
        return None
