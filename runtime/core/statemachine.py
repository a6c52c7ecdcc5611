"""Finite state machines as data, with guards, and the two asset presets.

A machine is a table of :class:`Transition` rows (trigger, sources, destination, optional guard).
``sm.trigger(name)`` moves along the row whose sources hold the current state, after its guard
agrees; anything else raises :class:`InvalidTransition` naming the asset, the state and the trigger.
Every transition calls the on-change hook and publishes ``STATE_CHANGED`` (payload: asset_id,
from_state, to_state, trigger) on the event bus, if one was given.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import Enum
from typing import Any, Callable, Iterable

from .errors import ConfigurationError, InvalidTransition
from .events import EventBus, EventType

__all__ = [
    "StateMachine", "Transition", "InvalidTransition", "EVChargerState", "BatteryState",
    "ev_charger_machine", "battery_machine", "EV_CHARGER_TRANSITIONS", "BATTERY_TRANSITIONS",
]



Guard = Callable[["StateMachine", str], bool]
OnChange = Callable[[Enum, Enum, str], Any]


@dataclass(frozen=True)
class Transition:
    """One row of a transition table: ``trigger`` moves any of ``sources`` to ``dest`` if ``guard`` allows."""

    trigger: str
    sources: frozenset[Enum]
    dest: Enum
    guard: Guard | None = None


def _index(states: type[Enum], transitions: Iterable[Transition]) -> dict[str, tuple[Transition, ...]]:
    """The rows by trigger, after checking that every state they name is one of ``states``."""
    rows: dict[str, list[Transition]] = {}
    for row in transitions:
        for s in (*row.sources, row.dest):
            if s not in states:
                raise ConfigurationError(f"transition {row.trigger!r}: {s!r} is not a {states.__name__}")
        rows.setdefault(row.trigger, []).append(row)
    return {trigger: tuple(r) for trigger, r in rows.items()}


#: (states, id(table)) -> (table, its rows): a preset's table, checked and indexed once. Keyed by identity, not
#: by value: rows compare equal across enums whose members do (IntEnum), and a table must be checked against
#: its own ``states``. The table is kept, so its id is not reused while it is here.
_INDEXED: dict[tuple[type[Enum], int], tuple[tuple[Transition, ...], dict[str, tuple[Transition, ...]]]] = {}


def _rows_of(states: type[Enum], transitions: Iterable[Transition]) -> dict[str, tuple[Transition, ...]]:
    """:func:`_index`, once per table given as a tuple (a preset's: not once per asset of a site)."""
    if not isinstance(transitions, tuple):
        return _index(states, transitions)
    key = (states, id(transitions))
    hit = _INDEXED.get(key)
    if hit is not None and hit[0] is transitions:
        return hit[1]
    rows = _index(states, transitions)
    if len(_INDEXED) < 64:  # a bounded memo: tables built on the fly are indexed each time
        _INDEXED[key] = (transitions, rows)
    return rows


class StateMachine:
    """A finite state machine for one asset.

    ``states`` is an Enum class, ``transitions`` the table. ``on_change(from, to, trigger)`` runs after
    each transition; ``event_bus`` (optional) receives a STATE_CHANGED event per transition;
    ``clock`` (optional, returns a datetime) stamps those events.
    """

    def __init__(self, asset_id: str, states: type[Enum], initial: Enum, transitions: Iterable[Transition],
                 event_bus: EventBus | None = None, on_change: OnChange | None = None,
                 clock: Callable[[], datetime] | None = None) -> None:
        if initial not in states:
            raise ConfigurationError(f"initial state {initial!r} is not one of {states.__name__}")
        self.asset_id = asset_id
        self.states = states
        self._state = initial
        self._rows = _rows_of(states, transitions)
        self.event_bus = event_bus
        self.on_change = on_change
        self._clock = clock or (lambda: datetime.now(timezone.utc))

    @property
    def state(self) -> Enum:
        return self._state

    @property
    def triggers(self) -> tuple[str, ...]:
        return tuple(self._rows)

    def _row(self, trigger: str) -> Transition | None:
        for row in self._rows.get(trigger, ()):
            if self._state in row.sources:
                return row
        return None

    def can(self, trigger: str) -> bool:
        """True when ``trigger`` is allowed now (in the table and its guard agrees)."""
        row = self._row(trigger)
        return row is not None and (row.guard is None or bool(row.guard(self, trigger)))

    def trigger(self, trigger: str) -> Enum:
        """Fire ``trigger``; returns the new state or raises :class:`InvalidTransition`."""
        if trigger not in self._rows:
            raise InvalidTransition(self.asset_id, self._state, trigger, "unknown trigger")
        row = self._row(trigger)
        if row is None:
            raise InvalidTransition(self.asset_id, self._state, trigger)
        if row.guard is not None and not row.guard(self, trigger):
            raise InvalidTransition(self.asset_id, self._state, trigger, "guard refused")
        before, self._state = self._state, row.dest
        if self.on_change is not None:
            self.on_change(before, row.dest, trigger)
        if self.event_bus is not None:
            self.event_bus.emit(EventType.STATE_CHANGED, {
                "asset_id": self.asset_id, "from_state": before.name, "to_state": row.dest.name,
                "trigger": trigger}, timestamp=self._clock())
        return self._state

    def restore(self, state: Enum) -> None:
        """Put the machine in ``state`` without a transition (no hook, no event): for an asset actor
        restarted after a crash, carrying on from its predecessor's state."""
        if state not in self.states:
            raise ValueError(f"asset {self.asset_id}: {state!r} is not a {self.states.__name__}")
        self._state = state

    def path_to(self, target: Enum) -> list[str] | None:
        """Shortest list of triggers (ignoring guards) from the current state to ``target``; None if unreachable.

        Used to follow a device that reports a state directly (a charger that jumps from Charging
        to Available) through legal transitions only.
        """
        if target == self._state:
            return []
        seen = {self._state}
        queue: deque[tuple[Enum, list[str]]] = deque([(self._state, [])])
        while queue:
            state, path = queue.popleft()
            for trig, rows in self._rows.items():
                for row in rows:
                    if state in row.sources and row.dest not in seen:
                        if row.dest == target:
                            return path + [trig]
                        seen.add(row.dest)
                        queue.append((row.dest, path + [trig]))
        return None

    def __repr__(self) -> str:
        return f"<StateMachine {self.asset_id} {self._state.name}>"


class EVChargerState(Enum):
    AVAILABLE = "AVAILABLE"
    PREPARING = "PREPARING"
    CHARGING = "CHARGING"
    SUSPENDED = "SUSPENDED"
    FINISHING = "FINISHING"
    FAULTED = "FAULTED"
    UNAVAILABLE = "UNAVAILABLE"


class BatteryState(Enum):
    IDLE = "IDLE"
    CHARGING = "CHARGING"
    DISCHARGING = "DISCHARGING"
    STANDBY = "STANDBY"
    FAULTED = "FAULTED"


def _t(trigger: str, sources: Iterable[Enum], dest: Enum) -> Transition:
    return Transition(trigger, frozenset(sources), dest)


_E = EVChargerState
EV_CHARGER_TRANSITIONS: tuple[Transition, ...] = (
    _t("plug_in", [_E.AVAILABLE], _E.PREPARING),
    _t("start_charge", [_E.PREPARING], _E.CHARGING),
    _t("suspend", [_E.CHARGING, _E.PREPARING], _E.SUSPENDED),
    _t("resume", [_E.SUSPENDED], _E.CHARGING),
    _t("complete", [_E.CHARGING, _E.SUSPENDED], _E.FINISHING),
    _t("unplug", [_E.FINISHING, _E.PREPARING, _E.SUSPENDED], _E.AVAILABLE),
    _t("fault", [s for s in _E if s is not _E.UNAVAILABLE], _E.FAULTED),  # "any state but UNAVAILABLE"
    _t("reset", [_E.FAULTED], _E.AVAILABLE),
    _t("disable", [_E.AVAILABLE, _E.FAULTED], _E.UNAVAILABLE),
    _t("enable", [_E.UNAVAILABLE], _E.AVAILABLE),
)

_B = BatteryState
BATTERY_TRANSITIONS: tuple[Transition, ...] = (
    _t("charge", [_B.IDLE, _B.DISCHARGING], _B.CHARGING),
    _t("discharge", [_B.IDLE, _B.CHARGING], _B.DISCHARGING),
    _t("stop", [_B.CHARGING, _B.DISCHARGING], _B.IDLE),
    _t("standby", [_B.IDLE], _B.STANDBY),
    _t("activate", [_B.STANDBY], _B.IDLE),
    _t("fault", list(_B), _B.FAULTED),  # "any"
    _t("reset", [_B.FAULTED], _B.IDLE),
)


def ev_charger_machine(asset_id: str, event_bus: EventBus | None = None, **kwargs: Any) -> StateMachine:
    """The OCPP-aligned 7-state EV charger machine, starting AVAILABLE."""
    return StateMachine(asset_id, EVChargerState, EVChargerState.AVAILABLE, EV_CHARGER_TRANSITIONS,
                        event_bus=event_bus, **kwargs)


def battery_machine(asset_id: str, event_bus: EventBus | None = None, **kwargs: Any) -> StateMachine:
    """The 5-state battery machine, starting IDLE."""
    return StateMachine(asset_id, BatteryState, BatteryState.IDLE, BATTERY_TRANSITIONS,
                        event_bus=event_bus, **kwargs)
