"""The training loop: forward, loss, hand-written backward, SGD step. No autograd anywhere."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..losses import CrossEntropyLoss, MSELoss
from ..module import Module, WithLoss
from ..optim import SGD


@dataclass
class EpochStats:
    epoch: int
    train_loss: float
    valid_loss: float
    valid_acc: float
    seconds: float

    def line(self, epochs: int) -> str:
        return (f"epoch {self.epoch}/{epochs}  train_loss {self.train_loss:.4f}  valid_loss {self.valid_loss:.4f}  "
                f"valid_acc {self.valid_acc:.4f}  ({self.seconds:.1f}s)")


def make_loss(name: str) -> Module:
    return CrossEntropyLoss() if name == "cross-entropy" else MSELoss()


def n_outputs(loss: str, n_classes: int) -> int:
    """Cross-entropy scores every class; MSE, as in the seeds, regresses the class index with one output."""
    return n_classes if loss == "cross-entropy" else 1


def predict_classes(out: Tensor, n_classes: int) -> Tensor:
    """argmax of the logits, or the regression output rounded to the nearest class (MSE)."""
    if out.shape[-1] == 1:
        return out[:, 0].round().clamp(0, n_classes - 1).long()
    return out.argmax(dim=1)


def evaluate(forward: Callable[[Tensor], Tensor], loss: Callable[[Tensor, Tensor], Tensor], x: Tensor, y: Tensor,
             n_classes: int, bs: int = 2000) -> tuple[float, float]:
    """(mean loss, accuracy) over x, y in slices of `bs`."""
    total_loss = torch.zeros((), dtype=torch.float64, device=x.device)
    correct = torch.zeros((), dtype=torch.int64, device=x.device)
    with torch.no_grad():
        for i in range(0, x.shape[0], bs):
            xb, yb = x[i:i + bs], y[i:i + bs]
            out = forward(xb)
            total_loss += loss(out, yb).double() * xb.shape[0]
            correct += (predict_classes(out, n_classes) == yb).sum()
    n = max(x.shape[0], 1)
    return float(total_loss) / n, int(correct) / n


def train_step(step: WithLoss, opt: SGD, xb: Tensor, yb: Tensor) -> Tensor:
    """One step: loss = step(xb, yb); every .g from the hand-written backward; p -= lr * p.g."""
    loss = step(xb, yb)
    opt.zero_grad()
    step.backward(needs_input_grad=False)  # the data needs no gradient
    opt.step()
    return loss


def cosine_schedule(base_lr: float, total_steps: int) -> Callable[[int], float]:
    """lr(t) = base_lr * (1 + cos(pi t / T)) / 2: from base_lr down to 0 over T steps."""
    return lambda t: base_lr * 0.5 * (1.0 + math.cos(math.pi * min(t, total_steps) / total_steps))


def fit(model: Module, loss_fn: Module, opt: SGD, train_batches: Iterable[tuple[Tensor, Tensor]],
        x_valid: Tensor, y_valid: Tensor, epochs: int, n_classes: int, progress: bool = True,
        log: Callable[[str], None] = print, lr_at: Callable[[int], float] | None = None,
        after_batch: Callable[[], None] | None = None) -> list[EpochStats]:
    """Train for `epochs`, logging one line per epoch; returns the per-epoch statistics.

    lr_at(t), when given, sets the learning rate before step t (t counts from 0 over the whole run);
    after_batch(), when given, runs after every step (e.g. ActivationStats.record).
    """
    step = WithLoss(model, loss_fn)
    history = []
    t = 0
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        model.train()
        total = torch.zeros((), dtype=torch.float64, device=x_valid.device)
        seen = 0
        bar = tqdm(train_batches, desc=f"epoch {epoch}/{epochs}", leave=False, disable=None if progress else True)
        for i, (xb, yb) in enumerate(bar):
            if lr_at is not None:
                opt.lr = lr_at(t)
            t += 1
            loss = train_step(step, opt, xb, yb)
            if after_batch is not None:
                after_batch()
            total += loss.double() * xb.shape[0]
            seen += xb.shape[0]
            if i % 50 == 0:
                bar.set_postfix(loss=f"{float(loss):.4f}")
        model.eval()
        valid_loss, valid_acc = evaluate(model, loss_fn, x_valid, y_valid, n_classes)
        stats = EpochStats(epoch, float(total) / max(seen, 1), valid_loss, valid_acc, time.perf_counter() - start)
        history.append(stats)
        log(stats.line(epochs))
        if not math.isfinite(stats.train_loss):
            raise ValueError(f"training diverged: the loss became {stats.train_loss} in epoch {epoch}; "
                             f"try a smaller --lr (it was {opt.lr})")
    return history
