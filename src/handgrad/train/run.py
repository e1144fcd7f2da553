"""One training run from a TrainConfig: data, model, first-batch gradient check, training, summary."""

from __future__ import annotations

import time
from pathlib import Path
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..check import check_module
from ..data import DataLoader, Dataset, load_dataset, locate
from ..errors import DataError, GradientCheckError
from ..interop import to_torch
from ..module import Module, WithLoss
from ..optim import SGD
from .config import TrainConfig
from ..models import cnn, mlp
from .loop import EpochStats, cosine_schedule, fit, make_loss, n_outputs
from .stats import ActivationStats
from .twin import fit_torch


@dataclass
class RunResult:
    config: TrainConfig
    dataset: str
    model: Module
    history: list[EpochStats]
    twin_history: list[EpochStats] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def valid_acc(self) -> float:
        return self.history[-1].valid_acc


def resolve_device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device: expected cpu, cuda or cuda:N, got {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device: expected cpu, cuda or cuda:N, got {name!r}")
    return device


def resolve_dataset(cfg: TrainConfig, log: Callable[[str], None]) -> Dataset:
    """The data set named in cfg; 'auto' means MNIST where it can be found or downloaded, else Fashion-MNIST."""
    if cfg.dataset != "auto":
        return load_dataset(cfg.dataset, cfg.data, allow_download=cfg.download)
    if cfg.data is not None or locate("mnist") is not None:
        return load_dataset("mnist", cfg.data, allow_download=cfg.download)
    try:
        return load_dataset("mnist", allow_download=cfg.download)
    except DataError:
        log("MNIST not found nor downloadable; using Fashion-MNIST")
        return load_dataset("fashion-mnist", allow_download=cfg.download)


def first_batch_check(model: Module, loss_fn: Module, xb: torch.Tensor, yb: torch.Tensor) -> str:
    """Check the hand-written gradients on one batch against autograd in float64; one line, or GradientCheckError."""
    report = check_module(WithLoss(model, loss_fn), xb.cpu(), yb.cpu(), dtype=torch.float64,
                          finite_differences=False)
    if not report.passed:
        bad = report.failures()[0]
        detail = bad.problem or f"max rel err {bad.autograd.max_rel:.1e} at {bad.autograd.worst_index}"
        raise GradientCheckError(f"gradient check on the first batch failed for '{bad.name}': {detail}")
    return (f"gradient check on the first batch (float64): input and {len(report.tensors) - 1} parameters match "
            f"autograd (max rel err {report.worst_rel('autograd'):.1e})")


def run(cfg: TrainConfig, log: Callable[[str], None] = print, progress: bool = True) -> RunResult:
    cfg.validate()
    if cfg.stats is not None and Path(cfg.stats).exists():
        raise ValueError(f"--stats {cfg.stats}: the file exists; choose another name or remove it")
    device = resolve_device(cfg.device)
    start = time.perf_counter()
    data = resolve_dataset(cfg, log)
    if cfg.subset is not None:
        data = data.subset(cfg.subset, data.x_valid.shape[0])
    if cfg.normalize:
        data = data.normalized()
    data = data.to(device)
    n_in, n_classes = data.x_train.shape[1], len(data.classes)
    n_out = n_outputs(cfg.loss, n_classes)

    torch.manual_seed(cfg.seed)
    if cfg.model == "cnn":
        side = int(round(n_in ** 0.5))
        model = cnn(n_out, cfg.channels, (1, side, side)).to(device)
        sizes = "CNN " + "-".join(str(c) for c in cfg.channels)
    else:
        model = mlp(n_in, cfg.hidden, n_out, cfg.init).to(device)
        sizes = "-".join(str(s) for s in [n_in, *cfg.hidden, n_out]) + " MLP"
    loss_fn = make_loss(cfg.loss)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"training {sizes} ({n_params} parameters) with {cfg.loss} on {data.name} ({data.source}): "
        f"{data.x_train.shape[0]} train, "
        f"{data.x_valid.shape[0]} valid; {cfg.epochs} epochs, bs {cfg.batch_size}, SGD lr {cfg.learning_rate} "
        f"({cfg.lr_schedule}) momentum "
        f"{cfg.sgd_momentum} weight decay {cfg.sgd_weight_decay}, seed {cfg.seed}, "
        f"device {device}")
    twin = to_torch(model) if cfg.torch_twin else None  # initial weights, before any step

    train_dl = DataLoader(data.x_train, data.y_train, cfg.batch_size, shuffle=True, seed=cfg.seed)
    if cfg.check:
        xb, yb = next(iter(DataLoader(data.x_train, data.y_train, cfg.batch_size, shuffle=True, seed=cfg.seed)))
        log(first_batch_check(model, loss_fn, xb, yb))

    opt = SGD(model.parameters(), lr=cfg.learning_rate, momentum=cfg.sgd_momentum, weight_decay=cfg.sgd_weight_decay)
    lr_at = cosine_schedule(cfg.learning_rate, cfg.epochs * len(train_dl)) if cfg.lr_schedule == "cosine" else None
    stats = ActivationStats(model) if cfg.stats is not None else None
    history = fit(model, loss_fn, opt, train_dl, data.x_valid, data.y_valid, cfg.epochs, n_classes, progress, log,
                  lr_at, stats.record if stats is not None else None)
    if stats is not None:
        log(f"activation statistics of {len(stats.layers)} layers over {len(stats)} batches: {stats.plot(cfg.stats)}")
    result = RunResult(cfg, data.name, model, history, seconds=time.perf_counter() - start)
    last = history[-1]
    log(f"done: {data.name} {sizes} {cfg.loss}, {cfg.epochs} epochs in {sum(h.seconds for h in history):.1f}s "
        f"-> valid_acc {last.valid_acc:.4f}, valid_loss {last.valid_loss:.4f}")

    if twin is not None:
        twin_dl = DataLoader(data.x_train, data.y_train, cfg.batch_size, shuffle=True, seed=cfg.seed)
        topt = torch.optim.SGD(twin.parameters(), lr=cfg.learning_rate, momentum=cfg.sgd_momentum,
                               weight_decay=cfg.sgd_weight_decay)
        result.twin_history = fit_torch(twin, cfg.loss, topt, twin_dl, data.x_valid, data.y_valid, cfg.epochs,
                                        n_classes, log, lr_at)
        gap = 100 * (last.valid_acc - result.twin_history[-1].valid_acc)
        log(f"torch.nn twin (autograd, same initial weights and batches): valid_acc "
            f"{result.twin_history[-1].valid_acc:.4f}; handgrad - torch = {gap:+.2f} points")
    return result
