"""Losses: MSELoss, CrossEntropyLoss (fused log-softmax + NLL), NLLLoss, and TokenCrossEntropyLoss for (N, T, V)
logits."""

from __future__ import annotations

from torch import Tensor

from .functional import REDUCTIONS, check_reduction, cross_entropy, cross_entropy_grad, mse, mse_grads, nll, nll_grad
from .module import Module


class _Loss(Module):
    """reduction: 'mean' or 'sum' (a scalar loss), or 'none' (the loss per element or sample; its backward then
    needs dloss of that shape), as torch.nn's losses."""

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        check_reduction(reduction)
        self.reduction = reduction

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}" if self.reduction != "mean" else ""


class MSELoss(_Loss):
    """L = mean((output - target)^2).

    As in the seeds, an output [N, 1] against a target [N] drops its trailing 1;
    any other shape mismatch raises ValueError (never a silent [N, N] broadcast).
    Integer targets are cast to the output's dtype.
    """

    def forward(self, output: Tensor, target: Tensor) -> Tensor:
        return mse(output, target, self.reduction)

    def bwd(self, dloss: Tensor, output: Tensor, target: Tensor) -> tuple[Tensor, Tensor | None]:
        """dL/doutput = 2 (output - target) / N * dloss,  dL/dtarget = -dL/doutput (for a float target)."""
        doutput = mse_grads(output, target, self.reduction, dloss)
        dtarget = -doutput.reshape(target.shape) if target.is_floating_point() else None
        return doutput, dtarget


class CrossEntropyLoss(_Loss):
    """L = mean(logsumexp(X_i) - X_i[y_i]) for logits X (N, C) and labels y (N,) in [0, C).

    Log-softmax and NLL fused: everything is computed on X - max(X), so logits of
    1e4 neither overflow nor lose float32 precision, and the gradient is the
    short softmax(X) - onehot(y).
    """

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        loss, self.max, self.logsum = cross_entropy(logits, target, self.reduction)
        return loss

    def bwd(self, dloss: Tensor, logits: Tensor, target: Tensor) -> Tensor:
        """dL/dX = (softmax(X) - onehot(y)) / N * dloss   ('none': row i times dloss_i)."""
        return cross_entropy_grad(logits, target, self.max, self.logsum, self.reduction, dloss)


class NLLLoss(_Loss):
    """L = -mean(logp_i[y_i]) for log-probabilities (N, C), as after LogSoftmax."""

    def forward(self, logp: Tensor, target: Tensor) -> Tensor:
        return nll(logp, target, self.reduction)

    def bwd(self, dloss: Tensor, logp: Tensor, target: Tensor) -> Tensor:
        """dL/dlogp = -onehot(y) / N * dloss   ('none': row i times dloss_i)."""
        return nll_grad(logp, target, self.reduction, dloss)


class TokenCrossEntropyLoss(_Loss):
    """L = mean over the N*T tokens of logsumexp(X[n, t]) - X[n, t, y[n, t]], for a language model's logits
    X (N, T, V) and next tokens y (N, T): CrossEntropyLoss on the tokens laid out as (N*T, V) rows, as
    `F.cross_entropy(X.reshape(-1, V), y.reshape(-1))` (torch's own layout puts the classes second, (N, V, T))."""

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        if logits.dim() != 3 or target.shape != logits.shape[:2]:
            raise ValueError(f"TokenCrossEntropyLoss expects logits [N, T, V] and targets [N, T], got "
                             f"{list(logits.shape)} and {list(target.shape)}")
        loss, self.max, self.logsum = cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                                    self.reduction)
        return loss if self.reduction != "none" else loss.view(target.shape)  # 'none': (N, T)

    def bwd(self, dloss: Tensor, logits: Tensor, target: Tensor) -> Tensor:
        """dL/dX[n, t] = (softmax(X[n, t]) - onehot(y[n, t])) / (N*T) * dloss."""
        d = cross_entropy_grad(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), self.max, self.logsum,
                               self.reduction, dloss.reshape(-1) if self.reduction == "none" else dloss)
        return d.view(logits.shape)  # (N, T, V)
