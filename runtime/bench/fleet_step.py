"""What both sides of the fleet benchmark record per step: the :class:`Step` outcome, the values a
step sends, and the :class:`GcMeter` that sums garbage-collector pauses. Lean on purpose: the bare
process imports it.
"""

from __future__ import annotations

import gc
import time
from typing import Any, Sequence

__all__ = ["Step", "GcMeter", "step_values"]


def step_values(step: int) -> tuple[float, float]:
    """(charger kW, battery kW) of a step: a new value every step, within the device limits."""
    return 6.0 + step % 12, 10.0 + 5.0 * (step % 7)


class Step:
    """The outcome of one step: latencies (s) of the commands that succeeded, statuses, the process's CPU
    time (s) and its garbage-collector pauses (s) during the step."""

    def __init__(self, latencies: list[float], statuses: dict[str, int], cpu_s: float, extra: dict[str, float]) -> None:
        self.latencies, self.statuses, self.cpu_s, self.extra = latencies, statuses, cpu_s, extra
        self.gc_s = self.gc_max_s = 0.0

    def to_tuple(self) -> tuple[Any, ...]:
        return self.latencies, self.statuses, self.cpu_s, self.extra, self.gc_s, self.gc_max_s

    @classmethod
    def from_tuple(cls, t: Sequence[Any]) -> "Step":
        st = cls(list(t[0]), dict(t[1]), float(t[2]), dict(t[3]))
        st.gc_s, st.gc_max_s = float(t[4]), float(t[5])
        return st


class GcMeter:
    """Sums the garbage collector's pauses in this process while active (gc.callbacks)."""

    def __init__(self) -> None:
        self.total = self.longest = 0.0
        self._t0 = 0.0

    def _cb(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
        else:
            d = time.perf_counter() - self._t0
            self.total += d
            self.longest = max(self.longest, d)

    def __enter__(self) -> "GcMeter":
        gc.callbacks.append(self._cb)
        return self

    def __exit__(self, *exc: Any) -> None:
        gc.callbacks.remove(self._cb)

    def apply(self, step: Step) -> Step:
        step.gc_s, step.gc_max_s = self.total, self.longest
        return step
