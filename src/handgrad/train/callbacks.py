"""Callbacks for the Learner: metrics, progress, schedules, clipping, the non-finite guard, early stopping."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from ..distributed import average_buffers, gather_states
from ..errors import TrainingError
from ..module import lean
from ..optim import clip_grad_norm
from ..schedules import Schedule
from .learner import Callback, CancelFit, Learner
from .loop import EpochStats


class ScheduleCB(Callback):
    """Sets the optimizer's lr (and momentum / beta1 where the schedule cycles it) before every step."""

    order = -10

    def __init__(self, schedule: Schedule) -> None:
        self.schedule = schedule

    def before_batch(self, learn: Learner) -> None:
        learn.opt.lr = self.schedule.lr(learn.t)
        momentum = self.schedule.momentum(learn.t)
        if momentum is not None and hasattr(learn.opt, "momentum"):
            learn.opt.momentum = momentum


class ClipGradCB(Callback):
    """Clips the gradients' global norm to max_norm before the step."""

    order = 10
    needs_module_step = True

    def __init__(self, max_norm: float) -> None:
        self.max_norm = max_norm

    def after_backward(self, learn: Learner) -> None:
        clip_grad_norm(learn.model.parameters(), self.max_norm)


def _first_bad(learn: Learner, what: str) -> str:
    """Name the first layer (in call order for activations, backward order for gradients) holding a NaN/Inf.

    Training steps keep no activations (lean or fused), so the batch is run again through the module path,
    keeping everything; the weights are still those that gave the non-finite value.
    """
    with lean(False):
        learn.step_module(learn.xb, learn.yb)
        if what == "gradient":
            learn.model.zero_grad()
            learn.step_module.backward(needs_input_grad=False)
    leaves = [(n, m) for n, m in learn.model.named_modules() if not any(True for _ in m.children())]
    if what == "activation":
        for name, m in leaves:
            out = getattr(m, "out", None)
            if isinstance(out, torch.Tensor) and not bool(torch.isfinite(out).all()):
                return f"the output of layer {name} ({type(m).__name__})"
        return "the loss itself (every layer's output is finite)"
    for name, m in reversed(leaves):
        g = getattr(getattr(m, "out", None), "g", None)
        if isinstance(g, torch.Tensor) and not bool(torch.isfinite(g).all()):
            return f"the gradient of layer {name}'s output ({type(m).__name__})"
        for pname, p in m._own_parameters():
            if p.g is not None and not bool(torch.isfinite(p.g).all()):
                return f"the gradient of {name}.{pname} ({type(m).__name__})"
    return "no layer (only the loss)"


class NonFiniteGuardCB(Callback):
    """Stops training with one line naming the first layer whose activation or gradient went NaN/Inf,
    before the optimizer step could spoil the weights (so the last checkpoint stays the last good one)."""

    order = 5

    def _stop(self, learn: Learner, what: str) -> None:
        saver = next((cb for cb in learn.callbacks if type(cb).__name__ == "CheckpointCB"), None)
        kept = (f"; the last good checkpoint is kept in {saver.run.path}" if saver is not None
                and saver.run.has_checkpoint() else "; no checkpoint of this run was saved yet" if saver else "")
        raise TrainingError(f"{what} at epoch {learn.epoch + 1}, batch {learn.batch_idx + 1}; lower the learning "
                            f"rate (it was {learn.opt.lr:.3g}){kept}")

    def after_backward(self, learn: Learner) -> None:
        # one fused test (and one device sync) per batch: the loss and every gradient's norm
        grads = [p.g for p in learn.model.parameters() if p.g is not None]
        norms = torch._foreach_norm(grads) if grads else []
        if bool(torch.isfinite(torch.stack([learn.loss.detach().reshape(()), *norms])).all()):
            return
        if not bool(torch.isfinite(learn.loss)):
            self._stop(learn, f"non-finite loss ({float(learn.loss)}): first non-finite value in "
                              f"{_first_bad(learn, 'activation')}")
        self._stop(learn, f"non-finite gradient: first in {_first_bad(learn, 'gradient')}")


class MetricsCB(Callback):
    """The training loss of every batch and its mean over each epoch (weighted by samples), the validation loss
    and accuracy after each epoch; one logged line per epoch.

    A batch's loss stays on the device until `flush` (before a checkpoint, and at the end of the epoch), so no
    batch waits for a copy to the host. The epoch's mean is summed in batch order from the flushed values, so it
    does not depend on where the flushes fell: a resumed run gets the same bits as one never stopped."""

    order = 20

    def __init__(self, log: Callable[[str], None] = print, total_steps: int | None = None) -> None:
        self.log = log
        self.total_steps = total_steps  # text models: lines say the step of total_steps, not the epoch
        self.history: list[EpochStats] = []
        self.loss_sum, self.seen, self.seconds = 0.0, 0, 0.0
        # this epoch's per-batch losses so far; None: resumed from a checkpoint older than per-batch losses
        self.batch_losses: list[float] | None = []
        self.pending: list[torch.Tensor] = []  # per batch not yet flushed: loss x samples, on the device
        self.pending_n: list[int] = []  # and its samples (this rank's, data-parallel)
        self.dist = None

    def before_epoch(self, learn: Learner) -> None:
        self.start = time.perf_counter()
        if learn.batch_idx == 0:  # a fresh epoch (not one resumed in the middle)
            self.loss_sum, self.seen, self.seconds, self.batch_losses = 0.0, 0, 0.0, []
        elif self.batch_losses is None:
            self.batch_losses = [math.nan] * learn.batch_idx  # unknown, but in their places
        self.pending, self.pending_n = [], []
        self.dist = learn.dist

    def after_batch(self, learn: Learner) -> None:
        self.pending.append(learn.loss.detach().double().reshape(()) * learn.xb.shape[0])
        self.pending_n.append(learn.xb.shape[0])

    def flush(self) -> None:
        """Fold the pending batches into the per-batch losses and the epoch's sums (before a checkpoint;
        data-parallel: on every rank, each batch summed over the ranks, all batches in one all_reduce)."""
        k = len(self.pending)
        if k == 0:  # the same on every rank: every rank takes every batch
            return
        sums = torch.cat([torch.stack(self.pending), torch.tensor(self.pending_n, dtype=torch.float64,
                                                                  device=self.pending[0].device)])  # (2k,)
        if self.dist is not None:
            self.dist.all_reduce_(sums, "summing the training loss")
        values = sums.tolist()
        assert self.batch_losses is not None  # set in before_epoch
        for loss_sum, n in zip(values[:k], values[k:]):
            self.loss_sum += loss_sum
            self.seen += int(n)
            self.batch_losses.append(loss_sum / n)
        self.pending, self.pending_n = [], []

    def after_epoch(self, learn: Learner) -> None:
        self.flush()
        seconds = self.seconds + time.perf_counter() - self.start
        stats = EpochStats(learn.epoch + 1, self.loss_sum / max(self.seen, 1), learn.valid_loss, learn.valid_acc,
                           seconds, list(self.batch_losses or []), learn.t)
        self.history.append(stats)
        self.log(stats.line(learn.epochs, self.total_steps))
        if not math.isfinite(stats.train_loss):
            raise TrainingError(f"training diverged: the loss became {stats.train_loss} in epoch {stats.epoch}; "
                                f"try a smaller --lr (it was {learn.opt.lr:.3g})")
        self.loss_sum, self.seen, self.seconds, self.batch_losses = 0.0, 0, 0.0, []

    def state_dict(self) -> dict:
        return {"history": [vars(h) for h in self.history], "loss_sum": self.loss_sum, "seen": self.seen,
                "seconds": self.seconds + time.perf_counter() - getattr(self, "start", time.perf_counter()),
                "batch_losses": list(self.batch_losses or [])}

    def load_state_dict(self, state: dict) -> None:
        self.history = [EpochStats(**h) for h in state["history"]]
        self.loss_sum, self.seen, self.seconds = state["loss_sum"], state["seen"], state["seconds"]
        self.batch_losses = state.get("batch_losses")  # absent in checkpoints older than per-batch losses


class ProgressCB(Callback):
    """A progress bar per epoch (tqdm.auto: a widget in Jupyter, with ipywidgets installed; text on a terminal;
    silent when the output is neither, e.g. a file or a pipe)."""

    order = 30

    def before_epoch(self, learn: Learner) -> None:
        self.bar = tqdm(total=len(learn.train_dl), initial=learn.batch_idx, desc=f"epoch {learn.epoch + 1}/"
                        f"{learn.epochs}", leave=False, disable=None)

    def after_batch(self, learn: Learner) -> None:
        self.bar.update(1)
        if learn.batch_idx % 50 == 0:
            self.bar.set_postfix(loss=f"{float(learn.loss):.4f}")

    def after_epoch(self, learn: Learner) -> None:
        self.bar.close()


class EarlyStoppingCB(Callback):
    """Stops when the validation loss has not improved for `patience` epochs."""

    order = 40

    def __init__(self, patience: int, log: Callable[[str], None] = print) -> None:
        self.patience, self.log = patience, log
        self.best, self.bad_epochs = math.inf, 0

    def before_fit(self, learn: Learner) -> None:
        if self.bad_epochs >= self.patience:  # resumed from the checkpoint of the epoch that stopped it
            learn.stopped = (f"early stopping: this run stopped already (valid_loss has not improved on "
                             f"{self.best:.4f} for {self.patience} epochs)")
            self.log(learn.stopped)
            raise CancelFit

    def after_epoch(self, learn: Learner) -> None:
        if learn.valid_loss < self.best:
            self.best, self.bad_epochs = learn.valid_loss, 0
            return
        self.bad_epochs += 1
        if self.bad_epochs >= self.patience:
            learn.stopped = (f"early stopping: valid_loss has not improved on {self.best:.4f} for "
                             f"{self.patience} epochs")
            self.log(learn.stopped)
            learn.stop_after_epoch = True  # after this epoch's other callbacks: its checkpoint is saved

    def state_dict(self) -> dict:
        return {"best": self.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.bad_epochs = state["best"], state["bad_epochs"]


class LambdaCB(Callback):
    """Calls `fn(learn)` at `event` (after_loss and after_backward need the module path)."""

    def __init__(self, event: str, fn: Callable[[Learner], None], order: int = 0) -> None:
        self.order = order
        self.needs_module_step = event in ("after_loss", "after_backward")
        setattr(self, event, fn)


class CheckpointCB(Callback):
    """Writes the run folder: metrics after every epoch, and a checkpoint holding everything needed to
    resume exactly (weights, optimizer state, RNG states, position, callbacks' state) after every epoch
    and every `every` batches. Runs last, so it saves what the other callbacks did."""

    order = 100

    def __init__(self, run, every: int = 0, info: dict | None = None) -> None:  # run: RunFolder
        self.run, self.every, self.info = run, every, info or {}

    def after_batch(self, learn: Learner) -> None:
        if self.every and (learn.batch_idx + 1) % self.every == 0:
            self.save(learn, learn.epoch, learn.batch_idx + 1)

    def after_epoch(self, learn: Learner) -> None:
        metrics = learn.callback(MetricsCB)
        if metrics is not None and (learn.dist is None or learn.dist.is_main):
            self.run.write_metrics([vars(h) for h in metrics.history])
        self.save(learn, learn.epoch + 1, 0)

    def save(self, learn: Learner, epoch: int, batch: int) -> None:
        metrics = learn.callback(MetricsCB)
        if metrics is not None:
            metrics.flush()
        rngs = {"rng.cpu": torch.get_rng_state()}
        d = learn.dist
        if d is not None:
            # every rank holds the same weights, but BatchNorm running statistics of its own slices: averaged
            # here mid-epoch (at an epoch's end validating has just averaged them), so that every rank, resumed
            # from rank 0's, holds what it held
            if batch:
                average_buffers(d, learn.model)
            # and random generators of its own (dropout draws as many values as its slice has): rank R's kept as
            # rng.cpu.rankR (R >= 1) and, on GPUs, its own device's as rng.cuda.rankR, each rank to resume from its own
            for r, s in enumerate(gather_states(d, rngs["rng.cpu"], "gathering the random states")[1:], 1):
                rngs[f"rng.cpu.rank{r}"] = s
            if d.device.type == "cuda":
                own = torch.cuda.get_rng_state(d.device)
                for r, s in enumerate(gather_states(d, own, "gathering the random states")):
                    rngs[f"rng.cuda.rank{r}"] = s
            if not d.is_main:
                return  # only rank 0 writes
        if torch.cuda.is_available() and (d is None or d.device.type != "cuda"):
            for i, s in enumerate(torch.cuda.get_rng_state_all()):
                rngs[f"rng.cuda.{i}"] = s
        tensors = {f"model.{k}": v for k, v in learn.model.state_dict().items()}
        opt_state = learn.opt.state_dict()
        for i, state in enumerate(opt_state["state"]):
            for k, v in state.items():
                tensors[f"opt.{i}.{k}"] = v
        tensors.update(rngs)
        meta = {**self.info, "epoch": epoch, "batch": batch, "t": learn.t, "opt_steps": opt_state["steps"],
                "opt_hyper": opt_state["hyper"], "n_params": len(opt_state["state"]),
                "callbacks": {type(cb).__name__: cb.state_dict() for cb in learn.callbacks if cb.state_dict()}}
        self.run.save_checkpoint(tensors, meta)


def restore(learn: Learner, tensors: dict[str, torch.Tensor], meta: dict) -> tuple[int, int]:
    """Put a learner back where a checkpoint left it; returns (epoch, batch) to continue from."""
    model_state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    learn.model.load_state_dict(model_state)
    states: list[dict[str, torch.Tensor]] = [{} for _ in range(meta["n_params"])]
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, i, name = k.split(".", 2)
            states[int(i)][name] = v
    learn.opt.load_state_dict({"steps": meta["opt_steps"], "hyper": meta["opt_hyper"], "state": states})
    for cb in learn.callbacks:
        state = meta["callbacks"].get(type(cb).__name__)
        if state is not None:
            cb.load_state_dict(state)
    d = learn.dist
    rank = 0 if d is None else d.rank
    # data-parallel: each rank its own state where the checkpoint has it (a run resumed with more ranks than it
    # was saved with gives the new ones rank 0's)
    torch.set_rng_state(tensors.get(f"rng.cpu.rank{rank}", tensors["rng.cpu"]))
    if d is not None and d.device.type == "cuda":  # a rank on a GPU: only its own device's
        own = tensors.get(f"rng.cuda.rank{rank}", tensors.get(f"rng.cuda.{d.device.index}"))
        if own is not None:
            torch.cuda.set_rng_state(own, d.device)
    elif torch.cuda.is_available():
        cuda = [tensors[f"rng.cuda.{i}"] for i in range(torch.cuda.device_count()) if f"rng.cuda.{i}" in tensors]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        elif "rng.cuda.rank0" in tensors:  # saved by ranks on GPUs: rank 0's device is this process's
            torch.cuda.set_rng_state(tensors["rng.cuda.rank0"])
    learn.t = meta["t"]
    return meta["epoch"], meta["batch"]


class LRFinderCB(Callback):
    """The learning-rate range test: lr grows exponentially from start to end over at most `steps` batches;
    stops when the (smoothed) loss exceeds 4x its best or goes non-finite."""

    order = -10
    needs_module_step = True  # reads the loss before the step

    def __init__(self, start: float = 1e-6, end: float = 10.0, steps: int = 100) -> None:
        self.start, self.end, self.steps = start, end, steps
        self.lrs: list[float] = []
        self.losses: list[float] = []

    def before_batch(self, learn: Learner) -> None:
        learn.opt.lr = self.start * (self.end / self.start) ** (learn.t / max(self.steps - 1, 1))

    def after_loss(self, learn: Learner) -> None:
        loss = float(learn.loss)
        smooth = loss if not self.losses else 0.9 * self.losses[-1] + 0.1 * loss
        self.lrs.append(learn.opt.lr)
        self.losses.append(smooth)
        if not math.isfinite(loss) or smooth > 4 * min(self.losses) or len(self.lrs) >= self.steps:
            raise CancelFit

    def suggestion(self) -> float:
        """A tenth of the learning rate at the lowest smoothed loss."""
        best = min(range(len(self.losses)), key=self.losses.__getitem__)
        return self.lrs[best] / 10
