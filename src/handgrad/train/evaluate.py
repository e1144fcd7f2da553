"""Use a finished run: evaluate it on the test split, predict classes of image files, find a learning rate."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ..errors import DataError, TrainingError, UsageError
from ..module import Module
from .callbacks import LRFinderCB
from .config import LR_FIND_END, LR_FIND_START, MAX_LR, TrainConfig
from .learner import Learner
from .loop import evaluate, make_loss, predict_classes
from .run import build_model, build_optimizer, check_trained_under, prepare_data, resolve_device
from .runfolder import CHECKPOINT, CONFIG, LR_FIND, RunFolder
from .schema import check_model_tensors


def load_run(path: str | Path) -> tuple[TrainConfig, Module, dict]:
    """The config, the model with its latest weights (eval mode) and the checkpoint's info of a run folder;
    every file checked (DataError naming the file and key when one does not fit)."""
    folder = RunFolder.open(path)
    cfg = folder.read_config()
    tensors, meta = folder.load_checkpoint()
    if cfg.is_text:
        from .text import run_vocab, text_model

        model, _ = text_model(cfg, len(run_vocab(folder.path, meta)))
    else:
        model, _ = build_model(cfg, meta["n_in"], len(meta["classes"]), folder.path / CONFIG)
    state = check_model_tensors(tensors, model.state_dict(), folder.path / CHECKPOINT)
    check_trained_under(meta, cfg, folder.path / CONFIG, folder.path / CHECKPOINT)  # (after the shapes)
    model.load_state_dict(state)
    return cfg, model.eval(), meta


@dataclass
class Evaluation:
    split: str  # "test", or "valid" for data without a test split
    n: int
    loss: float
    accuracy: float
    per_class: list[tuple[str, float, int]]  # (class, accuracy, count)

    def to_dict(self) -> dict:
        """As JSON holds it: a number that is not finite (a class without images) is null."""
        def number(v: float) -> float | None:
            return v if math.isfinite(v) else None

        return {"split": self.split, "n": self.n, "accuracy": number(self.accuracy), "loss": number(self.loss),
                "per_class": [{"class": name, "accuracy": number(acc), "n": n} for name, acc, n in self.per_class]}


def evaluate_run(path: str | Path, log: Callable[[str], None] = print, data_path: str | None = None) -> Evaluation:
    """The run's model on the test split of the data it trained on (found by its absolute path and checked
    against its fingerprint), or of `data_path` when given."""
    cfg, model, meta = load_run(path)
    device = resolve_device(cfg.device) if cfg.device == "cpu" or torch.cuda.is_available() else torch.device("cpu")
    if cfg.is_text:
        return _evaluate_text(cfg, model, meta, device, log, data_path)
    if data_path is not None:
        cfg.data = data_path
    cfg.download = False
    normalize, cfg.normalize = cfg.normalize, False  # the run's own mean and std, below
    data = prepare_data(cfg, device, log, explicit=data_path is not None)
    if data.x_train.shape[1] != meta["n_in"] or len(data.classes) != len(meta["classes"]):
        raise DataError(f"{data.source}: images of {data.x_train.shape[1]} pixels in {len(data.classes)} classes; "
                        f"the run's model takes {meta['n_in']} pixels and {len(meta['classes'])} classes")
    model.to(device)
    split, x, y = "test", data.x_test, data.y_test
    if x is None:  # said by the caller: "valid (this data set has no test split)"
        split, x, y = "valid", data.x_valid, data.y_valid
    if normalize and meta["mean"] is not None and meta["std"] is not None:
        x = (x - meta["mean"]) / meta["std"]
    loss_fn = make_loss(cfg.loss)
    loss, acc = evaluate(model, loss_fn, x, y, len(data.classes))
    with torch.no_grad():
        pred = torch.cat([predict_classes(model(x[i:i + 2000]), len(data.classes)) for i in range(0, len(x), 2000)])
    per_class = []
    for c, name in enumerate(data.classes):
        mask = y == c
        n = int(mask.sum())
        per_class.append((name, float((pred[mask] == c).double().mean()) if n else float("nan"), n))
    return Evaluation(split, int(x.shape[0]), loss, acc, per_class)


def _evaluate_text(cfg: TrainConfig, model: Module, meta: dict, device: torch.device, log: Callable[[str], None],
                   data_path: str | None) -> Evaluation:
    """A text run on all of its held-out tenth: loss in nats per character, next-character accuracy."""
    from ..data.text import valid_windows
    from .text import prepare_text

    if data_path is not None:
        raise UsageError("--data is for image runs: a text run is evaluated on the held-out tenth of its own text")
    text = prepare_text(cfg, device, log, vocab=meta["vocab"])
    x, y = valid_windows(text.data.valid.to(device), cfg.block_size, max_windows=text.data.valid.numel(),
                         where=f"{cfg.dataset}: its held-out tenth")
    model.to(device)
    loss, acc = evaluate(model, make_loss(cfg.loss, text=True), x, y, len(meta["vocab"]), bs=64)
    return Evaluation("held-out", int(y.numel()), loss, acc, [])


def load_image(path: str | Path, side: int = 28) -> Tensor:
    """A grayscale image as (side*side,) floats in [0, 1], resized when needed: 8-bit images scaled by 255,
    16-bit ones by 65535, float images taken as they are when in [0, 1] (or scaled by 255 when in [0, 255]).
    UsageError in one line for anything else: not an image, no such file, a decompression bomb."""
    import warnings

    import numpy as np
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.load()
                a = _gray(im, path)
    except UsageError:
        raise
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise UsageError(f"{path}: is a folder, not an image") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise UsageError(f"{path}: refusing an image this large (a decompression bomb?): {e}") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise UsageError(f"{path}: not an image ({type(e).__name__}: {e})") from None
    if a.shape != (side, side):
        a = np.asarray(Image.fromarray(a, mode="F").resize((side, side), Image.BILINEAR), dtype=np.float32)
    return torch.from_numpy(np.array(a, dtype=np.float32)).reshape(-1)  # a copy: PIL's buffer is read-only


def _gray(im, path: str | Path):
    """The image's gray levels in [0, 1] as a float32 array, whatever its bit depth."""
    import numpy as np

    if im.mode.startswith("I;16") or im.mode == "I":
        a = np.asarray(im, dtype=np.float64)
        if a.ndim != 2 or a.min() < 0 or a.max() > 65535:
            raise UsageError(f"{path}: integer pixels from {a.min():g} to {a.max():g}; expected 16-bit gray levels")
        return (a / 65535.0).astype(np.float32)
    if im.mode == "F":
        a = np.asarray(im, dtype=np.float32)
        if not np.isfinite(a).all():
            raise UsageError(f"{path}: holds NaN or infinite pixels")
        lo, hi = float(a.min()), float(a.max())
        if lo >= 0 and hi <= 1:
            return a
        if lo >= 0 and hi <= 255:
            return a / 255.0
        raise UsageError(f"{path}: float pixels from {lo:g} to {hi:g}; expected gray levels in [0, 1] or [0, 255]")
    return np.asarray(im.convert("L"), dtype=np.float32) / 255.0


def predict_images(path: str | Path, images: list[str], k: int = 3) -> list[tuple[str, list[tuple[str, float]]]]:
    """Top-k classes with probabilities for each image file, from a run's latest weights; UsageError unless
    1 <= k <= the run's number of classes."""
    cfg, model, meta = load_run(path)
    if cfg.is_text:
        raise UsageError(f"{path}: a text run (--model {cfg.model}); predict classifies images: sample it with "
                         f"handgrad generate {path}")
    if cfg.loss != "cross-entropy":
        raise UsageError(f"{path}: predict needs a model trained with cross-entropy (this one used {cfg.loss})")
    classes = meta["classes"]
    if not 1 <= k <= len(classes):
        raise UsageError(f"--top-k must be from 1 to {len(classes)} (the run's classes), got {k}")
    side = int(round(meta["n_in"] ** 0.5))
    if side * side != meta["n_in"]:
        raise UsageError(f"{path}: the model takes {meta['n_in']} pixels, not a square image")
    x = torch.stack([load_image(p, side) for p in images])  # (B, side*side)
    if meta.get("mean") is not None:
        x = (x - meta["mean"]) / meta["std"]
    with torch.no_grad():
        probs = model(x).softmax(dim=1)
    top = probs.topk(k, dim=1)
    return [(img, [(classes[int(i)], float(p)) for p, i in zip(ps, idx)])
            for img, ps, idx in zip(images, top.values, top.indices)]


def lr_find(cfg: TrainConfig, plot: str | Path | None, log: Callable[[str], None] = print,
            run: str | Path | None = None, data_path: str | None = None, start_lr: float = LR_FIND_START,
            end_lr: float = LR_FIND_END) -> float:
    """Run the learning-rate range test, lr growing from `start_lr` to `end_lr`, on a fresh model of `cfg` (or
    of the run folder `run`: its config, its data checked against its fingerprint, its lock held, the plot saved
    in it); save the loss-vs-lr plot; return the suggested learning rate."""
    check_lr_range(start_lr, end_lr)
    folder = None
    if run is not None:
        folder = RunFolder.open(run)
        cfg = folder.read_config()
        if data_path is not None:
            cfg.data = data_path
    plot = Path(plot) if plot is not None else (folder.path / LR_FIND if folder is not None else Path(LR_FIND))
    if plot.exists() and not (folder is not None and plot == folder.path / LR_FIND):
        raise UsageError(f"{plot}: the file exists; choose another name or remove it")
    cfg.validate()
    device = resolve_device(cfg.device)
    if folder is not None:
        folder.lock()
    try:
        finder = LRFinderCB(start_lr, end_lr)
        if cfg.is_text:
            from .text import prepare_text, read_vocab, text_model

            if data_path is not None:
                raise UsageError("--data is for image runs: a text run's text is its --dataset")
            text = prepare_text(cfg, device, log, vocab=read_vocab(folder.path) if folder is not None else None)
            model, name = text_model(cfg, len(text.data.vocab))
            dl, x_valid, y_valid, n_classes = text.train_dl, text.x_valid, text.y_valid, len(text.data.vocab)
            data_name = text.data.name
        else:
            data = prepare_data(cfg, device, log, explicit=data_path is not None)
            model, name = build_model(cfg, data.x_train.shape[1], len(data.classes),
                                      folder.path / CONFIG if folder is not None else None)
            from ..data import DataLoader

            dl = DataLoader(data.x_train, data.y_train, cfg.batch_size, shuffle=True, seed=cfg.seed)
            x_valid, y_valid, n_classes, data_name = data.x_valid, data.y_valid, len(data.classes), data.name
        model.to(device)
        # the test needs no validation (an empty set: nothing evaluated after each epoch), and as many epochs as
        # its steps take, so that a small training split does not end it before the lr is high
        learn = Learner(model, make_loss(cfg.loss, text=cfg.is_text), build_optimizer(cfg, model), dl,
                        x_valid[:0], y_valid[:0], n_classes, [finder])
        learn.fit(-(-finder.steps // len(dl)) if len(dl) else 1)
        if not finder.lrs:
            raise TrainingError("lr-find: no batch ran (the training split is empty)")
        suggestion = finder.suggestion()
        where = f"run {folder.path.resolve().name}: " if folder is not None else ""
        _plot_lr(finder, suggestion, plot, f"{where}{name} on {data_name}, {cfg.optimizer}, bs {cfg.batch_size}")
    finally:
        if folder is not None:
            folder.close()
    log(f"lr-find: {len(finder.lrs)} batches, lr {finder.lrs[0]:.1e} .. {finder.lrs[-1]:.1e}; lowest loss at "
        f"{suggestion * 10:.2e}; suggested lr {suggestion:.2e}; plot: {plot}")
    return suggestion


MIN_LR = 1e-12


def check_lr_range(start: float, end: float) -> None:
    """UsageError unless 1e-12 <= start, start * 10 <= end <= MAX_LR, both finite (a range of at least a decade, the
    suggestion being a tenth of the best lr; subnormal numbers would make the geometric steps infinite)."""
    for flag, value in (("--start-lr", start), ("--end-lr", end)):
        if not (math.isfinite(value) and MIN_LR <= value <= MAX_LR):
            raise UsageError(f"{flag} must be a number from 1e-12 to 1e6 (as --lr), got {value}")
    if start * 10 > end:
        raise UsageError(f"--start-lr must be at most a tenth of --end-lr (the lr grows over at least a decade), got "
                         f"{start:g} and {end:g}")


def _plot_lr(finder: LRFinderCB, suggestion: float, path: Path, title: str) -> None:
    """The smoothed training loss against the learning rate (log scale), the lowest point and the suggestion
    marked, and why the test stopped."""
    from .plots import _pyplot, _save

    plt = _pyplot()
    points = [(lr, loss) for lr, loss in zip(finder.lrs, finder.losses) if math.isfinite(loss)]
    fig, ax = plt.subplots(figsize=(8, 4.8), layout="constrained")
    if points:
        ax.plot(*zip(*points), color="tab:blue", label="training loss of each batch, smoothed (0.9 x the last "
                "point + 0.1 x this batch's)")
    best = min(range(len(finder.losses)), key=finder.losses.__getitem__)
    ax.plot(finder.lrs[best], finder.losses[best], "o", color="black",
            label=f"lowest loss, at lr {finder.lrs[best]:.1e}")
    ax.axvline(suggestion, color="tab:red", linestyle="--",
               label=f"suggested lr {suggestion:.1e} (a tenth of the lowest loss's)")
    if len(finder.lrs) >= finder.steps:
        stop = f"all {finder.steps} steps taken"
    else:
        stop = "stopped: the loss passed 4x its lowest"
    ax.set(xscale="log", xlabel="learning rate (log scale; it grows with every batch)",
           ylabel="training loss (smoothed)",
           title=f"learning-rate range test: {title}\n{len(finder.lrs)} batches, lr {finder.lrs[0]:.0e} to "
                 f"{finder.lrs[-1]:.1e}; {stop}")
    ax.title.set_fontsize(10)
    ax.grid(color="0.92")
    ax.legend(fontsize="small")
    _save(fig, path)


def generate_text(path: str | Path, prompt: str = "", tokens: int = 200, temperature: float = 1.0,
                  top_k: int | None = None, seed: int = 0) -> str:
    """`tokens` characters a text run's model writes after `prompt` (a newline when empty), each drawn from
    softmax(logits / temperature) over the `top_k` most likely characters (all of them with None)."""
    from .text import MAX_TOKENS, context_size, generate, prompt_ids

    if not 1 <= tokens <= MAX_TOKENS:
        raise UsageError(f"--tokens must be from 1 to {MAX_TOKENS:,}, got {tokens}")
    if not (math.isfinite(temperature) and 0 < temperature <= 100):
        raise UsageError(f"--temperature must be a number in (0, 100], got {temperature}")
    if not 0 <= seed < 2**63:
        raise UsageError(f"--seed must be from 0 to 2**63 - 1, got {seed}")
    cfg, model, meta = load_run(path)
    if not cfg.is_text:
        raise UsageError(f"{path}: an image run (--model {cfg.model}); generate samples text runs (--model gpt, "
                         "lstm or rnn): classify images with handgrad predict")
    vocab = meta["vocab"]
    if top_k is not None and not 1 <= top_k <= len(vocab):
        raise UsageError(f"--top-k must be from 1 to {len(vocab)} (the run's vocabulary), got {top_k}")
    device = resolve_device(cfg.device) if cfg.device == "cpu" or torch.cuda.is_available() else torch.device("cpu")
    model.to(device)
    ids = prompt_ids(vocab, prompt, device)
    out = generate(model, ids, tokens, temperature, top_k, torch.Generator().manual_seed(seed), context_size(model))
    return "".join(vocab[i] for i in out.tolist())
