"""The torch.nn + autograd twin of a handgrad run: same initial weights, seed and batches."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..schedules import Schedule
from .loop import EpochStats, evaluate


def torch_loss(name: str, text: bool = False) -> Callable[[Tensor, Tensor], Tensor]:
    if text:  # a character model's (N, T, V) logits against (N, T) next characters
        return lambda out, y: F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))
    if name == "cross-entropy":
        return F.cross_entropy
    return lambda out, y: F.mse_loss(out[:, 0], y.to(out.dtype))  # the seeds' twin: targets as floats


def fit_torch(model: nn.Module, loss_name: str, opt: torch.optim.Optimizer,
              train_batches: Iterable[tuple[Tensor, Tensor]], x_valid: Tensor, y_valid: Tensor, epochs: int,
              n_classes: int, log: Callable[[str], None] = print,
              schedule: Schedule | None = None, clip: float | None = None, max_steps: int | None = None,
              text: bool = False) -> list[EpochStats]:
    """Plain torch training with autograd and a torch.optim optimizer, for side-by-side comparison: the gradients'
    norm clipped to `clip` with torch's clip_grad_norm_, at most `max_steps` steps (the last epoch then ends
    early, validated), a character model's loss over every token (`text`)."""
    loss_fn = torch_loss(loss_name, text)
    t = 0
    history = []
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        total = torch.zeros((), dtype=torch.float64, device=x_valid.device)
        seen = 0
        model.train()
        for xb, yb in train_batches:
            if schedule is not None:
                momentum = schedule.momentum(t)
                for group in opt.param_groups:
                    group["lr"] = schedule.lr(t)
                    if momentum is not None and "betas" in group:
                        group["betas"] = (momentum, group["betas"][1])
                    elif momentum is not None and "momentum" in group:
                        group["momentum"] = momentum
            t += 1
            loss = loss_fn(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            if clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
            total += loss.detach().double() * xb.shape[0]
            seen += xb.shape[0]
            if max_steps is not None and t >= max_steps:
                break
        model.eval()
        valid_loss, valid_acc = evaluate(model, loss_fn, x_valid, y_valid, n_classes, 64 if text else 2000)
        stats = EpochStats(epoch, float(total) / max(seen, 1), valid_loss, valid_acc, time.perf_counter() - start,
                           step=t)
        history.append(stats)
        log("torch twin " + stats.line(epochs, max_steps if text else None))
        if max_steps is not None and t >= max_steps:
            break
    return history
