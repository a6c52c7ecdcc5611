"""Scenario runner: a simulated site, a schedule and injected faults, on a virtual clock, with a report.

    coordinator scenario scenarios/evening_peak.toml [--json]

A scenario file (TOML) has:

``name``, ``start`` (ISO time with zone), optional ``duration_s`` (default: the schedule's span + one
interval).

``[[assets]]``: ``id``, ``kind`` ("charger" | "battery"), limits (``max_kw`` for chargers;
``max_charge_kw``, ``max_discharge_kw``, ``capacity_kwh`` for batteries). Devices are in-memory.

``[schedule]``: ``csv`` (path relative to the scenario file; first column the timestamps, then kW
columns named as for :func:`~runtime.core.schedule.schedule_to_commands`) and ``asset_map``.

``[[events]]``: fault injection at ``at_s`` seconds after start on ``asset``: ``action`` is one of
status (``value`` a state name), reject (``value`` the reason, or "" to stop rejecting), fail_next
(``value`` a count), silent / connected (``value`` true/false), reboot, crash.

``[expect]`` (optional): ``counts`` = {STATUS = n, ...}, ``states`` = {asset = STATE, ...}. The run
exits 1 when an expectation is not met.
"""

from __future__ import annotations

import json
import sys
import tomllib
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, TextIO

import pandas as pd

from protocols.memory import InMemoryDevice

from .core.assets import AssetSpec, BatterySpec, ChargerSpec
from .core.clock import VirtualClock
from .core.errors import ScenarioError
from .site import Site

__all__ = ["Scenario", "ScenarioError", "load_scenario", "run_scenario"]



@dataclass(frozen=True)
class FaultEvent:
    at_s: float
    asset: str
    action: str
    value: Any = None


@dataclass(frozen=True)
class Scenario:
    name: str
    start: datetime
    assets: tuple[AssetSpec, ...]
    schedule: pd.DataFrame
    asset_map: dict[str, str]
    events: tuple[FaultEvent, ...] = ()
    duration_s: float | None = None
    expect: dict[str, Any] = field(default_factory=dict)


_ACTIONS: dict[str, Callable[[InMemoryDevice, Any], None]] = {
    "status": lambda d, v: d.report_status(str(v)),
    "reject": lambda d, v: d.reject(str(v) if v else None),
    "fail_next": lambda d, v: d.fail_next(int(v)),
    "silent": lambda d, v: d.set_silent(bool(v)),
    "connected": lambda d, v: d.set_connected(bool(v), rebooted=bool(v)),
    "reboot": lambda d, v: d.reboot(),
    "crash": lambda d, v: d.crash_actor(),
}


def _need(table: dict[str, Any], key: str, where: str, path: Path) -> Any:
    if key not in table:
        raise ScenarioError(str(path), [f"{where}: missing field {key!r}"])
    return table[key]


def _asset(entry: dict[str, Any], i: int, path: Path) -> AssetSpec:
    where = f"assets[{i}]"
    asset_id, kind = _need(entry, "id", where, path), _need(entry, "kind", where, path)
    try:
        if kind == "charger":
            return ChargerSpec(asset_id, max_kw=float(entry.get("max_kw", 22.0)))
        if kind == "battery":
            return BatterySpec(asset_id, max_charge_kw=float(entry.get("max_charge_kw", 50.0)),
                               max_discharge_kw=float(entry.get("max_discharge_kw", 50.0)),
                               capacity_kwh=float(entry.get("capacity_kwh", 100.0)))
    except (TypeError, ValueError) as exc:
        raise ScenarioError(str(path), [f"{where}: {exc}"]) from None
    raise ScenarioError(str(path), [f"{where}.kind: must be 'charger' or 'battery', got {kind!r}"])


def load_scenario(path: str | Path) -> Scenario:
    """Read and check a scenario file; every error names the file and the field."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ScenarioError(str(path), ["no such scenario file"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(str(path), [f"not valid TOML: {exc}"]) from None
    try:
        start = datetime.fromisoformat(str(_need(data, "start", "top level", path)))
    except ValueError:
        raise ScenarioError(str(path), [f"start: not an ISO time: {data['start']!r}"]) from None
    if start.tzinfo is None:
        raise ScenarioError(str(path), [f"start: give a time zone, e.g. {data['start']}Z"])
    assets = tuple(_asset(a, i, path) for i, a in enumerate(_need(data, "assets", "top level", path)))
    sched = _need(data, "schedule", "top level", path)
    csv = path.parent / str(_need(sched, "csv", "schedule", path))
    try:
        frame = pd.read_csv(csv, index_col=0)
        frame.index = pd.to_datetime(frame.index, utc=True)
    except FileNotFoundError:
        raise ScenarioError(str(path), [f"schedule.csv: no such file {csv}"]) from None
    except (ValueError, pd.errors.ParserError) as exc:
        raise ScenarioError(str(path), [f"schedule.csv: {csv}: {exc}"]) from None
    ids = {a.asset_id for a in assets}
    events = []
    for i, ev in enumerate(data.get("events", [])):
        where = f"events[{i}]"
        action = _need(ev, "action", where, path)
        if action not in _ACTIONS:
            raise ScenarioError(str(path), [f"{where}.action: unknown action {action!r}; "
                                             f"choose from {', '.join(_ACTIONS)}"])
        asset = _need(ev, "asset", where, path)
        if asset not in ids:
            raise ScenarioError(str(path), [f"{where}.asset: unknown asset {asset!r}"])
        events.append(FaultEvent(float(_need(ev, "at_s", where, path)), asset, action, ev.get("value")))
    return Scenario(name=str(data.get("name", path.stem)), start=start, assets=assets, schedule=frame,
                    asset_map=dict(sched.get("asset_map", {})), events=tuple(sorted(events, key=lambda e: e.at_s)),
                    duration_s=data.get("duration_s"),
                    expect=dict(data.get("expect", {})))


def run_scenario(scenario: Scenario, out: TextIO | None = None, as_json: bool = False) -> int:
    """Run a scenario on a virtual clock; print a report; 0 when every expectation holds."""
    out = out or sys.stdout
    clock = VirtualClock(scenario.start)
    index = scenario.schedule.index
    interval = (index[-1] - index[-2]).total_seconds() if len(index) > 1 else 0.0
    end_s = scenario.duration_s if scenario.duration_s is not None else \
        (index[-1] - pd.Timestamp(scenario.start)).total_seconds() + interval
    with Site(list(scenario.assets), clock=clock, retention_s=float("inf")) as site:  # report on every command
        batch = site.submit_schedule(scenario.schedule, asset_map=scenario.asset_map)
        elapsed = 0.0
        for ev in scenario.events:  # sorted by time; the clock fires every timer on the way
            site.advance(max(0.0, ev.at_s - elapsed))
            elapsed = max(elapsed, ev.at_s)
            _ACTIONS[ev.action](site.device(ev.asset), ev.value)  # type: ignore[arg-type]
            site.settle()
        site.advance(max(0.0, end_s - elapsed))
        commands = [site.command(batch.command_id(i)) for i in range(len(batch))]
        counts: dict[str, int] = {}
        for c in commands:
            if c is not None:
                counts[c.status.value] = counts.get(c.status.value, 0) + 1
        states = {a.asset_id: site.asset_state(a.asset_id) for a in scenario.assets}
    failures = _check(scenario.expect, counts, states)
    report = {"scenario": scenario.name, "commands": len(batch), "counts": counts, "states": states,
              "simulated_s": end_s, "expectations_failed": failures,
              "rows": [{"command_id": c.command_id, "asset_id": c.asset_id, "type": c.command_type.value,
                        "value": c.value, "at": c.scheduled_time.isoformat(), "status": c.status.value,
                        "attempts": c.attempts, "error": c.last_error} for c in commands if c is not None]}
    if as_json:
        json.dump(report, out, indent=2)
        print(file=out)
    else:
        _print_report(report, out)
    return 1 if failures else 0


def _check(expect: dict[str, Any], counts: dict[str, int], states: dict[str, str]) -> list[str]:
    failures = []
    for status, n in expect.get("counts", {}).items():
        if counts.get(status, 0) != n:
            failures.append(f"expected {n} {status}, got {counts.get(status, 0)}")
    for asset, state in expect.get("states", {}).items():
        if states.get(asset) != state:
            failures.append(f"expected {asset} in {state}, got {states.get(asset)}")
    return failures


def _print_report(report: dict[str, Any], out: TextIO) -> None:
    print(f"scenario {report['scenario']}: {report['commands']} commands over {report['simulated_s']:.0f} s "
          f"(virtual)", file=out)
    for row in report["rows"]:
        err = f"  [{row['error']}]" if row["error"] else ""
        print(f"  {row['at'][11:19]}  {row['asset_id']:<10} {row['type']:<18} {row['value']:>7.1f}  "
              f"{row['status']:<10} attempts={row['attempts']}{err}", file=out)
    print("  counts: " + ", ".join(f"{k} {v}" for k, v in sorted(report["counts"].items())), file=out)
    print("  states: " + ", ".join(f"{k} {v}" for k, v in report["states"].items()), file=out)
    for failure in report["expectations_failed"]:
        print(f"  EXPECTATION FAILED: {failure}", file=out)
