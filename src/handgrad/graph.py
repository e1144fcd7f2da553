"""A picture of backprop: one batch's forward and backward through a model, one node per layer call.

Like micrograd's `draw_dot`, but a node is a call of a layer with a hand-written backward (a module
called twice is two nodes) and an edge a tensor one call passed to another. Each node shows its output's
statistics, its output gradient's (`out.g`) and its parameters' `.g`, and the bytes kept for its backward
by handgrad against those torch autograd saves for the same layer (see handgrad.saved). Rendered with
graphviz.
"""

from __future__ import annotations

import html
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import graphviz
import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode

from . import calls
from .calls import Call
from .errors import UsageError
from .losses import CrossEntropyLoss, MSELoss
from .module import Module, Parameter, lean
from .saved import Kept, autograd_saves, autograd_total, handgrad_keeps, has_subcalls
from .trace import recording

FORMATS = ("svg", "png")


@dataclass(frozen=True)
class Stats:
    """Mean, std, min and max of a floating tensor's values (computed in float64)."""

    mean: float
    std: float
    min: float
    max: float

    @classmethod
    def of(cls, t: object) -> Stats | None:
        if not isinstance(t, Tensor) or not t.is_floating_point() or t.numel() == 0:
            return None
        d = t.detach().double()
        return cls(float(d.mean()), float(d.std()) if d.numel() > 1 else 0.0, float(d.min()), float(d.max()))

    def __str__(self) -> str:
        if self.min == self.max:
            return _num(self.min)
        return f"μ {_num(self.mean)}  σ {_num(self.std)}  [{_num(self.min)}, {_num(self.max)}]"


@dataclass
class Node:
    """One layer call: what the picture shows of it."""

    id: str
    name: str  # where the layer sits in the model ("1.0.body.0.0", "loss"), "(call 2)" for a later call
    layer: str  # class name and sizes
    call: Call
    params: list[tuple[str, Parameter]]
    handgrad: Kept
    autograd: Kept

    @property
    def out(self) -> Stats | None:
        return Stats.of(self.call.out)

    @property
    def out_grad(self) -> Stats | None:
        return Stats.of(getattr(self.call.out, "g", None))


@dataclass
class BackpropGraph:
    title: str
    nodes: list[Node]
    sources: dict[str, tuple[str, Tensor]]  # node id -> (name, tensor) of tensors from outside (x, target)
    edges: list[tuple[str, str]]  # (from id, to id), one per tensor passed
    shared: dict[str, tuple[Parameter, list[str]]]  # parameter name -> (it, ids of the nodes that use it)
    clusters: list[tuple[str, list[str]]]  # (label, node ids) per top-level block of several nodes
    handgrad_total: Kept
    autograd_total: Kept
    autograd_how: str


def backprop_graph(model: Module, x: Tensor, y: Tensor | None = None, loss_fn: Module | None = None,
                   seed: int = 0, name: str | None = None) -> BackpropGraph:
    """Run one forward and backward of `model` on x (on a copy of it, which gets the `.g`) and describe every
    layer call. With y, the backward starts from the loss (loss_fn, or cross-entropy for integer y, MSE for
    float y); otherwise from a random output gradient (standard normal, seeded). As `trace`, this sets the
    parameters' `.g` and, in training mode, updates batch-norm running statistics. `name` heads the title
    (default: the model's class)."""
    if y is not None and loss_fn is None:
        loss_fn = MSELoss() if y.is_floating_point() else CrossEntropyLoss()
    x = x.detach().clone()  # the batch alone (a slice of a data set would count the whole data set's storage)
    y = y.detach().clone() if y is not None else None
    reads = _OwnReads()
    with lean(False):  # every record and gradient stays, to be shown
        with recording() as log, reads:
            out = model(x)
            loss = loss_fn(out, y) if loss_fn is not None else None
        model.zero_grad()
        if loss_fn is not None:
            loss_fn.backward()
            model.backward()
        else:
            gen = torch.Generator().manual_seed(seed)
            model.backward(torch.randn(out.shape, generator=gen, dtype=out.dtype).to(out.device))
    title = f"{name or type(model).__name__}, " + (
        f"batch {list(x.shape)}, {type(loss_fn).__name__} {float(loss):.4g}" if loss_fn is not None else
        f"input {list(x.shape)}, backward from a random output gradient")

    names = {id(m): n or type(m).__name__ for n, m in model.named_modules()}
    if loss_fn is not None:
        names.setdefault(id(loss_fn), "loss")
    state = [*model.parameters(), *(b for _, b in model.named_buffers())]
    layer_calls = sorted((c for c in log if not c.module.writes_no_bwd()), key=lambda c: c.serial)
    total_calls = Counter(id(c.module) for c in layer_calls)
    seen: Counter[int] = Counter()
    nodes: list[Node] = []
    for c in layer_calls:
        m = c.module
        seen[id(m)] += 1
        where = names.get(id(m), type(m).__name__) + (f" (call {seen[id(m)]})" if total_calls[id(m)] > 1 else "")
        nodes.append(Node(f"n{c.serial}", where, _brief(m), c, list(m._own_parameters()),
                          Kept.of(handgrad_keeps(c), state), autograd_saves(c, log)))
    for m in {id(c.module): c.module for c in layer_calls}.values():  # the modules show their last call again
        last = m.__dict__.get("_last")
        if last is not None:
            last.restore()

    sources = {"x": ("x", x)} | ({"y": ("target", y)} if y is not None else {})
    edges = _edges(log, nodes, sources, reads.reads)
    ag_total, how = autograd_total(model, x, y, loss_fn), "the whole torch.nn twin"
    if ag_total is None:  # some layer has no twin
        ag_total, how = Kept.summed(n.autograd for n in nodes), "summed layer by layer"
    return BackpropGraph(title, nodes, sources, edges, _shared_parameters(model, nodes),
                         _clusters(model, log, nodes), Kept.union(n.handgrad for n in nodes), ag_total, how)


# --------------------------------------------------------------------------------- the graph's structure


class _OwnReads(TorchFunctionMode):
    """The tensors each composite layer's own operations read (Residual's sum reads the body's and the
    shortcut's outputs), for the edges into its node."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: dict[int, dict[int, Tensor]] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        if calls.STACK and _composite_layer(calls.STACK[-1].module):
            seen = self.reads.setdefault(calls.STACK[-1].serial, {})
            for t in calls._tensors(list(args)) + calls._tensors(kwargs):
                seen[id(t)] = t
        return func(*args, **kwargs)


def _composite_layer(m: Module) -> bool:
    return not m.writes_no_bwd() and any(True for _ in m.children())


def _edges(log: list[Call], nodes: list[Node], sources: dict[str, tuple[str, Tensor]],
           reads: dict[int, dict[int, Tensor]]) -> list[tuple[str, str]]:
    """An edge from the node that made a tensor (or of which it is a view) to each node that takes it."""
    producer = {id(t): key for key, (_, t) in sources.items()}
    by_call = {id(n.call): n for n in nodes}
    for c in log:  # in the order calls end: a layer before the container that returns its output
        if id(c) in by_call:
            for t in calls._tensors(c.out):
                producer.setdefault(id(t), by_call[id(c)].id)
    for c in log:
        for ev in c.events:
            if isinstance(ev, calls.View) and id(ev.src) in producer:
                producer.setdefault(id(ev.out), producer[id(ev.src)])
    edges: list[tuple[str, str]] = []
    for n in nodes:
        if has_subcalls(n.call):
            own = [t for t in reads.get(n.call.serial, {}).values() if not isinstance(t, Parameter)]
            taken = [t for t in own if id(t) in producer and producer[id(t)] != n.id]
        else:
            taken = calls._tensors(list(n.call.args))
        for t in taken:
            if id(t) not in producer:
                key = f"t{len(sources)}"
                sources[key] = ("tensor", t)
                producer[id(t)] = key
            if (producer[id(t)], n.id) not in edges:
                edges.append((producer[id(t)], n.id))
    return edges


def _shared_parameters(model: Module, nodes: list[Node]) -> dict[str, tuple[Parameter, list[str]]]:
    """Parameters used by several nodes (a module called twice, tied weights), under their model names."""
    users: dict[int, tuple[Parameter, list[str]]] = {}
    for n in nodes:
        for _, p in n.params:
            users.setdefault(id(p), (p, []))[1].append(n.id)
    names = {id(p): name for name, p in model.named_parameters()}
    return {names.get(id(p), f"parameter {i}"): (p, ids) for i, (p, ids) in enumerate(users.values())
            if len(ids) > 1}


def _clusters(model: Module, log: list[Call], nodes: list[Node]) -> list[tuple[str, list[str]]]:
    """A box around each top-level block of the model that holds several nodes."""
    root = min((c for c in log if c.module is model), key=lambda c: c.serial, default=None)
    if root is None:
        return []
    ids = {id(n.call): n.id for n in nodes}
    names = {id(m): n for n, m in model.named_modules()}
    boxes = []
    for ev in root.events:
        if isinstance(ev, Call):
            inside = [ids[id(c)] for c in [ev, *_descendants(ev)] if id(c) in ids]
            if len(inside) > 1:
                boxes.append((f"{names.get(id(ev.module), '')} · {type(ev.module).__name__}", inside))
    return boxes


def _descendants(call: Call) -> list[Call]:
    out = []
    for ev in call.events:
        if isinstance(ev, Call):
            out += [ev, *_descendants(ev)]
    return out


def _brief(m: Module) -> str:
    """The class name and the sizes that tell layers apart (Linear 784→50, Conv2d 16→32 3x3 /2)."""
    name = type(m).__name__
    if hasattr(m, "in_features"):
        return f"{name} {m.in_features}→{m.out_features}"
    if hasattr(m, "in_channels"):
        (kh, kw), (sh, sw) = m.kernel_size, m.stride
        return f"{name} {m.in_channels}→{m.out_channels} {kh}x{kw}" + (f" /{sh}" if (sh, sw) != (1, 1) else "")
    if hasattr(m, "num_features"):
        return f"{name} {m.num_features}"
    return name


# --------------------------------------------------------------------------------- the picture

LESS, MORE, SAME = "#dff3df", "#fde4cf", "#ffffff"  # handgrad keeps less / more than autograd / the same


def to_dot(graph: BackpropGraph, rankdir: str = "auto") -> graphviz.Digraph:
    """The graphviz picture of `graph` (rankdir "TB", "LR", or "auto": left to right for a few nodes)."""
    if rankdir not in ("auto", "TB", "LR"):
        raise UsageError(f"rankdir must be auto, TB (top to bottom) or LR (left to right), got {rankdir!r}")
    if rankdir == "auto":
        rankdir = "LR" if len(graph.nodes) <= 6 else "TB"
    dot = graphviz.Digraph("backprop", graph_attr={"rankdir": rankdir, "fontname": "Helvetica", "fontsize": "11",
                                                   "nodesep": "0.15", "ranksep": "0.25", "labelloc": "t",
                                                   "labeljust": "l", "label": _caption(graph)},
                           node_attr={"shape": "box", "style": "rounded,filled", "fontname": "Helvetica",
                                      "fontsize": "10", "margin": "0.06,0.03"},
                           edge_attr={"arrowsize": "0.6", "color": "#555555"})
    shared_ids = {id(p) for p, _ in graph.shared.values()}
    for key, (name, t) in graph.sources.items():
        rows = [f"<b>{_esc(name)}</b> {_shape(t)}" + ("" if t.dtype == torch.float32 else
                                                      " " + str(t.dtype).replace("torch.", ""))]
        rows += _stat_rows(t, "")
        dot.node(key, _table(rows), shape="box", style="filled", fillcolor="#eeeeee")
    placed = set()
    for label, ids in graph.clusters:
        with dot.subgraph(name=f"cluster_{ids[0]}") as box:
            box.attr(label=label, style="rounded,dashed", color="#999999", fontsize="9", labeljust="l")
            for n in graph.nodes:
                if n.id in ids:
                    _node(box, n, shared_ids)
                    placed.add(n.id)
    for n in graph.nodes:
        if n.id not in placed:
            _node(dot, n, shared_ids)
    for src, dst in graph.edges:
        dot.edge(src, dst)
    for i, (name, (p, ids)) in enumerate(graph.shared.items()):
        rows = [f"<b>{_esc(name)}</b> {_shape(p)} shared by {len(ids)} calls", *_stat_rows(p, "", grad_only=True)]
        dot.node(f"p{i}", _table(rows), shape="note", style="filled", fillcolor="#fff8d0")
        for node_id in ids:
            dot.edge(f"p{i}", node_id, style="dashed", arrowhead="none", color="#b8a000")
    return dot


def _node(dot: graphviz.Digraph, n: Node, shared_ids: set[int]) -> None:
    rows = [f"<b>{_esc(n.name)}</b>  {_esc(n.layer)}  → {_shape(n.call.out)}"]
    rows += _stat_rows(n.call.out, "out")
    for pname, p in n.params:
        if id(p) not in shared_ids:
            rows += _stat_rows(p, pname, grad_only=True)
    hg, ag = n.handgrad.activations, n.autograd.activations
    rows.append(f"saved: handgrad {_size(hg)} · autograd {_size(ag)}"
                + (f" (+{_size(n.autograd.weights)} W)" if n.autograd.weights else ""))
    differ = abs(hg - ag) > 0.01 * max(hg, ag)  # not BatchNorm's 2 vectors of C floats against 1
    dot.node(n.id, _table(rows), fillcolor=SAME if not differ else LESS if hg < ag else MORE)


def _stat_rows(t: Any, name: str, grad_only: bool = False) -> list[str]:
    """`name stats` of the values and `name.g [shape] stats` of the gradient, in small type (the gradient red)."""
    rows = []
    s = None if grad_only else Stats.of(t)
    if s is not None:
        rows.append(f"<font point-size='9'>{name + '  ' if name else ''}{_esc(str(s))}</font>")
    if isinstance(t, Tensor) and t.is_floating_point():
        g = Stats.of(getattr(t, "g", None))
        head = (f"{name}.g" if name else "g") + (f" {_shape(t)}" if grad_only else "")
        rows.append(f"<font point-size='9' color='#b03000'>{head}  {_esc(str(g)) if g else 'none'}</font>")
    return rows


def _table(rows: list[str]) -> str:
    cells = "".join(f'<tr><td align="left">{r}</td></tr>' for r in rows)
    return f'<<table border="0" cellborder="0" cellspacing="0" cellpadding="1">{cells}</table>>'


def _caption(graph: BackpropGraph) -> str:
    hg, ag = graph.handgrad_total, graph.autograd_total
    lines = [
        f"<b>{_esc(graph.title)}</b>",
        "one node per layer call; values flow along the edges, gradients (.g, red) flow back"
        + ("; dashed boxes: the model's blocks" if graph.clusters else ""),
        f"kept for backward, each storage once: handgrad {_size(hg.activations)} (what each call's backward reads: "
        f"what lean() keeps) · torch autograd {_size(ag.activations)} ({graph.autograd_how}; + "
        f"{_size(ag.weights)} of weights referenced)",
        "green: handgrad keeps less than autograd (by more than 1%), orange: more",
    ]
    return "<" + "<br align='left'/>".join(lines) + "<br align='left'/>>"


def write(dot: graphviz.Digraph, path: str | Path, fmt: str | None = None) -> Path:
    """Render `dot` into `path` as SVG or PNG (fmt, or the path's suffix); UsageError in one line when the
    format is neither, the folder is missing or graphviz's `dot` program is not installed."""
    path, fmt = output_path(path, fmt)
    path.write_bytes(dot.pipe(format=fmt))
    return path


def output_path(path: str | Path, fmt: str | None = None) -> tuple[Path, str]:
    """The file and format to write, checked before any work: (path, 'svg' or 'png')."""
    path = Path(path)
    suffix = path.suffix.lower().lstrip(".")
    if fmt is None:
        if suffix not in FORMATS:
            raise UsageError(f"{path}: expected a .svg or .png file name (or give --format svg|png)")
        fmt = suffix
    elif fmt not in FORMATS:
        raise UsageError(f"format must be svg or png, got {fmt!r}")
    elif suffix != fmt:
        raise UsageError(f"{path} does not end in .{fmt}, the format asked for")
    if not path.absolute().parent.is_dir():
        raise UsageError(f"{path}: no folder {path.absolute().parent}")
    if shutil.which("dot") is None:
        raise UsageError("graphviz's `dot` program is not installed: install graphviz (apt-get install graphviz, "
                         "brew install graphviz or conda install graphviz) to draw the graph")
    return path, fmt


def draw(model: Module, x: Tensor, y: Tensor | None = None, loss_fn: Module | None = None, *, seed: int = 0,
         rankdir: str = "auto") -> graphviz.Digraph:
    """The forward/backward graph of one batch through `model` (see backprop_graph), as a graphviz.Digraph:
    shown inline in Jupyter; `handgrad.graph.write(dot, "graph.svg")` (or .png) saves it."""
    return to_dot(backprop_graph(model, x, y, loss_fn, seed), rankdir)


def _shape(t: Any) -> str:
    return "[" + ",".join(map(str, t.shape)) + "]" if hasattr(t, "shape") else ""


def _num(v: float) -> str:
    return f"{v:.3g}"


def _esc(text: str) -> str:
    return html.escape(text, quote=False)


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    return f"{n / 1024:.1f} KiB" if n < 1024**2 else f"{n / 1024**2:.2f} MiB"
