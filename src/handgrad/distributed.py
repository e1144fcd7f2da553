"""Data-parallel training on torch.distributed: gloo on CPU, NCCL on GPU, launched by torchrun (one or many
hosts) or by `handgrad train --nproc N` (torch's elastic launcher on this machine).

Each rank trains a copy of the model on its slice of every global batch (see `DataLoader(rank=,
world_size=)`); its hand-written gradients, weighted by its share of the batch, are summed across ranks
with `all_reduce`, so every rank steps with the gradient of the whole global batch:

    g = sum_r (n_r / N) g_r     (g_r: rank r's mean gradient over its n_r samples, N = sum_r n_r)

`GradSync` packs the gradients into buckets (several parameters per call) and starts each bucket's
all_reduce as soon as backward has produced its gradients, so communication overlaps the rest of backward.

Failures: every collective runs under a timeout (`--dist-timeout`, 60 s by default). A rank that fails
writes its one-line error into the rendezvous store; every rank keeps a heartbeat counter there. When a
collective fails or times out, the rank asks the store which peer is to blame and stops with one line:
"rank 1 failed: ...", "rank 1 is not responding (killed, crashed or stopped)" or "rank 1 did not join
... (hung)".
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Iterator

import torch
import torch.distributed as dist
from torch import Tensor

from .errors import TrainingError
from .calls import Call
from .module import Module, Parameter

DEFAULT_TIMEOUT_S = 60.0
BUCKET_MB = 25.0  # as torch's DistributedDataParallel
HEARTBEAT_S = 0.5


@dataclass
class Dist:
    """This process's place in the group, and the store used for heartbeats and error reports."""

    rank: int
    world_size: int
    local_rank: int
    store: dist.Store
    timeout: float
    device: torch.device
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # ------------------------------------------------------------- collectives
    def all_reduce_(self, t: Tensor, what: str = "all_reduce") -> Tensor:
        """Sum `t` over all ranks in place (blocking), with failure diagnosis."""
        self.wait(dist.all_reduce(t, async_op=True), what)
        return t

    def broadcast_(self, t: Tensor, what: str = "broadcast") -> Tensor:
        self.wait(dist.broadcast(t, src=0, async_op=True), what)
        return t

    def barrier(self, what: str = "barrier") -> None:
        self.all_reduce_(torch.zeros(1, device=self.device), what)

    def wait(self, work: dist.Work, what: str) -> None:
        try:
            work.wait()
        except Exception as e:  # gloo/NCCL raise RuntimeError subclasses; any of them means the group broke
            raise TrainingError(self.diagnose(what, e)) from None

    # --------------------------------------------------------------- failures
    def report(self, message: str) -> None:
        """Tell the other ranks why this one stops (best effort: the store may be gone)."""
        try:
            self.store.set(f"error/{self.rank}", message.splitlines()[0][:500])
        except Exception:
            pass

    def diagnose(self, what: str, error: Exception) -> str:
        """One line naming the rank to blame for a failed collective, read from the store."""
        others = [r for r in range(self.world_size) if r != self.rank]
        try:
            self.store.set_timeout(timedelta(seconds=5))
            for r in others:
                if self.store.check([f"error/{r}"]):
                    return f"rank {r} failed: {self.store.get(f'error/{r}').decode()} (rank {self.rank} stops too)"
            before = {r: self._beats(r) for r in others}
            time.sleep(4 * HEARTBEAT_S + 1.0)
            silent = [r for r in others if self._beats(r) == before[r]]
        except Exception as e:
            return (f"the rendezvous store is unreachable ({type(e).__name__}): the rank hosting it (usually rank 0) "
                    f"is gone; {what} failed on rank {self.rank}")
        if silent:
            return (f"rank {silent[0]} is not responding: no heartbeat for {4 * HEARTBEAT_S + 1.0:.0f} s (killed, "
                    f"crashed or stopped); {what} failed on rank {self.rank}")
        first = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        return (f"{what} failed on rank {self.rank} while every peer is alive (a rank is hung or the timeout of "
                f"{self.timeout:.0f} s is too short): {first}")

    def _beats(self, rank: int) -> int:
        key = f"heartbeat/{rank}"
        return int(self.store.get(key)) if self.store.check([key]) else -1

    def close(self) -> None:
        self._stop.set()
        if dist.is_initialized():
            dist.destroy_process_group()


def _store(rank: int, world_size: int, timeout: float) -> dist.Store:
    """A client of the launcher's store (torchrun, --nproc), or the store itself on rank 0 otherwise."""
    addr, port = os.environ.get("MASTER_ADDR", "127.0.0.1"), int(os.environ.get("MASTER_PORT", "29500"))
    agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() == "true"
    store = dist.TCPStore(addr, port, world_size, is_master=rank == 0 and not agent,
                          timeout=timedelta(seconds=timeout), wait_for_workers=False)
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return dist.PrefixStore(f"handgrad/{attempt}/", store)


def init_from_env(device: str = "cpu", timeout: float = DEFAULT_TIMEOUT_S) -> Dist | None:
    """Join the process group described by torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
    MASTER_PORT); None when this process runs alone."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return None
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    dev = torch.device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    try:
        store = _store(rank, world_size, timeout)
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", store=store, rank=rank,
                                world_size=world_size, timeout=timedelta(seconds=timeout))
    except Exception as e:  # a rank that never came, an unreachable MASTER_ADDR, a port in use
        where = f"{os.environ.get('MASTER_ADDR', '127.0.0.1')}:{os.environ.get('MASTER_PORT', '29500')}"
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise TrainingError(f"rank {rank} could not join the group of {world_size} ranks at {where} within "
                            f"{timeout:.0f} s: {first}") from None
    d = Dist(rank, world_size, local_rank, store, timeout, dev)
    beat_store = _store(rank, world_size, timeout) if rank else store  # a client of its own for the thread

    def heartbeat() -> None:
        while not d._stop.wait(HEARTBEAT_S):
            try:
                beat_store.add(f"heartbeat/{rank}", 1)
            except Exception:
                return

    beat_store.add(f"heartbeat/{rank}", 1)
    threading.Thread(target=heartbeat, name="handgrad-heartbeat", daemon=True).start()
    return d


def broadcast_module(d: Dist, model: Module) -> None:
    """Every rank starts from rank 0's parameters and buffers."""
    for t in [*model.parameters(), *(b for _, b in model.named_buffers())]:
        d.broadcast_(t.data, "broadcasting the initial weights")


def average_buffers(d: Dist, model: Module) -> None:
    """Average floating-point buffers (BatchNorm running statistics, computed per rank) over the ranks."""
    for _, b in model.named_buffers():
        if b.is_floating_point():
            d.all_reduce_(b, "averaging BatchNorm statistics").div_(d.world_size)


class GradSync:
    """Sums weighted gradients over the ranks, in buckets, overlapping backward.

    Per step: `begin(weight)`; `ready(module)` as backward finishes each module (or `ready_all()`), which
    starts a bucket's all_reduce once all its parameters are ready; `finish()` waits and writes the summed
    gradients into every parameter's `.g`. `seconds` accumulates the time spent packing, launching and
    waiting (the all-reduce share of the step), `calls` the all_reduce calls.
    """

    def __init__(self, d: Dist, params: Iterable[Parameter], bucket_mb: float | None = None,
                 overlap: bool = True, model: Module | None = None) -> None:
        self.d, self.overlap = d, overlap
        # a parameter's gradient is final once no module holding it has a call left to backpropagate
        # (a module used twice, tied weights); without the model, once its own module's backward ran
        self.owners: dict[int, list[Module]] = {}
        if model is not None:
            for m in model.modules():
                for _, p in m._own_parameters():
                    self.owners.setdefault(id(p), []).append(m)
        bucket_mb = BUCKET_MB if bucket_mb is None else bucket_mb
        self.params = list(params)
        # buckets in reverse order: backward produces the last layers' gradients first
        self.buckets: list[list[Parameter]] = [[]]
        size = 0
        for p in reversed(self.params):
            nbytes = p.numel() * p.element_size()
            if self.buckets[-1] and size + nbytes > bucket_mb * 2**20:
                self.buckets.append([])
                size = 0
            self.buckets[-1].append(p)
            size += nbytes
        self.where = {id(p): b for b, ps in enumerate(self.buckets) for p in ps}
        self.flat = [torch.empty(sum(p.numel() for p in ps), dtype=ps[0].dtype, device=ps[0].device)
                     for ps in self.buckets] if self.params else []
        self.seconds, self.calls = 0.0, 0

    def begin(self, weight: float) -> None:
        self.weight = weight
        self.first_call = next(Call.count)  # calls of this step are numbered from here
        self.missing = [len(ps) for ps in self.buckets]
        self.works: list[dist.Work | None] = [None] * len(self.buckets)
        self.seen: set[int] = set()

    def ready(self, module: Module) -> None:
        """Backward has finished `module`: its own parameters' gradients are final for this step."""
        for _, p in module._own_parameters():
            b = self.where.get(id(p))
            if any(_has_pending(m, self.first_call) for m in self.owners.get(id(p), (module,))):
                continue
            if b is not None and id(p) not in self.seen:
                self.seen.add(id(p))
                self.missing[b] -= 1
                if self.missing[b] == 0 and self.overlap:
                    self._launch(b)

    def ready_all(self) -> None:
        for b in range(len(self.buckets)):
            if self.works[b] is None:
                self._launch(b)

    def _launch(self, b: int) -> None:
        start = time.perf_counter()
        flat, offset = self.flat[b], 0
        for p in self.buckets[b]:  # pack w * g (zeros for a parameter that got no gradient)
            view = flat[offset:offset + p.numel()].view_as(p)
            if p.g is None:
                view.zero_()
            else:
                torch.mul(p.g, self.weight, out=view)
            offset += p.numel()
        self.works[b] = dist.all_reduce(flat, async_op=True)
        self.calls += 1
        self.seconds += time.perf_counter() - start

    def finish(self) -> None:
        self.ready_all()
        start = time.perf_counter()
        for b, work in enumerate(self.works):
            self.d.wait(work, "the gradient all_reduce")
            flat, offset = self.flat[b], 0
            for p in self.buckets[b]:
                p.g = p.grad_buffer().copy_(flat[offset:offset + p.numel()].view_as(p))
                offset += p.numel()
        self.seconds += time.perf_counter() - start

    @contextmanager
    def overlapping(self) -> Iterator[None]:
        """Inside, every module's backward reports to `ready` as it finishes."""
        hooks = Module._post_backward_hooks
        hooks.append(self.ready)
        try:
            yield
        finally:
            hooks.remove(self.ready)


def _has_pending(module: Module, since: int) -> bool:
    """Whether `module` has a call made since call number `since` whose backward has not run yet."""
    return any((c := ref()) is not None and not c.done and c.serial >= since
               for ref in module.__dict__.get("_pending", ()))


def launch(nproc: int, argv: list[str], timeout: float, log: Callable[[str], None] = print) -> int:
    """Run `python -m handgrad <argv>` in `nproc` processes on this machine under torch's elastic launcher (what
    torchrun runs); return 0, or raise TrainingError naming the first rank that failed and why."""
    import logging
    import sys
    import uuid

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)  # our one line says it
    if "OMP_NUM_THREADS" not in os.environ:  # share the cores instead of oversubscribing them
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // nproc))
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")  # the ranks' own one-line errors say what failed
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=str(uuid.uuid4()),
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.2,
                          rdzv_configs={"timeout": int(timeout)})
    try:
        elastic_launch(config, sys.executable)("-m", "handgrad", *argv)
    except ChildFailedError as e:
        # the cause first: a rank killed by a signal other than the launcher's SIGTERM, then one that ended
        # with an error, then one the launcher stopped
        def cause(item):
            rank, f = item
            group = 0 if f.exitcode < 0 and f.signal_name() != "SIGTERM" else 1 if f.exitcode > 0 else 2
            return group, f.timestamp, rank

        rank, failure = min(e.failures.items(), key=cause)
        why = f"killed by {failure.signal_name()}" if failure.exitcode < 0 else \
            f"exit code {failure.exitcode}; its error line is above"
        raise TrainingError(f"rank {rank} failed ({why}); the other ranks were stopped") from None
    return 0
