"""A model class of the user's own, trained like the built-in ones: `handgrad train path/to/file.py:Net`.

The run folder's config.json records the class by absolute file path (or module name) and its constructor
arguments, so `eval`, `predict`, `lr-find --run` and `--resume` build the same class again. The model takes a
batch of flattened images [N, n_in] and returns [N, n_out] (one logit per class; one output with --loss mse).
"""

from __future__ import annotations

import copy
import hashlib
import inspect
from pathlib import Path

import torch

from ..check.target import instantiate, load_class
from ..errors import DataError, UsageError
from ..module import Module


def resolve_target(spec: str) -> str:
    """`spec` as a run records it: a file's path made absolute (runs are read from anywhere), a module's name
    as given. UsageError (one line) when the class cannot be loaded."""
    load_class(spec)
    where, _, name = spec.rpartition(":")
    if where.endswith(".py") or "/" in where:
        return f"{Path(where).resolve()}:{name}"
    return spec


def source_digest(target: str) -> str | None:
    """sha256 of the file that defines `target`'s class (None where it has no file), recorded with a run."""
    cls = load_class(target)
    try:
        path = inspect.getsourcefile(cls) or inspect.getfile(cls)
    except (TypeError, OSError):
        return None
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None


def build_user_model(target: str, args: dict | None, n_in: int, n_out: int, recorded: Path | None = None,
                     source: str | None = None) -> tuple[Module, str]:
    """The user's model and its one-line name, after one forward on a probe batch shows it maps [N, n_in] to
    [N, n_out]. `recorded`: the config.json that names it (a run being resumed or used), whose path the error
    then names (a DataError: the run's own file no longer fits); `source`: the sha256 of the class's file that
    config.json recorded: a file changed since is refused (the weights would be read into another model)."""
    try:
        model = instantiate(load_class(target), args or {})
        probe_output(model, n_in, n_out)
    except UsageError as e:
        if recorded is None:
            raise
        raise DataError(f"{recorded}: key 'model' ({target}): {e}") from None
    if recorded is not None and source is not None:
        now = source_digest(target)
        if now != source:
            raise DataError(f"{recorded}: key 'model_source': the file that defines {target} changed since the run "
                            f"was trained (sha256 {source[:12]}... then, {str(now)[:12]}... now); its weights would "
                            "be read into another model: put the file back as it was")
    return model, f"{type(model).__name__} ({target})"


def probe_output(model: Module, n_in: int, n_out: int, batch: int = 2) -> None:
    """UsageError unless `model` maps a batch [batch, n_in] to [batch, n_out] floats. The probe runs on a copy
    in eval mode with torch's random state put back: the model, its buffers and the run's seed are untouched."""
    name = type(model).__name__
    want = f"a batch of images [N, {n_in}] to [N, {n_out}] " + \
        ("logits (one per class)" if n_out > 1 else "outputs (one, the class index, with --loss mse)")
    x = torch.zeros(batch, n_in)  # (batch, n_in)
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        try:
            out = copy.deepcopy(model).eval()(x)
        except Exception as e:
            raise UsageError(f"{name} must map {want}; on a batch [{batch}, {n_in}] its forward raised "
                             f"{type(e).__name__}: {e}") from None
    if not isinstance(out, torch.Tensor):
        raise UsageError(f"{name} must map {want}; on a batch [{batch}, {n_in}] it returned a {type(out).__name__}")
    if tuple(out.shape) != (batch, n_out) or not out.is_floating_point():
        raise UsageError(f"{name} must map {want}; on a batch [{batch}, {n_in}] it returned {str(out.dtype)[6:]} "
                         f"of shape {list(out.shape)}")
