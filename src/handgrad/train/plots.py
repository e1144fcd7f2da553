"""The run's pictures: loss and accuracy curves, a confusion matrix, validation images with labels."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from .loop import EpochStats
from .runfolder import atomic_write


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path, dpi: int = 90) -> Path:
    """The figure as a PNG at `path`, written atomically (readable by others, as any new file), then closed."""
    plt = _pyplot()
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi))
    finally:
        plt.close(fig)
    return path


def batch_positions(history: list[EpochStats], steps_per_epoch: int | None = None) -> tuple[list[float], list[float]]:
    """(x, loss) of every batch with a known loss, x in epochs: batch j (from 0) of n in epoch e (from 1) ends at
    e - 1 + (j + 1) / n, so an epoch's last batch sits on its integer tick. With steps_per_epoch (a text run's
    steps between validations), x is the optimizer step: (e - 1) * steps_per_epoch + j + 1."""
    xs: list[float] = []
    losses: list[float] = []
    for h in history:
        n = len(h.batch_losses)
        if steps_per_epoch:
            xs += [(h.epoch - 1) * steps_per_epoch + j + 1 for j in range(n)]
        else:
            xs += [h.epoch - 1 + (j + 1) / n for j in range(n)]
        losses += h.batch_losses
    return xs, losses


def moving_mean(values: list[float], window: int) -> list[float]:
    """The mean of each value and the up to `window - 1` before it, unknown (NaN) values left out."""
    import numpy as np

    v = np.asarray(values, dtype=float)
    known = np.isfinite(v)
    sums = np.concatenate([[0.0], np.cumsum(np.where(known, v, 0.0))])
    counts = np.concatenate([[0], np.cumsum(known)])
    lo = np.maximum(np.arange(1, len(v) + 1) - window, 0)
    hi = np.arange(1, len(v) + 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return list((sums[hi] - sums[lo]) / (counts[hi] - counts[lo]))


def _epoch_axis(ax, epochs: int) -> None:
    """x in epochs from 0 to `epochs`: integer ticks, a dotted line at each epoch's end."""
    from matplotlib.ticker import MaxNLocator

    ax.set_xlim(0, max(epochs, 1) * 1.03)  # a margin: the last epoch's point is drawn whole
    if epochs <= 12:
        ax.set_xticks(range(max(epochs, 1) + 1))
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for e in range(1, epochs):
        ax.axvline(e, color="0.8", linewidth=0.8, linestyle=":", zorder=0)
    ax.grid(axis="y", color="0.92")


def _step_axis(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.set_xlim(left=0)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(axis="y", color="0.92")


def plot_curves(history: list[EpochStats], folder: Path, about: str = "", loss_name: str = "loss",
                n_valid: int | None = None, steps_per_epoch: int | None = None) -> list[Path]:
    """loss.png: the training loss of every batch (faint) and its moving mean, the validation loss after each
    epoch; accuracy.png: the validation accuracy after each epoch. x in epochs, batches at their fractions of an
    epoch; `about` (the run, model and data set) under each title. With steps_per_epoch (a text run, validated
    every that many steps), x is the optimizer step and the accuracy is the next character's."""
    from matplotlib.ticker import MaxNLocator, PercentFormatter

    plt = _pyplot()
    epochs = len(history)
    by_step = bool(steps_per_epoch)
    ends = [h.step if by_step and h.step is not None else h.epoch for h in history]
    after = f"every {steps_per_epoch} steps" if by_step else "after each epoch"
    subtitle = f"\n{about}" if about else ""
    fig, ax = plt.subplots(figsize=(7.5, 4.5), layout="constrained")
    xs, losses = batch_positions(history, steps_per_epoch)
    if xs:
        per_epoch = max(len(h.batch_losses) for h in history)
        window = min(per_epoch // 5, 50)  # a fifth of an epoch; epochs of few batches are drawn as they are
        smooth = window >= 3
        ax.plot(xs, losses, color="tab:blue", alpha=0.25 if smooth else 1.0, linewidth=0.8 if smooth else 1.4,
                label="training loss, each batch")
        if smooth:
            ax.plot(xs, moving_mean(losses, window), color="tab:blue", linewidth=1.8,
                    label=f"training loss, mean of the last {window} batches")
    old = [h for h in history if not h.batch_losses]  # epochs recorded before per-batch losses were kept
    if old:
        ax.plot([h.epoch for h in old], [h.train_loss for h in old], "s", color="tab:blue",
                label="training loss, mean over the epoch")
    ax.plot(ends, [h.valid_loss for h in history], "o-", color="tab:orange", linewidth=1.8, markersize=6,
            label=f"validation loss, {after}")
    _step_axis(ax) if by_step else _epoch_axis(ax, epochs)
    ax.set(xlabel="optimizer steps" if by_step else "epochs done (each batch at its fraction of an epoch)",
           ylabel=loss_name,
           title=f"training and validation loss{subtitle}")
    ax.legend(loc="upper right", fontsize="small")
    loss = _save(fig, folder / "loss.png")

    fig, ax = plt.subplots(figsize=(7.5, 4.5), layout="constrained")
    accs = [100 * h.valid_acc for h in history]
    images = f" ({n_valid} images)" if n_valid else ""
    what = "next-character accuracy" if by_step else "validation accuracy"
    ax.plot(ends, accs, "o-", color="tab:green", linewidth=1.8, markersize=6, label=f"{what}{images}, {after}")
    if epochs <= 15:
        for x, a in zip(ends, accs):
            ax.annotate(f"{a:.1f}%", (x, a), textcoords="offset points", xytext=(0, 7), ha="center", fontsize=8)
    _step_axis(ax) if by_step else _epoch_axis(ax, epochs)
    low, high = min(accs), max(accs)
    pad = max(1.0, (high - low) * 0.15)
    ax.set_ylim(max(0.0, low - pad), min(100.0, high + pad) + 2 * pad / 3)  # room above for the labels
    ax.yaxis.set_major_locator(MaxNLocator(nbins=7, steps=[1, 2, 5, 10]))
    ax.yaxis.set_major_formatter(PercentFormatter(decimals=None))
    ax.set(xlabel="optimizer steps" if by_step else "epochs done", ylabel=what, title=f"{what}{subtitle}")
    ax.legend(loc="lower right", fontsize="small")
    return [loss, _save(fig, folder / "accuracy.png")]


def confusion_matrix(pred: Tensor, target: Tensor, n_classes: int) -> Tensor:
    """counts[true, predicted]."""
    return torch.bincount(target.cpu() * n_classes + pred.cpu(), minlength=n_classes * n_classes).view(
        n_classes, n_classes)


def plot_confusion(pred: Tensor, target: Tensor, classes: tuple[str, ...], path: Path, about: str = "") -> Path:
    """The validation images counted by true class (rows) and predicted class (columns), each row's share of
    right predictions beside its class name; a colour bar for the counts."""
    plt = _pyplot()
    cm = confusion_matrix(pred, target, len(classes))
    n = int(cm.sum())
    right = int(cm.diag().sum())
    row_totals = cm.sum(dim=1)
    fig, ax = plt.subplots(figsize=(8, 7), layout="constrained")
    image = ax.imshow(cm.numpy(), cmap="Blues")
    fig.colorbar(image, ax=ax, shrink=0.8, label="validation images")
    ticks = range(len(classes))
    ax.set(xticks=ticks, yticks=ticks, xlabel="predicted class", ylabel="true class (share predicted right)",
           title=f"confusion matrix: {right} of {n} validation images right ({right / max(n, 1):.1%})"
                 + (f"\n{about}" if about else ""))
    ax.set_xticklabels(classes, rotation=45, ha="right", fontsize=8)
    ax.set_yticklabels([f"{name} ({int(cm[i, i]) / max(int(row_totals[i]), 1):.0%})" for i, name in enumerate(classes)],
                       fontsize=8)
    for i in ticks:
        for j in ticks:
            v = int(cm[i, j])
            ax.text(j, i, str(v), ha="center", va="center", fontsize=7, fontweight="bold" if i == j else "normal",
                    color="white" if v > cm.max() / 2 else "black")
    return _save(fig, path)


def plot_samples(x: Tensor, pred: Tensor, target: Tensor, classes: tuple[str, ...], path: Path, n: int = 24,
                 about: str = "") -> Path:
    """A grid of validation images, each under its predicted class: green with a tick where right; red with a
    cross, a red frame and the true class where wrong (readable without the colours too)."""
    plt = _pyplot()
    n = min(n, x.shape[0])
    cols = 8
    rows = max(-(-n // cols), 1)
    side = int(round(x.shape[1] ** 0.5))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.7, rows * 2.25 + 0.7), layout="constrained",
                             squeeze=False)
    wrong = 0
    for i, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if i >= n:
            ax.axis("off")
            continue
        ax.imshow(x[i].detach().cpu().view(side, side).numpy(), cmap="gray")
        p, t = int(pred[i]), int(target[i])
        if p == t:
            ax.set_title(f"\u2713 {classes[p]}", fontsize=8, color="#1b7a1b", pad=4)  # a green dark enough to read
            for spine in ax.spines.values():
                spine.set_visible(False)
        else:
            wrong += 1
            ax.set_title(f"\u2717 {classes[p]}\ntrue: {classes[t]}", fontsize=8, color="tab:red", pad=4)
            for spine in ax.spines.values():
                spine.set(color="tab:red", linewidth=2.5)
    fig.suptitle(f"validation images under their predicted class: {n - wrong} of {n} right "
                 f"(\u2713 green: right; \u2717 red: wrong, with the true class)" + (f"\n{about}" if about else ""),
                 fontsize=10)
    return _save(fig, path)
