"""Random handgrad models for the differential fuzz suite (tests/test_fuzz.py).

A model is drawn as a *spec*: nested tuples naming each layer and its constructor arguments, e.g.
`("linear", 3, 4, True)` or `("residual", body_op, None)`. Hypothesis draws specs (so a failure shrinks to a
small model and prints it), and `Case.build()` turns one into a handgrad Module, deterministically: every
build of a case has the same weights, so each path under test gets its own fresh copy of the same model.

Shapes (without the batch dimension) track what each layer receives:
    ("flat", F)         [N, F]
    ("seq", L, F)       [N, L, F]
    ("img", C, H, W)    [N, C, H, W]
    ("idx", V)          [N] integer indices into V rows (an Embedding comes first)
    ("idxseq", V, L)    [N, L] integer indices

Besides every built-in layer, specs hold user-style modules written as a user would: a layer with its own
forward and bwd saving things on self, layers returning their input or a view of it (with a bwd, or none:
differentiated by replay), a cell called in a loop by a Module without bwd, a fan-out joined by a user Add
layer, a user container looping over a list of layers, and (for the refusal test) a Module without bwd that
applies a raw torch op.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from hypothesis import strategies as st
from torch import Tensor

import handgrad as hg

MAX_F = 8  # features drawn for flat and sequence layers
MAX_C = 3  # image channels
MAX_HW = 6  # image height and width
MAX_BATCH = 4  # flat and sequence inputs
MAX_IMG_BATCH = 2


# ------------------------------------------------------------------------------------------ user-style modules


class UserScale(hg.Module):
    """Y = tanh(X) * w + X * c, per last-dim feature: a user layer with parameters that saves tanh(X) on self."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.w = hg.Parameter(torch.randn(n))
        self.c = hg.Parameter(torch.randn(n))

    def forward(self, x: Tensor) -> Tensor:
        self.t = torch.tanh(x)
        return self.t * self.w + x * self.c

    def bwd(self, dy: Tensor, x: Tensor) -> Tensor:
        lead = tuple(range(dy.dim() - 1))
        hg.add_grad(self.w, (dy * self.t).sum(lead))
        hg.add_grad(self.c, (dy * x).sum(lead))
        return dy * self.w * (1 - self.t * self.t) + dy * self.c


class SeedsScale(hg.Module):
    """UserScale written as the seeds wrote layers: plain tensors for parameters, bwd(self, out, x) assigning .g."""

    def __init__(self, n: int) -> None:
        self.w, self.c = torch.randn(n), torch.randn(n)

    def forward(self, x: Tensor) -> Tensor:
        self.t = torch.tanh(x)
        return self.t * self.w + x * self.c

    def bwd(self, out: Tensor, x: Tensor) -> None:
        lead = tuple(range(out.dim() - 1))
        self.w.g = (out.g * self.t).sum(lead)
        self.c.g = (out.g * x).sum(lead)
        x.g = out.g * self.w * (1 - self.t * self.t) + out.g * self.c


class UserAdd(hg.Module):
    """Y = A + B: a user layer with two differentiable inputs."""

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        return a + b

    def bwd(self, dy: Tensor, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
        return dy, dy


def _view(how: str, arg: tuple, x: Tensor) -> Tensor:
    if how == "return":
        return x
    if how == "view_same":
        return x.view(x.shape)
    if how == "reshape_flat":  # a view where strides allow, else a copy
        return x.reshape(x.shape[0], -1)
    if how == "slice":
        lo, hi = arg
        return x[:, lo:hi]
    if how == "transpose":
        return x.transpose(1, 2)
    raise AssertionError(how)


class UserView(hg.Module):
    """A user layer returning its input or a view of it, with the bwd a user would write."""

    def __init__(self, how: str, arg: tuple = ()) -> None:
        super().__init__()
        self.how, self.arg = how, arg

    def forward(self, x: Tensor) -> Tensor:
        return _view(self.how, self.arg, x)

    def bwd(self, dy: Tensor, x: Tensor) -> Tensor:
        if self.how in ("return", "view_same", "reshape_flat"):
            return dy.reshape(x.shape)
        if self.how == "slice":
            dx = dy.new_zeros(x.shape)
            dx[:, self.arg[0]:self.arg[1]] = dy
            return dx
        return dy.transpose(1, 2)


class ReplayView(hg.Module):
    """The same views from a Module without bwd: differentiated by replaying the recorded view."""

    def __init__(self, how: str, arg: tuple = ()) -> None:
        super().__init__()
        self.how, self.arg = how, arg

    def forward(self, x: Tensor) -> Tensor:
        return _view(self.how, self.arg, x)


class LoopCell(hg.Module):
    """No bwd: reads X as T steps of F features (x[:, t] views) and calls one cell T - 1 times in a loop."""

    def __init__(self, steps: int, n_in: int, hidden: int) -> None:
        super().__init__()
        self.steps, self.n_in = steps, n_in
        self.inp = hg.Linear(n_in, hidden)
        self.cell = hg.Sequential(hg.Linear(hidden, hidden), hg.Tanh())
        self.add = UserAdd()

    def forward(self, x: Tensor) -> Tensor:
        xs = x.reshape(x.shape[0], self.steps, self.n_in)
        h = self.inp(xs[:, 0])
        for t in range(1, self.steps):
            h = self.add(self.cell(h), self.inp(xs[:, t]))
        return h


class FanOut(hg.Module):
    """No bwd: X goes to two branches whose outputs a user Add joins (X.g must get both paths)."""

    def __init__(self, a: hg.Module, b: hg.Module) -> None:
        super().__init__()
        self.a, self.b, self.add = a, b, UserAdd()

    def forward(self, x: Tensor) -> Tensor:
        return self.add(self.a(x), self.b(x))


class UserChain(hg.Module):
    """No bwd: a user's container looping over a list of layers."""

    def __init__(self, layers: list[hg.Module]) -> None:
        super().__init__()
        self.layers = list(layers)

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class Opaque(hg.Module):
    """No bwd, and a raw torch op on the computation: its backward must refuse in one line."""

    def __init__(self, n: int, how: str) -> None:
        super().__init__()
        self.lin, self.how = hg.Linear(n, n), how

    def forward(self, x: Tensor) -> Tensor:
        y = self.lin(x)
        if self.how == "mul":
            return y * 2
        if self.how == "add":
            return y + x
        if self.how == "exp":
            return y.exp()
        return torch.cat([y[:, :1], y[:, 1:]], 1)


class RecurrentOut(hg.Module):
    """No bwd: a batch-first RNN or LSTM over [N, L, F] whose first output (all steps' hidden states) goes on;
    its other outputs (h_n, c_n) are dropped, as a user unpacks them."""

    def __init__(self, cell: str, n_in: int, hidden: int, layers: int, bias: bool) -> None:
        super().__init__()
        cls = hg.LSTM if cell == "lstm" else hg.RNN
        self.rnn = cls(n_in, hidden, layers, bias=bias, batch_first=True)

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.rnn(x)
        return out


class SelfAttention(hg.Module):
    """No bwd: batch-first self-attention, x as query, key and value (x.g must sum the three paths)."""

    def __init__(self, d: int, heads: int, causal: bool, recompute: bool, bias: bool, weights: bool) -> None:
        super().__init__()
        self.attn = hg.MultiheadAttention(d, heads, bias=bias, batch_first=True, recompute=recompute)
        self.causal, self.weights = causal, weights

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.attn(x, x, x, is_causal=self.causal, need_weights=self.weights)
        return out


USER_TYPES = (UserScale, SeedsScale, UserAdd, UserView, ReplayView, LoopCell, FanOut, UserChain, Opaque)


# -------------------------------------------------------------------------------------------------- building


def _act(name: str, arg: tuple) -> hg.Module:
    if name == "relu":
        return hg.ReLU()
    if name == "tanh":
        return hg.Tanh()
    if name == "sigmoid":
        return hg.Sigmoid()
    if name == "silu":
        return hg.SiLU()
    if name == "gelu":
        return hg.GELU(*arg)
    if name == "leaky":
        return hg.LeakyReLU(*arg)
    if name == "softmax":
        return hg.Softmax(*arg)
    if name == "logsoftmax":
        return hg.LogSoftmax(*arg)
    if name == "generalrelu":
        return hg.GeneralRelu(*arg)
    raise AssertionError(name)


def build_op(op: tuple, ctx: dict) -> hg.Module:
    kind = op[0]
    if kind == "linear":
        _, fin, fout, bias = op
        return hg.Linear(fin, fout, bias=bias)
    if kind == "conv":
        _, cin, cout, k, s, p, d, g, bias = op
        return hg.Conv2d(cin, cout, k, s, p, d, g, bias)
    if kind == "bn":
        _, dim, c, momentum, affine = op
        return (hg.BatchNorm1d if dim == 1 else hg.BatchNorm2d)(c, momentum=momentum, affine=affine)
    if kind == "ln":
        _, shape, affine, bias = op
        return hg.LayerNorm(shape, elementwise_affine=affine, bias=bias)
    if kind == "act":
        return _act(op[1], op[2])
    if kind == "dropout":
        return hg.Dropout(op[1])
    if kind == "flatten":
        return hg.Flatten(op[1], op[2])
    if kind == "unflatten":
        return hg.Unflatten(op[1], op[2])
    if kind == "maxpool":
        return hg.MaxPool2d(*op[1:])
    if kind == "avgpool":
        return hg.AvgPool2d(*op[1:])
    if kind == "adaptive":
        return hg.AdaptiveAvgPool2d(op[1])
    if kind == "seq":
        return hg.Sequential(*(build_op(o, ctx) for o in op[1]))
    if kind == "empty":
        return hg.Sequential()
    if kind == "residual":
        return hg.Residual(build_op(op[1], ctx), None if op[2] is None else build_op(op[2], ctx))
    if kind == "reuse":  # one block applied twice (with an activation between, or not)
        block = build_op(op[1], ctx)
        return hg.Sequential(block, build_op(op[2], ctx), block) if op[2] is not None else hg.Sequential(block, block)
    if kind == "tied":  # two square Linears sharing one weight
        _, n, bias1, bias2, act = op
        l1, l2 = hg.Linear(n, n, bias=bias1), hg.Linear(n, n, bias=bias2)
        l2.weight = l1.weight
        return hg.Sequential(l1, build_op(act, ctx), l2)
    if kind == "embed":
        _, v, d, pad = op
        ctx["emb"] = hg.Embedding(v, d, padding_idx=pad)
        return ctx["emb"]
    if kind == "tiedout":  # an output projection sharing the Embedding's table
        return hg.TiedLinear(ctx["emb"].weight, bias=op[1])
    if kind == "user_scale":
        return SeedsScale(op[1]) if op[2:] == ("seeds",) else UserScale(op[1])
    if kind == "user_view":
        return UserView(op[1], op[2])
    if kind == "replay_view":
        return ReplayView(op[1], op[2])
    if kind == "loop":
        return LoopCell(*op[1:])
    if kind == "fanout":
        return FanOut(build_op(op[1], ctx), build_op(op[2], ctx))
    if kind == "userchain":
        return UserChain([build_op(o, ctx) for o in op[1]])
    if kind == "opaque":
        return Opaque(op[1], op[2])
    if kind == "rnn":
        return RecurrentOut(*op[1:])
    if kind == "recompute":  # activation checkpointing: the body run again in backward
        return hg.layers.Recompute(build_op(op[1], ctx))
    if kind == "attn":
        return SelfAttention(*op[1:])
    if kind == "block":  # GPT-2's pre-LayerNorm block (causal self-attention, 4x GELU MLP)
        from handgrad.layers.transformer import Block

        return Block(op[1], op[2], recompute=op[3])
    if kind == "posemb":
        from handgrad.layers.transformer import PositionEmbedding

        return PositionEmbedding(op[1], op[2])
    raise AssertionError(kind)


def _randomise(model: hg.Module) -> None:
    """Biases, norm affines and running statistics away from their 0/1 starts, so that every parameter and
    buffer matters in forward and backward (an Embedding's padding row stays zero, as it must)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (hg.Linear, hg.Conv2d, hg.TiedLinear)) and m.bias is not None:
                m.bias.normal_(0.0, 0.3)
            if isinstance(m, (hg.BatchNorm1d, hg.BatchNorm2d, hg.LayerNorm)):
                if m.weight is not None:
                    m.weight.normal_(1.0, 0.3)
                if getattr(m, "bias", None) is not None:
                    m.bias.normal_(0.0, 0.3)
            if isinstance(m, hg.MultiheadAttention) and m.in_proj_bias is not None:
                m.in_proj_bias.normal_(0.0, 0.3)
            if type(m).__name__ == "PositionEmbedding":
                m.weight.normal_(0.0, 0.5)
            if isinstance(m, (hg.BatchNorm1d, hg.BatchNorm2d)):
                m.running_mean.normal_(0.0, 0.3)
                m.running_var.uniform_(0.5, 1.5)


def walk(ops: tuple):
    """Every op in a spec, nested ones included."""
    for op in ops:
        yield op
        for part in op[1:]:
            if isinstance(part, tuple) and part and isinstance(part[0], str) and part[0] in KINDS:
                yield from walk((part,))
            elif isinstance(part, tuple) and part and all(isinstance(p, tuple) and p and isinstance(p[0], str)
                                                          and p[0] in KINDS for p in part):
                yield from walk(part)


KINDS = {"linear", "conv", "bn", "ln", "act", "dropout", "flatten", "unflatten", "maxpool", "avgpool", "adaptive",
         "seq", "empty", "residual", "reuse", "tied", "embed", "tiedout", "user_scale", "user_view", "replay_view",
         "loop", "fanout", "userchain", "opaque", "rnn", "attn", "block", "posemb", "recompute"}
USER_KINDS = {"user_scale", "user_view", "replay_view", "loop", "fanout", "userchain", "opaque"}
NO_TWIN = USER_KINDS | {"rnn", "attn"}  # modules without bwd of the fuzz suite's own, wrapping built-in layers
NO_TWIN |= {"recompute"}  # (torch.utils.checkpoint runs a BatchNorm's forward twice: its running statistics differ)


@dataclass(frozen=True)
class Case:
    """One random model and how it is run: input shape, layers, container, seed, dtype, mode, batch size."""

    inp: tuple
    ops: tuple
    out: tuple
    container: str  # "seq" (hg.Sequential), "bare" (the one layer itself), "user" (UserChain)
    seed: int
    dtype: torch.dtype
    train: bool
    batch: int

    def build(self) -> hg.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            ctx: dict = {}
            layers = [build_op(op, ctx) for op in self.ops]
            if self.container == "bare":
                (model,) = layers
            elif self.container == "user":
                model = UserChain(layers)
            else:
                model = hg.Sequential(*layers)
            _randomise(model)
        model.to(dtype=self.dtype)
        return model.train(self.train)

    def has_twin(self) -> bool:
        """Built-in layers and containers only: interop.to_torch converts it."""
        return self.container != "user" and not any(op[0] in NO_TWIN for op in walk(self.ops))

    def has(self, *kinds: str) -> bool:
        return any(op[0] in kinds for op in walk(self.ops))

    def input(self, gen: torch.Generator, batch: int | None = None) -> Tensor:
        n = self.batch if batch is None else batch
        kind = self.inp[0]
        if kind == "idx":
            return torch.randint(0, self.inp[1], (n,), generator=gen)
        if kind == "idxseq":
            return torch.randint(0, self.inp[1], (n, self.inp[2]), generator=gen)
        return torch.randn((n, *self.inp[1:]), generator=gen, dtype=self.dtype)

    def out_shape(self, batch: int | None = None) -> tuple[int, ...]:
        return (self.batch if batch is None else batch, *self.out[1:])

    def __repr__(self) -> str:  # what Hypothesis prints for a failing example: enough to rebuild it
        return (f"Case(inp={self.inp!r}, ops={self.ops!r}, out={self.out!r}, container={self.container!r}, "
                f"seed={self.seed}, dtype={self.dtype}, train={self.train}, batch={self.batch})")


# ---------------------------------------------------------------------------------------------- strategies


ACTS = [("relu", ()), ("tanh", ()), ("sigmoid", ()), ("silu", ()), ("gelu", ("none",)), ("gelu", ("tanh",)),
        ("leaky", (0.01,)), ("leaky", (0.3,)), ("generalrelu", (0.1, 0.4, 6.0)), ("generalrelu", (None, 0.2, None)),
        ("generalrelu", (0.2, None, 1.5))]


def _conv_configs(h: int, w: int, preserve: bool) -> list[tuple[int, int, int, int]]:
    """(k, stride, padding, dilation) with an output of at least 1x1 (the same size when preserve)."""
    out = []
    for k in (1, 3, 2):
        for s in (1, 2):
            for d in (1, 2):
                for p in (0, 1, 2):
                    ho = (h + 2 * p - d * (k - 1) - 1) // s + 1
                    wo = (w + 2 * p - d * (k - 1) - 1) // s + 1
                    if ho < 1 or wo < 1:
                        continue
                    if preserve and (ho, wo) != (h, w):
                        continue
                    out.append((k, s, p, d))
    return out


def _window_in_padding(size: int, k: int, s: int, p: int, d: int) -> bool:
    """Some pooling window (along one dim) reads padding only."""
    n_out = (size + 2 * p - d * (k - 1) - 1) // s + 1
    return any(all(not 0 <= i * s - p + d * j < size for j in range(k)) for i in range(n_out))


def _pool_configs(h: int, w: int, preserve: bool, dilations: tuple[int, ...]) -> list[tuple[int, int, int, int]]:
    """(k, stride, padding, dilation) with padding <= k // 2 (torch's rule) and an output of at least 1x1, no
    window wholly in the padding (MaxPool2d refuses it in one line: test_fuzz.py tests that refusal)."""
    out = []
    for k in (2, 1, 3):
        for s in (None, 1, 2):
            for p in range(k // 2 + 1):
                for d in dilations:
                    st_ = k if s is None else s
                    ho = (h + 2 * p - d * (k - 1) - 1) // st_ + 1
                    wo = (w + 2 * p - d * (k - 1) - 1) // st_ + 1
                    if ho < 1 or wo < 1 or (preserve and (ho, wo) != (h, w)):
                        continue
                    if _window_in_padding(h, k, st_, p, d) or _window_in_padding(w, k, st_, p, d):
                        continue
                    out.append((k, s, p, d))
    return out


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _out_hw(h: int, w: int, k: int, s: int | None, p: int, d: int) -> tuple[int, int]:
    s = k if s is None else s
    return (h + 2 * p - d * (k - 1) - 1) // s + 1, (w + 2 * p - d * (k - 1) - 1) // s + 1


def _last(shape: tuple) -> int:
    return shape[-1]


def _features(shape: tuple) -> int:
    n = 1
    for s in shape[1:]:
        n *= s
    return n


@st.composite
def op_for(draw, shape: tuple, depth: int, preserve: bool, user: bool, ctx: dict,
           in_composite: bool = False) -> tuple[tuple, tuple]:
    """One layer that takes `shape`: (op, output shape). preserve: the output shape must equal the input's.
    in_composite: called directly by a Module without bwd (a user container, a fan-out branch)."""
    kind = shape[0]
    choices = ["act", "linear" if kind != "img" else "conv", "norm", "dropout", "identity"]
    if kind == "img":
        choices += ["pool"]
        if not preserve:
            choices += ["flatten", "adaptive"]
    if kind == "flat" and not preserve:
        choices += ["unflatten"]
    if kind == "seq" and not preserve:
        choices += ["flatten"]
    if kind == "flat" and shape[1] <= MAX_F:
        choices += ["tied"]
    if kind == "seq":  # the sequence layers, on [N, L, F]
        choices += ["attn", "attn", "block", "posemb"] + ([] if preserve and shape[2] > MAX_F else ["rnn", "rnn"])
    if ctx.get("emb") is not None and kind == "flat" and shape[1] == ctx["emb"] and not preserve:
        choices += ["tiedout"]
    if depth < 2:
        choices += ["seq", "residual", "reuse", "recompute"]
        if user:
            choices += ["fanout", "userchain"]
    if user:
        choices += ["user_scale", "user_view"]
        if kind in ("flat", "seq") and (not preserve or kind == "flat"):
            choices += ["loop"]
    choice = draw(st.sampled_from(choices))

    if choice == "act":
        name, arg = draw(st.sampled_from(ACTS + [("softmax", (-1,)), ("logsoftmax", (-1,)), ("softmax", (1,)),
                                                  ("logsoftmax", (1,))]))
        return ("act", name, arg), shape
    if choice == "linear":  # flat or seq: on the last dim
        fin = _last(shape)
        fout = fin if preserve else draw(st.integers(1, MAX_F))
        op = ("linear", fin, fout, draw(st.booleans()))
        return op, (*shape[:-1], fout)
    if choice == "conv":
        _, c, h, w = shape
        cout = c if preserve else draw(st.integers(1, MAX_C))
        k, s, p, d = draw(st.sampled_from(_conv_configs(h, w, preserve)))
        g = draw(st.sampled_from(_divisors(math.gcd(c, cout))))
        ho, wo = _out_hw(h, w, k, s, p, d)
        return ("conv", c, cout, k, s, p, d, g, draw(st.booleans())), ("img", cout, ho, wo)
    if choice == "norm":
        affine = draw(st.booleans())
        if draw(st.booleans()):  # batch norm over dim 1
            momentum = draw(st.sampled_from([0.1, None, 0.5]))
            return ("bn", 2 if kind == "img" else 1, shape[1], momentum, affine), shape
        k = draw(st.integers(1, len(shape) - 1))  # layer norm over the last k dims
        norm_shape = shape[-k:]
        ln_shape = norm_shape[0] if k == 1 and draw(st.booleans()) else tuple(norm_shape)
        return ("ln", ln_shape, affine, affine and draw(st.booleans())), shape
    if choice == "dropout":
        return ("dropout", draw(st.sampled_from([0.0, 0.5, 0.2, 1.0]))), shape
    if choice == "identity":
        how = draw(st.sampled_from(["empty", "flatten_noop", "return", "view_same"] if user else
                                   ["empty", "flatten_noop"]))
        if how == "empty":
            return ("empty",), shape
        if how == "flatten_noop":  # Flatten over a single dim returns its input
            dim = len(shape) - 1
            return ("flatten", dim, -1), shape
        return (draw(st.sampled_from(["user_view", "replay_view"])), how, ()), shape
    if choice == "pool":
        _, c, h, w = shape
        which = draw(st.sampled_from(["max", "avg"]))
        if which == "max":
            k, s, p, d = draw(st.sampled_from(_pool_configs(h, w, preserve, (1, 2))))
            ho, wo = _out_hw(h, w, k, s, p, d)
            return ("maxpool", k, s, p, d), ("img", c, ho, wo)
        k, s, p, _ = draw(st.sampled_from(_pool_configs(h, w, preserve, (1,))))
        ho, wo = _out_hw(h, w, k, s, p, 1)
        return ("avgpool", k, s, p), ("img", c, ho, wo)
    if choice == "adaptive":
        _, c, h, w = shape
        oh, ow = draw(st.sampled_from(_divisors(h))), draw(st.sampled_from(_divisors(w)))
        size = oh if oh == ow and draw(st.booleans()) else (oh, ow)
        return ("adaptive", size), ("img", c, oh, ow)
    if choice == "flatten":
        if kind == "seq":
            return ("flatten", 1, -1), ("flat", _features(shape))
        _, c, h, w = shape
        start = draw(st.sampled_from([1, 2, (1, 2)]))
        if start == 1:
            return ("flatten", 1, -1), ("flat", c * h * w)
        if start == 2:
            return ("flatten", 2, -1), ("seq", c, h * w)
        return ("flatten", 1, 2), ("seq", c * h, w)
    if choice == "unflatten":
        f = shape[1]
        splits = [(c, h, f // (c * h)) for c in _divisors(f) if c <= MAX_C for h in _divisors(f // c)
                  if h <= MAX_HW and f // (c * h) <= MAX_HW]
        if draw(st.booleans()) and splits:
            sizes = draw(st.sampled_from(splits))
            return ("unflatten", 1, sizes), ("img", *sizes)
        length = draw(st.sampled_from(_divisors(f)))
        return ("unflatten", 1, (length, f // length)), ("seq", length, f // length)
    if choice == "tied":
        n = shape[1]
        act = ("act", *draw(st.sampled_from(ACTS[:4])))
        return ("tied", n, draw(st.booleans()), draw(st.booleans()), act), shape
    if choice == "tiedout":
        return ("tiedout", draw(st.booleans())), ("flat", ctx["emb_rows"])
    if choice == "seq":
        ops, out = draw(chain(shape, depth + 1, preserve, user, ctx, max_len=3))
        return ("seq", ops), out
    if choice == "residual":
        body, _ = draw(chain(shape, depth + 1, True, user, ctx, max_len=2))
        shortcut = None
        if draw(st.booleans()):
            shortcut, _ = draw(op_for(shape, depth + 1, True, user, ctx))
        return ("residual", ("seq", body), shortcut), shape
    if choice == "recompute":
        ops, out = draw(chain(shape, depth + 1, preserve, user, ctx, max_len=3))
        return ("recompute", ("seq", ops)), out
    if choice == "reuse":
        block, _ = draw(op_for(shape, depth + 1, True, user, ctx))
        between = None
        if draw(st.booleans()):
            between = ("act", *draw(st.sampled_from(ACTS[:4])))
        return ("reuse", block, between), shape
    if choice == "fanout":
        a, _ = draw(op_for(shape, depth + 1, True, user, ctx, in_composite=True))
        b, _ = draw(op_for(shape, depth + 1, True, user, ctx, in_composite=True))
        return ("fanout", a, b), shape
    if choice == "userchain":
        ops, out = draw(chain(shape, depth + 1, preserve, user, ctx, max_len=3, in_composite=True))
        return ("userchain", ops), out
    if choice == "user_scale":
        return ("user_scale", _last(shape), draw(st.sampled_from(["handgrad", "seeds"]))), shape
    if choice == "user_view":
        cls = draw(st.sampled_from(["user_view", "replay_view"]))
        options = ["return", "view_same"]
        if not preserve:
            options += ["reshape_flat", "slice"]
            if kind == "seq":
                options += ["transpose"]
        elif kind == "seq" and shape[1] == shape[2]:
            options += ["transpose"]
        how = draw(st.sampled_from(options))
        if how in ("return", "view_same"):
            return (cls, how, ()), shape
        if how == "reshape_flat":
            return (cls, how, ()), ("flat", _features(shape))
        if how == "transpose":
            return (cls, how, ()), ("seq", shape[2], shape[1])
        lo = draw(st.integers(0, shape[1] - 1))
        hi = draw(st.integers(lo + 1, shape[1]))
        return (cls, how, (lo, hi)), (shape[0], hi - lo, *shape[2:])
    if choice == "rnn":
        hidden = shape[2] if preserve else draw(st.integers(1, MAX_F))
        op = ("rnn", draw(st.sampled_from(["lstm", "rnn"])), shape[2], hidden, draw(st.integers(1, 2)),
              draw(st.booleans()))
        return op, ("seq", shape[1], hidden)
    if choice in ("attn", "block"):
        heads = draw(st.sampled_from(_divisors(shape[2])))
        if choice == "block":
            return ("block", shape[2], heads, draw(st.booleans())), shape
        return ("attn", shape[2], heads, draw(st.booleans()), draw(st.booleans()), draw(st.booleans()),
                draw(st.booleans())), shape
    if choice == "posemb":
        return ("posemb", shape[1] + draw(st.integers(0, 2)), shape[2]), shape
    if choice == "loop":
        if kind == "seq":
            steps, n_in = shape[1], shape[2]
        else:
            f = shape[1]
            steps = draw(st.sampled_from([t for t in _divisors(f) if t <= 4]))
            n_in = f // steps
        hidden = _last(shape) if preserve else draw(st.integers(1, MAX_F))
        return ("loop", steps, n_in, hidden), ("flat", hidden)
    raise AssertionError(choice)


@st.composite
def chain(draw, shape: tuple, depth: int, preserve: bool, user: bool, ctx: dict, min_len: int = 1,
          max_len: int = 3, in_composite: bool = False) -> tuple[tuple, tuple]:
    """A list of layers from `shape`: (ops, output shape). With preserve, every layer keeps the shape."""
    n = draw(st.integers(min_len, max_len))
    ops = []
    for _ in range(n):
        op, shape = draw(op_for(shape, depth, preserve, user, ctx, in_composite))
        ops.append(op)
    return tuple(ops), shape


def input_shapes(kinds: tuple[str, ...] = ("flat", "seq", "img", "idx", "idxseq")):
    options = {
        "flat": st.tuples(st.just("flat"), st.integers(1, MAX_F)),
        "seq": st.tuples(st.just("seq"), st.integers(1, 3), st.integers(1, MAX_F)),
        "img": st.tuples(st.just("img"), st.integers(1, MAX_C), st.integers(1, MAX_HW), st.integers(1, MAX_HW)),
        "idx": st.tuples(st.just("idx"), st.integers(1, 6)),
        "idxseq": st.tuples(st.just("idxseq"), st.integers(1, 6), st.integers(1, 3)),
    }
    return st.one_of(*(options[k] for k in kinds))


def _learnable(shape: tuple) -> tuple:
    """A layer with parameters that keeps `shape` (for models that must have something to train)."""
    if shape[0] == "img":
        return ("conv", shape[1], shape[1], 1, 1, 0, 1, 1, True)
    return ("linear", shape[-1], shape[-1], True)


@st.composite
def cases(draw, user: bool = True, flat_output: bool = False, learnable: bool = False,
          dtypes=(torch.float64, torch.float32), containers=("seq", "bare", "user"), batch: int | None = None,
          train: bool | None = None, max_len: int = 4,
          inputs: tuple[str, ...] = ("flat", "seq", "img", "idx", "idxseq"), prefix: tuple = ()) -> Case:
    """A random Case: a chain of 1..max_len layers (nested up to depth 2) on a random input shape.

    learnable: the model has at least one parameter (a Linear or 1x1 Conv is appended otherwise).
    prefix: ops placed first (their input shape must be the drawn one's).
    """
    inp = draw(input_shapes(inputs))
    ctx: dict = {}
    ops: list = list(prefix)
    shape = inp
    if inp[0] in ("idx", "idxseq"):  # an Embedding at the input
        v = inp[1]
        d = draw(st.integers(1, MAX_F))
        pad = draw(st.sampled_from([None, 0]))
        ops.append(("embed", v, d, pad))
        shape = ("flat", d) if inp[0] == "idx" else ("seq", inp[2], d)
        if inp[0] == "idx":
            ctx["emb"], ctx["emb_rows"] = d, v
    container = draw(st.sampled_from([c for c in containers if c != "user" or user]))
    if container == "bare":  # the one layer itself is the model
        max_len = 0 if ops else 1
    more, shape = draw(chain(shape, 0, False, user, ctx, min_len=min(max_len, 0 if ops else 1), max_len=max_len,
                             in_composite=container == "user"))
    ops.extend(more)
    if learnable and not Case(inp, tuple(ops), shape, "seq", 0, torch.float64, True, 1).build().parameters():
        ops.append(_learnable(shape))
    if flat_output and shape[0] != "flat":
        ops.append(("flatten", 1, -1))
        shape = ("flat", _features(shape))
    if container == "bare" and len(ops) != 1:
        container = "seq"
    dtype = draw(st.sampled_from(dtypes))
    is_train = draw(st.booleans()) if train is None else train
    if batch is None:
        batch = draw(st.integers(1, MAX_IMG_BATCH if _has_img(inp, ops) else MAX_BATCH))
    return Case(inp, tuple(ops), shape, container, draw(st.integers(0, 2 ** 16)), dtype, is_train, batch)


def _has_img(inp: tuple, ops: list) -> bool:
    return inp[0] == "img" or any(op[0] == "unflatten" and len(op[2]) == 3 for op in walk(tuple(ops)))


@st.composite
def mlp_cases(draw, dtypes=(torch.float64, torch.float32)) -> Case:
    """Chains of distinct Linear and ReLU layers (the fused step's), and near misses the fused step must refuse:
    a Linear reused, tied weights, a Tanh in the chain."""
    f = draw(st.integers(1, MAX_F))
    ops = []
    width = f
    n_lin = draw(st.integers(1, 4))
    for i in range(n_lin):
        out = draw(st.integers(1, MAX_F))
        ops.append(("linear", width, out, draw(st.booleans())))
        width = out
        if i < n_lin - 1 and draw(st.booleans()):
            ops.append(("act", "relu", ()))
    twist = draw(st.sampled_from(["none", "none", "none", "reuse", "tied", "tanh"]))
    if twist == "reuse":
        ops.append(("reuse", ("linear", width, width, True), ("act", "relu", ())))
    elif twist == "tied":
        ops.append(("tied", width, True, True, ("act", "relu", ())))
    elif twist == "tanh":
        ops.insert(draw(st.integers(1, len(ops))), ("act", "tanh", ()))
        ops.append(("linear", width, width, True))  # ends with a Linear still
    container = "bare" if len(ops) == 1 and draw(st.booleans()) else "seq"
    return Case(("flat", f), tuple(ops), ("flat", width), container, draw(st.integers(0, 2 ** 16)),
                draw(st.sampled_from(dtypes)), draw(st.booleans()), draw(st.integers(1, MAX_BATCH)))
