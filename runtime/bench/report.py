"""How the benchmarks print and summarize: one figure line per part, percentiles, rounding.

Figures are printed, never asserted: a line shows ``name  key=value ...`` and under it the verdict of
each target, ``[ok: ...]`` or ``[MISS: ...]``.
"""

from __future__ import annotations

import math
from typing import Any, Sequence, TextIO

__all__ = ["print_figures", "print_line", "percentile", "ms", "mean", "summary", "LogHistogram"]


def print_figures(out: TextIO, name: str, figures: dict[str, Any], verdicts: list[tuple[str, bool]]) -> None:
    """Print one part's figures and, under them, the verdict of each target."""
    print_line(out, name, figures)
    marks = "  ".join(f"[{'ok' if ok else 'MISS'}: {what}]" for what, ok in verdicts)
    print(f"{'':<11} {marks}", file=out)


def print_line(out: TextIO, name: str, figures: dict[str, Any]) -> None:
    """One line of figures, ``name  key=value ...`` (a progress line of a long part; no verdicts)."""
    print(f"{name:<11} {'  '.join(f'{k}={v}' for k, v in figures.items())}", file=out)


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


class LogHistogram:
    """Latencies (s) counted in log-spaced bins (2 % wide, from 0.1 ms): percentiles of an unbounded stream
    in fixed memory (a long run keeps no list of samples), within 2 % of the exact nearest-rank value.
    Not thread-safe: guard it with the caller's lock."""

    FLOOR = 1e-4
    _STEP = math.log(1.02)

    def __init__(self) -> None:
        self.bins: dict[int, int] = {}
        self.count = 0
        self.max = 0.0

    def add(self, seconds: float) -> None:
        b = 0 if seconds <= self.FLOOR else 1 + int(math.log(seconds / self.FLOOR) / self._STEP)
        self.bins[b] = self.bins.get(b, 0) + 1
        self.count += 1
        self.max = max(self.max, seconds)

    def merge(self, other: "LogHistogram") -> None:
        for b, n in other.bins.items():
            self.bins[b] = self.bins.get(b, 0) + n
        self.count += other.count
        self.max = max(self.max, other.max)

    def percentile(self, q: float) -> float | None:
        """The upper edge of the bin holding the nearest-rank ``q`` percentile (capped at the largest value
        seen); None when empty."""
        if not self.count:
            return None
        rank = min(self.count, max(1, math.ceil(q * self.count)))
        seen = 0
        for b in sorted(self.bins):
            seen += self.bins[b]
            if seen >= rank:
                return min(self.max, self.FLOOR * math.exp(b * self._STEP))
        return self.max
