"""Activation statistics over training (as fastai's ActivationStats) and their picture."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from .. import layers as L
from ..module import Module

ACTIVATIONS = (L.ReLU, L.LeakyReLU, L.GeneralRelu, L.GELU, L.SiLU, L.Tanh, L.Sigmoid)
BINS, RANGE = 40, 10.0


class ActivationStats:
    """After each batch, the mean, std and histogram of |output| of every activation layer.

    Reads each layer's saved output (`layer.out`), so it needs no hooks. Models without
    activation layers are tracked at their layers with parameters.
    """

    def __init__(self, model: Module) -> None:
        named = [(n, m) for n, m in model.named_modules() if not any(True for _ in m.children())]
        chosen = [(n, m) for n, m in named if isinstance(m, ACTIVATIONS)]
        self.layers = chosen or [(n, m) for n, m in named if any(True for _ in m._own_parameters())]
        for _, m in self.layers:
            m.keep_output = True  # read after the forward: lean training must not free it
        self.means: list[list[Tensor]] = [[] for _ in self.layers]
        self.stds: list[list[Tensor]] = [[] for _ in self.layers]
        self.hists: list[list[Tensor]] = [[] for _ in self.layers]

    def record(self) -> None:
        for i, (_, m) in enumerate(self.layers):
            out = m.out.detach().float()
            self.means[i].append(out.mean())
            self.stds[i].append(out.std())
            self.hists[i].append(torch.histc(out.abs(), BINS, 0.0, RANGE) / out.numel())  # fractions

    def __len__(self) -> int:
        return len(self.means[0]) if self.layers else 0

    def plot(self, path: str | Path, about: str = "", batches_per_epoch: int | None = None) -> Path:
        """A PNG: each layer's mean and std over the batches (top), and each layer's histogram of |activation|
        over the batches as an image (below: one column per batch, colour the share of the layer's outputs in
        each bin, on a log scale, with its colour bar). `about` goes under the title; `batches_per_epoch` marks
        the epochs' ends.

        Written to a temporary file and renamed, so a failure never leaves half a picture.
        """
        from matplotlib.colors import LogNorm
        from matplotlib.ticker import MaxNLocator

        from .plots import _pyplot, _save

        plt = _pyplot()
        path = Path(path)
        per_row = 4  # histograms in a row, at most
        n_layers = len(self.layers)
        hist_rows = max(-(-n_layers // per_row), 1)
        cols = max(min(n_layers, per_row), 1)  # each row of histograms spans the figure
        fig = plt.figure(figsize=(max(10, 3.4 * cols), 3.6 + 3.0 * hist_rows), layout="constrained")
        grid = fig.add_gridspec(1 + hist_rows, 2 * cols)  # a histogram spans two columns, means and stds half
        ax_mean, ax_std = fig.add_subplot(grid[0, :cols]), fig.add_subplot(grid[0, cols:])
        epoch_ends = list(range(batches_per_epoch, len(self), batches_per_epoch)) if batches_per_epoch else []
        for (name, m), means, stds in zip(self.layers, self.means, self.stds):
            label = f"layer {name} ({type(m).__name__})"
            ax_mean.plot(torch.stack(means).cpu().numpy(), label=label)
            ax_std.plot(torch.stack(stds).cpu().numpy(), label=label)
        for ax, what in ((ax_mean, "mean"), (ax_std, "standard deviation")):
            for end in epoch_ends:
                ax.axvline(end, color="0.6", linewidth=0.8, linestyle=":")
            ax.set(title=f"activation {what}, per layer", xlabel="batch (training step)", ylabel=what,
                   xlim=(0, max(len(self) - 1, 1)))
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(color="0.92")
        ax_std.legend(fontsize="small", title="dotted: end of an epoch" if epoch_ends else None,
                      title_fontsize="small", loc="best")
        norm = LogNorm(vmin=1e-4, vmax=1.0)  # shares below 1e-4 (and empty bins) are drawn as the lowest colour
        image = None
        hist_axes = []
        for i, ((name, m), hists) in enumerate(zip(self.layers, self.hists)):
            row, col = 1 + i // per_row, i % per_row
            ax = fig.add_subplot(grid[row, 2 * col: 2 * col + 2])
            shares = torch.stack(hists).t().float().clamp(min=1e-4).cpu().numpy()  # (bins, batches)
            image = ax.imshow(shares, origin="lower", aspect="auto", norm=norm, cmap="viridis",
                              extent=(0, shares.shape[1], 0, RANGE))
            for end in epoch_ends:
                ax.axvline(end, color="white", linewidth=0.8, linestyle=":")
            ax.set(title=f"layer {name} ({type(m).__name__}):\nhistogram of |activation|", xlabel="batch",
                   ylabel="|activation|")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # batches are whole
            hist_axes.append(ax)
        if image is not None:
            fig.colorbar(image, ax=hist_axes, label=f"share of the layer's outputs in the bin\n({BINS} bins "
                         f"from 0 to {RANGE:g}; log scale)", shrink=0.9)
        fig.suptitle(f"activation statistics over {len(self)} training batches" + (f"\n{about}" if about else ""))
        _save(fig, path, dpi=80)
        return path
