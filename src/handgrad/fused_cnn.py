"""A fused training step for CNNs: the pieces `models.cnn` is built from (Unflatten, Conv2d -> BatchNorm2d ->
ReLU, residual blocks, global average pooling, Flatten, Linear) with CrossEntropyLoss or MSELoss.

The same hand-written formulas as the layers' `bwd`, run as one flat program without the per-module records,
and keeping less: autograd (and the module path) keep every layer's output that a backward reads; this step
keeps only each convolution's raw output Z and its batch statistics. Everything after it — the batch norm's
output, the ReLU, a residual sum — is one cheap elementwise pass away from Z, so backward computes it again
when it needs it (as the next convolution's input for its weight gradient, and as the ReLU's mask):

    forward (per Conv2d -> BatchNorm2d [-> ReLU]):
        Z = conv(X),  Zc = Z - mean       Zc kept (written over Z), and invstd = 1 / sqrt(var + eps), (C,)
        Y = relu(beta + Zc s),  s = gamma invstd          not kept
    backward, given dY:
        Y again from Zc (the same two calls as forward: the same bits), dY *= (Y > 0)
        dbeta = sum dY,  dgamma = invstd sum dY Zc
        dZ = s (dY - dbeta / M) - Zc s invstd dgamma / M     (in place over Zc)
        dW, dX: the convolution's own weight and input gradients (Conv2d._weight_grad, Conv2d._input_grad)

A residual block's output relu(body(X) + shortcut(X)) is rebuilt the same way from the two branches' Z. The
batch norm's running statistics move as BatchNorm2d's do. What it gives up: the layers' `.args`, `.out` and
intermediate `.g` are not set (use the module path to look at them). tests/test_fused_cnn.py checks it against
the module path and against torch's autograd.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .functional import lin, relu_grads_
from .fused import LossGrad, check_batch, loss_unsupported, module_step, params_unsupported
from .layers import AdaptiveAvgPool2d, BatchNorm2d, Conv2d, Flatten, Linear, ReLU, Residual, Unflatten
from .module import Module, Sequential, WithLoss, accumulate_mm, accumulate_sum, add_grad
from .optim import Optimizer

Source = Callable[[], Tensor] | Tensor  # how a node gets its input again in backward: kept, or rebuilt


def _materialize(src: Source) -> Tensor:
    return src() if callable(src) else src


def _done(*modules: Module | None) -> None:
    """Tell the backward hooks (the data-parallel gradient all-reduce) that these modules' gradients are final."""
    for m in modules:
        if m is not None:
            for hook in Module._post_backward_hooks:
                hook(m)


def _check_sum(body: Tensor, shortcut_shape: torch.Size) -> None:
    if body.shape != shortcut_shape:
        raise ValueError(f"Residual: body output {list(body.shape)} and shortcut output {list(shortcut_shape)} "
                         "differ; give a shortcut that projects X to the body's shape")


class _Rebuilt:
    """A node whose output is not kept but rebuilt (`rebuild`) from what its forward kept."""

    saved: tuple | None = None
    cache: Tensor | None = None

    def rebuild(self, into: Tensor | None = None) -> Tensor:
        raise NotImplementedError

    def output(self) -> Tensor:
        """The output rebuilt, once per backward: the consumers of it share it."""
        if self.cache is None:
            self.cache = self.rebuild()
        return self.cache


class _ConvBN(_Rebuilt):
    """Conv2d [-> BatchNorm2d] [-> ReLU]: keeps Z - mean and invstd; Y is rebuilt from them."""

    def __init__(self, conv: Conv2d, bn: BatchNorm2d | None, relu: bool) -> None:
        self.conv, self.bn, self.relu = conv, bn, relu
        # reads the data (kept by the caller anyway): Z is computed again from it when needed instead of kept
        # (a convolution of the few input channels is cheap; its Z is the largest activation of the step)
        self.recompute_z = False

    def _z(self) -> Tensor:
        """Z - mean: as kept, or computed again from the input (the same calls as forward: the same bits)."""
        src, xc, _, mean = self.saved
        return xc if xc is not None else self.conv.forward(_materialize(src)).sub_(mean)

    def forward(self, x: Tensor, src: Source, into: Tensor | None = None) -> tuple[Tensor, Source]:
        """(Y, how to get Y again); with `into` (a residual sum), Y is added into it and that is returned."""
        bn = self.bn
        z = self.conv.forward(x)  # (N, C, H, W), after the layer's own input checks
        if into is not None:
            _check_sum(into, z.shape)
        if bn is None:
            self.saved = (src, z, None, None)
            if into is None and not self.relu:
                return z, z  # Z itself is the output, kept
            return self.rebuild(into), self.output
        bn._shape(z)
        m = z.numel() // z.shape[1]
        if m == 1:
            raise ValueError(f"BatchNorm2d in training needs more than one value per channel; got input "
                             f"{list(z.shape)} (batch size 1): use a larger batch or eval()")
        mean = z.mean((0, 2, 3), keepdim=True)  # (1, C, 1, 1)
        xc = z.sub_(mean)  # Z - mean, kept (over Z, which nothing else reads)
        var = (xc * xc).mean((0, 2, 3))  # (C,), biased, as the normalisation uses (two passes, as BatchNorm2d)
        invstd = (var + bn.eps).rsqrt()
        bn.num_batches_tracked.add_(1)
        bn.running_mean.lerp_(mean.view(-1), bn.momentum)
        bn.running_var.lerp_(var * (m / (m - 1)), bn.momentum)  # unbiased, as torch keeps it
        self.saved = (src, xc, invstd, mean)
        y = self.rebuild(into)
        if self.recompute_z:
            self.saved = (src, None, invstd, mean)
        return y, self.output

    def _scale(self) -> Tensor:
        """s = gamma invstd, (1, C, 1, 1)."""
        invstd, gamma = self.saved[2], self.bn.weight
        return (invstd if gamma is None else gamma * invstd).view(1, -1, 1, 1)

    def rebuild(self, into: Tensor | None = None) -> Tensor:
        """Y from what forward kept: relu?(Z) without a batch norm, else relu?(beta + (Z - mean) s); a new
        tensor, or added into `into`. Forward computes its Y with this too: a rebuilt Y has the same bits."""
        z = self._z()
        if self.bn is None:
            y = z.clamp_min(0.0) if self.relu else z
            return y.clone() if into is None and y is z else y if into is None else into.add_(y)
        s, beta = self._scale(), self.bn.bias
        if into is not None and not self.relu:  # into + (Z - mean) s + beta, in place
            into.addcmul_(z, s)
            return into if beta is None else into.add_(beta.view(1, -1, 1, 1))
        y = torch.mul(z, s) if beta is None else torch.addcmul(beta.view(1, -1, 1, 1), z, s)
        if self.relu:
            y.clamp_min_(0.0)
        return y if into is None else into.add_(y)

    def backward(self, box: list[Tensor], need_dx: bool, into: Tensor | None = None) -> tuple[Tensor | None, Tensor]:
        """(dX, X): the input gradient (None unless need_dx; added into `into` when given) and the input as rebuilt
        for the weight gradient. dY comes in `box` (taken out of it: this holds its only reference)."""
        dy = box.pop()
        src, _, invstd, _ = self.saved
        if self.relu:
            dy = relu_grads_(dy, self.output())  # dY (Y > 0), written over the rebuilt Y
        self.cache = None
        conv, bn = self.conv, self.bn
        if bn is None:
            dz = dy
        else:
            z = self._z()
            m = z.numel() // z.shape[1]
            scale, xc = self._scale(), z  # xc: Z - mean, kept by forward
            dbeta = dy.sum((0, 2, 3))  # (C,)
            dgamma = (dy * xc).sum((0, 2, 3)).mul_(invstd)  # sum dY xhat
            if bn.weight is not None:
                add_grad(bn.weight, dgamma)
                add_grad(bn.bias, dbeta)
            s = scale.view(-1)
            dz = xc.mul_((-s * invstd * dgamma / m).view(1, -1, 1, 1)).add_((-s * dbeta / m).view(1, -1, 1, 1))
            dz.addcmul_(dy, scale)  # s (dY - dbeta / M) - xhat s dgamma / M, over the kept Z - mean
        del dy
        self.saved = None
        x = _materialize(src)
        add_grad(conv.weight, conv._weight_grad(dz, x))
        if conv.bias is not None:
            add_grad(conv.bias, dz.sum((0, 2, 3)))
        _done(bn, conv)
        return (conv._input_grad(dz, x, into) if need_dx else None), x


class _Residual(_Rebuilt):
    """relu?(body(X) + shortcut(X)); the sum is rebuilt from the branches' outputs in backward."""

    def __init__(self, body: list, shortcut: list | None, relu: bool) -> None:
        self.body, self.shortcut, self.relu = body, shortcut, relu

    def forward(self, x: Tensor, src: Source, into: Tensor | None = None) -> tuple[Tensor, Source]:
        yb, b = _forward(self.body, x, src)
        if not callable(b):  # the body's output is a kept tensor: sum into a copy
            yb = yb.clone()
        if self.shortcut is None:
            _check_sum(yb, x.shape)
            out = yb.add_(x)
        else:
            out, s = _forward(self.shortcut, x, src, into=yb)  # the shortcut's output added into the body's
        self.saved = (b, src, None if self.shortcut is None else s)
        if self.relu:
            out.clamp_min_(0.0)
        if into is not None:
            _check_sum(into, out.shape)
            return into.add_(out), self.output
        return out, self.output

    def rebuild(self, into: Tensor | None = None) -> Tensor:
        """The block's output again, by the same calls as forward (the same bits)."""
        b, src, s = self.saved
        last = self.body[-1]
        out = last.rebuild() if callable(b) and isinstance(last, _Rebuilt) else _materialize(b).clone()
        if self.shortcut is None:
            out.add_(_materialize(src))
        else:
            tail = self.shortcut[-1]
            if isinstance(tail, _Rebuilt):
                tail.rebuild(into=out)
            else:
                out.add_(_materialize(s))
        if self.relu:
            out.clamp_min_(0.0)
        return out if into is None else into.add_(out)

    def backward(self, box: list[Tensor], need_dx: bool, into: Tensor | None = None) -> tuple[Tensor | None, Tensor]:
        """dX = body.bwd(dY') + shortcut.bwd(dY') (dY' itself for the identity), dY' = dY (out > 0); the
        shortcut's gradient added into the body's."""
        dy = box.pop()
        if self.relu:
            dy = relu_grads_(dy, self.output())
        self.cache = self.saved = None
        dx, x = _backward(self.body, [dy], need_dx, into)
        if self.shortcut is None:
            return (dx.add_(dy) if need_dx else None), x
        _backward(self.shortcut, [dy], need_dx, dx)
        return dx, x


class _Pool:
    """AdaptiveAvgPool2d(1): the mean over H and W, (N, C, 1, 1)."""

    def __init__(self, pool: AdaptiveAvgPool2d) -> None:
        self.pool = pool

    def forward(self, x: Tensor, src: Source) -> tuple[Tensor, Source]:
        self.pool._window(x)
        self.shape = x.shape
        out = x.mean((2, 3), keepdim=True)
        return out, out

    def backward(self, box: list[Tensor], need_dx: bool, into: Tensor | None = None) -> tuple[Tensor | None, None]:
        n, c, h, w = self.shape
        dx = (box.pop() / (h * w)).expand(n, c, h, w)
        return (dx if into is None else into.add_(dx)), None  # the producer rebuilds its own output


class _Reshape:
    """Flatten / Unflatten: a view forward, the gradient reshaped back."""

    def __init__(self, module: Flatten | Unflatten) -> None:
        self.module = module

    def forward(self, x: Tensor, src: Source) -> tuple[Tensor, Source]:
        self.shape = x.shape
        y = self.module.forward(x)  # the module's own checks and view
        if callable(src):
            return y, lambda: self.module.forward(src())
        return y, y

    def backward(self, box: list[Tensor], need_dx: bool, into: Tensor | None = None) -> tuple[Tensor | None, None]:
        dx = box.pop().reshape(self.shape) if need_dx else None
        return (dx if into is None or dx is None else into.add_(dx)), None


class _Linear:
    """Linear [-> ReLU] on (N, in_features): keeps its input (a small matrix at a CNN's head) and output."""

    def __init__(self, linear: Linear, relu: bool) -> None:
        self.linear, self.relu = linear, relu

    def forward(self, x: Tensor, src: Source) -> tuple[Tensor, Source]:
        lin_ = self.linear
        if x.dim() != 2 or x.shape[1] != lin_.in_features:
            raise ValueError(f"Linear({lin_.in_features} -> {lin_.out_features}) expects input "
                             f"[N, {lin_.in_features}], got {list(x.shape)}")
        y = lin(x, lin_.weight, lin_.bias)  # (N, out_features)
        if self.relu:
            y.clamp_min_(0.0)
        self.x, self.y = x, y
        return y, y

    def backward(self, box: list[Tensor], need_dx: bool, into: Tensor | None = None) -> tuple[Tensor | None, Tensor]:
        dy = box.pop()
        lin_, x = self.linear, self.x
        if self.relu:
            dy = dy * self.y.sign()
        accumulate_mm(lin_.weight, x.t(), dy)  # (in, out)
        if lin_.bias is not None:
            accumulate_sum(lin_.bias, dy, 0)
        dx = dy @ lin_.weight.t() if need_dx else None
        if dx is not None and into is not None:
            dx = into.add_(dx)
        self.x = self.y = None
        _done(lin_)
        return dx, x


def _forward(nodes: list, x: Tensor, src: Source, into: Tensor | None = None) -> tuple[Tensor, Source]:
    """Forward through a chain: (its output, how to get it again); with `into`, the output is added into it."""
    for i, node in enumerate(nodes):
        if into is not None and i == len(nodes) - 1:
            if isinstance(node, _Rebuilt):
                return node.forward(x, src, into)
            x, src = node.forward(x, src)
            _check_sum(into, x.shape)
            return into.add_(x), src
        x, src = node.forward(x, src)
    return x, src


def _backward(nodes: list, box: list[Tensor], need_dx: bool,
              into: Tensor | None = None) -> tuple[Tensor | None, Tensor | None]:
    """Backward through a chain, last node first, dY handed from node to node in a one-item list (so that
    each node holds the only reference and frees it as soon as it is used); returns (dX, X) of the first
    node, dX added into `into` when given."""
    x = None
    first = next((i for i, n in enumerate(nodes) if not isinstance(n, _Reshape)), len(nodes))
    for i in range(len(nodes) - 1, -1, -1):  # a node needs dX if anything before it has parameters
        dx, x = nodes[i].backward(box, need_dx or i > first, into if i == 0 else None)
        box = [dx]
        del dx
    return box.pop(), x


def _leaves(module: Module) -> list[Module]:
    """The Sequential's layers, nested Sequentials spelled out (a Residual stays one item)."""
    if type(module) is Sequential:
        return [leaf for m in module for leaf in _leaves(m)]
    return [module]


class Unsupported(Exception):
    pass


def _compile(module: Module, seen: set[int] | None = None) -> list:
    """The fused nodes of a Sequential (or raise Unsupported saying which layer has no fused form)."""
    items, nodes, i = _leaves(module), [], 0
    seen = set() if seen is None else seen
    for m in items:
        if id(m) in seen:
            raise Unsupported("a layer is used more than once (the module path gives every use its own record)")
        seen.add(id(m))

    def relu_next(j: int) -> bool:
        return j < len(items) and type(items[j]) is ReLU

    while i < len(items):
        m = items[i]
        kind = type(m)
        if kind is Conv2d:
            bn = items[i + 1] if i + 1 < len(items) and type(items[i + 1]) is BatchNorm2d else None
            if bn is not None:
                if bn.momentum is None:
                    raise Unsupported("a BatchNorm2d has momentum=None (a cumulative average)")
                if bn.num_features != m.out_channels:
                    raise Unsupported(f"BatchNorm2d({bn.num_features}) follows a Conv2d with {m.out_channels} "
                                      "output channels")
            j = i + 1 + (bn is not None)
            nodes.append(_ConvBN(m, bn, relu_next(j)))
            i = j + relu_next(j)
        elif kind is Residual:
            body = _compile(m.body, seen)
            shortcut = None if m.shortcut is None else _compile(m.shortcut, seen)
            if not body or (shortcut is not None and not shortcut):
                raise Unsupported("a Residual branch is empty")
            nodes.append(_Residual(body, shortcut, relu_next(i + 1)))
            i += 1 + relu_next(i + 1)
        elif kind is AdaptiveAvgPool2d and m.output_size == (1, 1):
            nodes.append(_Pool(m))
            i += 1
        elif kind in (Flatten, Unflatten):
            nodes.append(_Reshape(m))
            i += 1
        elif kind is Linear:
            before = nodes[-1] if nodes else None
            flat = isinstance(before, _Linear) or (isinstance(before, _Reshape) and type(before.module) is Flatten
                                                   and before.module.start_dim == 1 and before.module.end_dim == -1)
            if not flat:
                raise Unsupported("a Linear whose input is not flattened to [N, F] (fused: after Flatten() or "
                                  "another Linear)")
            nodes.append(_Linear(m, relu_next(i + 1)))
            i += 1 + relu_next(i + 1)
        else:
            what = f"{kind.__name__}" + (f"({m.extra_repr()})" if kind is AdaptiveAvgPool2d else "")
            raise Unsupported(f"{what} has no fused form (fused: Conv2d, BatchNorm2d after a Conv2d, ReLU after "
                              "those, Residual, AdaptiveAvgPool2d(1), Flatten, Unflatten, Linear)")
    return nodes


def _mark_data_readers(nodes: list) -> None:
    """The first convolution, if nothing but reshapes comes before it, reads the data: it recomputes its Z."""
    for node in nodes:
        if isinstance(node, _ConvBN):
            node.recompute_z = node.bn is not None
            return
        if not isinstance(node, _Reshape):
            return


def unsupported(model: Module, loss_fn: Module) -> str | None:
    """Why (model, loss_fn) cannot take the fused CNN step, or None when it can."""
    if type(model) is not Sequential or not len(model):
        return "the model is not a Sequential"
    if not any(isinstance(m, Conv2d) for m in model.modules()):
        return "the model has no Conv2d"
    try:
        nodes = _compile(model)
    except Unsupported as e:
        return str(e)
    if not isinstance(nodes[-1], _Linear):
        return "the model does not end with Linear"
    return params_unsupported(model) or loss_unsupported(loss_fn)


class FusedCNNStep:
    """`step(x, y)`: forward, loss, hand-written backward (into `.g`) and the optimizer's step of a CNN;
    returns the loss. In eval mode (running statistics) it takes the module path."""

    def __init__(self, model: Module, loss_fn: Module, opt: Optimizer) -> None:
        why = unsupported(model, loss_fn)
        if why is not None:
            raise ValueError(f"no fused CNN step for this model: {why}")
        self.model, self.loss_fn, self.opt = model, loss_fn, opt
        self.nodes = _compile(model)
        _mark_data_readers(self.nodes)
        self.bns = [m for m in model.modules() if isinstance(m, BatchNorm2d)]
        self.loss_grad = LossGrad(loss_fn)
        self._with_loss = None

    def fused_update(self) -> bool:
        return False  # the optimizer steps after the backward (gradients in .g)

    def __call__(self, x: Tensor, y: Tensor, step: bool = True) -> Tensor:
        check_batch(x)
        if not all(bn.training for bn in self.bns):  # running statistics: the module path's forward
            if self._with_loss is None:
                self._with_loss = WithLoss(self.model, self.loss_fn)
            return module_step(self._with_loss, self.opt, x, y, step)
        self.opt.zero_grad()
        try:
            out, _ = _forward(self.nodes, x, x)
            loss, d = self.loss_grad(out, y)
            box = [d]
            del out, d
            _backward(self.nodes, box, False)
        finally:
            self._clear(self.nodes)
        if step:
            self.opt.step()
        return loss

    def _clear(self, nodes: list) -> None:
        """Drop whatever a step left (all of it, after a step that raised half-way)."""
        for node in nodes:
            for attr in ("saved", "cache", "x", "y"):
                if hasattr(node, attr):
                    setattr(node, attr, None)
            if isinstance(node, _Residual):
                self._clear(node.body)
                self._clear(node.shortcut or [])
