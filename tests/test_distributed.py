"""Data-parallel training: ranks are real processes talking gloo over loopback (127.0.0.1)."""

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from dist_worker import train

import handgrad as hg

from handgrad.data import DataLoader, locate
from handgrad.data.loader import shard_bounds
from handgrad.train.runfolder import RunFolder

HERE = Path(__file__).parent
pytestmark = pytest.mark.skipif(not torch.distributed.is_gloo_available(), reason="torch built without gloo")


def free_port():
    with socket.socket() as s:  # binding is local; only connecting is disabled in tests
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_env(rank, world, port):
    return dict(os.environ, RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                MASTER_PORT=str(port), OMP_NUM_THREADS="1")


def spawn_ranks(argv, tmp_path, world=2):
    """Start `world` ranks of `argv` (as torchrun would), their output in files."""
    port, procs = free_port(), []
    for r in range(world):
        out = open(tmp_path / f"rank{r}.out", "w")
        err = open(tmp_path / f"rank{r}.err", "w")
        procs.append(subprocess.Popen(argv, env=rank_env(r, world, port), stdout=out, stderr=err))
    return procs


def wait_all(procs, timeout):
    return [p.wait(timeout) for p in procs]


# ------------------------------------------------------------------- sharding


@pytest.mark.parametrize("n,bs,world", [(100, 32, 2), (101, 32, 3), (65, 64, 2), (7, 4, 4), (33, 32, 2)])
def test_every_sample_goes_to_exactly_one_rank_each_epoch(n, bs, world):
    x, y = torch.arange(n).float()[:, None], torch.arange(n)
    for epoch in range(2):
        loaders = [DataLoader(x, y, bs, shuffle=True, seed=3, rank=r, world_size=world) for r in range(world)]
        batches = [list(dl.epoch_batches(epoch)) for dl in loaders]
        assert len({len(b) for b in batches}) == 1  # every rank takes every step, even with an empty slice
        seen = torch.cat([yb for rank_batches in batches for _, yb in rank_batches])
        assert sorted(seen.tolist()) == list(range(n))  # none dropped, none repeated
        single = list(DataLoader(x, y, bs, shuffle=True, seed=3).epoch_batches(epoch))
        for i, (_, full) in enumerate(single):  # the global batch is the single-process batch, split in order
            assert torch.equal(torch.cat([batches[r][i][1] for r in range(world)]), full)
            assert loaders[0].global_batch_size(i) == full.shape[0]
            sizes = [batches[r][i][1].shape[0] for r in range(world)]
            assert max(sizes) - min(sizes) <= 1


def test_shard_bounds_and_bad_rank():
    assert [shard_bounds(5, r, 2) for r in range(2)] == [(0, 2), (2, 5)]
    assert [shard_bounds(1, r, 2) for r in range(2)] == [(0, 0), (0, 1)]
    with pytest.raises(ValueError, match=r"rank must be in \[0, world_size\), got rank 2 of 2"):
        DataLoader(torch.zeros(4, 1), torch.zeros(4), 2, rank=2, world_size=2)


# ---------------------------------------------------------------- equivalence


@pytest.mark.parametrize("path,bucket_mb", [("fused", None), ("module", None), ("module", 0.0001)])
def test_two_ranks_on_half_batches_equal_one_process_on_the_full_batch(tmp_path, path, bucket_mb):
    """One step's gradients to 1e-6 and the weights after 50 steps (SGD) to 1e-5, float32."""
    out = tmp_path / "rank0.pt"
    argv = [sys.executable, str(HERE / "dist_worker.py"), str(out), path, "1600", "0.0"]
    if bucket_mb is not None:
        argv.append(str(bucket_mb))
    procs = spawn_ranks(argv, tmp_path)
    assert wait_all(procs, 120) == [0, 0], (tmp_path / "rank0.err").read_text()[-2000:]
    got = torch.load(out)
    _, grads, weights, _ = train("module")  # one process, the full batch, no torch.distributed
    for a, b in zip(got["grads"], grads):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    for k in weights:
        torch.testing.assert_close(got["weights"][k], weights[k], rtol=1e-5, atol=1e-5)
    # 50 steps, one all_reduce per step (one bucket), or one per parameter with tiny buckets
    assert got["calls"] == (50 if bucket_mb is None else 50 * 6)


def test_a_rank_with_an_empty_slice_still_takes_part(tmp_path):
    """1601 samples, global batch 32: the last batch has one sample, so rank 0's slice of it is empty."""
    out = tmp_path / "rank0.pt"
    procs = spawn_ranks([sys.executable, str(HERE / "dist_worker.py"), str(out), "fused", "1601", "0.0"], tmp_path)
    assert wait_all(procs, 120) == [0, 0], (tmp_path / "rank0.err").read_text()[-2000:]
    _, _, weights, _ = train("module", n=1601)
    for k in weights:
        torch.testing.assert_close(torch.load(out)["weights"][k], weights[k], rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------- CLI


@pytest.fixture
def npz(tmp_path):
    gen = torch.Generator().manual_seed(0)
    centers = 2 * torch.randn(10, 784, generator=gen)
    y = torch.randint(0, 10, (4000,), generator=gen)
    x = centers[y] + 3 * torch.randn(4000, 784, generator=gen)
    path = tmp_path / "mnist.npz"
    np.savez(path, x_train=x.numpy(), y_train=y.numpy())
    return path


def train_argv(npz, *extra):
    return [sys.executable, "-m", "handgrad", "train", "--dataset", "mnist", "--data", str(npz), "--no-download",
            "--no-progress", *extra]


def final_accuracy(text):
    return float(re.search(r"-> valid_acc ([0-9.]+)", text).group(1))


def test_nproc_2_trains_like_one_process_and_only_rank_0_writes(tmp_path, npz):
    one = subprocess.run(train_argv(npz, "--epochs", "2"), capture_output=True, text=True, timeout=120)
    assert one.returncode == 0, one.stderr
    two = subprocess.run(train_argv(npz, "--epochs", "2", "--nproc", "2", "--out", str(tmp_path / "run")),
                         capture_output=True, text=True, timeout=180)
    assert two.returncode == 0, two.stderr
    assert two.stdout.count("done:") == 1 and two.stdout.count("epoch 1/2") == 1  # rank 0 speaks, once
    assert "data-parallel over 2 processes (gloo): each global batch of 64 split 32 per rank" in two.stdout
    assert abs(final_accuracy(one.stdout) - final_accuracy(two.stdout)) <= 0.005
    tensors, meta = RunFolder.open(tmp_path / "run").load_checkpoint()
    assert meta["epoch"] == 2
    # each batch's loss is the mean over the global batch (both ranks' slices), their weighted mean the epoch's
    n = int(re.search(r"(\d+) train", two.stdout).group(1))
    sizes = [64] * (n // 64) + ([n % 64] if n % 64 else [])
    for row in RunFolder(tmp_path / "run").read_metrics():
        assert len(row["batch_losses"]) == len(sizes)
        mean = sum(loss * size for loss, size in zip(row["batch_losses"], sizes)) / n
        assert abs(mean - row["train_loss"]) < 1e-9 * row["train_loss"]
    # and every rank resumes from the folder rank 0 wrote
    resumed = subprocess.run([sys.executable, "-m", "handgrad", "train", "--resume", str(tmp_path / "run"),
                              "--nproc", "2", "--no-progress"], capture_output=True, text=True, timeout=180)
    assert resumed.returncode == 0, resumed.stderr


def test_nproc_2_trains_and_resumes_a_model_class_of_ones_own(tmp_path, npz):
    """Every rank loads the class named on the command line (a path relative to where it was started)."""
    (tmp_path / "net.py").write_text(
        "import handgrad as hg\n\n\nclass Net(hg.Sequential):\n    def __init__(self, width=8):\n"
        "        super().__init__(hg.Linear(784, width), hg.ReLU(), hg.Linear(width, 10))\n")
    two = subprocess.run(train_argv(npz, "net.py:Net", "--args", '{"width": 12}', "--epochs", "1", "--nproc", "2",
                                    "--subset", "1000", "--out", "run"),
                         cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert two.returncode == 0, two.stderr
    assert "data-parallel over 2 processes (gloo)" in two.stdout and two.stdout.count("done:") == 1
    assert RunFolder.open(tmp_path / "run").read_config().model == f"{tmp_path / 'net.py'}:Net"
    # without --nproc, the resumed run keeps its own 2 processes (config.json's), not the flag's default of 1
    resumed = subprocess.run([sys.executable, "-m", "handgrad", "train", "--resume", str(tmp_path / "run"),
                              "--epochs", "2", "--no-progress"],
                             capture_output=True, text=True, timeout=180)
    assert resumed.returncode == 0, resumed.stderr
    assert "data-parallel over 2 processes (gloo)" in resumed.stdout
    assert RunFolder.open(tmp_path / "run").load_checkpoint()[1]["epoch"] == 2


def descendant_with_rank(parent, rank, timeout=60):
    """The pid of a process under `parent` whose environment says RANK=rank (a torchrun-style worker)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
                environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == parent and f"RANK={rank}".encode() in environ:
                return int(pid)
        time.sleep(0.2)
    raise AssertionError(f"no rank {rank} under pid {parent}")


def wait_for_checkpoint(folder, procs, timeout=90):
    deadline = time.time() + timeout
    while not (folder / "checkpoint.safetensors").exists():
        assert time.time() < deadline, "no checkpoint appeared"
        assert all(p.poll() is None for p in procs), "a rank ended early"
        time.sleep(0.1)


def disturb_rank_1(tmp_path, npz, timeout, disturb):
    """Train with 2 ranks into tmp_path/run until a checkpoint exists, `disturb` rank 1's process, and wait for
    rank 0 to stop: (its exit code, seconds it took, its stderr lines)."""
    procs = spawn_ranks(train_argv(npz, "--epochs", "500", "--save-every", "10", "--out", str(tmp_path / "run"),
                                   "--no-check", "--dist-timeout", str(timeout)), tmp_path)
    try:
        wait_for_checkpoint(tmp_path / "run", procs)
        time.sleep(0.3)
        disturb(procs[1])
        start = time.time()
        code = procs[0].wait(timeout + 30)
        waited = time.time() - start
    finally:
        for p in procs:
            p.kill()
    return code, waited, (tmp_path / "rank0.err").read_text().strip().splitlines()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_killing_a_rank_stops_the_other_with_one_line_and_the_checkpoint_survives(tmp_path, npz):
    folder = tmp_path / "run"
    timeout = 15
    code, waited, err = disturb_rank_1(tmp_path, npz, timeout, lambda p: p.kill())
    assert code == 1
    assert waited < timeout + 10
    assert re.fullmatch(r"handgrad: error: rank 1 .*", err[-1]), err[-5:]
    assert len([line for line in err if line.startswith("handgrad: error:")]) == 1
    tensors, meta = RunFolder.open(folder).load_checkpoint()  # the latest checkpoint is whole
    assert meta["batch"] % 10 == 0 and tensors


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_hung_rank_stops_the_other_after_the_timeout(tmp_path, npz):
    timeout = 6
    code, waited, err = disturb_rank_1(tmp_path, npz, timeout, lambda p: os.kill(p.pid, signal.SIGSTOP))  # hung
    assert code == 1 and timeout - 1 < waited < timeout + 15
    assert re.fullmatch(r"handgrad: error: rank 1 is not responding: .*", err[-1]), err[-5:]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_the_nproc_launcher_names_the_rank_that_died(tmp_path, npz):
    launcher = subprocess.Popen(train_argv(npz, "--epochs", "500", "--save-every", "10", "--out",
                                           str(tmp_path / "run"), "--no-check", "--nproc", "2"),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_checkpoint(tmp_path / "run", [launcher])
        os.kill(descendant_with_rank(launcher.pid, 1), signal.SIGKILL)
        _, err = launcher.communicate(timeout=60)
    finally:
        launcher.kill()
    assert launcher.returncode == 1
    assert err.strip().splitlines()[-1] == "handgrad: error: rank 1 failed (killed by SIGKILL); the launcher " \
                                           "stopped rank 0"


def start_launcher(tmp_path, npz, *extra):
    """`handgrad train --nproc 2` on a small model for many epochs, checkpointing often; stderr in a file."""
    with open(tmp_path / "launcher.err", "w") as err:
        return subprocess.Popen(train_argv(npz, "--epochs", "500", "--save-every", "10", "--out",
                                           str(tmp_path / "run"), "--no-check", "--nproc", "2", "--subset", "1000",
                                           "--hidden", "16", *extra), stdout=subprocess.DEVNULL, stderr=err)


def gone(pid):
    """Whether the process has ended (a zombie nobody reaps has ended too)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def kill_all(pids):
    """Leave nothing behind: wake a stopped process, then kill it."""
    for pid in pids:
        for sig in (signal.SIGCONT, signal.SIGKILL):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass


def wait_gone(pids, timeout):
    deadline = time.time() + timeout
    while not all(gone(pid) for pid in pids):
        if time.time() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_the_nproc_launcher_ends_soon_after_a_hung_rank_and_names_the_cause(tmp_path, npz):
    timeout = 5
    launcher, ranks = start_launcher(tmp_path, npz, "--dist-timeout", str(timeout)), []
    try:
        wait_for_checkpoint(tmp_path / "run", [launcher])
        ranks = [descendant_with_rank(launcher.pid, r) for r in range(2)]
        os.kill(ranks[1], signal.SIGSTOP)  # hung: SIGTERM does nothing to it
        start = time.time()
        code = launcher.wait(timeout + 60)
        waited = time.time() - start
        assert wait_gone(ranks, 3)
    finally:
        kill_all([launcher.pid, *ranks])
    err = (tmp_path / "launcher.err").read_text().strip().splitlines()
    assert code == 1 and waited < timeout + 5, (waited, err[-3:])
    last = err[-1]  # rank 0 says why it stopped, then the launcher names the cause, not its own kill
    assert last.startswith("handgrad: error: ") and "killed by SIGKILL" not in last, err[-3:]
    assert last == "handgrad: error: rank 0 failed (exit code 1; its error line is above); rank 1 was stopped " \
                   "(SIGSTOP) and did not respond: the launcher killed it", err[-3:]
    assert re.fullmatch(r"handgrad: error: rank 1 is not responding: .*", err[-2]), err[-3:]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_the_ranks_die_with_a_killed_nproc_launcher(tmp_path, npz):
    launcher, ranks = start_launcher(tmp_path, npz), []
    try:
        wait_for_checkpoint(tmp_path / "run", [launcher])
        ranks = [descendant_with_rank(launcher.pid, r) for r in range(2)]
        launcher.kill()  # no chance to stop them: the parent-death signal does
        launcher.wait(10)
        assert wait_gone(ranks, 3), "ranks outlived the launcher"
    finally:
        kill_all([launcher.pid, *ranks])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigterm_to_the_nproc_launcher_stops_its_ranks_first(tmp_path, npz):
    launcher, ranks = start_launcher(tmp_path, npz), []
    try:
        wait_for_checkpoint(tmp_path / "run", [launcher])
        ranks = [descendant_with_rank(launcher.pid, r) for r in range(2)]
        launcher.terminate()
        assert launcher.wait(10) == -signal.SIGTERM  # as a single process would end
        assert all(gone(pid) for pid in ranks), "ranks outlived the launcher"  # gone before it ended
    finally:
        kill_all([launcher.pid, *ranks])


@pytest.mark.skipif(locate("fashion-mnist") is None, reason="Fashion-MNIST not installed")
def test_bad_distributed_flags():
    bad = subprocess.run([sys.executable, "-m", "handgrad", "train", "--nproc", "0"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip().startswith("handgrad: error: --nproc must be from 1 to ")
    twin = subprocess.run([sys.executable, "-m", "handgrad", "train", "--nproc", "2", "--torch-twin"],
                          capture_output=True, text=True)
    assert twin.returncode == 2 and "--torch-twin trains in one process" in twin.stderr


def test_a_rank_that_never_comes_stops_the_others_with_one_line(tmp_path, npz):
    port = free_port()
    start = time.time()
    alone = subprocess.run(train_argv(npz, "--dist-timeout", "3"), env=rank_env(0, 2, port), capture_output=True,
                           text=True, timeout=60)
    assert alone.returncode == 1 and time.time() - start < 30
    last = alone.stderr.strip().splitlines()[-1]  # (torch's C++ layer may log its own warnings before it)
    assert re.fullmatch(r"handgrad: error: rank 0 could not join the group of 2 ranks at 127\.0\.0\.1:\d+ within "
                        r"3 s: .*", last), alone.stderr[-1000:]


@pytest.mark.parametrize("shape", ["reused", "shared across the boundary", "tied across the boundary"])
def test_gradient_sync_waits_for_a_recompute_whose_body_holds_the_parameter(shape):
    """A Recompute lets its body's calls go in forward: the bucketed all_reduce must still wait for the body's
    parameters until the Recompute's backward has run the body again (reuse, a layer shared across the boundary,
    an Embedding inside tied to a TiedLinear outside): the same gradients as without the sync."""
    import torch.distributed as dist

    from handgrad.distributed import GradSync

    class Waits:
        def wait(self, work, what):
            work.wait()

    def gradients(recompute, sync):
        torch.manual_seed(0)
        if shape == "tied across the boundary":
            emb = hg.Embedding(5, 4, dtype=torch.float64)
            body = hg.Sequential(emb, hg.Tanh())
            outer = hg.layers.TiedLinear(emb.weight)
            model = hg.Sequential(hg.layers.Recompute(body) if recompute else body, outer,
                                  hg.Flatten(1, -1), hg.Linear(15, 2, dtype=torch.float64))
            x = torch.randint(0, 5, (3, 3))
        else:
            body = hg.Sequential(hg.Linear(4, 4, dtype=torch.float64), hg.Tanh())
            r = hg.layers.Recompute(body) if recompute else body
            second = r if shape == "reused" else body[0]
            model = hg.Sequential(r, second, hg.Linear(4, 2, dtype=torch.float64))
            x = torch.randn(3, 4, dtype=torch.float64)
        step = hg.WithLoss(model, hg.CrossEntropyLoss())
        y = torch.tensor([0, 1, 1])
        if sync:
            s = GradSync(Waits(), model.parameters(), bucket_mb=1e-6, model=model)  # a bucket per parameter
            s.begin(1.0)
            with s.overlapping():
                step(x, y)
                step.backward(needs_input_grad=False)
            s.finish()
        else:
            step(x, y)
            step.backward(needs_input_grad=False)
        return [p.g.clone() for p in model.parameters()]

    if not dist.is_initialized():
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    plain = gradients(False, False)
    for got in (gradients(True, False), gradients(True, True)):
        for a, b in zip(plain, got):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_data_parallel_cnn_resumed_mid_epoch_ends_bit_for_bit_as_one_never_stopped(tmp_path, npz):
    """Each rank's BatchNorm running statistics follow its own slices; a checkpoint between epochs holds rank 0's
    only. The ranks average them at each checkpoint, so resuming from one (every rank loads rank 0's) goes on
    exactly as the run that was never stopped: the same weights and running statistics, bit for bit."""
    args = ["--model", "cnn", "--channels", "4,8", "--epochs", "2", "--subset", "1200", "--batch-size", "64",
            "--save-every", "3", "--no-check"]
    whole = subprocess.run(train_argv(npz, *args, "--nproc", "2", "--out", str(tmp_path / "whole")),
                           capture_output=True, text=True, timeout=300)
    assert whole.returncode == 0, whole.stderr
    folder = tmp_path / "stopped"
    procs = spawn_ranks(train_argv(npz, *args, "--out", str(folder)), tmp_path)
    try:
        deadline = time.time() + 120
        while True:  # stop both ranks as soon as the latest checkpoint is one from the middle of an epoch
            assert time.time() < deadline and all(p.poll() is None for p in procs), "no mid-epoch checkpoint"
            if (folder / "checkpoint.safetensors").exists():
                try:
                    meta = RunFolder.open(folder).load_checkpoint()[1]
                except Exception:  # noqa: BLE001 - being written
                    meta = {"batch": 0}
                if meta["batch"] != 0:
                    break
            time.sleep(0.02)
    finally:
        for p in procs:
            p.kill()
            p.wait()
    resumed = subprocess.run([sys.executable, "-m", "handgrad", "train", "--resume", str(folder), "--nproc", "2",
                              "--no-progress"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    a, meta_a = RunFolder.open(tmp_path / "whole").load_checkpoint()
    b, meta_b = RunFolder.open(folder).load_checkpoint()
    assert meta_a["epoch"] == meta_b["epoch"] == 2
    assert any(k.endswith("running_mean") for k in a)
    for k in a:
        if k.startswith("model."):
            assert torch.equal(a[k], b[k]), k


def test_the_first_batch_check_runs_whole_where_rank_0_has_no_share_of_it(tmp_path, npz):
    """One training sample, 2 ranks: rank 0's slice of the first batch is empty; the gradient check takes the
    whole batch (it failed on a gradient of shape [0, 4, 3, 3] for a CNN, and passed vacuously for an MLP)."""
    run = subprocess.run(train_argv(npz, "--subset", "1", "--bs", "4", "--nproc", "2", "--model", "cnn",
                                    "--channels", "4,8", "--epochs", "1"),
                         capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr
    assert "each global batch of 1 split 0-1 per rank" in run.stdout  # (not of 4: there is one sample)
    line = next(s for s in run.stdout.splitlines() if "gradient check on the first batch" in s)
    assert re.search(r"input and \d+ parameters match autograd \(max rel err (\d\.\de-\d+)\)", line), line
    assert "max rel err 0.0e+00" not in line  # a real comparison, not an empty one


@pytest.mark.slow
def test_a_data_parallel_model_with_dropout_resumes_each_rank_from_its_own_random_state(tmp_path, npz):
    """Each rank draws its own dropout masks from its own generator; over an uneven last slice (999 samples, batch
    64: 20 and 19) the ranks draw different numbers of values, so their generators part. A checkpoint holds every
    rank's state and each rank resumes from its own: resumed runs end bit for bit as one never stopped (before,
    every rank took rank 0's state, and rank 1's masks changed)."""
    (tmp_path / "net.py").write_text(
        "import handgrad as hg\n\n\nclass Net(hg.Sequential):\n    def __init__(self):\n"
        "        super().__init__(hg.Linear(784, 32), hg.ReLU(), hg.Dropout(0.5), hg.Linear(32, 10))\n")
    args = ["net.py:Net", "--subset", "999", "--bs", "64", "--nproc", "2", "--schedule", "constant", "--no-check"]
    whole = subprocess.run(train_argv(npz, *args, "--epochs", "2", "--out", "whole"), cwd=tmp_path,
                           capture_output=True, text=True, timeout=180)
    assert whole.returncode == 0, whole.stderr
    first = subprocess.run(train_argv(npz, *args, "--epochs", "1", "--out", "stopped"), cwd=tmp_path,
                           capture_output=True, text=True, timeout=180)
    assert first.returncode == 0, first.stderr
    resumed = subprocess.run([sys.executable, "-m", "handgrad", "train", "--resume", "stopped", "--epochs", "2",
                              "--no-progress"], cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert resumed.returncode == 0, resumed.stderr
    a, meta_a = RunFolder.open(tmp_path / "whole").load_checkpoint()
    b, meta_b = RunFolder.open(tmp_path / "stopped").load_checkpoint()
    assert meta_a["epoch"] == meta_b["epoch"] == 2
    assert {k for k in a if k.startswith("rng.cpu")} == {"rng.cpu", "rng.cpu.rank1"}
    assert not torch.equal(a["rng.cpu"], a["rng.cpu.rank1"])  # the ranks' generators did part
    for k in a:
        assert torch.equal(a[k], b[k]), k
