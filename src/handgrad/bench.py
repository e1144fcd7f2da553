"""`handgrad bench`: one training step (forward, loss, backward, optimizer step), side by side in one
process, same model, same batch, same threads: handgrad, torch eager autograd, torch.compile, and the
GEMM floor (the step's matrix multiplies / convolutions alone at the same shapes).

handgrad's step is the one `handgrad train` takes (`handgrad.fused.training_step`): the fused MLP step
for the MLPs, the module path inside `lean()` for the CNN and the character models. The image models take
(bs, 784) float images, cross-entropy over 10 classes and SGD (lr 1e-3); the character models (a GPT as
`handgrad train --model gpt` builds it, recomputing the attention probabilities in backward, and a 2-layer
LSTM) take (bs, 128) token ids of a 96-character vocabulary, cross-entropy over every token
(`TokenCrossEntropyLoss`; torch: `F.cross_entropy` of the logits flattened to (bs*128, 96)) and AdamW (lr 1e-3,
weight decay 0.01), handgrad's and torch's.

Step time is the median over rounds. Peak memory is what training needs beyond the parameters and the
batch: each implementation starts from a fresh state (no gradients, a new optimizer, no kept buffers)
and the highest total of tensor bytes alive during its first two steps is reported, so gradients,
optimizer state, kept buffers and activations all count (torch's profiler on CPU, the CUDA allocator on
a GPU).
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .interop import to_torch
from .losses import CrossEntropyLoss, TokenCrossEntropyLoss
from .models import char_lstm, cnn, gpt, mlp
from .data import DataLoader
from .fused import training_step
from .module import Module
from .optim import SGD, AdamW

VOCAB, BLOCK = 96, 128  # the character models' vocabulary (a text's characters) and sequence length

# name: (model, batch size, kind); the kind says what the batch, the loss and the optimizer are (see _task)
CONFIGS: dict[str, tuple[Callable[[], Module], int, str]] = {
    "mlp-784-50-10-bs64": (lambda: mlp(784, [50], 10), 64, "mlp"),
    "mlp-784-1024-1024-10-bs256": (lambda: mlp(784, [1024, 1024], 10), 256, "mlp"),
    "cnn-bs128": (lambda: cnn(10, (16, 32, 64)), 128, "cnn"),
    "gpt-4l-4h-d128-block128-bs32": (lambda: gpt(VOCAB, n_layer=4, n_head=4, d_model=128, block_size=BLOCK,
                                                 recompute=True), 32, "gpt"),
    "gpt-4l-4h-d128-block128-bs32-checkpoint": (lambda: gpt(VOCAB, n_layer=4, n_head=4, d_model=128,
                                                            block_size=BLOCK, recompute=True, checkpoint=True),
                                                32, "gpt"),
    "lstm-2l-h256-d64-seq128-bs32": (lambda: char_lstm(VOCAB, d=64, hidden=256, num_layers=2), 32, "lstm"),
}
# configs whose torch side is another model with the same weights: the checkpointed GPT against the plain one
# (eager and compiled autograd keep every block's activations), so that the rows show what checkpointing saves
TORCH_SIDE: dict[str, Callable[[], Module]] = {
    "gpt-4l-4h-d128-block128-bs32-checkpoint": lambda: gpt(VOCAB, n_layer=4, n_head=4, d_model=128, block_size=BLOCK),
}
TEXT_KINDS = ("gpt", "lstm")
IMPLS = ("handgrad", "eager", "compile", "gemm_floor")


@dataclass
class Row:
    config: str
    impl: str
    step_ms: float | None
    peak_mb: float | None
    note: str = ""


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _time(fn: Callable[[], None], device: torch.device, steps: int) -> float:
    """ms per call over `steps` calls, after one call to warm the caches."""
    fn()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / steps * 1e3


def _peak_mb(fresh: Callable[[], Callable[[], None]], device: torch.device) -> float:
    """Peak bytes alive over the first two steps of a fresh training state made by `fresh()`."""
    if device.type == "cuda":
        _sync(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn = fresh()
        fn()
        fn()
        _sync(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    from torch.profiler import ProfilerActivity, profile

    # drop what the timing left (gradients, buffers) before the profiler starts: a block allocated before it and
    # freed during it counts for nothing, and makes torch warn on stderr
    fresh()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn = fresh()
        fn()
        fn()
    events = sorted((e for e in prof.events() if e.self_cpu_memory_usage),
                    key=lambda e: e.time_range.start)
    live = peak = 0
    for e in events:
        live += e.self_cpu_memory_usage
        peak = max(peak, live)
    return peak / 2**20


def _fastest_conv(a: torch.Tensor, w: torch.Tensor, dy: torch.Tensor, m: Module,
                  mask: tuple[bool, bool, bool]) -> list[Callable[[], object]]:
    """A convolution's forward and its backward (dX where mask[0], dW) in the memory layout that runs them fastest
    here: torch's default (NCHW) or channels-last (NHWC, what torch.compile's CPU convolutions take), each timed
    on its own; so that no implementation can beat the floor by picking a better layout."""
    def ops(layout: torch.memory_format) -> list[Callable[[], object]]:
        a2, w2, dy2 = (t.contiguous(memory_format=layout) for t in (a, w, dy))
        return [lambda: F.conv2d(a2, w2, None, m.stride, m.padding, m.dilation, m.groups),
                lambda: torch.ops.aten.convolution_backward(dy2, a2, w2, None, m.stride, m.padding, m.dilation,
                                                            False, (0, 0), m.groups, mask)]

    def seconds(candidate: list[Callable[[], object]]) -> float:
        for op in candidate:  # warm up (kernel choice, caches)
            op()
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            for op in candidate:
                op()
            _sync(a.device)
            best = min(best, time.perf_counter() - start)
        return best

    candidates = [ops(torch.contiguous_format), ops(torch.channels_last)]
    return min(candidates, key=seconds)


def _gemm_floor(model: Module, x: torch.Tensor) -> Callable[[], None]:
    """The step's matrix multiplies and convolutions alone, at the shapes they have, on stand-in tensors:

    - Linear, TiedLinear, Conv2d: forward, weight gradient, and input gradient for every layer but the one
      that reads the data (an image batch); behind an Embedding every layer needs its input gradient; each
      convolution in its fastest memory layout here (NCHW or channels-last, see _fastest_conv);
    - MultiheadAttention: the input projection (one GEMM for q, k and v when they are one tensor) and the
      output projection as Linear layers; per head QK^T and PV forward, and dP = dO V^T, dV = P^T dO,
      dQ = dS K, dK = dS^T Q backward, batched over batch x heads, as full L x S products (the masked blocks
      that a causal step may skip are counted; what a step recomputes in backward is not);
    - LSTM / RNN, per layer: the input projection of all steps as one GEMM, one h_{t-1} W_hh^T per step forward,
      one dpre_t W_hh per step backward, dW_ih and dW_hh as one GEMM each over all steps, and the input
      gradient as one GEMM (what torch's CPU LSTM computes as well).
    """
    from .layers import LSTM, RNN, Conv2d, Embedding, Linear, MultiheadAttention, TiedLinear

    model(x)
    ops: list[Callable[[], object]] = []
    # the layer reading an image batch needs no input gradient; behind an Embedding (token ids) every one does
    first = not any(isinstance(m, Embedding) for m in model.modules())
    inner = {id(m.out_proj) for m in model.modules() if isinstance(m, MultiheadAttention)}  # counted with their MHA

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, device=x.device, dtype=torch.get_default_dtype() if x.dtype == torch.long
                           else x.dtype)

    def linear(rows: int, n_in: int, n_out: int, dx: bool) -> None:
        """Y = X W (forward), dW = X^T dY, and dX = dY W^T if dx."""
        a, w, dy = randn(rows, n_in), randn(n_in, n_out), randn(rows, n_out)
        ops.extend([lambda: a @ w, lambda: a.t() @ dy] + ([lambda: dy @ w.t()] if dx else []))

    for m in model.modules():
        if isinstance(m, (Linear, TiedLinear)) and id(m) not in inner:
            a = m.args[0]
            linear(a.numel() // m.in_features, m.in_features, m.out_features, not first)
        elif isinstance(m, Conv2d):
            ops += _fastest_conv(m.args[0].detach(), m.weight.detach(), torch.randn_like(m.out), m,
                                 (not first, True, False))
        elif isinstance(m, MultiheadAttention):
            query, key, value = m.args[:3]
            e, d = m.embed_dim, m.head_dim
            length, source = (query.shape[1], key.shape[1]) if m.batch_first else (query.shape[0], key.shape[0])
            n = query.numel() // (length * e)
            if query is key and key is value:  # self-attention: q, k, v from one GEMM
                linear(n * length, e, 3 * e, not first)
            else:
                for rows in (length, source, source):
                    linear(n * rows, e, e, not first)
            linear(n * length, e, e, True)  # out_proj
            q, k, v = randn(n * m.num_heads, length, d), randn(n * m.num_heads, source, d), \
                randn(n * m.num_heads, source, d)
            p = randn(n * m.num_heads, length, source)
            ops += [lambda q=q, k=k: torch.bmm(q, k.transpose(1, 2)),  # S = Q K^T
                    lambda p=p, v=v: torch.bmm(p, v),  # O = P V
                    lambda q=q, v=v: torch.bmm(q, v.transpose(1, 2)),  # dP = dO V^T (dO shaped as Q)
                    lambda p=p, q=q: torch.bmm(p.transpose(1, 2), q),  # dV = P^T dO
                    lambda p=p, k=k: torch.bmm(p, k),  # dQ = dS K
                    lambda p=p, q=q: torch.bmm(p.transpose(1, 2), q)]  # dK = dS^T Q
        elif isinstance(m, (LSTM, RNN)):
            seq = m.args[0]
            steps, n = (seq.shape[1], seq.shape[0]) if m.batch_first else seq.shape[:2]
            hid, g = m.hidden_size, m.GATES * m.hidden_size
            for k in range(m.num_layers):
                n_in = m.input_size if k == 0 else hid
                xs, hs, dpre = randn(steps * n, n_in), randn(steps * n, hid), randn(steps * n, g)
                w_ih, w_hh, h, dpre_t = randn(g, n_in), randn(g, hid), randn(n, hid), randn(n, g)
                ops += [lambda xs=xs, w=w_ih: xs @ w.t()]  # the input projection of all steps
                ops += [lambda h=h, w=w_hh: h @ w.t()] * steps  # h_{t-1} W_hh^T, step by step
                ops += [lambda d=dpre_t, w=w_hh: d @ w] * steps  # dh_{t-1} = dpre_t W_hh, step by step
                ops += [lambda d=dpre, xs=xs: d.t() @ xs, lambda d=dpre, hs=hs: d.t() @ hs]  # dW_ih, dW_hh
                if not first or k > 0:
                    ops.append(lambda d=dpre, w=w_ih: d @ w)  # dX
        else:
            continue
        first = False

    def run() -> None:
        for op in ops:
            op()

    return run


@dataclass
class Task:
    """What one training step of a config reads and runs: the batch, handgrad's loss and optimizer, and torch's."""

    x: torch.Tensor
    y: torch.Tensor
    loss: Callable[[], Module]  # handgrad's loss module
    torch_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    optimizer: Callable[[list], object]  # handgrad's, given the parameters
    torch_optimizer: Callable[[list], torch.optim.Optimizer]


def _task(kind: str, bs: int, device: torch.device) -> Task:
    if kind in TEXT_KINDS:  # next-character prediction over every token, AdamW (as `handgrad train` on text)
        return Task(torch.randint(0, VOCAB, (bs, BLOCK), device=device),
                    torch.randint(0, VOCAB, (bs, BLOCK), device=device), TokenCrossEntropyLoss,
                    lambda out, y: F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1)),
                    lambda ps: AdamW(ps, lr=1e-3, weight_decay=0.01),
                    lambda ps: torch.optim.AdamW(ps, lr=1e-3, weight_decay=0.01))
    return Task(torch.randn(bs, 784, device=device), torch.randint(0, 10, (bs,), device=device), CrossEntropyLoss,
                F.cross_entropy, lambda ps: SGD(ps, lr=1e-3), lambda ps: torch.optim.SGD(ps, lr=1e-3))


def bench_config(name: str, device: torch.device, rounds: int = 5, steps: int = 10,
                 impls: tuple[str, ...] = IMPLS, log: Callable[[str], None] = print) -> list[Row]:
    make, bs, kind = CONFIGS[name]
    torch.manual_seed(0)
    model = make().to(device)
    plain = None
    if name in TORCH_SIDE:
        torch.manual_seed(0)
        plain = TORCH_SIDE[name]().to(device)
        for p, q in zip(plain.parameters(), model.parameters(), strict=True):  # the same weights, in order
            p.data.copy_(q.data)
        twin, ctwin = to_torch(plain), to_torch(plain)
    else:
        twin, ctwin = to_torch(model), to_torch(model)
    compiled = None
    task = _task(kind, bs, device)
    x, y = task.x, task.y

    def handgrad_fresh() -> Callable[[], None]:
        for p in model.parameters():
            p.g = None
            p.__dict__.pop("_gbuf", None)
        step = training_step(model, task.loss(), task.optimizer(model.parameters()))
        return lambda: step(x, y)

    def torch_fresh(net: torch.nn.Module, run: torch.nn.Module | None = None) -> Callable[[], None]:
        for p in net.parameters():
            p.grad = None
        topt = task.torch_optimizer(list(net.parameters()))
        run = net if run is None else run  # (not `run or net`: a compiled module's truth asks its model for len())

        def fn() -> None:
            loss = task.torch_loss(run(x), y)
            topt.zero_grad(set_to_none=False)
            loss.backward()
            topt.step()

        return fn

    def compile_fresh() -> Callable[[], None]:
        nonlocal compiled
        if compiled is None:
            compiled = torch.compile(ctwin)
        return torch_fresh(ctwin, compiled)

    fresh: dict[str, Callable[[], Callable[[], None]]] = {
        "handgrad": handgrad_fresh,
        "eager": lambda: torch_fresh(twin),
        "compile": compile_fresh,
        "gemm_floor": lambda: _gemm_floor(plain if name in TORCH_SIDE else model, x),  # (a Recompute keeps no args)
    }
    # build each step (compiling where asked), then time them in interleaved rounds, so that a slow
    # stretch of the machine hits every implementation alike; the median round counts
    fns: dict[str, Callable[[], None]] = {}
    notes: dict[str, str] = {}
    for impl in impls:
        try:
            start = time.perf_counter()
            fns[impl] = fresh[impl]()
            fns[impl]()
            if impl == "compile":
                notes[impl] = f"compiled in {time.perf_counter() - start:.0f}s"
        except Exception as e:  # torch.compile needs a working C++ toolchain: report, do not abort the bench
            notes[impl] = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:80]}"
    times: dict[str, list[float]] = {impl: [] for impl in fns}
    for _ in range(rounds):
        for impl, fn in fns.items():
            times[impl].append(_time(fn, device, steps))
    rows = []
    floor = statistics.median(times["gemm_floor"]) if "gemm_floor" in times else None
    for impl in impls:
        ms = mb = None
        if impl in fns:
            ms = statistics.median(times[impl])
            mb = _peak_mb(fresh[impl], device) if impl != "gemm_floor" else None
        note = notes.get(impl, "")
        if ms is not None and floor is not None and impl != "gemm_floor" and ms < floor:
            # a whole step faster than its matmuls alone: the floor is not one (a faster kernel or layout exists)
            note = "; ".join(filter(None, [note, f"UNDER THE FLOOR ({ms / floor:.2f}x)"]))
        rows.append(Row(name, impl, ms, mb, note))
        log(f"  {name:28s} {impl:11s} " + (f"{ms:9.3f} ms/step" if ms is not None else "        -") +
            (f"  peak {mb:8.2f} MB" if mb is not None else "") + (f"  ({note})" if note else ""))
    return rows


def format_table(rows: list[Row]) -> str:
    lines = [f"{'config':28s} {'impl':11s} {'step ms':>9s} {'vs eager':>9s} {'vs floor':>9s} {'peak MB':>9s} "
             f"{'vs eager':>9s}"]
    for r in rows:
        eager = next((e for e in rows if e.config == r.config and e.impl == "eager"), None)
        floor = next((e for e in rows if e.config == r.config and e.impl == "gemm_floor"), None)

        def ratio(a: float | None, b: float | None) -> str:
            return f"{a / b:8.2f}x" if a is not None and b else "        -"

        lines.append(f"{r.config:28s} {r.impl:11s} " + (f"{r.step_ms:9.3f}" if r.step_ms is not None else
                                                        "        -") +
                     f" {ratio(r.step_ms, eager and eager.step_ms)} {ratio(r.step_ms, floor and floor.step_ms)} " +
                     (f"{r.peak_mb:9.2f}" if r.peak_mb is not None else "        -") +
                     f" {ratio(r.peak_mb, eager and eager.peak_mb)}" + (f"  {r.note}" if r.note else ""))
    return "\n".join(lines)


IMPL_LABELS = {"handgrad": "handgrad\n(hand-written\nbackward)", "eager": "torch eager\n(autograd)",
               "compile": "torch.compile\n(autograd)", "gemm_floor": "GEMM floor\n(its matmuls\nalone)"}
IMPL_COLOURS = {"handgrad": "tab:green", "eager": "tab:blue", "compile": "tab:orange", "gemm_floor": "tab:gray"}


def plot(rows: list[Row], path: Path, about: str = "") -> Path:
    """A bar chart per config: milliseconds per training step (top) and peak memory (below) of each
    implementation, the ratio to torch eager on each bar; an implementation that failed says so in its place.
    `about` (device, threads, rounds) goes under the title."""
    from .train.plots import _pyplot, _save

    plt = _pyplot()
    configs = list(dict.fromkeys(r.config for r in rows))
    fig, axes = plt.subplots(2, len(configs), figsize=(4.8 * len(configs) + 0.6, 7.5), layout="constrained",
                             squeeze=False)
    for col, cfg in enumerate(configs):
        sub = [r for r in rows if r.config == cfg]
        eager = next((r for r in sub if r.impl == "eager"), None)
        for ax, key, unit in ((axes[0, col], "step_ms", "ms per training step"),
                              (axes[1, col], "peak_mb", "peak MB beyond weights and batch")):
            names = [IMPL_LABELS.get(r.impl, r.impl) for r in sub]
            values = [getattr(r, key) for r in sub]
            bars = ax.bar(names, [v or 0.0 for v in values], color=[IMPL_COLOURS.get(r.impl, "tab:purple")
                                                                    for r in sub])
            base = getattr(eager, key) if eager is not None else None
            for bar, r, v in zip(bars, sub, values):
                if v is None:  # the floor's memory is not measured (it keeps no state); a failure says so
                    text = "failed" if r.note.startswith("failed") else "not measured"
                elif base:
                    text = f"{v:.3g}\n({v / base:.2f}x eager)"
                else:
                    text = f"{v:.3g}"
                ax.annotate(text, (bar.get_x() + bar.get_width() / 2, bar.get_height()), textcoords="offset points",
                            xytext=(0, 3), ha="center", va="bottom", fontsize=8)
            ax.set_ylim(0, max([v for v in values if v is not None] or [1.0]) * 1.3)  # room for the labels
            ax.set(ylabel=unit)
            ax.tick_params(axis="x", labelsize=8)
            ax.grid(axis="y", color="0.92")
            ax.set_axisbelow(True)
        axes[0, col].set_title(f"{cfg}\ntime per step (lower is faster)", fontsize=10)
        axes[1, col].set_title(f"{cfg}\npeak memory (lower is leaner)", fontsize=10)
    fig.suptitle("one training step (forward, loss, backward, optimizer step)" + (f"\n{about}" if about else ""))
    return _save(fig, path)


def write_json(rows: list[Row], path: Path, tta: list[TimeToAccuracy] | None = None) -> None:
    doc: dict = {"rows": [asdict(r) for r in rows]}
    if tta is not None:
        doc["time_to_accuracy"] = [asdict(r) for r in tta]
    path.write_text(json.dumps(doc, indent=2) + "\n")


@dataclass
class TimeToAccuracy:
    impl: str
    seconds: float | None  # training wall time until `target` was first measured; None if never reached
    batches: int
    valid_acc: float  # the first accuracy at or above target (or the last one)
    target: float
    model: str = "mlp"
    compile_s: float | None = None  # torch.compile's first-call compilation, off the clock


# the recipes timed to accuracy: `handgrad train --model <model>`'s defaults on Fashion-MNIST
TTA_RECIPES = {"mlp": dict(target=0.85, every=100), "cnn": dict(target=0.90, every=200)}


def time_to_accuracy(device: torch.device, model_kind: str = "mlp", target: float | None = None,
                     every: int | None = None, max_epochs: int | None = None, compile: bool = True,
                     log: Callable[[str], None] = print, data=None) -> list[TimeToAccuracy]:
    """Wall time for the default `handgrad train --model <model_kind>` recipe on standardised Fashion-MNIST (the
    784-50-10 MLP: SGD lr 0.1, batch 64; the CNN: SGD lr 0.1 momentum 0.9 with its cosine schedule, batch 128;
    seed 42) to reach `target` validation accuracy (MLP 0.85, CNN 0.90): handgrad's training step (the one
    `handgrad train` takes) against the same model in torch.nn with eager autograd and torch.optim.SGD, and, for
    the CNN, the same under torch.compile (its compilation timed apart, off the clock); same initial weights,
    same batches in the same order, the same learning rate at every step. The validation set is scored every
    `every` batches, off the clock."""
    from .schedules import make_schedule
    from .train.config import TrainConfig
    from .train.loop import evaluate, make_loss
    from .train.run import build_model, build_optimizer, prepare_data
    from .train.twin import torch_loss

    recipe = TTA_RECIPES[model_kind]
    target = recipe["target"] if target is None else target
    every = recipe["every"] if every is None else every
    cfg = TrainConfig(model=model_kind, dataset="fashion-mnist", download=False)
    data = prepare_data(cfg, device, log=lambda s: None) if data is None else data
    max_epochs = cfg.epochs if max_epochs is None else max_epochs
    n_classes = len(data.classes)
    model, _ = build_model(cfg, data.x_train.shape[1], n_classes)
    model = model.to(device)
    twin, ctwin = to_torch(model), to_torch(model)
    loss_fn = make_loss(cfg.loss)
    opt = build_optimizer(cfg, model)
    step = training_step(model, loss_fn, opt)
    tloss = torch_loss(cfg.loss)
    per_epoch = len(DataLoader(data.x_train, data.y_train, cfg.batch_size))
    schedule = make_schedule(cfg.lr_schedule, cfg.learning_rate, max_epochs * per_epoch, cfg.warmup_steps)

    def torch_step(net: torch.nn.Module, run: Callable) -> tuple[Callable, torch.optim.Optimizer]:
        topt = torch.optim.SGD(net.parameters(), lr=cfg.learning_rate, momentum=cfg.sgd_momentum,
                               weight_decay=cfg.decay)

        def fn(xb: torch.Tensor, yb: torch.Tensor) -> None:
            loss = tloss(run(xb), yb)
            topt.zero_grad()
            loss.backward()
            topt.step()

        return fn, topt

    def scored(net, loss: Callable) -> Callable[[], float]:
        """Validation accuracy as `handgrad train` reports it: in eval mode (running statistics), then back."""
        def score() -> float:
            net.eval()
            try:
                return evaluate(net, loss, data.x_valid, data.y_valid, n_classes)[1]
            finally:
                net.train()
        return score

    eager_fn, eager_opt = torch_step(twin, twin)
    contenders: list[tuple[str, Callable, Callable[[float], None], Callable[[], float], float | None]] = [
        ("handgrad", step, lambda lr: setattr(opt, "lr", lr),
         scored(model, loss_fn), None),
        ("eager", eager_fn, lambda lr: [g.__setitem__("lr", lr) for g in eager_opt.param_groups],
         scored(twin, tloss), None),
    ]
    if compile and model_kind == "cnn":
        start = time.perf_counter()
        try:  # compile for both batch sizes an epoch has (full, last), then put back what that changed, off the clock
            compiled = torch.compile(ctwin)
            comp_fn, comp_opt = torch_step(ctwin, compiled)
            saved = {k: v.clone() for k, v in ctwin.state_dict().items()}
            last = len(data.x_train) % cfg.batch_size
            for n in {cfg.batch_size, last or cfg.batch_size}:
                tloss(compiled(data.x_train[:n]), data.y_train[:n]).backward()
            ctwin.load_state_dict(saved)
            for p in ctwin.parameters():
                p.grad = None
            _sync(device)
            contenders.append(("compile", comp_fn, lambda lr: [g.__setitem__("lr", lr) for g in comp_opt.param_groups],
                               scored(ctwin, tloss),
                               time.perf_counter() - start))
        except Exception as e:  # torch.compile needs a working C++ toolchain: report, do not abort the bench
            log(f"  time to {target:.2f} compile: failed: {type(e).__name__}: {str(e).splitlines()[0][:80]}")
    results = []
    for impl, fn, set_lr, score, compile_s in contenders:
        dl = DataLoader(data.x_train, data.y_train, cfg.batch_size, shuffle=True, seed=cfg.seed)
        clock, batches, acc, reached = 0.0, 0, 0.0, False
        for epoch in range(max_epochs):
            _sync(device)
            start = time.perf_counter()
            for xb, yb in dl.epoch_batches(epoch):
                set_lr(schedule.lr(batches))
                fn(xb, yb)
                batches += 1
                if batches % every == 0:
                    _sync(device)
                    clock += time.perf_counter() - start
                    acc = score()
                    reached = acc >= target
                    if reached:
                        break
                    start = time.perf_counter()
            if reached:
                break
            _sync(device)
            clock += time.perf_counter() - start
        results.append(TimeToAccuracy(impl, clock if reached else None, batches, acc, target, model_kind,
                                      compile_s))
        log(f"  {model_kind} time to {target:.2f} {impl:9s} " + (f"{clock:6.2f} s" if reached else "not reached") +
            f"  ({batches} batches, valid_acc {acc:.4f})" +
            (f"  (compiled in {compile_s:.0f}s, off the clock)" if compile_s is not None else ""))
    return results


def format_time_to_accuracy(results: list[TimeToAccuracy]) -> str:
    lines = [f"{'time to accuracy':28s} {'impl':11s} {'seconds':>9s} {'vs eager':>9s} {'batches':>9s} "
             f"{'valid_acc':>9s}"]
    for r in results:
        eager = next((e for e in results if e.impl == "eager" and e.model == r.model), None)
        ratio = f"{r.seconds / eager.seconds:8.2f}x" if r.seconds and eager and eager.seconds else "        -"
        secs = f"{r.seconds:9.2f}" if r.seconds is not None else "        -"
        note = f"  compiled in {r.compile_s:.0f}s (off the clock)" if r.compile_s is not None else ""
        lines.append(f"{f'{r.model}-fashion-mnist-{r.target:.2f}':28s} {r.impl:11s} {secs} {ratio} "
                     f"{r.batches:9d} {r.valid_acc:9.4f}{note}")
    return "\n".join(lines)
