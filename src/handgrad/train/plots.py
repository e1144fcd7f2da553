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


def plot_curves(history: list[EpochStats], folder: Path) -> list[Path]:
    plt = _pyplot()
    epochs = [h.epoch for h in history]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(epochs, [h.train_loss for h in history], "o-", label="train")
    ax.plot(epochs, [h.valid_loss for h in history], "o-", label="valid")
    ax.set(xlabel="epoch", ylabel="loss", title="loss")
    ax.legend()
    loss = _save(fig, folder / "loss.png")
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(epochs, [h.valid_acc for h in history], "o-", color="tab:green")
    ax.set(xlabel="epoch", ylabel="accuracy", title="validation accuracy")
    return [loss, _save(fig, folder / "accuracy.png")]


def confusion_matrix(pred: Tensor, target: Tensor, n_classes: int) -> Tensor:
    """counts[true, predicted]."""
    return torch.bincount(target.cpu() * n_classes + pred.cpu(), minlength=n_classes * n_classes).view(
        n_classes, n_classes)


def plot_confusion(pred: Tensor, target: Tensor, classes: tuple[str, ...], path: Path) -> Path:
    plt = _pyplot()
    cm = confusion_matrix(pred, target, len(classes))
    fig, ax = plt.subplots(figsize=(7, 6))
    ax.imshow(cm.numpy(), cmap="Blues")
    ax.set(xticks=range(len(classes)), yticks=range(len(classes)), xlabel="predicted", ylabel="true",
           title="confusion matrix (validation)")
    ax.set_xticklabels(classes, rotation=45, ha="right", fontsize=8)
    ax.set_yticklabels(classes, fontsize=8)
    for i in range(len(classes)):
        for j in range(len(classes)):
            v = int(cm[i, j])
            ax.text(j, i, str(v), ha="center", va="center", fontsize=7,
                    color="white" if v > cm.max() / 2 else "black")
    fig.tight_layout()
    return _save(fig, path)


def plot_samples(x: Tensor, pred: Tensor, target: Tensor, classes: tuple[str, ...], path: Path, n: int = 24) -> Path:
    """A grid of validation images, titled 'predicted / true' (red where wrong)."""
    plt = _pyplot()
    n = min(n, x.shape[0])
    cols = 8
    rows = -(-n // cols)
    side = int(round(x.shape[1] ** 0.5))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.6, rows * 1.9))
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        ax.imshow(x[i].detach().cpu().view(side, side).numpy(), cmap="gray")
        ok = int(pred[i]) == int(target[i])
        ax.set_title(f"{classes[int(pred[i])]}\n/ {classes[int(target[i])]}", fontsize=7,
                     color="black" if ok else "red")
    fig.suptitle("validation images: predicted / true")
    fig.tight_layout()
    return _save(fig, path)
