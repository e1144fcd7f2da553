"""Data-parallel training on torch.distributed: gloo on CPU, NCCL on GPU, launched by torchrun (one or many
hosts) or by `handgrad train --nproc N` (`launch`: a small launcher of its own on this machine).

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
... (hung)". The `--nproc` launcher then stops the other ranks (SIGTERM, SIGKILL for one that is stopped or does
not end) and ends with one line naming the first rank that failed and the ranks it stopped; its ranks die with
it (parent-death signal; SIGTERM and SIGINT passed on).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
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

from .errors import TrainingError, UsageError
from .calls import Call
from .module import Module, Parameter

DEFAULT_TIMEOUT_S = 60.0
BUCKET_MB = 25.0  # as torch's DistributedDataParallel
HEARTBEAT_S = 0.5
SILENT_S = 4 * HEARTBEAT_S + 1.0  # a peer whose heartbeat stood still this long is not responding


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
    # while a collective is near its timeout, the heartbeat thread watches the peers' heartbeats, so that a
    # silent (hung) peer is named as soon as the timeout ends: peer -> (its count, since when it stands still)
    _waiting: float | None = field(default=None, repr=False)  # when the pending wait began (monotonic)
    _seen: dict[int, tuple[int, float]] = field(default_factory=dict, repr=False)

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
        self._waiting = time.monotonic()
        try:
            work.wait()
        except Exception as e:  # gloo/NCCL raise RuntimeError subclasses; any of them means the group broke
            raise TrainingError(self.diagnose(what, e)) from None
        finally:
            self._waiting = None

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
            seen, now = dict(self._seen), time.monotonic()  # already silent while the collective waited
            silent = [r for r in others if r in seen and now - seen[r][1] >= SILENT_S
                      and self._beats(r) == seen[r][0]]
            if not silent:
                before = {r: self._beats(r) for r in others}
                time.sleep(SILENT_S)
                silent = [r for r in others if self._beats(r) == before[r]]
        except Exception as e:
            return (f"the rendezvous store is unreachable ({type(e).__name__}): the process hosting it (the "
                    f"launcher, or rank 0) is gone; {what} failed on rank {self.rank}")
        if silent:
            return (f"rank {silent[0]} is not responding: no heartbeat for {SILENT_S:.0f} s (killed, "
                    f"crashed or stopped); {what} failed on rank {self.rank}")
        first = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        return (f"{what} failed on rank {self.rank} while every peer is alive (a rank is hung or the timeout of "
                f"{self.timeout:.0f} s is too short): {first}")

    def _beats(self, rank: int, store: dist.Store | None = None) -> int:
        key, store = f"heartbeat/{rank}", self.store if store is None else store
        return int(store.get(key)) if store.check([key]) else -1

    def _watch_peers(self, store: dist.Store) -> None:
        """From the heartbeat thread: in the last 2 * SILENT_S of a wait's timeout (never in a healthy run, so
        no load on the store), note since when each peer's heartbeat stands still."""
        since = self._waiting
        if since is None or time.monotonic() - since < max(2 * HEARTBEAT_S, self.timeout - 2 * SILENT_S):
            if self._seen:
                self._seen = {}
            return
        for r in range(self.world_size):
            if r != self.rank:
                count, old = self._beats(r, store), self._seen.get(r)
                if old is None or old[0] != count:
                    self._seen[r] = (count, time.monotonic())

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


def _env_int(name: str, default: str) -> int:
    text = os.environ.get(name, default)
    try:
        return int(text)
    except ValueError:
        raise UsageError(f"the environment variable {name} must be an integer, got {text!r}") from None


def init_from_env(device: str = "cpu", timeout: float = DEFAULT_TIMEOUT_S) -> Dist | None:
    """Join the process group described by torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
    MASTER_PORT); None when this process runs alone."""
    world_size = _env_int("WORLD_SIZE", "1")
    if world_size <= 1:
        return None
    if "RANK" not in os.environ:
        raise UsageError(f"WORLD_SIZE is {world_size} but RANK is not set: start data-parallel training with "
                         "--nproc N or torchrun, which set both")
    rank, local_rank = _env_int("RANK", "0"), _env_int("LOCAL_RANK", "0")
    if not 0 <= rank < world_size:
        raise UsageError(f"RANK must be from 0 to WORLD_SIZE - 1 = {world_size - 1}, got {rank}")
    if local_rank < 0:
        raise UsageError(f"LOCAL_RANK must be >= 0, got {local_rank}")
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
                d._watch_peers(beat_store)
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


def gather_states(d: Dist, state: Tensor, what: str) -> list[Tensor]:
    """Every rank's `state` (a 1-d uint8 tensor of one length on every rank, e.g. a random generator's), in rank
    order, on every rank."""
    rows = torch.zeros(d.world_size, state.numel(), dtype=torch.int32, device=d.device)
    rows[d.rank] = state.to(d.device, torch.int32)
    d.all_reduce_(rows, what)
    return [r.to("cpu", torch.uint8) for r in rows]


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
        self.recomputes: set[int] = set()
        if model is not None:
            from .layers.checkpoint import Recompute

            for m in model.modules():
                for _, p in m._own_parameters():
                    self.owners.setdefault(id(p), []).append(m)
                if isinstance(m, Recompute):  # its body's calls are let go in forward: the Recompute's call stands
                    self.recomputes.add(id(m))  # for them until its backward has run the body's again
                    for p in m.body.parameters():
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
        """Backward has finished `module`: its own parameters' gradients are final for this step (and its
        sub-modules', where they waited for it: a Recompute's body)."""
        own = [p for _, p in module._own_parameters()]
        if id(module) in self.recomputes:
            own = [p for m in module.modules() for _, p in m._own_parameters() if id(p) not in self.seen]
        for p in own:
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


GRACE_S = 2.0  # how long a rank asked to stop (SIGTERM) has before the launcher kills it
POLL_S = 0.1  # how often the launcher looks at its ranks


def launch(nproc: int, argv: list[str], timeout: float, log: Callable[[str], None] = print) -> int:
    """Run `python -m handgrad <argv>` in `nproc` processes on this machine, in torchrun's environment (RANK,
    LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT; the rendezvous store is hosted here,
    as torchrun's agent does); return 0 once every rank has ended with 0, or raise TrainingError naming the
    first rank that failed and why, and the ranks this launcher then had to stop.

    The ranks' output goes where the launcher's goes. They die with the launcher: killed (SIGKILL), they get
    the parent-death signal (Linux); sent SIGTERM or SIGINT, it sends them SIGTERM, waits for them (GRACE_S,
    then SIGKILL) and ends as a single process would (killed by SIGTERM; one "interrupted" line on SIGINT).
    """
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))  # share the cores
    env.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")  # the ranks' own one-line errors say what failed
    try:  # port 0: the system picks a free port, no race with another process for it
        store = dist.TCPStore("127.0.0.1", 0, None, True, timedelta(seconds=timeout), wait_for_workers=False)
    except Exception as e:
        raise TrainingError(f"the launcher could not open its rendezvous store on 127.0.0.1: {_first_line(e)}") \
            from None
    env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(store.port), WORLD_SIZE=str(nproc),
               LOCAL_WORLD_SIZE=str(nproc), GROUP_RANK="0", GROUP_WORLD_SIZE="1", ROLE_WORLD_SIZE=str(nproc),
               TORCHELASTIC_USE_AGENT_STORE="True", TORCHELASTIC_RESTART_COUNT="0")

    received: list[int] = []  # SIGTERM / SIGINT sent to the launcher, handled by the loop below
    previous = {}
    for s in (signal.SIGTERM, signal.SIGINT):
        try:
            previous[s] = signal.signal(s, lambda signum, frame: received.append(signum))
        except ValueError:  # not the main thread: signals stay as they are
            pass
    procs: list[subprocess.Popen] = []
    try:
        preexec = _die_with_parent()
        for r in range(nproc):
            if received:
                break
            # a session of their own, as torchrun's ranks: the terminal's Ctrl-C reaches the launcher only,
            # which passes it on once
            procs.append(subprocess.Popen([sys.executable, "-m", "handgrad", *argv], preexec_fn=preexec,
                                          start_new_session=True,
                                          env=dict(env, RANK=str(r), LOCAL_RANK=str(r), ROLE_RANK=str(r))))
        failure = _watch(procs, received)
        if received:  # SIGTERM to the ranks either way: they end silently, the launcher says it once
            _stop(procs, signal.SIGTERM)
        elif failure is not None:
            failed = [(r, p.returncode) for r, p in enumerate(procs) if p.returncode not in (None, 0)]
            notes = _stop(procs, signal.SIGTERM)
            raise TrainingError(_cause(failure, failed, notes)) from None
    finally:
        for p in procs:  # whatever happened above, no rank outlives this call
            if p.poll() is None:
                p.kill()
                p.wait()
        for s, handler in previous.items():
            signal.signal(s, handler)
    if received:
        if received[0] == signal.SIGINT:
            raise KeyboardInterrupt
        signal.signal(received[0], signal.SIG_DFL)  # end as a single process would: killed by the signal
        os.kill(os.getpid(), received[0])
        time.sleep(1.0)
        raise TrainingError(f"stopped by {signal.Signals(received[0]).name}")
    return 0


def _watch(procs: list[subprocess.Popen], received: list[int]) -> int | None:
    """Wait until every rank has ended with 0 (None), a rank has failed (its rank: the one killed by a signal
    first, else the lowest that failed) or the launcher got a signal (None)."""
    while not received:
        codes = [p.poll() for p in procs]
        failed = [r for r, c in enumerate(codes) if c not in (None, 0)]
        if failed:  # several at once: a signal from outside is more likely the cause than an error exit
            return min(failed, key=lambda r: (codes[r] > 0, r))
        if all(c == 0 for c in codes):
            return None
        time.sleep(POLL_S)
    return None


def _stop(procs: list[subprocess.Popen], sig: signal.Signals) -> dict[int, str]:
    """Stop the ranks still running: `sig`, GRACE_S to end, then SIGKILL. A rank found stopped (SIGSTOP: it
    could not act on `sig`) is killed at once. Returns, per rank, how it ended: 'asked' (it ended after `sig`),
    'stopped' (found stopped, killed) or 'unresponsive' (did not end within GRACE_S, killed)."""
    notes = {}
    for r, p in enumerate(procs):
        if p.poll() is not None:
            continue
        try:
            if _state(p.pid) in ("T", "t"):
                p.kill()
                notes[r] = "stopped"
            else:
                p.send_signal(sig)
                notes[r] = "asked"
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + GRACE_S
    while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
        time.sleep(0.05)
    for r, p in enumerate(procs):
        if p.poll() is None:
            p.kill()
            notes[r] = "stopped" if _state(p.pid) in ("T", "t") else "unresponsive"
        p.wait()
    return notes


def _cause(first: int, failed: list[tuple[int, int]], notes: dict[int, str]) -> str:
    """One line: the rank that failed on its own first (and others that failed before the launcher stepped in),
    then the ranks the launcher stopped and why."""

    def why(code: int) -> str:
        return f"killed by {_signal_name(-code)}" if code < 0 else f"exit code {code}; its error line is above"

    codes = dict(failed)
    parts = [f"rank {first} failed ({why(codes[first])})"]
    also = [r for r, _ in failed if r != first]
    if also:
        parts.append(", ".join(f"rank {r} failed too ({why(codes[r])})" for r in also))
    for r in sorted(r for r, n in notes.items() if n == "stopped"):
        parts.append(f"rank {r} was stopped (SIGSTOP) and did not respond: the launcher killed it")
    for r in sorted(r for r, n in notes.items() if n == "unresponsive"):
        parts.append(f"rank {r} did not respond to SIGTERM within {GRACE_S:.0f} s: the launcher killed it")
    asked = sorted(r for r, n in notes.items() if n == "asked")
    if asked:
        parts.append(f"the launcher stopped {_ranks(asked)}")
    return "; ".join(parts)


def _ranks(ranks: list[int]) -> str:
    return f"rank {ranks[0]}" if len(ranks) == 1 else f"ranks {', '.join(map(str, ranks))}"


def _signal_name(n: int) -> str:
    try:
        return signal.Signals(n).name
    except ValueError:
        return f"signal {n}"


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__


def _state(pid: int) -> str:
    """The process's state letter in /proc/PID/stat ('R', 'S', 'T' stopped, 'Z'...); '' where unknown."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn that makes the child get SIGKILL when the launcher dies (Linux: PR_SET_PDEATHSIG), or None
    where that is not available. The signal comes when the thread that started the child ends: start the
    ranks from the thread that lives as long as the launcher (the main one)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here: the child only calls it
    except (OSError, AttributeError):
        return None
    parent, pr_set_pdeathsig, sigkill = os.getpid(), 1, int(signal.SIGKILL)

    def preexec() -> None:
        prctl(pr_set_pdeathsig, sigkill, 0, 0, 0)
        if os.getppid() != parent:  # the launcher died before prctl: nobody will send the signal
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec
