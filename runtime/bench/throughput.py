"""``coordinator bench --only throughput``: commands/s through the whole actor path, and the ceiling.

* :func:`bench_throughput`: schedule steps through dispatcher -> asset actor -> in-memory device ->
  ack -> COMPLETED, with the journal on (fsync "never", so that the figure measures the runtime, not
  the disk), for steps of 1 and of 4 setpoints per battery.
* :func:`bench_pykka_ceiling`: the same fan-out/fan-in shape with empty pykka actors: the most any
  design with one thread per asset can get on this machine.

Both print ``cpu_us_by_thread``: the CPU per command (round trip) of each kind of thread, from the
kernel's per-thread counters (:mod:`.thread_cpu`): the dispatcher's, the event actor's and the asset
actors' share, where ``cpu_us_per_command`` is the whole process's.
"""

from __future__ import annotations

import tempfile
import threading
import time
from typing import Any

import pykka

from runtime.core.assets import BatterySpec
from runtime.core.clock import VirtualClock
from runtime.core.commands import Command, CommandType
from runtime.core.events import Event, EventType
from runtime.site import Site

from .thread_cpu import ThreadCpu

__all__ = ["bench_throughput", "bench_pykka_ceiling"]


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
            threads = ThreadCpu()
            threads.start()
            cpu0 = time.process_time()
            t0 = time.perf_counter()
            for step in steps:
                wave_done.clear()
                site.submit_many(step)
                if not wave_done.wait(timeout=60):
                    completed = False
                    break
            elapsed = time.perf_counter() - t0
            cpu = time.process_time() - cpu0
            threads.stop()
    return {"assets": n_assets, "setpoints_per_asset": channels, "commands": total, "completed": seen[0],
            "all_completed": completed, "seconds": round(elapsed, 3),
            "commands_per_s": round(seen[0] / elapsed), "step_ms": round(1000 * elapsed / waves, 1),
            "cpu_us_per_command": round(1e6 * cpu / max(1, seen[0]), 1),
            "cpu_us_by_thread": threads.per(seen[0])}


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
        threads = ThreadCpu()
        threads.start()
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        for _ in range(waves):
            done.clear()
            hub.tell("fan-out")
            done.wait(60)
        elapsed = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
        threads.stop()
    finally:
        for ref in [hub, *leaves]:
            ref.stop(block=True, timeout=10)
    return {"actors": n_actors, "round_trips_per_s": round(n_actors * waves / elapsed),
            "fan_out_ms": round(1000 * elapsed / waves, 1), "cpu_us_per_round_trip": round(1e6 * cpu / (n_actors * waves), 1),
            "cpu_us_by_thread": threads.per(n_actors * waves)}
