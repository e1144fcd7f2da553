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

    def plot(self, path: str | Path) -> Path:
        """A PNG: means and stds per layer over batches, and each layer's histogram image over batches.

        Written to a temporary file and renamed, so a failure never leaves half a picture.
        """
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        path = Path(path)
        n = max(len(self.layers), 2)  # grid columns: one histogram per layer; means and stds share the top row
        fig = plt.figure(figsize=(max(10, 3 * n), 8))
        grid = fig.add_gridspec(2, n)
        ax_mean, ax_std = fig.add_subplot(grid[0, : n // 2]), fig.add_subplot(grid[0, n // 2:])
        for (name, m), means, stds in zip(self.layers, self.means, self.stds):
            label = f"{name} {type(m).__name__}"
            ax_mean.plot(torch.stack(means).cpu().numpy(), label=label)
            ax_std.plot(torch.stack(stds).cpu().numpy(), label=label)
        ax_mean.set(title="activation means", xlabel="batch")
        ax_std.set(title="activation stds", xlabel="batch")
        ax_mean.legend(fontsize="small")
        for i, ((name, m), hists) in enumerate(zip(self.layers, self.hists)):
            ax = fig.add_subplot(grid[1, i])
            image = torch.stack(hists).t().float().log1p().cpu().numpy()  # (bins, batches)
            ax.imshow(image, origin="lower", aspect="auto", extent=(0, image.shape[1], 0, RANGE))
            ax.set(title=f"{name} {type(m).__name__}: |activation| histogram", xlabel="batch")
        fig.tight_layout()
        from .plots import _save

        _save(fig, path, dpi=80)
        return path
