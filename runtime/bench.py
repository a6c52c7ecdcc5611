"""``coordinator bench``: performance figures, printed (never asserted in the test suite).

Parts (``--only NAME`` to run one):

* ``schedule``   schedule_to_commands on 1,000 assets x 288 intervals vs a row-by-row reference
                 implemented in :mod:`runtime.bench_schedule`, both timed in the same run.
* ``throughput`` commands/s through dispatcher -> asset actor -> in-memory device -> ack -> COMPLETED,
                 with the journal on (fsync "never", so that the figure measures the runtime, not the disk),
                 for steps of 1 and of 4 setpoints per battery.
* ``startup``    start-up time, stop time and RSS of a site with 2,000 asset actors.
"""

from __future__ import annotations

import gc
import resource
import sys
import tempfile
import threading
import time
from typing import Any, Callable, TextIO

import pykka

from .assets import BatterySpec, ChargerSpec
from .clock import VirtualClock
from .commands import Command, CommandType
from .events import Event, EventType
from .site import Site

TARGETS = {"schedule_ms": 100.0, "schedule_speedup": 50.0, "throughput_per_s": 20_000.0,
           "startup_s": 5.0, "startup_rss_mb": 600.0}


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # pragma: no cover


def bench_schedule(quick: bool = False) -> dict[str, Any]:
    from .bench_schedule import run_schedule_bench
    return run_schedule_bench(n_assets=200 if quick else 1000)


_BATTERY_CHANNELS = (CommandType.SET_CHARGE_RATE, CommandType.SET_DISCHARGE_RATE, CommandType.SET_POWER_LIMIT,
                     CommandType.SET_SOC_TARGET)


def bench_throughput(n_assets: int = 1000, waves: int = 20, channels: int = 1, journal: bool = True) -> dict[str, Any]:
    """``waves`` schedule steps on ``n_assets`` batteries, each step carrying ``channels`` setpoints per
    battery (1: charge rate only; 4: charge, discharge, power limit and SoC target). A step is
    submitted as one batch of commands and the next goes once every command of this one is COMPLETED
    (counted by a subscriber), so no setpoint supersedes another. The clock is virtual, the devices
    in-memory: the figure is the runtime's own cost per command, journal included (fsync "never")."""
    per_wave = n_assets * channels
    total = per_wave * waves
    wave_done = threading.Event()
    seen = [0]

    def count(event: Event) -> None:
        seen[0] += 1
        if seen[0] % per_wave == 0:
            wave_done.set()

    clock = VirtualClock()
    with tempfile.TemporaryDirectory() as tmp:
        assets = [BatterySpec(f"bat-{i}", max_charge_kw=50.0, max_discharge_kw=50.0) for i in range(n_assets)]
        site = Site(assets, clock=clock, journal_dir=tmp if journal else None, fsync="never")
        with site:
            site.events.subscribe(EventType.COMMAND_COMPLETED, count)
            now = clock.now()
            steps = [[Command(f"w{w}-{i}-{k}", f"bat-{i}", _BATTERY_CHANNELS[k], float(1 + (w + k) % 20), now)
                      for i in range(n_assets) for k in range(channels)] for w in range(waves)]
            completed = True
            t0 = time.perf_counter()
            for step in steps:
                wave_done.clear()
                site.submit_many(step)
                if not wave_done.wait(timeout=60):
                    completed = False
                    break
            elapsed = time.perf_counter() - t0
    return {"assets": n_assets, "setpoints_per_asset": channels, "commands": total, "completed": seen[0],
            "all_completed": completed, "seconds": round(elapsed, 3),
            "commands_per_s": round(seen[0] / elapsed), "step_ms": round(1000 * elapsed / waves, 1)}


class _Hub(pykka.ThreadingActor):
    def __init__(self, leaves: int, done: threading.Event) -> None:
        super().__init__()
        self.leaves: list[pykka.ActorRef[Any]] = []
        self._n, self._count, self._done = leaves, 0, done

    def on_receive(self, message: Any) -> None:
        if message == "fan-out":
            for leaf in self.leaves:
                leaf.tell("go")
        else:
            self._count += 1
            if self._count % self._n == 0:
                self._done.set()


class _Leaf(pykka.ThreadingActor):
    def __init__(self, hub: pykka.ActorRef[Any]) -> None:
        super().__init__()
        self._hub = hub

    def on_receive(self, message: Any) -> None:
        self._hub.tell("back")


def bench_pykka_ceiling(n_actors: int = 1000, waves: int = 20) -> dict[str, Any]:
    """The same fan-out/fan-in shape with empty actors: one hub tells ``n_actors`` leaves, each tells the
    hub back. No work at all, so this is the ceiling that pykka threads on this machine allow."""
    done = threading.Event()
    hub = _Hub.start(n_actors, done)
    leaves = [_Leaf.start(hub) for _ in range(n_actors)]
    hub.proxy().leaves = leaves
    try:
        t0 = time.perf_counter()
        for _ in range(waves):
            done.clear()
            hub.tell("fan-out")
            done.wait(60)
        elapsed = time.perf_counter() - t0
    finally:
        for ref in [hub, *leaves]:
            ref.stop(block=True, timeout=10)
    return {"actors": n_actors, "round_trips_per_s": round(n_actors * waves / elapsed),
            "fan_out_ms": round(1000 * elapsed / waves, 1)}


def bench_startup(n_assets: int = 2000) -> dict[str, Any]:
    gc.collect()
    rss0 = _rss_mb()
    site = Site([ChargerSpec(f"ev-{i}", max_kw=22.0) for i in range(n_assets)], clock=VirtualClock())
    t0 = time.perf_counter()
    site.start()
    site.settle(timeout=60)
    started = time.perf_counter() - t0
    rss = _rss_mb()
    threads = threading.active_count()
    t1 = time.perf_counter()
    site.stop()
    stopped = time.perf_counter() - t1
    return {"assets": n_assets, "start_s": round(started, 3), "stop_s": round(stopped, 3),
            "rss_mb": round(rss, 1), "rss_growth_mb": round(rss - rss0, 1), "threads": threads}


def _line(out: TextIO, name: str, figures: dict[str, Any], verdicts: list[tuple[str, bool]]) -> None:
    shown = "  ".join(f"{k}={v}" for k, v in figures.items())
    marks = "  ".join(f"[{'ok' if ok else 'MISS'}: {what}]" for what, ok in verdicts)
    print(f"{name:<11} {shown}\n{'':<11} {marks}", file=out)


def run_bench(quick: bool = False, only: list[str] | None = None, out: TextIO | None = None) -> int:
    """Run the benchmark parts and print figures with their targets. Returns 0 (figures, not a test)."""
    out = out or sys.stdout
    parts: dict[str, Callable[[], None]] = {}

    def schedule() -> None:
        r = bench_schedule(quick)
        _line(out, "schedule", r, [(f"ours <= {TARGETS['schedule_ms']:g} ms", r["ours_ms"] <= TARGETS["schedule_ms"]),
                                   (f"speedup >= {TARGETS['schedule_speedup']:g}x",
                                    r["speedup"] >= TARGETS["schedule_speedup"])])

    def throughput() -> None:
        r = bench_pykka_ceiling(n_actors=200 if quick else 1000)
        _line(out, "ceiling", r, [("bare pykka hub -> leaf -> hub, no work: the most any actor design "
                                   "with one thread per asset gets here", True)])
        for channels in (1, 4):
            r = bench_throughput(n_assets=200 if quick else 1000, waves=5 if quick else 20, channels=channels)
            _line(out, "throughput", r, [(f">= {TARGETS['throughput_per_s']:g} commands/s",
                                          r["commands_per_s"] >= TARGETS["throughput_per_s"]),
                                         ("every command COMPLETED", r["all_completed"])])

    def startup() -> None:
        r = bench_startup(n_assets=200 if quick else 2000)
        _line(out, "startup", r, [(f"start <= {TARGETS['startup_s']:g} s", r["start_s"] <= TARGETS["startup_s"]),
                                  (f"rss <= {TARGETS['startup_rss_mb']:g} MB",
                                   r["rss_mb"] <= TARGETS["startup_rss_mb"])])

    parts.update(schedule=schedule, throughput=throughput, startup=startup)
    try:
        from .bench_fleet import run_fleet_bench_part
        parts["fleet"] = lambda: run_fleet_bench_part(out, quick)
    except ImportError:
        pass
    for name in only or list(parts):
        if name not in parts:
            print(f"unknown bench part {name!r}; choose from {', '.join(parts)}", file=out)
            return 2
        parts[name]()
        out.flush()
    return 0
