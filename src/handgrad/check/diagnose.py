"""One-line diagnoses of the usual mistakes in a hand-written gradient.

Given the hand-written gradient of a tensor and a trusted reference (autograd),
say what kind of wrong it is: missing, wrong shape (not summed over the batch?),
transposed, sign flipped, off by a constant factor (a missing 1/N?), zero where
it should not be, or wrong on some elements only (a mask from the wrong tensor?).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .core import SKIPPED_INPUT, STALE, CheckReport, TensorCheck


def _close(a: Tensor, b: Tensor, rtol: float = 1e-4) -> bool:
    """a equals b up to rtol relative to b's largest element."""
    if a.shape != b.shape:
        return False
    if a.numel() == 0:
        return True
    return float((a - b).abs().max()) <= rtol * max(float(b.abs().max()), 1e-30)


def _shape(t: Tensor | tuple[int, ...]) -> str:
    return "[" + ", ".join(str(s) for s in (t.shape if isinstance(t, Tensor) else t)) + "]"


def diagnose(hand: Tensor | None, ref: Tensor, batch_size: int | None = None) -> str:
    """What is wrong with `hand` as the gradient whose true value is `ref`, in one line."""
    if hand is None:
        return "gradient missing: backward never set its .g (forgot to add into it?)"
    hand, ref = hand.detach().double().cpu(), ref.detach().double().cpu()
    if hand.shape != ref.shape:
        if hand.dim() == ref.dim() + 1 and hand.shape[1:] == ref.shape and _close(hand.sum(0), ref):
            return (f"shape {_shape(hand)}, expected {_shape(ref)}: not summed over the batch dimension "
                    f"(sum over dim 0)")
        if hand.dim() == 2 and hand.t().shape == ref.shape and _close(hand.t(), ref):
            return f"transposed: shape {_shape(hand)}, expected {_shape(ref)}"
        return f"wrong shape: {_shape(hand)}, expected {_shape(ref)}"
    bad = ~torch.isfinite(hand)
    if bool(bad.any()):
        return (f"not finite (NaN or inf) on {100 * float(bad.double().mean()):.0f}% of the elements: a division by "
                "zero, a log of 0, an overflow?")
    if ref.numel() == 0 or float(ref.abs().max()) == 0.0:
        return "should be zero everywhere but is not"
    if float(hand.abs().max()) == 0.0:
        return "zero everywhere, but the true gradient is not"
    if _close(hand, -ref):
        return "sign flipped: the gradient is the negative of the true one"
    if hand.dim() == 2 and hand.shape[0] == hand.shape[1] and _close(hand.t(), ref):
        return "transposed: the gradient equals the transpose of the true one"
    k = float((hand * ref).sum() / (ref * ref).sum())
    if abs(k - 1.0) > 1e-3 and _close(hand, k * ref):
        hint = ""
        if batch_size and batch_size > 1:
            if abs(k - batch_size) <= 1e-3 * batch_size:
                hint = f" = N (batch size {batch_size}): a missing 1/N, e.g. a sum where a mean is needed"
            elif abs(k * batch_size - 1.0) <= 1e-3:
                hint = f" = 1/N (batch size {batch_size}): divided by N once too often"
        if not hint and abs(k - 2.0) < 1e-3:
            hint = ": a factor 2 too many (the derivative of x^2 counted twice?)"
        elif not hint and abs(k - 0.5) < 1e-3:
            hint = ": a factor 2 missing (d/dx x^2 = 2x)"
        return f"off by a constant factor {k:.4g}{hint}"
    wrong = (hand - ref).abs() > 1e-6 * float(ref.abs().max())
    frac = float(wrong.double().mean())
    if not bool(wrong.any()):  # close everywhere at 1e-6, yet not within the check's tolerance
        err = float((hand - ref).abs().max() / ref.abs().max())
        return (f"close but not exact: off by up to {err:.1e} of the largest value (computed in a lower precision, "
                "e.g. through float32 in a float64 check?)")
    zero_where_not = wrong & (hand == 0) & (ref != 0)
    if frac < 1.0 and bool(zero_where_not.any()) and bool((zero_where_not == wrong).all()):
        return (f"zero where it should not be on {100 * frac:.0f}% of the elements "
                f"(a mask computed from the wrong tensor?)")
    if frac < 1.0:
        return f"wrong on {100 * frac:.0f}% of the elements, right on the rest (a mask or an index off?)"
    return "values differ from the true gradient everywhere (not a constant factor, sign or transpose)"


def diagnose_report(report: CheckReport) -> list[tuple[TensorCheck, str]]:
    """(tensor, diagnosis) for each failing tensor of a report that kept the gradients it compared."""
    out = []
    for t in report.failures():
        if t.problem in (STALE, SKIPPED_INPUT) and t.autograd is not None and t.autograd.passed:
            out.append((t, t.problem))
            continue
        if not t.problem and t.autograd is not None and t.fd is not None and t.autograd.passed != t.fd.passed:
            if t.autograd.passed:  # the hand-written gradient is autograd's; the differences disagree with both
                out.append((t, f"matches autograd but not finite differences (off by {t.fd.max_rel:.1e} of the "
                               "largest value): the forward is not smooth where it was evaluated (a kink, a jump, "
                               "a log or sqrt of a negative, a period shorter than the step 1e-6?), or it hides part "
                               "of itself from autograd (.detach(), .data) and the backward follows autograd"))
            else:
                off = "autograd's gradient is zero" if t.autograd.max_rel == float("inf") else \
                    f"off by {t.autograd.max_rel:.1e}"
                out.append((t, f"matches finite differences but not autograd ({off}): "
                               "the forward computes part of its output where autograd does not follow it (.data, "
                               ".item(), float(), .detach(), numpy)?"))
            continue
        if t.problem and t.autograd is not None and t.autograd.passed:  # right values, wrong bookkeeping
            out.append((t, f"right for one call, but its backward {t.problem.split(' (')[0]}: add to it with "
                           "handgrad.add_grad(p, g), as a layer called twice or a tied weight sums its gradients"))
            continue
        out.append((t, diagnose(t.hand, t.reference, report.batch_size)))
    return out
