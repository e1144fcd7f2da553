"""Bad input and faults against the command line: each ends with exit 1 or 2 and exactly one line on stderr
beginning `handgrad: error:`, no traceback, and nothing outside the run folder changed (in-process: main())."""

import os

import numpy as np
import pytest
import torch

from handgrad import cli
from handgrad.train.runfolder import RunFolder


@pytest.fixture
def npz(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    gen = torch.Generator().manual_seed(0)
    y = torch.randint(0, 10, (600,), generator=gen)
    x = (2 * torch.randn(10, 784, generator=gen))[y] + torch.randn(600, 784, generator=gen)
    path = folder / "mnist.npz"
    np.savez(path, x_train=x.numpy(), y_train=y.numpy())
    return path


def snapshot(folder, skip=None):
    return {p: p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and (skip is None or skip not in p.parents)}


def run_cli(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.err


def train(npz, *extra):
    return ["train", "--dataset", "mnist", "--data", npz, "--no-download", "--no-progress", "--epochs", "1", *extra]


def npz_of(t, name="bad.npz", **arrays):
    """A .npz in t with the given arrays (x_train/y_train default to 20 good images and labels)."""
    gen = np.random.default_rng(0)
    arrays.setdefault("x_train", gen.integers(0, 256, (20, 28, 28), dtype=np.uint8))
    arrays.setdefault("y_train", gen.integers(0, 10, 20))
    np.savez(t / name, **{k: v for k, v in arrays.items() if v is not None})
    return t / name


def set_config(r, **changes):
    import json

    cfg = json.loads((r / "config.json").read_text())
    cfg.update(changes)
    (r / "config.json").write_text(json.dumps(cfg))


def resave(r, drop=(), meta=None, **tensors):
    """The run's checkpoint rewritten with some tensors changed or dropped, or its metadata replaced."""
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    path = r / "checkpoint.safetensors"
    with safe_open(path, "pt") as f:
        old = json.loads(f.metadata()["handgrad"])
    loaded = {k: v for k, v in load_file(path).items() if k not in drop}
    loaded.update(tensors)
    save_file(loaded, path, metadata={"handgrad": json.dumps(old if meta is None else meta(old))})


def png_bomb(t):
    """A PNG whose header promises 30000 x 30000 pixels in a few bytes."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    body = chunk(b"IHDR", struct.pack(">IIBBBBB", 30000, 30000, 8, 0, 0, 0, 0))
    body += chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b"")
    (t / "bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    return t / "bomb.png"


def evil_pickle(t):
    import gzip
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch pwned",))

    (t / "mnist.pkl.gz").write_bytes(gzip.compress(pickle.dumps(Evil())))
    return t / "mnist.pkl.gz"


def cyclic_pickle(t):
    import gzip
    import pickle

    a: list = []
    a.append(a)
    (t / "mnist.pkl.gz").write_bytes(gzip.compress(pickle.dumps(((a, a), (a, a)))))
    return t / "mnist.pkl.gz"


def gzip_bomb_idx(t):
    """Four IDX files whose training images promise 5000 images in a few kilobytes of gzip."""
    import gzip
    import struct

    folder = t / "idx"
    folder.mkdir()
    from handgrad.data import write_idx

    write_idx(folder / "train-labels-idx1-ubyte.gz", np.zeros(5000, np.uint8))
    write_idx(folder / "t10k-images-idx3-ubyte.gz", np.zeros((10, 28, 28), np.uint8))
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", np.zeros(10, np.uint8))
    head = struct.pack(">HBB", 0, 8, 3) + struct.pack(">3I", 5000, 28, 28)
    (folder / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(head + bytes(5000 * 784)))
    return folder


def idx_folder(t, images=None, magic=None, cut=0):
    from handgrad.data import write_idx

    folder = t / "idx"
    folder.mkdir()
    write_idx(folder / "train-images-idx3-ubyte", np.zeros((20, 28, 28), np.uint8) if images is None else images)
    write_idx(folder / "train-labels-idx1-ubyte", np.zeros(20, np.uint8))
    write_idx(folder / "t10k-images-idx3-ubyte", np.zeros((10, 28, 28), np.uint8))
    write_idx(folder / "t10k-labels-idx1-ubyte", np.zeros(10, np.uint8))
    f = folder / "train-images-idx3-ubyte"
    data = f.read_bytes()
    if magic is not None:
        data = magic + data[4:]
    f.write_bytes(data[:len(data) - cut])
    return folder


def in_sub(t):
    (t / "sub").mkdir()
    os.chdir(t / "sub")
    return t


USER_CLASSES = '''
import sys
import torch
import handgrad as hg


class Quits(hg.Module):  # sys.exit(0) in __init__ is no success
    def __init__(self):
        sys.exit(0)


class Seq(hg.Sequential):
    """The built-in MLP as a class of one's own: its tensors have the built-in MLP's names."""

    def __init__(self, width=50):
        super().__init__(hg.Linear(784, width), hg.ReLU(), hg.Linear(width, 10))


class Five(hg.Module):
    def __init__(self):
        super().__init__()
        self.fc = hg.Linear(784, 5)

    def forward(self, x):
        return self.fc(x)


class Total(hg.Module):
    def forward(self, x):
        return x.sum()

    def bwd(self, dy, x):
        return dy.expand_as(x)
'''


def user_class(t, name):
    """`t/mine.py:name`, a class of USER_CLASSES."""
    (t / "mine.py").write_text(USER_CLASSES)
    return f"{t / 'mine.py'}:{name}"


def gray_png(t):
    from PIL import Image

    Image.fromarray(np.full((28, 28), 128, np.uint8)).save(t / "gray.png")
    return t / "gray.png"


def lr_find_cmd(t, n, *extra):
    return ["lr-find", "--data", n, "--dataset", "mnist", "--plot", t / "p.png", *extra]


NO_CUDA = not torch.cuda.is_available()
u8 = np.uint8

# name: (argv from (tmp folder, good npz, a trained run folder copied to tmp/r), exit code or None, piece of the line)
CASES = {
    # usage
    "epochs not an int": (lambda t, n, r: ["train", "--epochs", "six"], 2, "argument --epochs: invalid int value: 'six'"),
    "unknown flag": (lambda t, n, r: ["train", "--bogus"], 2, "unrecognized arguments: --bogus"),
    "unknown command": (lambda t, n, r: ["bogus"], 2, "invalid choice: 'bogus'"),
    "no command": (lambda t, n, r: [], 2, "required: command"),
    "hidden negative": (lambda t, n, r: train(n, "--hidden=-5"), 2, "expected positive sizes"),
    "hidden huge": (lambda t, n, r: train(n, "--hidden", "2000000000"), 2, "--hidden sizes must be from 1 to 65536"),
    "hidden negative as a separate argument": (lambda t, n, r: train(n, "--hidden", "-50,3"), 2,
                                               "expected positive sizes like 50 or 100,50, got '-50,3'"),
    "hidden in other digits": (lambda t, n, r: train(n, "--hidden", "\uff15\uff10"), 2, "expected positive sizes"),
    "channels negative as a separate argument": (lambda t, n, r: train(n, "--model", "cnn", "--channels", "-8,16"), 2,
                                                 "got '-8,16'"),
    "channels zero": (lambda t, n, r: train(n, "--model", "cnn", "--channels", "0"), 2, "expected positive sizes"),
    "dist-timeout inf": (lambda t, n, r: train(n, "--dist-timeout", "inf"), 2, "--dist-timeout must be seconds"),
    "dist-timeout nan": (lambda t, n, r: train(n, "--dist-timeout", "nan"), 2, "--dist-timeout must be seconds"),
    "epochs zero": (lambda t, n, r: train(n, "--epochs", "0"), 2, "--epochs must be at least 1"),
    "bs zero": (lambda t, n, r: train(n, "--bs", "0"), 2, "--bs must be a positive integer"),
    "momentum 1.5": (lambda t, n, r: train(n, "--momentum", "1.5"), 2, "--momentum must be in [0, 1)"),
    "weight decay inf": (lambda t, n, r: train(n, "--weight-decay", "inf"), 2, "--weight-decay must be a number"),
    "weight decay 1e308": (lambda t, n, r: train(n, "--weight-decay", "1e308"), 2, "--weight-decay must be a number"),
    "nproc 1000": (lambda t, n, r: train(n, "--nproc", "1000"), 2, "--nproc must be from 1 to"),
    "seed huge": (lambda t, n, r: train(n, "--seed", "99999999999999999999999"), 2, "--seed must be from 0"),
    "trace of a model too big": (lambda t, n, r: ["trace", "--hidden", "65536,65536,65536", "--bs", "2"], 2,
                                 "more than this machine's"),
    "check repeats huge": (lambda t, n, r: ["check", "--repeats", "1000000000000"], 2, "--repeats must be from 1"),
    "trace seed huge": (lambda t, n, r: ["trace", "--seed", "99999999999999999999999"], 2, "--seed must be from 0"),
    "lr nan": (lambda t, n, r: train(n, "--lr", "nan"), 2, "--lr must be a positive number"),
    "lr overflows": (lambda t, n, r: train(n, "--lr", "1e39", "--no-fused", "--no-check"), 2, "up to 1e6, got 1e+39"),
    "subset zero": (lambda t, n, r: train(n, "--subset", "0"), 2, "--subset must be positive"),
    "nproc zero": (lambda t, n, r: train(n, "--nproc", "0"), 2, "--nproc must be from 1 to"),
    "device tpu": (lambda t, n, r: train(n, "--device", "tpu"), 2, "--device: expected cpu, cuda or cuda:N"),
    **({"device cuda without cuda": (lambda t, n, r: train(n, "--device", "cuda"), 2, "CUDA is not available")}
       if NO_CUDA else {}),
    "stats file exists": (lambda t, n, r: (t / "s.png").write_bytes(b"x") and train(n, "--stats", t / "s.png"), 2,
                          "the file exists"),
    "twin with nproc": (lambda t, n, r: train(n, "--torch-twin", "--nproc", "2"), 2, "--torch-twin trains in one"),
    # run folders
    "data path typo": (lambda t, n, r: train(t / "typo.npz", "--out", t / "new"), 1, "typo.npz"),
    "out is a file": (lambda t, n, r: (t / "f").write_text("x") and train(n, "--out", t / "f"), 2, "is a file"),
    "out is a symlink": (lambda t, n, r: (t / "real").mkdir() or (t / "link").symlink_to(t / "real") or
                         train(n, "--out", t / "link"), 2, "symbolic link"),
    "overwrite a project folder": (lambda t, n, r: (t / "proj").mkdir() or (t / "proj" / "config.json").write_text(
        "{}") and train(n, "--out", t / "proj", "--overwrite"), 2, "not a handgrad run folder"),
    "overwrite the working directory": (lambda t, n, r: train(n, "--out", ".", "--overwrite"), 2,
                                        "is the working directory"),
    "overwrite a parent of the working directory": (lambda t, n, r: train(n, "--out", in_sub(t), "--overwrite"), 2,
                                                    "or a folder above it"),
    "out exists without overwrite": (lambda t, n, r: train(n, "--out", r), 2, "already exists; pass --overwrite"),
    "overwrite a run with missing data": (lambda t, n, r: train(t / "typo", "--out", r, "--overwrite"), 1, "typo"),
    "resume with a flag that may not change": (lambda t, n, r: ["train", "--resume", r, "--lr", "0.5"], 2,
                                               "--lr cannot change when resuming"),
    "resume of no folder": (lambda t, n, r: ["train", "--resume", t / "none"], 2, "no such run folder"),
    "resume without a checkpoint": (lambda t, n, r: (r / "checkpoint.safetensors").unlink() or
                                    ["train", "--resume", r], 2, "no checkpoint yet"),
    "resume of a finished cosine run with more epochs": (
        lambda t, n, r: set_config(r, schedule="cosine") or ["train", "--resume", r, "--epochs", "3"], 2,
        "only a run with a constant learning rate can be extended"),
    "config epochs a string": (lambda t, n, r: set_config(r, epochs="six") or ["train", "--resume", r], 1,
                               "key 'epochs': expected an integer, got 'six' (a string)"),
    "config unknown key": (lambda t, n, r: set_config(r, epoch=3) or ["eval", r], 1, "unknown key 'epoch'"),
    "config hidden negative": (lambda t, n, r: set_config(r, hidden=[-5]) or ["eval", r], 1,
                               "--hidden sizes must be from 1"),
    "config model unknown": (lambda t, n, r: set_config(r, model="transformer") or ["eval", r], 1, "--model must be one of"),
    "config lr a list": (lambda t, n, r: set_config(r, lr=[1]) or ["eval", r], 1,
                         "key 'lr': expected a number or null, got [1] (a list)"),
    "config init unknown": (lambda t, n, r: set_config(r, init="foo") or ["eval", r], 1, "--init must be one of"),
    "config device meta": (lambda t, n, r: set_config(r, device="meta") or ["eval", r], 1,
                           "config.json: --device: expected cpu, cuda or cuda:N, got 'meta'"),
    "config fingerprint files a number": (lambda t, n, r: set_config(r, fingerprint={
        "files": 5, "n_train": 1, "n_valid": 1, "n_test": 0}) or ["eval", r], 1,
        "(fingerprint): key 'files': expected an object, got 5"),
    "config fingerprint digest a number": (lambda t, n, r: set_config(r, fingerprint={
        "files": {"mnist.npz": 5}, "n_train": 1, "n_valid": 1, "n_test": 0}) or ["eval", r], 1,
        "(fingerprint of mnist.npz): expected a JSON object, got 5"),
    "config not json": (lambda t, n, r: (r / "config.json").write_text("{epochs: 5") and ["eval", r], 1, "unreadable"),
    "config a list": (lambda t, n, r: (r / "config.json").write_text("[1, 2]") and ["eval", r], 1,
                      "expected a JSON object, got [1, 2] (a list)"),
    "config deeply nested": (lambda t, n, r: (r / "config.json").write_text("[" * 100000 + "]" * 100000) and
                             ["eval", r], 1, "config.json"),
    "checkpoint truncated": (lambda t, n, r: (r / "checkpoint.safetensors").write_bytes(b"\x10\x00") and ["eval", r],
                             1, "not a readable handgrad checkpoint"),
    "checkpoint tensor of the wrong dtype": (
        lambda t, n, r: resave(r, **{"model.0.weight": torch.zeros(50, 784, dtype=torch.float64)}) or ["eval", r], 1,
        "tensor model.0.weight: expected float32 of shape [50, 784], got float64 of shape [50, 784]"),
    "checkpoint tensor of the wrong shape": (
        lambda t, n, r: resave(r, **{"model.0.bias": torch.zeros(49)}) or ["train", "--resume", r, "--epochs", "2"],
        1, "tensor model.0.bias: expected float32 of shape [50]"),
    "checkpoint optimizer state of the wrong dtype": (
        lambda t, n, r: set_config(r, opt="adam") or resave(r, **{"opt.0.exp_avg": torch.zeros(784, 50, dtype=torch.float16)})
        or ["train", "--resume", r], 1, "tensor opt.0.exp_avg: expected float32 of shape [784, 50]"),
    "checkpoint n_params huge": (lambda t, n, r: resave(r, meta=lambda m: {**m, "n_params": 10**9}) or
                                 ["train", "--resume", r, "--epochs", "2"], 1, "key 'n_params': the model has 4"),
    "checkpoint batch past the epoch": (lambda t, n, r: resave(r, meta=lambda m: {**m, "batch": 10**6}) or
                                        ["train", "--resume", r, "--epochs", "2"], 1, "key 'batch': an epoch has"),
    "checkpoint epoch past the run": (lambda t, n, r: resave(r, meta=lambda m: {**m, "epoch": 10**30}) or
                                      ["train", "--resume", r, "--epochs", "2"], 1, "key 'epoch': expected at most"),
    "checkpoint mean NaN": (lambda t, n, r: resave(r, meta=lambda m: {**m, "mean": float("nan")}) or ["eval", r], 1,
                            "key 'mean': expected a finite number"),
    "checkpoint std 0": (lambda t, n, r: resave(r, meta=lambda m: {**m, "std": 0.0}) or ["eval", r], 1,
                         "key 'std': expected a number > 0"),
    "checkpoint early stopping state a string": (
        lambda t, n, r: set_config(r, patience=1) or resave(r, meta=lambda m: {**m, "callbacks": {
            **m["callbacks"], "EarlyStoppingCB": {"best": "x", "bad_epochs": 0}}}) or
        ["train", "--resume", r, "--epochs", "2"], 1,
        "(callbacks.EarlyStoppingCB): key 'best'"),
    "checkpoint early stopping state missing": (
        lambda t, n, r: set_config(r, patience=1) or ["train", "--resume", r, "--epochs", "2"], 1,
        "the state of callback EarlyStoppingCB is missing"),
    "checkpoint early stopping bad epochs negative": (
        lambda t, n, r: set_config(r, patience=1) or resave(r, meta=lambda m: {**m, "callbacks": {
            **m["callbacks"], "EarlyStoppingCB": {"best": 1.0, "bad_epochs": -3}}}) or
        ["train", "--resume", r, "--epochs", "2"], 1, "expected bad_epochs from 0 to 1"),
    "checkpoint unknown callback": (lambda t, n, r: resave(r, meta=lambda m: {**m, "callbacks": {
        **m["callbacks"], "Foo": {}}}) or ["train", "--resume", r, "--epochs", "2"], 1,
        "the state of callback Foo is not one of this run's"),
    "checkpoint history and epoch disagree": (lambda t, n, r: resave(r, meta=lambda m: {**m, "epoch": 0}) or
                                              ["train", "--resume", r, "--epochs", "2"], 1,
                                              "1 epochs of history, but key 'epoch' says 0"),
    "checkpoint sgd momentum buffer missing": (lambda t, n, r: set_config(r, momentum=0.9) or
                                               ["train", "--resume", r, "--epochs", "2"], 1,
                                               "tensor opt.0.momentum_buffer is missing"),
    "checkpoint adam step past the steps": (
        lambda t, n, r: set_config(r, opt="adam") or resave(r, **{"opt.0.step": torch.tensor(1e30)}) or
        ["train", "--resume", r, "--epochs", "2"], 1, "tensor opt.0.step: expected a 0-d count from 0 to"),
    "checkpoint unknown tensor": (lambda t, n, r: resave(r, zzz=torch.zeros(1)) or
                                  ["train", "--resume", r, "--epochs", "2"], 1, "tensor zzz is not the model's"),
    "checkpoint adam state missing": (
        lambda t, n, r: set_config(r, opt="adam") or resave(r, **{"opt.0.exp_avg": torch.zeros(784, 50)}) or
        ["train", "--resume", r, "--epochs", "2"], 1, "tensor opt.0.exp_avg_sq is missing"),
    "checkpoint missing a tensor": (lambda t, n, r: resave(r, drop=("model.2.weight",)) or ["eval", r], 1,
                                    "tensor model.2.weight is missing"),
    "checkpoint without rng state": (lambda t, n, r: resave(r, drop=("rng.cpu",)) or ["eval", r], 1, "rng.cpu"),
    "checkpoint rank rng state cut short": (
        lambda t, n, r: resave(r, **{"rng.cpu.rank1": torch.zeros(7, dtype=torch.uint8)}) or
        ["train", "--resume", r, "--epochs", "2"], 1, "tensor rng.cpu.rank1: expected a random generator's state"),
    "checkpoint rng state of rank 0 by name": (
        lambda t, n, r: resave(r, **{"rng.cpu.rank0": torch.zeros(5056, dtype=torch.uint8)}) or
        ["train", "--resume", r, "--epochs", "2"], 1, "tensor rng.cpu.rank0: expected rng.cpu, rng.cpu.rankR (R >= 1)"),
    "checkpoint rng state of a device as floats": (
        lambda t, n, r: resave(r, **{"rng.cuda.0": torch.zeros(16)}) or ["eval", r], 1,
        "tensor rng.cuda.0: expected a random generator's state (uint8, 1-d), got float32"),
    "checkpoint metadata missing epoch": (
        lambda t, n, r: resave(r, meta=lambda m: {k: v for k, v in m.items() if k != "epoch"}) or ["eval", r], 1,
        "missing key 'epoch'"),
    "checkpoint metadata epoch a string": (
        lambda t, n, r: resave(r, meta=lambda m: {**m, "epoch": "x"}) or ["train", "--resume", r], 1,
        "key 'epoch': expected an integer, got 'x'"),
    "checkpoint metadata n_in negative": (lambda t, n, r: resave(r, meta=lambda m: {**m, "n_in": -1}) or
                                          ["eval", r], 1, "key 'n_in': expected a count >= 0"),
    "resume on changed data": (lambda t, n, r: npz_of(n.parent, "mnist.npz") and ["train", "--resume", r], 1,
                               "not the data this run trained on"),
    "eval on changed data": (lambda t, n, r: npz_of(n.parent, "mnist.npz") and ["eval", r], 1,
                             "not the data this run trained on"),
    "eval when the data moved": (lambda t, n, r: n.rename(t / "moved.npz") and ["eval", r], 1,
                                 "pass --data PATH if it moved"),
    "eval on data of another shape": (lambda t, n, r: ["eval", r, "--data", npz_of(
        t, x_train=np.zeros((20, 28, 27), u8))], 1, "the run's model takes 784 pixels"),
    "eval of a folder that is no run": (lambda t, n, r: (t / "empty").mkdir() or ["eval", t / "empty"], 2,
                                        "not a run folder"),
    "eval without a folder": (lambda t, n, r: ["eval"], 2, "the following arguments are required: DIR"),
    "eval of no folder": (lambda t, n, r: ["eval", t / "nothing"], 2, "no such run folder"),
    # predict
    "predict of no folder": (lambda t, n, r: ["predict", t / "nothing", t / "x.png"], 2, "no such run folder"),
    "predict a text file": (lambda t, n, r: (t / "a.png").write_text("hello") and ["predict", r, t / "a.png"], 2,
                            "not an image"),
    "predict a missing image": (lambda t, n, r: ["predict", r, t / "none.png"], 2, "no such file"),
    "predict a folder": (lambda t, n, r: ["predict", r, t], 2, "is a folder"),
    "predict a decompression bomb": (lambda t, n, r: ["predict", r, png_bomb(t)], 2, "decompression bomb"),
    # lr-find
    "lr-find plot exists": (lambda t, n, r: (t / "p.png").write_bytes(b"x") and
                            ["lr-find", "--data", n, "--dataset", "mnist", "--plot", t / "p.png"], 2, "the file exists"),
    "lr-find run with a training flag": (lambda t, n, r: ["lr-find", "--run", r, "--lr", "0.1"], 2,
                                         "--lr cannot be given here"),
    "lr-find of no run": (lambda t, n, r: ["lr-find", "--run", t / "none"], 2, "no such run folder"),
    "lr-find data typo": (lambda t, n, r: ["lr-find", "--data", t / "typo.npz", "--dataset", "mnist", "--plot",
                                           t / "p.png"], 1, "typo.npz"),
    # data files
    "data command of no path": (lambda t, n, r: ["data", "mnist", "--data", t / "none", "--no-download"], 1,
                                "no such file or folder"),
    "data folder without files": (lambda t, n, r: (t / "e").mkdir() or ["data", "fashion-mnist", "--data", t / "e"],
                                  1, "holds no fashion-mnist files"),
    "gzip bomb": (lambda t, n, r: train(gzip_bomb_idx(t)), 1, "more than gzip data"),
    "pickle running code": (lambda t, n, r: train(evil_pickle(t)), 1, "only numpy arrays are allowed"),
    "pickle of itself": (lambda t, n, r: train(cyclic_pickle(t)), 1, "expected images [N, 784]"),
    "npz that is text": (lambda t, n, r: (t / "t.npz").write_text("x_train") and train(t / "t.npz"), 1,
                         "not a .npz archive"),
    "npz x_valid without y_valid": (lambda t, n, r: train(npz_of(t, x_valid=np.zeros((5, 784), u8))), 1,
                                    "holds x_valid but not y_valid"),
    "npz structured pixels": (lambda t, n, r: train(npz_of(t, x_train=np.zeros((20, 784), dtype=[("a", u8)]))), 1,
                              "expected uint8 pixels"),
    "npz complex pixels": (lambda t, n, r: train(npz_of(t, x_train=np.zeros((20, 784), np.complex64))), 1,
                           "got dtype complex64"),
    "npz bool pixels": (lambda t, n, r: train(npz_of(t, x_train=np.zeros((20, 784), bool))), 1, "got dtype bool"),
    "npz float16 pixels": (lambda t, n, r: train(npz_of(t, x_train=np.zeros((20, 784), np.float16))), 1,
                           "got dtype float16"),
    "npz 16-bit pixels": (lambda t, n, r: train(npz_of(t, x_train=np.full((20, 784), 4000, np.uint16))), 1,
                          "integer pixels must lie in 0..255"),
    "npz NaN pixels": (lambda t, n, r: train(npz_of(t, x_train=np.full((20, 784), np.nan, np.float32))), 1,
                       "image 0 holds NaN or infinite pixels"),
    "npz label 10": (lambda t, n, r: train(npz_of(t, y_train=np.full(20, 10))), 1,
                     "(y_train): labels must be class indices 0..9, got values from 10 to 10"),
    "npz float labels": (lambda t, n, r: train(npz_of(t, y_train=np.zeros(20))), 1, "expected integer labels"),
    "npz of one image": (lambda t, n, r: train(npz_of(t, x_train=np.zeros((1, 784), u8), y_train=np.zeros(1, int))),
                         1, "at least 2 are needed"),
    "npz of no image": (lambda t, n, r: train(npz_of(t, x_train=np.zeros((0, 784), u8), y_train=np.zeros(0, int))),
                        1, "holds no images"),
    "npz test images of another shape": (lambda t, n, r: train(npz_of(
        t, x_test=np.zeros((5, 28, 27), u8), y_test=np.zeros(5, int))), 1, "images of shape [28, 27], but"),
    "idx with a bad magic": (lambda t, n, r: train(idx_folder(t, magic=b"\x12\x34\x56\x78")), 1, "not an IDX file"),
    "idx cut short": (lambda t, n, r: train(idx_folder(t, cut=100)), 1, "IDX header says shape"),
    "cnn on images that are not square": (lambda t, n, r: train(npz_of(t, x_train=np.zeros((20, 30), u8)),
                                                                "--model", "cnn"), 1, "takes square images"),
    # check, trace, derive, bench
    "check of no file": (lambda t, n, r: ["check", f"{t / 'none.py'}:Layer", "--input-shape", "4,3"], 2, "none.py"),
    "check of a huge shape": (lambda t, n, r: ["check", "handgrad.layers:Tanh", "--input-shape", "100000,100000"], 2,
                              "elements"),
    "check with bad JSON args": (lambda t, n, r: ["check", "handgrad.layers:Tanh", "--args", "{", "--input-shape",
                                                  "3,4"], 2, "--args must be a JSON object"),
    "check without an input shape": (lambda t, n, r: ["check", "handgrad.layers:Tanh"], 2, "--input-shape is needed"),
    "check of no class": (lambda t, n, r: ["check", "handgrad.layers:Nothing", "--input-shape", "3,4"], 2,
                          "Nothing"),
    "check of a negative shape": (lambda t, n, r: ["check", "handgrad.layers:Tanh", "--input-shape", "-8,4"], 2,
                                  "--input-shape '-8,4': SHAPE must be positive sizes"),
    "check of a shape in other digits": (lambda t, n, r: ["check", "handgrad.layers:Tanh", "--input-shape",
                                                          "\uff18,4"], 2, "SHAPE must be positive sizes"),
    "trace of a negative shape": (lambda t, n, r: ["trace", "handgrad.layers:Tanh", "--input-shape", "-3,4"], 2,
                                  "-3,4"),
    "check repeats zero": (lambda t, n, r: ["check", "--repeats", "0"], 2, "--repeats must be from 1 to 1000"),
    "trace bs zero": (lambda t, n, r: ["trace", "--bs", "0"], 2, "--bs must be a positive integer"),
    "trace target without a shape": (lambda t, n, r: ["trace", "handgrad.layers:Tanh"], 2, "--input-shape is needed"),
    "graph into a .jpg": (lambda t, n, r: ["graph", "--out", t / "g.jpg"], 2, "g.jpg: expected a .svg or .png file"),
    "graph format against the suffix": (lambda t, n, r: ["graph", "--out", t / "g.svg", "--format", "png"], 2,
                                        "g.svg does not end in .png"),
    "graph into no folder": (lambda t, n, r: ["graph", "--out", t / "none" / "g.svg"], 2, "no folder"),
    "graph of no file": (lambda t, n, r: ["graph", f"{t / 'none.py'}:Model", "--input-shape", "4,3"], 2,
                         "none.py: no such file"),
    "graph target without a shape": (lambda t, n, r: ["graph", "handgrad.layers:Tanh"], 2, "--input-shape is needed"),
    "graph of a model that rejects its input": (lambda t, n, r: [
        "graph", "handgrad.layers:Linear", "--args", '{"in_features": 4, "out_features": 2}', "--input-shape", "3,5"],
        2, "Linear failed on an input of shape [3, 5]"),
    "graph bs zero": (lambda t, n, r: ["graph", "--bs", "0"], 2, "--bs must be a positive integer"),
    "derive unknown": (lambda t, n, r: ["derive", "bogus"], 2, "unknown activation 'bogus'"),
    "bench unknown config": (lambda t, n, r: ["bench", "--configs", "bogus"], 2, "unknown bench config 'bogus'"),
    "bench json into no folder": (lambda t, n, r: ["bench", "--json", t / "none" / "b.json"], 2, "no folder"),
    "stats into no folder": (lambda t, n, r: train(n, "--stats", t / "none" / "s.png"), 2, "no folder"),
    "npz zip bomb": (lambda t, n, r: np.savez_compressed(t / "z.npz", x_train=np.zeros((20000, 784), u8),
                                                         y_train=np.zeros(20000, int)) or train(t / "z.npz"), 1,
                     "a decompression bomb?"),
    "predict a float image out of range": (lambda t, n, r: __import__("PIL.Image").Image.fromarray(
        np.full((28, 28), 1000.0, np.float32), mode="F").save(t / "big.tiff") or ["predict", r, t / "big.tiff"], 2,
        "big.tiff: float pixels from 1000 to 1000"),
    "bench rounds zero": (lambda t, n, r: ["bench", "--rounds", "0"], 2, "--rounds must be at least 1"),
    # a model class of one's own (train TARGET --args JSON), recorded in the run folder
    "train a model class of no file": (lambda t, n, r: train(n, f"{t / 'none.py'}:Net"), 2, "none.py: no such file"),
    "train a model class of the wrong output shape": (
        lambda t, n, r: train(n, user_class(t, "Five")), 2,
        "Five must map a batch of images [N, 784] to [N, 10] logits (one per class); on a batch [2, 784] it "
        "returned float32 of shape [2, 5]"),
    "train a model class with --hidden": (lambda t, n, r: train(n, user_class(t, "Seq"), "--hidden", "30"), 2,
                                          "--hidden is for the built-in models"),
    "train a model class with the torch twin": (lambda t, n, r: train(n, user_class(t, "Seq"), "--torch-twin"), 2,
                                                "--torch-twin needs a built-in model"),
    "train a model class with arguments it does not take": (
        lambda t, n, r: train(n, user_class(t, "Seq"), "--args", '{"depth": 3}'), 2, "cannot construct Seq"),
    "train args that are not a JSON object": (lambda t, n, r: train(n, "--args", "[1]"), 2,
                                              "argument --args: must be a JSON object"),
    "train args without a model class": (lambda t, n, r: train(n, "--args", "{}"), 2,
                                         "--args are the constructor arguments of a model class of your own"),
    "resume with a model class": (lambda t, n, r: ["train", user_class(t, "Seq"), "--resume", r], 2,
                                  "cannot be given with --resume"),
    "eval of a run whose model file is gone": (
        lambda t, n, r: set_config(r, model=f"{t / 'gone.py'}:Seq") or ["eval", r], 1, "gone.py: no such file"),
    "predict with a model class that no longer fits the checkpoint": (
        lambda t, n, r: set_config(r, model=user_class(t, "Seq"), model_args={"width": 30}) or
        ["predict", r, gray_png(t)], 1,
        "tensor model.0.weight: expected float32 of shape [30, 784], got float32 of shape [50, 784]"),
    "resume with a model class whose output changed": (
        lambda t, n, r: set_config(r, model=user_class(t, "Five")) or ["train", "--resume", r, "--epochs", "2"], 1,
        "must map a batch of images [N, 784] to [N, 10] logits"),
    "config model_args a list": (lambda t, n, r: set_config(r, model_args=[1]) or ["eval", r], 1,
                                 "key 'model_args': expected an object or null, got [1] (a list)"),
    "config model_args for the mlp": (lambda t, n, r: set_config(r, model_args={"w": 1}) or ["eval", r], 1,
                                      "--args are the constructor arguments"),
    # predict --top-k, lr-find --start-lr / --end-lr
    "predict top-k zero": (lambda t, n, r: ["predict", r, gray_png(t), "--top-k", "0"], 2,
                           "--top-k must be at least 1, got 0"),
    "predict top-k past the classes": (lambda t, n, r: ["predict", r, gray_png(t), "--top-k", "11"], 2,
                                       "--top-k must be from 1 to 10 (the run's classes), got 11"),
    "lr-find start above end": (lambda t, n, r: lr_find_cmd(t, n, "--start-lr", "1", "--end-lr", "0.1"), 2,
                                "--start-lr must be at most a tenth of --end-lr"),
    "lr-find range under a decade": (lambda t, n, r: lr_find_cmd(t, n, "--start-lr", "1e-5", "--end-lr", "1.0000001e-5"),
                                     2, "--start-lr must be at most a tenth of --end-lr"),
    "lr-find start subnormal": (lambda t, n, r: lr_find_cmd(t, n, "--start-lr", "5e-324"), 2,
                                "--start-lr must be a number from 1e-12 to 1e6 (as --lr), got 5e-324"),
    "lr-find start zero": (lambda t, n, r: lr_find_cmd(t, n, "--start-lr", "0"), 2,
                           "--start-lr must be a number from 1e-12 to 1e6"),
    "lr-find end infinite": (lambda t, n, r: lr_find_cmd(t, n, "--end-lr", "inf"), 2,
                             "--end-lr must be a number from 1e-12 to 1e6 (as --lr), got inf"),
    "lr-find end past 1e6": (lambda t, n, r: lr_find_cmd(t, n, "--end-lr", "1e7"), 2, "--end-lr must be a number from 1e-12"),
    "lr-find start nan": (lambda t, n, r: lr_find_cmd(t, n, "--start-lr", "nan"), 2, "got nan"),
    "lr-find run with a model class": (lambda t, n, r: ["lr-find", "--run", r, user_class(t, "Seq")], 2,
                                       "cannot be given here: with --run"),
    # derive --expr FORMULA, derive TARGET
    "derive expression of another symbol": (lambda t, n, r: ["derive", "--expr", "x*y"], 2, "'y' is unknown"),
    "derive expression that is no formula": (lambda t, n, r: ["derive", "--expr", "x +"], 2, "not a formula"),
    "derive expression reaching into Python": (lambda t, n, r: ["derive", "--expr", "x.__class__.__mro__"], 2,
                                               "is not allowed (numbers, x, pi, E"),
    "derive expression running code": (lambda t, n, r: ["derive", "--expr", '__import__("os").system("touch pwned")'],
                                       2, "unknown function"),
    "derive expression of a string": (lambda t, n, r: ["derive", "--expr", "'x'"], 2, "is not a finite number"),
    "derive expression of an unknown function": (lambda t, n, r: ["derive", "--expr", "gamma(x)"], 2,
                                                 "unknown function 'gamma'"),
    "derive expression with a huge power": (lambda t, n, r: ["derive", "--expr", "x*9**9**9"], 2,
                                            "a power of numbers takes a number as its base"),
    "derive expression nowhere finite": (lambda t, n, r: ["derive", "--expr", "log(-x-100)"], 2,
                                         "finite at any of 2001 points"),
    "derive expression too long": (lambda t, n, r: ["derive", "--expr", "x+" * 600 + "x"], 2, "at most 1000"),
    "derive expression of a look-alike x": (lambda t, n, r: ["derive", "--expr", "\uff58**2"], 2,
                                            "only ASCII characters, got"),
    "derive expression nested deeply": (lambda t, n, r: ["derive", "--expr", "exp(" * 150 + "x" + ")" * 150], 2,
                                        "nested too deeply (at most 60"),
    "derive expression of a max of many": (lambda t, n, r: ["derive", "--expr", "max(" + ",".join(["x"] * 30) + ")"],
                                           2, "max() takes at most 4 arguments here, got 30"),
    "derive expression calling Heaviside": (lambda t, n, r: ["derive", "--expr", "Heaviside(x)"], 2,
                                            "unknown function 'Heaviside'"),
    "graph a target with a built-in model's flag": (lambda t, n, r: ["graph", user_class(t, "Seq"), "--model", "cnn"],
                                                    2, "--model is for the built-in models: TARGET"),
    "train a model that calls sys.exit": (lambda t, n, r: ["train", user_class(t, "Quits"), "--data", n], 2,
                                          "cannot construct Quits(**{}): SystemExit: 0"),
    "train args nested thousands deep": (lambda t, n, r: ["train", user_class(t, "Total"), "--args",
                                                          '{"e": ' + "[" * 20000 + "]" * 20000 + "}"], 2,
                                         "nested at most 32 deep, got 20001 levels"),
    "derive a name and an expression": (lambda t, n, r: ["derive", "gelu", "--expr", "x"], 2, "not both"),
    "derive args without a layer": (lambda t, n, r: ["derive", "--args", "{}"], 2, "--args are TARGET's"),
    "derive a layer that is not elementwise": (lambda t, n, r: ["derive", user_class(t, "Total")], 2,
                                               "derive checks elementwise layers"),
    "derive a layer of no file": (lambda t, n, r: ["derive", f"{t / 'none.py'}:Swish", "--expr", "x"], 2,
                                  "none.py: no such file"),
}


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A tiny finished run (1 epoch on 600 images) to copy into each test."""
    from handgrad.train.config import TrainConfig
    from handgrad.train.run import run

    folder = tmp_path_factory.mktemp("trained")
    gen = np.random.default_rng(1)
    np.savez(folder / "mnist.npz", x_train=gen.integers(0, 256, (600, 28, 28), dtype=np.uint8),
             y_train=gen.integers(0, 10, 600))
    run(TrainConfig(dataset="mnist", data=str(folder / "mnist.npz"), epochs=1, download=False,
                    out=str(folder / "r")), log=lambda s: None, progress=False)
    return folder


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line_with_exit_1_or_2_and_touches_nothing_else(name, tmp_path, trained_run, capsys,
                                                                         monkeypatch):
    import json
    import shutil

    make, code, says = CASES[name]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HANDGRAD_DATA", str(tmp_path / "no-data-here"))  # nothing found by search
    data = tmp_path / "data-of-run"
    shutil.copytree(trained_run, data, ignore=shutil.ignore_patterns("r"))
    shutil.copytree(trained_run / "r", tmp_path / "r")
    set_config(tmp_path / "r", data=str(data / "mnist.npz"))  # the run's data is this test's copy
    assert json.loads((tmp_path / "r" / "config.json").read_text())["fingerprint"] is not None
    argv = make(tmp_path, data / "mnist.npz", tmp_path / "r")
    before = snapshot(tmp_path, skip=tmp_path / "r")
    got, err = run_cli(capsys, *argv)
    lines = err.strip().splitlines()
    assert got in (1, 2) and (code is None or got == code), (got, err)
    assert len(lines) == 1 and lines[0].startswith("handgrad: error: ") and "Traceback" not in err, err
    assert says is None or says in lines[0], lines[0]
    assert snapshot(tmp_path, skip=tmp_path / "r") == before
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "sub" / "pwned").exists()


def test_the_table_holds_sixty_inputs_across_every_subcommand():
    import inspect

    assert len(CASES) >= 60
    sources = [inspect.getsource(make) for make, _, _ in CASES.values()]
    for sub in ("train(", '"lr-find"', '"eval"', '"predict"', '"check"', '"trace"', '"graph"', '"derive"', '"bench"',
                '"data"',
                '"--resume"'):
        assert any(sub in src for src in sources), sub


@pytest.mark.parametrize("fault", ["disk full", "read-only"])
def test_a_full_disk_or_read_only_folder_is_one_line_and_the_last_checkpoint_survives(fault, tmp_path, npz, capsys,
                                                                                       monkeypatch):
    import errno

    import handgrad.train.runfolder as rf

    out = tmp_path / "r"
    assert run_cli(capsys, *train(npz, "--out", out))[0] == 0
    before = (out / "checkpoint.safetensors").read_bytes()
    if fault == "disk full":
        def full(tensors, filename, metadata=None):
            with open(filename, "wb") as f:
                f.write(b"half")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(rf, "save_file", full)
        says = f"{out / 'checkpoint.safetensors'}: cannot write it (No space left on device)"
    else:
        real_mkstemp = rf.tempfile.mkstemp

        def read_only(*a, **k):
            if k.get("dir") == out:
                raise OSError(errno.EROFS, os.strerror(errno.EROFS))
            return real_mkstemp(*a, **k)

        monkeypatch.setattr(rf.tempfile, "mkstemp", read_only)
        says = "cannot write it (Read-only file system)"
    code, err = run_cli(capsys, "train", "--resume", out, "--epochs", "2", "--no-progress")
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and says in lines[0] and "Traceback" not in err, err
    assert (out / "checkpoint.safetensors").read_bytes() == before
    assert not list(out.glob(".*.part"))


def test_an_unforeseen_exception_is_one_line_naming_its_traceback_file(tmp_path, capsys, monkeypatch):
    def boom(args):
        raise KeyError("surprise")

    monkeypatch.setattr(cli, "_eval", boom)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    code, err = run_cli(capsys, "eval", tmp_path)
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and "KeyError: 'surprise'" in lines[0], err
    logs = list(tmp_path.glob("handgrad-error-*.log"))
    assert len(logs) == 1 and str(logs[0]) in lines[0] and "Traceback" in logs[0].read_text()
    monkeypatch.setenv("HANDGRAD_DEBUG", "1")
    with pytest.raises(KeyError):
        cli.main(["eval", str(tmp_path)])


def test_a_bad_world_size_does_not_crash_the_error_handler(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "abc")
    code, err = run_cli(capsys, "eval", tmp_path / "nothing")
    assert code == 2 and err.strip().splitlines() == [f"handgrad: error: {tmp_path / 'nothing'}: no such run folder"]


def test_training_into_a_locked_run_folder_names_the_holder(tmp_path, npz, capsys):
    assert run_cli(capsys, *train(npz, "--out", tmp_path / "r"))[0] == 0
    holder = RunFolder(tmp_path / "r")
    holder.lock()
    try:
        code, err = run_cli(capsys, "train", "--resume", tmp_path / "r", "--no-progress")
    finally:
        holder.close()
    assert code == 2 and f"in use by another handgrad process (PID {os.getpid()})" in err


def test_resume_extends_a_run_with_epochs_and_refuses_flags_that_may_not_change(tmp_path, npz, capsys):
    """`--resume DIR --epochs 8` used to ignore --epochs (a finished run could not be extended), and every other
    flag silently."""
    out = tmp_path / "r"
    assert run_cli(capsys, *train(npz, "--out", out))[0] == 0
    code, err = run_cli(capsys, "train", "--resume", out, "--lr", "0.5")
    assert code == 2 and err.strip().splitlines() == [
        "handgrad: error: --lr cannot change when resuming: --resume continues the run as its config.json says "
        "(flags that may change: --data, --device, --dist-timeout, --epochs, --nproc, --save-every, --no-progress)"]
    assert run_cli(capsys, "train", "--resume", out, "--epochs", "2", "--no-progress")[0] == 0
    assert [m["epoch"] for m in RunFolder(out).read_metrics()] == [1, 2]
    assert '"epochs": 2' in (out / "config.json").read_text()
    # a schedule laid out over the run's epochs cannot be stretched
    sched = tmp_path / "s"
    assert run_cli(capsys, *train(npz, "--out", sched, "--schedule", "cosine"))[0] == 0
    code, err = run_cli(capsys, "train", "--resume", sched, "--epochs", "3")
    assert code == 2 and "cosine schedule was laid out over 1 epochs" in err


def test_an_unforeseen_exception_in_a_run_leaves_its_traceback_in_the_run_folder(tmp_path, npz, capsys, monkeypatch):
    import sys

    run_module = sys.modules["handgrad.train.run"]
    out = tmp_path / "r"
    assert run_cli(capsys, *train(npz, "--out", out))[0] == 0

    def boom(*a, **k):
        raise KeyError("surprise")

    monkeypatch.setattr(run_module, "check_optimizer_tensors", boom)
    code, err = run_cli(capsys, "train", "--resume", out, "--epochs", "2", "--no-progress")
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and f"traceback in {out / 'error.log'}" in lines[0], err
    assert "KeyError: 'surprise'" in (out / "error.log").read_text()


@pytest.mark.parametrize("name", ["lock", "error.log"])
def test_a_symbolic_link_planted_in_a_run_folder_is_never_written_through(name, tmp_path, npz, capsys, monkeypatch):
    import sys

    out = tmp_path / "r"
    assert run_cli(capsys, *train(npz, "--out", out))[0] == 0
    victim = tmp_path / "victim.txt"
    victim.write_text("important")
    if name == "lock":
        (out / ".handgrad.lock").unlink()
        (out / ".handgrad.lock").symlink_to(victim)
        code, err = run_cli(capsys, "train", "--resume", out, "--epochs", "2", "--no-progress")
        assert code == 2 and "cannot open its lock file .handgrad.lock (it is a symbolic link)" in err
    else:
        (out / "error.log").symlink_to(victim)

        def boom(*a, **k):
            raise KeyError("surprise")

        monkeypatch.setattr(sys.modules["handgrad.train.run"], "check_optimizer_tensors", boom)
        code, err = run_cli(capsys, "train", "--resume", out, "--epochs", "2", "--no-progress")
        assert code == 1 and "KeyError: 'surprise'" in err and "handgrad-error-" in err  # a temporary file instead
    assert victim.read_text() == "important"


def test_a_failed_resume_leaves_config_json_as_it_was(tmp_path, npz, capsys):
    """`--resume DIR --data /nope.npz` failed but rewrote config.json, and the run lost its data."""
    out = tmp_path / "r"
    assert run_cli(capsys, *train(npz, "--out", out))[0] == 0
    before = (out / "config.json").read_bytes()
    assert run_cli(capsys, "train", "--resume", out, "--data", tmp_path / "nope.npz", "--epochs", "2")[0] == 1
    other = tmp_path / "small.npz"
    np.savez(other, x_train=np.zeros((20, 10, 10), np.uint8), y_train=np.zeros(20, int))
    assert run_cli(capsys, "train", "--resume", out, "--data", other, "--epochs", "2")[0] == 1
    assert (out / "config.json").read_bytes() == before
    assert run_cli(capsys, "eval", out)[0] == 0


def test_a_resumed_run_writes_no_statistics_file(tmp_path, npz, capsys):
    """config.json's stats named a file outside the run folder, which resume overwrote."""
    out, stats = tmp_path / "r", tmp_path / "st.png"
    assert run_cli(capsys, *train(npz, "--out", out, "--stats", stats))[0] == 0
    stats.write_text("the user's file now")
    assert run_cli(capsys, "train", "--resume", out, "--epochs", "2", "--no-progress")[0] == 0
    assert stats.read_text() == "the user's file now"


def test_a_failing_replacement_run_does_not_claim_a_checkpoint_it_has_not(tmp_path, npz, capsys):
    out = tmp_path / "r"
    assert run_cli(capsys, *train(npz, "--out", out))[0] == 0
    code, err = run_cli(capsys, *train(npz, "--out", out, "--overwrite", "--lr", "1e6", "--no-check", "--no-fused"))
    assert code == 1 and "non-finite" in err and "no checkpoint of this run was saved yet" in err, err
    assert "the last good checkpoint is kept" not in err


@pytest.mark.parametrize("env, says", [({"WORLD_SIZE": "2"}, "WORLD_SIZE is 2 but RANK is not set"),
                                       ({"WORLD_SIZE": "2", "RANK": "5"}, "RANK must be from 0 to WORLD_SIZE - 1"),
                                       ({"WORLD_SIZE": "2", "RANK": "x"}, "RANK must be an integer, got 'x'")])
def test_a_bad_distributed_environment_is_one_line(env, says, tmp_path, npz, capsys, monkeypatch):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    code, err = run_cli(capsys, *train(npz))
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and says in lines[0], err


def test_version_and_the_batch_size_spelling():
    import subprocess
    import sys

    import handgrad

    out = subprocess.run([sys.executable, "-m", "handgrad", "--version"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == f"handgrad {handgrad.__version__} (torch {torch.__version__})"
    args = cli._parser().parse_args(["train", "--batch-size", "32"])
    assert args.bs == 32 and cli._parser().parse_args(["train", "--bs", "32"]).bs == 32
