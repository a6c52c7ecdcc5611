"""Reading a scenario file: TOML -> :class:`~.model.Scenario`, every problem reported at once.

Three passes, whose problems are reported together in one :class:`~runtime.core.errors.ScenarioError`
(one line per problem, each naming the key path the user wrote and the value):

1. the models (:class:`~.model.ScenarioConfig`, built on the site configuration's own asset and
   policy models): unknown keys, wrong types, negative limits, duplicate asset ids, ...;
2. the CSV schedule (:mod:`.csvschedule`): each bad cell by its line and column, naive timestamps;
3. the cross-checks, on the raw table, wherever the values they need are well formed: an event's asset
   exists, its time lies within the run, a ``status`` names a state of the asset's kind, the device kind
   (``devices``) can do the action; expected states and assets exist; the schedule's columns drive
   assets of the scenario; and the schedule converter's own checks.
"""

from __future__ import annotations

import math
import os
import re
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pandas as pd

from runtime.config.loader import read_toml, validate
from runtime.core.errors import ScenarioError, ScheduleError
from runtime.core.schedule import schedule_to_commands

from .csvschedule import read_schedule_csv
from .devices import unsupported
from .model import SITE_STATES, STATES, FaultEvent, Scenario, ScenarioConfig

__all__ = ["load_scenario", "batch_id_of"]


def batch_id_of(slug: str) -> str:
    """The schedule batch id of a scenario: fixed, so command ids (``<batch>-<i>``) repeat run after run."""
    return f"scenario-{slug}"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "scenario"


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _start(data: dict[str, Any]) -> datetime | None:
    raw = data.get("start")
    if isinstance(raw, str):
        try:
            raw = datetime.fromisoformat(raw)
        except ValueError:
            return None
    return raw if isinstance(raw, datetime) and raw.tzinfo is not None else None


def _end_s(data: dict[str, Any], start: datetime | None, frame: pd.DataFrame | None) -> float | None:
    duration = _number(data.get("duration_s"))
    if duration is not None:
        return duration if duration > 0 else None
    if start is None or frame is None or not len(frame):
        return None
    index = frame.index
    interval = (index[-1] - index[-2]).total_seconds() if len(index) > 1 else 0.0
    return max(0.0, (index[-1] - pd.Timestamp(start)).total_seconds() + interval)


def _known_zone(zone: Any) -> bool:
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        return False
    return True


_SELF_HINT = re.compile(r"^assets\[(\d+)\]\.(\w+): unknown key (.*); did you mean '(\w+)'\?$")


def _other_kind(line: str, data: dict[str, Any]) -> str:
    """``assets[1].ocpp: unknown key ...; did you mean 'ocpp'?`` (a charger's key on a battery) says instead
    that this kind of asset has no such key."""
    m = _SELF_HINT.match(line)
    if m is None or m.group(2) != m.group(4):
        return line
    assets = data.get("assets")
    i = int(m.group(1))
    kind = assets[i].get("kind") if isinstance(assets, list) and i < len(assets) and isinstance(assets[i], dict) \
        else None
    return f"assets[{i}].{m.group(2)}: unknown key {m.group(3)}; a {kind} has no {m.group(2)!r}"


def _names(ids: list[str]) -> str:
    shown = ", ".join(repr(i) for i in ids[:8])
    return shown + (f" and {len(ids) - 8} more" if len(ids) > 8 else "")


class _Checker:
    """The cross-section checks of one raw scenario table (pass 3)."""

    def __init__(self, data: dict[str, Any], start: datetime | None, end_s: float | None, devices: str) -> None:
        self.data, self.start, self.end_s, self.devices = data, start, end_s, devices
        self.problems: list[str] = []
        assets = data.get("assets")
        self.kinds: dict[str, str] | None = None
        if isinstance(assets, list):
            self.kinds = {a["id"]: a["kind"] for a in assets
                          if isinstance(a, dict) and isinstance(a.get("id"), str) and a.get("kind") in STATES}

    def run(self) -> list[str]:
        events = self.data.get("events")
        if isinstance(events, list):
            for i, ev in enumerate(events):
                if isinstance(ev, dict):
                    self._event(f"events[{i}]", ev)
        expect = self.data.get("expect")
        if isinstance(expect, dict):
            self._states("expect.states", expect.get("states"))
            energy = expect.get("energy_kwh")
            if isinstance(energy, dict):
                for asset in energy:
                    self._asset(f"expect.energy_kwh.{asset}", asset)
            at = expect.get("at")
            if isinstance(at, list):
                for i, entry in enumerate(at):
                    if isinstance(entry, dict):
                        self._time(f"expect.at[{i}].at_s", entry.get("at_s"))
                        self._states(f"expect.at[{i}].states", entry.get("states"))
        schedule = self.data.get("schedule")
        if isinstance(schedule, dict) and isinstance(schedule.get("asset_map"), dict):
            for key, asset in schedule["asset_map"].items():
                if isinstance(asset, str):
                    self._asset(f"schedule.asset_map.{key}", asset)
        return self.problems

    def _asset(self, where: str, asset: Any) -> str | None:
        """The kind of ``asset``; a problem when the scenario has no such asset (None: cannot tell)."""
        if self.kinds is None or not isinstance(asset, str):
            return None
        if asset not in self.kinds:
            self.problems.append(f"{where}: unknown asset {asset!r}; this scenario has {_names(list(self.kinds))}")
            return None
        return self.kinds[asset]

    def _time(self, where: str, at_s: Any) -> None:
        at = _number(at_s)
        if at is None:
            return
        start = f" ({self.start.isoformat()})" if self.start is not None else ""
        if at < 0:
            self.problems.append(f"{where}: got {at_s!r}, which is before the start of the run{start}; "
                                 f"at_s counts seconds from the start")
        elif self.end_s is not None and at > self.end_s:
            self.problems.append(f"{where}: got {at_s!r}, which is after the end of the run ({self.end_s:g} s; "
                                 f"set duration_s to run longer)")

    def _state(self, where: str, kind: str, state: Any, site_states: bool) -> None:
        allowed = STATES[kind] + (SITE_STATES if site_states and "UNAVAILABLE" not in STATES[kind] else ())
        if isinstance(state, str) and state not in allowed:
            self.problems.append(f"{where}: unknown {kind} state {state!r}; choose from {', '.join(allowed)}")

    def _states(self, where: str, states: Any) -> None:
        if not isinstance(states, dict):
            return
        for asset, state in states.items():
            kind = self._asset(f"{where}.{asset}", asset)
            if kind is not None:
                self._state(f"{where}.{asset}", kind, state, site_states=True)

    def _event(self, where: str, ev: dict[str, Any]) -> None:
        self._time(f"{where}.at_s", ev.get("at_s"))
        kind = self._asset(f"{where}.asset", ev.get("asset"))
        action = ev.get("action")
        if kind is None or not isinstance(action, str):
            return
        if action == "status":
            self._state(f"{where}.value", kind, ev.get("value"), site_states=False)
        why = unsupported(action, kind, self.devices, ev.get("value"))
        if why is not None:
            self.problems.append(f"{where}.action: {why}")


def _schedule_problems(frame: pd.DataFrame, asset_map: dict[str, str], kinds: dict[str, str]) -> list[str]:
    try:
        batch = schedule_to_commands(frame, asset_map)
    except ScheduleError as exc:
        return [f"schedule.csv: {exc}"]
    missing = [a for a in batch.assets if a not in kinds]
    if missing:
        return [f"schedule.csv: the columns drive {_names(missing)}, which this scenario does not have; add them "
                f"to [[assets]] or map their keys to asset ids in schedule.asset_map"]
    return []


def load_scenario(path: str | os.PathLike[str]) -> Scenario:
    """Read and check a scenario file (see :mod:`runtime.scenario`).

    Raises :class:`~runtime.core.errors.ScenarioError` listing every problem, one line each."""
    p = Path(path)
    data = read_toml(p, error=ScenarioError)
    problems: list[str] = []
    config: ScenarioConfig | None = None
    try:
        config = validate(ScenarioConfig, data, p, error=ScenarioError)
    except ScenarioError as exc:
        problems += [_other_kind(line, data) for line in exc.problems]
    frame = None
    schedule = data.get("schedule")
    if isinstance(schedule, dict) and isinstance(schedule.get("csv"), str) and schedule["csv"]:
        zone = schedule.get("timezone")
        if zone is not None and not _known_zone(zone):
            zone = "UTC"  # already reported; read the cells anyway, without a second complaint about zones
        frame, found = read_schedule_csv(p.parent / schedule["csv"], "schedule.csv", zone)
        problems += found
    start = _start(data)
    devices = data.get("devices") if data.get("devices") in ("memory", "sim") else "memory"
    checker = _Checker(data, start, _end_s(data, start, frame), devices)
    problems += checker.run()
    if frame is not None and config is not None:
        problems += _schedule_problems(frame, config.schedule.asset_map, checker.kinds or {})
        if frame.index[-1] < pd.Timestamp(config.start):
            problems.append(f"schedule.csv: every row is before start ({frame.index[-1].isoformat()} < "
                            f"{config.start.isoformat()}): the run would have nothing to send")
    if problems or config is None or frame is None:
        raise ScenarioError(str(p), problems or ["cannot be run"])
    return Scenario(
        name=config.name or p.stem, start=config.start, assets=tuple(config.assets), schedule=frame,
        asset_map=dict(config.schedule.asset_map),
        events=tuple(sorted((FaultEvent(e.at_s, e.asset, e.action, e.value) for e in config.events),
                            key=lambda e: e.at_s)),
        duration_s=config.duration_s, expect=config.expect, seed=config.seed, devices=config.devices,
        security_profile=config.security_profile,
        grid=config.grid, retry=config.retry, timeouts=config.timeouts, slug=_slug(p.stem), source=p)
