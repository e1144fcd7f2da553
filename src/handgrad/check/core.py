"""Gradient verification: a Module's hand-written backward against autograd and finite differences.

For one forward with a random upstream gradient dY, the hand-written gradients
(the `.g` that `backward(dY)` leaves on each input and parameter) are compared
with (a) `torch.autograd.grad` run through the same module's forward and (b)
central finite differences of sum(forward(...) * dY) in float64.

Errors are reported per tensor: the max absolute error, the max relative error
(max |hand - ref| / max |ref|, i.e. relative to the tensor's scale, so exact
zeros in the reference cannot blow it up) and the index of the worst element.

Central differences carry a rounding error of about 1e-16 * |objective| / eps,
so they judge gradients of the objective's own scale well; a gradient far
smaller (the input gradient of a large batch's mean loss) is better judged
against autograd alone.
"""

from __future__ import annotations

import copy
import dataclasses
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..module import Module

# (rtol, atol): a tensor passes when max |hand - ref| <= atol + rtol * max |ref|.
# float64 agrees with autograd up to summation order; float32 sums over a few
# hundred terms differ from autograd's in the last bits. The atol only matters
# for gradients that are ~0 through cancellation.
TOLERANCES = {
    torch.float64: {"autograd": (1e-10, 1e-13), "fd": (1e-6, None)},
    torch.float32: {"autograd": (1e-5, 1e-6), "fd": (None, None)},
}
FD_EPS = 1e-6
# Central differences cannot resolve gradients below their rounding noise,
# about 1e-16 * |objective| / FD_EPS; the fd atol is this floor times 100.
FD_NOISE = 1e-8


@dataclass
class Comparison:
    """Hand-written gradient against one reference for one tensor."""

    max_abs: float
    max_rel: float
    worst_index: tuple[int, ...]
    checked: int  # elements compared
    rtol: float
    atol: float
    scale: float = 0.0  # max |ref|

    @property
    def passed(self) -> bool:
        return self.max_abs <= self.atol + self.rtol * self.scale


@dataclass
class TensorCheck:
    name: str
    shape: tuple[int, ...]
    autograd: Comparison | None
    fd: Comparison | None
    problem: str = ""  # set when no numbers could be compared (missing or mis-shaped gradient)
    hand: Tensor | None = field(default=None, repr=False)  # the hand-written gradient
    reference: Tensor | None = field(default=None, repr=False)  # autograd's

    @property
    def passed(self) -> bool:
        if self.problem:
            return False
        return all(c.passed for c in (self.autograd, self.fd) if c is not None)


@dataclass
class CheckReport:
    module: str
    dtype: torch.dtype
    tensors: list[TensorCheck] = field(default_factory=list)
    batch_size: int | None = None  # first dim of the first input, for diagnoses like "a missing 1/N"

    @property
    def passed(self) -> bool:
        return all(t.passed for t in self.tensors)

    def worst_rel(self, reference: str = "autograd") -> float:
        values = [getattr(t, reference).max_rel for t in self.tensors if getattr(t, reference) is not None]
        return max(values, default=0.0)

    def failures(self) -> list[TensorCheck]:
        return [t for t in self.tensors if not t.passed]


def compare(hand: Tensor, ref: Tensor, tol: tuple[float, float], mask: Tensor | None = None) -> Comparison:
    """max |hand - ref| (optionally over the elements in `mask`), relative to max |ref|."""
    diff = (hand.detach().double().cpu() - ref.detach().double().cpu()).abs()
    scale_src = ref.detach().double().cpu().abs()
    if mask is not None:
        diff = torch.where(mask, diff, torch.zeros_like(diff))
        scale_src = scale_src[mask]
    checked = int(mask.sum()) if mask is not None else diff.numel()
    if diff.numel() == 0:
        return Comparison(0.0, 0.0, (), 0, *tol)
    flat = int(diff.argmax())
    worst = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), diff.shape)) if diff.dim() else ()
    max_abs = float(diff.reshape(-1)[flat])
    scale = float(scale_src.max()) if scale_src.numel() else 0.0
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
    return Comparison(max_abs, max_rel, worst, checked, *tol, scale=scale)


def stream(seed: int, purpose: str) -> torch.Generator:
    """A CPU generator for one purpose ("inputs", "dy", "fd"): one seed gives independent streams.

    The inputs and dY must never come out alike: with dY == X a transposed square weight gradient
    (X^T dY is then symmetric) or a backward using dY where X belongs would pass.
    """
    mixed = (seed * 0x9E3779B97F4A7C15 + zlib.crc32(purpose.encode())) % (1 << 63)
    return torch.Generator().manual_seed(mixed)


def draw_dy(shape: torch.Size | tuple[int, ...], dtype: torch.dtype, device: torch.device | None,
            inputs: list[Tensor], gen: torch.Generator) -> Tensor:
    """A random upstream gradient, re-drawn while it equals any input of its shape."""
    while True:
        dy = torch.randn(tuple(shape), generator=gen, dtype=dtype).to(device)
        if not any(x.is_floating_point() and x.shape == dy.shape and torch.equal(x.to(dy), dy) for x in inputs):
            return dy


def draw_dys(out: object, inputs: list[Tensor], gen: torch.Generator) -> object:
    """A random upstream gradient for each tensor of `out` (a tensor, or the tuples a layer such as LSTM returns),
    in `out`'s nesting."""
    if isinstance(out, Tensor):
        return draw_dy(out.shape, out.dtype, out.device, inputs, gen)
    if isinstance(out, (tuple, list)):
        return type(out)(draw_dys(o, inputs, gen) for o in out)
    raise TypeError(f"check: the forward returned a {type(out).__name__}, expected a tensor or a tuple of tensors")


def _flat(obj: object) -> list[Tensor]:
    if isinstance(obj, Tensor):
        return [obj]
    return [t for o in obj for t in _flat(o)] if isinstance(obj, (tuple, list)) else []


def _dot(out: object, dy: object) -> Tensor:
    """sum(out * dY) over every output tensor: the objective whose gradients the check compares."""
    return sum((o * d).sum() for o, d in zip(_flat(out), _flat(dy)))


def _fd_indices(t: Tensor, max_elements: int, gen: torch.Generator) -> Tensor:
    n = t.numel()
    if n <= max_elements:
        return torch.arange(n)
    return torch.randperm(n, generator=gen)[:max_elements]


def check_module(module: Module, *inputs: Tensor, dtype: torch.dtype = torch.float64,
                 finite_differences: bool | None = None, fd_max_elements: int = 256, seed: int = 0,
                 name: str | None = None, rtol: float | None = None) -> CheckReport:
    """Check `module`'s hand-written backward on `inputs`.

    The module is deep-copied and cast to `dtype` on the inputs' device, so the
    caller's module and tensors are left untouched. Floating inputs are differentiated; integer
    inputs (class labels) are passed through. Finite differences run only in
    float64 (default: whenever dtype is float64), on at most `fd_max_elements`
    randomly chosen elements of each tensor. `rtol` overrides the relative
    tolerance against autograd (see TOLERANCES). Every forward runs with torch's RNG
    seeded alike, so layers that draw random numbers (Dropout) are checked with
    one fixed mask. dY comes from its own stream of `seed` (see `stream`) and never
    equals an input.
    """
    if finite_differences is None:
        finite_differences = dtype == torch.float64
    tol = dict(TOLERANCES.get(dtype, TOLERANCES[torch.float32]))
    if rtol is not None:  # a looser rtol vs autograd, stated by the caller (deep float32 composites)
        tol["autograd"] = (rtol, tol["autograd"][1])
    dy_gen, fd_gen = stream(seed, "dy"), stream(seed, "fd")  # independent of the inputs (see `stream`)
    device = inputs[0].device if inputs else None
    m = copy.deepcopy(module).to(device=device, dtype=dtype)
    xs = [x.detach().to(dtype).clone() if x.is_floating_point() else x.clone() for x in inputs]
    diff_inputs = [i for i, x in enumerate(xs) if x.is_floating_point()]
    in_names = ["input"] if len(diff_inputs) == 1 else [f"input[{i}]" for i in diff_inputs]
    params = list(m.named_parameters())
    batch = int(inputs[0].shape[0]) if inputs and inputs[0].dim() else None
    report = CheckReport(name or type(module).__name__, dtype, batch_size=batch)

    rng_devices = [device.index or 0] if device is not None and device.type == "cuda" else []

    def seeded(fn):  # every forward sees the same random numbers (dropout masks), so all three agree
        with torch.random.fork_rng(devices=rng_devices):
            torch.manual_seed(seed)
            return fn()

    # (1) hand-written
    out = seeded(lambda: m(*xs))
    dy = draw_dys(out, xs, dy_gen)
    m.zero_grad()
    m.backward(dy)
    hand = [getattr(xs[i], "g", None) for i in diff_inputs] + [p.g for _, p in params]

    # (2) autograd through the same forward
    ref = _autograd(m, xs, diff_inputs, params, dy, seeded, report.module)

    # (3) central finite differences of sum(forward * dY)
    fd_targets = [xs[i] for i in diff_inputs] + [p for _, p in params]

    def objective() -> float:
        with torch.no_grad():
            return float(_dot(seeded(lambda: m.forward(*xs)), dy))

    names = in_names + [n for n, _ in params]
    f0 = objective() if finite_differences else 0.0
    for k, (tname, t) in enumerate(zip(names, fd_targets)):
        h = hand[k]
        shape = tuple(t.shape)
        if h is None:
            problem = "" if not bool(ref[k].abs().max() > 0) else "hand-written gradient missing (no .g)"
            if problem:
                report.tensors.append(TensorCheck(tname, shape, None, None, problem, None, ref[k]))
            else:
                zero = torch.zeros_like(ref[k])
                report.tensors.append(TensorCheck(tname, shape, compare(zero, ref[k], tol["autograd"]), None,
                                                  "", None, ref[k]))
            continue
        if tuple(h.shape) != shape:
            problem = f"gradient has shape {list(h.shape)}, expected {list(shape)}"
            report.tensors.append(TensorCheck(tname, shape, None, None, problem, h, ref[k]))
            continue
        ad = compare(h, ref[k], tol["autograd"])
        fd = None
        if finite_differences and t.numel():
            idx = _fd_indices(t, fd_max_elements, fd_gen)
            numeric = torch.zeros(t.numel(), dtype=torch.float64)
            flat = t.data.view(-1)
            for i in idx.tolist():
                orig = flat[i].item()
                flat[i] = orig + FD_EPS
                f_plus = objective()
                flat[i] = orig - FD_EPS
                f_minus = objective()
                flat[i] = orig
                numeric[i] = (f_plus - f_minus) / (2 * FD_EPS)
            mask = torch.zeros(t.numel(), dtype=torch.bool)
            mask[idx] = True
            fd_tol = (tol["fd"][0], FD_NOISE * max(1.0, abs(f0)))
            fd = compare(h.reshape(-1), numeric, fd_tol, mask)
            fd = dataclasses.replace(fd, worst_index=_unravel(fd.worst_index, shape))
        report.tensors.append(TensorCheck(tname, shape, ad, fd, "", h, ref[k]))
    _check_second_call(m, xs, seeded, report, diff_inputs, params, seed, tol["autograd"])
    return report


def _autograd(m: Module, xs: list[Tensor], diff_inputs: list[int], params: list, dy: object, seeded: Callable,
              name: str) -> list[Tensor]:
    """Autograd's gradients of sum(forward(*xs) * dy) for the differentiable inputs and the parameters."""
    xs_ad = [x.clone().requires_grad_(x.is_floating_point()) for x in xs]
    wrt = [xs_ad[i] for i in diff_inputs] + [p for _, p in params]
    try:
        for _, p in params:
            p.requires_grad_(True)
        with torch.enable_grad():
            outs = _flat(seeded(lambda: m.forward(*xs_ad)))
            if not any(o.requires_grad for o in outs):
                raise ValueError(f"{name}.forward is not differentiable by autograd (output has no grad_fn)")
            pairs = [(o, d) for o, d in zip(outs, _flat(dy)) if o.requires_grad]
            ref = torch.autograd.grad([o for o, _ in pairs], wrt, [d for _, d in pairs], allow_unused=True)
    finally:
        for _, p in params:
            p.requires_grad_(False)
    return [torch.zeros_like(t) if r is None else r for r, t in zip(ref, wrt)]


OVERWRITES = ("overwrites .g instead of adding to it (use handgrad.add_grad): wrong once the layer is called "
             "twice or its weight is tied")
STALE = ("right on the first call, wrong on a second call with other inputs, moved weights and another dY: its "
         "backward uses something kept from an earlier call (a mask, a weight's copy or a gradient computed once?)")


def _check_second_call(m: Module, xs: list[Tensor], seeded: Callable, report: CheckReport, diff_inputs: list[int],
                       params: list, seed: int, tol: tuple[float, float]) -> None:
    """(4) A second forward and backward, on the inputs with their batch rows shuffled, the parameters moved a
    little and a fresh dY, while the parameters' .g already hold random values: each parameter's .g must then hold those values plus this
    call's gradients (a module called twice, or a tied weight, sums its calls'), and each input's .g this call's
    gradient. A tensor that fails gets the OVERWRITES problem (its .g lost the values it held) or the STALE one
    (something kept from the first call: a mask or a gradient computed once)."""
    if not any(r.passed for r in report.tensors):
        return
    gen = stream(seed, "second")
    n = xs[0].shape[0] if xs and xs[0].dim() else 0
    perm = torch.randperm(n, generator=gen) if n > 1 else None
    if perm is not None and torch.equal(perm, torch.arange(n)):
        perm = perm.roll(1)
    xs2 = [x[perm.to(x.device)].clone() if perm is not None and x.dim() and x.shape[0] == n else x.clone()
           for x in xs]
    with torch.no_grad():  # the parameters moved, as an optimizer's step moves them (signs and zeros kept)
        for _, p in params:
            p.mul_(1 + 0.25 * (2 * torch.rand(p.shape, generator=gen, dtype=torch.float64) - 1).to(p))
    try:
        out = seeded(lambda: m(*xs2))
        dy2 = draw_dys(out, xs2, stream(seed, "dy2"))
        prefill = [torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p) for _, p in params]
        for (_, p), f in zip(params, prefill):
            p.g = f.clone()
            p._g_pass = Module.forward_pass  # a plain tensor's .g counts as this forward's (see handgrad.add_grad)
        m.backward(dy2)
        ref2 = _autograd(m, xs2, diff_inputs, params, dy2, seeded, report.module)
    except Exception:  # noqa: BLE001 - a gradient of the wrong shape cannot be added: already reported
        return
    hands2 = [getattr(xs2[i], "g", None) for i in diff_inputs] + \
             [None if p.g is None else p.g - f for (_, p), f in zip(params, prefill)]
    for k, (row, h, r) in enumerate(zip(report.tensors, hands2, ref2)):
        if not row.passed or row.hand is None or h is None or tuple(h.shape) != tuple(r.shape):
            continue
        if compare(h, r, tol).passed:
            continue
        is_param = k >= len(diff_inputs)
        lost = is_param and compare(params[k - len(diff_inputs)][1].g, r, tol).passed
        report.tensors[k] = dataclasses.replace(row, problem=OVERWRITES if lost else STALE)


def _unravel(flat_index: tuple[int, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
    if not flat_index or not shape:
        return flat_index
    return tuple(int(i) for i in torch.unravel_index(torch.tensor(flat_index[0]), shape))
