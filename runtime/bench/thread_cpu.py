"""CPU time per kind of thread over a measured stretch (Linux): where a benchmark's process CPU went.

``/proc/self/task/<tid>/schedstat`` gives each thread's time on a CPU in nanoseconds (``/proc/.../stat``
counts whole clock ticks, which rounds the thousand short-lived turns of an asset thread to nothing).
Threads are grouped by name without its number (pykka names an actor's thread after its class:
``AssetActor-12`` -> ``AssetActor``). Elsewhere than Linux, :func:`thread_cpu_s` returns {} and the
split is not printed.
"""

from __future__ import annotations

import os
import re
import threading

__all__ = ["ThreadCpu", "thread_cpu_s"]

_TASKS = "/proc/self/task"
_NUMBER = re.compile(r"[-_]?\d+$")


def thread_cpu_s() -> dict[int, float]:
    """Seconds on a CPU so far for each thread of this process, by native thread id ({} off Linux)."""
    out: dict[int, float] = {}
    try:
        tids = os.listdir(_TASKS)
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"{_TASKS}/{tid}/schedstat") as f:
                out[int(tid)] = int(f.read().split()[0]) / 1e9
        except (OSError, ValueError, IndexError):  # the thread ended meanwhile, or no schedstat
            continue
    return out


class ThreadCpu:
    """``start()`` then ``stop()`` around the measured part; :meth:`per` splits what the threads used.

    Call both while the threads to be counted are alive (a thread that ends in between keeps the
    time of its last look)."""

    def __init__(self) -> None:
        self._before: dict[int, float] = {}
        self._after: dict[int, float] = {}
        self._names: dict[int, str] = {}

    def _look(self) -> dict[int, float]:
        for t in threading.enumerate():
            if t.native_id is not None:
                self._names[t.native_id] = _NUMBER.sub("", t.name) or t.name
        return thread_cpu_s()

    def start(self) -> None:
        self._before = self._look()

    def stop(self) -> None:
        self._after = self._look()

    def per(self, count: int, top: int = 4) -> dict[str, float]:
        """Microseconds of CPU per unit of ``count`` (commands, round trips), by kind of thread, the
        ``top`` largest and the rest as "other"; {} when nothing was measured."""
        by: dict[str, float] = {}
        for tid, after in self._after.items():
            name = self._names.get(tid, "other")
            by[name] = by.get(name, 0.0) + after - self._before.get(tid, 0.0)
        if not by or count <= 0:
            return {}
        ranked = sorted(by.items(), key=lambda kv: -kv[1])
        shown = {name: round(1e6 * s / count, 1) for name, s in ranked[:top]}
        rest = sum(s for _, s in ranked[top:])
        if rest:
            shown["other"] = round(1e6 * rest / count, 1)
        return shown
