"""Built-in layers at random shapes: what `handgrad check` verifies."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from ..layers import Linear, LogSoftmax, ReLU
from ..losses import CrossEntropyLoss, MSELoss, NLLLoss
from ..module import Module, Sequential


@dataclass
class Case:
    name: str
    module: Module
    inputs: tuple[Tensor, ...]


def _dim(gen: torch.Generator, lo: int, hi: int) -> int:
    return int(torch.randint(lo, hi + 1, (1,), generator=gen))


def _randn(gen: torch.Generator, *shape: int) -> Tensor:
    return torch.randn(*shape, generator=gen, dtype=torch.float64)


def _linear(gen: torch.Generator) -> Case:
    n, i, o = _dim(gen, 1, 8), _dim(gen, 1, 12), _dim(gen, 1, 12)
    bias = bool(torch.randint(0, 2, (1,), generator=gen))
    return Case(f"Linear({i}->{o}{'' if bias else ', no bias'})", Linear(i, o, bias=bias),
                (_randn(gen, n, i),))


def _relu(gen: torch.Generator) -> Case:
    shape = (_dim(gen, 1, 8), _dim(gen, 1, 12))
    return Case("ReLU", ReLU(), (_randn(gen, *shape),))


def _log_softmax(gen: torch.Generator) -> Case:
    shape = (_dim(gen, 1, 8), _dim(gen, 2, 12))
    return Case("LogSoftmax", LogSoftmax(dim=-1), (_randn(gen, *shape) * 3,))


def _mlp(gen: torch.Generator) -> Case:
    n, i, h, o = _dim(gen, 1, 8), _dim(gen, 2, 12), _dim(gen, 2, 12), _dim(gen, 1, 6)
    model = Sequential(Linear(i, h), ReLU(), Linear(h, o))
    return Case(f"Sequential(Linear({i}->{h}), ReLU, Linear({h}->{o}))", model, (_randn(gen, n, i),))


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


BUILTIN_CASES: dict[str, Callable[[torch.Generator], Case]] = {
    "Linear": _linear,
    "ReLU": _relu,
    "LogSoftmax": _log_softmax,
    "Sequential": _mlp,
    "MSELoss": _mse,
    "MSELoss-seeds": _mse_seeds,
    "CrossEntropyLoss": _cross_entropy,
    "NLLLoss": _nll,
}


def builtin_cases(seed: int = 0, repeats: int = 2) -> Iterator[Case]:
    """Every built-in layer, `repeats` times at random shapes drawn from `seed`."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # layer initialisation
    for make in BUILTIN_CASES.values():
        for _ in range(repeats):
            yield make(gen)
