"""Use a finished run: evaluate it on the test split, predict classes of image files, find a learning rate."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ..errors import UsageError
from ..module import Module
from .callbacks import LRFinderCB
from .config import TrainConfig
from .learner import Learner
from .loop import evaluate, make_loss, predict_classes
from .run import build_model, build_optimizer, prepare_data, resolve_device
from .runfolder import RunFolder


def load_run(path: str | Path) -> tuple[TrainConfig, Module, dict]:
    """The config, the model with its latest weights (eval mode) and the checkpoint's info of a run folder."""
    folder = RunFolder.open(path)
    cfg = TrainConfig.from_dict(folder.read_config())
    tensors, meta = folder.load_checkpoint()
    meta.setdefault("classes", [str(i) for i in range(10)])
    model, _ = build_model(cfg, int(meta.get("n_in", 784)), len(meta["classes"]))
    model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    return cfg, model.eval(), meta


@dataclass
class Evaluation:
    split: str
    n: int
    loss: float
    accuracy: float
    per_class: list[tuple[str, float, int]]  # (class, accuracy, count)


def evaluate_run(path: str | Path, log: Callable[[str], None] = print) -> Evaluation:
    cfg, model, meta = load_run(path)
    device = resolve_device(cfg.device) if cfg.device == "cpu" or torch.cuda.is_available() else torch.device("cpu")
    data = prepare_data(cfg, device, log)
    model.to(device)
    split, x, y = "test", data.x_test, data.y_test
    if x is None:
        split, x, y = "valid (this data set has no test split)", data.x_valid, data.y_valid
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


def load_image(path: str | Path, side: int = 28) -> Tensor:
    """A grayscale image as (side*side,) floats in [0, 1], resized when needed; UsageError if not an image."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("L")
            if im.size != (side, side):
                im = im.resize((side, side), Image.BILINEAR)
            pixels = torch.tensor(list(im.getdata()), dtype=torch.float32)
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except (UnidentifiedImageError, OSError) as e:
        raise UsageError(f"{path}: not an image ({type(e).__name__}: {e})") from None
    return pixels / 255.0


def predict_images(path: str | Path, images: list[str], k: int = 3) -> list[tuple[str, list[tuple[str, float]]]]:
    """Top-k classes with probabilities for each image file, from a run's latest weights."""
    cfg, model, meta = load_run(path)
    if cfg.loss != "cross-entropy":
        raise UsageError(f"{path}: predict needs a model trained with cross-entropy (this one used {cfg.loss})")
    classes = meta["classes"]
    x = torch.stack([load_image(p) for p in images])  # (B, 784)
    if meta.get("mean") is not None:
        x = (x - meta["mean"]) / meta["std"]
    with torch.no_grad():
        probs = model(x).softmax(dim=1)
    top = probs.topk(min(k, probs.shape[1]), dim=1)
    return [(img, [(classes[int(i)], float(p)) for p, i in zip(ps, idx)])
            for img, ps, idx in zip(images, top.values, top.indices)]


def lr_find(cfg: TrainConfig, plot: str | Path, log: Callable[[str], None] = print) -> float:
    """Run the learning-rate range test on a fresh model of `cfg`; save the loss-vs-lr plot; return the
    suggested learning rate."""
    plot = Path(plot)
    if plot.exists():
        raise UsageError(f"{plot}: the file exists; choose another name or remove it")
    cfg.validate()
    device = resolve_device(cfg.device)
    data = prepare_data(cfg, device, log)
    model, name = build_model(cfg, data.x_train.shape[1], len(data.classes))
    model.to(device)
    from ..data import DataLoader

    finder = LRFinderCB()
    dl = DataLoader(data.x_train, data.y_train, cfg.batch_size, shuffle=True, seed=cfg.seed)
    learn = Learner(model, make_loss(cfg.loss), build_optimizer(cfg, model), dl, data.x_valid, data.y_valid,
                    len(data.classes), [finder])
    learn.fit(1)
    suggestion = finder.suggestion()
    _plot_lr(finder, suggestion, plot, f"{name}, {cfg.opt}, bs {cfg.batch_size}")
    log(f"lr-find: {len(finder.lrs)} batches, lr {finder.lrs[0]:.1e} .. {finder.lrs[-1]:.1e}; lowest loss at "
        f"{suggestion * 10:.2e}; suggested lr {suggestion:.2e}; plot: {plot}")
    return suggestion


def _plot_lr(finder: LRFinderCB, suggestion: float, path: Path, title: str) -> None:
    from .plots import _pyplot, _save

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(finder.lrs, finder.losses)
    ax.axvline(suggestion, color="tab:red", linestyle="--", label=f"suggested {suggestion:.1e}")
    ax.set(xscale="log", xlabel="learning rate", ylabel="loss (smoothed)", title=f"lr-find: {title}")
    ax.legend()
    fig.tight_layout()
    _save(fig, path)
