"""One training run from a TrainConfig: data, model, first-batch gradient check, training, summary,
and with a run folder: metrics, checkpoints (exact resume) and plots."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..check import check_module
from ..data import DataLoader, Dataset, load_dataset, locate
from ..data.text import TextLoader
from ..data.datasets import compare_fingerprints, identify, load_path
from ..distributed import Dist, broadcast_module, init_from_env
from ..errors import DataError, GradientCheckError, TrainingError, UsageError
from ..interop import to_torch
from ..models import cnn, mlp
from ..module import Module, WithLoss
from ..optim import SGD, Adam, AdamW, Optimizer
from ..schedules import make_schedule
from .callbacks import (CheckpointCB, ClipGradCB, EarlyStoppingCB, LambdaCB, MetricsCB, NonFiniteGuardCB, ProgressCB,
                        ScheduleCB, restore)
from .config import TRAINED_UNDER, TrainConfig, is_target
from .learner import Callback, Learner
from .loop import EpochStats, make_loss, n_outputs, predict_classes
from .runfolder import CHECKPOINT, CONFIG, RunFolder
from .schema import check_model_tensors, check_optimizer_tensors, check_position
from .stats import ActivationStats
from .twin import fit_torch
from .usermodel import build_user_model


OPT_NAMES = {"sgd": "SGD", "adam": "Adam", "adamw": "AdamW"}


@dataclass
class RunResult:
    config: TrainConfig
    dataset: str
    model: Module
    history: list[EpochStats]
    twin_history: list[EpochStats] = field(default_factory=list)
    seconds: float = 0.0
    folder: Path | None = None

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
    """The data set named in cfg; 'auto' means MNIST where it can be found or downloaded, else Fashion-MNIST.
    Files given by path with 'auto' are told apart by their first training labels."""
    if cfg.dataset != "auto":
        return load_dataset(cfg.dataset, cfg.data, allow_download=cfg.download)
    if cfg.data is not None:
        try:  # a folder holding fashion-mnist's files by name has no mnist ones
            found, as_name = locate("mnist", cfg.data), "mnist"
        except DataError:
            found, as_name = locate("fashion-mnist", cfg.data), "fashion-mnist"
        data = load_path(found, as_name)  # its own errors (a corrupt file) are said as they are
        name = identify(data)  # None: other data, named as found (mnist unless a fashion-mnist file was found)
        return data if name in (None, data.name) else data.renamed(name)
    if locate("mnist") is not None:
        return load_dataset("mnist", allow_download=cfg.download)
    try:
        return load_dataset("mnist", allow_download=cfg.download)
    except DataError:
        log("MNIST not found nor downloadable; using Fashion-MNIST")
        return load_dataset("fashion-mnist", allow_download=cfg.download)


def prepare_data(cfg: TrainConfig, device: torch.device, log: Callable[[str], None],
                 explicit: bool = False) -> Dataset:
    """The run's data, subset and normalised as cfg says. A config holding a fingerprint (a run being resumed
    or evaluated) gets exactly that data: anything else is refused, unless the user named the data (`explicit`),
    where a difference is only said. cfg then holds the resolved name, absolute path and fingerprint."""
    try:
        data = resolve_dataset(cfg, log)
    except DataError as e:
        if cfg.fingerprint is None or explicit:
            raise
        raise DataError(f"{e}; this run trained on {cfg.dataset} at {cfg.data}: pass --data PATH if it moved") \
            from None
    fingerprint = data.fingerprint()
    if cfg.fingerprint is not None:
        diff = compare_fingerprints(cfg.fingerprint, fingerprint)
        if diff is not None and not explicit:
            raise DataError(f"{data.source}: not the data this run trained on ({diff}); pass --data PATH to use "
                            "other data on purpose")
        if diff is not None:
            log(f"note: {data.source} differs from the data this run trained on ({diff})")
    # what was resolved, so that a run folder's config names exactly this data
    cfg.dataset, cfg.data, cfg.fingerprint = data.name, data.source, fingerprint
    if cfg.subset is not None:
        data = data.subset(cfg.subset, data.x_valid.shape[0])
    if cfg.normalize:
        data = data.normalized()
    return data.to(device)


def build_model(cfg: TrainConfig, n_in: int, n_classes: int, recorded: Path | None = None) -> tuple[Module, str]:
    """The model a config describes, initialised from cfg.seed, and its one-line name. `recorded`: the
    config.json the config was read from (its path names a user's model class that no longer loads or fits)."""
    n_out = n_outputs(cfg.loss, n_classes)
    check_size(cfg, n_in, n_out)
    if is_target(cfg.model):
        torch.manual_seed(cfg.seed)
        return build_user_model(cfg.model, cfg.model_args, n_in, n_out, recorded, cfg.model_source)
    torch.manual_seed(cfg.seed)
    if cfg.model == "cnn":
        side = int(round(n_in ** 0.5))
        if side * side != n_in:
            raise DataError(f"--model cnn takes square images; these have {n_in} pixels")
        return cnn(n_out, cfg.channels, (1, side, side)), "CNN " + "-".join(str(c) for c in cfg.channels)
    return mlp(n_in, cfg.hidden, n_out, cfg.init), "-".join(str(s) for s in [n_in, *cfg.hidden, n_out]) + " MLP"


def n_parameters(cfg: TrainConfig, n_in: int, n_out: int) -> int:
    """How many parameters cfg's model has (counted before building it)."""
    if cfg.model == "cnn":  # stem conv_bn, per block two 3x3 conv_bn and a 1x1 shortcut, the head
        w = cfg.channels
        blocks = sum(9 * a * b + 9 * b * b + a * b + 6 * b for a, b in zip(w[:-1], w[1:]))
        return 9 * w[0] + 2 * w[0] + blocks + (w[-1] + 1) * n_out
    sizes = [n_in, *cfg.hidden, n_out]
    return sum((a + 1) * b for a, b in zip(sizes[:-1], sizes[1:]))


def check_size(cfg: TrainConfig, n_in: int, n_out: int) -> None:
    """UsageError when the widths are out of range, or the model's parameters, gradients and optimizer state
    (16 bytes a parameter) would not fit in this machine's memory: one line instead of an allocation failure or
    the system's OOM killer."""
    cfg.validate()
    if is_target(cfg.model):  # a class of the user's own: its size is known once it is built
        return
    n, memory = n_parameters(cfg, n_in, n_out), memory_bytes()
    if 16 * n > memory:
        raise UsageError(f"the {cfg.model} would have {n:,} parameters ({16 * n / 2**30:.1f} GiB with gradients and "
                         f"optimizer state), more than this machine's {memory / 2**30:.1f} GiB of memory; choose "
                         "smaller --hidden / --channels")


def memory_bytes() -> int:
    """This machine's physical memory."""
    import os

    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 40


def trained_under(cfg: TrainConfig) -> dict:
    """The config fields a checkpoint's weights and optimizer state depend on (recorded in it)."""
    return {k: getattr(cfg, k) for k in TRAINED_UNDER}


def check_trained_under(meta: dict, cfg: TrainConfig, config_path: Path, checkpoint_path: Path) -> None:
    """DataError when config.json no longer says what the checkpoint was trained under (edited by hand)."""
    recorded = meta.get("trained_under")
    if recorded is None:  # a checkpoint from before this was recorded
        return
    now = trained_under(cfg)
    for key in TRAINED_UNDER:
        if key in recorded and recorded[key] != now[key]:
            raise DataError(f"{config_path}: key {key!r} is {now[key]!r}, but {checkpoint_path} was trained with "
                            f"{recorded[key]!r} (config.json edited?)")


def build_optimizer(cfg: TrainConfig, model: Module) -> Optimizer:
    if cfg.optimizer == "sgd":
        return SGD(model.parameters(), cfg.learning_rate, momentum=cfg.sgd_momentum, weight_decay=cfg.decay)
    cls = Adam if cfg.optimizer == "adam" else AdamW
    return cls(model.parameters(), cfg.learning_rate, weight_decay=cfg.decay)


def torch_optimizer(cfg: TrainConfig, params) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, cfg.learning_rate, momentum=cfg.sgd_momentum, weight_decay=cfg.decay)
    cls = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
    return cls(params, cfg.learning_rate, weight_decay=cfg.decay)


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


def run(cfg: TrainConfig, log: Callable[[str], None] = print, progress: bool = True, overwrite: bool = False,
        resume: str | Path | None = None, changes: dict | None = None) -> RunResult:
    """Train as `cfg` says. With resume, continue the run in that folder from its checkpoint (cfg is ignored:
    the folder's own config is used, with `changes` applied: epochs to extend it, save_every, device)."""
    d = init_from_env(cfg.device, cfg.dist_timeout)  # data-parallel under torchrun / --nproc: join the group
    if d is None:
        return _run(cfg, None, log, progress, overwrite, resume, changes)
    try:  # rank 0 speaks and writes; every rank reports its own failure to the others before it stops
        return _run(cfg, d, log if d.is_main else (lambda s: None), progress and d.is_main, overwrite, resume,
                    changes)
    except BaseException as e:
        d.report(f"{type(e).__name__}: {e}" if not isinstance(e, TrainingError) else str(e))
        raise
    finally:
        d.close()


def _run(cfg: TrainConfig, d: Dist | None, log: Callable[[str], None], progress: bool, overwrite: bool,
         resume: str | Path | None, changes: dict | None = None) -> RunResult:
    main = d is None or d.is_main
    folder = None
    changed = {}
    if resume is not None:
        folder = RunFolder.open(resume)
        cfg = folder.read_config()
        cfg.out = str(folder.path)
        changed = {k: v for k, v in (changes or {}).items() if getattr(cfg, k) != v}
        if cfg.is_text and ("epochs" in changed or "data" in changed):
            flag = "--epochs" if "epochs" in changed else "--data"
            raise UsageError(f"{flag} is for image runs: this text run trains for {cfg.total_steps} steps on "
                             f"{cfg.dataset}")
        if "epochs" in changed and cfg.lr_schedule != "constant":
            raise UsageError(f"--epochs {changed['epochs']}: this run's {cfg.lr_schedule} schedule was laid out over "
                             f"{cfg.epochs} epochs; only a run with a constant learning rate can be extended")
        for key, value in changed.items():
            setattr(cfg, key, value)
    cfg.validate()
    if cfg.stats is not None and resume is None:  # (a resumed run records no statistics: its file is written)
        if Path(cfg.stats).exists() or Path(cfg.stats).is_symlink():
            raise ValueError(f"--stats {cfg.stats}: the file exists; choose another name or remove it")
        if not Path(cfg.stats).absolute().parent.is_dir():
            raise ValueError(f"--stats {cfg.stats}: no folder {Path(cfg.stats).absolute().parent}")
    device = resolve_device(cfg.device) if d is None else d.device
    new_folder = None
    if resume is None and cfg.out is not None and main:
        new_folder = RunFolder.prepare(cfg.out, overwrite)  # checked now, touched once the run is ready
    if folder is not None and main:
        folder.lock()
    try:
        return _train(cfg, d, log, progress, overwrite, resume, folder, new_folder, device, changed)
    finally:
        for f in (folder, new_folder):
            if f is not None:
                f.close()


def _train(cfg: TrainConfig, d: Dist | None, log: Callable[[str], None], progress: bool, overwrite: bool,
           resume: str | Path | None, folder: RunFolder | None, new_folder: RunFolder | None,
           device: torch.device, changed: dict | None = None) -> RunResult:
    main = d is None or d.is_main
    checkpoint = folder.load_checkpoint() if resume is not None else None

    start = time.perf_counter()
    changed = changed or {}
    fingerprint = cfg.fingerprint
    text = None
    if cfg.is_text:  # a character model: windows of text, token-level cross-entropy, samples
        from .text import SampleCB, prepare_text, run_vocab, text_model

        vocab = run_vocab(folder.path, checkpoint[1]) if checkpoint is not None else None
        text = prepare_text(cfg, device, log, d.rank if d else 0, d.world_size if d else 1, vocab)
        data_name, source = text.data.name, text.data.source
        model, name = text_model(cfg, len(text.data.vocab))
        n_classes, train_dl, x_valid, y_valid = len(text.data.vocab), text.train_dl, text.x_valid, text.y_valid
        sizes = (f"{text.data.train.numel():,} training characters, {x_valid.numel():,} held out "
                 f"({x_valid.shape[0]} windows); {cfg.total_steps} steps of {cfg.batch_size} windows of "
                 f"{cfg.block_size}, validating every {cfg.eval_every}")
        epochs = -(-cfg.total_steps // cfg.eval_every)
    else:
        data = prepare_data(cfg, device, log, explicit="data" in changed)
        n_in, n_classes = data.x_train.shape[1], len(data.classes)
        model, name = build_model(cfg, n_in, n_classes, folder.path / CONFIG if checkpoint is not None else None)
        data_name, source, x_valid, y_valid = data.name, data.source, data.x_valid, data.y_valid
        train_dl = DataLoader(data.x_train, data.y_train, cfg.batch_size, shuffle=True, seed=cfg.seed,
                              rank=d.rank if d else 0, world_size=d.world_size if d else 1)
        epochs = cfg.epochs
        sizes = f"{data.x_train.shape[0]} train, {data.x_valid.shape[0]} valid; {cfg.epochs} epochs"
    model.to(device)
    loss_fn = make_loss(cfg.loss, text=cfg.is_text)
    n_params = sum(p.numel() for p in model.parameters())
    bs, lr = cfg.batch_size, cfg.learning_rate
    momentum = f" momentum {cfg.sgd_momentum}" if cfg.optimizer == "sgd" else ""
    clip = f", gradients clipped to norm {cfg.clip_norm:g}" if cfg.clip_norm is not None else ""
    warmup = f" after {cfg.warmup_steps} warm-up steps" if cfg.lr_schedule == "cosine" and cfg.warmup_steps else ""
    opt_desc = (f"{OPT_NAMES[cfg.optimizer]} lr {lr} ({cfg.lr_schedule}{warmup}){momentum} weight decay "
                f"{cfg.decay}{clip}")
    log(f"{'resuming' if checkpoint else 'training'} {name} ({n_params} parameters) with {cfg.loss} on "
        f"{data_name} ({source}): {sizes}, bs {bs}, {opt_desc}, seed {cfg.seed}, device {device}"
        + (f"; run folder {cfg.out}" if cfg.out else ""))
    twin = to_torch(model) if cfg.torch_twin and checkpoint is None else None  # initial weights

    if d is not None:
        if cfg.torch_twin:
            raise ValueError("--torch-twin trains in one process: run it without torchrun / --nproc")
        full = bs if cfg.is_text else min(bs, data.x_train.shape[0])  # (fewer samples than bs: one smaller batch)
        lo, hi = full // d.world_size, -(-full // d.world_size)
        log(f"data-parallel over {d.world_size} processes ({torch.distributed.get_backend()}): each global batch "
            f"of {full} split {lo if lo == hi else f'{lo}-{hi}'} per rank, gradients summed with all_reduce")
        broadcast_module(d, model)
    if cfg.check and checkpoint is None and main:
        xb, yb = next(train_dl.epoch_batches(0))
        if xb.shape[0] == 0 and isinstance(train_dl, DataLoader):  # rank 0 has no share of a tiny first batch:
            xb, yb = next(DataLoader(train_dl.x, train_dl.y, train_dl.batch_size).epoch_batches(0))  # check it whole
        log(first_batch_check(model, loss_fn, xb[:4] if text else xb, yb[:4] if text else yb))
    if resume is None and cfg.out is not None:  # the new run is ready: only now is an old one replaced
        if new_folder is not None:
            new_folder.commit(overwrite)
            new_folder.write_config(cfg.to_dict())
            if text is not None:
                from .text import write_vocab

                write_vocab(new_folder.path, text.data)
            folder = new_folder
        if d is not None:
            d.barrier("waiting for rank 0 to create the run folder")
            folder = folder or RunFolder.open(cfg.out)

    opt = build_optimizer(cfg, model)
    total = epochs * len(train_dl) if cfg.total_steps is None else min(cfg.total_steps, epochs * len(train_dl))
    if cfg.lr_schedule == "cosine" and cfg.warmup_steps >= total > 0:
        raise UsageError(f"--warmup {cfg.warmup_steps}: the run takes {total} steps; warm-up must end before")
    schedule = make_schedule(cfg.lr_schedule, lr, total, cfg.warmup_steps)
    metrics = MetricsCB(log, cfg.total_steps if text else None)
    callbacks: list[Callback] = [ScheduleCB(schedule), NonFiniteGuardCB(), metrics]
    if progress:
        callbacks.append(ProgressCB())
    if cfg.clip_norm is not None:
        callbacks.append(ClipGradCB(cfg.clip_norm))
    if cfg.patience is not None:
        callbacks.append(EarlyStoppingCB(cfg.patience, log))
    if text is not None:
        from .text import context_size

        callbacks.append(SampleCB(text.data.vocab, cfg.seed, log, context=context_size(model)))
    stats = ActivationStats(model) if cfg.stats is not None and main and checkpoint is None else None
    if stats is not None:
        # recorded after the forward, before the lean backward lets go of the activations
        callbacks.append(LambdaCB("after_loss", lambda learn: stats.record(), order=50))
    if folder is not None:
        info = ({"vocab": text.data.vocab, "dataset": data_name} if text is not None else
                {"classes": list(data.classes), "mean": data.mean, "std": data.std, "dataset": data.name,
                 "n_in": n_in})
        info["trained_under"] = trained_under(cfg)
        callbacks.append(CheckpointCB(folder, cfg.save_every, info))
    learn = Learner(model, loss_fn, opt, train_dl, x_valid, y_valid, n_classes, callbacks, cfg.fused, d,
                    max_steps=cfg.total_steps, eval_bs=64 if text else 2000)

    start_epoch, start_batch = 0, 0
    if checkpoint is not None:
        path = folder.path / CHECKPOINT
        check_model_tensors(checkpoint[0], model.state_dict(), path)
        check_optimizer_tensors(checkpoint[0], model.parameters(), path, type(opt).__name__,
                                checkpoint[1]["opt_steps"], cfg.optimizer == "sgd" and cfg.sgd_momentum > 0)
        check_position(checkpoint[1], path, epochs, len(train_dl), len(model.parameters()),
                       {type(cb).__name__ for cb in callbacks})
        check_trained_under(checkpoint[1], cfg, folder.path / CONFIG, path)  # (after the shapes: more specific)
        try:
            start_epoch, start_batch = restore(learn, *checkpoint)
        except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as e:
            raise DataError(f"{path}: does not fit this run's model and optimizer ({type(e).__name__}: {e})") \
                from None
        if main and (changed or cfg.fingerprint != fingerprint):  # only once the data and checkpoint fit
            folder.write_config(cfg.to_dict())
            if changed:
                log("resuming with " + ", ".join(f"{k} {v}" for k, v in changed.items()) + " (config.json updated)")
        if start_epoch >= epochs or (cfg.total_steps is not None and learn.t >= cfg.total_steps):
            log(f"this run is finished (step {learn.t}" + (f" of {cfg.total_steps}" if cfg.total_steps else "") +
                f", epoch {start_epoch} of {epochs}): nothing left to train; to train further, start a new run")
            return RunResult(cfg, data_name, model, learn.callback(MetricsCB).history,
                             seconds=time.perf_counter() - start, folder=folder.path)
        log(f"continuing at epoch {start_epoch + 1}, batch {start_batch} (step {learn.t})")
    learn.fit(epochs, start_epoch, start_batch)
    history = metrics.history
    result = RunResult(cfg, data_name, model, history, seconds=time.perf_counter() - start,
                       folder=folder.path if folder else None)
    if history and text is not None:
        last = history[-1]
        log(f"done: {data_name} {name}, {last.step} steps in {sum(h.seconds for h in history):.1f}s -> valid_loss "
            f"{last.valid_loss:.4f} nats/char, valid_acc {last.valid_acc:.4f}")
    elif history:
        last = history[-1]
        log(f"done: {data_name} {name} {cfg.loss}, {len(history)} epochs in {sum(h.seconds for h in history):.1f}s "
            f"-> valid_acc {last.valid_acc:.4f}, valid_loss {last.valid_loss:.4f}")
    if stats is not None:
        about = f"{name} on {data_name}" + (f", run {Path(cfg.out).resolve().name}" if cfg.out else "")
        log(f"activation statistics of {len(stats.layers)} layers over {len(stats)} batches: "
            f"{stats.plot(cfg.stats, about, batches_per_epoch=len(train_dl))}")
    if folder is not None and history and main:
        if text is not None:
            from .text import write_samples

            sampler = learn.callback(SampleCB)
            paths = write_text_plots(history, folder, name, data_name, cfg.eval_every)
            paths.append(write_samples(folder.path, sampler.samples))
        else:
            paths = write_plots(learn, history, data, folder, name, cfg.loss)
        log(f"run folder {folder.path}: " + ", ".join(p.name for p in paths))

    if twin is not None:
        if text is not None:
            twin_dl = TextLoader(text.train_dl.ids, cfg.block_size, bs, cfg.eval_every, cfg.seed)
        else:
            twin_dl = DataLoader(data.x_train, data.y_train, bs, shuffle=True, seed=cfg.seed)
        result.twin_history = fit_torch(twin, cfg.loss, torch_optimizer(cfg, twin.parameters()), twin_dl,
                                        x_valid, y_valid, epochs, n_classes, log, schedule, clip=cfg.clip_norm,
                                        max_steps=cfg.total_steps, text=text is not None)
        if text is not None:
            gap = 100 * (history[-1].valid_loss / result.twin_history[-1].valid_loss - 1)
            log(f"torch.nn twin (autograd, same initial weights and batches): valid_loss "
                f"{result.twin_history[-1].valid_loss:.4f} nats/char; handgrad is {gap:+.2f}% of it")
        else:
            gap = 100 * (history[-1].valid_acc - result.twin_history[-1].valid_acc)
            log(f"torch.nn twin (autograd, same initial weights and batches): valid_acc "
                f"{result.twin_history[-1].valid_acc:.4f}; handgrad - torch = {gap:+.2f} points")
    return result


def write_text_plots(history: list[EpochStats], folder: RunFolder, model_name: str, data_name: str,
                     steps_per_epoch: int) -> list[Path]:
    """A text run's loss.png and accuracy.png (next-character accuracy), x in optimizer steps."""
    from .plots import plot_curves

    about = f"run {folder.path.resolve().name}: {model_name} on {data_name}"
    return plot_curves(history, folder.path, about, "cross-entropy (nats/char)", steps_per_epoch=steps_per_epoch)


def write_plots(learn: Learner, history: list[EpochStats], data: Dataset, folder: RunFolder, model_name: str = "",
                loss: str = "loss") -> list[Path]:
    """The run folder's pictures, each titled with the run (the folder's name), the model and the data set."""
    from .plots import plot_confusion, plot_curves, plot_samples

    about = f"run {folder.path.resolve().name}: {model_name + ' on ' if model_name else ''}{data.name}"
    pred = predict_classes(learn.predict(data.x_valid), len(data.classes))
    paths = plot_curves(history, folder.path, about, loss, n_valid=data.x_valid.shape[0])
    paths.append(plot_confusion(pred, data.y_valid, data.classes, folder.path / "confusion.png", about))
    x_show = data.x_valid[:24] * data.std + data.mean if data.std is not None else data.x_valid[:24]
    paths.append(plot_samples(x_show, pred[:24], data.y_valid[:24], data.classes, folder.path / "samples.png",
                              about=about))
    return paths
