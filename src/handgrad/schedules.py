"""Learning-rate (and momentum) schedules: functions of the step number t = 0, 1, ... of a run.

Each matches its torch.optim.lr_scheduler counterpart stepped once per batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def _cos_anneal(start: float, end: float, pct: float) -> float:
    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)


@dataclass(frozen=True)
class Schedule:
    name: str

    def lr(self, t: int) -> float:
        raise NotImplementedError

    def momentum(self, t: int) -> float | None:
        """The momentum (SGD) or beta1 (Adam) at step t, for schedules that cycle it; else None."""
        return None


@dataclass(frozen=True)
class Constant(Schedule):
    base_lr: float

    def lr(self, t: int) -> float:
        return self.base_lr


@dataclass(frozen=True)
class OneCycle(Schedule):
    """torch's OneCycleLR: cosine from max_lr/div up to max_lr over pct_start of the run, then down to
    max_lr/div/final_div; momentum the other way, max_momentum -> base_momentum -> max_momentum."""

    max_lr: float
    total_steps: int
    pct_start: float = 0.3
    div_factor: float = 25.0
    final_div_factor: float = 1e4
    base_momentum: float = 0.85
    max_momentum: float = 0.95
    cycle_momentum: bool = True

    def _phase(self, t: int, start: float, peak: float, end: float) -> float:
        up_end = float(self.pct_start * self.total_steps) - 1
        last = self.total_steps - 1
        if t <= up_end:
            return _cos_anneal(start, peak, t / up_end if up_end > 0 else 1.0)
        return _cos_anneal(peak, end, (t - up_end) / (last - up_end))

    def lr(self, t: int) -> float:
        initial = self.max_lr / self.div_factor
        return self._phase(t, initial, self.max_lr, initial / self.final_div_factor)

    def momentum(self, t: int) -> float | None:
        if not self.cycle_momentum:
            return None
        return self._phase(t, self.max_momentum, self.base_momentum, self.max_momentum)


@dataclass(frozen=True)
class CosineWarmup(Schedule):
    """Linear warm-up from base_lr * start_factor to base_lr over warmup_steps, then cosine decay to
    min_lr over the rest (torch: SequentialLR of LinearLR and CosineAnnealingLR)."""

    base_lr: float
    total_steps: int
    warmup_steps: int = 0
    start_factor: float = 0.01
    min_lr: float = 0.0

    def lr(self, t: int) -> float:
        w = self.warmup_steps
        if t < w:
            return self.base_lr * (self.start_factor + (1 - self.start_factor) * t / w)
        rest = max(self.total_steps - w, 1)
        return _cos_anneal(self.base_lr, self.min_lr, min(t - w, rest) / rest)


@dataclass(frozen=True)
class StepDecay(Schedule):
    """lr = base_lr * gamma ** (t // step_size)  (torch's StepLR)."""

    base_lr: float
    step_size: int
    gamma: float = 0.1

    def lr(self, t: int) -> float:
        return self.base_lr * self.gamma ** (t // self.step_size)


SCHEDULES = ("constant", "one-cycle", "cosine", "step")


def make_schedule(name: str, lr: float, total_steps: int, warmup_steps: int | None = None) -> Schedule:
    """A schedule by name for a run of `total_steps`: constant, one-cycle (peak lr), cosine (warm-up then
    decay; warm-up defaults to 0), step (x0.1 after every third of the run)."""
    if name == "constant":
        return Constant(name, lr)
    if name == "one-cycle":
        return OneCycle(name, lr, total_steps)
    if name == "cosine":
        return CosineWarmup(name, lr, total_steps, warmup_steps or 0)
    if name == "step":
        return StepDecay(name, lr, max(total_steps // 3, 1))
    raise ValueError(f"unknown schedule {name!r}: expected one of {', '.join(SCHEDULES)}")
