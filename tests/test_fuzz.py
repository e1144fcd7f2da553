"""Differential fuzz suite: random handgrad models on every path, against plain torch autograd.

Random models (tests/fuzz_models.py) are drawn from every built-in layer, nested Sequentials and Residuals,
modules reused several times, tied weights, layers returning their input or a view of it, fan-out, user
layers with their own bwd, and Modules without bwd (a cell called in a loop, a user container), at small
random shapes, in float32 and float64, in train and eval mode. Each model runs on the paths a user takes:

1. plain module path: out = model(x); model.backward(dy)
2. the same inside handgrad.lean()
3. handgrad.training_step(model, loss_fn, opt) (the fused MLP or CNN step where it applies, else the lean path)
4. the Learner's batch step (Learner._one_batch, fused or module path)
5. handgrad.interop.wrap(model) inside a torch graph, used twice in one graph (two inputs, or w(w(x)))

The reference is torch autograd: the same handgrad model's forward run with its parameters requiring grad
(as handgrad.check does), and, for models of built-in layers, also the interop.to_torch twin. Every output,
every input gradient, every parameter gradient and every buffer (BatchNorm running statistics) is compared;
training paths take 2-3 optimizer steps (SGD with and without momentum, Nesterov, weight decay; Adam,
AdamW) compared weight by weight with torch.optim on the reference.

Tolerances: a tensor matches when max |got - ref| <= atol + rtol * max |ref| (relative to the tensor's
scale, so that elements that are ~0 by cancellation do not count as large relative errors):
float64 rtol 1e-8, atol 1e-12 (a BatchNorm over two values, reused, loses a few digits to rounding in float64
too); float32 rtol 1e-4, atol 1e-6 (the rounding of a few hundred float32 terms in
a different order, amplified by a normalisation of a tiny batch).

Refusals are checked too: BatchNorm in training on one value per channel raises a one-line ValueError on
every path, and a Module without bwd applying a raw torch op refuses its backward with a one-line
RuntimeError. test_the_harness_catches_* prove that each comparison can fail.

Examples: HANDGRAD_FUZZ_EXAMPLES (default 1200) in total, shared among the tests below, drawn from a fixed seed
(derandomize=True) so that CI runs the same models every time. For a deep run, more examples and other ones:
    HANDGRAD_FUZZ_EXAMPLES=20000 HANDGRAD_FUZZ_SEED=7 pytest tests/test_fuzz.py
"""

from __future__ import annotations

import math
import os
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, reject, seed, settings
from hypothesis import event as _hypothesis_event
from hypothesis import note as _hypothesis_note
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument
from torch import Tensor

import handgrad as hg
import handgrad.calls as _calls
import handgrad.interop as _interop
import handgrad.layers.activation as activation
import handgrad.layers.linear as _linear
from fuzz_models import Case, cases, mlp_cases, walk
from handgrad.data import DataLoader
from handgrad import fused_cnn
from handgrad.fused import FusedStep, unsupported
from handgrad.fused_cnn import FusedCNNStep
from handgrad.interop import to_torch, wrap
from handgrad.layers.normalization import _BatchNorm
from handgrad.train import Learner

TOTAL = int(os.environ.get("HANDGRAD_FUZZ_EXAMPLES", "1200"))
SEED = int(os.environ["HANDGRAD_FUZZ_SEED"]) if os.environ.get("HANDGRAD_FUZZ_SEED") else None
RTOL = {torch.float64: 1e-8, torch.float32: 1e-4}
ATOL = {torch.float64: 1e-12, torch.float32: 1e-6}
GRAD_RTOL = {torch.float64: 1e-8, torch.float32: 1e-4}  # of the run's largest gradient (see compare)
FLOAT32_DY_ATOL = 1e-5  # float32 gradients: of max |dY| (see compare)
DEGENERATE_DY_ATOL = {torch.float64: 1e-9, torch.float32: 1e-3}  # after a degenerate normalisation (see compare)
NOISE_FACTOR = 10  # float32: times torch's own float32 error on the tensor (see compare)
RNG_SEED = 20240601  # torch's global RNG for every forward (dropout masks), the same on every path


def fuzz(share: float):
    """Settings for a test running `share` of the HANDGRAD_FUZZ_EXAMPLES examples; HANDGRAD_FUZZ_SEED (an integer)
    draws other examples than CI's fixed ones."""
    chosen = settings(max_examples=max(1, round(TOTAL * share)), database=None, deadline=None,
                      derandomize=SEED is None,
                      suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                             HealthCheck.filter_too_much])
    if SEED is None:
        return chosen
    return lambda test: seed(SEED)(chosen(test))


def event(message: str) -> None:
    """Hypothesis statistics (pytest --hypothesis-show-statistics); nothing outside a Hypothesis test."""
    try:
        _hypothesis_event(message)
    except InvalidArgument:
        pass


def note(message: str) -> None:
    """Printed with a failing example; nothing outside a Hypothesis test."""
    try:
        _hypothesis_note(message)
    except InvalidArgument:
        pass


@contextmanager
def seeded(step: int = 0):
    """torch's global RNG seeded alike for handgrad and the reference (so dropout masks agree), restored after."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RNG_SEED + step)
        yield


def _relu_forward_for_autograd(x: Tensor) -> Tensor:
    return torch.relu(x)


def _general_relu_forward_for_autograd(self, x: Tensor) -> Tensor:
    y = torch.where(x > 0, x, x * self.leak) if self.leak is not None else torch.relu(x)
    if self.sub is not None:
        y = y - self.sub
    if self.maxv is not None:
        y = y.clamp_max(self.maxv)
    return y


@contextmanager
def torch_subgradients():
    """For the autograd reference only: handgrad's ReLU forward is clamp_min(X, 0), whose autograd subgradient
    at exactly 0 is 1, where torch.relu's (and the hand-written backward's, and the torch twin's) is 0. Exact
    zeros do reach ReLUs here (after a ReLU, a dropped unit, a padding row), so the reference differentiates the
    same values with torch.relu in its place. Nothing else changes."""
    saved = activation.relu, hg.GeneralRelu.forward
    activation.relu = _relu_forward_for_autograd
    hg.GeneralRelu.forward = _general_relu_forward_for_autograd
    try:
        yield
    finally:
        activation.relu, hg.GeneralRelu.forward = saved


# ------------------------------------------------------------------------------------------------ comparing


def assert_close(what: str, got: Tensor | None, ref: Tensor, dtype: torch.dtype, slack: float = 0.0) -> None:
    """max |got - ref| <= atol + rtol * max |ref| + slack, shapes and dtypes equal; integers exactly."""
    assert got is not None, f"{what}: missing (None), expected a tensor of shape {list(ref.shape)}"
    assert tuple(got.shape) == tuple(ref.shape), f"{what}: shape {list(got.shape)}, expected {list(ref.shape)}"
    assert got.dtype == ref.dtype, f"{what}: dtype {got.dtype}, expected {ref.dtype}"
    if not ref.is_floating_point():
        assert torch.equal(got, ref), f"{what}: {got.tolist()} != {ref.tolist()}"
        return
    g, r = got.detach().double().cpu(), ref.detach().double().cpu()
    assert torch.isfinite(r).all(), f"{what}: the reference is not finite"
    assert torch.isfinite(g).all(), f"{what}: not finite: {g}"
    if not r.numel():
        return
    diff = (g - r).abs()
    err, scale = float(diff.max()), float(r.abs().max())
    bound = ATOL[dtype] + RTOL[dtype] * scale + slack
    if err > bound:
        worst = tuple(int(i) for i in torch.unravel_index(diff.argmax(), diff.shape)) if diff.dim() else ()
        raise AssertionError(f"{what}: max |got - ref| = {err:.3g} > {bound:.3g} (atol {ATOL[dtype]:g} + rtol "
                             f"{RTOL[dtype]:g} of max |ref| {scale:.3g} + {slack:.3g}); worst at {list(worst)}: got "
                             f"{float(g[worst]):.10g}, expected {float(r[worst]):.10g}")


@dataclass
class Run:
    """What one path produced: outputs, input gradients, parameter gradients by name (handgrad's layout), the
    state dict after (parameters and buffers, torch's layout)."""

    outs: list[Tensor]
    dxs: list[Tensor | None]
    grads: dict[str, Tensor | None]
    state: dict[str, Tensor]
    like: dict[str, Tensor] = field(default_factory=dict)  # the parameters, for the shape of zero gradients
    dy_scale: float = 0.0  # max |dY| of the upstream gradients (the reference's)
    degenerate: bool = False  # a normalisation of (nearly) constant groups ran (see degenerate_norms)

    def tensors(self, ref: Run) -> dict[str, tuple[Tensor | None, bool]]:
        """label -> (tensor, is a gradient), aligned on the reference's labels; a gradient the reference has as
        None (unused) is zeros."""
        out: dict[str, tuple[Tensor | None, bool]] = {}
        for i, t in enumerate(self.outs):
            out[f"output {i}"] = (t, False)
        for i, (t, r) in enumerate(zip(self.dxs, ref.dxs)):
            if r is not None:  # a float input
                out[f"gradient of input {i}"] = (t, True)
        for name, t in self.grads.items():
            out[f"gradient of {name}"] = (torch.zeros_like(ref.like[name]) if t is None and self is ref else t, True)
        for name, t in self.state.items():
            out[f"{name} after"] = (t, False)
        return out


def compare(path: str, got: Run, ref: Run, dtype: torch.dtype, ref64: Run | None = None) -> None:
    """Every tensor of `got` against `ref`. Besides atol and rtol of each tensor's own scale, gradients get
    GRAD_RTOL of the run's largest reference gradient (a gradient that is ~0 by cancellation, e.g. a bias
    before a normalisation, carries the rounding of the terms that cancel), and in float32 NOISE_FACTOR times
    torch's own float32 error on that tensor (the float32 reference against the float64 one, same weights and
    inputs): an ill-conditioned computation (a LayerNorm over two close values) is allowed its conditioning; and
    in float32 FLOAT32_DY_ATOL of max |dY|: a normalisation of a constant input (variance 0) multiplies rounding
    by 1/sqrt(eps) ~ 316 before terms that cancel to an exact 0, where torch's own float32 reference may happen to
    round to 0 as well."""
    assert len(got.outs) == len(ref.outs)
    assert list(got.grads) == list(ref.grads), f"{path}: parameters {list(got.grads)} != {list(ref.grads)}"
    assert list(got.state) == list(ref.state), f"{path}: state dict keys {list(got.state)} != {list(ref.state)}"
    mine, theirs = got.tensors(ref), ref.tensors(ref)
    exact = ref64.tensors(ref64) if ref64 is not None else {}
    largest = max((float(t.abs().max()) for t, is_grad in theirs.values() if is_grad and t.numel()), default=0.0)
    for label, (r, is_grad) in theirs.items():
        t = mine[label][0]
        if t is None and is_grad:  # no .g: right only where the gradient is zero
            assert not (r.numel() and bool(r.abs().max() > 0)), \
                f"{path}: {label}: no gradient (.g is None), expected max |g| = {float(r.abs().max()):.3g}"
            continue
        slack = GRAD_RTOL[dtype] * largest if is_grad else 0.0
        if is_grad and dtype == torch.float32:
            slack += FLOAT32_DY_ATOL * ref.dy_scale
        if is_grad and ref.degenerate:
            slack += DEGENERATE_DY_ATOL[dtype] * ref.dy_scale
        if label in exact and r.is_floating_point():
            slack += NOISE_FACTOR * float((r.double() - exact[label][0].double()).abs().amax()) if r.numel() else 0.0
        assert_close(f"{path}: {label}", t, r, dtype, slack)


def assert_unchanged(what: str, before: Tensor, after: Tensor) -> None:
    assert torch.equal(before, after), f"{what} was modified in place"


# -------------------------------------------------------------------------------------- the module paths


def has_twin(case: Case) -> bool:
    """The model converts with interop.to_torch (built-in layers only)."""
    return case.has_twin()


def compare_twin(case: Case) -> bool:
    """The module paths are also compared with the to_torch twin (torch's own layers: a check of handgrad's
    forward, which the autograd reference shares) in float64. In float32 the twin's fused kernels round
    otherwise, and where a normalisation divides by ~sqrt(eps) (a LayerNorm over one element) torch's rounding
    alone exceeds float32's tolerance; a wrong forward shows in float64 as well."""
    return has_twin(case) and case.dtype == torch.float64


def autograd_reference(case: Case, xs: list[Tensor], dys: list[Tensor], nested: bool = False) -> Run:
    """The same handgrad model's forward under torch autograd (parameters requiring grad, outside lean), called
    once per input (or nested: f(f(x))), and the vector-Jacobian products with dys."""
    model = case.build()
    named = list(model.named_parameters())
    leaves = [x.detach().clone().requires_grad_(x.is_floating_point()) for x in xs]
    for _, p in named:
        p.requires_grad_(True)
    try:
        with torch_subgradients(), torch.enable_grad(), hg.lean(False), seeded():
            outs = [model.forward(model.forward(leaves[0]))] if nested else [model.forward(x) for x in leaves]
            wrt = [x for x in leaves if x.requires_grad] + [p for _, p in named]
            grads = list(torch.autograd.grad(outs, wrt, dys, allow_unused=True))
    finally:
        for _, p in named:
            p.requires_grad_(False)
    dxs = [grads.pop(0) if x.requires_grad else None for x in leaves]
    dxs = [torch.zeros_like(x) if g is None and x.requires_grad else g for g, x in zip(dxs, leaves)]
    return Run([o.detach() for o in outs], dxs, {n: g for (n, _), g in zip(named, grads)}, model.state_dict(),
               {n: p.detach() for n, p in named}, max(float(d.abs().max()) if d.numel() else 0.0 for d in dys),
               degenerate_norms(model))


def degenerate_norms(model: hg.Module) -> bool:
    """Whether a LayerNorm, or a BatchNorm in training, normalised (in its last call) groups of at most two values
    or of values whose variance is under 100 eps."""
    for m in model.modules():
        if isinstance(m, hg.LayerNorm):
            dims = tuple(range(-len(m.normalized_shape), 0))
        elif isinstance(m, _BatchNorm) and m.training:
            dims = None
        else:
            continue
        args = m.__dict__.get("args")
        if not args or not isinstance(args[0], Tensor) or not args[0].numel():
            continue
        x = args[0].detach().double()
        if dims is None:  # BatchNorm: per channel (dim 1) over the others, or over the batch of an unbatched [C]
            dims = tuple(d for d in range(x.dim()) if d != 1) if x.dim() > 1 else (0,)
        group = x.numel() // max(1, math.prod(x.shape[d] for d in range(x.dim()) if d not in
                                              {d % x.dim() for d in dims}))
        if group <= 2 or float(x.var(dims, unbiased=False).min()) < 100 * m.eps:
            return True
    return False


def up(t: Tensor) -> Tensor:
    return t.double() if t.is_floating_point() else t


def float64_reference(case: Case, xs: list[Tensor], dys: list[Tensor], nested: bool = False) -> Run | None:
    """For a float32 case: the same model (its float32 weights, exactly) and inputs in float64, under autograd."""
    if case.dtype != torch.float32:
        return None
    return autograd_reference(replace(case, dtype=torch.float64), [up(x) for x in xs], [up(d) for d in dys], nested)


def module_path(case: Case, x: Tensor, dy: Tensor, lean: bool) -> Run:
    """Paths 1 and 2: out = model(x); model.backward(dy), outside or inside lean()."""
    model = case.build()
    x, x_before = x.clone(), x.clone()
    with hg.lean(lean), seeded():
        out = model(x)
        out_value = out.detach().clone()
        model.zero_grad()
        model.backward(dy)
    where = "lean" if lean else "plain"
    assert_unchanged(f"{where}: the input", x_before, x)
    assert_unchanged(f"{where}: the output returned to the caller", out_value, out)
    dx = getattr(x, "g", None) if x.is_floating_point() else None
    return Run([out_value], [dx], {n: p.g for n, p in model.named_parameters()}, model.state_dict())


def _param_owners(model: hg.Module) -> list[tuple[str, hg.Module, str]]:
    """(name, owning module, attribute) of each parameter, in named_parameters() order."""
    seen, out = set(), []
    for prefix, m in model.named_modules():
        for pname, p in m._own_parameters():
            if id(p) not in seen:
                seen.add(id(p))
                out.append((f"{prefix}.{pname}" if prefix else pname, m, pname))
    return out


def twin_path(case: Case, xs: list[Tensor], dys: list[Tensor], nested: bool = False) -> Run:
    """The interop.to_torch twin under autograd; gradients brought to handgrad's layout."""
    model = case.build()
    twin = to_torch(model)
    leaves = [x.detach().clone().requires_grad_(x.is_floating_point()) for x in xs]
    with seeded():
        outs = [twin(twin(leaves[0]))] if nested else [twin(x) for x in leaves]
    torch.autograd.backward(outs, dys)
    grads = {}
    for name, owner, pname in _param_owners(model):
        g = twin.get_parameter(name).grad
        grads[name] = None if g is None else owner._import(pname, g)
    return Run([o.detach() for o in outs], [x.grad if x.requires_grad else None for x in leaves], grads,
               twin.state_dict())


def wrap_path(case: Case, xs: list[Tensor], dys: list[Tensor], nested: bool = False) -> Run:
    """Path 5: interop.wrap(model) in a torch graph, called once per input (or nested) in that one graph."""
    model = case.build()
    w = wrap(model).train(case.train)
    leaves = [x.detach().clone().requires_grad_(x.is_floating_point()) for x in xs]
    befores = [x.detach().clone() for x in xs]
    with seeded():
        outs = [w(w(leaves[0]))] if nested else [w(x) for x in leaves]
    torch.autograd.backward(outs, dys)
    for x, b in zip(leaves, befores):
        assert_unchanged("wrap: the input", b, x.detach())
    grads = {n: tp.grad for (n, _), tp in zip(model.named_parameters(), w.params)}
    return Run([o.detach() for o in outs], [x.grad if x.requires_grad else None for x in leaves], grads,
               model.state_dict())


BN_REFUSAL = "needs more than one value per channel"


def assert_one_line(exc: BaseException, kind: type, pattern: str = "") -> None:
    assert isinstance(exc, kind), f"expected {kind.__name__}, got {type(exc).__name__}: {exc}"
    message = str(exc)
    assert message and "\n" not in message, f"not a one-line message: {message!r}"
    assert pattern in message, f"{message!r} does not say {pattern!r}"


def expect_refusal(fn, kind: type, pattern: str) -> None:
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - the type is what is checked
        assert_one_line(exc, kind, pattern)
    else:
        raise AssertionError(f"expected {kind.__name__} saying {pattern!r}, nothing was raised")


def check_module_paths(case: Case, paths=("plain", "lean", "twin", "wrap")) -> str:
    """Run `case` on the module paths and compare each with the autograd reference; returns what happened."""
    note(f"model: {case.build()!r}")
    gen = torch.Generator().manual_seed(case.seed + 1)
    x = case.input(gen)
    dy = torch.randn(case.out_shape(), generator=gen, dtype=case.dtype)
    try:
        ref = autograd_reference(case, [x], [dy])
    except ValueError as exc:  # the documented refusal: BatchNorm in training on one value per channel
        assert_one_line(exc, ValueError, BN_REFUSAL)
        assert case.train and case.has("bn")
        for lean in (False, True):
            if "plain" in paths:
                expect_refusal(lambda: module_path(case, x, dy, lean), ValueError, BN_REFUSAL)
        if "twin" in paths and compare_twin(case):
            expect_refusal(lambda: twin_path(case, [x], [dy]), ValueError, "")
        if "wrap" in paths:
            expect_refusal(lambda: wrap_path(case, [x], [dy]), ValueError, BN_REFUSAL)
        return "refused (BatchNorm on one value per channel)"
    ref64 = float64_reference(case, [x], [dy])
    if "plain" in paths:
        compare("plain", module_path(case, x, dy, lean=False), ref, case.dtype, ref64)
    if "lean" in paths:
        compare("lean", module_path(case, x, dy, lean=True), ref, case.dtype, ref64)
    if "twin" in paths and compare_twin(case):
        compare("to_torch twin", twin_path(case, [x], [dy]), ref, case.dtype, ref64)
    if "wrap" in paths:
        # used twice in one torch graph: w(w(x)) where shapes allow, else w(x1) and w(x2)
        nested = case.inp == case.out and x.is_floating_point() and case.seed % 2 == 0
        xs = [x] if nested else [x, case.input(gen)]
        dys = [torch.randn(case.out_shape(), generator=gen, dtype=case.dtype) for _ in xs]
        ref2, ref2_64 = autograd_reference(case, xs, dys, nested), float64_reference(case, xs, dys, nested)
        compare("wrap (twice in one graph)", wrap_path(case, xs, dys, nested), ref2, case.dtype, ref2_64)
        if "twin" in paths and compare_twin(case):
            compare("to_torch twin (twice in one graph)", twin_path(case, xs, dys, nested), ref2, case.dtype,
                    ref2_64)
    return "compared"


def describe(case: Case) -> None:
    """Hypothesis statistics (pytest --hypothesis-show-statistics): which layers and structures ran."""
    for kind in sorted({op[0] for op in walk(case.ops)}):
        event(f"layer {kind}")
    event(f"{case.dtype}, {'train' if case.train else 'eval'}, container {case.container}")


# ------------------------------------------------------------------------------------ the training paths


OPTIMIZERS = [("sgd", 0.05, 0.0, 0.0, False), ("sgd", 0.02, 0.9, 0.0, False), ("sgd", 0.02, 0.9, 1e-2, True),
              ("sgd", 0.05, 0.0, 1e-2, False), ("adamw", 1e-2, 1e-2), ("adam", 1e-2, 0.0), ("adamw", 1e-2, 0.0),
              ("adam", 1e-2, 1e-2)]
# Adam divides by sqrt(v) + eps: a gradient that is zero up to rounding (a bias before BatchNorm, or one shared
# by every logit of a cross-entropy) takes a step of up to lr in a direction set by the rounding, which differs
# between implementations. So the Adams run in float64 only, with eps = 1e-5 (a rounding-level gradient of 1e-15
# then moves a weight by lr * 1e-10 at most; ordinary gradients are far above eps, so m, v and the bias
# corrections are what is compared).
ADAM_EPS = 1e-5
FLOAT32_OPTIMIZERS = [o for o in OPTIMIZERS if o[0] == "sgd"]


def handgrad_optimizer(spec: tuple, params):
    if spec[0] == "sgd":
        _, lr, momentum, wd, nesterov = spec
        return hg.SGD(params, lr=lr, momentum=momentum, weight_decay=wd, nesterov=nesterov)
    _, lr, wd = spec
    return (hg.Adam if spec[0] == "adam" else hg.AdamW)(params, lr=lr, weight_decay=wd, eps=ADAM_EPS)


def torch_optimizer(spec: tuple, params):
    if spec[0] == "sgd":
        _, lr, momentum, wd, nesterov = spec
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=wd, nesterov=nesterov)
    _, lr, wd = spec
    return (torch.optim.Adam if spec[0] == "adam" else torch.optim.AdamW)(params, lr=lr, weight_decay=wd,
                                                                          eps=ADAM_EPS)


def handgrad_loss(loss: tuple) -> hg.Module:
    kind, reduction = loss
    return (hg.CrossEntropyLoss if kind == "ce" else hg.MSELoss)(reduction=reduction)


def torch_loss(loss: tuple, out: Tensor, y: Tensor) -> Tensor:
    kind, reduction = loss
    return (F.cross_entropy if kind == "ce" else F.mse_loss)(out, y, reduction=reduction)


class Diverged(Exception):
    """The reference's training went to inf or NaN, or its loss grew DIVERGING-fold: the example says nothing
    (the fuzz tests reject it)."""


DIVERGING = 1e4


@dataclass
class TrainRun:
    losses: list[Tensor]
    state: dict[str, Tensor]
    error: BaseException | None = None  # raised at step len(losses)


def _steps(step, batches) -> tuple[list[Tensor], BaseException | None]:
    losses = []
    for i, (x, y) in enumerate(batches):
        try:
            with seeded(i):
                losses.append(step(x, y).detach().clone())
        except ValueError as exc:
            return losses, exc
    return losses, None


def train_reference(case: Case, loss: tuple, opt: tuple, batches) -> TrainRun:
    """torch.optim on the to_torch twin (models of built-in layers) or on the handgrad model's own forward under
    autograd (the others), torch's loss function."""
    model = case.build()
    if has_twin(case):
        net = to_torch(model)
        forward = net
    else:
        net = model
        for p in model.parameters():
            p.requires_grad_(True)
        forward = model.forward
    topt = torch_optimizer(opt, list(net.parameters()))

    def step(x, y):
        with torch_subgradients(), torch.enable_grad(), hg.lean(False):
            value = torch_loss(loss, forward(x), y)
        topt.zero_grad()
        value.backward()
        topt.step()
        return value

    losses, error = _steps(step, batches)
    state = net.state_dict()
    if not all(bool(torch.isfinite(t).all()) for t in [*losses, *state.values()] if t.is_floating_point()):
        raise Diverged(f"the reference training diverged: losses {[float(v) for v in losses]}")
    if losses and max(float(v) for v in losses) > DIVERGING * max(1.0, float(losses[0])):
        # on its way to inf: one more step overflows in one order of operations and not in another
        raise Diverged(f"the reference training is diverging: losses {[float(v) for v in losses]}")
    return TrainRun(losses, state, error)


def training_step_path(case: Case, loss: tuple, opt: tuple, batches) -> TrainRun:
    """Path 3: handgrad.training_step: the fused step for distinct Linear/ReLU chains, else the lean path."""
    model = case.build()
    loss_fn = handgrad_loss(loss)
    step = hg.training_step(model, loss_fn, handgrad_optimizer(opt, model.parameters()))
    fusable = unsupported(model, loss_fn) is None
    cnn = not fusable and fused_cnn.unsupported(model, loss_fn) is None
    assert isinstance(step, FusedStep) == fusable, f"training_step took the {type(step).__name__} path"
    assert isinstance(step, FusedCNNStep) == cnn, f"training_step took the {type(step).__name__} path"
    event(f"training_step: {'fused' if fusable else 'fused CNN' if cnn else 'module path (lean)'}"
          f"{', update fused' if fusable and step.fused_update() else ''}")
    losses, error = _steps(step, batches)
    return TrainRun(losses, model.state_dict(), error)


def learner_path(case: Case, loss: tuple, opt: tuple, batches, fused: bool) -> TrainRun:
    """Path 4: the Learner's batch step (fused where it applies and `fused`, else the module path in lean)."""
    model = case.build()
    x0, y0 = batches[0]
    learn = Learner(model, handgrad_loss(loss), handgrad_optimizer(opt, model.parameters()),
                    DataLoader(x0, y0, x0.shape[0]), x0, y0, n_classes=max(2, case.out[-1]), fused=fused)

    def step(x, y):
        learn._one_batch(x, y)
        return learn.loss

    losses, error = _steps(step, batches)
    return TrainRun(losses, model.state_dict(), error)


def wrap_training_path(case: Case, loss: tuple, opt: tuple, batches) -> TrainRun:
    """Path 5 trained: interop.wrap(model) with a torch optimizer on its parameters."""
    model = case.build()
    w = wrap(model).train(case.train)
    topt = torch_optimizer(opt, w.params)

    def step(x, y):
        value = torch_loss(loss, w(x), y)
        topt.zero_grad()
        value.backward()
        topt.step()
        return value

    losses, error = _steps(step, batches)
    return TrainRun(losses, model.state_dict(), error)


def compare_training(path: str, got: TrainRun, ref: TrainRun, dtype: torch.dtype, ref64: TrainRun | None = None
                     ) -> None:
    """Losses step by step and every weight and buffer after the steps (float32: plus NOISE_FACTOR times torch's
    own float32 error, as in `compare`)."""

    def slack(r: Tensor, r64: Tensor | None) -> float:
        if r64 is None or not r.is_floating_point():
            return 0.0
        return NOISE_FACTOR * float((r.double() - r64.double()).abs().amax()) if r.numel() else 0.0

    for i, (a, b) in enumerate(zip(got.losses, ref.losses)):
        b64 = ref64.losses[i] if ref64 is not None and i < len(ref64.losses) else None
        assert_close(f"{path}: loss at step {i}", a, b, dtype, slack(b, b64))
    if ref.error is not None:
        assert got.error is not None, f"{path}: the reference refused at step {len(ref.losses)} ({ref.error}); " \
                                      f"{path} did not"
        assert len(got.losses) == len(ref.losses), f"{path}: refused at step {len(got.losses)}, the reference " \
                                                   f"at {len(ref.losses)}"
        assert_one_line(got.error, ValueError, BN_REFUSAL)
        # (no state to compare: torch's BatchNorm counts the batch in num_batches_tracked before it refuses it)
        return
    elif got.error is not None:
        raise AssertionError(f"{path}: raised at step {len(got.losses)}: {got.error!r}") from got.error
    assert list(got.state) == list(ref.state), f"{path}: state dict keys {list(got.state)} != {list(ref.state)}"
    for name, t in got.state.items():
        r = ref.state[name]
        assert_close(f"{path}: {name} after {len(got.losses)} steps", t, r, dtype,
                     slack(r, ref64.state[name] if ref64 is not None else None))


def make_batches(case: Case, loss: tuple, sizes: list[int]):
    gen = torch.Generator().manual_seed(case.seed + 2)
    batches = []
    for n in sizes:
        x = case.input(gen, n)
        if loss[0] == "ce":
            y = torch.randint(0, case.out[-1], (n,), generator=gen)
        else:
            y = torch.randn(case.out_shape(n), generator=gen, dtype=case.dtype)
        batches.append((x, y))
    return batches


def check_training_paths(case: Case, loss: tuple, opt: tuple, sizes: list[int], learner_fused: bool = True,
                         paths=("training_step", "learner", "wrap")) -> str:
    note(f"model: {case.build()!r}")
    batches = make_batches(case, loss, sizes)
    befores = [(x.clone(), y.clone()) for x, y in batches]
    ref = train_reference(case, loss, opt, batches)
    ref64 = None
    if case.dtype == torch.float32:  # the same weights and batches in float64: torch's own float32 error
        ref64 = train_reference(replace(case, dtype=torch.float64), loss, opt, [(up(x), up(y)) for x, y in batches])
    if "training_step" in paths:
        compare_training("training_step", training_step_path(case, loss, opt, batches), ref, case.dtype, ref64)
    if "learner" in paths:
        compare_training("Learner._one_batch", learner_path(case, loss, opt, batches, learner_fused), ref,
                         case.dtype, ref64)
    if "wrap" in paths:
        compare_training("wrap + torch.optim", wrap_training_path(case, loss, opt, batches), ref, case.dtype,
                         ref64)
    for (x, y), (bx, by) in zip(batches, befores):
        assert_unchanged("a training batch", bx, x)
        assert_unchanged("a training target", by, y)
    return "refused" if ref.error is not None else "compared"


@st.composite
def training_setups(draw, case_strategy=None):
    loss = draw(st.sampled_from([("ce", "mean"), ("mse", "mean"), ("ce", "sum"), ("mse", "sum")]))
    case = draw(case_strategy if case_strategy is not None else
                cases(flat_output=loss[0] == "ce", learnable=True, max_len=3))
    opt = draw(st.sampled_from(OPTIMIZERS if case.dtype == torch.float64 else FLOAT32_OPTIMIZERS))
    n_steps = draw(st.integers(2, 3))
    top = 2 if case.inp[0] == "img" or case.batch <= 2 else 4
    sizes = [case.batch] + [draw(st.integers(1, top)) for _ in range(n_steps - 1)]
    return case, loss, opt, sizes, draw(st.booleans())


# -------------------------------------------------------------------------------------------- the fuzz tests


@fuzz(0.42)
@given(case=cases())
def test_fuzz_module_paths_match_autograd(case):
    """Paths 1, 2 and 5 (and the to_torch twin) on random models: outputs, every gradient, buffers."""
    describe(case)
    event(check_module_paths(case))


@fuzz(0.08)
@given(case=cases(containers=("seq",), inputs=("img",), user=False))
def test_fuzz_image_models_match_the_torch_twin(case):
    """More convolution, pooling and BatchNorm2d models (built-in layers only, so the twin runs in float64)."""
    describe(case)
    event(check_module_paths(case))


@fuzz(0.06)
@given(case=cases(inputs=("seq", "idxseq")))
def test_fuzz_sequence_models_match_autograd(case):
    """More models on sequences [N, L, F] (RNN, LSTM, self-attention, GPT blocks, position embeddings among the
    other layers): every module path against autograd."""
    describe(case)
    event(check_module_paths(case))


@fuzz(0.04)
@given(setup=training_setups(cases(inputs=("seq", "idxseq"), learnable=True, max_len=3, flat_output=True)))
def test_fuzz_sequence_models_train_as_torch_optim(setup):
    """Sequence models trained 2-3 steps on every training path against torch.optim."""
    case, loss, opt, sizes, learner_fused = setup
    describe(case)
    try:
        event(check_training_paths(case, loss, opt, sizes, learner_fused))
    except Diverged:
        reject()


@fuzz(0.28)
@given(setup=training_setups())
def test_fuzz_training_paths_match_torch_optim(setup):
    """Paths 3, 4 and 5 trained 2-3 steps (batch sizes varying between steps) against torch.optim."""
    case, loss, opt, sizes, learner_fused = setup
    describe(case)
    event(f"optimizer {opt[0]}{' momentum' if opt[0] == 'sgd' and opt[2] else ''}, loss {loss}")
    try:
        event(check_training_paths(case, loss, opt, sizes, learner_fused))
    except Diverged:
        reject()


@fuzz(0.16)
@given(setup=training_setups(mlp_cases()))
def test_fuzz_mlp_training_fused_and_not(setup):
    """Linear/ReLU chains (the fused step, its SGD update fused or not) and near misses it must refuse (a reused
    Linear, tied weights, a Tanh): every training path against torch.optim."""
    case, loss, opt, sizes, learner_fused = setup
    if loss[0] == "ce":
        assert case.out[0] == "flat"
    try:
        event(check_training_paths(case, loss, opt, sizes, learner_fused))
    except Diverged:
        reject()


@st.composite
def batchnorm_batch1_cases(draw):
    """BatchNorm1d first, on [1, F] in training: one value per channel."""
    case = draw(cases(inputs=("flat",), train=True, batch=1, max_len=2, dtypes=(torch.float64,), learnable=True))
    bn = ("bn", 1, case.inp[1], draw(st.sampled_from([0.1, None])), draw(st.booleans()))
    return Case(case.inp, (bn,) + case.ops, case.out, draw(st.sampled_from(["seq", "user"])), case.seed,
                case.dtype, True, 1)


@fuzz(0.03)
@given(case=batchnorm_batch1_cases())
def test_fuzz_batchnorm_on_one_value_per_channel_refuses_in_one_line(case):
    """Training on one value per channel: a one-line ValueError on every path, neither a crash nor a number."""
    assert check_module_paths(case).startswith("refused")
    assert check_training_paths(case, ("mse", "mean"), FLOAT32_OPTIMIZERS[0], [1, 2]) == "refused"


@st.composite
def opaque_cases(draw):
    how = draw(st.sampled_from(["mul", "add", "exp", "cat"]))
    case = draw(cases(inputs=("flat",), train=False, max_len=2, user=True))
    opaque = ("opaque", case.inp[1], how)
    where = draw(st.sampled_from(["first", "nested", "last"]))
    if where == "first":
        ops = (opaque,) + case.ops
    elif where == "nested":
        ops = (("seq", (("act", "tanh", ()), opaque)),) + case.ops
    else:
        if case.out[0] != "flat":
            return Case(case.inp, (opaque,) + case.ops, case.out, "seq", case.seed, case.dtype, False, case.batch)
        ops = case.ops + (("opaque", case.out[1], how),)
    return Case(case.inp, ops, case.out, draw(st.sampled_from(["seq", "user"])), case.seed, case.dtype, False,
                case.batch)


OPAQUE_REFUSAL = r"Opaque.forward applies "


@fuzz(0.03)
@given(case=opaque_cases())
def test_fuzz_a_raw_torch_op_in_a_module_without_bwd_refuses_backward_in_one_line(case):
    """Every path refuses the backward with a one-line RuntimeError naming the op, never a wrong number."""
    gen = torch.Generator().manual_seed(case.seed)
    x = case.input(gen)
    dy = torch.randn(case.out_shape(), generator=gen, dtype=case.dtype)
    for lean in (False, True):
        expect_refusal(lambda: module_path(case, x, dy, lean), RuntimeError, OPAQUE_REFUSAL)
    expect_refusal(lambda: wrap_path(case, [x], [dy]), RuntimeError, OPAQUE_REFUSAL)
    y = torch.randn(case.out_shape(), generator=gen, dtype=case.dtype)
    model = case.build()
    step = hg.training_step(model, hg.MSELoss(), hg.SGD(model.parameters(), lr=0.1))
    expect_refusal(lambda: step(x, y), RuntimeError, OPAQUE_REFUSAL)
    model = case.build()
    learn = Learner(model, hg.MSELoss(), hg.SGD(model.parameters(), lr=0.1), DataLoader(x, y, case.batch), x, y, 2)
    expect_refusal(lambda: learn._one_batch(x, y), RuntimeError, OPAQUE_REFUSAL)


# ------------------------------------------------------------------------------- the harness can fail
# Each comparison above is shown to fail on a deliberately wrong library: the same check first passes on the
# real code, then raises AssertionError naming what is wrong once one piece is broken (monkeypatched).

F64 = torch.float64
MLP = Case(("flat", 3), (("linear", 3, 4, True), ("act", "tanh", ()), ("linear", 4, 2, True)), ("flat", 2), "seq", 1,
           F64, True, 3)
LN_RELU = Case(("flat", 4), (("linear", 4, 4, True), ("ln", 4, True, True), ("act", "relu", ()),
                             ("linear", 4, 2, True)), ("flat", 2), "seq", 2, F64, True, 3)
REUSED = Case(("flat", 3), (("reuse", ("linear", 3, 3, True), ("act", "tanh", ())),), ("flat", 3), "seq", 3, F64, True,
              2)
TIED = Case(("flat", 3), (("tied", 3, True, True, ("act", "tanh", ())),), ("flat", 3), "bare", 3, F64, True, 2)
LOOP = Case(("flat", 4), (("loop", 2, 2, 3),), ("flat", 3), "user", 4, F64, True, 2)
BATCHNORM = Case(("flat", 3), (("linear", 3, 3, True), ("bn", 1, 3, 0.1, True)), ("flat", 3), "seq", 5, F64, True, 4)
TANH_FIRST = Case(("flat", 3), (("act", "tanh", ()), ("linear", 3, 2, True)), ("flat", 2), "seq", 6, F64, True, 3)
DROPOUT = Case(("flat", 5), (("linear", 5, 5, True), ("dropout", 0.5), ("linear", 5, 2, True)), ("flat", 2), "seq", 7,
               F64, True, 4)
FUSABLE = Case(("flat", 3), (("linear", 3, 5, True), ("act", "relu", ()), ("linear", 5, 2, True)), ("flat", 2), "seq",
               8, F64, True, 4)
SGD = ("sgd", 0.05, 0.0, 0.0, False)
LSTM = Case(("seq", 3, 4), (("rnn", "lstm", 4, 5, 2, True),), ("seq", 3, 5), "seq", 7, F64, True, 2)
ATTENTION = Case(("seq", 4, 6), (("attn", 6, 2, True, True, True, False),), ("seq", 4, 6), "seq", 3, F64, True, 2)
GPT_BLOCK = Case(("idxseq", 5, 4), (("embed", 5, 6, None), ("posemb", 4, 6), ("block", 6, 3, False),
                                     ("flatten", 1, -1)), ("flat", 24), "seq", 5, F64, True, 3)


def _scale_output(monkeypatch, owner, name: str, factor: float = 1.001, static: bool = False) -> None:
    """owner.name now returns its result (each tensor of it) times `factor`."""
    original = getattr(owner, name)

    def scaled(*args, **kwargs):
        out = original(*args, **kwargs)
        if isinstance(out, tuple):
            return tuple(o * factor if isinstance(o, Tensor) else o for o in out)
        return out * factor

    monkeypatch.setattr(owner, name, staticmethod(scaled) if static else scaled)


def _after(monkeypatch, owner, name: str, then) -> None:
    """owner.name now runs `then(args, result)` after itself."""
    original = getattr(owner, name)

    def patched(*args, **kwargs):
        out = original(*args, **kwargs)
        then(args, out)
        return out

    monkeypatch.setattr(owner, name, patched)


def _learner_without_zero_grad(self, xb, yb):
    with hg.lean():
        self.loss = self.step_module(xb, yb)
        self.step_module.backward(needs_input_grad=False)  # gradients pile up over the steps


def _tanh_writing_over_its_input(self, dy, x):
    y = self.out
    x.mul_(0.5)
    return dy * (1.0 - y * y)


def _sgd_without_nesterov(original):
    def step_group(self, group, states):
        return original(self, {**group, "nesterov": False}, states)
    return step_group


MUTANTS = {
    # name: (break it, the check, what the failure says)
    "tanh-backward-plain": (lambda mp: _scale_output(mp, hg.Tanh, "bwd"),
                            lambda: check_module_paths(MLP, paths=("plain",)), "plain: gradient of input 0"),
    "tanh-backward-float32": (lambda mp: _scale_output(mp, hg.Tanh, "bwd"),
                              lambda: check_module_paths(replace(MLP, dtype=torch.float32), paths=("plain",)),
                              "plain: gradient of input 0"),
    "relu-in-place-backward-only-in-lean": (lambda mp: _scale_output(mp, activation, "relu_grads_"),
                                            lambda: check_module_paths(LN_RELU, paths=("lean",)), "lean: gradient"),
    "bias-gradient-only": (lambda mp: _after(mp, _linear, "accumulate_sum", lambda a, out: a[0].g.mul_(1.001)),
                           lambda: check_module_paths(MLP, paths=("plain",)), ".bias: max |got - ref|"),
    "bias-gradient-missing": (lambda mp: mp.setattr(_linear, "accumulate_sum", lambda p, t, dims: None),
                              lambda: check_module_paths(MLP, paths=("plain",)), "bias: no gradient"),
    "reused-layer-gradient-overwritten": (
        lambda mp: mp.setattr(_linear, "accumulate_mm", lambda p, a, b: setattr(p, "g", torch.mm(a, b))),
        lambda: check_module_paths(REUSED, paths=("plain",)), "plain: gradient of 0.0.weight"),
    "tied-weight-gradient-overwritten": (
        lambda mp: mp.setattr(_linear, "accumulate_mm", lambda p, a, b: setattr(p, "g", torch.mm(a, b))),
        lambda: check_module_paths(TIED, paths=("lean",)), "lean: gradient of 0.weight"),
    "replayed-view-gradient-lost": (lambda mp: mp.setattr(_calls.View, "grad", lambda self: torch.zeros_like(self.src)),
                                    lambda: check_module_paths(LOOP, paths=("plain",)), "plain: gradient of input 0"),
    "dropout-backward-ignores-the-mask": (lambda mp: mp.setattr(hg.Dropout, "bwd", lambda self, dy, x: dy),
                                          lambda: check_module_paths(DROPOUT, paths=("plain",)), "plain: gradient"),
    "backward-writes-over-the-input": (lambda mp: mp.setattr(hg.Tanh, "bwd", _tanh_writing_over_its_input),
                                       lambda: check_module_paths(TANH_FIRST, paths=("plain",)),
                                       "plain: the input was modified in place"),
    "forward-off-caught-by-the-twin": (lambda mp: _after(mp, hg.LayerNorm, "forward", lambda a, out: out.add_(1e-3)),
                                       lambda: check_module_paths(LN_RELU, paths=("twin",)), "twin: output 0"),
    "running-statistics-off": (lambda mp: _after(mp, _BatchNorm, "forward",
                                                 lambda a, out: a[0].running_mean.add_(1e-3)),
                               lambda: check_module_paths(BATCHNORM, paths=("twin",)), "running_mean after"),
    "wrap-backward": (lambda mp: _scale_output(mp, _interop._HandgradFunction, "backward", static=True),
                      lambda: check_module_paths(MLP, paths=("wrap",)), "wrap (twice in one graph): gradient"),
    "fused-step-gradient": (lambda mp: _scale_output(mp, FusedStep, "_loss_and_grad"),
                            lambda: check_training_paths(FUSABLE, ("ce", "mean"), SGD, [4, 3], paths=("training_step",)),
                            "training_step: loss at step 0"),
    "learner-accumulates-over-steps": (lambda mp: mp.setattr(Learner, "_forward_backward", _learner_without_zero_grad),
                                       lambda: check_training_paths(LN_RELU, ("mse", "mean"), SGD, [3, 3],
                                                                    learner_fused=False, paths=("learner",)),
                                       "Learner._one_batch"),
    "sgd-nesterov-ignored": (lambda mp: mp.setattr(hg.SGD, "_step_group", _sgd_without_nesterov(hg.SGD._step_group)),
                             lambda: check_training_paths(MLP, ("mse", "mean"), ("sgd", 0.02, 0.9, 1e-2, True), [3, 3],
                                                          paths=("training_step",)), "training_step: "),
    "adamw-decay-coupled": (lambda mp: mp.setattr(hg.AdamW, "decoupled", False),
                            lambda: check_training_paths(MLP, ("ce", "sum"), ("adamw", 1e-2, 1e-2), [3, 2],
                                                         paths=("learner",)), "Learner._one_batch: "),
    "lstm-backward": (lambda mp: _scale_output(mp, hg.LSTM, "bwd"),
                      lambda: check_module_paths(LSTM, paths=("plain",)), "plain: gradient"),
    "attention-backward-in-lean": (lambda mp: _scale_output(mp, hg.MultiheadAttention, "bwd"),
                                   lambda: check_module_paths(ATTENTION, paths=("lean",)), "lean: gradient"),
    "gpt-block-training": (lambda mp: _scale_output(mp, hg.LayerNorm, "bwd"),
                           lambda: check_training_paths(GPT_BLOCK, ("ce", "mean"), ("adamw", 1e-2, 1e-2), [3, 2],
                                                        paths=("training_step",)), "training_step: "),
    "wrap-training": (lambda mp: _scale_output(mp, _interop._HandgradFunction, "backward", static=True),
                      lambda: check_training_paths(BATCHNORM, ("mse", "sum"), ("sgd", 0.02, 0.9, 0.0, False), [4, 2],
                                                   paths=("wrap",)), "wrap + torch.optim: "),
}


@pytest.mark.parametrize("name", list(MUTANTS))
def test_the_harness_catches_a_deliberately_wrong_library(name, monkeypatch):
    breaks, check, says = MUTANTS[name]
    check()  # passes on the real code
    breaks(monkeypatch)
    with pytest.raises(AssertionError) as caught:
        check()
    assert says in str(caught.value), f"failed for another reason: {caught.value}"


def test_the_harness_catches_a_refusal_that_is_not_one():
    with pytest.raises(AssertionError, match="nothing was raised"):
        expect_refusal(lambda: None, ValueError, "")
    with pytest.raises(AssertionError, match="not a one-line message"):
        expect_refusal(lambda: (_ for _ in ()).throw(ValueError("two\nlines")), ValueError, "")
    with pytest.raises(AssertionError, match="expected RuntimeError, got ValueError"):
        expect_refusal(lambda: (_ for _ in ()).throw(ValueError("one line")), RuntimeError, "")


# ---------------------------------------------------------------------------------- bugs the fuzzing found
# Minimal reproductions of bugs the fuzzing found (each failed before its fix).

D = torch.float64


def test_an_identity_layer_inside_a_module_without_bwd_counts_its_path_once():
    """Module.__call__ gives a layer that returns its input a distinct tensor (out.view_as(out)); that view was
    recorded by the enclosing composite's watch as well, so the path counted twice (Sequential(): three times)."""
    class Chain(hg.Module):  # no bwd: differentiated by replaying its sub-calls
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x)

    for inner in (hg.Dropout(0.0), hg.Dropout(0.5).eval(), hg.Sequential(), hg.Flatten(1, -1)):
        x = torch.randn(2, 3, dtype=D)
        model = Chain(inner)
        model(x)
        model.backward(torch.ones(2, 3, dtype=D))
        torch.testing.assert_close(x.g, torch.ones(2, 3, dtype=D), msg=f"{inner!r}")


def test_to_torch_of_a_model_without_parameters_takes_the_buffers_dtype():
    bn = hg.BatchNorm1d(3, affine=False).double().eval()
    twin = to_torch(bn)
    assert twin.running_mean.dtype == D
    x = torch.randn(4, 3, dtype=D)
    torch.testing.assert_close(twin(x), bn(x))


def test_max_pool_refuses_a_window_wholly_in_the_padding_in_one_line():
    """The forward returned -inf with out-of-range argmax indices and the backward failed in scatter_add_."""
    pool = hg.MaxPool2d(2, stride=2, padding=1, dilation=2)
    expect_refusal(lambda: pool(torch.randn(1, 2, 1, 1, dtype=D)), ValueError, "covers padding only")
    expect_refusal(lambda: hg.MaxPool2d(2, padding=2)(torch.randn(1, 1, 5, 5)), ValueError,
                   "more than half the kernel size")
