"""Data-parallel throughput: training images per second with 1 and N processes on this machine, and the share of
the step spent on the gradient all_reduce (packing, launching and waiting; communication hidden behind backward
does not count), with and without overlapping it with backward.

    python benchmarks/distributed.py [--model mlp|cnn] [--nproc 2] [--steps 200] [--bs 64]

Each configuration is its own group of processes started by torch's elastic launcher (as `handgrad train
--nproc N`), on standardised Fashion-MNIST, with the machine's cores shared among the ranks.
"""

from __future__ import annotations

import argparse
import os
import time
import uuid

import torch


def worker(model_name: str, steps: int, bs: int, overlap: bool, bucket_mb: float | None) -> dict:
    import handgrad.distributed
    from handgrad.data import DataLoader, load_dataset
    from handgrad.distributed import init_from_env
    from handgrad.models import cnn, mlp
    from handgrad.optim import SGD
    from handgrad.losses import CrossEntropyLoss
    from handgrad.train.learner import Callback, CancelFit, Learner

    if bucket_mb is not None:
        handgrad.distributed.BUCKET_MB = bucket_mb
    d = init_from_env("cpu")
    data = load_dataset("fashion-mnist", allow_download=False).normalized()
    torch.manual_seed(0)
    model = cnn(10, (16, 32, 64)) if model_name == "cnn" else mlp(784, [50], 10)
    momentum = 0.9 if model_name == "cnn" else 0.0
    dl = DataLoader(data.x_train, data.y_train, bs, shuffle=True, seed=42, rank=d.rank if d else 0,
                    world_size=d.world_size if d else 1)

    class Clock(Callback):
        warmup = 5

        def before_batch(self, learn: Learner) -> None:
            if learn.t == self.warmup:
                self.start = time.perf_counter()
                if learn.sync is not None:
                    learn.sync.seconds, learn.sync.calls = 0.0, 0

        def after_batch(self, learn: Learner) -> None:
            if learn.t == self.warmup + steps:
                self.seconds = time.perf_counter() - self.start
                raise CancelFit

    clock = Clock()
    learn = Learner(model, CrossEntropyLoss(), SGD(model.parameters(), 0.05, momentum=momentum), dl,
                    data.x_valid, data.y_valid, 10, [clock], dist=d)
    if learn.sync is not None:
        learn.sync.overlap = overlap
    learn.fit(1 + (clock.warmup + steps) // len(dl))
    result = {"images_per_s": steps * bs / clock.seconds,
              "allreduce_share": learn.sync.seconds / clock.seconds if learn.sync else 0.0,
              "allreduce_calls": learn.sync.calls / steps if learn.sync else 0.0}
    if d is not None:
        d.close()
    return result


def launch(nproc: int, *args) -> dict:
    if nproc == 1:
        return worker(*args)
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=str(uuid.uuid4()),
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0)
    return elastic_launch(config, worker)(*args)[0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="mlp", choices=["mlp", "cnn"])
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 400 mlp, 20 cnn)")
    p.add_argument("--bs", type=int, default=None, help="global batch (default 64 mlp, 128 cnn)")
    p.add_argument("--bucket-mb", type=float, default=None, help="gradient bucket size (default 25 MiB)")
    args = p.parse_args()
    steps = args.steps or (400 if args.model == "mlp" else 20)
    bs = args.bs or (64 if args.model == "mlp" else 128)
    cores = os.cpu_count() or 1
    print(f"{args.model}, global batch {bs}, {steps} timed steps, {cores} cores shared by the ranks, gloo")
    print(f"{'processes':>9s} {'overlap':>8s} {'images/s':>10s} {'vs 1':>6s} {'all_reduce share':>17s} "
          f"{'calls/step':>10s}")
    base = None
    for nproc, overlap in [(1, False), (args.nproc, True), (args.nproc, False)]:
        os.environ["OMP_NUM_THREADS"] = str(max(1, cores // nproc))
        torch.set_num_threads(max(1, cores // nproc))
        r = launch(nproc, args.model, steps, bs, overlap, args.bucket_mb)
        base = base or r["images_per_s"]
        print(f"{nproc:9d} {('yes' if overlap else 'no') if nproc > 1 else '-':>8s} {r['images_per_s']:10.0f} "
              f"{r['images_per_s'] / base:5.2f}x {100 * r['allreduce_share']:16.1f}% {r['allreduce_calls']:10.1f}")


if __name__ == "__main__":
    main()
