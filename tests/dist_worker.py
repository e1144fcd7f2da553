"""One data-parallel rank for tests/test_distributed.py (or the single-process reference when WORLD_SIZE is unset):
trains an MLP for one epoch of 50 batches and saves the first step's gradients and the final weights."""

import sys

import torch

import handgrad as hg
from handgrad.data import DataLoader
from handgrad.distributed import init_from_env
from handgrad.models import mlp
from handgrad.train.learner import Callback, Learner


def blobs(n, seed=0):
    gen = torch.Generator().manual_seed(seed)
    centers = 2 * torch.randn(3, 20, generator=gen)
    y = torch.randint(0, 3, (n,), generator=gen)
    return centers[y] + torch.randn(n, 20, generator=gen), y


class FirstGradients(Callback):
    def __init__(self):
        self.grads = None

    def after_backward(self, learn):
        if self.grads is None:
            self.grads = [p.g.clone() for p in learn.model.parameters()]


def train(path: str, n: int = 1600, bs: int = 32, momentum: float = 0.0):
    d = init_from_env("cpu", timeout=30)
    torch.manual_seed(0)
    model = mlp(20, [16, 8], 3)
    x, y = blobs(n)
    xv, yv = blobs(200, seed=1)
    dl = DataLoader(x, y, bs, shuffle=True, seed=1, rank=d.rank if d else 0, world_size=d.world_size if d else 1)
    capture = FirstGradients()
    learn = Learner(model, hg.CrossEntropyLoss(), hg.SGD(model.parameters(), lr=0.1, momentum=momentum), dl, xv, yv, 3,
                    [capture], fused=path == "fused", dist=d)
    learn.fit(1)
    return d, capture.grads, model.state_dict(), learn.sync.calls if learn.sync else 0


if __name__ == "__main__":
    out, path, n, momentum = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    if len(sys.argv) > 5:  # bucket size in MiB (small: several all_reduce calls per step)
        import handgrad.distributed
        handgrad.distributed.BUCKET_MB = float(sys.argv[5])
    d, grads, weights, calls = train(path, n, momentum=momentum)
    if d is None or d.is_main:
        torch.save({"grads": grads, "weights": weights, "calls": calls}, out)
    if d is not None:
        d.close()
