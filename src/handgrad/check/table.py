"""Plain-text tables of check reports."""

from __future__ import annotations

from .core import CheckReport, Comparison

HEADER = ("layer", "dtype", "tensor", "shape", "max abs err", "max rel err", "worst idx", "fd rel err", "verdict")


def _e(x: float) -> str:
    return f"{x:.1e}"


def rows(report: CheckReport) -> list[tuple[str, ...]]:
    out = []
    dtype = str(report.dtype).replace("torch.", "")
    for t in report.tensors:
        ad: Comparison | None = t.autograd
        fd: Comparison | None = t.fd
        verdict = "ok" if t.passed else ("FAIL: " + t.problem if t.problem else "FAIL")
        out.append((
            report.module, dtype, t.name, "[" + ", ".join(map(str, t.shape)) + "]",
            _e(ad.max_abs) if ad else "-", _e(ad.max_rel) if ad else "-",
            str(ad.worst_index) if ad else "-", _e(fd.max_rel) if fd else "-", verdict,
        ))
    return out


def format_table(reports: list[CheckReport]) -> str:
    body = [r for rep in reports for r in rows(rep)]
    widths = [max(len(str(c)) for c in col) for col in zip(HEADER, *body)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(HEADER), line(["-" * w for w in widths])] + [line(r) for r in body])
