"""PyTorch interop: the same model in torch.nn, weights (and running statistics) carried both ways."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn

from . import layers as L
from .module import Module, Parameter, Sequential, lean, run_backward


class TorchResidual(nn.Module):
    """torch.nn twin of handgrad's Residual: body(x) + shortcut(x)."""

    def __init__(self, body: nn.Module, shortcut: nn.Module | None = None) -> None:
        super().__init__()
        self.body, self.shortcut = body, shortcut

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x) + (x if self.shortcut is None else self.shortcut(x))


class TorchGeneralRelu(nn.Module):
    """torch.nn twin of the course's GeneralRelu."""

    def __init__(self, leak: float | None = None, sub: float | None = None, maxv: float | None = None) -> None:
        super().__init__()
        self.leak, self.sub, self.maxv = leak, sub, maxv

    def forward(self, x: Tensor) -> Tensor:
        x = nn.functional.leaky_relu(x, self.leak) if self.leak is not None else nn.functional.relu(x)
        if self.sub is not None:
            x = x - self.sub
        return x.clamp_max(self.maxv) if self.maxv is not None else x


def _bn_to_torch(m: L.BatchNorm1d | L.BatchNorm2d) -> nn.Module:
    cls = nn.BatchNorm1d if isinstance(m, L.BatchNorm1d) else nn.BatchNorm2d
    return cls(m.num_features, m.eps, m.momentum, affine=m.weight is not None)


def _bn_from_torch(m: nn.BatchNorm1d | nn.BatchNorm2d) -> Module:
    cls = L.BatchNorm1d if isinstance(m, nn.BatchNorm1d) else L.BatchNorm2d
    return cls(m.num_features, m.eps, m.momentum, affine=m.affine)  # momentum None: the cumulative average, as torch


# handgrad class -> builder of the torch.nn module with the same structure (weights loaded afterwards)
_TO_TORCH: dict[type, Callable[[Module], nn.Module]] = {
    L.Linear: lambda m: nn.Linear(m.in_features, m.out_features, bias=m.bias is not None),
    L.TiedLinear: lambda m: nn.Linear(m.in_features, m.out_features, bias=m.bias is not None),
    L.Conv2d: lambda m: nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation,
                                  m.groups, bias=m.bias is not None),
    L.BatchNorm1d: _bn_to_torch,
    L.BatchNorm2d: _bn_to_torch,
    L.LayerNorm: lambda m: nn.LayerNorm(m.normalized_shape, m.eps, elementwise_affine=m.weight is not None,
                                        bias=m.bias is not None),
    L.Embedding: lambda m: nn.Embedding(m.num_embeddings, m.embedding_dim, m.padding_idx),
    L.MaxPool2d: lambda m: nn.MaxPool2d(m.kernel_size, m.stride, m.padding, m.dilation),
    L.AvgPool2d: lambda m: nn.AvgPool2d(m.kernel_size, m.stride, m.padding),
    L.AdaptiveAvgPool2d: lambda m: nn.AdaptiveAvgPool2d(m.output_size),
    L.Flatten: lambda m: nn.Flatten(m.start_dim, m.end_dim),
    L.Unflatten: lambda m: nn.Unflatten(m.dim, m.sizes),
    L.Dropout: lambda m: nn.Dropout(m.p),
    L.ReLU: lambda m: nn.ReLU(),
    L.LeakyReLU: lambda m: nn.LeakyReLU(m.negative_slope),
    L.GeneralRelu: lambda m: TorchGeneralRelu(m.leak, m.sub, m.maxv),
    L.GELU: lambda m: nn.GELU(m.approximate),
    L.Sigmoid: lambda m: nn.Sigmoid(),
    L.Tanh: lambda m: nn.Tanh(),
    L.SiLU: lambda m: nn.SiLU(),
    L.Softmax: lambda m: nn.Softmax(m.dim),
    L.LogSoftmax: lambda m: nn.LogSoftmax(m.dim),
    Sequential: lambda m: nn.Sequential(*(_structure_to_torch(c) for c in m)),
    L.Residual: lambda m: TorchResidual(_structure_to_torch(m.body),
                                        None if m.shortcut is None else _structure_to_torch(m.shortcut)),
}

_FROM_TORCH: dict[type, Callable[[nn.Module], Module]] = {
    nn.Linear: lambda m: L.Linear(m.in_features, m.out_features, bias=m.bias is not None),
    nn.Conv2d: lambda m: L.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation,
                                  m.groups, bias=m.bias is not None),
    nn.BatchNorm1d: _bn_from_torch,
    nn.BatchNorm2d: _bn_from_torch,
    nn.LayerNorm: lambda m: L.LayerNorm(m.normalized_shape, m.eps, elementwise_affine=m.elementwise_affine,
                                        bias=m.bias is not None),
    nn.Embedding: lambda m: L.Embedding(m.num_embeddings, m.embedding_dim, m.padding_idx),
    nn.MaxPool2d: lambda m: L.MaxPool2d(m.kernel_size, m.stride, m.padding, m.dilation),
    nn.AvgPool2d: lambda m: L.AvgPool2d(m.kernel_size, m.stride, m.padding),
    nn.AdaptiveAvgPool2d: lambda m: L.AdaptiveAvgPool2d(m.output_size),
    nn.Flatten: lambda m: L.Flatten(m.start_dim, m.end_dim),
    nn.Unflatten: lambda m: L.Unflatten(m.dim, m.unflattened_size),
    nn.Dropout: lambda m: L.Dropout(m.p),
    nn.ReLU: lambda m: L.ReLU(),
    nn.LeakyReLU: lambda m: L.LeakyReLU(m.negative_slope),
    TorchGeneralRelu: lambda m: L.GeneralRelu(m.leak, m.sub, m.maxv),
    nn.GELU: lambda m: L.GELU(m.approximate),
    nn.Sigmoid: lambda m: L.Sigmoid(),
    nn.Tanh: lambda m: L.Tanh(),
    nn.SiLU: lambda m: L.SiLU(),
    nn.Softmax: lambda m: L.Softmax(m.dim if m.dim is not None else -1),
    nn.LogSoftmax: lambda m: L.LogSoftmax(m.dim if m.dim is not None else -1),
    nn.Sequential: lambda m: Sequential(*(_structure_from_torch(c) for c in m)),
    TorchResidual: lambda m: L.Residual(_structure_from_torch(m.body),
                                        None if m.shortcut is None else _structure_from_torch(m.shortcut)),
}


def _recurrent() -> None:
    """RNN and LSTM both ways (their weights have torch's names and layouts: state_dict carries them)."""
    def rnn_from(m: nn.RNN) -> Module:
        if m.dropout or m.bidirectional or getattr(m, "proj_size", 0):
            raise TypeError(f"no handgrad equivalent for torch {type(m).__name__} with dropout, bidirectional or "
                            "proj_size")
        if isinstance(m, nn.LSTM):
            return L.LSTM(m.input_size, m.hidden_size, m.num_layers, bias=m.bias, batch_first=m.batch_first)
        return L.RNN(m.input_size, m.hidden_size, m.num_layers, m.nonlinearity, bias=m.bias,
                     batch_first=m.batch_first)

    _TO_TORCH[L.LSTM] = lambda m: nn.LSTM(m.input_size, m.hidden_size, m.num_layers, bias=m.bias,
                                          batch_first=m.batch_first)
    _TO_TORCH[L.RNN] = lambda m: nn.RNN(m.input_size, m.hidden_size, m.num_layers, m.nonlinearity, bias=m.bias,
                                        batch_first=m.batch_first)
    _FROM_TORCH[nn.LSTM] = rnn_from
    _FROM_TORCH[nn.RNN] = rnn_from

    def mha_from(m: nn.MultiheadAttention) -> Module:
        if m.dropout or not m._qkv_same_embed_dim or m.bias_k is not None or m.add_zero_attn:
            raise TypeError("no handgrad equivalent for torch MultiheadAttention with dropout, kdim/vdim, add_bias_kv "
                            "or add_zero_attn")
        return L.MultiheadAttention(m.embed_dim, m.num_heads, bias=m.in_proj_bias is not None,
                                    batch_first=m.batch_first)

    _TO_TORCH[L.MultiheadAttention] = lambda m: nn.MultiheadAttention(m.embed_dim, m.num_heads,
                                                                      bias=m.in_proj_bias is not None,
                                                                      batch_first=m.batch_first)
    _FROM_TORCH[nn.MultiheadAttention] = mha_from


_recurrent()


class TorchPositionEmbedding(nn.Module):
    """torch.nn twin of PositionEmbedding: x + weight[:T]."""

    def __init__(self, block_size: int, embedding_dim: int) -> None:
        super().__init__()
        self.block_size, self.embedding_dim = block_size, embedding_dim
        self.weight = nn.Parameter(torch.zeros(block_size, embedding_dim))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.weight[: x.shape[1]]


class TorchCausalSelfAttention(nn.Module):
    """torch.nn twin of CausalSelfAttention: LayerNorm, then torch's MultiheadAttention (batch first) with a causal
    mask, its output alone."""

    def __init__(self, d_model: int, n_head: int, ln: nn.LayerNorm | None = None,
                 attn: nn.MultiheadAttention | None = None) -> None:
        super().__init__()
        self.ln = ln if ln is not None else nn.LayerNorm(d_model)
        self.attn = attn if attn is not None else nn.MultiheadAttention(d_model, n_head, batch_first=True)

    def forward(self, x: Tensor) -> Tensor:
        h = self.ln(x)
        mask = torch.ones(x.shape[1], x.shape[1], dtype=torch.bool, device=x.device).triu(1)
        return self.attn(h, h, h, attn_mask=mask, is_causal=True, need_weights=False)[0]


class TorchCharRNN(nn.Module):
    """torch.nn twin of CharRNN: Embedding -> torch's LSTM or RNN (batch first) -> Linear."""

    def __init__(self, emb: nn.Embedding, rnn: nn.RNNBase, head: nn.Linear) -> None:
        super().__init__()
        self.emb, self.rnn, self.head = emb, rnn, head

    def forward(self, idx: Tensor) -> Tensor:
        return self.head(self.rnn(self.emb(idx))[0])


class TorchRecompute(nn.Module):
    """torch.nn twin of Recompute: body under torch.utils.checkpoint (its activations recomputed in backward).
    As Recompute, the recomputation leaves the body's buffers (BatchNorm's running statistics) as the forward
    left them (torch's checkpoint alone would update them twice a step)."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: Tensor) -> Tensor:
        from torch.utils.checkpoint import checkpoint

        if not torch.is_grad_enabled():
            return self.body(x)
        runs = []

        def run(inp: Tensor) -> Tensor:
            if not runs:  # the forward
                runs.append(1)
                return self.body(inp)
            kept = [b.clone() for b in self.body.buffers()]  # the recomputation in backward
            try:
                return self.body(inp)
            finally:  # (torch stops a recomputation early by raising, once it has what backward needs)
                with torch.no_grad():
                    for b, k in zip(self.body.buffers(), kept):
                        b.copy_(k)

        return checkpoint(run, x, use_reentrant=False)


def _sequence_models() -> None:
    from .layers.transformer import CausalSelfAttention, PositionEmbedding
    from .models import CharRNN

    _TO_TORCH[PositionEmbedding] = lambda m: TorchPositionEmbedding(m.block_size, m.embedding_dim)
    _FROM_TORCH[TorchPositionEmbedding] = lambda m: PositionEmbedding(m.block_size, m.embedding_dim)

    def attn_from(m: TorchCausalSelfAttention) -> Module:
        h = CausalSelfAttention(m.attn.embed_dim, m.attn.num_heads)
        h.ln, h.attn = _structure_from_torch(m.ln), _structure_from_torch(m.attn)
        if not m.attn.batch_first:
            raise TypeError("TorchCausalSelfAttention: its MultiheadAttention must be batch_first")
        return h

    _TO_TORCH[CausalSelfAttention] = lambda m: TorchCausalSelfAttention(
        m.attn.embed_dim, m.attn.num_heads, _structure_to_torch(m.ln), _structure_to_torch(m.attn))
    _FROM_TORCH[TorchCausalSelfAttention] = attn_from

    def char_from(m: TorchCharRNN) -> Module:
        if not isinstance(m.rnn, (nn.LSTM, nn.RNN)) or not m.rnn.batch_first:
            raise TypeError("TorchCharRNN: its rnn must be a batch-first torch LSTM or RNN")
        c = CharRNN(m.emb.num_embeddings, m.emb.embedding_dim, m.rnn.hidden_size, m.rnn.num_layers,
                    "lstm" if isinstance(m.rnn, nn.LSTM) else "rnn")
        c.emb, c.rnn, c.head = (_structure_from_torch(x) for x in (m.emb, m.rnn, m.head))
        return c

    _TO_TORCH[L.Recompute] = lambda m: TorchRecompute(_structure_to_torch(m.body))
    _FROM_TORCH[TorchRecompute] = lambda m: L.Recompute(_structure_from_torch(m.body))

    _TO_TORCH[CharRNN] = lambda m: TorchCharRNN(*(_structure_to_torch(x) for x in (m.emb, m.rnn, m.head)))
    _FROM_TORCH[TorchCharRNN] = char_from


_sequence_models()


def _course_names() -> None:
    from .course import Lin  # the course's name for Linear (Relu and Mse are ReLU and MSELoss themselves)

    _TO_TORCH[Lin] = _TO_TORCH[L.Linear]


_course_names()

_MEMO: list[dict[int, object]] = []  # the structure being converted: one twin per module, however often placed


def _structure_to_torch(m: Module) -> nn.Module:
    memo = _MEMO[-1]
    if id(m) not in memo:
        build = _TO_TORCH.get(type(m))
        if build is None:
            raise TypeError(f"no torch.nn twin for {type(m).__name__}")
        memo[id(m)] = build(m)
    return memo[id(m)]  # type: ignore[return-value]


def _structure_from_torch(m: nn.Module) -> Module:
    memo = _MEMO[-1]
    if id(m) not in memo:
        build = _FROM_TORCH.get(type(m))
        if build is None:
            raise TypeError(f"no handgrad equivalent for torch module {type(m).__name__}")
        memo[id(m)] = build(m)
    return memo[id(m)]  # type: ignore[return-value]


def _convert(build, module):  # type: ignore[no-untyped-def]
    _MEMO.append({})
    try:
        return build(module)
    finally:
        _MEMO.pop()


def _tie(model: nn.Module | Module, names: list[list[str]]) -> None:
    """Make each group of parameter names one shared parameter (the first name's), as in the source model."""
    for group in names:
        for name in group[1:]:
            *path, attr = name.split(".")
            owner = _get(model, ".".join(path)) if path else model
            shared = _get(model, group[0])
            if getattr(owner, attr) is shared:  # a module placed twice: already one
                continue
            head, _, _ = group[0].rpartition(".")
            if isinstance(owner, L.Linear) and attr == "weight" and isinstance(_get(model, head), L.Embedding) and \
                    isinstance(shared, Parameter) and tuple(shared.shape) == (owner.out_features, owner.in_features):
                # torch's Linear(d, vocab) reading an Embedding's (vocab, d) table: handgrad's TiedLinear
                tied = L.TiedLinear(shared, bias=owner.bias is not None)
                _replace(model, ".".join(path), tied)
                continue
            if isinstance(owner, Module) and getattr(owner, attr).shape != shared.shape:  # type: ignore[union-attr]
                raise TypeError(f"'{name}' is tied to '{group[0]}' in a layout handgrad's {type(owner).__name__} "
                                "does not share (tie an Embedding to its output projection with TiedLinear)")
            setattr(owner, attr, shared)


def _replace(model: Module, name: str, new: Module) -> None:
    """Put `new` where the sub-module `name` sits (a Sequential's index, a list attribute's item, an attribute)."""
    *path, last = name.split(".")
    parent = _get(model, ".".join(path))
    if isinstance(parent, Sequential):
        parent.layers[int(last)] = new
    elif isinstance(parent, list):
        parent[int(last)] = new
    else:
        setattr(parent, last, new)


def _get(model: nn.Module | Module, name: str) -> object:
    obj = model
    for part in name.split(".") if name else ():
        obj = obj[int(part)] if part.isdigit() and not hasattr(obj, part) else getattr(obj, part)
    return obj


def _shared_names(named: list[tuple[str, Tensor]]) -> list[list[str]]:
    """Groups of names under which one tensor sits, for tensors with several."""
    groups: dict[int, list[str]] = {}
    for name, p in named:
        groups.setdefault(id(p), []).append(name)
    return [g for g in groups.values() if len(g) > 1]


def _first_tensor(params: list[Tensor], buffers: list[Tensor]) -> tuple[torch.dtype | None, torch.device | None]:
    """The dtype and device of the first parameter, else of the first floating buffer (BatchNorm without affine)."""
    tensors = list(params) + [b for b in buffers if b.is_floating_point()]
    return (tensors[0].dtype, tensors[0].device) if tensors else (None, None)


def to_torch(module: Module) -> nn.Module:
    """The torch.nn twin of a handgrad model: same structure, copies of its weights and buffers, same mode.
    A module placed twice is one torch module placed twice, and tied parameters are tied in the twin."""
    twin = _convert(_structure_to_torch, module)
    _tie(twin, _shared_names(list(module.named_parameters(remove_duplicate=False))))
    dtype, device = _first_tensor(module.parameters(), [b for _, b in module.named_buffers()])
    twin.to(device=device, dtype=dtype)
    twin.load_state_dict(module.state_dict())
    twin.train(module.training)
    return twin


def from_torch(module: nn.Module) -> Module:
    """A handgrad model equal to a torch.nn one: same structure, copies of its weights and buffers, same mode
    (reused modules and tied parameters stay so)."""
    model = _convert(_structure_from_torch, module)
    _tie(model, _shared_names(list(module.named_parameters(remove_duplicate=False))))
    dtype, device = _first_tensor(list(module.parameters()), list(module.buffers()))
    model.to(device=device, dtype=dtype)
    model.load_state_dict(module.state_dict())
    model.train(module.training)
    return model


__all__ = ["TorchCausalSelfAttention", "TorchCharRNN", "TorchGeneralRelu", "TorchPositionEmbedding", "TorchRecompute", "TorchResidual",
           "from_torch", "to_torch"]


# ------------------------------------------------------------------ handgrad layers inside torch.nn


def _flat_tensors(out: object) -> list[Tensor] | None:
    """The tensors of a tensor or of a (nested) tuple of tensors, in order; None for anything else."""
    if isinstance(out, Tensor):
        return [out]
    if isinstance(out, (tuple, list)) and out:
        parts = [_flat_tensors(o) for o in out]
        return None if any(p is None for p in parts) else [t for p in parts for t in p]
    return None


class _Leaf:
    """The place of the i-th tensor in a template of a module's (nested) inputs."""

    __slots__ = ("i",)

    def __init__(self, i: int) -> None:
        self.i = i


def _template(obj: object, leaves: list[Tensor]) -> object:
    """`obj` with each tensor (in tuples and lists, however nested) replaced by its _Leaf, appended to leaves;
    anything else (None, numbers) kept as it is: an LSTM's (x, (h0, c0)) or (x, None)."""
    if isinstance(obj, Tensor):
        leaves.append(obj)
        return _Leaf(len(leaves) - 1)
    if isinstance(obj, (tuple, list)):
        return type(obj)(_template(o, leaves) for o in obj)
    return obj


def _fill(template: object, tensors: list[Tensor]) -> object:
    if isinstance(template, _Leaf):
        return tensors[template.i]
    if isinstance(template, (tuple, list)):
        return type(template)(_fill(t, tensors) for t in template)
    return template


def _nested_like(structure: object, tensors: Iterator[Tensor]) -> object:
    if isinstance(structure, (tuple, list)):
        return type(structure)(_nested_like(o, tensors) for o in structure)
    return next(tensors)


class _HandgradFunction(torch.autograd.Function):
    """A torch.autograd.Function whose backward is the handgrad module's hand-written one.

    Each forward is one call of the module, with its own record (saved tensors, dropout mask): autograd's
    backward of that call runs the hand-written backward of that record, however many other calls ran since.
    """

    @staticmethod
    def forward(ctx, module: Module, options: dict, template: tuple, n_inputs: int,  # type: ignore[override]
                *tensors: Tensor) -> Tensor:
        inputs = [t.detach() for t in tensors[:n_inputs]]  # every input tensor, however nested in the arguments
        with lean(False):  # autograd may ask for this call's backward more than once: keep everything
            out = module(*_fill(template, inputs), **options)  # options: flags such as is_causal
        flat = _flat_tensors(out)
        if flat is None:
            raise TypeError(f"wrap({type(module).__name__}): forward returned a {type(out).__name__}; a wrapped "
                            "module must return a tensor or a tuple of tensors (as RNN, LSTM)")
        ctx.call, ctx.module, ctx.inputs = module.__dict__["_last"], module, inputs
        # what the hand-written backward reads, and each tensor's version now (as autograd's saved tensors)
        read = [(f"input {i}", t) for i, t in enumerate(inputs) if module.backward_reads_input()] + \
            [(f"output {i}", o) for i, o in enumerate(flat) if module.backward_reads_output()] + \
            [(f"parameter {n}", p) for n, p in module.named_parameters()]
        ctx.versions = [(what, t, t._version) for what, t in read]
        if isinstance(out, Tensor):
            return out.detach()
        return tuple(t.detach() for t in flat)  # autograd takes a flat tuple; forward below puts the nesting back

    @staticmethod
    def backward(ctx, *dys: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        module, call = ctx.module, ctx.call
        if isinstance(call.out, Tensor):
            dy = dys[0]
        else:  # one gradient per output tensor, put back into the output's nesting
            grads = iter(d.contiguous() for d in dys)
            dy = _nested_like(call.out, grads)
        if torch.is_grad_enabled():
            raise RuntimeError(f"wrap({type(module).__name__}): double backward (create_graph=True, gradgradcheck) "
                               "is not supported: handgrad's hand-written backward is not itself differentiated")
        for what, t, version in ctx.versions:
            if t._version != version:
                raise RuntimeError(f"wrap({type(module).__name__}): {what}, which its backward reads, was modified "
                                   f"by an in-place operation after the forward (version {version}, now "
                                   f"{t._version}); use an out-of-place operation (e.g. y = y * 2, y = y + skip)")
        params = module.parameters()
        # this call's gradients only, in fresh tensors: the parameters' own .g and buffers are put aside
        kept = [(getattr(p, "g", None), p.__dict__.pop("_gbuf", None)) for p in params]
        for p in params:
            p.g = None
        try:
            call.reopen()  # retain_graph: autograd may run this backward again
            for x in ctx.inputs:  # this run's input gradients only (an earlier run's would be added to)
                x.g = None
            with lean(False):
                run_backward(call, dy.contiguous() if isinstance(dy, Tensor) else dy)
            d_inputs = [getattr(x, "g", None) if x.is_floating_point() else None for x in ctx.inputs]
            d_params = [p.g for p in params]
        finally:
            for p, (g, buf) in zip(params, kept):
                p.g = g
                p.__dict__.pop("_gbuf", None)
                if buf is not None:
                    p.__dict__["_gbuf"] = buf
        return (None, None, None, None, *d_inputs, *d_params)


class _Shell(nn.Module):
    """The torch.nn face of one handgrad module: its parameters (sharing storage) and buffers, under the
    handgrad names, and its sub-modules' shells. It computes nothing itself."""

    def __init__(self, module: Module) -> None:
        super().__init__()
        object.__setattr__(self, "_handgrad", module)

    def _get_name(self) -> str:
        return type(self._handgrad).__name__

    def extra_repr(self) -> str:
        return self._handgrad.extra_repr()


def _layout_hooks(shell: nn.Module, module: Module) -> None:
    """The shell's state_dict in torch.nn's layouts (as module.state_dict()), and load_state_dict from them."""
    own = [n for n, _ in module._own_parameters()]

    def export(_shell, state, prefix, _meta):  # type: ignore[no-untyped-def]
        for name in own:
            if prefix + name in state:
                state[prefix + name] = module._export(name, state[prefix + name])

    def load(state, prefix, *_rest):  # type: ignore[no-untyped-def]  (torch passes its own copy of the dict)
        for name in own:
            if prefix + name in state:
                state[prefix + name] = module._import(name, state[prefix + name])

    shell._register_state_dict_hook(export)
    shell._register_load_state_dict_pre_hook(load)


def _mirror(module: Module, shell: nn.Module, params: dict[int, nn.Parameter], shells: dict[int, nn.Module],
            pairs: list[tuple[Module, str, nn.Module]]) -> None:
    """Fill `shell` with `module`'s parameters, buffers and sub-module shells (a tied parameter or a reused
    module maps to one torch object, as in torch)."""
    for name, p in module._own_parameters():
        if id(p) not in params:
            params[id(p)] = nn.Parameter(p.data)
        shell.register_parameter(name, params[id(p)])
    if type(module)._export is not Module._export:  # e.g. Linear's (in, out) weight: torch's layout in state dicts
        _layout_hooks(shell, module)
    for bname in module.buffer_names():
        shell.register_buffer(bname, getattr(module, bname))
        pairs.append((module, bname, shell))
    for name, child in module.named_children():
        parent = shell
        *path, last = name.split(".")  # `layers.0` (a list attribute) -> a container `layers` holding `0`
        for part in path:
            if part not in parent._modules:
                parent.add_module(part, nn.Module())
            parent = parent._modules[part]
        if id(child) not in shells:
            shells[id(child)] = _Shell(child)
            _mirror(child, shells[id(child)], params, shells, pairs)
        parent.add_module(last, shells[id(child)])


class TorchModule(nn.Module):
    """A handgrad Module running inside torch.nn: autograd calls its hand-written backward.

    Parameters and buffers appear under the handgrad names (`0.weight`, `1.running_mean`), the parameters
    sharing storage with the handgrad ones (a tied parameter once), so a torch optimizer trains the
    handgrad module, `loss.backward()` fills `.grad`, `.to()` moves both, and `state_dict()` holds both.
    Each call is its own record, so a module used several times in one graph gets every use's gradient.
    """

    def __init__(self, module: Module) -> None:
        super().__init__()
        object.__setattr__(self, "handgrad_module", module)  # a plain attribute: not an nn.Module
        params: dict[int, nn.Parameter] = {}
        self._buffer_pairs: list[tuple[Module, str, nn.Module]] = []
        _mirror(module, self, params, {id(module): self}, self._buffer_pairs)
        self._param_pairs = [(p, params[id(p)]) for p in module.parameters()]

    @property
    def params(self) -> list[nn.Parameter]:
        """The torch parameters, in the handgrad module's `parameters()` order."""
        return [tp for _, tp in self._param_pairs]

    def _sync(self) -> None:
        """The handgrad module follows the torch side: .to(), .double(), a loaded state dict."""
        for hp, tp in self._param_pairs:
            hp.data = tp.data
        for hmod, bname, shell in self._buffer_pairs:
            b = shell._buffers[bname]
            if getattr(hmod, bname) is not b:
                setattr(hmod, bname, b)

    def _apply(self, fn, *args, **kwargs):  # type: ignore[no-untyped-def]
        result = super()._apply(fn, *args, **kwargs)
        self._sync()
        return result

    def forward(self, *inputs: object, **options: object) -> Tensor:
        """The module on `inputs`: tensors, or tuples of them (an LSTM's (h0, c0)), or None where the module takes
        it; keyword `options` (flags such as is_causal) go to its forward as they are."""
        m = self.handgrad_module
        m.train(self.training)
        self._sync()
        leaves: list[Tensor] = []
        template = _template(inputs, leaves)
        out = _HandgradFunction.apply(m, options, template, len(leaves), *leaves, *self.params)
        if isinstance(out, Tensor):
            return out
        return _nested_like(m.__dict__["_last"].out, iter(out))  # (output, (h_n, c_n)) as the module returns it

    def _get_name(self) -> str:
        return f"TorchModule[{type(self.handgrad_module).__name__}]"

    def extra_repr(self) -> str:
        return self.handgrad_module.extra_repr()


def wrap(module: Module) -> TorchModule:
    """Use a handgrad Module (built-in or your own) as a torch.nn.Module trained by autograd."""
    return TorchModule(module)


__all__ += ["TorchModule", "wrap"]
