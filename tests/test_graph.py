"""handgrad.graph: the forward/backward picture, its statistics and the bytes each side keeps for backward."""

import shutil
from pathlib import Path

import graphviz
import pytest
import torch

import handgrad as hg
from handgrad import cli
from handgrad.graph import Stats, backprop_graph, to_dot, write
from handgrad.models import mlp
from handgrad.trace import recording

HERE = Path(__file__).parent
NO_DOT = shutil.which("dot") is None
F32 = 4


def nbytes(t):
    return t.untyped_storage().nbytes()


class Twice(hg.Module):
    """An Embedding tied to the output layer, a Linear and a Tanh called twice each, a view in between."""

    def __init__(self):
        super().__init__()
        self.emb = hg.Embedding(20, 8)
        self.lin = hg.Linear(8, 8)
        self.act = hg.Tanh()
        self.head = hg.TiedLinear(self.emb.weight)

    def forward(self, idx):
        h = self.emb(idx)  # (N, T, 8)
        h = self.act(self.lin(h))
        h = self.act(self.lin(h))
        return self.head(h[:, -1])  # (N, 20), from a view of the last step


def by_name(graph):
    return {n.name: n for n in graph.nodes}


def test_one_node_per_layer_call_and_a_reused_module_is_two_nodes():
    torch.manual_seed(0)
    model, idx, y = Twice(), torch.randint(0, 20, (4, 5)), torch.randint(0, 20, (4,))
    graph = backprop_graph(model, idx, y)
    with recording() as log:  # the same forward again: every call of a layer with its own backward
        hg.CrossEntropyLoss()(model(idx), y)
    assert len(graph.nodes) == len([c for c in log if not c.module.writes_no_bwd()]) == 7
    assert sorted(by_name(graph)) == sorted(["emb", "lin (call 1)", "act (call 1)", "lin (call 2)", "act (call 2)",
                                             "head", "loss"])
    names = by_name(graph)
    chain = ["emb", "lin (call 1)", "act (call 1)", "lin (call 2)", "act (call 2)", "head", "loss"]
    expected = [("x", names["emb"].id), ("y", names["loss"].id)] + \
        [(names[a].id, names[b].id) for a, b in zip(chain, chain[1:])]  # the view h[:, -1] traced to its maker
    assert sorted(graph.edges) == sorted(expected)
    # tied weights and the reused Linear's parameters: one shared node each, joined to every call using them
    assert {k: sorted(ids) for k, (_, ids) in graph.shared.items()} == {
        "emb.weight": sorted([names["emb"].id, names["head"].id]),
        "lin.weight": sorted([names["lin (call 1)"].id, names["lin (call 2)"].id]),
        "lin.bias": sorted([names["lin (call 1)"].id, names["lin (call 2)"].id])}
    source = to_dot(graph).source
    assert source.count("shared by 2 calls") == 3 and source.count("style=dashed") == 6
    for n in graph.nodes:
        assert f"\t{n.id} [" in source


def test_the_labels_show_the_tensors_statistics_and_gradients():
    torch.manual_seed(0)
    model = mlp(12, [6], 3)
    graph = backprop_graph(model, torch.randn(5, 12), torch.randint(0, 3, (5,)))
    source = to_dot(graph).source
    for n in graph.nodes[:-1]:
        out = n.call.out
        d = out.double()
        want = Stats(float(d.mean()), float(d.std()), float(d.min()), float(d.max()))
        assert n.out == want
        assert f"{want.mean:.3g}" in str(n.out) and f"[{want.min:.3g}, {want.max:.3g}]" in str(n.out)
        assert str(n.out) in source and str(Stats.of(out.g)) in source
        assert n.out_grad == Stats.of(out.g) and n.out_grad.std > 0
    first = graph.nodes[0]
    w = first.call.module.weight
    assert f"weight.g [12,6]  {Stats.of(w.g)}" in source and str(Stats.of(graph.sources['x'][1].g)) in source
    assert graph.nodes[-1].name == "loss" and f"out  {float(graph.nodes[-1].call.out):.3g}" in source


def test_handgrad_bytes_are_what_each_call_keeps_for_its_backward():
    torch.manual_seed(0)
    model = hg.Sequential(hg.Conv2d(3, 4, 3, padding=1), hg.BatchNorm2d(4), hg.ReLU(), hg.MaxPool2d(2), hg.Flatten(),
                          hg.Linear(64, 2))
    graph = backprop_graph(model, torch.randn(8, 3, 8, 8), torch.randint(0, 2, (8,)))
    conv, bn, relu, pool, flat, lin, loss = graph.nodes
    x = conv.call.args[0]
    assert conv.handgrad.activations == nbytes(x) == 8 * 3 * 8 * 8 * F32 and conv.handgrad.weights == 0
    assert bn.handgrad.activations == (8 * 4 * 8 * 8 + 4) * F32  # xhat and invstd; not its input
    assert relu.handgrad.activations == nbytes(relu.call.out)  # its output only
    assert pool.handgrad.activations == 8 * 4 * 4 * 4 * 8  # the int64 argmax indices only
    assert flat.handgrad.activations == 0  # Flatten's backward reads only its input's shape
    assert lin.handgrad.activations == nbytes(lin.call.args[0]) == nbytes(flat.call.args[0])  # a view: one storage
    logits, target = loss.call.args
    assert loss.handgrad.activations == nbytes(logits) + nbytes(target) + 2 * 8 * F32 + F32  # + max, logsum, loss
    # the total counts each storage once: the pool's output (Flatten's input) is the Linear's input, a view of it
    assert graph.handgrad_total.activations == sum(n.handgrad.activations for n in graph.nodes)


def test_autograd_bytes_are_what_torch_saves_for_the_same_layers():
    torch.manual_seed(0)
    n, d_in, d_hidden, d_out = 16, 12, 7, 3
    graph = backprop_graph(mlp(d_in, [d_hidden], d_out), torch.randn(n, d_in), torch.randint(0, d_out, (n,)))
    lin1, relu, lin2, loss = graph.nodes
    # torch's addmm saves its input and the weight (not the bias); relu its result
    assert (lin1.autograd.activations, lin1.autograd.weights) == (n * d_in * F32, d_in * d_hidden * F32)
    assert (lin2.autograd.activations, lin2.autograd.weights) == (n * d_hidden * F32, d_hidden * d_out * F32)
    assert (relu.autograd.activations, relu.autograd.weights) == (n * d_hidden * F32, 0)
    # cross-entropy: the log-softmax (N, C), the int64 targets and nll_loss's total weight (a scalar)
    assert loss.autograd.activations == n * d_out * F32 + n * 8 + F32
    # the whole twin, each storage once: the ReLU's result is the second Linear's input
    assert graph.autograd_how == "the whole torch.nn twin"
    assert graph.autograd_total.activations == (n * d_in + n * d_hidden + n * d_out + 1) * F32 + n * 8
    assert graph.autograd_total.weights == (d_in * d_hidden + d_hidden * d_out) * F32
    # where handgrad keeps less: MaxPool2d keeps its argmax indices, torch's the input as well
    pool = backprop_graph(hg.MaxPool2d(2), torch.randn(2, 3, 4, 4)).nodes[0]
    assert pool.autograd.activations == 2 * 3 * 4 * 4 * F32 + pool.handgrad.activations
    assert 'fillcolor="#dff3df"' in to_dot(backprop_graph(hg.MaxPool2d(2), torch.randn(2, 3, 4, 4))).source


def test_a_residual_sum_is_a_node_fed_by_both_branches():
    torch.manual_seed(0)
    for shortcut in (False, True):
        block = hg.Sequential(hg.ReLU(), hg.res_block(4, 8 if shortcut else 4, stride=2 if shortcut else 1))
        graph = backprop_graph(block, torch.randn(2, 4, 6, 6))
        names = by_name(graph)
        into_sum = sorted(a for a, b in graph.edges if b == names["1.0"].id)
        last = "1.0.shortcut.1" if shortcut else "0"  # the identity shortcut: the block's input itself
        assert into_sum == sorted([names["1.0.body.2.1"].id, names[last].id])
        assert names["1.0"].handgrad.activations == names["1.0"].autograd.activations == 0  # a sum keeps nothing
        assert [label for label, _ in graph.clusters] == ["1 · Sequential"]


def test_a_layer_without_a_torch_twin_is_measured_through_its_own_forward():
    import sys

    sys.path.insert(0, str(HERE))
    from wrong_layers import GoodLinear

    layer = GoodLinear(4, 3)
    graph = backprop_graph(layer, torch.randn(5, 4))
    node, = graph.nodes
    # x @ w + b under autograd: the matmul saves x and w
    assert (node.autograd.activations, node.autograd.weights) == (5 * 4 * F32, 4 * 3 * F32)
    assert graph.autograd_how == "summed layer by layer" and not layer.w.requires_grad


def test_draw_returns_a_digraph_and_leaves_the_callers_tensors_alone():
    torch.manual_seed(0)
    x, y = torch.randn(3, 6), torch.randint(0, 2, (3,))
    dot = hg.draw(mlp(6, [4], 2), x, y)
    assert isinstance(dot, graphviz.Digraph) and "rankdir=LR" in dot.source
    assert getattr(x, "g", None) is None and not hg.Module._call_log
    with pytest.raises(hg.errors.UsageError, match="rankdir must be"):
        hg.draw(mlp(6, [4], 2), x, y, rankdir="up")


@pytest.mark.skipif(NO_DOT, reason="graphviz's dot is not installed")
@pytest.mark.parametrize("fmt, magic", [("svg", b"<svg"), ("png", b"\x89PNG")])
def test_svg_and_png_are_written(tmp_path, fmt, magic):
    torch.manual_seed(0)
    dot = hg.draw(mlp(6, [4], 2), torch.randn(3, 6), torch.randint(0, 2, (3,)))
    path = write(dot, tmp_path / f"g.{fmt}")
    assert magic in path.read_bytes()[:400]


@pytest.mark.skipif(NO_DOT, reason="graphviz's dot is not installed")
def test_cli_graph_of_the_builtin_model_and_of_a_users(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HANDGRAD_DATA", str(tmp_path / "no-data-here"))
    assert cli.main(["graph", "--bs", "4", "--hidden", "5"]) == 0
    assert (tmp_path / "graph.svg").read_bytes().lstrip().startswith(b"<?xml")
    assert "wrote graph.svg: 4 layer calls" in capsys.readouterr().out
    assert cli.main(["graph", "--bs", "4", "--format", "png", "--rankdir", "TB"]) == 0
    assert (tmp_path / "graph.png").read_bytes()[:4] == b"\x89PNG"
    assert cli.main(["graph", f"{HERE / 'wrong_layers.py'}:GoodLinear", "--input-shape", "8,4", "--out",
                     "mine.svg"]) == 0
    assert b"GoodLinear" in (tmp_path / "mine.svg").read_bytes()


def test_cli_graph_without_graphviz_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert cli.main(["graph"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "install graphviz" in err[0] and not list(tmp_path.iterdir())


def test_inside_lean_the_picture_still_has_every_tensor():
    torch.manual_seed(0)
    model, x, y = mlp(6, [4], 2), torch.randn(3, 6), torch.randint(0, 2, (3,))
    with hg.lean():
        graph = backprop_graph(model, x, y)
    assert all(n.out is not None and n.out_grad is not None for n in graph.nodes)
    assert [n.handgrad.activations for n in graph.nodes] == \
        [n.handgrad.activations for n in backprop_graph(model, x, y).nodes]
