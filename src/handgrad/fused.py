"""A fused training step for MLPs: Sequential(Linear, ReLU, ..., Linear) with CrossEntropyLoss or MSELoss.

The same hand-written formulas as `Linear.bwd`, `ReLU.bwd` and the losses' `bwd`, run as one flat
sequence of torch calls on buffers kept from step to step, with none of the per-module bookkeeping:

- forward: Y = addmm(b, X, W) into the layer's output buffer; ReLU clamps that buffer in place
  (Linear's backward needs its input, not its output).
- the loss's gradient is formed in the forward pass from the loss's own log-probabilities:
  cross-entropy dL/dX = (exp(logp) - onehot(y)) / N; MSE dL/dY = 2 (Y - T) / numel.
- backward, last layer first: dW = X.T @ dY (BLAS reads the transposed view, no copy),
  db = dY.sum(0), dX = dY @ W.T into a gradient buffer, then dX *= sign(ReLU output), the mask
  written over the saved output (which nothing needs any more).
- the update: with SGD without momentum, each layer's update is applied as soon as its dW is formed,
  after its dX has been taken from the old weights: W <- W (1 - lr wd) - lr X.T @ dY as one addmm into
  W itself. No gradient buffer is filled and the weights are read once; `.g` stays None. With any other
  optimizer (or momentum) the gradients go into `.g` as usual and `opt.step()` runs.

What it gives up: the layers' `.args`, `.out` and intermediate `.g` are not set (use the module path to
look at them), and a step whose loss is not finite is not applied. Inputs other than [N, F] (a Linear
also takes [..., F]) go through the module path, inside lean(). tests/test_fused.py checks it against
the module path.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from .functional import _mse_diff, pick_classes
from .layers import Linear, ReLU
from .losses import CrossEntropyLoss, MSELoss
from .module import Module, Parameter, Sequential, WithLoss, accumulate_mm, accumulate_sum, lean
from .optim import SGD, Optimizer


def unsupported(model: Module, loss_fn: Module) -> str | None:
    """Why (model, loss_fn) cannot take the fused step, or None when it can."""
    if not isinstance(model, Sequential) or not len(model):
        return "the model is not a Sequential"
    from .course import Lin  # the course's name for Linear: the same layer

    kinds = [Linear if type(m) is Lin else type(m) for m in model]
    if kinds[0] is not Linear or kinds[-1] is not Linear:
        return "the model does not start and end with Linear"
    for a, b in zip(kinds, kinds[1:]):
        if not ((a is Linear and b in (Linear, ReLU)) or (a is ReLU and b is Linear)):
            return f"{a.__name__} followed by {b.__name__} is not a Linear/ReLU chain"
    if len({id(m) for m in model}) != len(model):
        return "a layer is used more than once (the module path gives every use its own record)"
    return params_unsupported(model) or loss_unsupported(loss_fn)


def params_unsupported(model: Module) -> str | None:
    """Why a fused step cannot own `model`'s parameters (tied, or plain tensors), or None when it can."""
    params = [p for m in model.modules() for _, p in m._own_parameters()]
    if len({id(p) for p in params}) != len(params):
        return "layers share a parameter (tied weights)"
    if not all(isinstance(p, Parameter) for p in params):
        return "a layer's parameters are plain tensors (Lin(w, b))"
    return None


def loss_unsupported(loss_fn: Module) -> str | None:
    """Why LossGrad cannot take `loss_fn`, or None when it can."""
    if type(loss_fn) not in (CrossEntropyLoss, MSELoss):
        return f"the loss is {type(loss_fn).__name__} (fused: CrossEntropyLoss, MSELoss)"
    if loss_fn.reduction not in ("mean", "sum"):
        return f"the loss's reduction is {loss_fn.reduction!r} (fused: 'mean', 'sum')"
    return None


class FusedStep:
    """`step(x, y)`: forward, loss, hand-written backward and optimizer step of an MLP; returns the loss."""

    def __init__(self, model: Module, loss_fn: Module, opt: Optimizer) -> None:
        why = unsupported(model, loss_fn)
        if why is not None:
            raise ValueError(f"no fused step for this model: {why}")
        assert isinstance(model, Sequential)
        self.model, self.loss_fn, self.opt = model, loss_fn, opt
        self.linears: list[Linear] = [m for m in model if isinstance(m, Linear)]
        self.param_ids = [id(p) for lin in self.linears for p in (lin.weight, lin.bias) if p is not None]
        # relu_after[i]: a ReLU follows linear i
        layers = list(model)
        self.relu_after = [layers.index(lin) + 1 < len(layers) and isinstance(layers[layers.index(lin) + 1], ReLU)
                           for lin in self.linears]
        self.plans: dict[tuple, tuple[list[tuple[Tensor, Tensor | None]], Tensor, list[Tensor], list[Tensor]]] = {}
        self._with_loss: WithLoss | None = None  # the module path, for inputs that are not [N, F]
        self.loss_grad = LossGrad(loss_fn)

    def _plan(self, x: Tensor) -> tuple[list[tuple[Tensor, Tensor | None]], Tensor, list[Tensor], list[Tensor]]:
        """Per linear: its output buffer (N, out) and the buffer for the gradient of its input (N, in);
        a vector of N ones (db = dY.T @ 1); and the transposed views the backward reads (each output buffer's,
        each weight's: making a view costs as much as a small op). Kept between steps for this batch size,
        dtype and device, and the weights' storage (`to()` moves them, `.data =` replaces them)."""
        key = (x.shape[0], x.dtype, x.device, *(lin.weight.data_ptr() for lin in self.linears))
        plan = self.plans.get(key)
        if plan is None:
            if len(self.plans) > 4:  # e.g. a last, smaller batch of each epoch; keep few
                self.plans.clear()
            n, like = x.shape[0], dict(dtype=x.dtype, device=x.device)
            bufs = [(torch.empty(n, lin.out_features, **like), torch.empty(n, lin.in_features, **like) if i else None)
                    for i, lin in enumerate(self.linears)]
            plan = self.plans[key] = (bufs, torch.ones(n, **like), [out.t() for out, _ in bufs],
                                      [lin.weight.t() for lin in self.linears])
        return plan

    def fused_update(self) -> bool:
        """True when the optimizer's update is applied inside the backward: SGD without momentum, one parameter
        group, over exactly this model's parameters."""
        own = self.param_ids
        return type(self.opt) is SGD and len(self.opt.param_groups) == 1 and self.opt.momentum == 0 and \
            [id(p) for p in self.opt.params] == own

    def __call__(self, x: Tensor, y: Tensor, step: bool = True) -> Tensor:
        """One training step; with step=False only forward, loss and the gradients into `.g` (the caller
        runs the optimizer, e.g. after averaging the gradients over ranks)."""
        check_batch(x)
        linears, relu_after = self.linears, self.relu_after
        if x.dim() != 2:  # Linear on [..., F] (a sequence, an unbatched input): the module path
            if self._with_loss is None:
                self._with_loss = WithLoss(self.model, self.loss_fn)
            return module_step(self._with_loss, self.opt, x, y, step)
        if x.shape[1] != linears[0].in_features:
            raise ValueError(f"Linear({linears[0].in_features} -> {linears[0].out_features}) expects input "
                             f"[N, {linears[0].in_features}], got {list(x.shape)}")
        plan, ones, outs_t, weights_t = self._plan(x)
        # forward: acts[i] is the input of linear i (acts[0] = x), after its ReLU
        acts = [x]
        for lin, (out, _), relu in zip(linears, plan, relu_after):
            if lin.bias is not None:
                torch.addmm(lin.bias, acts[-1], lin.weight, out=out)  # (N, out_features)
            else:
                torch.mm(acts[-1], lin.weight, out=out)
            if relu:
                out.clamp_min_(0.0)
            acts.append(out)
        loss, d = self._loss_and_grad(acts.pop(), y)  # d: dL/d(output), (N, n_out)
        fused = step and self.fused_update()
        if fused and not math.isfinite(loss.item()):
            return loss  # not applied: the caller's guard reports it; the weights stay as they were
        # backward (and update), last layer first
        if not fused:
            self.opt.zero_grad()
        lr, wd = self.opt.lr, getattr(self.opt, "weight_decay", 0.0)
        for i in range(len(linears) - 1, -1, -1):
            lin, a, w = linears[i], acts[i], linears[i].weight
            # dX = dY @ W.T from the old weights; its ReLU mask comes after dW, which still reads a
            dx = torch.mm(d, weights_t[i], out=plan[i][1]) if i else None
            a_t = outs_t[i - 1] if i else a.t()  # X.T: a kept view of the previous output buffer
            if fused:  # W <- W (1 - lr wd) - lr X.T @ dY,  b <- b (1 - lr wd) - lr dY.T @ 1
                w.addmm_(a_t, d, beta=1 - lr * wd, alpha=-lr)
                if lin.bias is not None:
                    lin.bias.addmv_(d.t(), ones, beta=1 - lr * wd, alpha=-lr)
            else:
                accumulate_mm(w, a_t, d)
                if lin.bias is not None:
                    accumulate_sum(lin.bias, d, 0)
                for hook in Module._post_backward_hooks:  # e.g. start this layer's gradient all-reduce
                    hook(lin)
            if dx is not None and relu_after[i - 1]:
                dx.mul_(a.sign_())  # the mask written over the saved output a, not needed any more
            d = dx
        if fused:
            self.opt.steps += 1
        elif step:
            self.opt.step()
        return loss

    def _loss_and_grad(self, out: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        return self.loss_grad(out, y)


class LossGrad:
    """`(loss, dL/d out)` of CrossEntropyLoss or MSELoss in one pass: the loss as the loss module computes it,
    and its gradient formed from the loss's own log-probabilities (no backward pass of the loss)."""

    def __init__(self, loss_fn: Module) -> None:
        self.loss_fn = loss_fn
        self._minus_cache: tuple[Tensor | None, tuple | None] = (None, None)

    def __call__(self, out: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        mean = self.loss_fn.reduction == "mean"
        if isinstance(self.loss_fn, MSELoss):
            diff = _mse_diff(out, y)  # (N, C) or (N,)
            loss = diff.pow(2).mean() if mean else diff.pow(2).sum()
            d = diff.mul_(2.0 / max(diff.numel(), 1) if mean else 2.0).reshape(out.shape)
            return loss, d
        # cross-entropy: L = -mean(logp_y),  dL/dX = (softmax - onehot) * scale,  softmax = exp(logp)
        logp = torch.log_softmax(out, dim=1)  # (N, C), the forward kernel (max-shifted)
        scale = 1.0 / max(out.shape[0], 1) if mean else 1.0
        picked = pick_classes(logp, y)  # (N, 1)
        loss = picked.sum().mul_(-scale)  # -mean or -sum (a sum and a product: cheaper than mean here)
        d = logp.exp_().mul_(scale)  # softmax * scale
        return loss, d.scatter_add_(1, y[:, None], self._minus(picked, -scale))

    def _minus(self, like: Tensor, value: float) -> Tensor:
        """A cached (N, 1) tensor filled with `value` (the -1/N of the one-hot term)."""
        cached, key = self._minus_cache
        if key != (like.shape, like.dtype, like.device, value):
            cached = torch.full_like(like, value)
            self._minus_cache = cached, (like.shape, like.dtype, like.device, value)
        return cached


def check_batch(x: Tensor) -> None:
    """A training step needs at least one example (an empty batch has no mean loss, and nothing to learn)."""
    if x.dim() and x.shape[0] == 0:
        raise ValueError(f"training step: expected a batch of at least one example, got an empty batch (input "
                         f"{list(x.shape)})")
    if x.numel() == 0:  # e.g. sequences of length 0: nothing to learn from, and a mean over nothing
        raise ValueError(f"training step: expected examples with at least one value, got an empty input "
                         f"{list(x.shape)}")


def module_step(with_loss: WithLoss, opt: Optimizer, x: Tensor, y: Tensor, step: bool = True) -> Tensor:
    """The module path's training step inside `lean()`: forward, loss, hand-written backward into `.g`, and the
    optimizer's step (unless step=False); returns the loss."""
    check_batch(x)
    with lean():
        loss = with_loss(x, y)
        opt.zero_grad()
        with_loss.backward(needs_input_grad=False)
    if step:
        opt.step()
    return loss


def training_step(model: Module, loss_fn: Module, opt: Optimizer) -> Callable[[Tensor, Tensor], Tensor]:
    """The fastest hand-written training step for (model, loss_fn, opt): `step(x, y)` runs forward, loss,
    backward and the optimizer step, and returns the loss. The fused step where the model is an MLP or a
    CNN, else the module path inside `lean()` (activations freed as backward goes)."""
    fused = fused_step(model, loss_fn, opt)
    if fused is not None:
        return fused
    with_loss = WithLoss(model, loss_fn)
    return lambda x, y: module_step(with_loss, opt, x, y)


def fused_step(model: Module, loss_fn: Module, opt: Optimizer) -> "FusedStep | FusedCNNStep | None":
    """The fused step for (model, loss_fn, opt): FusedStep for an MLP, FusedCNNStep for a CNN; None when neither
    takes it."""
    from . import fused_cnn

    if unsupported(model, loss_fn) is None:
        return FusedStep(model, loss_fn, opt)
    if fused_cnn.unsupported(model, loss_fn) is None:
        return fused_cnn.FusedCNNStep(model, loss_fn, opt)
    return None
