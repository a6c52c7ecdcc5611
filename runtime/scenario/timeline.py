"""What happened during a run, rebuilt from the site's events: applied setpoints over time, measured power,
energy, the site total, and the faults and recoveries.

The runner records every event the site publishes (:class:`EventLog`, a site subscriber) and keeps the
final snapshot of every command. From them :class:`Timeline` knows, for each asset and each moment:

* the **applied setpoint** (kW, > 0 = drawn from the grid): a setpoint counts from the moment its
  command is COMPLETED, at the value the device was told (``Command.setpoint``: the granted value when
  the grid limit scaled it down). A charger draws its charge rate (capped by an applied power limit); a
  battery its charge rate minus its discharge rate (within its power limit);
* the **actual power**: the last ``power_kw`` the device reported (TELEMETRY), else the applied setpoint.

Energy is the exact integral of the applied setpoint (piecewise constant) over the run, in kWh.
"""

from __future__ import annotations

import bisect
import threading
from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable, Mapping

from runtime.core.commands import Command, CommandType
from runtime.core.events import Event, EventType

__all__ = ["EventLog", "Timeline", "FAULT_COLUMNS"]

#: The faults-and-recoveries counts per asset, in table order (key, heading).
FAULT_COLUMNS = (("faults", "faults"), ("recoveries", "recovered"), ("link_lost", "link lost"),
                 ("link_back", "link back"), ("reboots", "reboots"), ("restarts", "actor restarts"),
                 ("unavailable", "given up"), ("held", "held"), ("released", "released"))
_EPS = 1e-9


class EventLog:
    """A site subscriber that keeps every event, in the order the site published them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: list[Event] = []

    def __call__(self, event: Event) -> None:
        with self._lock:
            self._events.append(event)

    @property
    def events(self) -> list[Event]:
        with self._lock:
            return list(self._events)


@dataclass(frozen=True)
class _Series:
    """A piecewise-constant signal: value ``values[i]`` from ``times[i]`` on (0 before the first)."""

    times: tuple[float, ...]
    values: tuple[float, ...]

    @classmethod
    def of(cls, changes: list[tuple[float, float]]) -> "_Series":
        return cls(tuple(t for t, _ in changes), tuple(v for _, v in changes))

    def at(self, t: float) -> float | None:
        i = bisect.bisect_right(self.times, t + _EPS) - 1
        return self.values[i] if i >= 0 else None


def _power(kind: str, channels: Mapping[CommandType, float]) -> float:
    limit = channels.get(CommandType.SET_POWER_LIMIT)
    if kind == "battery":
        p = channels.get(CommandType.SET_CHARGE_RATE, 0.0) - channels.get(CommandType.SET_DISCHARGE_RATE, 0.0)
        return max(-limit, min(limit, p)) if limit is not None else p
    rate = channels.get(CommandType.SET_CHARGE_RATE, 0.0)
    return min(rate, limit) if limit is not None else rate


class Timeline:
    """Setpoints, measured power and fault counts of one run (see the module docstring).

    ``kinds``: asset id -> "charger" | "battery" (table order); ``start``/``end``: the run, epoch s;
    ``commands``: command id -> final snapshot (for the granted value of each completed command)."""

    def __init__(self, events: Iterable[Event], commands: Mapping[str, Command], kinds: Mapping[str, str],
                 start: float, end: float) -> None:
        self.kinds = dict(kinds)
        self.start, self.end = start, end
        self.events = sorted(events, key=lambda e: e.timestamp)  # stable: publish order within a moment
        channels: dict[str, dict[CommandType, float]] = {a: {} for a in self.kinds}
        asked: dict[str, dict[CommandType, float]] = {a: {} for a in self.kinds}
        setpoints: dict[str, list[tuple[float, float]]] = {a: [] for a in self.kinds}
        requested: dict[str, list[tuple[float, float]]] = {a: [] for a in self.kinds}
        telemetry: dict[str, list[tuple[float, float]]] = {a: [] for a in self.kinds}
        for event in self.events:
            t = event.timestamp.timestamp()
            asset = event.payload.get("asset_id")
            if asset not in self.kinds:
                continue
            if event.type is EventType.COMMAND_COMPLETED:
                command = commands.get(event.payload.get("command_id", ""))
                try:
                    ctype = command.command_type if command is not None else \
                        CommandType(event.payload["command_type"])
                except (KeyError, ValueError):
                    continue
                if ctype not in (CommandType.SET_CHARGE_RATE, CommandType.SET_DISCHARGE_RATE,
                                 CommandType.SET_POWER_LIMIT):
                    continue
                value = command.setpoint if command is not None else float(event.payload.get("value", 0.0))
                channels[asset][ctype] = float(value)
                asked[asset][ctype] = float(command.value if command is not None else value)
                _append(setpoints[asset], t, _power(self.kinds[asset], channels[asset]))
                _append(requested[asset], t, _power(self.kinds[asset], asked[asset]))
            elif event.type is EventType.TELEMETRY and isinstance(event.payload.get("power_kw"), (int, float)):
                _append(telemetry[asset], t, float(event.payload["power_kw"]))
        self._setpoints = {a: _Series.of(s) for a, s in setpoints.items()}
        self._requested = {a: _Series.of(s) for a, s in requested.items()}
        self._telemetry = {a: _Series.of(s) for a, s in telemetry.items()}

    # ---- power ----------------------------------------------------------------------------------
    def setpoint(self, asset: str, t: float) -> float:
        """The applied setpoint of ``asset`` at epoch ``t`` (kW, > 0 drawn)."""
        value = self._setpoints[asset].at(t)
        return 0.0 if value is None else value

    def actual(self, asset: str, t: float) -> float:
        """The power ``asset`` last reported by ``t``, else its applied setpoint (kW, > 0 drawn)."""
        value = self._telemetry[asset].at(t)
        return self.setpoint(asset, t) if value is None else value

    def site_total(self, t: float) -> float:
        """Sum of the applied setpoints at ``t`` (kW, > 0 imported)."""
        return sum(self.setpoint(a, t) for a in self.kinds)

    def requested_total(self, t: float) -> float:
        """Like :meth:`site_total`, at the requested values of the applied commands (before the grid limit)."""
        return sum(self._requested[a].at(t) or 0.0 for a in self.kinds)

    def drawn_total(self, t: float) -> float:
        """Sum of the applied setpoints that draw at ``t`` (kW): what the grid import limit caps (discharging
        batteries do not offset it)."""
        return sum(max(0.0, self.setpoint(a, t)) for a in self.kinds)

    def peak_import_kw(self) -> float:
        """The highest :meth:`drawn_total` during the run (exact: checked at every change of any setpoint)."""
        moments = {self.start} | {t for s in self._setpoints.values() for t in s.times
                                   if self.start <= t <= self.end}
        return max((self.drawn_total(t) for t in moments), default=0.0)

    def change_times(self, asset: str) -> tuple[float, ...]:
        """When the applied setpoint of ``asset`` changed (epoch s)."""
        return self._setpoints[asset].times

    def telemetry_times(self, asset: str) -> tuple[float, ...]:
        """When ``asset`` reported its power (epoch s); empty when it never did."""
        return self._telemetry[asset].times

    def energy_kwh(self, asset: str) -> float:
        """Net energy of ``asset`` over the run: the integral of its applied setpoint (kWh, > 0 drawn)."""
        return sum(kw * dt for kw, dt in self._pieces(asset)) / 3600.0

    def energy_split_kwh(self, asset: str) -> tuple[float, float]:
        """(drawn, fed) kWh over the run: the positive and the negative part of the integral, both >= 0."""
        drawn = sum(kw * dt for kw, dt in self._pieces(asset) if kw > 0) / 3600.0
        fed = -sum(kw * dt for kw, dt in self._pieces(asset) if kw < 0) / 3600.0
        return drawn, fed

    def _pieces(self, asset: str) -> list[tuple[float, float]]:
        s = self._setpoints[asset]
        bounds = [self.start] + [t for t in s.times if self.start < t < self.end] + [self.end]
        return [(self.setpoint(asset, a), b - a) for a, b in zip(bounds, bounds[1:]) if b > a]

    # ---- faults and recoveries -------------------------------------------------------------------
    def faults(self) -> dict[str, dict[str, int]]:
        """Per asset (only those with something to report): the counts of :data:`FAULT_COLUMNS`."""
        counts: dict[str, dict[str, int]] = defaultdict(lambda: {k: 0 for k, _ in FAULT_COLUMNS})
        down: set[str] = set()
        for event in self.events:
            asset = event.payload.get("asset_id")
            if asset not in self.kinds:
                continue
            p, c = event.payload, counts[asset]
            if event.type is EventType.STATE_CHANGED:
                if p.get("to_state") == "FAULTED":
                    c["faults"] += 1
                elif p.get("from_state") == "FAULTED":
                    c["recoveries"] += 1
            elif event.type is EventType.ASSET_DISCONNECTED:
                c["link_lost"] += 1
                down.add(asset)
            elif event.type is EventType.ASSET_CONNECTED:
                if asset in down:  # back after a lost link
                    c["link_back"] += 1
                    down.discard(asset)
                elif p.get("rebooted"):  # the device restarted without the site seeing it go
                    c["reboots"] += 1
            elif event.type is EventType.ASSET_RESTARTED:
                c["restarts"] += 1
            elif event.type is EventType.ASSET_UNAVAILABLE:
                c["unavailable"] += 1
            elif event.type is EventType.COMMAND_HELD:
                c["held"] += 1
            elif event.type is EventType.COMMAND_RELEASED:
                c["released"] += 1
        return {a: dict(counts[a]) for a in self.kinds if a in counts and any(counts[a].values())}

    def fault_marks(self) -> list[tuple[float, str, str]]:
        """(epoch, asset, what) of each fault-like moment, for the plot: faults, lost links, crashes."""
        marks = []
        for event in self.events:
            asset = event.payload.get("asset_id")
            if asset not in self.kinds:
                continue
            what = None
            if event.type is EventType.STATE_CHANGED and event.payload.get("to_state") == "FAULTED":
                what = "fault"
            elif event.type is EventType.ASSET_DISCONNECTED:
                what = "link lost"
            elif event.type in (EventType.ASSET_RESTARTED, EventType.ASSET_UNAVAILABLE):
                what = "crash"
            if what is not None:
                marks.append((event.timestamp.timestamp(), str(asset), what))
        return marks

    def event_counts(self) -> dict[str, int]:
        """Number of events per event type name."""
        counts: dict[str, int] = defaultdict(int)
        for event in self.events:
            counts[event.type.value] += 1
        return dict(counts)


def _append(series: list[tuple[float, float]], t: float, value: float) -> None:
    """Add a change; a second change at the same moment replaces the first (the last one holds)."""
    if series and abs(series[-1][0] - t) <= _EPS:
        series[-1] = (series[-1][0], value)
    else:
        series.append((t, value))
