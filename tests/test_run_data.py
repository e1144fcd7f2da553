"""A run keeps the data it trained on: the resolved data set, its absolute path and a fingerprint; eval, resume
and lr-find use them from any folder and refuse other data unless it is named."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from handgrad import cli
from handgrad.data import write_idx
from handgrad.data.datasets import FIRST_LABELS, SYSTEM_DIR
from handgrad.errors import DataError
from handgrad.train import TrainConfig, run
from handgrad.train.evaluate import evaluate_run, lr_find, predict_images
from handgrad.train.runfolder import RunFolder


def blobs(n, seed, first=None, shape=(28, 28)):
    """n separable images (uint8) and labels; the first labels as given."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n)
    if first is not None:
        y[:len(first)] = first
    centers = rng.normal(0, 60, (10, int(np.prod(shape))))
    x = np.clip(centers[y] + rng.normal(0, 40, (n, centers.shape[1])) + 128, 0, 255).astype(np.uint8)
    return x.reshape(n, *shape), y


def quiet(*a):
    return None


def fit(data, out, **kw):
    return run(TrainConfig(data=str(data), epochs=1, download=False, out=str(out), **kw), log=quiet, progress=False)


def test_config_keeps_the_resolved_name_absolute_path_and_fingerprint(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    x, y = blobs(300, 0)
    np.savez(tmp_path / "mine.npz", x_train=x, y_train=y)
    fit("mine.npz", "r", dataset="mnist")  # relative, as typed
    cfg = json.loads((tmp_path / "r" / "config.json").read_text())
    assert cfg["dataset"] == "mnist" and cfg["data"] == str(tmp_path / "mine.npz")
    fp = cfg["fingerprint"]
    assert fp["n_train"] == 250 and fp["n_valid"] == 50 and fp["n_test"] == 0
    assert fp["files"]["mine.npz"]["bytes"] == (tmp_path / "mine.npz").stat().st_size
    assert len(fp["files"]["mine.npz"]["sha256"]) == 64


def test_eval_from_another_folder_uses_the_runs_data_not_the_local_one(tmp_path, monkeypatch):
    """A run evaluated from a folder whose ./data holds other data used to be scored on that data."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b" / "data").mkdir(parents=True)
    x, y = blobs(600, 0)
    np.savez(tmp_path / "a" / "mnist.npz", x_train=x, y_train=y, x_test=x[:100], y_test=y[:100])
    xo, yo = blobs(600, 99)  # other images, other labels
    np.savez(tmp_path / "b" / "data" / "mnist.npz", x_train=xo, y_train=yo, x_test=xo[:100], y_test=yo[:100])
    monkeypatch.chdir(tmp_path / "a")
    fit("mnist.npz", tmp_path / "run", dataset="auto")
    here = evaluate_run(tmp_path / "run", log=quiet)
    monkeypatch.chdir(tmp_path / "b")  # ./data/mnist.npz here is other data; the relative path means nothing
    there = evaluate_run(tmp_path / "run", log=quiet)
    assert (here.accuracy, here.loss, here.n) == (there.accuracy, there.loss, there.n)
    assert here.accuracy > 0.5
    other = evaluate_run(tmp_path / "run", log=quiet, data_path="data/mnist.npz")  # named: allowed
    assert other.accuracy < 0.5


def test_resume_refuses_changed_data_and_accepts_data_named_with_data(tmp_path, capsys):
    x, y = blobs(300, 0)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=y)
    fit(tmp_path / "d.npz", tmp_path / "r", dataset="mnist")
    x[0, 0, 0] ^= 1  # one pixel
    np.savez(tmp_path / "d.npz", x_train=x, y_train=y)
    code = cli.main(["train", "--resume", str(tmp_path / "r"), "--epochs", "2", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1 and "not the data this run trained on (d.npz has sha256" in err
    np.savez(tmp_path / "e.npz", x_train=x, y_train=y)
    code = cli.main(["train", "--resume", str(tmp_path / "r"), "--epochs", "2", "--no-progress", "--data",
                     str(tmp_path / "e.npz")])
    out = capsys.readouterr().out
    assert code == 0 and "differs from the data this run trained on" in out
    cfg = RunFolder(tmp_path / "r").read_config()
    assert cfg.data == str(tmp_path / "e.npz") and cfg.epochs == 2 and "e.npz" in cfg.fingerprint["files"]


def fashion_like_idx(folder, first):
    folder.mkdir()
    x, y = blobs(120, 0, first=first)
    write_idx(folder / "train-images-idx3-ubyte.gz", x)
    write_idx(folder / "train-labels-idx1-ubyte.gz", y.astype(np.uint8))
    write_idx(folder / "t10k-images-idx3-ubyte.gz", x[:20])
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", y[:20].astype(np.uint8))
    return folder


@pytest.mark.parametrize("name", ["fashion-mnist", "mnist"])
def test_auto_with_a_path_tells_the_data_sets_apart(tmp_path, name):
    """--data PATH --dataset auto labelled Fashion-MNIST's files "mnist"."""
    folder = fashion_like_idx(tmp_path / "files", FIRST_LABELS[name])
    result = fit(folder, tmp_path / "r", dataset="auto")
    assert result.dataset == name
    assert RunFolder(tmp_path / "r").read_config().dataset == name
    meta = RunFolder(tmp_path / "r").load_checkpoint()[1]
    classes = {"fashion-mnist": "T-shirt/top", "mnist": "0"}[name]
    assert meta["dataset"] == name and meta["classes"][0] == classes


@pytest.mark.skipif(not (SYSTEM_DIR / "fashion-mnist").is_dir(), reason="dataset-fashion-mnist not installed")
def test_the_real_fashion_mnist_given_by_path_is_called_so():
    from handgrad.train.run import resolve_dataset

    cfg = TrainConfig(dataset="auto", data=str(SYSTEM_DIR / "fashion-mnist"), download=False)
    assert resolve_dataset(cfg, quiet).name == "fashion-mnist"


def test_lr_find_on_a_run_uses_its_data_holds_its_lock_and_saves_the_plot_in_it(tmp_path, monkeypatch):
    x, y = blobs(400, 0)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=y)
    fit(tmp_path / "d.npz", tmp_path / "r", dataset="mnist")
    monkeypatch.chdir(tmp_path.parent)
    held = []
    original = RunFolder.lock

    def spy(self):
        original(self)
        held.append(self.path)

    monkeypatch.setattr(RunFolder, "lock", spy)
    lr = lr_find(TrainConfig(), None, log=quiet, run=tmp_path / "r")
    assert lr > 0 and (tmp_path / "r" / "lr_find.png").is_file() and held == [tmp_path / "r"]
    x[0, 0, 0] ^= 1
    np.savez(tmp_path / "d.npz", x_train=x, y_train=y)
    with pytest.raises(DataError, match="not the data this run trained on"):
        lr_find(TrainConfig(), None, log=quiet, run=tmp_path / "r")


def test_lr_find_refuses_a_locked_run(tmp_path):
    x, y = blobs(300, 0)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=y)
    fit(tmp_path / "d.npz", tmp_path / "r", dataset="mnist")
    holder = RunFolder(tmp_path / "r")
    holder.lock()
    try:
        with pytest.raises(ValueError, match="in use by another handgrad process"):
            lr_find(TrainConfig(), None, log=quiet, run=tmp_path / "r")
    finally:
        holder.close()


def test_three_images_train_on_two_and_validate_on_one(tmp_path):
    """Fewer than 6 training images used to leave 0 for training (x[:-0]) and exit 0."""
    x, y = blobs(3, 0)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=y)
    result = run(TrainConfig(dataset="mnist", data=str(tmp_path / "d.npz"), epochs=1, download=False, bs=2,
                             check=False), log=quiet, progress=False)
    assert result.config.fingerprint["n_train"] == 2 and result.config.fingerprint["n_valid"] == 1
    assert np.isfinite(result.history[-1].train_loss)


@pytest.fixture
def image_run(tmp_path):
    x, y = blobs(400, 0)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=y)
    fit(tmp_path / "d.npz", tmp_path / "r", dataset="mnist")
    return tmp_path / "r", x


def test_predict_reads_16_bit_and_float_images_as_their_8_bit_twins(image_run, tmp_path):
    """16-bit images used to saturate, float images in [0, 1] to turn ~0."""
    from PIL import Image

    run_dir, x = image_run
    img = x[0].astype(np.uint8)
    Image.fromarray(img, mode="L").save(tmp_path / "8.png")
    Image.fromarray(img.astype(np.uint16) * 257).save(tmp_path / "16.png")  # 16-bit PNG: 255 -> 65535
    Image.fromarray(img.astype(np.float32) / 255, mode="F").save(tmp_path / "f.tiff")
    Image.fromarray(img.astype(np.float32), mode="F").save(tmp_path / "f255.tiff")
    with Image.open(tmp_path / "16.png") as im:
        assert im.mode.startswith("I")  # the file really is 16-bit
    results = predict_images(run_dir, [str(tmp_path / n) for n in ("8.png", "16.png", "f.tiff", "f255.tiff")])
    probs = [[p for _, p in top] for _, top in results]
    names = [[c for c, _ in top] for _, top in results]
    assert names[1:] == [names[0]] * 3
    for p in probs[1:]:
        assert np.allclose(p, probs[0], atol=1e-5), (p, probs[0])


def test_predict_refuses_float_images_outside_any_gray_range(image_run, tmp_path):
    from PIL import Image

    from handgrad.errors import UsageError

    run_dir, _ = image_run
    Image.fromarray(np.full((28, 28), 1000.0, np.float32), mode="F").save(tmp_path / "big.tiff")
    with pytest.raises(UsageError, match=r"float pixels from 1000 to 1000; expected gray levels"):
        predict_images(run_dir, [str(tmp_path / "big.tiff")])


def test_config_of_an_older_version_without_fingerprint_still_evaluates(tmp_path, monkeypatch):
    x, y = blobs(300, 0)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=y, x_test=x[:50], y_test=y[:50])
    fit(tmp_path / "d.npz", tmp_path / "r", dataset="mnist")
    cfg = json.loads((tmp_path / "r" / "config.json").read_text())
    del cfg["fingerprint"]
    (tmp_path / "r" / "config.json").write_text(json.dumps(cfg))
    assert evaluate_run(tmp_path / "r", log=quiet).n == 50


def test_a_checkpoint_of_the_wrong_dtype_is_refused_not_cast(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    x, y = blobs(300, 0)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=y)
    fit(tmp_path / "d.npz", tmp_path / "r", dataset="mnist")
    path = tmp_path / "r" / "checkpoint.safetensors"
    with safe_open(path, "pt") as f:
        meta = f.metadata()
    tensors = load_file(path)
    tensors["model.0.weight"] = tensors["model.0.weight"].to(torch.bfloat16)
    save_file(tensors, path, metadata=meta)
    with pytest.raises(DataError, match="tensor model.0.weight: expected float32 of shape .* got bfloat16"):
        evaluate_run(tmp_path / "r", log=quiet)


def test_stale_part_files_are_removed_once_the_lock_is_held(tmp_path):
    x, y = blobs(300, 0)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=y)
    fit(tmp_path / "d.npz", tmp_path / "r", dataset="mnist")
    for i in range(3):  # what kills during saves leave
        (tmp_path / "r" / f".checkpoint.safetensors.{i}.part").write_bytes(b"x" * 100)
    (tmp_path / "r" / "notes.part").write_text("the user's")  # not handgrad's pattern: kept
    assert cli.main(["train", "--resume", str(tmp_path / "r"), "--epochs", "2", "--no-progress"]) == 0
    assert not list((tmp_path / "r").glob(".*.part")) and (tmp_path / "r" / "notes.part").is_file()


def test_pictures_are_written_readable_by_others(tmp_path):
    import os
    import stat

    x, y = blobs(300, 0)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=y)
    old = os.umask(0o022)
    try:
        fit(tmp_path / "d.npz", tmp_path / "r", dataset="mnist", stats=str(tmp_path / "stats.png"))
    finally:
        os.umask(old)
    for p in [tmp_path / "stats.png", *Path(tmp_path / "r").glob("*.png")]:
        assert stat.S_IMODE(p.stat().st_mode) == 0o644, p


def test_renames_are_made_durable_by_syncing_the_folder(tmp_path, monkeypatch):
    import os

    import handgrad.train.runfolder as rf

    synced = []
    real = os.fsync

    def spy(fd):
        synced.append(os.path.isdir(f"/proc/self/fd/{fd}") if Path("/proc/self/fd").is_dir() else True)
        return real(fd)

    monkeypatch.setattr(rf.os, "fsync", spy)
    rf.atomic_write(tmp_path / "a.txt", lambda tmp: Path(tmp).write_text("x"))
    assert synced == [False, True]  # the file, then its folder


def test_blank_images_pass_the_first_batch_gradient_check(tmp_path):
    """All-black images put exactly 0 into the ReLUs: the check used to fail ('max rel err 1.0') because the
    forward's autograd took the gradient at 0 to be 1 while the hand-written one takes 0."""
    np.savez(tmp_path / "d.npz", x_train=np.zeros((60, 28, 28), np.uint8), y_train=np.arange(60) % 10)
    result = run(TrainConfig(dataset="mnist", data=str(tmp_path / "d.npz"), epochs=1, download=False, hidden=[8]),
                 log=quiet, progress=False)
    assert result.history


@pytest.mark.parametrize("name, other", [("fashion-mnist", "mnist"), ("mnist", "fashion-mnist")])
def test_handgrad_data_holding_one_set_is_not_found_as_the_other(tmp_path, monkeypatch, name, other):
    """$HANDGRAD_DATA pointing at Fashion-MNIST's IDX files (named as MNIST's) was found, and recorded, as MNIST."""
    from handgrad.data import datasets as ds_mod
    from handgrad.data.datasets import locate

    folder = fashion_like_idx(tmp_path / "files", FIRST_LABELS[name])
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HANDGRAD_DATA", str(folder))
    monkeypatch.setattr(ds_mod, "cache_dir", lambda: tmp_path / "cache")
    monkeypatch.setattr(ds_mod, "SYSTEM_DIR", tmp_path / "system")
    assert locate(name) == folder
    assert locate(other) is None
