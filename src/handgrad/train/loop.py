"""Training pieces: per-epoch statistics, evaluation, the loss by name (`fit` is in fit.py).

No autograd anywhere: forward, loss, hand-written backward, in-place optimizer step."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..losses import CrossEntropyLoss, MSELoss, TokenCrossEntropyLoss
from ..module import Module


@dataclass
class EpochStats:
    """One epoch: its number (from 1), the mean training loss, the validation loss and accuracy after it, and
    the training loss of each of its batches (the mean over the global batch, in the order they ran)."""

    epoch: int
    train_loss: float
    valid_loss: float
    valid_acc: float
    seconds: float
    batch_losses: list[float] = field(default_factory=list)
    step: int | None = None  # optimizer steps taken in the run by the end of this epoch

    def line(self, epochs: int, total_steps: int | None = None) -> str:
        """One line: 'epoch 2/5 ...', or with total_steps (text models, an epoch being the steps between two
        validations) 'step 200/300 ...' with the losses in nats per character."""
        if total_steps is not None:
            return (f"step {self.step}/{total_steps}  train_loss {self.train_loss:.4f}  valid_loss "
                    f"{self.valid_loss:.4f} nats/char  valid_acc {self.valid_acc:.4f}  ({self.seconds:.1f}s)")
        return (f"epoch {self.epoch}/{epochs}  train_loss {self.train_loss:.4f}  valid_loss {self.valid_loss:.4f}  "
                f"valid_acc {self.valid_acc:.4f}  ({self.seconds:.1f}s)")


def make_loss(name: str, text: bool = False) -> Module:
    """The loss by name; for a character model (text), cross-entropy over every token of (N, T, V) logits."""
    if text:
        return TokenCrossEntropyLoss()
    return CrossEntropyLoss() if name == "cross-entropy" else MSELoss()


def n_outputs(loss: str, n_classes: int) -> int:
    """Cross-entropy scores every class; MSE, as in the seeds, regresses the class index with one output."""
    return n_classes if loss == "cross-entropy" else 1


def predict_classes(out: Tensor, n_classes: int) -> Tensor:
    """argmax of the logits (over the last dim: (N, C) or a character model's (N, T, V)), or the regression
    output rounded to the nearest class (MSE)."""
    if out.shape[-1] == 1:
        return out[..., 0].round().clamp(0, n_classes - 1).long()
    return out.argmax(dim=-1)


def evaluate(forward: Callable[[Tensor], Tensor], loss: Callable[[Tensor, Tensor], Tensor], x: Tensor, y: Tensor,
             n_classes: int, bs: int = 2000) -> tuple[float, float]:
    """(mean loss, accuracy) over x, y in slices of `bs` rows; with a label per token (y (N, T)), the loss is the
    mean over the rows' tokens and the accuracy the share of tokens predicted."""
    total_loss = torch.zeros((), dtype=torch.float64, device=x.device)
    correct = torch.zeros((), dtype=torch.int64, device=x.device)
    with torch.no_grad():
        for i in range(0, x.shape[0], bs):
            xb, yb = x[i:i + bs], y[i:i + bs]
            out = forward(xb)
            total_loss += loss(out, yb).double() * xb.shape[0]
            correct += (predict_classes(out, n_classes) == yb).sum()
    return float(total_loss) / max(x.shape[0], 1), int(correct) / max(y.numel(), 1)
