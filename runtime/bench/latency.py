"""``coordinator bench --only latency``: one command at a time on an idle site, in-memory devices.

:func:`bench_single_command`: a site of ``n_assets`` batteries on in-memory devices (real clock, journal on
with fsync "never" by default, so that the figure measures the runtime, not the disk). ``samples``
commands are submitted one after another, each once the one before it is COMPLETED; a command's latency
is from the call to ``submit_many`` until a subscriber to COMMAND_COMPLETED sees it: the whole path
(dispatcher, journal, asset actor, device, the answer, the event actor, the subscriber's actor).
"""

from __future__ import annotations

import tempfile
import threading
import time
from typing import Any

from runtime.core.assets import BatterySpec
from runtime.core.commands import Command, CommandType
from runtime.core.events import Event, EventType
from runtime.site import Site

from .report import ms, percentile

__all__ = ["bench_single_command"]


def bench_single_command(n_assets: int = 10, samples: int = 1000, warmup: int = 50,
                         fsync: str = "never") -> dict[str, Any]:
    """See the module docstring."""
    done = threading.Event()
    wanted = [""]

    def on_completed(event: Event) -> None:
        if event.payload.get("command_id") == wanted[0]:
            done.set()

    latencies: list[float] = []
    timeouts = 0
    with tempfile.TemporaryDirectory() as tmp:
        site = Site([BatterySpec(f"bat-{i}", max_charge_kw=50.0, max_discharge_kw=50.0) for i in range(n_assets)],
                    journal_dir=tmp, fsync=fsync)
        with site:
            site.events.subscribe(EventType.COMMAND_COMPLETED, on_completed)
            for j in range(warmup + samples):
                command = Command(f"one-{j}", f"bat-{j % n_assets}", CommandType.SET_CHARGE_RATE,
                                  float(1 + j % 20), site.clock.now())
                wanted[0] = command.command_id
                done.clear()
                t0 = time.perf_counter()
                site.submit_many((command,))
                if not done.wait(timeout=10):
                    timeouts += 1
                    continue
                if j >= warmup:
                    latencies.append(time.perf_counter() - t0)
    return {"assets": n_assets, "samples": len(latencies), "fsync": fsync,
            "p50_ms": round(1000 * (percentile(latencies, 0.5) or 0), 3),
            "p99_ms": round(1000 * (percentile(latencies, 0.99) or 0), 3),
            "max_ms": ms(max(latencies, default=None)), "timeouts": timeouts}
