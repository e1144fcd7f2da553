"""Ready-made models: the seeds' MLP and a small ResNet-style CNN for 28x28 images."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from . import layers as L
from .module import Module, Sequential


def mlp(n_in: int, hidden: Iterable[int], n_out: int, init: str = "kaiming") -> Sequential:
    """Linear -> ReLU -> ... -> Linear; the seeds' model is mlp(784, [50], 10)."""
    sizes = [n_in, *hidden, n_out]
    layers: list[Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(L.Linear(a, b, init=init))
        if i < len(sizes) - 2:
            layers.append(L.ReLU())
    return Sequential(*layers)


def cnn(n_out: int = 10, channels: Iterable[int] = (16, 32, 64),
        image: tuple[int, int, int] = (1, 28, 28)) -> Sequential:
    """A stem conv_bn + ReLU, then one stride-2 residual block per further width, global pooling, Linear.

    Takes flattened images [N, C*H*W] (as the data loaders give them) and unflattens them first.
    For (16, 32, 64) on 28x28: 28x28x16 -> 14x14x32 -> 7x7x64 -> 64 -> n_out.
    """
    widths = list(channels)
    layers: list[Module] = [L.Unflatten(1, image), L.conv_bn(image[0], widths[0], 3, 1), L.ReLU()]
    for ni, nf in zip(widths[:-1], widths[1:]):
        layers.append(L.res_block(ni, nf, stride=2))
    layers += [L.AdaptiveAvgPool2d(1), L.Flatten(), L.Linear(widths[-1], n_out)]
    return Sequential(*layers)


def gpt(vocab: int, n_layer: int, n_head: int, d_model: int, block_size: int, *, recompute: bool = False,
        checkpoint: bool = False, dtype: torch.dtype | None = None,
        device: torch.device | str | None = None) -> Sequential:
    """A GPT: token embedding + learned position embedding, n_layer pre-LayerNorm blocks (causal self-attention,
    4x GELU MLP), a final LayerNorm and the output projection tied to the token embedding. Maps token indices
    (N, T) with T <= block_size to logits (N, T, vocab).

    recompute: each attention recomputes its probabilities in backward; checkpoint: each block is a Recompute
    (only its input kept, the block run again in backward)."""
    from .layers import Embedding, LayerNorm, TiedLinear
    from .layers.transformer import Block, PositionEmbedding

    kw = {"dtype": dtype, "device": device}
    emb = Embedding(vocab, d_model, **kw)
    with torch.no_grad():
        emb.weight.mul_(0.02)  # GPT-2's N(0, 0.02^2)
    blocks = [Block(d_model, n_head, recompute=recompute, **kw) for _ in range(n_layer)]
    if checkpoint:
        blocks = [L.Recompute(b) for b in blocks]
    return Sequential(emb, PositionEmbedding(block_size, d_model, **kw), *blocks, LayerNorm(d_model, **kw),
                      TiedLinear(emb.weight))


class CharRNN(Module):
    """A character model: Embedding(vocab, d) -> RNN or LSTM (batch first) -> Linear(hidden, vocab), mapping token
    indices (N, T) to logits (N, T, vocab). No bwd of its own: its backward is the replay of its layers'."""

    def __init__(self, vocab: int, d: int, hidden: int, num_layers: int = 1, cell: str = "lstm", *,
                 dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> None:
        super().__init__()
        if cell not in ("lstm", "rnn"):
            raise ValueError(f"CharRNN: cell must be 'lstm' or 'rnn', got {cell!r}")
        kw = {"dtype": dtype, "device": device}
        self.cell = cell
        self.emb = L.Embedding(vocab, d, **kw)
        self.rnn = (L.LSTM if cell == "lstm" else L.RNN)(d, hidden, num_layers, batch_first=True, **kw)
        self.head = L.Linear(hidden, vocab, init="torch", **kw)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(self.emb(idx))  # (N, T, hidden)
        return self.head(out)  # (N, T, vocab)


def char_lstm(vocab: int, d: int = 64, hidden: int = 256, num_layers: int = 2, **kw) -> CharRNN:
    return CharRNN(vocab, d, hidden, num_layers, "lstm", **kw)


def char_rnn(vocab: int, d: int = 64, hidden: int = 256, num_layers: int = 1, **kw) -> CharRNN:
    return CharRNN(vocab, d, hidden, num_layers, "rnn", **kw)
