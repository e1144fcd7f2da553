"""The Learner: a training loop of named events, everything else a callback (as fastai's miniai).

Events, in order: before_fit, before_epoch, before_batch, after_loss, after_backward, after_batch,
after_epoch, after_fit. A callback raising CancelBatch, CancelEpoch or CancelFit skips the rest
of that batch, epoch or fit. No autograd anywhere: the backward is the model's hand-written one.

Two ways through a batch:
- the module path: forward, after_loss, backward inside `lean()` (activations freed as it goes),
  after_backward, optimizer step;
- the fused path (`handgrad.fused.FusedStep` for MLPs, `handgrad.fused_cnn.FusedCNNStep` for CNNs):
  with SGD without momentum on an MLP, forward, backward and update in one pass, then after_backward
  (no `.g` exists; a batch with a non-finite loss was not applied); otherwise forward, loss and
  backward into `.g` (a CNN's keeping only the convolutions' outputs), after_backward, the optimizer's
  step. Either is used only when no callback sets `needs_module_step` or defines after_loss (callbacks
  acting between forward and step, or on activations and `.g`).

Data-parallel (`dist`): each rank runs either path on its slice of the global batch without stepping,
`GradSync` sums the weighted gradients over the ranks, then after_backward and the step. Every rank
must take every step: a callback must not cancel a batch on one rank only.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from ..data import DataLoader
from ..distributed import Dist, GradSync, average_buffers
from ..fused import FusedStep, check_batch, fused_step
from ..fused_cnn import FusedCNNStep
from ..module import Module, WithLoss, lean
from ..optim import Optimizer
from .loop import evaluate

EVENTS = ("before_fit", "before_epoch", "before_batch", "after_loss", "after_backward", "after_batch",
          "after_epoch", "after_fit")


class CancelBatch(Exception):
    """Raised by a callback: skip the rest of this batch."""


class CancelEpoch(Exception):
    """Raised by a callback: skip the rest of this epoch."""


class CancelFit(Exception):
    """Raised by a callback: stop training (after_fit still runs)."""


class Callback:
    """Implement any of the EVENTS as methods taking the learner; lower `order` runs first."""

    order = 0
    needs_module_step = False  # True: acts on activations or .g between forward and step (no fused step)

    def state_dict(self) -> dict:
        """What this callback must remember across a resume (JSON-serialisable)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class Learner:
    """Trains `model` on `train_dl` with `loss_fn` and `opt`; evaluates on (x_valid, y_valid) each epoch.

    Position, for callbacks and resuming: `epoch` (0-based), `batch_idx` within it, `t` the
    optimizer steps taken so far in the run.
    """

    def __init__(self, model: Module, loss_fn: Module, opt: Optimizer, train_dl: DataLoader, x_valid: Tensor,
                 y_valid: Tensor, n_classes: int, callbacks: Iterable[Callback] = (), fused: bool = True,
                 dist: Dist | None = None, max_steps: int | None = None, eval_bs: int = 2000) -> None:
        self.model, self.loss_fn, self.opt, self.train_dl = model, loss_fn, opt, train_dl
        self.x_valid, self.y_valid, self.n_classes = x_valid, y_valid, n_classes
        self.callbacks = sorted(callbacks, key=lambda cb: cb.order)
        self.step_module = WithLoss(model, loss_fn)
        # a callback with an after_loss acts between forward and backward: the fused steps have no such moment
        usable = fused and not any(cb.needs_module_step or callable(getattr(cb, "after_loss", None))
                                   for cb in self.callbacks)
        self.fused: FusedStep | FusedCNNStep | None = fused_step(model, loss_fn, opt) if usable else None
        self.dist = dist
        self.max_steps = max_steps  # stop once t reaches it (the epoch then ends: validation, after_epoch)
        self.eval_bs = eval_bs  # rows per validation forward
        self.sync = GradSync(dist, model.parameters(), model=model) if dist is not None else None
        self.epoch, self.batch_idx, self.t = 0, 0, 0
        self.epochs = 0
        self.stopped = ""  # why training stopped early, if it did
        self.stop_after_epoch = False  # set by a callback in after_epoch: stop once the epoch's events are done

    def __call__(self, event: str) -> None:
        for cb in self.callbacks:
            method = getattr(cb, event, None)
            if method is not None:
                method(self)

    def callback(self, cls: type) -> Callback | None:
        return next((cb for cb in self.callbacks if isinstance(cb, cls)), None)

    def fit(self, epochs: int, start_epoch: int = 0, start_batch: int = 0) -> None:
        """Train until `epochs` epochs are done (or `max_steps` steps), starting at (start_epoch, start_batch)
        when resuming."""
        self.epochs = epochs
        if self.max_steps is not None and self.t >= self.max_steps:
            start_epoch = epochs  # resumed from the checkpoint of the last step: nothing left
        try:
            self("before_fit")
            for self.epoch in range(start_epoch, epochs):
                self._one_epoch(start_batch if self.epoch == start_epoch else 0)
                if self.stop_after_epoch:  # asked during after_epoch: every callback (the checkpoint) has run
                    break
        except CancelFit:
            pass
        self("after_fit")

    def _one_epoch(self, start_batch: int) -> None:
        self.batch_idx = start_batch
        try:
            self.model.train()
            self("before_epoch")
            for i, (xb, yb) in enumerate(self.train_dl.epoch_batches(self.epoch, start_batch), start_batch):
                self.batch_idx = i
                self._one_batch(xb, yb)
                if self.max_steps is not None and self.t >= self.max_steps:
                    self.stop_after_epoch = True  # the epoch ends here, validated and checkpointed as done
                    break
            self.batch_idx = len(self.train_dl)
            self.model.eval()
            self.valid_loss, self.valid_acc = self.evaluate(self.x_valid, self.y_valid)
            self("after_epoch")
        except CancelEpoch:
            pass

    def _one_batch(self, xb: Tensor, yb: Tensor) -> None:
        try:
            self.xb, self.yb = xb, yb
            self("before_batch")
            if self.sync is not None:
                self._synced_batch(xb, yb)
            elif self.fused is not None and self.fused.fused_update():
                self.loss = self.fused(xb, yb)  # forward, loss, backward and SGD update in one pass
                self("after_backward")
            elif self.fused is not None:
                self.loss = self.fused(xb, yb, step=False)  # forward, loss, backward into .g (keeping less)
                self("after_backward")
                self.opt.step()
            else:
                self._forward_backward(xb, yb)
                self("after_backward")
                self.opt.step()
            self.t += 1
            self("after_batch")
        except CancelBatch:
            pass

    def _forward_backward(self, xb: Tensor, yb: Tensor) -> None:
        """The module path: forward, after_loss, hand-written backward into `.g`, inside lean()."""
        check_batch(xb)
        with lean():
            self.loss = self.step_module(xb, yb)
            self("after_loss")
            self.opt.zero_grad()
            self.step_module.backward(needs_input_grad=False)  # the data needs no gradient

    def _synced_batch(self, xb: Tensor, yb: Tensor) -> None:
        """Data-parallel: this rank's slice forward and backward, gradients weighted by the slice's share of the
        global batch and summed over the ranks (bucketed all_reduce overlapping backward), then the step."""
        assert self.sync is not None
        self.sync.begin(weight=xb.shape[0] / self.train_dl.global_batch_size(self.batch_idx))
        if xb.shape[0] == 0:  # a short last batch left nothing for this rank: it adds zeros
            self.loss = torch.zeros((), device=xb.device)
            self.opt.zero_grad()
        else:
            with self.sync.overlapping():
                if self.fused is not None:
                    self.loss = self.fused(xb, yb, step=False)
                else:
                    self._forward_backward(xb, yb)
        self.sync.finish()
        self("after_backward")
        self.opt.step()

    def evaluate(self, x: Tensor, y: Tensor, bs: int | None = None) -> tuple[float, float]:
        """(mean loss, accuracy) of the model in its current mode over x, y. Data-parallel: BatchNorm statistics
        are first averaged over the ranks; rank 0 evaluates and sends the result to the others."""
        bs = bs or self.eval_bs
        if self.dist is None:
            return evaluate(self.model, self.loss_fn, x, y, self.n_classes, bs)
        average_buffers(self.dist, self.model)
        result = torch.zeros(2, dtype=torch.float64, device=self.dist.device)
        if self.dist.is_main:
            result[:] = torch.tensor(evaluate(self.model, self.loss_fn, x, y, self.n_classes, bs))
        self.dist.broadcast_(result, "sharing the validation result")
        return float(result[0]), float(result[1])

    @torch.no_grad()
    def predict(self, x: Tensor, bs: int = 2000) -> Tensor:
        """The model's outputs over x, in slices of `bs` (eval mode)."""
        self.model.eval()
        return torch.cat([self.model(x[i:i + bs]) for i in range(0, x.shape[0], bs)])
