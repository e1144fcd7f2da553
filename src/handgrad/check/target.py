"""Load a user's Module from `path/to/file.py:ClassName` or `package.module:ClassName`."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ..errors import UsageError
from ..module import Module


def load_class(spec: str) -> type[Module]:
    """The Module subclass named by `spec`; UsageError (one line) when it cannot be had."""
    where, sep, name = spec.rpartition(":")
    if not sep or not where or not name:
        raise UsageError(f"expected TARGET as path/to/file.py:ClassName or package.module:ClassName, got {spec!r}")
    if where.endswith(".py") or "/" in where:
        path = Path(where)
        if not path.is_file():
            raise UsageError(f"{where}: no such file")
        mod_name = f"handgrad_target_{path.stem}"
        loader_spec = importlib.util.spec_from_file_location(mod_name, path)
        if loader_spec is None or loader_spec.loader is None:
            raise UsageError(f"{where}: cannot be imported as Python")
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[mod_name] = module
        sys.path.insert(0, str(path.parent.resolve()))  # so the file can import its neighbours
        no_cache, sys.dont_write_bytecode = sys.dont_write_bytecode, True  # no __pycache__ left in their folder
        try:
            loader_spec.loader.exec_module(module)
        except (Exception, SystemExit) as e:  # a sys.exit() in the file is not a success
            raise UsageError(f"{where}: importing it failed ({type(e).__name__}: {e})") from None
        finally:
            sys.path.pop(0)
            sys.dont_write_bytecode = no_cache
    else:
        try:
            module = importlib.import_module(where)
        except (Exception, SystemExit) as e:
            raise UsageError(f"cannot import {where} ({type(e).__name__}: {e})") from None
    cls = getattr(module, name, None)
    if cls is None:
        raise UsageError(f"{where} has no class {name}")
    if not (isinstance(cls, type) and issubclass(cls, Module)):
        raise UsageError(f"{where}:{name} is not a handgrad Module subclass (got {type(cls).__name__} "
                         f"{getattr(cls, '__name__', name)})")
    return cls


def parse_args(text: str | None) -> dict:
    if not text:
        return {}
    depth = deepest = 0
    for ch in text:  # before parsing: a JSON nested thousands deep must not exhaust the recursion limit
        depth += 1 if ch in "[{" else -1 if ch in "]}" else 0
        deepest = max(deepest, depth)
    if deepest > MAX_ARGS_DEPTH:
        raise UsageError(f"--args must be a JSON object nested at most {MAX_ARGS_DEPTH} deep, got {deepest} levels")
    try:
        args = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        raise UsageError(f"--args must be a JSON object like '{{\"n_in\": 16}}': {e}") from None
    if not isinstance(args, dict):
        raise UsageError(f"--args must be a JSON object like '{{\"n_in\": 16}}', got {text!r}")
    return args


MAX_ARGS_DEPTH = 32  # constructor arguments: sizes, lists of sizes, a few options


MAX_CHECK_ELEMENTS = 2**20  # per input, and 2x that over all inputs: a check runs a few forwards and backwards,
# autograd's among them, and finite differences on 256 elements per tensor (measured: 2^21 elements took 20 s and
# 0.8 GB); a layer's mistakes show at small sizes


def parse_shape(text: str) -> tuple[int, ...]:
    """`8,16` or `8x16`: every part a positive integer (an empty or stray part is an error, not skipped)."""
    parts = text.replace("x", ",").split(",")
    try:
        if not all(s.strip().isascii() and s.strip().isdigit() for s in parts):  # int() takes any script's digits
            raise ValueError
        shape = tuple(int(s) for s in parts)
    except ValueError:
        raise UsageError(f"--input-shape must be sizes like 8,16, got {text!r}") from None
    if not shape or any(s < 1 for s in shape):
        raise UsageError(f"--input-shape must be positive sizes like 8,16, got {text!r}")
    numel = 1
    for size in shape:
        numel *= size
    if numel > MAX_CHECK_ELEMENTS:
        raise UsageError(f"--input-shape {text!r} has {numel:,} elements; a gradient check takes at most "
                         f"{MAX_CHECK_ELEMENTS:,} per input (use small shapes: the check does not depend on size)")
    return shape


INPUT_SPEC_HELP = ("SHAPE for a random float input drawn from N(0, 1) (e.g. 8,16), SHAPE:float:LOW:HIGH for floats "
                   "uniform in [LOW, HIGH) (e.g. 8,16:float:0.1:2 for a layer that takes a sqrt or a log), "
                   "SHAPE:int:HIGH for int64 values in [0, HIGH) such as indices or class labels (e.g. 8:int:10)")


@dataclass(frozen=True)
class InputSpec:
    """One `--input-shape`: a float input (high None) or an int64 one with values in [0, high)."""

    shape: tuple[int, ...]
    high: int | None = None
    uniform: tuple[float, float] | None = None  # a float input uniform in [low, high) instead of N(0, 1)

    def __str__(self) -> str:
        if self.uniform is not None:
            return str(list(self.shape)) + f" uniform in [{self.uniform[0]:g}, {self.uniform[1]:g})"
        return str(list(self.shape)) + ("" if self.high is None else f" int64 in [0, {self.high})")

    def draw(self, gen: torch.Generator, dtype: torch.dtype) -> Tensor:
        if self.uniform is not None:
            low, high = self.uniform
            return torch.rand(self.shape, generator=gen, dtype=torch.float64).mul_(high - low).add_(low).to(dtype)
        if self.high is None:
            return torch.randn(self.shape, generator=gen, dtype=dtype)
        return torch.randint(0, self.high, self.shape, generator=gen, dtype=torch.int64)


def parse_input_spec(text: str) -> InputSpec:
    """`8,16` (float) or `8:int:10` (int64 in [0, 10)); UsageError (one line) otherwise."""
    shape_text, *kind = text.split(":")
    try:
        shape = parse_shape(shape_text)
    except UsageError as e:
        if "elements" in str(e):  # too large: that message says it
            raise
        raise UsageError(f"--input-shape {text!r}: SHAPE must be positive sizes like 8,16 "
                         f"(then optionally :int:HIGH or :float:LOW:HIGH), got {shape_text!r}") from None
    if not kind or kind == ["float"]:
        return InputSpec(shape)
    if kind[0] == "float":
        if len(kind) != 3:
            raise UsageError(f"--input-shape {text!r}: a float input's range is SHAPE:float:LOW:HIGH, e.g. "
                             f"{shape_text}:float:0.1:2")
        try:
            low, high = float(kind[1]), float(kind[2])
        except ValueError:
            raise UsageError(f"--input-shape {text!r}: LOW and HIGH in SHAPE:float:LOW:HIGH must be numbers, got "
                             f"{kind[1]!r} and {kind[2]!r}") from None
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise UsageError(f"--input-shape {text!r}: SHAPE:float:LOW:HIGH needs finite LOW < HIGH, got {low:g} "
                             f"and {high:g}")
        return InputSpec(shape, uniform=(low, high))
    if kind[0] != "int":
        raise UsageError(f"--input-shape {text!r}: expected SHAPE, SHAPE:float:LOW:HIGH or SHAPE:int:HIGH, got kind "
                         f"{kind[0]!r}")
    if len(kind) == 1:
        raise UsageError(f"--input-shape {text!r}: an int input needs its value range as SHAPE:int:HIGH, "
                         f"e.g. {shape_text}:int:10")
    if len(kind) > 2:
        raise UsageError(f"--input-shape {text!r}: expected SHAPE:int:HIGH with one HIGH, e.g. {shape_text}:int:10")
    try:
        high = int(kind[1])
    except ValueError:
        raise UsageError(f"--input-shape {text!r}: HIGH in SHAPE:int:HIGH must be an integer, got "
                         f"{kind[1]!r}") from None
    if high <= 0:
        raise UsageError(f"--input-shape {text!r}: HIGH in SHAPE:int:HIGH must be positive (values are drawn "
                         f"from [0, HIGH)), got {high}")
    return InputSpec(shape, high)


def check_arity(module: Module, given: int) -> None:
    """UsageError when `module.forward` cannot take `given` positional inputs."""
    try:
        params = list(inspect.signature(module.forward).parameters.values())
    except (TypeError, ValueError):  # no signature to read (a C function): let the call itself say
        return
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    fewest = sum(p.default is p.empty for p in positional)
    most = None if any(p.kind == p.VAR_POSITIONAL for p in params) else len(positional)
    if given >= fewest and (most is None or given <= most):
        return
    if most is None:
        takes = f"at least {fewest}"
    elif most == fewest:
        takes = str(fewest)
    else:
        takes = f"{fewest} to {most}"
    names = ", ".join(p.name for p in positional)
    plural = "" if takes == "1" else "s"
    raise UsageError(f"{type(module).__name__}.forward({names}) takes {takes} input{plural}, got {given} "
                     f"(one per --input-shape)")


def instantiate(cls: type[Module], args: dict) -> Module:
    try:
        return cls(**args)
    except (Exception, SystemExit) as e:  # a sys.exit() in __init__ is not a success
        raise UsageError(f"cannot construct {cls.__name__}(**{args}): {type(e).__name__}: {e}") from None
