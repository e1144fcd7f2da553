"""One CNN training step (forward, loss, backward, SGD update): handgrad vs the same model with torch autograd.

Same weights, same batch, same thread count, in one process; the two are timed in
alternating rounds and the medians compared. handgrad's step is the one `handgrad train` takes
(`handgrad.training_step`: the fused CNN step, `handgrad.fused_cnn`), with the same allocator setting.

    python benchmarks/cnn_step.py [--bs 128] [--channels 16,32,64] [--rounds 7] [--steps 10] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import handgrad as hg
from handgrad.interop import to_torch
from handgrad.models import cnn


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bs", type=int, default=128)
    p.add_argument("--channels", default="16,32,64")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    device = torch.device(args.device)
    hg.keep_freed_memory()
    torch.manual_seed(0)
    model = cnn(10, tuple(int(c) for c in args.channels.split(","))).to(device)
    twin = to_torch(model)
    step = hg.training_step(model, hg.CrossEntropyLoss(), hg.SGD(model.parameters(), lr=0.01))
    topt = torch.optim.SGD(twin.parameters(), lr=0.01)
    x = torch.randn(args.bs, 784, device=device)
    y = torch.randint(0, 10, (args.bs,), device=device)

    def handgrad_step() -> None:
        step(x, y)

    def torch_step() -> None:
        loss = F.cross_entropy(twin(x), y)
        topt.zero_grad()
        loss.backward()
        topt.step()

    def timed(fn) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(args.steps):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - start) / args.steps * 1e3

    for fn in (handgrad_step, torch_step):  # warm-up
        timed(fn)
    times: dict[str, list[float]] = {"handgrad": [], "torch autograd": []}
    for _ in range(args.rounds):
        times["handgrad"].append(timed(handgrad_step))
        times["torch autograd"].append(timed(torch_step))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"CNN {args.channels} training step, batch {args.bs}, {device}, {torch.get_num_threads()} threads, "
          f"median of {args.rounds} rounds x {args.steps} steps")
    for k, v in med.items():
        print(f"  {k:15s} {v:8.2f} ms/step   (rounds: {', '.join(f'{t:.1f}' for t in times[k])})")
    print(f"  ratio handgrad / torch autograd: {med['handgrad'] / med['torch autograd']:.2f}x")


if __name__ == "__main__":
    main()
