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

# (rtol, atol): a tensor passes when max |hand - ref| <= atol S + rtol * max |ref|, S the objective's rounding
# scale (the sum of |out * dY|) or the largest reference gradient of the check if larger: the verdict does not
# change when a layer's output is scaled. float64 agrees with autograd up to summation order; float32 sums over
# a few hundred terms differ from autograd's in the last bits. The atol only matters for gradients that are ~0
# through cancellation.
TOLERANCES = {
    torch.float64: {"autograd": (1e-10, 1e-13), "fd": (1e-6, None)},
    torch.float32: {"autograd": (1e-5, 1e-6), "fd": (None, None)},
    torch.float16: {"autograd": (1e-2, 1e-3), "fd": (None, None)},
    torch.bfloat16: {"autograd": (5e-2, 1e-2), "fd": (None, None)},
}
FD_EPS = 1e-6
# Central differences cannot resolve gradients below their rounding noise, about 1e-16 * T / FD_EPS with T the
# objective's rounding scale (the sum of |out * dY| over its terms); the fd atol is FD_NOISE * T, this floor
# times 100.
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
    problems: list[str] = field(default_factory=list)  # of the layer as a whole (it changed dY in place, ...)

    @property
    def passed(self) -> bool:
        return not self.problems and all(t.passed for t in self.tensors)

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


class NotDifferentiable(ValueError):
    """The forward's output does not reach autograd: there is no reference to check against."""


def _clone(obj: object) -> object:
    if isinstance(obj, Tensor):
        return obj.clone()
    return type(obj)(_clone(o) for o in obj) if isinstance(obj, (tuple, list)) else obj


def _same(a: Tensor, b: Tensor) -> bool:
    """Equal values (NaN where the other has NaN counts as equal)."""
    if a.shape != b.shape:
        return False
    if not a.is_floating_point():
        return torch.equal(a, b)
    return bool(((a == b) | (a.isnan() & b.isnan())).all())


DY_CHANGED = ("its backward changed dY in place: dY is not its own (it is the output's .g, and a residual block "
              "gives the same dY to its other branch): compute into a new tensor")
INPUT_CHANGED = ("its {stage} changed {name} in place: the input is not its own (the previous layer's output, read "
                 "again by other layers and by backward): compute into a new tensor")
SKIPPED_INPUT = ("right when its input's gradient is needed, wrong with backward(needs_input_grad=False), as the first "
                 "layer of a model is run in training: the parameters' gradients must not depend on it")


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
    if finite_differences and tol["fd"][0] is None:
        raise ValueError(f"check_module: finite differences run in float64 only (got dtype {str(dtype)[6:]}); "
                         "leave finite_differences unset or False")
    if rtol is not None:  # a looser rtol vs autograd, stated by the caller (deep float32 composites)
        tol["autograd"] = (rtol, tol["autograd"][1])
    for i, x in enumerate(inputs):
        if not isinstance(x, Tensor):
            raise TypeError(f"check_module: input {i} is a {type(x).__name__}, expected a tensor (give each tensor "
                            "of a tuple as an input of its own)")
    dy_gen, fd_gen = stream(seed, "dy"), stream(seed, "fd")  # independent of the inputs (see `stream`)
    device = inputs[0].device if inputs else None
    m = copy.deepcopy(module).to(device=device, dtype=dtype)
    xs = [x.detach().to(dtype).clone() if x.is_floating_point() else x.clone() for x in inputs]
    diff_inputs = [i for i, x in enumerate(xs) if x.is_floating_point()]
    in_names = ["input"] if len(diff_inputs) == 1 else [f"input[{i}]" for i in diff_inputs]
    all_names = [in_names[diff_inputs.index(i)] if i in diff_inputs else f"input[{i}]" for i in range(len(xs))]
    batch = int(inputs[0].shape[0]) if inputs and inputs[0].dim() else None
    report = CheckReport(name or type(module).__name__, dtype, batch_size=batch)

    rng_devices = [device.index or 0] if device is not None and device.type == "cuda" else []

    def seeded(fn, forward_seed: int = seed):  # every forward of one call sees the same random numbers (dropout
        with torch.random.fork_rng(devices=rng_devices):  # masks), so the hand-written and the references agree
            torch.manual_seed(forward_seed)
            return fn()

    # (1) hand-written, on copies: what the forward or backward changes in place is caught, and the references
    # below see the inputs and dY as they were
    given = [x.clone() for x in xs]
    out = seeded(lambda: m(*xs))
    changed = [i for i, (x, g) in enumerate(zip(xs, given)) if not _same(x, g)]
    if changed:
        report.problems += [INPUT_CHANGED.format(stage="forward", name=all_names[i]) for i in changed]
        return report
    params = list(m.named_parameters())  # (after the forward: a layer may make its parameters there)
    dy = draw_dys(out, xs, dy_gen)
    m.zero_grad()
    dy_hand = _clone(dy)
    m.backward(dy_hand)
    if any(not _same(a, b) for a, b in zip(_flat(dy_hand), _flat(dy))):
        report.problems.append(DY_CHANGED)
    hand = [getattr(xs[i], "g", None) for i in diff_inputs] + [p.g for _, p in params]
    for i, (x, g) in enumerate(zip(xs, given)):
        if not _same(x, g):  # (the references below take the input as it was given)
            report.problems.append(INPUT_CHANGED.format(stage="backward", name=all_names[i]))
            xs[i] = g

    # (2) autograd through the same forward
    ref = _autograd(m, xs, diff_inputs, params, dy, seeded, report.module)
    # the objective's rounding scale T: the sum of its terms' magnitudes |out * dY|. A gradient that is ~0 through
    # cancellation carries rounding noise of about 1e-16 T; one of a layer whose output is tiny is itself tiny
    with torch.no_grad():
        terms = float(sum((o * d).abs().sum() for o, d in zip(_flat(seeded(lambda: m.forward(*xs))), _flat(dy))))
    scale = max([terms] + [float(r.abs().max()) for r in ref if r.numel()])
    tol_ad = (tol["autograd"][0], tol["autograd"][1] * scale if scale > 0 else tol["autograd"][1])

    # (3) central finite differences of sum(forward * dY)
    fd_targets = [xs[i] for i in diff_inputs] + [p for _, p in params]

    def objective() -> float:
        with torch.no_grad():
            return float(_dot(seeded(lambda: m.forward(*xs)), dy))

    names = in_names + [n for n, _ in params]
    for k, (tname, t) in enumerate(zip(names, fd_targets)):
        h = hand[k]
        shape = tuple(t.shape)
        if h is None:
            problem = "hand-written gradient missing (no .g)" if ref[k].numel() and bool(ref[k].abs().max() > 0) \
                else ""
            if problem:
                report.tensors.append(TensorCheck(tname, shape, None, None, problem, None, ref[k]))
            else:
                zero = torch.zeros_like(ref[k])
                report.tensors.append(TensorCheck(tname, shape, compare(zero, ref[k], tol_ad), None,
                                                  "", None, ref[k]))
            continue
        if not isinstance(h, Tensor):
            problem = f"gradient is a {type(h).__name__}, expected a tensor"
            report.tensors.append(TensorCheck(tname, shape, None, None, problem, None, ref[k]))
            continue
        if tuple(h.shape) != shape:
            problem = f"gradient has shape {list(h.shape)}, expected {list(shape)}"
            report.tensors.append(TensorCheck(tname, shape, None, None, problem, h, ref[k]))
            continue
        ad = compare(h, ref[k], tol_ad)
        fd = None
        if finite_differences and t.numel():
            idx = _fd_indices(t, fd_max_elements, fd_gen)
            numeric = torch.zeros(t.numel(), dtype=torch.float64)
            for i in idx.tolist():
                at = _unravel((i,), shape) if shape else ()  # (an index, not a view: it may be non-contiguous)
                orig = t.data[at].item()
                t.data[at] = orig + FD_EPS
                f_plus = objective()
                t.data[at] = orig - FD_EPS
                f_minus = objective()
                t.data[at] = orig
                numeric[i] = (f_plus - f_minus) / (2 * FD_EPS)
            mask = torch.zeros(t.numel(), dtype=torch.bool)
            mask[idx] = True
            fd_tol = (tol["fd"][0], FD_NOISE * terms)  # (terms >= |objective|)
            fd = compare(h.reshape(-1), numeric, fd_tol, mask)
            fd = dataclasses.replace(fd, worst_index=_unravel(fd.worst_index, shape))
        report.tensors.append(TensorCheck(tname, shape, ad, fd, "", h, ref[k]))
    _check_second_call(m, xs, seeded, report, diff_inputs, params, seed, tol_ad, ref)
    _check_without_input_grad(m, xs, seeded, report, diff_inputs, params, dy, tol_ad)
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
            # (each input through a clone: a forward that writes into its input acts on the clone, not on a leaf)
            outs = _flat(seeded(lambda: m.forward(*(x.clone() if x.requires_grad else x for x in xs_ad))))
            if not any(o.requires_grad for o in outs):
                raise NotDifferentiable(
                    f"{name}.forward's output does not depend on its inputs or parameters for autograd (computed "
                    "under torch.no_grad, through numpy, .item() or .data?): the check compares with autograd, "
                    "so the forward must be written in torch operations on the tensors it is given")
            pairs = [(o, d) for o, d in zip(outs, _flat(dy)) if o.requires_grad]
            ref = torch.autograd.grad([o for o, _ in pairs], wrt, [d for _, d in pairs], allow_unused=True)
    finally:
        for _, p in params:
            p.requires_grad_(False)
    return [torch.zeros_like(t) if r is None else r for r, t in zip(ref, wrt)]


OVERWRITES = ("overwrites .g instead of adding to it (use handgrad.add_grad): wrong once the layer is called "
             "twice or its weight is tied")
STALE = ("right on the first call, wrong on a second call with other inputs, moved weights, other random numbers "
         "and another dY: its backward uses something kept from an earlier call (a mask, statistics, a weight's copy "
         "or a gradient computed once?)")


def _check_second_call(m: Module, xs: list[Tensor], seeded: Callable, report: CheckReport, diff_inputs: list[int],
                       params: list, seed: int, tol: tuple[float, float], ref: list[Tensor]) -> None:
    """(4) A second forward and backward with everything a kept value could depend on changed: the inputs' values
    shuffled across the whole tensor (not only the batch rows: batch statistics change too; one example changes
    as well) and shrunk by random factors in (0.75, 1] (signs, zeros and ranges such as [0, 1] kept), the
    parameters moved by factors in (0.75, 1.25) and, in a tensor that holds both signs, a quarter of them
    flipped, another dY, random numbers from another seed (dropout masks), and the parameters' .g already
    holding random values: each parameter's .g must then hold those values plus this call's gradients (a module
    called twice, or a tied weight, sums its calls'), and each input's .g this call's gradient. A tensor that
    fails gets the OVERWRITES problem (its .g lost the values it held) or the STALE one (something kept from the
    first call: a mask, statistics or a gradient computed once)."""
    if not any(r.passed for r in report.tensors):
        return
    gen = stream(seed, "second")

    def shuffled(x: Tensor) -> Tensor:
        n = x.numel()
        if n < 2:
            return x.clone()
        perm = torch.randperm(n, generator=gen)
        if torch.equal(perm, torch.arange(n)):
            perm = perm.roll(1)
        x2 = x.reshape(-1)[perm.to(x.device)].reshape(x.shape)
        if x.is_floating_point():
            x2 = x2 * (1 - 0.25 * torch.rand(x.shape, generator=gen, dtype=torch.float64)).to(x)
        return x2

    xs2 = [shuffled(x) for x in xs]
    with torch.no_grad():  # the parameters moved, as an optimizer's steps move them
        for _, p in params:
            factor = 1 + 0.25 * (2 * torch.rand(p.shape, generator=gen, dtype=torch.float64) - 1)
            if bool((p > 0).any()) and bool((p < 0).any()):
                factor = torch.where(torch.rand(p.shape, generator=gen, dtype=torch.float64) < 0.25, -factor, factor)
            p.mul_(factor.to(p))
    second_seed = int(torch.randint(1 << 62, (), generator=gen))
    scales = [float(r.abs().max()) if r.numel() else 1.0 for r in ref[len(diff_inputs):]]
    try:
        out = seeded(lambda: m(*xs2), second_seed)
        dy2 = draw_dys(out, xs2, stream(seed, "dy2"))
        # values of the gradients' own magnitude (so that adding and taking them back costs no precision)
        prefill = [torch.randn(p.shape, generator=gen, dtype=torch.float64).mul_(s or 1.0).to(p)
                   for (_, p), s in zip(params, scales)]
        for (_, p), f in zip(params, prefill):
            p.g = f.clone()
            p._g_pass = Module.forward_pass  # a plain tensor's .g counts as this forward's (see handgrad.add_grad)
        given = [x.clone() for x in xs2]
        m.backward(_clone(dy2))
        hands2 = [getattr(xs2[i], "g", None) for i in diff_inputs] + \
                 [None if p.g is None else p.g - f for (_, p), f in zip(params, prefill)]
        # (a backward that changes its input was reported; the reference takes the inputs as given)
        ref2 = _autograd(m, given, diff_inputs, params, dy2, lambda fn: seeded(fn, second_seed), report.module)
    except Exception:  # noqa: BLE001 - a gradient of the wrong shape cannot be added: already reported
        return
    for k, (row, h, r) in enumerate(zip(report.tensors, hands2, ref2)):
        if not row.passed or row.hand is None or not isinstance(h, Tensor) or tuple(h.shape) != tuple(r.shape):
            continue
        if not bool(torch.isfinite(r).all()):  # the second inputs left the forward's domain (sqrt(x - 1) of a
            continue  # shrunk x): nothing to judge by
        if compare(h, r, tol).passed:
            continue
        is_param = k >= len(diff_inputs)
        lost = is_param and compare(params[k - len(diff_inputs)][1].g, r, tol).passed
        report.tensors[k] = dataclasses.replace(row, problem=OVERWRITES if lost else STALE)


def _check_without_input_grad(m: Module, xs: list[Tensor], seeded: Callable, report: CheckReport,
                              diff_inputs: list[int], params: list, dy: object, tol: tuple[float, float]) -> None:
    """(5) The parameters' gradients again with backward(needs_input_grad=False), the way training runs the first
    layer of a model: they must not change (a bwd that skips its work there gets SKIPPED_INPUT)."""
    rows = [(k, p) for k, (_, p) in enumerate(params, len(diff_inputs)) if report.tensors[k].passed]
    if not rows:
        return
    try:
        seeded(lambda: m(*xs))
        for _, p in params:
            p.g = None
        given = [x.clone() for x in xs]
        m.backward(_clone(dy), needs_input_grad=False)
        ref = _autograd(m, given, diff_inputs, params, dy, seeded, report.module)[len(diff_inputs):]
    except Exception:  # noqa: BLE001 - what breaks here broke (and was reported) with the input's gradient too
        return
    for k, p in rows:
        h, r = p.g, ref[k - len(diff_inputs)]
        if h is None:
            h = torch.zeros_like(r)
        if not isinstance(h, Tensor) or h.shape != r.shape or not compare(h, r, tol).passed:
            report.tensors[k] = dataclasses.replace(report.tensors[k], problem=SKIPPED_INPUT)


def _unravel(flat_index: tuple[int, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
    if not flat_index or not shape:
        return flat_index
    return tuple(int(i) for i in torch.unravel_index(torch.tensor(flat_index[0]), shape))
