"""The built-in demo: a simulated site dispatching a schedule, printing each command's lifecycle.

``coordinator demo`` runs it on a virtual clock (a 30-minute schedule takes well under a second):
two EV chargers and a battery on in-memory devices; half-way through, one charger faults and its
command is HELD until it is reset; one battery setpoint is beyond the battery's limit and is refused
before it is sent (PENDING -> REJECTED).
"""

from __future__ import annotations

import sys
from datetime import datetime, timezone
from typing import Callable, TextIO

import pandas as pd

from .core.assets import BatterySpec, ChargerSpec
from .core.clock import VirtualClock
from .core.events import Event, EventType
from .site import Site

START = datetime(2026, 1, 1, 8, 0, tzinfo=timezone.utc)


def demo_schedule() -> pd.DataFrame:
    """Six 5-minute intervals for two EVs and a battery (kW). The last battery value exceeds its limit."""
    index = pd.date_range(START, periods=6, freq="5min")
    return pd.DataFrame({
        "ev_001_kw": [11.0, 11.0, 7.4, 7.4, 22.0, 0.0],
        "ev_002_kw": [3.7, 7.4, 7.4, 11.0, 11.0, 11.0],
        "battery_charge_kw": [20.0, 20.0, 0.0, 0.0, 0.0, 0.0],
        "battery_discharge_kw": [0.0, 0.0, 15.0, 15.0, 30.0, 80.0],
    }, index=index)


def _printer(out: TextIO, start: float) -> Callable[[Event], None]:
    def show(event: Event) -> None:
        try:
            _show(event)
        except BrokenPipeError:  # the reader went away (piped into `head`): nothing more to print
            pass

    def _show(event: Event) -> None:
        p = event.payload
        t = f"+{event.timestamp.timestamp() - start:6.0f}s"
        if event.type is EventType.STATE_CHANGED:
            print(f"{t}  {p['asset_id']:<8} state {p['from_state']} -> {p['to_state']} ({p['trigger']})", file=out)
        elif event.type is EventType.SCHEDULE_RECEIVED:
            print(f"{t}  schedule {p['batch_id']}: {p['commands']} commands for {p['assets']} assets", file=out)
        elif "command_id" in p:
            extra = f"  [{p['error']}]" if p.get("error") else ""
            print(f"{t}  {p['asset_id']:<8} {p['command_id']:<22} {p['command_type']:<18} {p['value']:>6.1f}  "
                  f"{p['previous_status'] or '':>12} -> {p['status']}{extra}", file=out)
    return show


def run_demo(out: TextIO | None = None) -> int:
    """Run the demo; returns 0 when every command reached a final state."""
    out = out or sys.stdout
    clock = VirtualClock(START)
    assets = [ChargerSpec("ev-1", max_kw=22.0), ChargerSpec("ev-2", max_kw=11.0),
              BatterySpec("bat-1", max_charge_kw=50.0, max_discharge_kw=50.0, capacity_kwh=100.0)]
    with Site(assets, clock=clock) as site:
        site.events.subscribe(None, _printer(out, START.timestamp()))
        batch = site.submit_schedule(demo_schedule(), asset_map={"ev_001": "ev-1", "ev_002": "ev-2",
                                                                  "battery": "bat-1"})
        site.advance(10 * 60)
        print("--- ev-2 reports a fault: its next command is held", file=out)
        site.device("ev-2").report_status("FAULTED", raw="Faulted")  # type: ignore[attr-defined]
        site.advance(5 * 60)
        print("--- ev-2 is reset: the held command is released", file=out)
        site.device("ev-2").report_status("AVAILABLE", raw="Available")  # type: ignore[attr-defined]
        site.advance(20 * 60)
        site.settle()
        statuses = [site.command(batch.command_id(i)) for i in range(len(batch))]
        print("--- final states", file=out)
        summary: dict[str, int] = {}
        for c in statuses:
            assert c is not None
            summary[c.status.value] = summary.get(c.status.value, 0) + 1
        print("    " + ", ".join(f"{k}: {v}" for k, v in sorted(summary.items())), file=out)
        return 0 if all(c is not None and c.is_final for c in statuses) else 1
