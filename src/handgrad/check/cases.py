"""Built-in layers at random shapes: what `handgrad check` verifies."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from .. import layers as L
from ..losses import CrossEntropyLoss, MSELoss, NLLLoss
from ..module import Module, Sequential


@dataclass
class Case:
    name: str
    module: Module
    inputs: tuple[Tensor, ...]
    float32_rtol: float | None = None  # stated looser tolerance vs autograd in float32, for deep composites


def _dim(gen: torch.Generator, lo: int, hi: int) -> int:
    return int(torch.randint(lo, hi + 1, (1,), generator=gen))


def _randn(gen: torch.Generator, *shape: int) -> Tensor:
    return torch.randn(*shape, generator=gen, dtype=torch.float64)


def _choice(gen: torch.Generator, options: list) -> object:
    return options[int(torch.randint(0, len(options), (1,), generator=gen))]


def _coin(gen: torch.Generator) -> bool:
    return bool(torch.randint(0, 2, (1,), generator=gen))


def _eval(case: Case) -> Case:
    case.module.eval()
    return Case(case.name + " [eval]", case.module, case.inputs, case.float32_rtol)


def _linear(gen: torch.Generator) -> Case:
    n, i, o = _dim(gen, 1, 8), _dim(gen, 1, 12), _dim(gen, 1, 12)
    bias = _coin(gen)
    return Case(f"Linear({i}->{o}{'' if bias else ', no bias'})", L.Linear(i, o, bias=bias), (_randn(gen, n, i),))


def _elementwise(name: str, make: Callable[[], Module], scale: float = 1.0) -> Callable[[torch.Generator], Case]:
    def build(gen: torch.Generator) -> Case:
        shape = (_dim(gen, 1, 6), _dim(gen, 1, 10))
        return Case(name, make(), (_randn(gen, *shape) * scale,))

    return build


def _conv(gen: torch.Generator) -> Case:
    groups = _choice(gen, [1, 1, 2, 3])
    ci, co = groups * _dim(gen, 1, 2), groups * _dim(gen, 1, 2)
    k, s, p, d = _dim(gen, 1, 3), _dim(gen, 1, 2), _dim(gen, 0, 2), _dim(gen, 1, 2)
    bias = _coin(gen)
    size = d * (k - 1) + 1 + _dim(gen, 0, 4)
    n = _dim(gen, 1, 2)
    conv = L.Conv2d(ci, co, k, stride=s, padding=p, dilation=d, groups=groups, bias=bias)
    return Case(f"Conv2d({ci}->{co}, k{k} s{s} p{p} d{d} g{groups}{'' if bias else ', no bias'})", conv,
                (_randn(gen, n, ci, size, size),))


def _maxpool(gen: torch.Generator) -> Case:
    k, s = _dim(gen, 1, 3), _dim(gen, 1, 3)
    p = _dim(gen, 0, k // 2)
    return Case(f"MaxPool2d(k{k} s{s} p{p})", L.MaxPool2d(k, s, p),
                (_randn(gen, _dim(gen, 1, 2), _dim(gen, 1, 3), _dim(gen, k, 7), _dim(gen, k, 7)),))


def _avgpool(gen: torch.Generator) -> Case:
    k, s = _dim(gen, 1, 3), _dim(gen, 1, 3)
    p = _dim(gen, 0, k // 2)
    return Case(f"AvgPool2d(k{k} s{s} p{p})", L.AvgPool2d(k, s, p),
                (_randn(gen, _dim(gen, 1, 2), _dim(gen, 1, 3), _dim(gen, k, 7), _dim(gen, k, 7)),))


def _adaptive(gen: torch.Generator) -> Case:
    o = _choice(gen, [1, 1, 2])
    h = o * _dim(gen, 1, 3)
    return Case(f"AdaptiveAvgPool2d({o})", L.AdaptiveAvgPool2d(o), (_randn(gen, 2, 3, h, h),))


def _flatten(gen: torch.Generator) -> Case:
    return Case("Flatten", L.Flatten(), (_randn(gen, 2, _dim(gen, 1, 3), _dim(gen, 1, 4), 3),))


def _unflatten(gen: torch.Generator) -> Case:
    return Case("Unflatten", L.Unflatten(1, (2, 3)), (_randn(gen, _dim(gen, 1, 3), 6),))


def _random_stats(bn: Module, gen: torch.Generator, c: int) -> Module:
    bn.running_mean.copy_(_randn(gen, c))
    bn.running_var.copy_(_randn(gen, c).abs() + 0.5)
    bn.weight.data.copy_(_randn(gen, c))
    bn.bias.data.copy_(_randn(gen, c))
    return bn


def _bn1d(gen: torch.Generator) -> Case:
    c = _dim(gen, 1, 5)
    shape = _choice(gen, [(_dim(gen, 2, 6), c), (_dim(gen, 1, 4), c, _dim(gen, 2, 5))])
    return Case(f"BatchNorm1d({c})", _random_stats(L.BatchNorm1d(c), gen, c), (_randn(gen, *shape) * 2 + 1,))


def _bn2d(gen: torch.Generator) -> Case:
    c = _dim(gen, 1, 4)
    x = _randn(gen, _dim(gen, 1, 3), c, _dim(gen, 2, 4), _dim(gen, 2, 4)) * 2 + 1
    return Case(f"BatchNorm2d({c})", _random_stats(L.BatchNorm2d(c), gen, c), (x,))


def _layernorm(gen: torch.Generator) -> Case:
    shape = (_dim(gen, 1, 4), _dim(gen, 2, 5), _dim(gen, 2, 5))
    k = _dim(gen, 1, 2)
    ln = L.LayerNorm(shape[-k:])
    ln.weight.data.copy_(_randn(gen, *shape[-k:]))
    ln.bias.data.copy_(_randn(gen, *shape[-k:]))
    return Case(f"LayerNorm({list(shape[-k:])})", ln, (_randn(gen, *shape),))


def _dropout(gen: torch.Generator) -> Case:
    p = _choice(gen, [0.1, 0.5, 0.8])
    return Case(f"Dropout(p={p})", L.Dropout(p), (_randn(gen, _dim(gen, 1, 6), _dim(gen, 1, 10)),))


def _embedding(gen: torch.Generator) -> Case:
    num, dim = _dim(gen, 2, 10), _dim(gen, 1, 5)
    idx = torch.randint(0, num, (_dim(gen, 1, 4), _dim(gen, 1, 5)), generator=gen)
    return Case(f"Embedding({num}, {dim})", L.Embedding(num, dim), (idx,))


def _recurrent(kind: str) -> Callable[[torch.Generator], Case]:
    def make(gen: torch.Generator) -> Case:
        t, n, i, h, layers = _dim(gen, 1, 5), _dim(gen, 1, 3), _dim(gen, 1, 4), _dim(gen, 1, 5), _dim(gen, 1, 2)
        batch_first = bool(_dim(gen, 0, 1))
        layer = getattr(L, kind)(i, h, layers, batch_first=batch_first)
        shape = (n, t, i) if batch_first else (t, n, i)
        return Case(f"{kind}({i}, {h}, num_layers={layers}{', batch_first' if batch_first else ''})", layer,
                    (_randn(gen, *shape),))
    return make


def _attention(gen: torch.Generator) -> Case:
    heads = _dim(gen, 1, 3)
    e, length, source, n = heads * _dim(gen, 1, 3), _dim(gen, 1, 5), _dim(gen, 1, 5), _dim(gen, 1, 3)
    causal = bool(_dim(gen, 0, 1))
    source = length if causal else source  # causal self-attention shapes
    layer = L.MultiheadAttention(e, heads)
    inputs = (_randn(gen, length, n, e), _randn(gen, source, n, e), _randn(gen, source, n, e))
    if causal:
        layer = _Causal(layer)
    return Case(f"MultiheadAttention({e}, {heads}{', causal' if causal else ''})", layer, inputs)


class _Causal(Module):
    """Attention with is_causal=True (the check passes inputs only)."""

    def __init__(self, attention: Module) -> None:
        super().__init__()
        self.attention = attention

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> tuple:
        return self.attention(q, k, v, is_causal=True)


def _residual(gen: torch.Generator) -> Case:
    c = _dim(gen, 1, 3)
    body = Sequential(L.Linear(c * 2, c * 2), L.Tanh())
    return Case("Residual(identity)", L.Residual(body), (_randn(gen, _dim(gen, 1, 5), c * 2),))


def _res_block(gen: torch.Generator) -> Case:
    ni, nf, stride = _dim(gen, 1, 3), _dim(gen, 1, 4), _dim(gen, 1, 2)
    x = _randn(gen, 2, ni, _dim(gen, 3, 5), _dim(gen, 3, 5))
    # conv -> batch norm -> conv -> batch norm: float32 rounding is amplified by each 1/std
    return Case(f"res_block({ni}->{nf}, stride {stride})", L.res_block(ni, nf, stride), (x,), float32_rtol=1e-3)


def _mlp(gen: torch.Generator) -> Case:
    n, i, h, o = _dim(gen, 1, 8), _dim(gen, 2, 12), _dim(gen, 2, 12), _dim(gen, 1, 6)
    model = Sequential(L.Linear(i, h), L.ReLU(), L.Linear(h, o))
    return Case(f"Sequential(Linear({i}->{h}), ReLU, Linear({h}->{o}))", model, (_randn(gen, n, i),))


def _reused(gen: torch.Generator) -> Case:
    n, c = _dim(gen, 1, 6), _dim(gen, 2, 8)
    lin = L.Linear(c, c)
    return Case(f"Sequential(l, Tanh, l), l = Linear({c}->{c}) called twice", Sequential(lin, L.Tanh(), lin),
                (_randn(gen, n, c),))


def _tied(gen: torch.Generator) -> Case:
    num, dim = _dim(gen, 2, 10), _dim(gen, 1, 5)
    emb = L.Embedding(num, dim)
    model = Sequential(emb, L.Tanh(), L.TiedLinear(emb.weight, bias=True))
    idx = torch.randint(0, num, (_dim(gen, 1, 6),), generator=gen)
    return Case(f"Embedding({num}, {dim}) tied to TiedLinear", model, (idx,))


def _mse(gen: torch.Generator) -> Case:
    n = _dim(gen, 1, 8)
    return Case("MSELoss", MSELoss(), (_randn(gen, n, 3), _randn(gen, n, 3)))


def _mse_seeds(gen: torch.Generator) -> Case:
    n = _dim(gen, 1, 8)
    target = torch.randint(0, 10, (n,), generator=gen)
    return Case("MSELoss([N,1] vs [N])", MSELoss(), (_randn(gen, n, 1), target))


def _labels(gen: torch.Generator, n: int, c: int) -> Tensor:
    return torch.randint(0, c, (n,), generator=gen)


def _cross_entropy(gen: torch.Generator) -> Case:
    n, c = _dim(gen, 1, 8), _dim(gen, 2, 10)
    return Case("CrossEntropyLoss", CrossEntropyLoss(), (_randn(gen, n, c) * 3, _labels(gen, n, c)))


def _nll(gen: torch.Generator) -> Case:
    n, c = _dim(gen, 1, 8), _dim(gen, 2, 10)
    return Case("NLLLoss", NLLLoss(), (_randn(gen, n, c), _labels(gen, n, c)))


def _position(gen: torch.Generator) -> Case:
    from ..layers.transformer import PositionEmbedding

    n, t, d = _dim(gen, 1, 3), _dim(gen, 1, 5), _dim(gen, 1, 6)
    return Case(f"PositionEmbedding({t + 2}, {d})", PositionEmbedding(t + 2, d), (_randn(gen, n, t, d),))


def _block(gen: torch.Generator) -> Case:
    from ..layers.transformer import Block

    heads = _dim(gen, 1, 2)
    d, n, t = heads * _dim(gen, 1, 3), _dim(gen, 1, 3), _dim(gen, 1, 5)
    recompute = bool(_dim(gen, 0, 1))
    return Case(f"Block({d}, {heads}{', recompute' if recompute else ''})", Block(d, heads, recompute=recompute),
                (_randn(gen, n, t, d),))


def _linear_cross_entropy(gen: torch.Generator) -> Case:
    from ..layers.fused_output import LinearCrossEntropy

    n, d, c = _dim(gen, 1, 9), _dim(gen, 1, 6), _dim(gen, 2, 10)
    chunk = _dim(gen, 1, 4)
    return Case(f"LinearCrossEntropy({d}, {c}, chunk={chunk})", LinearCrossEntropy(d, c, bias=True, chunk=chunk),
                (_randn(gen, n, d), _labels(gen, n, c)))


def _token_cross_entropy(gen: torch.Generator) -> Case:
    from ..losses import TokenCrossEntropyLoss

    n, t, c = _dim(gen, 1, 3), _dim(gen, 1, 5), _dim(gen, 2, 8)
    return Case("TokenCrossEntropyLoss", TokenCrossEntropyLoss(),
                (_randn(gen, n, t, c) * 3, torch.randint(0, c, (n, t), generator=gen)))


def _in_eval(make: Callable[[torch.Generator], Case]) -> Callable[[torch.Generator], Case]:
    return lambda gen: _eval(make(gen))


BUILTIN_CASES: dict[str, Callable[[torch.Generator], Case]] = {
    "Linear": _linear,
    "ReLU": _elementwise("ReLU", L.ReLU),
    "LeakyReLU": _elementwise("LeakyReLU(0.1)", lambda: L.LeakyReLU(0.1)),
    "GeneralRelu": _elementwise("GeneralRelu(0.1, 0.4, 6)", lambda: L.GeneralRelu(0.1, 0.4, 6.0), scale=4.0),
    "GELU": _elementwise("GELU", L.GELU),
    "GELU-tanh": _elementwise("GELU(tanh)", lambda: L.GELU("tanh")),
    "Sigmoid": _elementwise("Sigmoid", L.Sigmoid),
    "Tanh": _elementwise("Tanh", L.Tanh),
    "SiLU": _elementwise("SiLU", L.SiLU),
    "Softmax": _elementwise("Softmax", lambda: L.Softmax(-1), scale=3.0),
    "LogSoftmax": _elementwise("LogSoftmax", lambda: L.LogSoftmax(-1), scale=3.0),
    "Conv2d": _conv,
    "MaxPool2d": _maxpool,
    "AvgPool2d": _avgpool,
    "AdaptiveAvgPool2d": _adaptive,
    "Flatten": _flatten,
    "Unflatten": _unflatten,
    "BatchNorm1d": _bn1d,
    "BatchNorm1d-eval": _in_eval(_bn1d),
    "BatchNorm2d": _bn2d,
    "BatchNorm2d-eval": _in_eval(_bn2d),
    "LayerNorm": _layernorm,
    "Dropout": _dropout,
    "Dropout-eval": _in_eval(_dropout),
    "Embedding": _embedding,
    "Residual": _residual,
    "res_block": _res_block,
    "res_block-eval": _in_eval(_res_block),
    "Sequential": _mlp,
    "Sequential-reused": _reused,
    "TiedLinear": _tied,
    "MSELoss": _mse,
    "MSELoss-seeds": _mse_seeds,
    "CrossEntropyLoss": _cross_entropy,
    "NLLLoss": _nll,
    "RNN": _recurrent("RNN"),  # last: the cases before draw the shapes they always drew
    "LSTM": _recurrent("LSTM"),
    "MultiheadAttention": _attention,
    "PositionEmbedding": _position,
    "Block": _block,
    "LinearCrossEntropy": _linear_cross_entropy,
    "TokenCrossEntropyLoss": _token_cross_entropy,
}


def builtin_cases(seed: int = 0, repeats: int = 2) -> Iterator[Case]:
    """Every built-in layer, `repeats` times at random shapes drawn from `seed`."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # layer initialisation
    for make in BUILTIN_CASES.values():
        for _ in range(repeats):
            yield make(gen)
