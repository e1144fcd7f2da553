"""fit: a Learner with the usual callbacks (metrics, the non-finite guard, progress, a schedule).

Imports run one way, loop <- learner <- callbacks <- fit, so no module of train/ imports one that imports it."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from ..data import DataLoader
from ..module import Module
from ..optim import Optimizer
from ..schedules import Schedule
from .callbacks import MetricsCB, NonFiniteGuardCB, ProgressCB, ScheduleCB
from .learner import Learner
from .loop import EpochStats


def fit(model: Module, loss_fn: Module, opt: Optimizer, train_dl: DataLoader, x_valid: Tensor, y_valid: Tensor,
        epochs: int, n_classes: int, progress: bool = True, log: Callable[[str], None] = print,
        schedule: Schedule | None = None) -> list[EpochStats]:
    """Train for `epochs` with a Learner (metrics, progress, the non-finite guard, an optional schedule);
    logs one line per epoch and returns the per-epoch statistics."""
    metrics = MetricsCB(log)
    callbacks = [metrics, NonFiniteGuardCB()] + ([ProgressCB()] if progress else [])
    if schedule is not None:
        callbacks.append(ScheduleCB(schedule))
    Learner(model, loss_fn, opt, train_dl, x_valid, y_valid, n_classes, callbacks).fit(epochs)
    return metrics.history
