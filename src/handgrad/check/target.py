"""Load a user's Module from `path/to/file.py:ClassName` or `package.module:ClassName`."""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
from pathlib import Path

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
        try:
            loader_spec.loader.exec_module(module)
        except Exception as e:
            raise UsageError(f"{where}: importing it failed ({type(e).__name__}: {e})") from None
        finally:
            sys.path.pop(0)
    else:
        try:
            module = importlib.import_module(where)
        except Exception as e:
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
    try:
        args = json.loads(text)
    except json.JSONDecodeError as e:
        raise UsageError(f"--args must be a JSON object like '{{\"n_in\": 16}}': {e}") from None
    if not isinstance(args, dict):
        raise UsageError(f"--args must be a JSON object like '{{\"n_in\": 16}}', got {text!r}")
    return args


def parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in text.replace("x", ",").split(",") if s.strip())
    except ValueError:
        raise UsageError(f"--input-shape must be sizes like 8,16, got {text!r}") from None
    if not shape or any(s < 1 for s in shape):
        raise UsageError(f"--input-shape must be positive sizes like 8,16, got {text!r}")
    return shape


def instantiate(cls: type[Module], args: dict) -> Module:
    try:
        return cls(**args)
    except Exception as e:
        raise UsageError(f"cannot construct {cls.__name__}(**{args}): {type(e).__name__}: {e}") from None
