"""The `handgrad` command: train, check, data.

Bad input ends with one line on stderr (`handgrad: error: ...`) and a non-zero
exit code, never a traceback: 2 for bad usage, 1 for data that cannot be read
or gradients that do not check out.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence
from typing import NoReturn
from dataclasses import fields

import torch

from .allocator import keep_freed_memory
from .errors import DataError, GradientCheckError, NotReplayableError, TrainingError, UsageError
from .train.config import LOSSES, LR_FIND_END, LR_FIND_START, TrainConfig


def _hidden(text: str) -> list[int]:
    """Layer sizes: 50, 100,50 or 100-50."""
    import re

    compact = text.replace(" ", "")
    if not re.fullmatch(r"[0-9]+([,-][0-9]+)*", compact):  # ASCII digits (int() takes any script's)
        raise argparse.ArgumentTypeError(f"expected positive sizes like 50 or 100,50, got {text!r}")
    sizes = [int(s) for s in re.split(r"[,-]", compact)]
    if any(s < 1 for s in sizes):
        raise argparse.ArgumentTypeError(f"expected positive sizes like 50 or 100,50, got {text!r}")
    return sizes


def _model_args(text: str) -> dict:
    """--args of train / lr-find: a JSON object (argparse says a bad one in one line)."""
    from .check.target import parse_args

    try:
        return parse_args(text)
    except UsageError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("--args ")) from None


def _add_train_args(t: argparse.ArgumentParser, d: TrainConfig) -> None:
    """The options `train` and `lr-find` share: data, model, optimizer and schedule."""
    t.add_argument("target", nargs="?", default=None, metavar="TARGET",
                   help="a model class of your own instead of --model: path/to/file.py:ClassName or "
                        "package.module:ClassName, a handgrad Module mapping a batch of images [N, 784] to [N, 10] "
                        "logits (the run folder records it, by absolute path, and its --args)")
    t.add_argument("--args", dest="model_args", type=_model_args, default=None, metavar="JSON",
                   help="TARGET's constructor arguments as a JSON object, e.g. '{\"width\": 64}'")
    t.add_argument("--dataset", default=d.dataset, metavar="{auto,mnist,fashion-mnist,fortunes,words,text:PATH}",
                   help="images: auto, MNIST where it can be found or downloaded, else Fashion-MNIST (default); "
                        "text, for --model gpt/lstm/rnn: fortunes (Debian's fortunes), words (Debian's wamerican "
                        "word list) or text:PATH (any UTF-8 file)")
    t.add_argument("--data", default=d.data, metavar="PATH", help="a data file or folder to read instead of searching")
    t.add_argument("--model", default=d.model, choices=["mlp", "cnn", "gpt", "lstm", "rnn"],
                   help="mlp: the seeds' MLP (default); cnn: a small ResNet-style CNN with batch norm; gpt, lstm, "
                        "rnn: character models of text (AdamW, warm-up and cosine decay, gradients clipped to 1)")
    t.add_argument("--hidden", type=_hidden, default=d.hidden, help="mlp hidden sizes, e.g. 50 (default) or 100,50")
    t.add_argument("--channels", type=_hidden, default=d.channels, help="cnn widths, e.g. 16,32,64 (default)")
    t.add_argument("--steps", type=int, default=d.steps, metavar="N",
                   help="stop after N optimizer steps (any model; text models train for N steps, default 1000)")
    t.add_argument("--block-size", type=int, default=d.block_size, metavar="T",
                   help="text: characters per training window, the GPT's context")
    t.add_argument("--d-model", type=int, default=d.d_model, metavar="D",
                   help="text: the GPT's width (default 128); lstm/rnn: the embedding size (default 64)")
    t.add_argument("--n-layer", type=int, default=d.n_layer, metavar="L",
                   help="text: GPT blocks (default 4), LSTM layers (default 2), RNN layers (default 1)")
    t.add_argument("--n-head", type=int, default=d.n_head, metavar="H", help="gpt: attention heads")
    t.add_argument("--hidden-size", type=int, default=d.hidden_size, metavar="H", help="lstm/rnn: hidden state size")
    t.add_argument("--eval-every", type=int, default=d.eval_every, metavar="N",
                   help="text: steps between two validations, each with a sample of generated text")
    t.add_argument("--no-recompute", dest="recompute", action="store_false",
                   help="gpt: keep the attention probabilities for backward instead of recomputing them")
    t.add_argument("--checkpoint", action="store_true",
                   help="gpt: keep only each block's input and recompute the block in backward (about half the "
                        "peak memory, a third more time per step)")
    t.add_argument("--loss", default=d.loss, choices=LOSSES, help=f"default {d.loss}")
    t.add_argument("--epochs", type=int, default=d.epochs, help="image models: passes over the training set")
    t.add_argument("--bs", "--batch-size", dest="bs", type=int, default=d.bs,
                   help="batch size (default 64 for the MLP, 128 for the CNN, 32 windows for the text models)")
    t.add_argument("--opt", default=d.opt, choices=["sgd", "adam", "adamw"],
                   help="optimizer (default sgd for the image models, adamw for the text models)")
    t.add_argument("--lr", type=float, default=d.lr,
                   help="learning rate, the peak with one-cycle (default: sgd 0.1, 0.01 with mse; adam(w) 0.003)")
    t.add_argument("--momentum", type=float, default=d.momentum, help="SGD momentum (default 0 for the MLP, "
                   "0.9 for the CNN)")
    t.add_argument("--weight-decay", type=float, default=d.weight_decay,
                   help="weight decay (default: sgd 0 for the MLP, 5e-4 for the CNN; adamw 0.01)")
    t.add_argument("--schedule", default=d.schedule, choices=["constant", "one-cycle", "cosine", "step"],
                   help="learning-rate schedule, per batch (default constant for the MLP, cosine for the CNN and "
                        "the text models)")
    t.add_argument("--warmup", type=int, default=d.warmup, help="cosine: warm-up steps (default 0; text models: a "
                   "tenth of the steps, at most 100)")
    t.add_argument("--clip", type=float, default=d.clip, help="clip the gradients' global norm to this (default: "
                   "none; text models 1.0)")
    t.add_argument("--patience", type=int, default=d.patience,
                   help="early stopping: epochs without a better valid loss")
    t.add_argument("--seed", type=int, default=d.seed, help=f"default {d.seed}")
    t.add_argument("--device", default=d.device, help="cpu, cuda or cuda:N")
    t.add_argument("--init", default=d.init, choices=["kaiming", "randn", "torch"], help="mlp weight initialisation")
    t.add_argument("--subset", type=int, default=d.subset, metavar="N", help="train on the first N images only")
    t.add_argument("--no-check", dest="check", action="store_false", help="skip the first-batch gradient check")
    t.add_argument("--no-download", dest="download", action="store_false", help="never try to download data")
    t.add_argument("--no-fused", dest="fused", action="store_false",
                   help="train MLPs and CNNs through the module path (lean), not the fused step")
    t.add_argument("--no-normalize", dest="normalize", action="store_false",
                   help="feed pixels in [0, 1] as the seeds did, instead of standardising them")


def _parser() -> argparse.ArgumentParser:
    from . import __version__
    from .check.target import INPUT_SPEC_HELP

    p = _Parser(prog="handgrad", description="Neural networks with hand-written backward passes.")
    p.add_argument("--version", action="version", version=f"handgrad {__version__} (torch {torch.__version__})")
    sub = p.add_subparsers(dest="command", required=True)

    d = TrainConfig()
    t = sub.add_parser("train", help="train an MLP, a CNN or a model class of your own on MNIST or Fashion-MNIST "
                                     "with hand-written gradients")
    _add_train_args(t, d)
    t.add_argument("--torch-twin", action="store_true",
                   help="also train the same model in torch.nn with autograd and compare")
    t.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    t.add_argument("--stats", default=None, metavar="PNG",
                   help="record per-layer activation statistics and save their plot (means, stds, histograms)")
    t.add_argument("--out", default=d.out, metavar="DIR",
                   help="run folder: config, metrics, checkpoints (safetensors) and plots")
    t.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    t.add_argument("--resume", default=None, metavar="DIR",
                   help="continue the run in DIR from its last checkpoint (its own config is used)")
    t.add_argument("--save-every", type=int, default=d.save_every, metavar="N",
                   help="also checkpoint every N batches (default: at the end of each epoch)")
    t.add_argument("--nproc", type=int, default=d.nproc, metavar="N",
                   help="data-parallel: N processes on this machine (torch.distributed, gloo on CPU, NCCL on GPU); "
                        "--bs stays the global batch. Across machines, start each with torchrun instead")
    t.add_argument("--dist-timeout", type=float, default=d.dist_timeout, metavar="S",
                   help="data-parallel: seconds to wait for a rank before stopping with an error (default 60)")

    lf = sub.add_parser("lr-find", help="the learning-rate range test: loss against a growing lr, plotted")
    _add_train_args(lf, d)
    lf.add_argument("--plot", default=None, help="where to save the plot (default lr_find.png, in the run folder "
                    "with --run)")
    lf.add_argument("--run", default=None, metavar="DIR",
                    help="test the configuration and data of this run folder (its config.json), saving the plot in it")
    lf.add_argument("--start-lr", type=float, default=LR_FIND_START, metavar="LR",
                    help="the learning rate of the first batch (0 < start < end, up to 1e6)")
    lf.add_argument("--end-lr", type=float, default=LR_FIND_END, metavar="LR",
                    help="the learning rate the test grows to (exponentially, over at most 100 batches; it stops "
                         "early once the loss explodes)")

    ev = sub.add_parser("eval", help="accuracy, loss and per-class accuracy of a run on the test split")
    ev.add_argument("run", metavar="DIR")
    ev.add_argument("--data", default=None, metavar="PATH",
                    help="evaluate on this data instead of the run's own (found by its path, checked by its "
                         "fingerprint)")
    ev.add_argument("--json", action="store_true",
                    help="print one JSON object instead: split, n, accuracy, loss, per_class (class, accuracy, n)")

    pr = sub.add_parser("predict", help="the top classes (3 by default) with probabilities for image files, "
                                        "from a run")
    pr.add_argument("run", metavar="DIR")
    pr.add_argument("images", nargs="+", metavar="IMAGE")
    pr.add_argument("--top-k", type=int, default=3, metavar="K", help="classes per image, from 1 to the run's number "
                    "of classes")
    pr.add_argument("--json", action="store_true",
                    help="print one JSON object instead: the run and, per image, its top classes and probabilities")

    c = sub.add_parser("check", help="verify a layer's hand-written backward against autograd and finite "
                                     "differences (default: every built-in layer)")
    c.add_argument("target", nargs="?", default=None,
                   help="your layer: path/to/file.py:ClassName or package.module:ClassName")
    c.add_argument("--input-shape", action="append", default=None, metavar="SPEC",
                   help="TARGET's input, once per argument of its forward, in order: " + INPUT_SPEC_HELP +
                        "; int inputs are passed through undifferentiated (e.g. --input-shape 8,10 --input-shape "
                        "8:int:10 for forward(logits, labels))")
    c.add_argument("--dtype", default=None, choices=["float64", "float32"],
                   help="TARGET: float64 (default; adds finite differences) or float32")
    c.add_argument("--args", default=None, help="TARGET's constructor arguments as JSON, e.g. '{\"n_in\": 16}'")
    c.add_argument("--seed", type=int, default=0, help="random inputs and upstream gradients")
    c.add_argument("--repeats", type=int, default=2, help="built-in layers: random shapes per layer")

    tr = sub.add_parser("trace", help="one forward and backward: every layer's shapes, statistics and gradients")
    tr.add_argument("target", nargs="?", default=None,
                    help="your model: path/to/file.py:ClassName or package.module:ClassName (default: --model)")
    tr.add_argument("--model", default="mlp", choices=["mlp", "cnn"], help="built-in model (default: the seeds' MLP)")
    tr.add_argument("--hidden", type=_hidden, default=d.hidden, help="mlp hidden sizes")
    tr.add_argument("--channels", type=_hidden, default=d.channels, help="cnn widths")
    tr.add_argument("--input-shape", default=None, help="TARGET: input shape, e.g. 64,784")
    tr.add_argument("--args", default=None, help="TARGET's constructor arguments as JSON")
    tr.add_argument("--bs", type=int, default=64, help="built-in model: batch size")
    tr.add_argument("--dataset", default="auto", choices=["auto", "mnist", "fashion-mnist"],
                    help="built-in model: the batch's data set, where it can be found (else random images)")
    tr.add_argument("--seed", type=int, default=0, help="weights and random inputs")

    gr = sub.add_parser("graph", help="draw one batch's forward/backward graph: a node per layer call with "
                                      "statistics, gradients and the bytes kept for backward vs torch autograd")
    gr.add_argument("target", nargs="?", default=None,
                    help="your model: path/to/file.py:ClassName or package.module:ClassName (default: --model)")
    gr.add_argument("--model", default="mlp", choices=["mlp", "cnn"], help="built-in model (default: the seeds' MLP)")
    gr.add_argument("--hidden", type=_hidden, default=d.hidden, help="mlp hidden sizes")
    gr.add_argument("--channels", type=_hidden, default=d.channels, help="cnn widths")
    gr.add_argument("--input-shape", default=None, help="TARGET: input shape, e.g. 64,784")
    gr.add_argument("--args", default=None, help="TARGET's constructor arguments as JSON")
    gr.add_argument("--bs", type=int, default=64, help="built-in model: batch size")
    gr.add_argument("--dataset", default="auto", choices=["auto", "mnist", "fashion-mnist"],
                    help="built-in model: the batch's data set, where it can be found (else random images)")
    gr.add_argument("--seed", type=int, default=0, help="weights and random inputs")
    gr.add_argument("--out", default=None, metavar="FILE", help="the picture: .svg or .png (default graph.svg, or "
                    "graph.png with --format png)")
    gr.add_argument("--format", default=None, choices=["svg", "png"], help="default: from --out's suffix")
    gr.add_argument("--rankdir", default="auto", choices=["auto", "TB", "LR"],
                    help="top to bottom or left to right (auto: left to right for up to 6 layer calls)")

    dv = sub.add_parser("derive", help="sympy's derivative of an activation, checked against its hand-written "
                                       "backward; of a formula (--expr), checked against autograd; or your "
                                       "elementwise layer's backward, checked against either")
    dv.add_argument("name", nargs="?", default=None, metavar="NAME|TARGET",
                    help="a built-in activation: relu, leaky_relu, gelu, ... (none, and no --expr: all of them); "
                         "or your elementwise layer: path/to/file.py:ClassName or package.module:ClassName, its "
                         "backward compared with sympy's derivative of --expr, or without --expr with autograd of "
                         "its forward")
    dv.add_argument("--expr", default=None, metavar="FORMULA",
                    help="a formula of x, e.g. 'x*sigmoid(x)': numbers, x, pi, E, + - * / ** ^ and the functions "
                         "exp, log, sqrt, sin, cos, tanh, erf, abs, max, min, sigmoid, softplus, relu, ...; alone, "
                         "sympy's derivative is printed and checked against autograd at 2001 points in [-6, 6]")
    dv.add_argument("--args", default=None, metavar="JSON", help="TARGET's constructor arguments as JSON")

    bn = sub.add_parser("bench", help="training-step time and peak memory: handgrad vs torch eager, "
                                      "torch.compile and the GEMM floor")
    bn.add_argument("--configs", nargs="+", default=None,
                    help="mlp-784-50-10-bs64, mlp-784-1024-1024-10-bs256, cnn-bs128, gpt-4l-4h-d128-block128-bs32, "
                         "lstm-2l-h256-d64-seq128-bs32 (default: all)")
    bn.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    bn.add_argument("--rounds", type=int, default=5, help="timed rounds per measurement (the median is shown)")
    bn.add_argument("--no-compile", dest="compile", action="store_false", help="skip torch.compile")
    bn.add_argument("--no-time-to-accuracy", dest="tta", action="store_false",
                    help="skip the times to Fashion-MNIST validation accuracy (MLP to 0.85: handgrad vs eager; "
                         "CNN to 0.90, when the CNN is benched: vs eager and torch.compile)")
    bn.add_argument("--json", default=None, metavar="FILE", help="also write the rows as JSON")
    bn.add_argument("--plot", default=None, metavar="PNG", help="also save a bar chart")

    gn = sub.add_parser("generate", help="text a character model run (--model gpt, lstm or rnn) writes after a "
                                         "prompt")
    gn.add_argument("run", metavar="DIR")
    gn.add_argument("--prompt", default="", metavar="TEXT",
                    help="what the text starts with, in the run's characters (default: a new line)")
    gn.add_argument("--tokens", type=int, default=200, metavar="N", help="characters to generate")
    gn.add_argument("--temperature", type=float, default=0.8, metavar="T",
                    help="below 1 sharper, above 1 more random")
    gn.add_argument("--top-k", type=int, default=None, metavar="K",
                    help="draw each character from the K most likely only (default: all)")
    gn.add_argument("--seed", type=int, default=0, help="the draws")

    dd = sub.add_parser("data", help="find (or download) a data set and say where it is")
    dd.add_argument("name", choices=["mnist", "fashion-mnist"])
    dd.add_argument("--data", default=None, metavar="PATH")
    dd.add_argument("--no-download", dest="download", action="store_false")
    return p


def _train(args: argparse.Namespace) -> int:
    import os

    from .train.run import run

    if args.resume is not None and args.target is not None:
        raise UsageError(f"TARGET {args.target} cannot be given with --resume: the run's config.json names its model")
    cfg = _config(args)
    changes = _resume_changes(args) if args.resume is not None else None
    nproc, timeout = cfg.nproc, cfg.dist_timeout
    if changes is not None and "WORLD_SIZE" not in os.environ:  # a resumed run keeps its own process count
        from .train.runfolder import RunFolder

        recorded = RunFolder.open(args.resume).read_config()
        nproc, timeout = changes.get("nproc", recorded.nproc), changes.get("dist_timeout", recorded.dist_timeout)
    if nproc > 1 and "WORLD_SIZE" not in os.environ:  # the launcher: start the ranks, each runs this command
        cfg.validate()
        from .distributed import launch

        argv = args.argv if changes is None or "nproc" in changes else [*args.argv, "--nproc", str(nproc)]
        return launch(nproc, argv, timeout)
    run(cfg, progress=args.progress, overwrite=args.overwrite, resume=args.resume, changes=changes)
    return 0


# What `--resume` lets change: the rest is the run's own configuration (config.json), and a flag for it is refused.
RESUME_FLAGS = {"--epochs": "epochs", "--save-every": "save_every", "--device": "device", "--nproc": "nproc",
                "--dist-timeout": "dist_timeout", "--data": "data"}
RESUME_NEUTRAL = {"--resume", "--no-progress"}


def _resume_changes(args: argparse.Namespace) -> dict:
    """The config fields a `--resume` command changes; UsageError (one line) for a flag that may not change."""
    given = [tok.split("=", 1)[0] for tok in args.argv if tok.startswith("--")]
    changes = {}
    for flag in given:
        if flag in RESUME_FLAGS:
            changes[RESUME_FLAGS[flag]] = getattr(args, RESUME_FLAGS[flag])
        elif flag not in RESUME_NEUTRAL:
            allowed = ", ".join(sorted(RESUME_FLAGS) + ["--no-progress"])
            raise UsageError(f"{flag} cannot change when resuming: --resume continues the run as its config.json "
                             f"says (flags that may change: {allowed})")
    return changes


IMAGE_ONLY = ("--epochs", "--hidden", "--channels", "--init", "--subset", "--no-normalize", "--loss", "--data",
              "--no-fused", "--stats")
MODEL_ONLY = {"--n-head": ("gpt",), "--no-recompute": ("gpt",), "--checkpoint": ("gpt",), "--hidden-size": ("lstm", "rnn")}
TEXT_ONLY = ("--block-size", "--d-model", "--n-layer", "--n-head", "--hidden-size", "--eval-every", "--no-recompute",
             "--checkpoint")


def _config(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig the flags describe; a TARGET becomes its model, recorded by absolute path. A flag for the
    other kind of model (image or text) is a one-line error, not silently ignored."""
    d = TrainConfig()
    cfg = TrainConfig(**{f.name: getattr(args, f.name, getattr(d, f.name)) for f in fields(TrainConfig)})
    given = {tok.split("=", 1)[0] for tok in getattr(args, "argv", []) if tok.startswith("--")}
    if getattr(args, "resume", None) is None and getattr(args, "run", None) is None:
        wrong = IMAGE_ONLY if cfg.is_text else TEXT_ONLY
        if cfg.is_text and "--epochs" in given:
            raise UsageError(f"--epochs is for the image models: --model {cfg.model} trains for --steps N "
                             "(validating every --eval-every steps)")
        flag = next((f for f in wrong if f in given), None)
        if flag is not None and cfg.is_text:
            raise UsageError(f"{flag} is for the image models (mlp, cnn, a class of your own), not --model "
                             f"{cfg.model}")
        if flag is not None:
            raise UsageError(f"{flag} is for the text models (--model gpt, lstm or rnn), not --model {cfg.model}")
        for flag, models in MODEL_ONLY.items():
            if flag in given and cfg.is_text and cfg.model not in models:
                raise UsageError(f"{flag} is for --model {' or '.join(models)}, not --model {cfg.model}")
    target = getattr(args, "target", None)
    if target is not None:
        given = {tok.split("=", 1)[0] for tok in args.argv if tok.startswith("--")}
        for flag in ("--model", "--hidden", "--channels", "--init"):
            if flag in given:
                raise UsageError(f"{flag} is for the built-in models: TARGET {target} builds its own (its sizes go "
                                 "in --args)")
        if target in ("mlp", "cnn"):
            raise UsageError(f"TARGET is a model class of your own (path/to/file.py:ClassName); for the built-in "
                             f"{target}, give --model {target}")
        from .train.usermodel import resolve_target, source_digest

        cfg.model = resolve_target(target)
        cfg.model_source = source_digest(cfg.model)
    return cfg


def _lr_find(args: argparse.Namespace) -> int:
    from .train.evaluate import lr_find

    if any(tok.split("=", 1)[0] in ("--steps", "--eval-every") for tok in args.argv):
        raise UsageError("--steps and --eval-every are for training: lr-find takes at most 100 steps, its lr growing "
                         "from --start-lr to --end-lr")
    if args.run is not None:
        why = "with --run, lr-find uses the run's config.json"
        _given_only(args.argv, {"--run", "--plot", "--data", "--start-lr", "--end-lr"}, why)
        if args.target is not None:
            raise UsageError(f"TARGET {args.target} cannot be given here: {why}, which names its model")
    lr_find(_config(args), args.plot, run=args.run, data_path=args.data if args.run is not None else None,
            start_lr=args.start_lr, end_lr=args.end_lr)
    return 0


def _given_only(argv: list[str], allowed: set[str], why: str) -> None:
    """UsageError naming the first flag in argv outside `allowed`."""
    for tok in argv:
        flag = tok.split("=", 1)[0]
        if tok.startswith("--") and flag not in allowed:
            raise UsageError(f"{flag} cannot be given here: {why} (flags allowed: {', '.join(sorted(allowed))})")


def _eval(args: argparse.Namespace) -> int:
    from .train.evaluate import evaluate_run

    import json

    ev = evaluate_run(args.run, data_path=args.data, log=_stderr if args.json else print)
    if args.json:  # stdout holds the object alone: notes went to stderr
        print(json.dumps({"run": args.run, **ev.to_dict()}))
        return 0
    if ev.split == "held-out":  # a text run
        print(f"{args.run}: the held-out tenth of its text, {ev.n} characters: loss {ev.loss:.4f} nats/char "
              f"({ev.loss / math.log(2):.4f} bits/char), next-character accuracy {ev.accuracy:.4f}")
        return 0
    split = ev.split if ev.split == "test" else f"{ev.split} (this data set has no test split)"
    print(f"{args.run}: {split} split, {ev.n} images: accuracy {ev.accuracy:.4f}, loss {ev.loss:.4f}")
    width = max(len(name) for name, _, _ in ev.per_class)
    for name, acc, n in ev.per_class:
        print(f"  {name:{width}s}  {acc:.4f}  ({n} images)")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from .train.evaluate import predict_images

    import json

    if args.top_k < 1:
        raise UsageError(f"--top-k must be at least 1, got {args.top_k}")
    predictions = predict_images(args.run, args.images, args.top_k)
    if args.json:
        print(json.dumps({"run": args.run, "predictions": [
            {"image": image, "top": [{"class": name, "probability": p} for name, p in top]}
            for image, top in predictions]}))
        return 0
    for image, top in predictions:
        print(f"{image}: " + ", ".join(f"{name} {p:.3f}" for name, p in top))
    return 0


def _generate(args: argparse.Namespace) -> int:
    from .train.evaluate import generate_text

    text = generate_text(args.run, args.prompt, args.tokens, args.temperature, args.top_k, args.seed)
    print(args.prompt + text)
    return 0


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


def _check(args: argparse.Namespace) -> int:
    if args.target is not None:
        return _check_target(args)
    from .check import TOLERANCES, builtin_cases, check_module, format_table

    if not 1 <= args.repeats <= 1000:
        raise UsageError(f"--repeats must be from 1 to 1000, got {args.repeats}")
    _seed(args.seed)
    reports = []
    for case in builtin_cases(args.seed, args.repeats):
        for dtype in (torch.float64, torch.float32):
            rtol = case.float32_rtol if dtype == torch.float32 else None
            reports.append(check_module(case.module, *case.inputs, dtype=dtype, name=case.name, seed=args.seed,
                                        rtol=rtol))
    print(format_table(reports))
    failed = [r for r in reports if not r.passed]
    layers = len({r.module for r in reports})
    if failed:
        print(f"FAILED: {len(failed)} of {len(reports)} checks ({layers} layer configurations)")
        return 1
    t64, t32 = TOLERANCES[torch.float64], TOLERANCES[torch.float32]
    print(f"all {len(reports)} checks passed ({layers} layer configurations; max |hand - ref| <= atol + rtol * "
          f"max |ref|: float64 vs autograd rtol {t64['autograd'][0]:g}, vs finite differences rtol "
          f"{t64['fd'][0]:g}; float32 vs autograd rtol {t32['autograd'][0]:g}, 1e-3 for res_block)")
    return 0


def _check_target(args: argparse.Namespace) -> int:
    """handgrad check file.py:Class --input-shape 8,16 [--input-shape ...]: table, diagnoses, exit 0/1/2."""
    import copy

    from .check import check_module, format_table
    from .check.assertions import explain
    from .check.core import NotDifferentiable, stream
    from .check.target import MAX_CHECK_ELEMENTS, check_arity, instantiate, load_class, parse_args, parse_input_spec

    cls = load_class(args.target)
    module = instantiate(cls, parse_args(args.args))
    if not args.input_shape:
        raise UsageError("--input-shape is needed with a TARGET, e.g. --input-shape 8,16 (once per input of forward)")
    specs = [parse_input_spec(text) for text in args.input_shape]
    total = sum(math.prod(s.shape) for s in specs)
    if total > 2 * MAX_CHECK_ELEMENTS:
        raise UsageError(f"the inputs have {total:,} elements in all; a gradient check takes at most "
                         f"{2 * MAX_CHECK_ELEMENTS:,} (use small shapes: the check does not depend on size)")
    check_arity(module, len(specs))
    if all(s.high is not None for s in specs) and not module.parameters():
        raise UsageError(f"nothing to check: {cls.__name__} has no parameters and every input is int "
                         f"(give float inputs as SHAPE, without :int:HIGH)")
    dtype = torch.float32 if args.dtype == "float32" else torch.float64
    gen = stream(args.seed, "inputs")  # a stream of its own: check_module's dY comes from another
    inputs = [s.draw(gen, dtype) for s in specs]
    given = (f"an input of shape {specs[0]}" if len(specs) == 1
             else "inputs of shapes " + ", ".join(str(s) for s in specs))
    try:
        out = copy.deepcopy(module).to(dtype=dtype)(*(x.clone() for x in inputs))  # (clones: a forward may write)
    except Exception as e:
        raise UsageError(f"{cls.__name__}.forward rejected {given}: {type(e).__name__}: {e}") from None
    outs = list(out) if isinstance(out, (tuple, list)) else [out]  # (a tuple: an LSTM's output and state)
    bad = next((o for o in outs if not (isinstance(o, torch.Tensor) and o.is_floating_point())), None)
    if bad is not None or not outs:
        what = "an empty tuple" if not outs else (f"a {bad.dtype} tensor" if isinstance(bad, torch.Tensor)
                                                  else f"a {type(bad).__name__}")
        raise UsageError(f"{cls.__name__}.forward returned {what} on {given}, expected a floating-point tensor "
                         "(or a tuple of them)")
    try:
        report = check_module(module, *inputs, dtype=dtype, name=cls.__name__, seed=args.seed)
    except NotDifferentiable as e:  # no reference to compare with
        print(f"FAILED: {e}")
        return 1
    except Exception as e:  # the user's backward itself broke: a failed check, said in one line
        print(f"FAILED: {cls.__name__}.backward raised {type(e).__name__}: {e}")
        return 1
    print(format_table([report]))
    if not report.passed:
        for line in explain(report).splitlines():
            print("diagnosis: " + line)
        wrong = len(report.failures())
        said = ([f"{wrong} of {len(report.tensors)} gradients of {cls.__name__} are wrong"] if wrong else []) + \
            ([f"{cls.__name__} changes in place what it is given"] if report.problems else [])
        print("FAILED: " + "; ".join(said))
        return 1
    print(f"{cls.__name__}: all {len(report.tensors)} gradients match autograd"
          + (" and finite differences" if dtype == torch.float64 else ""))
    return 0


def _trace(args: argparse.Namespace) -> int:
    from .losses import CrossEntropyLoss
    from .trace import format_trace, trace

    model, x, y, about = _model_and_batch(args)
    if y is None:  # a class of the user's own, on a random input
        try:
            rows = trace(model, x, seed=args.seed)
        except Exception as e:
            raise UsageError(f"{type(model).__name__} failed on an input of shape {list(x.shape)}: "
                             f"{type(e).__name__}: {e}") from None
        print(f"{about} on a random input {list(x.shape)}, backward from a random output gradient")
    else:
        rows = trace(model, x, y, CrossEntropyLoss())
        print(f"{about}, batch {list(x.shape)}, backward from the cross-entropy loss")
    print(format_trace(rows))
    return 0


def _graph(args: argparse.Namespace) -> int:
    from .graph import backprop_graph, output_path, to_dot, write

    out, fmt = output_path(args.out or f"graph.{args.format or 'svg'}", args.format)  # before any work
    model, x, y, about = _model_and_batch(args)
    try:
        graph = backprop_graph(model, x, y, seed=args.seed, name=about)
    except Exception as e:
        if y is not None:  # a built-in model: not the user's to fix
            raise
        raise UsageError(f"{type(model).__name__} failed on an input of shape {list(x.shape)}: "
                         f"{type(e).__name__}: {e}") from None
    write(to_dot(graph, args.rankdir), out, fmt)
    print(f"wrote {out}: {len(graph.nodes)} layer calls; kept for backward: handgrad "
          f"{graph.handgrad_total.activations:,} bytes, torch autograd {graph.autograd_total.activations:,} bytes "
          f"({graph.autograd_how})")
    return 0


def _model_and_batch(args: argparse.Namespace) -> tuple:
    """TARGET with a random input (and no target), or the built-in --model with the first batch and its labels;
    and a few words saying which."""
    from .models import cnn, mlp

    _seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    if args.target is not None:
        from .check.target import instantiate, load_class, parse_args, parse_shape

        given = {tok.split("=", 1)[0] for tok in args.argv if tok.startswith("--")}
        for flag in ("--model", "--hidden", "--channels", "--bs", "--dataset"):
            if flag in given:
                raise UsageError(f"{flag} is for the built-in models: TARGET {args.target} is drawn on a random input "
                                 "of --input-shape (its sizes go in --args)")
        model = instantiate(load_class(args.target), parse_args(args.args))
        if args.input_shape is None:
            raise UsageError("--input-shape is needed with a TARGET, e.g. --input-shape 64,784")
        return model, torch.randn(parse_shape(args.input_shape), generator=gen), None, type(model).__name__
    if args.bs < 1:
        raise UsageError(f"--bs must be a positive integer, got {args.bs}")
    from .train.run import check_size

    check_size(TrainConfig(model=args.model, hidden=args.hidden, channels=args.channels, bs=args.bs), 784, 10)
    torch.manual_seed(args.seed)
    model = mlp(784, args.hidden, 10) if args.model == "mlp" else cnn(10, args.channels)
    x, y, source = _first_batch(args.dataset, args.bs, gen)
    return model, x, y, f"{args.model} on {source}"


def _first_batch(dataset: str, bs: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, str]:
    """A real batch where data can be found (no download), else random images and labels."""
    from .data import load_dataset, locate

    names = ["mnist", "fashion-mnist"] if dataset == "auto" else [dataset]
    for name in names:
        if locate(name) is not None:
            data = load_dataset(name, allow_download=False).normalized()
            return data.x_train[:bs], data.y_train[:bs], f"the first {bs} {name} training images"
    return torch.randn(bs, 784, generator=gen), torch.randint(0, 10, (bs,), generator=gen), "random images"


def _seed(seed: int) -> None:
    if not 0 <= seed < 2**32:
        raise UsageError(f"--seed must be from 0 to 2**32 - 1, got {seed}")


def _derive(args: argparse.Namespace) -> int:
    from .derive import ACTIVATIONS, derive, derive_expression
    from .expression import parse_expression
    from .train.config import is_target

    target = args.name if args.name is not None and is_target(args.name) else None
    if args.args is not None and target is None:
        raise UsageError("--args are TARGET's constructor arguments: give your layer as path/to/file.py:ClassName")
    expr = parse_expression(args.expr) if args.expr is not None else None
    if target is not None:
        return _derive_layer(target, args.args, expr)
    if expr is not None:
        if args.name is not None:
            raise UsageError(f"derive takes a built-in activation ({args.name}) or --expr, not both")
        derivative, result = derive_expression(expr)
        print(f"{args.expr}:  d/dx {expr}  =  {derivative}")
        print("    " + result.line())
        return 0 if result.passed else 1
    names = [args.name] if args.name else list(ACTIVATIONS)
    failed = 0
    for name in names:
        d = derive(name)
        print(f"{name}:  d/dx {d.forward}  =  {d.derivative}")
        verdict = "matches" if d.passed else "DIFFERS from"
        print(f"    hand-written backward {verdict} it at {d.points} points in [-6, 6]: max abs err "
              f"{d.max_abs_err:.1e} (at x = {d.worst_x:.3f})")
        failed += not d.passed
    return 1 if failed else 0


def _derive_layer(target: str, args_json: str | None, expr: object | None) -> int:
    """handgrad derive file.py:Layer [--expr FORMULA]: its backward against sympy's derivative or autograd."""
    from .check.target import instantiate, load_class, parse_args
    from .derive import derive_layer

    cls = load_class(target)
    derivative, results = derive_layer(instantiate(cls, parse_args(args_json)), expr)
    if expr is not None:
        print(f"{cls.__name__} against --expr:  d/dx {expr}  =  {derivative}")
    else:
        print(f"{cls.__name__}: no --expr, so its backward is compared with autograd of its forward (give --expr "
              "to compare it with sympy's derivative of a formula)")
    for result in results:
        print("    " + result.line())
    failed = [r for r in results if not r.passed]
    if failed:
        print(f"FAILED: {cls.__name__}'s {' and '.join(r.what for r in failed)}")
    return 1 if failed else 0


def _bench(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .bench import (CONFIGS, IMPLS, bench_config, format_table, format_time_to_accuracy, plot,
                        time_to_accuracy, write_json)
    from .data import locate
    from .train.run import resolve_device

    configs = args.configs or list(CONFIGS)
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        raise UsageError(f"unknown bench config {unknown[0]!r}: expected one of {', '.join(CONFIGS)}")
    if args.rounds < 1:
        raise UsageError(f"--rounds must be at least 1, got {args.rounds}")
    for flag, where in (("--json", args.json), ("--plot", args.plot)):
        if where is not None and not Path(where).absolute().parent.is_dir():
            raise UsageError(f"{flag} {where}: no folder {Path(where).absolute().parent}")
    device = resolve_device(args.device)
    impls = IMPLS if args.compile else tuple(i for i in IMPLS if i != "compile")
    print(f"one training step, {device}, {torch.get_num_threads()} threads, median of {args.rounds} rounds")
    rows = []
    for name in configs:
        steps = {"mlp": 50, "cnn": 3, "gpt": 3, "lstm": 3}[CONFIGS[name][2]] if "1024" not in name else 5
        rows += bench_config(name, device, args.rounds, steps, impls)
    tta = None
    if args.tta:
        if locate("fashion-mnist") is None:
            print("time to accuracy skipped: Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
        else:
            tta = time_to_accuracy(device, "mlp")
            if any(CONFIGS[c][2] == "cnn" for c in configs):
                tta += time_to_accuracy(device, "cnn", compile=args.compile)
    print(format_table(rows))
    if tta is not None:
        print(format_time_to_accuracy(tta))
    if args.json:
        write_json(rows, Path(args.json), tta)
    if args.plot:
        plot(rows, Path(args.plot), f"{device}, {torch.get_num_threads()} threads, median of {args.rounds} "
                                    f"round{'s' if args.rounds > 1 else ''}")
    return 0


def _data(args: argparse.Namespace) -> int:
    from .data import load_dataset

    ds = load_dataset(args.name, args.data, allow_download=args.download)
    print(f"{ds.name}: {ds.source} ({ds.x_train.shape[0]} train, {ds.x_valid.shape[0]} valid, "
          f"{0 if ds.x_test is None else ds.x_test.shape[0]} test)")
    return 0


def _error(e: BaseException | str) -> None:
    """One line on stderr, written at once (data-parallel ranks share it); ranks other than 0 say who they are."""
    import os

    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        world = 1
    rank = os.environ.get("RANK", "0") if world > 1 else "0"
    text = " | ".join(line.strip() for line in str(e).splitlines() if line.strip()) or type(e).__name__
    sys.stderr.write(f"handgrad: error: {'' if rank == '0' else f'[rank {rank}] '}{text}\n")
    sys.stderr.flush()


class _UsageExit(Exception):
    """An argparse error, said in one line by main."""


class _Formatter(argparse.HelpFormatter):
    """Each option's help ends with its default, where it has one and the help does not already say it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if "default" in text or default is argparse.SUPPRESS or isinstance(default, bool) or not action.option_strings:
            return text  # nothing to show (store_true / store_false flags say what they do instead)
        if default is None:
            return f"{text} (default: none)" if action.nargs != 0 else text
        if isinstance(default, (list, tuple)):
            shown = ",".join(str(v) for v in default)
        else:
            shown = f"{default:g}" if isinstance(default, float) else str(default)
        return f"{text} (default: {shown.replace('%', '%%')})"


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (`handgrad: error: handgrad train: ...`), not a usage block;
    --help shows the defaults (every sub-command's parser is one of these)."""

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:  # type: ignore[override]
        raise _UsageExit(f"{self.prog}: {message} (see {self.prog} --help)")


def _unexpected(e: BaseException, args: argparse.Namespace | None = None) -> None:
    """Anything not foreseen: one line naming it, the traceback in a file the line names (the run folder's
    error.log where the command has a handgrad run folder, else a temporary file)."""
    import tempfile
    import traceback
    from pathlib import Path

    from .train.runfolder import ERROR_LOG, MARKER

    text = "".join(traceback.format_exception(type(e), e, e.__traceback__))
    where = "no traceback file could be written"
    writes = ("resume", "out", "run") if args.command in ("train", "lr-find") else ()  # eval & co only read a run
    for folder in [getattr(args, k, None) for k in writes]:
        if isinstance(folder, str) and (Path(folder) / MARKER).is_file() and not Path(folder).is_symlink():
            try:  # never through a symbolic link planted in the folder
                fd = os.open(Path(folder) / ERROR_LOG, os.O_WRONLY | os.O_CREAT | os.O_TRUNC |
                             getattr(os, "O_NOFOLLOW", 0), 0o644)
                with os.fdopen(fd, "w") as f:
                    f.write(text)
                where = f"traceback in {Path(folder) / ERROR_LOG}"
                break
            except OSError:
                pass
    else:
        try:
            fd, path = tempfile.mkstemp(prefix="handgrad-error-", suffix=".log")
            with os.fdopen(fd, "w") as f:
                f.write(text)
            where = f"traceback in {path}"
        except OSError:
            pass
    _error(f"{type(e).__name__}: {e} ({where}; HANDGRAD_DEBUG=1 prints it)")


# options whose value may begin with "-" and a digit, e.g. a mistyped size: argparse would take "-8,4" for an
# option and say "expected one argument"; joined as --input-shape=-8,4 the option's own check says what is wrong
_SIZE_OPTIONS = ("--input-shape", "--hidden", "--channels")


def _join_dash_values(argv: list[str]) -> list[str]:
    out: list[str] = []
    it = iter(argv)
    for arg in it:
        if arg == "--":
            out.append(arg)
            out.extend(it)
            break
        if arg in _SIZE_OPTIONS:
            value = next(it, None)
            if value is not None and len(value) > 1 and value[0] == "-" and value[1].isdigit():
                out.append(f"{arg}={value}")
                continue
            out.append(arg)
            if value is not None:
                out.append(value)
            continue
        out.append(arg)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = _parser().parse_args(_join_dash_values(argv))
    except _UsageExit as e:
        _error(e)
        return 2
    args.argv = argv
    try:
        commands = {"train": _train, "lr-find": _lr_find, "eval": _eval, "predict": _predict, "check": _check,
                    "trace": _trace, "graph": _graph, "derive": _derive, "bench": _bench, "data": _data,
                    "generate": _generate}
        if args.command in ("train", "lr-find", "bench"):
            keep_freed_memory()  # training loops re-allocate the same buffers each step
        return commands[args.command](args)
    except (DataError, GradientCheckError, TrainingError) as e:
        _error(e)
        return 1
    except (ValueError, NotReplayableError) as e:
        _error(e)
        return 2
    except KeyboardInterrupt:
        print("handgrad: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `handgrad eval --json | head`: the reader left, as for any Unix tool
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so that flushing stdout at exit raises nothing more
        return 141
    except MemoryError:
        _error(f"out of memory in handgrad {args.command}: choose a smaller model, batch (--bs) or data (--subset)")
        return 1
    except OSError as e:  # the system refused a read or write: say which file and why
        if os.environ.get("HANDGRAD_DEBUG") == "1":
            raise
        _error(f"{e.filename}: {e.strerror}" if e.filename and e.strerror else f"{type(e).__name__}: {e}")
        return 1
    except Exception as e:  # noqa: BLE001 - the one top-level handler: no traceback reaches the user
        if os.environ.get("HANDGRAD_DEBUG") == "1":
            raise
        _unexpected(e, args)
        return 1


if __name__ == "__main__":
    sys.exit(main())
