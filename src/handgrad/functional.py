"""The seeds' functions: each forward formula beside its hand-written gradient.

This is the one implementation of each piece of math; the layer classes
(`Linear`, `ReLU`, `MSELoss`, `CrossEntropyLoss`, ...) call these functions.
Weights here follow the seeds' layout: `w` is (n_in, n_out) and `y = x @ w + b`.
"""

from __future__ import annotations

import torch
from torch import Tensor

# ----------------------------------------------------------------------- linear


def lin(x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
    """Y = X @ W + b   (X: (N, n_in), W: (n_in, n_out), b: (n_out,)) -> (N, n_out)."""
    if b is not None and x.dim() == 2:
        return torch.addmm(b, x, w)  # bias fused into the matrix multiply
    if b is not None and x.dim() > 2 and x.is_contiguous():  # (..., n_in): its rows as one matrix, the same fusion
        return torch.addmm(b, x.view(-1, x.shape[-1]), w).view(*x.shape[:-1], w.shape[-1])
    y = x @ w
    return y if b is None else y + b


def lin_grads(dy: Tensor, x: Tensor, w: Tensor, needs_input_grad: bool = True) -> tuple[Tensor | None, Tensor, Tensor]:
    """dX = dY @ W.T,  dW = X.T @ dY,  db = dY.sum(0)   (leading dims of X folded into N)."""
    x2 = x.reshape(-1, x.shape[-1])  # (N, n_in)
    dy2 = dy.reshape(-1, dy.shape[-1])  # (N, n_out)
    dx = (dy @ w.t()) if needs_input_grad else None  # (..., n_in)
    dw = x2.t() @ dy2  # (n_in, n_out)
    db = dy2.sum(0)  # (n_out,)
    return dx, dw, db


def lin_grad(inp: Tensor, out: Tensor, w: Tensor, b: Tensor) -> None:
    """The seeds' `lin_grad`: from `out.g`, set `inp.g`, `w.g` and `b.g` (assigned, not accumulated)."""
    inp.g, w.g, b.g = lin_grads(out.g, inp, w)


# ------------------------------------------------------------------------- relu


def relu(x: Tensor) -> Tensor:
    """Y = max(X, 0) (the seeds' x.clamp_min(0.); torch.relu, whose autograd takes the gradient at X = 0 to be 0,
    as the hand-written backward does: a check on inputs exactly 0, such as blank images, agrees)."""
    return torch.relu(x)


def relu_grads(dy: Tensor, y: Tensor) -> Tensor:
    """dX = dY * (X > 0), the mask read from the output: Y >= 0, so sign(Y) is exactly the 0/1 mask (Y > 0).

    (sign then a float multiply is several times faster than multiplying by a bool mask.)
    """
    return dy * y.sign()


def relu_grads_(dy: Tensor, y: Tensor) -> Tensor:
    """relu_grads written into Y's own storage (Y becomes dX): for lean backward, where Y is not needed again."""
    return torch.mul(dy, y.sign_(), out=y)


def relu_grad(inp: Tensor, out: Tensor) -> None:
    """The seeds' `relu_grad`: inp.g = (inp > 0) * out.g   (assigned; relu_grads returns it instead)."""
    inp.g = (inp > 0).to(out.g.dtype) * out.g


# ------------------------------------------------------------------- reductions

REDUCTIONS = ("mean", "sum", "none")  # as torch: a scalar mean or sum, or the loss per element / sample


def check_reduction(reduction: object) -> None:
    """Raise ValueError unless `reduction` is 'mean', 'sum' or 'none'."""
    if not (isinstance(reduction, str) and reduction in REDUCTIONS):
        raise ValueError(f"reduction must be one of 'mean', 'sum', 'none', got {reduction!r}")


def check_dloss(dloss: Tensor, loss_shape: tuple[int, ...], reduction: str) -> None:
    """Raise ValueError unless the upstream gradient `dloss` has the loss's shape."""
    if tuple(dloss.shape) != tuple(loss_shape):
        raise ValueError(f"expected dloss of shape {list(loss_shape)} (the loss's, reduction={reduction!r}), "
                         f"got {list(dloss.shape)}")


# -------------------------------------------------------------------------- mse


def _mse_diff(output: Tensor, target: Tensor) -> Tensor:
    """output - target, with the seeds' trailing 1 dropped; never a silent broadcast.

    Accepts equal shapes, or output (N, 1) against target (N,) as in the seeds.
    """
    if output.shape != target.shape:
        if output.dim() == target.dim() + 1 and output.shape[-1] == 1 and output.shape[:-1] == target.shape:
            output = output.reshape(target.shape)
        else:
            raise ValueError(
                f"MSE needs output and target of the same shape (or output [N, 1] with target [N]); "
                f"got output {list(output.shape)} and target {list(target.shape)}"
            )
    if not target.is_floating_point():
        target = target.to(output.dtype)
    return output - target


def mse(output: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
    """L = mean((output - target)^2)   ('sum': the sum; 'none': L_i = (output_i - target_i)^2, the target's shape)."""
    check_reduction(reduction)
    sq = _mse_diff(output, target).pow(2)
    return sq.mean() if reduction == "mean" else sq.sum() if reduction == "sum" else sq


def mse_grads(output: Tensor, target: Tensor, reduction: str = "mean", dloss: Tensor | None = None) -> Tensor:
    """dL/doutput = 2 (output - target) / N * dloss   (N = number of elements; 1 with 'sum' or 'none').

    dloss: the upstream gradient, of the loss's shape (a scalar; per element with 'none'); None means 1.
    """
    check_reduction(reduction)
    diff = _mse_diff(output, target)
    scale = 2.0 / max(diff.numel(), 1) if reduction == "mean" else 2.0  # (an empty batch: an empty gradient)
    if dloss is None:
        return (diff * scale).reshape(output.shape)
    check_dloss(dloss, diff.shape if reduction == "none" else (), reduction)
    return diff.mul_(dloss * scale).reshape(output.shape)  # diff is our own temporary: scaled in place


def mse_grad(inp: Tensor, targ: Tensor) -> None:
    """The seeds' `mse_grad`: inp.g = 2 (inp - targ) / N   (assigned; mse_grads returns it instead)."""
    inp.g = mse_grads(inp, targ)


# --------------------------------------------------------------- (log-)softmax


def log_softmax(x: Tensor, dim: int = -1) -> Tensor:
    """Y = (X - max) - log(sum(exp(X - max))): shifted by the max, so exp cannot overflow."""
    shifted = x - x.amax(dim=dim, keepdim=True)
    return shifted - shifted.exp().sum(dim=dim, keepdim=True).log()


def log_softmax_grad(dy: Tensor, y: Tensor, dim: int = -1) -> Tensor:
    """dX = dY - softmax(X) * sum(dY), with softmax(X) = exp(Y)."""
    return dy - y.exp() * dy.sum(dim=dim, keepdim=True)


def softmax(x: Tensor, dim: int = -1) -> Tensor:
    """Y = exp(X - logsumexp(X))."""
    return log_softmax(x, dim).exp()


# ------------------------------------------------------------- class targets


def check_class_targets(logits: Tensor, target: Tensor, check_range: bool = True) -> None:
    """Raise ValueError unless logits is (N, C) and target holds N integer labels (in [0, C), if check_range)."""
    if logits.dim() != 2:
        raise ValueError(f"expected logits of shape [N, C], got {list(logits.shape)}")
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise ValueError(f"expected integer class labels (int64), got dtype {target.dtype}")
    if target.shape != logits.shape[:1]:
        raise ValueError(
            f"expected {logits.shape[0]} class labels (target [N]) for logits {list(logits.shape)}, "
            f"got target {list(target.shape)}"
        )
    n_classes = logits.shape[1]
    if check_range and target.numel() and bool(((target < 0) | (target >= n_classes)).any()):
        bad = target[(target < 0) | (target >= n_classes)][0].item()
        raise ValueError(f"class label {bad} out of range: expected labels in [0, {n_classes - 1}]")


def _reduce(per_sample: Tensor, reduction: str) -> Tensor:
    """(N, 1) per-sample losses -> their mean, their sum, or ('none') the losses themselves as (N,)."""
    if reduction == "mean":
        return per_sample.mean()
    return per_sample.sum() if reduction == "sum" else per_sample.view(-1)


def _row_scale(n: int, reduction: str, dloss: Tensor | None) -> float | Tensor:
    """Sample i's factor in dL/dX: dloss / N ('mean'), dloss ('sum'), dloss_i ('none', as (N, 1)); dloss None = 1."""
    scale = 1.0 / max(n, 1) if reduction == "mean" else 1.0  # (an empty batch: an empty gradient)
    if dloss is None:
        return scale
    check_dloss(dloss, (n,) if reduction == "none" else (), reduction)
    return dloss.view(n, 1) if reduction == "none" else dloss * scale


# ------------------------------------------------------------------------- nll


def pick_classes(x: Tensor, target: Tensor) -> Tensor:
    """x[i, target_i] as (N, 1), after check_class_targets. On the CPU gather itself rejects labels out of
    range, so the labels are read (one device sync) only to explain the error; elsewhere they are read first."""
    check_class_targets(x, target, check_range=not x.is_cpu)
    try:
        return x.gather(1, target[:, None])
    except (RuntimeError, IndexError):
        check_class_targets(x, target)
        raise


def nll(logp: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
    """L = -mean(logp[i, target_i])   ('sum': the sum; 'none': L_i = -logp[i, target_i], shape (N,))."""
    check_reduction(reduction)
    return -_reduce(pick_classes(logp, target), reduction)


def nll_grad(logp: Tensor, target: Tensor, reduction: str = "mean", dloss: Tensor | None = None) -> Tensor:
    """dL/dlogp = -onehot(target) / N * dloss   ('sum': no / N; 'none': row i times dloss_i).

    dloss: the upstream gradient, of the loss's shape (a scalar; (N,) with 'none'); None means 1.
    """
    check_reduction(reduction)
    d = torch.zeros_like(logp)  # (N, C)
    scale = _row_scale(logp.shape[0], reduction, dloss)
    if isinstance(scale, Tensor):  # the one nonzero of each row: -scale_i
        return d.scatter_(1, target[:, None], scale.neg().to(d.dtype).expand(logp.shape[0], 1))
    return d.scatter_(1, target[:, None], -scale)


# --------------------------------------------------------------- cross-entropy


def cross_entropy(logits: Tensor, target: Tensor, reduction: str = "mean") -> tuple[Tensor, Tensor, Tensor]:
    """L = mean(log(sum(exp(X_i - m_i))) - (X_i[target_i] - m_i)),  m_i = max(X_i)   ('sum': the sum; 'none':
    the per-sample losses, shape (N,)).

    Working with X - m keeps exp from overflowing and keeps float32 precision for
    logits as large as 1e4. Returns (L, m, log-sum) so backward can rebuild softmax.
    """
    check_reduction(reduction)
    picked = pick_classes(logits, target)  # (N, 1)
    m = logits.amax(dim=1, keepdim=True)  # (N, 1)
    logsum = (logits - m).exp().sum(dim=1, keepdim=True).log()  # (N, 1)
    return _reduce(logsum - (picked - m), reduction), m, logsum


def cross_entropy_grad(logits: Tensor, target: Tensor, m: Tensor, logsum: Tensor, reduction: str = "mean",
                       dloss: Tensor | None = None) -> Tensor:
    """dL/dX = (softmax(X) - onehot(target)) / N * dloss,  softmax(X) = exp((X - m) - logsum)   ('sum': no / N;
    'none': row i times dloss_i).

    dloss: the upstream gradient, of the loss's shape (a scalar; (N,) with 'none'); None means 1.
    """
    check_reduction(reduction)
    scale = _row_scale(logits.shape[0], reduction, dloss)
    d = (logits - m).sub_(logsum).exp_()  # (N, C) softmax
    d.scatter_add_(1, target[:, None], torch.full_like(m, -1.0))
    return d if isinstance(scale, float) and scale == 1.0 else d.mul_(scale)


# ------------------------------------------------------ the seeds' 2-layer MLP


def forward_and_backward(inp: Tensor, targ: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor) -> Tensor:
    """The seeds' MLP: lin -> relu -> lin -> mse, then every gradient into `.g`.

    Sets `inp.g`, `w1.g`, `b1.g`, `w2.g`, `b2.g` (and `.g` of the intermediates);
    returns the loss.
    """
    l1 = lin(inp, w1, b1)  # (N, nh)
    l2 = relu(l1)  # (N, nh)
    out = lin(l2, w2, b2)  # (N, 1)
    loss = mse(out, targ)
    mse_grad(out, targ)  # out.g: (N, 1)
    lin_grad(l2, out, w2, b2)
    relu_grad(l1, l2)
    lin_grad(inp, l1, w1, b1)
    return loss
