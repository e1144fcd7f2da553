"""Conv2d: forward by torch's convolution kernel; backward written here as a transposed
convolution (input gradient) and a convolution of the input with the output gradient
(weight gradient)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..init import init_tensor
from ..module import Module, Parameter, add_grad


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def conv_out_size(size: int, k: int, stride: int, padding: int, dilation: int) -> int:
    return (size + 2 * padding - dilation * (k - 1) - 1) // stride + 1


class Conv2d(Module):
    """Y[n, o] = b[o] + sum_{c, i, j} W[o, c, i, j] X[n, c, s*h + d*i - p, s*w + d*j - p]  (per group).

    Weight layout as torch.nn.Conv2d: (out_channels, in_channels // groups, kh, kw).
    init: 'kaiming' (default), 'randn' or 'torch'; the bias starts at zero (U(+-1/sqrt(fan_in)) with 'torch').
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int],
                 stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] = 0,
                 dilation: int | tuple[int, int] = 1, groups: int = 1, bias: bool = True, *, init: str = "kaiming",
                 dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> None:
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"Conv2d: in_channels ({in_channels}) and out_channels ({out_channels}) must both be "
                             f"divisible by groups ({groups})")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size, self.stride = _pair(kernel_size), _pair(stride)
        self.padding, self.dilation = _pair(padding), _pair(dilation)
        kh, kw = self.kernel_size
        fan_in = in_channels // groups * kh * kw
        self.weight = Parameter(init_tensor((out_channels, in_channels // groups, kh, kw), fan_in, init,
                                            dtype=dtype, device=device))
        self.bias = None
        if bias:
            b = init_tensor((out_channels,), fan_in, "torch", dtype=dtype, device=device) if init == "torch" else \
                torch.zeros(out_channels, dtype=dtype, device=device)
            self.bias = Parameter(b)

    def _check(self, x: Tensor) -> None:
        name = f"Conv2d({self.in_channels} -> {self.out_channels}, kernel {self.kernel_size[0]}x{self.kernel_size[1]})"
        if x.dim() != 4:
            raise ValueError(f"{name} expects input [N, C, H, W], got {list(x.shape)}")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"{name} expects {self.in_channels} input channels, got {x.shape[1]} "
                             f"(input {list(x.shape)})")
        (kh, kw), (ph, pw), (dh, dw) = self.kernel_size, self.padding, self.dilation
        h, w = x.shape[2] + 2 * ph, x.shape[3] + 2 * pw
        eh, ew = dh * (kh - 1) + 1, dw * (kw - 1) + 1
        if h < eh or w < ew:
            raise ValueError(f"{name}: input spatial size {x.shape[2]}x{x.shape[3]} ({h}x{w} with padding) is "
                             f"smaller than the kernel ({eh}x{ew} with dilation)")

    def backward_reads_output(self) -> bool:
        return False

    def forward(self, x: Tensor) -> Tensor:
        self._check(x)
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def bwd(self, dy: Tensor, x: Tensor) -> Tensor | None:
        """dX = conv_transpose2d(dY, W)   dW = sum_{n,h,w} dY[n, o, h, w] X[n, c, s h + d i - p, s w + d j - p]
        db = sum_{n,h,w} dY  (for 1x1 kernels both are GEMMs: see _pointwise_input_grad and _weight_grad)."""
        if self.bias is not None:
            add_grad(self.bias, dy.sum((0, 2, 3)))
        add_grad(self.weight, self._weight_grad(dy, x))
        return self._input_grad(dy, x) if self.needs_input_grad else None

    def _input_grad(self, dy: Tensor, x: Tensor, into: Tensor | None = None) -> Tensor:
        """dX = conv_transpose2d(dY, W), sized as X (output_padding recovers the rows a stride dropped);
        added into `into` (and that returned) when given."""
        if self._pointwise():
            return self._pointwise_input_grad(dy, x, into)
        out_pad = tuple(
            size - ((out - 1) * s - 2 * p + d * (k - 1) + 1)
            for size, out, s, p, d, k in zip(x.shape[2:], dy.shape[2:], self.stride, self.padding, self.dilation,
                                            self.kernel_size)
        )
        dx = F.conv_transpose2d(dy, self.weight, None, self.stride, self.padding, out_pad, self.groups,
                                self.dilation)  # (N, C, H, W)
        return dx if into is None else into.add_(dx)

    def _pointwise_input_grad(self, dy: Tensor, x: Tensor, into: Tensor | None = None) -> Tensor:
        """1x1 kernel: dX[n, :, s h - p, s w - p] = W.T @ dY[n, :, h, w] (per group), zero at pixels no output read."""
        g, (ph, pw), (sh, sw) = self.groups, self.padding, self.stride
        cg, og = self.in_channels // g, self.out_channels // g
        n, (ho, wo), (h, w) = x.shape[0], dy.shape[2:], x.shape[2:]
        w2 = self.weight.view(g, og, cg)
        rows = [torch.matmul(w2[i].t(), dy[:, i * og:(i + 1) * og].reshape(n, og, ho * wo))  # (N, Cg, Ho*Wo)
                for i in range(g)]
        sub = (rows[0] if g == 1 else torch.cat(rows, 1)).view(n, self.in_channels, ho, wo)
        if (sh, sw, ph, pw) == (1, 1, 0, 0):
            return sub if into is None else into.add_(sub)
        if into is not None and (ph, pw) == (0, 0):  # only the pixels the kernel read get gradient
            into[:, :, ::sh, ::sw][:, :, :ho, :wo].add_(sub)
            return into
        dx = dy.new_zeros(n, self.in_channels, h + 2 * ph, w + 2 * pw)
        dx[:, :, ::sh, ::sw][:, :, :ho, :wo] = sub
        dx = dx[:, :, ph:ph + h, pw:pw + w].contiguous() if (ph, pw) != (0, 0) else dx
        return dx if into is None else into.add_(dx)

    # 1x1 kernels take GEMMs for both gradients (POINTWISE); False forces the convolution forms for every
    # kernel (tests compare both). Measured on CPU for the model zoo's strided 1x1 shortcuts: the GEMMs take
    # a quarter to a half of the convolution forms' time; for 3x3 kernels the convolution form beats a GEMM
    # over unfolded patches by 1.4-3x.
    POINTWISE = True
    # an undilated layer with at most this many weights per output channel (C_in kh kw: a 3x3 kernel over one
    # channel) takes dW as a GEMM over its unfolded patches (N kh kw C_in L values). Measured on CPU: the CNN's
    # stem (1 -> 16, 3x3, 28x28, batch 128) 2.2 ms against 5.3 for the convolution form; but 3 channels 3x3 at
    # 32x32 (9.4 vs 5.5 ms), one channel 5x5 (5.4 vs 2.2) or dilated kernels are faster the other way. 0 turns
    # it off (tests compare both)
    UNFOLD_MAX = 9

    def _pointwise(self) -> bool:
        return self.POINTWISE and self.kernel_size == (1, 1)

    def _weight_grad(self, dy: Tensor, x: Tensor) -> Tensor:
        """dW[o, c, i, j] = sum_{n,h,w} dY[n, o, h, w] X[n, c, s h + d i - p, s w + d j - p], per group, as
        either a convolution of X (batch and channels swapped) with dY as the kernel, its stride and dilation
        trading places, or, for 1x1 kernels, dW = sum_n dY[n] @ Xs[n].T with Xs = X padded and sampled at
        the stride (N, Cg, Ho*Wo), or, for few input channels, dW = sum_n dY[n] @ unfold(X)[n].T."""
        (kh, kw), g = self.kernel_size, self.groups
        cg, og = self.in_channels // g, self.out_channels // g
        n, (ho, wo) = x.shape[0], dy.shape[2:]
        if n == 0:  # an empty sum (the convolution form would swap an empty batch into the channels)
            return self.weight.new_zeros(self.weight.shape)
        pointwise = self._pointwise()
        if pointwise:
            (ph, pw), (sh, sw) = self.padding, self.stride
            xs = F.pad(x, (pw, pw, ph, ph)) if (ph, pw) != (0, 0) else x
            xs = xs[:, :, ::sh, ::sw][:, :, :ho, :wo]  # (N, C, Ho, Wo): the pixels the 1x1 kernel reads
        if not pointwise and g == 1 and cg * kh * kw <= self.UNFOLD_MAX and self.dilation == (1, 1):
            cols = F.unfold(x, (kh, kw), self.dilation, self.padding, self.stride)  # (N, C kh kw, Ho Wo)
            dw = torch.bmm(dy.reshape(n, og, ho * wo), cols.transpose(1, 2)).sum(0)  # (Og, C kh kw)
            return dw.view(og, cg, kh, kw)
        parts = []
        for i in range(g):
            dyg = dy[:, i * og:(i + 1) * og]
            if pointwise:
                xg = xs[:, i * cg:(i + 1) * cg].reshape(n, cg, ho * wo)
                dw = torch.bmm(dyg.reshape(n, og, ho * wo), xg.transpose(1, 2)).sum(0)  # (Og, Cg)
                parts.append(dw.view(og, cg, 1, 1))
            else:
                xg = x[:, i * cg:(i + 1) * cg]
                r = F.conv2d(xg.transpose(0, 1), dyg.transpose(0, 1), None, self.dilation, self.padding,
                             self.stride)  # (Cg, Og, >=kh, >=kw)
                parts.append(r[:, :, :kh, :kw].transpose(0, 1))  # (Og, Cg, kh, kw)
        return parts[0] if g == 1 else torch.cat(parts, 0)

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding != (0, 0):
            s += f", padding={self.padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        return s + ("" if self.bias is not None else ", bias=False")
