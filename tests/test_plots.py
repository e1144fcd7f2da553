"""The pictures a run writes, and the per-batch training losses behind its loss curve: recorded for every batch,
kept across a resume bit for bit, checked when read back."""

import json
import math
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import handgrad.train.plots as plots
from handgrad.errors import DataError
from handgrad.train import EpochStats, TrainConfig, run
from handgrad.train.callbacks import CheckpointCB
from handgrad.train.runfolder import RunFolder


def make_data(folder, n=900, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 60, (10, 784))
    y = rng.integers(0, 10, n)
    x = np.clip(centers[y] + rng.normal(0, 60, (n, 784)) + 128, 0, 255).astype(np.uint8)
    path = folder / "mnist.npz"
    np.savez(path, x_train=x, y_train=y)
    return path


def config(data, out, **kw):
    return TrainConfig(**{"dataset": "mnist", "data": str(data), "download": False, "out": str(out), "epochs": 2,
                          "bs": 64, "save_every": 4, **kw})


def n_train(logs):
    return int(re.search(r"(\d+) train, \d+ valid", "\n".join(logs)).group(1))


@pytest.fixture
def figures(monkeypatch):
    """Every figure the pictures save, in order; `fig.box[artist]`: where each text and axes was drawn (at the
    resolution the picture is saved at)."""
    from matplotlib.text import Text

    saved = []
    original = plots._save

    def keep(fig, path, dpi=90):
        fig.set_dpi(dpi)
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        fig.box = {a: a.get_window_extent(renderer).frozen() for a in [*fig.findobj(Text), *fig.axes]}
        saved.append((path.name, fig))
        return original(fig, path, dpi)

    monkeypatch.setattr(plots, "_save", keep)
    return saved


def no_overlap(fig, texts):
    """No two of these (visible, non-empty) texts share a pixel."""
    boxes = [(t.get_text(), fig.box[t]) for t in texts if t.get_visible() and t.get_text()]
    for i, (a, box_a) in enumerate(boxes):
        for b, box_b in boxes[i + 1:]:
            assert not box_a.overlaps(box_b), f"{a!r} overlaps {b!r}"


def titles_and_labels(fig):
    texts = [fig._suptitle] if fig._suptitle is not None else []
    for ax in fig.axes:
        texts += [ax.title, ax.xaxis.label, ax.yaxis.label]
    return texts


# ------------------------------------------------------------------------------------------ per-batch losses

def test_every_batch_has_its_loss_and_the_epochs_loss_is_their_sample_weighted_mean(tmp_path):
    logs = []
    result = run(config(make_data(tmp_path), tmp_path / "r"), log=logs.append, progress=False)
    n = n_train(logs)
    batches = math.ceil(n / 64)
    sizes = [64] * (n // 64) + ([n % 64] if n % 64 else [])
    rows = RunFolder(tmp_path / "r").read_metrics()
    assert [len(r["batch_losses"]) for r in rows] == [batches, batches]
    for h, row in zip(result.history, rows):
        assert h.batch_losses == row["batch_losses"]
        mean = sum(loss * size for loss, size in zip(h.batch_losses, sizes)) / n
        assert mean == pytest.approx(h.train_loss, rel=1e-12)
    assert np.mean(rows[-1]["batch_losses"]) < np.mean(rows[0]["batch_losses"][:3])  # it learns


class Stop(Exception):
    pass


def test_a_run_stopped_mid_epoch_and_resumed_writes_the_same_metrics(tmp_path, monkeypatch):
    data = make_data(tmp_path)
    run(config(data, tmp_path / "whole", opt="adamw", lr=3e-3), log=lambda s: None, progress=False)

    save = CheckpointCB.save

    def stop_after(self, learn, epoch, batch):  # a crash just after the checkpoint at epoch 2, batch 8
        save(self, learn, epoch, batch)
        if (epoch, batch) == (1, 8):
            raise Stop

    monkeypatch.setattr(CheckpointCB, "save", stop_after)
    with pytest.raises(Stop):
        run(config(data, tmp_path / "cut", opt="adamw", lr=3e-3), log=lambda s: None, progress=False)
    monkeypatch.setattr(CheckpointCB, "save", save)
    meta = RunFolder(tmp_path / "cut").load_checkpoint()[1]
    assert (meta["epoch"], meta["batch"]) == (1, 8) and len(meta["callbacks"]["MetricsCB"]["batch_losses"]) == 8
    # resumed with another --save-every: the flushes fall elsewhere, the sums must not change
    run(config(data, tmp_path / "cut"), log=lambda s: None, progress=False, resume=tmp_path / "cut",
        changes={"save_every": 3})

    def without_seconds(folder):
        return [{k: v for k, v in row.items() if k != "seconds"} for row in RunFolder(folder).read_metrics()]

    assert without_seconds(tmp_path / "cut") == without_seconds(tmp_path / "whole")  # equal floats, bit for bit


def rewrite_checkpoint(path, change):
    tensors = load_file(path)
    with safe_open(path, "pt") as f:
        meta = json.loads(f.metadata()["handgrad"])
    change(meta)
    save_file(tensors, path, metadata={"handgrad": json.dumps(meta)})


@pytest.fixture
def stopped_run(tmp_path, monkeypatch):
    """A run stopped after the checkpoint at epoch 2, batch 4."""
    data = make_data(tmp_path)
    save = CheckpointCB.save

    def stop_after(self, learn, epoch, batch):
        save(self, learn, epoch, batch)
        if (epoch, batch) == (1, 4):
            raise Stop

    monkeypatch.setattr(CheckpointCB, "save", stop_after)
    with pytest.raises(Stop):
        run(config(data, tmp_path / "r"), log=lambda s: None, progress=False)
    monkeypatch.setattr(CheckpointCB, "save", save)
    return tmp_path / "r"


@pytest.mark.parametrize("change, pieces", [
    (lambda m: m["callbacks"]["MetricsCB"].update(batch_losses=[0.5, "x", 0.4, 0.3]),
     ["callbacks.MetricsCB", "'batch_losses'", "a list of a number"]),
    (lambda m: m["callbacks"]["MetricsCB"].update(batch_losses=[0.5, 0.4]),
     ["'batch_losses'", "the 4 batches done in this epoch", "got 2"]),
    (lambda m: m["callbacks"]["MetricsCB"]["history"][0].update(batch_losses={"a": 1}),
     ["MetricsCB.history) (epoch 1)", "'batch_losses'", "an object"]),
    (lambda m: m["callbacks"]["MetricsCB"]["history"][0].update(epoch=3),
     ["(epoch 1)", "key 'epoch': expected 1"]),
    (lambda m: m["callbacks"]["MetricsCB"]["history"][0].update(lr=0.1), ["(epoch 1)", "unknown key 'lr'"]),
])
def test_a_hand_edited_checkpoint_is_refused_in_one_line(stopped_run, change, pieces):
    rewrite_checkpoint(stopped_run / "checkpoint.safetensors", change)
    with pytest.raises(DataError) as e:
        run(TrainConfig(), log=lambda s: None, progress=False, resume=stopped_run)
    message = str(e.value)
    assert "\n" not in message and all(p in message for p in pieces), message


def test_a_checkpoint_from_before_per_batch_losses_still_resumes(stopped_run):
    def forget(meta):
        metrics = meta["callbacks"]["MetricsCB"]
        del metrics["batch_losses"]
        for h in metrics["history"]:
            del h["batch_losses"]

    rewrite_checkpoint(stopped_run / "checkpoint.safetensors", forget)
    result = run(TrainConfig(), log=lambda s: None, progress=False, resume=stopped_run)
    first, second = result.history
    assert first.batch_losses == []  # unknown: the loss plot shows the epoch's mean instead
    assert all(math.isnan(v) for v in second.batch_losses[:4]) and all(map(math.isfinite, second.batch_losses[4:]))
    assert (stopped_run / "loss.png").is_file()


def test_a_hand_edited_metrics_line_is_one_line(tmp_path):
    folder = RunFolder.create(tmp_path / "r")
    good = {"epoch": 1, "train_loss": 1.0, "valid_loss": 1.1, "valid_acc": 0.5, "seconds": 0.1,
            "batch_losses": [1.2, 0.8]}
    (folder.path / "metrics.jsonl").write_text(json.dumps(good) + "\n")
    assert folder.read_metrics() == [good]
    old = {k: v for k, v in good.items() if k != "batch_losses"}  # a run folder from before them
    (folder.path / "metrics.jsonl").write_text(json.dumps(old) + "\n")
    assert folder.read_metrics() == [old]
    for text, piece in ((json.dumps({**good, "batch_losses": ["a"]}), "'batch_losses': expected a list of a number"),
                        (json.dumps(good) + "\n{oops", "line 2 is not JSON"),
                        (json.dumps({**good, "epoch": 2}), "key 'epoch': expected 1")):
        (folder.path / "metrics.jsonl").write_text(text + "\n")
        with pytest.raises(DataError, match=re.escape(piece)):
            folder.read_metrics()


# ----------------------------------------------------------------------------------------------- pictures

def test_the_run_folders_pictures_name_the_run_and_put_batches_between_integer_epochs(tmp_path, figures):
    logs = []
    run(config(make_data(tmp_path), tmp_path / "my-run", epochs=3), log=logs.append, progress=False)
    batches = math.ceil(n_train(logs) / 64)
    named = dict(figures)
    assert list(named) == ["loss.png", "accuracy.png", "confusion.png", "samples.png"]
    for name, fig in figures:
        title = fig._suptitle.get_text() if name == "samples.png" else fig.axes[0].get_title()
        assert "run my-run" in title and "mnist" in title, (name, title)
        no_overlap(fig, titles_and_labels(fig))
    for name in ("loss.png", "accuracy.png"):
        ax = named[name].axes[0]
        assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "1", "2", "3"], name
    per_batch = named["loss.png"].axes[0].lines[0]
    x = per_batch.get_xdata()
    assert len(x) == 3 * batches and x[0] == pytest.approx(1 / batches) and x[batches - 1] == pytest.approx(1.0)
    assert x[-1] == pytest.approx(3.0)
    valid = [line for line in named["loss.png"].axes[0].lines if "validation" in line.get_label()]
    assert list(valid[0].get_xdata()) == [1, 2, 3]
    assert any(ax.get_label() == "<colorbar>" for ax in named["confusion.png"].axes)


def test_sample_labels_sit_above_their_image_and_say_right_or_wrong(tmp_path, figures):
    x = torch.rand(10, 784)
    pred, target = torch.arange(10) % 3, torch.tensor([0, 1, 2, 1, 1, 1, 0, 1, 2, 2])
    plots.plot_samples(x, pred, target, ("zero", "one", "two"), tmp_path / "s.png", about="run r: mnist")
    fig = figures[0][1]
    images = [ax for ax in fig.axes if ax.images]
    assert len(images) == 10
    for ax in images:
        for other in images:  # above its own image, on none of the others
            assert not fig.box[ax.title].overlaps(fig.box[other]), ax.title.get_text()
    wrong = [ax.title.get_text() for ax in images if "true:" in ax.title.get_text()]
    assert len(wrong) == int((pred != target).sum()) and all(t.startswith("\u2717") for t in wrong)
    assert f"{int((pred == target).sum())} of 10 right" in fig._suptitle.get_text()


def test_the_stats_picture_has_a_colour_bar_axis_labels_and_no_overlapping_titles(tmp_path, figures):
    from handgrad.models import mlp
    from handgrad.train.stats import ActivationStats

    torch.manual_seed(0)
    model = mlp(20, [16, 16, 16, 16, 16], 3)  # five activation layers: two rows of histograms
    stats = ActivationStats(model)
    for _ in range(12):
        model(torch.randn(32, 20))
        stats.record()
    stats.plot(tmp_path / "stats.png", "a 5-layer MLP on blobs", batches_per_epoch=4)
    fig = figures[0][1]
    colorbars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(colorbars) == 1 and "share" in colorbars[0].get_ylabel()
    plotted = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert len(plotted) == 2 + 5 and all(ax.get_xlabel() and ax.get_ylabel() for ax in plotted)
    no_overlap(fig, titles_and_labels(fig))
    for ax in fig.axes:  # constrained layout: no axes on top of another
        for other in fig.axes:
            if ax is not other:
                assert not ax.get_position().overlaps(other.get_position())


def test_lr_find_runs_its_steps_over_several_epochs_of_a_small_split(tmp_path, figures):
    from handgrad.train.evaluate import lr_find

    logs = []
    lr_find(TrainConfig(dataset="mnist", data=str(make_data(tmp_path, n=500)), download=False, bs=64),
            tmp_path / "lr.png", log=logs.append)
    ran = int(re.search(r"lr-find: (\d+) batches", logs[-1]).group(1))
    assert ran > math.ceil(500 / 64)  # more than an epoch of the (at most) 500 training images
    fig = figures[0][1]
    assert "mnist" in fig.axes[0].get_title() and fig.axes[0].get_legend() is not None
    no_overlap(fig, titles_and_labels(fig))


def test_bench_is_quiet_on_stderr_and_its_plot_explains_itself(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "handgrad", "bench", "--configs", "mlp-784-50-10-bs64", "--rounds",
                           "1", "--no-compile", "--no-time-to-accuracy", "--plot", str(tmp_path / "b.png")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # no profiler lines, no allocator warning
    assert (tmp_path / "b.png").stat().st_size > 5000


def test_bench_bars_keep_their_colour_without_compile(tmp_path, figures):
    from matplotlib.colors import to_rgba

    from handgrad.bench import IMPL_COLOURS, Row, plot

    rows = [Row("c", "handgrad", 1.0, 0.5), Row("c", "eager", 2.0, 1.0), Row("c", "gemm_floor", 0.5, None)]
    plot(rows, tmp_path / "b.png", "cpu, 2 threads, median of 1 round")
    fig = figures[0][1]
    time_ax = fig.axes[0]
    assert [p.get_facecolor() for p in time_ax.patches] == [to_rgba(IMPL_COLOURS[r.impl]) for r in rows]
    labels = [t.get_text() for t in time_ax.texts]
    assert labels[0] == "1\n(0.50x eager)" and "not measured" in [t.get_text() for t in fig.axes[1].texts]
    assert "median of 1 round" in fig._suptitle.get_text()
    no_overlap(fig, titles_and_labels(fig))


def test_an_epoch_without_batch_losses_is_drawn_as_its_mean(tmp_path, figures):
    history = [EpochStats(1, 1.0, 1.1, 0.5, 0.1), EpochStats(2, 0.8, 0.9, 0.6, 0.1, [0.9, 0.7])]
    plots.plot_curves(history, tmp_path, "run old: mnist")
    ax = dict(figures)["loss.png"].axes[0]
    means = [line for line in ax.lines if "mean over the epoch" in line.get_label()]
    assert list(means[0].get_xdata()) == [1] and list(ax.lines[0].get_xdata()) == [1.5, 2.0]
