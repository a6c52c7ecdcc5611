"""How the benchmarks print and summarize: one figure line per part, percentiles, rounding.

Figures are printed, never asserted: a line shows ``name  key=value ...`` and under it the verdict of
each target, ``[ok: ...]`` or ``[MISS: ...]``.
"""

from __future__ import annotations

import math
from typing import Any, Sequence, TextIO

__all__ = ["print_figures", "percentile", "ms", "mean", "summary"]


def print_figures(out: TextIO, name: str, figures: dict[str, Any], verdicts: list[tuple[str, bool]]) -> None:
    """Print one part's figures and, under them, the verdict of each target."""
    shown = "  ".join(f"{k}={v}" for k, v in figures.items())
    marks = "  ".join(f"[{'ok' if ok else 'MISS'}: {what}]" for what, ok in verdicts)
    print(f"{name:<11} {shown}\n{'':<11} {marks}", file=out)


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..1) of ``values``; None when empty."""
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


def ms(v: float | None) -> float | None:
    return None if v is None else round(v * 1000.0, 1)


def mean(values: Sequence[float]) -> float | None:
    return round(sum(values) / len(values), 1) if values else None


def summary(steps: list[list[float]]) -> dict[str, Any]:
    """p50/p99/max (ms) over all steps, and of the first step alone."""
    every = [t for step in steps for t in step]
    first = steps[0] if steps else []
    return {"p50_ms": ms(percentile(every, 0.50)), "p99_ms": ms(percentile(every, 0.99)), "max_ms": ms(max(every, default=None)),
            "first_p50_ms": ms(percentile(first, 0.50)), "first_p99_ms": ms(percentile(first, 0.99)),
            "step_max_ms": [ms(max(s, default=None)) for s in steps]}
