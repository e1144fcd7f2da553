"""Dropout, Embedding, Flatten/Unflatten and residual connections."""

import pytest
import torch
import torch.nn.functional as F
from helpers import check_against_torch

import handgrad as hg
from handgrad.check import check_module
from handgrad.interop import to_torch


@pytest.mark.parametrize("p", [0.0, 0.3, 0.5, 1.0])
def test_dropout_matches_torch_with_the_same_seed(p):
    x = torch.randn(6, 10, dtype=torch.float64)
    drop = hg.Dropout(p)
    torch.manual_seed(5)
    y = drop(x)
    torch.manual_seed(5)
    torch.testing.assert_close(y, F.dropout(x, p, training=True))
    dy = torch.randn(6, 10, dtype=torch.float64)
    drop.backward(dy)
    torch.testing.assert_close(x.g, dy * drop.mask if drop.mask is not None else dy)


def test_dropout_eval_is_identity_and_check_passes_in_both_modes():
    drop = hg.Dropout(0.5).eval()
    x = torch.randn(3, 4)
    torch.testing.assert_close(drop(x), x)
    assert check_module(hg.Dropout(0.5), torch.randn(4, 5)).passed
    assert check_module(hg.Dropout(0.5).eval(), torch.randn(4, 5)).passed


def test_dropout_bad_p():
    with pytest.raises(ValueError, match=r"Dropout probability must be in \[0, 1\], got 1.5"):
        hg.Dropout(1.5)


def test_embedding_matches_torch():
    torch.manual_seed(0)
    emb = hg.Embedding(7, 3)
    idx = torch.tensor([[0, 2, 6, 6], [1, 2, 3, 0]])
    check_against_torch(emb, lambda i, weight: F.embedding(i, weight), idx)


@pytest.mark.parametrize("padding_idx", [2, -5])
def test_embedding_padding_row_reads_the_table_and_gets_no_gradient_as_torchs(padding_idx):
    """The padding row gets no gradient (by definition, not the derivative: finite differences would see it),
    and positions holding it read the row, as torch.nn.Embedding's do, also once something else moved it."""
    torch.manual_seed(0)
    emb = hg.Embedding(7, 3, padding_idx=padding_idx, dtype=torch.float64)
    assert emb.padding_idx == 2 and float(emb.weight[2].abs().sum()) == 0.0
    with torch.no_grad():
        emb.weight[2] = torch.tensor([1.0, -2.0, 3.0])  # e.g. an output layer tied to the table moved it
    twin = torch.nn.Embedding(7, 3, padding_idx=padding_idx, dtype=torch.float64)
    twin.load_state_dict(emb.state_dict())
    idx = torch.tensor([[0, 2, 6, 6], [1, 2, 3, 0]])
    dy = torch.randn(2, 4, 3, dtype=torch.float64)
    out, tout = emb(idx), twin(idx)
    torch.testing.assert_close(out, tout.detach(), rtol=0, atol=0)
    emb.backward(dy)
    tout.backward(dy)
    torch.testing.assert_close(emb.weight.g, twin.weight.grad, rtol=1e-12, atol=1e-12)
    assert float(emb.weight.g[2].abs().sum()) == 0.0
    with pytest.raises(ValueError, match=r"padding_idx must be in \[-7, 6\], got 7"):
        hg.Embedding(7, 3, padding_idx=7)


@pytest.mark.parametrize("idx, match", [
    (torch.tensor([0, 10]), r"Embedding\(10, 4\): index 10 out of range, expected indices in \[0, 9\]"),
    (torch.tensor([-1, 3]), r"index -1 out of range"),
    (torch.tensor([0.0, 1.0]), "expects integer indices, got dtype torch.float32"),
])
def test_embedding_bad_indices(idx, match):
    with pytest.raises(ValueError, match=match):
        hg.Embedding(10, 4)(idx)


def test_flatten_unflatten():
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    check_against_torch(hg.Flatten(), lambda x: x.flatten(1), x)
    check_against_torch(hg.Unflatten(1, (1, 28, 28)), lambda x: x.unflatten(1, (1, 28, 28)),
                        torch.randn(3, 784, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"Unflatten\(1, \[1, 28, 28\]\) expects dim 1 of size 784, got input"):
        hg.Unflatten(1, (1, 28, 28))(torch.randn(3, 780))


@pytest.mark.parametrize("ni, nf, stride", [(4, 4, 1), (3, 6, 2), (4, 4, 2)])
@pytest.mark.parametrize("training", [True, False])
def test_res_block_matches_its_torch_twin(ni, nf, stride, training):
    torch.manual_seed(ni + nf + stride)
    block = hg.res_block(ni, nf, stride).double().train(training)
    x = torch.randn(3, ni, 6, 6, dtype=torch.float64)
    twin = to_torch(block)
    xt = x.clone().requires_grad_()
    yt = twin(xt)
    y = block(x)
    torch.testing.assert_close(y, yt.detach())
    dy = torch.randn_like(y)
    block.backward(dy)
    yt.backward(dy)
    torch.testing.assert_close(x.g, xt.grad)
    for (name, p), tp in zip(block.named_parameters(), twin.parameters()):
        torch.testing.assert_close(p.g, tp.grad, msg=lambda m, name=name: f"{name}: {m}")
    assert check_module(block, x).passed


def test_residual_shape_mismatch_is_explained():
    res = hg.Residual(hg.Linear(4, 3))
    with pytest.raises(ValueError, match=r"body output \[2, 3\] and shortcut output \[2, 4\] differ"):
        res(torch.randn(2, 4))
