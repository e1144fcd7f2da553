"""Run folders, checkpoints and exact resume."""

import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from handgrad.errors import UsageError
from handgrad.train import TrainConfig, run
from handgrad.train.runfolder import RunFolder


def make_data(folder, n=4000, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 60, (10, 784))
    y = rng.integers(0, 10, n)
    x = np.clip(centers[y] + rng.normal(0, 60, (n, 784)) + 128, 0, 255).astype(np.uint8)
    path = folder / "mnist.npz"
    np.savez(path, x_train=x, y_train=y)
    return path


def train_cmd(data, out, *extra):
    return [sys.executable, "-m", "handgrad", "train", "--data", str(data), "--out", str(out), "--no-download",
            "--no-progress", "--hidden", "64,32", "--epochs", "3", "--bs", "32", "--opt", "adamw", "--schedule",
            "one-cycle", "--save-every", "7", *extra]


def final_weights(out):
    return {k: v for k, v in load_file(out / "checkpoint.safetensors").items() if k.startswith("model.")}


def test_sigkill_mid_epoch_then_resume_gives_bit_identical_weights(tmp_path):
    data = make_data(tmp_path)
    ref = subprocess.run(train_cmd(data, tmp_path / "ref"), capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr

    proc = subprocess.Popen(train_cmd(data, tmp_path / "killed"), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    ckpt = tmp_path / "killed" / "checkpoint.safetensors"
    deadline = time.time() + 120
    while time.time() < deadline:
        if ckpt.exists():
            meta = RunFolder(tmp_path / "killed").load_checkpoint()[1]
            if meta["epoch"] >= 1 and meta["batch"] > 0:  # mid-epoch, past the first epoch
                break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    meta = RunFolder(tmp_path / "killed").load_checkpoint()[1]
    assert meta["epoch"] < 3, "the run finished before it could be killed"

    resumed = subprocess.run([sys.executable, "-m", "handgrad", "train", "--resume", str(tmp_path / "killed"),
                              "--no-progress"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "continuing at epoch" in resumed.stdout
    a, b = final_weights(tmp_path / "ref"), final_weights(tmp_path / "killed")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k  # identical bits
    ref_metrics = RunFolder(tmp_path / "ref").read_metrics()
    assert [m["epoch"] for m in RunFolder(tmp_path / "killed").read_metrics()] == [m["epoch"] for m in ref_metrics]
    for ref, killed in zip(ref_metrics, RunFolder(tmp_path / "killed").read_metrics()):  # every loss, bit for bit
        assert {k: v for k, v in killed.items() if k != "seconds"} == {k: v for k, v in ref.items() if k != "seconds"}
    assert all(len(m["batch_losses"]) == len(ref_metrics[0]["batch_losses"]) > 7 for m in ref_metrics)


def _meta(epoch):
    return {"epoch": epoch, "batch": 0, "t": 0, "opt_steps": 0, "opt_hyper": {}, "n_params": 0, "callbacks": {},
            "classes": ["a", "b"], "mean": None, "std": None, "dataset": "mnist", "n_in": 4}


def test_an_interrupted_checkpoint_save_leaves_the_previous_one_loadable(tmp_path, monkeypatch):
    folder = RunFolder.create(tmp_path / "run")
    rng = torch.get_rng_state()
    folder.save_checkpoint({"w": torch.arange(4.0), "rng.cpu": rng}, _meta(1))

    import handgrad.train.runfolder as rf

    def crash_midway(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial write")
        raise OSError("disk full")

    monkeypatch.setattr(rf, "save_file", crash_midway)
    with pytest.raises(OSError, match="cannot write it \\(disk full\\).*checkpoint.safetensors"):
        folder.save_checkpoint({"w": torch.zeros(4), "rng.cpu": rng}, _meta(2))
    tensors, meta = folder.load_checkpoint()
    assert torch.equal(tensors["w"], torch.arange(4.0)) and meta == _meta(1)
    assert not list((tmp_path / "run").glob(".*.part"))


def test_run_folder_contents_and_pngs(tmp_path):
    import matplotlib.image

    data = make_data(tmp_path, n=1200)
    result = run(TrainConfig(dataset="mnist", data=str(data), epochs=2, download=False, out=str(tmp_path / "r")),
                 log=lambda s: None, progress=False)
    names = sorted(p.name for p in (tmp_path / "r").iterdir())
    assert names == [".handgrad-run", ".handgrad.lock", "accuracy.png", "checkpoint.safetensors", "config.json",
                     "confusion.png", "loss.png", "metrics.jsonl", "samples.png"]
    assert [m["epoch"] for m in RunFolder(tmp_path / "r").read_metrics()] == [1, 2]
    assert RunFolder(tmp_path / "r").read_config().epochs == 2
    for png in ("accuracy.png", "confusion.png", "loss.png", "samples.png"):
        image = matplotlib.image.imread(tmp_path / "r" / png)
        assert image.shape[0] > 200 and float(np.asarray(image[..., :3]).std()) > 0.02, png
    assert result.folder == tmp_path / "r"


def test_refuses_to_overwrite_a_run_unless_asked(tmp_path):
    data = make_data(tmp_path, n=600)
    cfg = TrainConfig(dataset="mnist", data=str(data), epochs=1, download=False, out=str(tmp_path / "r"))
    run(cfg, log=lambda s: None, progress=False)
    with pytest.raises(UsageError, match="already exists; pass --overwrite"):
        run(cfg, log=lambda s: None, progress=False)
    run(cfg, log=lambda s: None, progress=False, overwrite=True)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "mine.txt").write_text("keep me")
    cfg.out = str(tmp_path / "notes")
    with pytest.raises(UsageError, match="is not a handgrad run folder"):
        run(cfg, log=lambda s: None, progress=False, overwrite=True)
    assert (tmp_path / "notes" / "mine.txt").read_text() == "keep me"


def snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_overwrite_leaves_a_project_folder_the_working_directory_and_home_alone(tmp_path, monkeypatch):
    """--overwrite used to delete any folder holding a config.json (a project with main.js and src/), and
    `--out . --overwrite` emptied the working directory."""
    data = make_data(tmp_path, n=600)
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "main.js").write_text("console.log(1)")
    (project / "config.json").write_text("{}")
    before = snapshot(project)
    cfg = TrainConfig(dataset="mnist", data=str(data), epochs=1, download=False, out=str(project))
    with pytest.raises(UsageError, match="not a handgrad run folder"):
        run(cfg, log=lambda s: None, progress=False, overwrite=True)
    assert snapshot(project) == before
    # a run made in the working directory, then --out . --overwrite: refused (and so is home)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    run(TrainConfig(dataset="mnist", data=str(data), epochs=1, download=False, out="."), log=lambda s: None,
        progress=False)
    (work / "notes.txt").write_text("mine")
    before = snapshot(work)
    for out in (".", str(work), str(tmp_path)):
        with pytest.raises(UsageError, match="working directory or a folder above it"):
            run(TrainConfig(dataset="mnist", data=str(data), epochs=1, download=False, out=out),
                log=lambda s: None, progress=False, overwrite=True)
    monkeypatch.setenv("HOME", str(work))
    with pytest.raises(UsageError, match="working directory|home folder"):
        RunFolder.prepare(work, overwrite=True)
    assert snapshot(work) == before


def test_overwrite_removes_only_handgrads_files_and_only_once_the_new_run_is_ready(tmp_path):
    data = make_data(tmp_path, n=600)
    out = tmp_path / "good"
    cfg = TrainConfig(dataset="mnist", data=str(data), epochs=1, download=False, out=str(out))
    run(cfg, log=lambda s: None, progress=False)
    (out / "my-notes.md").write_text("keep")
    before = snapshot(out)
    # a new run that fails before it starts (data not found) leaves the old run whole
    bad = TrainConfig(dataset="mnist", data=str(tmp_path / "typo"), epochs=1, download=False, out=str(out))
    with pytest.raises(Exception):
        run(bad, log=lambda s: None, progress=False, overwrite=True)
    assert snapshot(out) == before
    run(TrainConfig(dataset="mnist", data=str(data), epochs=2, download=False, out=str(out)), log=lambda s: None,
        progress=False, overwrite=True)
    assert (out / "my-notes.md").read_text() == "keep"
    assert [m["epoch"] for m in RunFolder(out).read_metrics()] == [1, 2]


def test_a_second_writer_is_refused_with_the_pid_and_a_killed_holder_blocks_nothing(tmp_path):
    data = make_data(tmp_path, n=600)
    out = tmp_path / "r"
    cfg = TrainConfig(dataset="mnist", data=str(data), epochs=1, download=False, out=str(out))
    run(cfg, log=lambda s: None, progress=False)
    holder = RunFolder(out)
    holder.lock()  # another writer (the lock is per open file: a second one in this process is refused too)
    try:
        with pytest.raises(UsageError, match=rf"is in use by another handgrad process \(PID {os.getpid()}\)"):
            run(cfg, log=lambda s: None, progress=False, overwrite=True)
        with pytest.raises(UsageError, match="in use by another handgrad process"):
            run(cfg, log=lambda s: None, progress=False, resume=str(out))
    finally:
        holder.close()
    # a process holding the lock is killed: the system lets go of it
    code = ("import sys, time; from handgrad.train.runfolder import RunFolder; RunFolder(sys.argv[1]).lock(); "
            "print('locked', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    with pytest.raises(UsageError, match=f"PID {proc.pid}"):
        RunFolder(out).lock()
    proc.kill()
    proc.wait()
    again = RunFolder(out)
    again.lock()
    again.close()


def test_two_concurrent_trainings_into_one_folder_exactly_one_proceeds(tmp_path):
    data = make_data(tmp_path, n=2000)
    argv = [sys.executable, "-m", "handgrad", "train", "--dataset", "mnist", "--data", str(data), "--no-download",
            "--no-progress", "--epochs", "3", "--out", str(tmp_path / "r")]
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes[0] == 0 and codes[1] != 0, results
    err = next(e for p, (_, e) in zip(procs, results) if p.returncode != 0)
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert "in use by another handgrad process" in err or "already exists" in err, err


def cli(*args):
    return subprocess.run([sys.executable, "-m", "handgrad", *args], capture_output=True, text=True, timeout=300)


def one_line(proc, code, *pieces):
    assert proc.returncode == code, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for p in pieces:
        assert p in lines[0], lines[0]


def test_resume_bad_inputs(tmp_path):
    (tmp_path / "plain").mkdir()
    one_line(cli("train", "--resume", str(tmp_path / "plain")), 2, "is not a run folder: no config.json")
    one_line(cli("train", "--resume", str(tmp_path / "nope")), 2, "no such run folder")
    data = make_data(tmp_path, n=600)
    for name, hidden in (("a", "50"), ("b", "30")):
        proc = cli("train", "--data", str(data), "--out", str(tmp_path / name), "--hidden", hidden, "--epochs", "1",
                   "--no-download", "--no-progress")
        assert proc.returncode == 0, proc.stderr
    shutil.copy(tmp_path / "a" / "checkpoint.safetensors", tmp_path / "b" / "checkpoint.safetensors")
    one_line(cli("train", "--resume", str(tmp_path / "b")), 1,
             "checkpoint.safetensors: tensor model.0.weight: expected float32 of shape [30, 784], got float32 of "
             "shape [50, 784]")


def test_a_checkpoint_with_nan_weights_is_refused(tmp_path):
    """Training never saves NaN weights (the non-finite guard keeps the last good checkpoint): a checkpoint with them
    was edited or damaged, and eval would print accuracy 0.1 and predict 'nan' without it."""
    from safetensors.torch import save_file

    data = make_data(tmp_path, n=600)
    proc = cli("train", "--data", str(data), "--out", str(tmp_path / "r"), "--epochs", "1", "--no-download",
               "--no-progress")
    assert proc.returncode == 0, proc.stderr
    ckpt = tmp_path / "r" / "checkpoint.safetensors"
    tensors = load_file(ckpt)
    from safetensors import safe_open

    with safe_open(str(ckpt), "pt") as f:
        metadata = f.metadata()
    tensors["model.2.bias"][3] = float("nan")
    save_file(tensors, str(ckpt), metadata=metadata)
    one_line(cli("eval", str(tmp_path / "r")), 1, "checkpoint.safetensors: tensor model.2.bias holds NaN or infinite")
    one_line(cli("train", "--resume", str(tmp_path / "r"), "--epochs", "2"), 1, "tensor model.2.bias holds NaN")


@pytest.mark.parametrize("args, piece", [(["--lr", "0"], "--lr must be a positive number up to 1e6, got 0.0"),
                                         (["--bs", "-3"], "--bs must be a positive integer, got -3"),
                                         (["--lr", "-0.1", "--opt", "adamw"], "--lr must be a positive number")])
def test_non_positive_lr_or_batch_size(args, piece):
    one_line(cli("train", "--no-download", *args), 2, piece)


def test_non_finite_guard_names_the_layer_and_keeps_the_last_good_checkpoint(tmp_path):
    data = make_data(tmp_path, n=2000)
    proc = cli("train", "--data", str(data), "--out", str(tmp_path / "r"), "--loss", "mse", "--lr", "0.5",
               "--save-every", "1", "--no-download", "--no-progress", "--no-check")
    one_line(proc, 1, "non-finite", "first", "layer")
    tensors, meta = RunFolder(tmp_path / "r").load_checkpoint()
    assert all(bool(torch.isfinite(v).all()) for k, v in tensors.items() if k.startswith("model."))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("finished")
    rng = np.random.default_rng(3)
    centers = rng.normal(0, 60, (10, 784))
    y = rng.integers(0, 10, 1500)
    x = np.clip(centers[y] + rng.normal(0, 40, (1500, 784)) + 128, 0, 255).astype(np.uint8)
    yt = rng.integers(0, 10, 300)
    xt = np.clip(centers[yt] + rng.normal(0, 40, (300, 784)) + 128, 0, 255).astype(np.uint8)
    np.savez(tmp / "fashion-mnist.npz", x_train=x, y_train=y, x_test=xt, y_test=yt)
    proc = cli("train", "--dataset", "fashion-mnist", "--data", str(tmp / "fashion-mnist.npz"), "--out",
               str(tmp / "run"), "--epochs", "2", "--no-download", "--no-progress", "--opt", "adamw")
    assert proc.returncode == 0, proc.stderr
    return tmp, centers


def test_eval_reports_test_accuracy_and_per_class(finished_run):
    tmp, _ = finished_run
    proc = cli("eval", str(tmp / "run"))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "test split, 300 images: accuracy" in lines[0]
    assert float(lines[0].split("accuracy ")[1].split(",")[0]) > 0.9
    assert len(lines) == 11 and lines[1].strip().startswith("T-shirt/top")


def test_predict_top3_for_28x28_and_resized_images_and_rejects_non_images(finished_run, tmp_path):
    from PIL import Image

    tmp, centers = finished_run
    img = np.clip(centers[1] + 128, 0, 255).astype(np.uint8).reshape(28, 28)  # class 1: Trouser
    Image.fromarray(img).save(tmp_path / "small.png")
    Image.fromarray(img).resize((96, 96)).save(tmp_path / "big.png")
    proc = cli("predict", str(tmp / "run"), str(tmp_path / "small.png"), str(tmp_path / "big.png"))
    assert proc.returncode == 0, proc.stderr
    for line in proc.stdout.splitlines():
        name, top = line.split(": ", 1)
        entries = top.split(", ")
        assert len(entries) == 3 and entries[0].startswith("Trouser "), line
        probs = [float(e.rsplit(" ", 1)[1]) for e in entries]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0001
    (tmp_path / "fake.png").write_text("not an image")
    one_line(cli("predict", str(tmp / "run"), str(tmp_path / "fake.png")), 2, "fake.png: not an image")


def test_lr_find_writes_its_plot_and_suggests_a_rate(tmp_path):
    data = make_data(tmp_path, n=3000)
    proc = cli("lr-find", "--data", str(data), "--no-download", "--plot", str(tmp_path / "lr.png"))
    assert proc.returncode == 0, proc.stderr
    suggested = float(proc.stdout.strip().splitlines()[-1].split("suggested lr ")[1].split(";")[0])
    assert 1e-6 < suggested < 10 and (tmp_path / "lr.png").stat().st_size > 5000
    one_line(cli("lr-find", "--data", str(data), "--no-download", "--plot", str(tmp_path / "lr.png")), 2,
             "the file exists")


def test_early_stopping_saves_the_epoch_it_stops_at_and_a_resume_trains_no_more(tmp_path):
    """The stop used to be raised before the checkpoint callback ran, so every resume retrained that epoch."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (700, 784)).astype(np.uint8)
    y = rng.integers(0, 10, 700)  # labels unrelated to the images: the validation loss soon stops improving
    np.savez(tmp_path / "mnist.npz", x_train=x, y_train=y)
    out = tmp_path / "r"
    cfg = TrainConfig(dataset="mnist", data=str(tmp_path / "mnist.npz"), epochs=30, download=False, out=str(out),
                      patience=1, lr=0.5)
    logs = []
    result = run(cfg, log=logs.append, progress=False)
    ran = len(result.history)
    assert ran < 30 and any("early stopping" in line for line in logs)
    folder = RunFolder(out)
    assert folder.load_checkpoint()[1]["epoch"] == ran  # the stopping epoch is saved
    assert [m["epoch"] for m in folder.read_metrics()] == list(range(1, ran + 1))
    logs.clear()
    resumed = run(cfg, log=logs.append, progress=False, resume=str(out))
    assert len(resumed.history) == ran and any("stopped already" in line for line in logs), logs
    assert [m["epoch"] for m in folder.read_metrics()] == list(range(1, ran + 1))


# ------------------------------------------------------------ handgrad train path/to/file.py:Class
USER_NET = '''
import handgrad as hg


class Net(hg.Module):
    """A model of one's own: its own forward, the backward replayed from its layers. Dropout draws random
    numbers, so an exact resume needs the random state too."""

    def __init__(self, width=32):
        super().__init__()
        self.fc1, self.act, self.drop = hg.Linear(784, width), hg.ReLU(), hg.Dropout(0.2)
        self.fc2 = hg.Linear(width, 10)

    def forward(self, x):
        return self.fc2(self.drop(self.act(self.fc1(x))))
'''


def test_a_model_class_of_ones_own_resumes_mid_epoch_with_bit_identical_weights(tmp_path, monkeypatch):
    from handgrad.train import callbacks

    data = make_data(tmp_path, n=1200)
    (tmp_path / "net.py").write_text(USER_NET)

    def cfg(out):
        return TrainConfig(dataset="mnist", data=str(data), model=f"{tmp_path / 'net.py'}:Net",
                           model_args={"width": 24}, epochs=2, bs=32, opt="adamw", schedule="one-cycle",
                           save_every=7, download=False, out=str(tmp_path / out))

    logs = []
    run(cfg("ref"), log=logs.append, progress=False)
    assert logs[0].startswith(f"training Net ({tmp_path / 'net.py'}:Net) (19090 parameters)"), logs[0]

    class Stop(Exception):
        """The process dies here, in the second epoch, just after a checkpoint."""

    save = callbacks.CheckpointCB.save

    def save_then_stop(self, learn, epoch, batch):
        save(self, learn, epoch, batch)
        if (epoch, batch) == (1, 14):
            raise Stop

    monkeypatch.setattr(callbacks.CheckpointCB, "save", save_then_stop)
    with pytest.raises(Stop):
        run(cfg("cut"), log=lambda s: None, progress=False)
    monkeypatch.undo()
    logs.clear()
    run(cfg("unused"), log=logs.append, progress=False, resume=str(tmp_path / "cut"))  # its own config is used
    assert "continuing at epoch 2, batch 14" in "\n".join(logs)
    a, b = final_weights(tmp_path / "ref"), final_weights(tmp_path / "cut")
    assert sorted(a) == ["model.fc1.bias", "model.fc1.weight", "model.fc2.bias", "model.fc2.weight"]
    for k in a:
        assert torch.equal(a[k], b[k]), k  # identical bits
    recorded = RunFolder(tmp_path / "cut").read_config()
    assert (recorded.model, recorded.model_args) == (f"{tmp_path / 'net.py'}:Net", {"width": 24})


def test_cli_trains_a_model_class_evaluates_and_predicts_with_it_and_refuses_once_its_file_is_gone(tmp_path):
    from PIL import Image

    data = make_data(tmp_path, n=1200)
    work = tmp_path / "work"
    work.mkdir()
    (work / "net.py").write_text(USER_NET)
    proc = subprocess.run([sys.executable, "-m", "handgrad", "train", "net.py:Net", "--args", '{"width": 16}',
                           "--data", str(data), "--out", "r", "--epochs", "1", "--no-download", "--no-progress"],
                          cwd=work, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "gradient check on the first batch (float64): input and 4 parameters match" in proc.stdout
    config = RunFolder(work / "r").read_config()
    assert config.model == f"{work / 'net.py'}:Net" and config.model_args == {"width": 16}  # absolute path

    import json

    run_dir = str(work / "r")  # used from another folder: the class is found by its recorded path
    proc = cli("eval", run_dir, "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)  # one JSON object, nothing else
    assert set(result) == {"run", "split", "n", "accuracy", "loss", "per_class"}
    assert result["split"] == "valid" and result["n"] == 200 and result["accuracy"] > 0.5
    assert [c["class"] for c in result["per_class"]] == [str(i) for i in range(10)]
    assert sum(c["n"] for c in result["per_class"]) == 200

    Image.fromarray(np.full((28, 28), 128, np.uint8)).save(tmp_path / "gray.png")
    proc = cli("predict", run_dir, str(tmp_path / "gray.png"), "--top-k", "2", "--json")
    assert proc.returncode == 0, proc.stderr
    top = json.loads(proc.stdout)["predictions"][0]["top"]
    assert len(top) == 2 and top[0]["probability"] >= top[1]["probability"] > 0

    original = (work / "net.py").read_text()  # an edited file would read the weights into another model: refused
    (work / "net.py").write_text(original.replace("hg.ReLU()", "hg.Tanh()"))
    assert "hg.Tanh()" in (work / "net.py").read_text()
    one_line(cli("eval", run_dir), 1, f"{work / 'r' / 'config.json'}: key 'model_source'", "changed since the run")
    one_line(cli("train", "--resume", run_dir, "--epochs", "2"), 1, "key 'model_source'")
    (work / "net.py").write_text(original)
    assert cli("eval", run_dir).returncode == 0

    (work / "net.py").rename(work / "moved.py")
    one_line(cli("eval", run_dir), 1, f"{work / 'r' / 'config.json'}: key 'model'", f"{work / 'net.py'}: no such file")
    one_line(cli("train", "--resume", run_dir, "--epochs", "2"), 1, f"{work / 'net.py'}: no such file")


def test_eval_json_and_predict_top_k(finished_run, tmp_path):
    import json

    from PIL import Image

    tmp, centers = finished_run
    proc = cli("eval", str(tmp / "run"), "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["split"] == "test" and result["n"] == 300 and result["accuracy"] > 0.9
    assert result["per_class"][1]["class"] == "Trouser" and 0 <= result["per_class"][1]["accuracy"] <= 1
    text = cli("eval", str(tmp / "run")).stdout.splitlines()[0]
    assert f"accuracy {result['accuracy']:.4f}" in text  # the same numbers as the text form

    img = np.clip(centers[1] + 128, 0, 255).astype(np.uint8).reshape(28, 28)  # class 1: Trouser
    Image.fromarray(img).save(tmp_path / "t.png")
    for k in (1, 10):
        proc = cli("predict", str(tmp / "run"), str(tmp_path / "t.png"), "--top-k", str(k))
        assert proc.returncode == 0, proc.stderr
        entries = proc.stdout.strip().split(": ", 1)[1].split(", ")
        assert len(entries) == k and entries[0].startswith("Trouser ")
    proc = cli("predict", str(tmp / "run"), str(tmp_path / "t.png"), str(tmp_path / "t.png"), "--json")
    predictions = json.loads(proc.stdout)["predictions"]
    assert [p["image"] for p in predictions] == [str(tmp_path / "t.png")] * 2
    assert all(len(p["top"]) == 3 and p["top"][0]["class"] == "Trouser" for p in predictions)


def test_lr_find_takes_its_range_from_start_lr_and_end_lr(tmp_path):
    from handgrad.train.evaluate import lr_find

    data = make_data(tmp_path, n=1200)
    logs = []
    lr_find(TrainConfig(dataset="mnist", data=str(data), download=False), tmp_path / "lr.png", log=logs.append,
            start_lr=1e-3, end_lr=1.0)
    assert "lr 1.0e-03 .. " in logs[-1] and (tmp_path / "lr.png").is_file()
    upto = float(logs[-1].split(" .. ")[1].split(";")[0])
    assert 1e-3 < upto <= 1.0
