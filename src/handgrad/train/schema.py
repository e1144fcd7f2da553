"""What a run folder's files must hold, checked when they are read: `config.json` against TrainConfig's typed
fields, the checkpoint's metadata against CHECKPOINT_META, and its tensors against the model and optimizer they
are loaded into. Each problem is one DataError line naming the file, the key, what was expected and what came.
"""

from __future__ import annotations

import math
import re
import types
import typing
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import DataError
from .config import TrainConfig

# the checkpoint metadata every handgrad checkpoint carries (CheckpointCB writes it): an image run's, a text run's
CHECKPOINT_META: dict[str, Any] = {
    "epoch": int, "batch": int, "t": int, "opt_steps": int, "opt_hyper": dict, "n_params": int,
    "callbacks": dict, "classes": list[str], "mean": float | None, "std": float | None, "dataset": str,
    "n_in": int, "trained_under": dict,
}
TEXT_CHECKPOINT_META: dict[str, Any] = {
    "epoch": int, "batch": int, "t": int, "opt_steps": int, "opt_hyper": dict, "n_params": int,
    "callbacks": dict, "vocab": str, "dataset": str, "trained_under": dict,
}
OPTIONAL_META = ("trained_under",)  # checkpoints written before it was recorded lack it


def type_name(tp: Any) -> str:
    """int, float or None, list of int, ... as a user reads them."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(type_name(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is list:
        return f"a list of {type_name(typing.get_args(tp)[0])}"
    if tp is type(None):
        return "null"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false", dict: "an object",
            list: "a list"}.get(tp, getattr(tp, "__name__", str(tp)))


def fits(value: object, tp: Any) -> bool:
    """Whether a JSON value has type `tp` (bool is not an integer; an integer is a number)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(fits(value, a) for a in typing.get_args(tp))
    if origin is list:
        return isinstance(value, list) and all(fits(v, typing.get_args(tp)[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, tp)


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _came(value: object) -> str:
    kind = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "an object", type(None): "null"}.get(type(value), type(value).__name__)
    return f"{_shown(value)} ({kind})"


def check_fields(d: object, schema: dict[str, Any], where: str, required: bool,
                 optional: tuple[str, ...] = ()) -> dict:
    """`d` a JSON object whose keys are in `schema` with values of its types (when required, every key but the
    `optional` ones: keys added later, which older files lack)."""
    if not isinstance(d, dict):
        raise DataError(f"{where}: expected a JSON object, got {_came(d)}")
    for key, value in d.items():
        if key not in schema:
            raise DataError(f"{where}: unknown key {key!r} (expected keys: {', '.join(schema)})")
        if not fits(value, schema[key]):
            raise DataError(f"{where}: key {key!r}: expected {type_name(schema[key])}, got {_came(value)}")
    if required:
        missing = [k for k in schema if k not in d and k not in optional]
        if missing:
            raise DataError(f"{where}: missing key {missing[0]!r} ({type_name(schema[missing[0]])})")
    return d


def config_from_json(d: object, path: Path) -> TrainConfig:
    """A run's TrainConfig from its parsed config.json: every key known and typed, the values valid. Keys it
    lacks take their defaults (a config written before the key existed)."""
    hints = typing.get_type_hints(TrainConfig)
    check_fields(d, hints, str(path), required=False)
    cfg = TrainConfig(**d)  # type: ignore[arg-type]
    try:
        cfg.validate()
    except ValueError as e:
        raise DataError(f"{path}: {e}") from None
    if cfg.fingerprint is not None and cfg.is_text:
        check_fields(cfg.fingerprint, TEXT_FINGERPRINT, f"{path} (fingerprint)", required=True)
    elif cfg.fingerprint is not None:
        check_fingerprint(cfg.fingerprint, path)
    if cfg.dataset == "auto" and cfg.fingerprint is not None:
        raise DataError(f"{path}: key 'dataset': expected the resolved data set (mnist or fashion-mnist) beside "
                        "a fingerprint, got 'auto'")
    return cfg


FINGERPRINT = {"files": dict, "n_train": int, "n_valid": int, "n_test": int}
FILE_DIGEST = {"bytes": int, "sha256": str}
TEXT_FINGERPRINT = {"chars": int, "sha256": str}


def check_fingerprint(fp: dict, path: Path) -> None:
    """config.json's fingerprint: {"files": {name: {"bytes", "sha256"}}, "n_train", "n_valid", "n_test"}."""
    check_fields(fp, FINGERPRINT, f"{path} (fingerprint)", required=True)
    for name, digest in fp["files"].items():
        check_fields(digest, FILE_DIGEST, f"{path} (fingerprint of {name})", required=True)


def check_meta(meta: object, path: Path) -> dict:
    """The checkpoint's metadata: every key of CHECKPOINT_META (TEXT_CHECKPOINT_META for a text run's), typed."""
    text = isinstance(meta, dict) and "vocab" in meta
    check_fields(meta, TEXT_CHECKPOINT_META if text else CHECKPOINT_META, f"{path} metadata", required=True,
                 optional=OPTIONAL_META)
    assert isinstance(meta, dict)
    for key in ("epoch", "batch", "t", "opt_steps", "n_params") + (() if text else ("n_in",)):
        if meta[key] < 0:
            raise DataError(f"{path} metadata: key {key!r}: expected a count >= 0, got {meta[key]}")
    if text:
        if not meta["vocab"] or len(set(meta["vocab"])) != len(meta["vocab"]):
            raise DataError(f"{path} metadata: key 'vocab': expected the run's distinct characters, got "
                            f"{_came(meta['vocab'])}")
        return meta
    if not meta["classes"]:
        raise DataError(f"{path} metadata: key 'classes': expected the class names, got an empty list")
    for key in ("mean", "std"):
        if meta[key] is not None and not math.isfinite(meta[key]):
            raise DataError(f"{path} metadata: key {key!r}: expected a finite number, got {meta[key]}")
    if meta["std"] is not None and meta["std"] <= 0:
        raise DataError(f"{path} metadata: key 'std': expected a number > 0, got {meta['std']}")
    return meta


CALLBACK_STATE = {"MetricsCB": {"history": list[dict], "loss_sum": float, "seen": int, "seconds": float,
                                "batch_losses": list[float]},
                  "EarlyStoppingCB": {"best": float | None, "bad_epochs": int},
                  "SampleCB": {"samples": list[list]}}
# keys a run folder written before they existed lacks (its per-batch losses are then unknown)
OPTIONAL_STATE = ("batch_losses", "step")
# one epoch of MetricsCB's history, and one line of metrics.jsonl
EPOCH_STATS = {"epoch": int, "train_loss": float, "valid_loss": float, "valid_acc": float, "seconds": float,
               "batch_losses": list[float], "step": int | None}


def check_epochs(rows: list, where: str) -> list[dict]:
    """Epoch statistics (metrics.jsonl's lines, or the history in a checkpoint): typed, numbered 1, 2, ... in
    order."""
    for i, row in enumerate(rows):
        check_fields(row, EPOCH_STATS, f"{where} (epoch {i + 1})", required=True, optional=OPTIONAL_STATE)
        if row["epoch"] != i + 1:
            raise DataError(f"{where} (epoch {i + 1}): key 'epoch': expected {i + 1} (the epochs in order), got "
                            f"{_came(row['epoch'])}")
    return rows


def check_position(meta: dict, path: Path, epochs: int, batches: int, n_params: int,
                   callbacks: set[str]) -> None:
    """Where the checkpoint says the run stands fits the run: an epoch of its config, a batch of an epoch, one
    optimizer state per parameter."""
    if meta["n_params"] != n_params:
        raise DataError(f"{path} metadata: key 'n_params': the model has {n_params} parameters, got "
                        f"{meta['n_params']}")
    if meta["epoch"] > epochs:
        raise DataError(f"{path} metadata: key 'epoch': expected at most the run's {epochs} epochs, got "
                        f"{meta['epoch']}")
    if meta["batch"] > batches:
        raise DataError(f"{path} metadata: key 'batch': an epoch has {batches} batches, got {meta['batch']}")
    saved = meta["callbacks"]
    for name in sorted(set(saved) ^ (callbacks & set(CALLBACK_STATE))):
        what = "is not one of this run's" if name in saved else "is missing (this run has it)"
        raise DataError(f"{path} metadata: the state of callback {name} {what}")
    for name, state in saved.items():
        check_fields(state, CALLBACK_STATE[name], f"{path} metadata (callbacks.{name})", required=True,
                     optional=OPTIONAL_STATE)
    if "MetricsCB" in saved:
        metrics = saved["MetricsCB"]
        if len(metrics["history"]) != meta["epoch"]:
            raise DataError(f"{path} metadata: {len(metrics['history'])} epochs of history, but key 'epoch' says "
                            f"{meta['epoch']} are done")
        # (not checked against this run's batches per epoch: a run resumed on other data, on purpose, changes them)
        check_epochs(metrics["history"], f"{path} metadata (callbacks.MetricsCB.history)")
        if "batch_losses" in metrics and len(metrics["batch_losses"]) != meta["batch"]:
            raise DataError(f"{path} metadata (callbacks.MetricsCB): key 'batch_losses': expected one loss for each "
                            f"of the {meta['batch']} batches done in this epoch (key 'batch'), got "
                            f"{len(metrics['batch_losses'])}")
    if "EarlyStoppingCB" in saved:
        best, bad = saved["EarlyStoppingCB"]["best"], saved["EarlyStoppingCB"]["bad_epochs"]
        if not 0 <= bad <= meta["epoch"] or (best is not None and math.isnan(best)):
            raise DataError(f"{path} metadata (callbacks.EarlyStoppingCB): expected bad_epochs from 0 to "
                            f"{meta['epoch']} and a best loss that is a number, got {bad} and {best}")


def check_model_tensors(tensors: dict[str, Tensor], expected: dict[str, Tensor], path: Path,
                        prefix: str = "model.") -> dict[str, Tensor]:
    """The checkpoint's `prefix`-tensors, keyed as `expected` (the model's state_dict), each of its shape and
    dtype: no silent cast, no silent reshape."""
    got = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    if missing or unexpected:
        key, what = (missing[0], "missing") if missing else (unexpected[0], "not in this model")
        raise DataError(f"{path}: tensor {prefix}{key} is {what} (the run's config builds a model with "
                        f"{', '.join(list(expected)[:4])}{', ...' if len(expected) > 4 else ''})")
    for key, want in expected.items():
        value = got[key]
        if value.dtype != want.dtype or tuple(value.shape) != tuple(want.shape):
            raise DataError(f"{path}: tensor {prefix}{key}: expected {str(want.dtype)[6:]} of shape "
                            f"{list(want.shape)}, got {str(value.dtype)[6:]} of shape {list(value.shape)}")
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):  # training never saves these
            raise DataError(f"{path}: tensor {prefix}{key} holds NaN or infinite values")
    return got


def check_rng(tensors: dict[str, Tensor], path: Path) -> None:
    rng = tensors.get("rng.cpu")
    if rng is None or rng.dtype != torch.uint8 or rng.dim() != 1:
        got = "nothing" if rng is None else f"{str(rng.dtype)[6:]} of shape {list(rng.shape)}"
        raise DataError(f"{path}: tensor rng.cpu: expected the random generator's state (uint8, 1-d), got {got}")
    for key, value in tensors.items():  # the other ranks' (rng.cpu.rankR) and the devices' (rng.cuda.I, .rankR)
        if not key.startswith("rng.") or key == "rng.cpu":
            continue
        if not re.fullmatch(r"rng\.(cpu\.rank[1-9]\d*|cuda\.(rank)?\d+)", key):
            raise DataError(f"{path}: tensor {key}: expected rng.cpu, rng.cpu.rankR (R >= 1), rng.cuda.I or "
                            "rng.cuda.rankR")
        like = rng if key.startswith("rng.cpu") else None
        if value.dtype != torch.uint8 or value.dim() != 1 or (like is not None and value.shape != like.shape):
            shape = f"{list(like.shape)}" if like is not None else "1-d"
            raise DataError(f"{path}: tensor {key}: expected a random generator's state (uint8, {shape}), got "
                            f"{str(value.dtype)[6:]} of shape {list(value.shape)}")


OPTIMIZER_STATE = {"SGD": ({"momentum_buffer"}, set()), "Adam": ({"step", "exp_avg", "exp_avg_sq"},) * 2,
                   "AdamW": ({"step", "exp_avg", "exp_avg_sq"},) * 2}  # (allowed, required once stepped)


def check_optimizer_tensors(tensors: dict[str, Tensor], params: list[Tensor], path: Path, optimizer: str,
                            steps: int, momentum: bool = False) -> None:
    """Each `opt.I.NAME` tensor belongs to parameter I, NAME one the optimizer keeps, with its parameter's
    shape and dtype (`step`: a 0-d count from 0 to `steps`); once the optimizer has stepped every parameter has
    what it needs (SGD: a momentum buffer where `momentum`), and every parameter keeps the same kinds of state.
    Any other tensor is refused."""
    keys, required = OPTIMIZER_STATE[optimizer]
    if optimizer == "SGD" and momentum:
        required = {"momentum_buffer"}
    found: list[set[str]] = [set() for _ in params]
    for key, value in tensors.items():
        if key.startswith(("model.", "rng.")):
            continue
        parts = key.split(".", 2)
        if parts[0] != "opt" or len(parts) != 3 or not parts[1].isdigit() or int(parts[1]) >= len(params):
            raise DataError(f"{path}: tensor {key} is not the model's, the optimizer's ({len(params)} parameters) "
                            "or the random generator's")
        p, name = params[int(parts[1])], parts[2]
        if name not in keys:
            raise DataError(f"{path}: tensor {key}: the optimizer keeps {', '.join(sorted(keys)) or 'nothing'} "
                            f"per parameter, not {name!r}")
        found[int(parts[1])].add(name)
        if name == "step":
            if value.dim() != 0 or not value.is_floating_point() or not (0 <= float(value) <= steps):
                raise DataError(f"{path}: tensor {key}: expected a 0-d count from 0 to {steps}, got {str(value.dtype)[6:]} "
                                f"of shape {list(value.shape)}" + (f" = {float(value)}" if value.dim() == 0 else ""))
            continue
        if value.dtype != p.dtype or tuple(value.shape) != tuple(p.shape):
            raise DataError(f"{path}: tensor {key}: expected {str(p.dtype)[6:]} of shape {list(p.shape)} (its "
                            f"parameter's), got {str(value.dtype)[6:]} of shape {list(value.shape)}")
    kinds = set().union(*found) if found else set()
    for i, have in enumerate(found):
        needed = (required if steps > 0 else set()) | (required if have else set()) | kinds
        if needed - have:
            missing = sorted(needed - have)[0]
            raise DataError(f"{path}: tensor opt.{i}.{missing} is missing (the optimizer's state of parameter {i})")
