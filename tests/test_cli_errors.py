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


CASES = {
    "epochs not an int": (lambda t, n: ["train", "--epochs", "six"], 2, "argument --epochs: invalid int value: 'six'"),
    "unknown flag": (lambda t, n: ["train", "--bogus"], 2, "unrecognized arguments: --bogus"),
    "unknown command": (lambda t, n: ["bogus"], 2, "invalid choice: 'bogus'"),
    "eval without a folder": (lambda t, n: ["eval"], 2, "the following arguments are required: DIR"),
    "eval of no folder": (lambda t, n: ["eval", t / "nothing"], 2, "no such run folder"),
    "predict of no folder": (lambda t, n: ["predict", t / "nothing", t / "x.png"], 2, "no such run folder"),
    "data path typo": (lambda t, n: train(t / "typo.npz", "--out", t / "r"), None, "typo.npz"),
    "out is a file": (lambda t, n: (t / "f").write_text("x") and train(n, "--out", t / "f"), 2, "is a file"),
    "out is a symlink": (lambda t, n: (t / "real").mkdir() or (t / "link").symlink_to(t / "real") or
                         train(n, "--out", t / "link"), 2, "symbolic link"),
    "overwrite a project folder": (lambda t, n: (t / "proj").mkdir() or (t / "proj" / "config.json").write_text("{}") and
                                   train(n, "--out", t / "proj", "--overwrite"), 2, "not a handgrad run folder"),
    "lr overflows": (lambda t, n: train(n, "--lr", "1e39", "--no-fused", "--no-check"), 2, "up to 1e6, got 1e+39"),
    "check of no file": (lambda t, n: ["check", f"{t / 'none.py'}:Layer", "--input-shape", "4,3"], 2, "none.py"),
    "check of a huge shape": (lambda t, n: ["check", "handgrad.layers:Tanh", "--input-shape", "100000,100000"], 2,
                              "elements"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line_with_exit_1_or_2_and_touches_nothing_else(name, tmp_path, npz, capsys, monkeypatch):
    make, code, says = CASES[name]
    monkeypatch.chdir(tmp_path)
    argv = make(tmp_path, npz)
    before = snapshot(tmp_path, skip=tmp_path / "r")
    got, err = run_cli(capsys, *argv)
    lines = err.strip().splitlines()
    assert got in (1, 2) and (code is None or got == code), (got, err)
    assert len(lines) == 1 and lines[0].startswith("handgrad: error: ") and "Traceback" not in err, err
    assert says is None or says in lines[0], lines[0]
    assert snapshot(tmp_path, skip=tmp_path / "r") == before


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
