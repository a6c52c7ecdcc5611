"""``coordinator bench --only startup``: start-up time, stop time and RSS of a site with many asset actors,
next to bare pykka starting as many empty actors in the same run (:func:`bench_bare_startup`)."""

from __future__ import annotations

import gc
import resource
import threading
import time
from typing import Any

import pykka

from runtime.core.assets import ChargerSpec
from runtime.core.clock import VirtualClock
from runtime.site import Site

__all__ = ["bench_startup", "bench_bare_startup"]


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # pragma: no cover


class _StartGC:
    """``pause``: as the site process starts (``coordinator run``): the collector paused during the start,
    then one collection and ``gc.freeze()`` (timed with the start), undone when the part ends."""

    def __init__(self, pause: bool) -> None:
        self.pause = pause

    def begin(self) -> None:
        if self.pause:
            gc.disable()

    def end(self) -> None:
        if self.pause:
            gc.collect()
            gc.freeze()
            gc.enable()

    def undo(self) -> None:
        if self.pause:
            gc.unfreeze()


def bench_startup(n_assets: int = 2000, pause_gc: bool = False) -> dict[str, Any]:
    """Start a site of ``n_assets`` chargers (in-memory devices, virtual clock) and let it settle;
    ``pause_gc``: as the site process does it (see :class:`_StartGC`)."""
    gc.collect()
    rss0 = _rss_mb()
    site = Site([ChargerSpec(f"ev-{i}", max_kw=22.0) for i in range(n_assets)], clock=VirtualClock())
    start_gc = _StartGC(pause_gc)
    t0 = time.perf_counter()
    start_gc.begin()
    try:
        site.start()
        site.settle(timeout=60)
    finally:
        start_gc.end()
    started = time.perf_counter() - t0
    rss = _rss_mb()
    threads = threading.active_count()
    t1 = time.perf_counter()
    site.stop()
    stopped = time.perf_counter() - t1
    start_gc.undo()
    return {"assets": n_assets, "start_s": round(started, 3), "stop_s": round(stopped, 3),
            "rss_mb": round(rss, 1), "rss_growth_mb": round(rss - rss0, 1), "threads": threads}


class _Empty(pykka.ThreadingActor):
    def on_receive(self, message: Any) -> None:
        return None


def bench_bare_startup(n_actors: int = 2000, pause_gc: bool = False) -> dict[str, Any]:
    """Bare pykka: start ``n_actors`` empty actors (``start()`` returns once each actor's thread runs),
    then stop them all: the reference for the site's start-up, measured in the same run (``pause_gc``:
    with the same collector settings as the site's start)."""
    gc.collect()
    start_gc = _StartGC(pause_gc)
    t0 = time.perf_counter()
    start_gc.begin()
    try:
        refs = [_Empty.start() for _ in range(n_actors)]
    finally:
        start_gc.end()
    started = time.perf_counter() - t0
    t1 = time.perf_counter()
    for ref in refs:
        ref.stop(block=False)
    for ref in refs:
        ref.actor_stopped.wait(30)
    stopped = time.perf_counter() - t1
    start_gc.undo()
    return {"actors": n_actors, "start_s": round(started, 3), "stop_s": round(stopped, 3)}
