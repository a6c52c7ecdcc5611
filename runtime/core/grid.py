"""The site's grid connection: how much the assets together may be told to draw from it or feed into it.

:class:`GridLimit` is the configuration; :class:`GridAllocator` enforces it. The allocator is pure and
single-threaded: the dispatcher owns it, shows it every change of every command (:meth:`observe`) and
asks it, between the command table's ``due()`` and ``mark_dispatched``, what each due setpoint may be
granted (:meth:`review`). It never reads a clock.

Model
-----
Each asset has an *import channel* (SET_CHARGE_RATE: what a charger or a charging battery draws) and a
battery has an *export channel* (SET_DISCHARGE_RATE: what it feeds in). Per channel the allocator keeps

* ``requested``: what the sources last asked for (a schedule row, an operator command);
* ``confirmed``: the granted value the device last confirmed (COMPLETED), 0 at first;
* ``in_flight``: the granted value of a command on its way (DISPATCHED or ACKNOWLEDGED), if any.

Its *budget* is ``max(confirmed, in_flight)``: what the device may be drawing (feeding) right now. A
command that timed out or was superseded while in flight may still have landed, so it counts as
confirmed. The import limit caps the sum of the import budgets, the export limit the sum of the export
budgets; a discharging battery does not buy room for the chargers (were it to stop, the limit would
break). SET_POWER_LIMIT and SET_SOC_TARGET never raise what an asset draws and pass unchanged.

Targets: when the requests of a side fit its limit, each channel's target is its request. Otherwise the
policy decides: "proportional" scales every request by the same factor; "priority" serves assets by
priority (highest first, then by asset id), each up to its request. An asset that does not use its
share gets 0, so its share goes to the others; when it comes back it gets its share back. An
unhealthy one (FAULTED, UNAVAILABLE, link down, actor down) draws nothing and counts 0 at once; a
FINISHING one (the EV is done) is told 0 and counts what it was told until that 0 has landed (it still
takes commands, and a new EV would draw its setpoint at once).

Review of a due setpoint (``value`` is what is requested, ``granted`` what is sent):

* the channel's request becomes ``value`` and the targets are recomputed;
* a decrease (target <= budget) is sent at once with ``granted`` = target;
* an increase is sent only when it fits: the other channels' budgets plus the target stay within the
  limit. If it does not fit yet because another channel's decrease is still on its way, it WAITS
  (stays PENDING, reviewed again when something changes), so decreases land before increases and
  the sum stays under the limit during the change too. If nothing is on its way, it is granted what
  fits now.

Regrants: when the targets change for a channel that has no command of its own due (another asset
asked for more, an asset stopped or resumed using its share), :meth:`regrants` returns what to tell it:
the dispatcher turns each into a command (``source="grid"``, ``value`` = the channel's request,
``granted`` = its new target), which is journaled and reviewed like any other.

After a device reboot the allocator does not know what the device draws: a charger without its
charging profile may draw its maximum, a battery that lost its setpoint draws nothing. It then counts
the charger at its maximum and the battery at 0 until a regrant (sent at once) is confirmed; this is
also the re-send of the lost setpoint, through the same review as every other command.

An asset coming back from a fault starts from nothing: it counts 0 until it has been told its share
again, and that share is an increase like any other (it waits for room). A charger that resumes its
last setpoint on its own the moment it recovers may draw it for the time its new grant takes to arrive
(one round trip); nothing in a central system can prevent that.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from .assets import AssetSpec
from .commands import Command, CommandStatus, CommandType
from .errors import ConfigurationError

__all__ = ["GridLimit", "GridPolicy", "GridAllocator", "Review", "Regrant", "NOT_SHARING_STATES", "MAX_WAIT_S"]

GridPolicy = Literal["proportional", "priority"]
_EPS = 1e-6
#: A target change smaller than this (kW) is not worth a regrant.
REGRANT_STEP_KW = 0.05
#: The longest an increase waits (site seconds) for a decrease elsewhere to land; then it gets what fits.
MAX_WAIT_S = 30.0
_S = CommandStatus
_IMPORT, _EXPORT = CommandType.SET_CHARGE_RATE, CommandType.SET_DISCHARGE_RATE
_FINAL_FROM_FLIGHT = frozenset({_S.FAILED, _S.REJECTED, _S.EXPIRED})
_MAYBE_LANDED = frozenset({_S.TIMED_OUT, _S.SUPERSEDED})
#: Asset states in which an asset does not use its share of the grid.
NOT_SHARING_STATES = frozenset({"FAULTED", "UNAVAILABLE", "FINISHING"})


@dataclass(frozen=True)
class GridLimit:
    """``import_kw`` caps the sum of what the assets are told to draw (chargers, charging batteries),
    ``export_kw`` the sum of what they are told to feed in (discharging batteries); None: no cap. When
    the sources ask for more, ``policy`` decides who gives way: "proportional" scales every asset by the
    same factor, "priority" serves assets by their priority (highest first, then by asset id)."""

    import_kw: float | None = None
    export_kw: float | None = None
    policy: GridPolicy = "proportional"

    def __post_init__(self) -> None:
        for name in ("import_kw", "export_kw"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
                                  or v < 0):
                raise ConfigurationError(f"{name}: must be a finite number >= 0 or None, got {v!r}")
        if self.policy not in ("proportional", "priority"):
            raise ConfigurationError(f"policy: must be 'proportional' or 'priority', got {self.policy!r}")

    @property
    def active(self) -> bool:
        return self.import_kw is not None or self.export_kw is not None

    def limit(self, command_type: CommandType) -> float | None:
        return self.import_kw if command_type is _IMPORT else self.export_kw if command_type is _EXPORT else None


@dataclass
class _Channel:
    asset_id: str
    command_type: CommandType
    max_kw: float
    priority: int
    requested: float = 0.0
    confirmed: float = 0.0
    in_flight: float | None = None
    in_flight_id: str | None = None
    target: float = 0.0
    told: float = 0.0            # the grant last decided for it (sent or waiting to be sent)

    @property
    def key(self) -> tuple[str, CommandType]:
        return (self.asset_id, self.command_type)


@dataclass(frozen=True)
class Review:
    """What to do with one due command: "send" (with ``granted``), or "wait" (stay PENDING)."""
    action: Literal["send", "wait"]
    granted: float | None = None
    limited: bool = False            # granted < requested because of the grid limit
    limit_kw: float | None = None


@dataclass(frozen=True)
class Regrant:
    """Tell ``asset_id`` a new grant on ``command_type``: ``value`` stays its request, ``granted`` changes."""
    asset_id: str
    command_type: CommandType
    value: float
    granted: float


@dataclass
class GridAllocator:
    """Enforces a :class:`GridLimit` over a site's assets (see the module docstring)."""

    limit: GridLimit
    specs: Mapping[str, AssetSpec]
    priorities: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._channels: dict[tuple[str, CommandType], _Channel] = {}
        for spec in self.specs.values():
            prio = int(self.priorities.get(spec.asset_id, 0))
            if self.limit.import_kw is not None:
                self._add(spec.asset_id, _IMPORT, spec.max_charge_kw, prio)
            if spec.kind == "battery" and self.limit.export_kw is not None:
                self._add(spec.asset_id, _EXPORT, spec.max_discharge_kw, prio)
        self._sharing: dict[str, bool] = {a: False for a in self.specs}   # nobody draws before it reports
        self._healthy: dict[str, bool] = {a: False for a in self.specs}
        self._dirty = True
        self._regrant_due = False
        self._waiting: dict[str, float] = {}   # command id -> site time it started waiting for room

    def _add(self, asset_id: str, ctype: CommandType, max_kw: float, priority: int) -> None:
        self._channels[(asset_id, ctype)] = _Channel(asset_id, ctype, max_kw, priority)

    # ---- what the allocator is told ----------------------------------------------------------------
    def applies_to(self, command: Command) -> bool:
        return (command.asset_id, command.command_type) in self._channels

    def set_sharing(self, asset_id: str, healthy: bool, state: str) -> None:
        """An asset's health or state changed. It uses its share while healthy and not FINISHING; an
        unhealthy one draws nothing (it counts 0), a FINISHING one still counts what it was told until
        the 0 it is told then has landed (it can take commands, and a new EV would draw at once)."""
        sharing = healthy and state not in NOT_SHARING_STATES
        was_healthy = self._healthy.get(asset_id, False)
        if self._sharing.get(asset_id) != sharing or was_healthy != healthy:
            self._sharing[asset_id] = sharing
            self._healthy[asset_id] = healthy
            self._dirty = True
            self._regrant_due = True
            if healthy and not was_healthy:  # back from a fault: it starts from nothing and is told again
                for (aid, _), ch in self._channels.items():
                    if aid == asset_id:
                        ch.confirmed, ch.in_flight, ch.in_flight_id, ch.told = 0.0, None, None, math.inf

    def rebooted(self, asset_id: str) -> None:
        """The device lost its setpoints: count a charger at its maximum and a battery at 0 until told again."""
        spec = self.specs.get(asset_id)
        for (aid, ctype), ch in self._channels.items():
            if aid == asset_id and spec is not None:
                ch.confirmed = ch.max_kw if spec.kind == "charger" else 0.0
                ch.told = math.inf   # whatever the target is, it must be told again
                self._dirty = True
                self._regrant_due = True

    def observe(self, changes: Iterable[Any]) -> None:
        """Follow every command change (``runtime.core.command_table.Change``) of the grid channels."""
        for change in changes:
            c: Command = change.command
            ch = self._channels.get((c.asset_id, c.command_type))
            if ch is None or c.granted is None:
                continue
            status = c.status
            if status is _S.DISPATCHED:
                ch.in_flight, ch.in_flight_id = c.granted, c.command_id
                self._waiting.pop(c.command_id, None)
            elif ch.in_flight_id == c.command_id and status is not _S.ACKNOWLEDGED:
                if status is _S.COMPLETED:
                    ch.confirmed = c.granted
                elif status in _MAYBE_LANDED:
                    ch.confirmed = max(ch.confirmed, c.granted)
                elif status.is_final:  # it did not land: what the device has is what to tell it next
                    ch.told = ch.confirmed
                    self._regrant_due = True
                ch.in_flight, ch.in_flight_id = None, None
                self._dirty = True
            elif status is _S.COMPLETED:  # completed after a restart without a DISPATCHED seen here
                ch.confirmed = c.granted
                self._dirty = True
            if status.is_final:
                self._waiting.pop(c.command_id, None)

    # ---- decisions ---------------------------------------------------------------------------------
    def budget(self, ch: _Channel) -> float:
        """What the channel may be drawing (feeding) now: 0 while its asset is unhealthy, else the larger
        of its confirmed and in-flight grants."""
        if not self._healthy.get(ch.asset_id, False):
            return 0.0
        return max(ch.confirmed, ch.in_flight if ch.in_flight is not None else 0.0)

    def _side(self, ctype: CommandType) -> list[_Channel]:
        return [ch for ch in self._channels.values() if ch.command_type is ctype]

    def _recompute(self) -> None:
        for ctype in (_IMPORT, _EXPORT):
            limit = self.limit.limit(ctype)
            side = self._side(ctype)
            if limit is None or not side:
                continue
            active = [ch for ch in side if self._sharing.get(ch.asset_id, False) and ch.requested > 0]
            for ch in side:
                ch.target = 0.0
            demand = sum(ch.requested for ch in active)
            if demand <= limit + _EPS:
                for ch in active:
                    ch.target = ch.requested
            elif self.limit.policy == "proportional":
                factor = limit / demand
                for ch in active:
                    ch.target = math.floor(ch.requested * factor * 1000) / 1000  # never above the share
            else:
                left = limit
                for ch in sorted(active, key=lambda c: (-c.priority, c.asset_id)):
                    ch.target = max(0.0, min(ch.requested, left))
                    left -= ch.target
        self._dirty = False

    def _ensure(self) -> None:
        if self._dirty:
            self._recompute()

    def order(self, commands: list[Command]) -> list[Command]:
        """Take the requests of every due command at once (so the targets are computed once, for all of
        them), then return the commands in the order to review them: decreases before increases."""
        for c in commands:
            ch = self._channels.get((c.asset_id, c.command_type))
            if ch is not None and c.source != "grid" and abs(ch.requested - c.value) > _EPS:
                ch.requested = float(c.value)
                self._dirty = True
                self._regrant_due = True
        self._ensure()

        def delta(c: Command) -> float:
            ch = self._channels.get((c.asset_id, c.command_type))
            if ch is None:
                return 0.0
            return min(c.value, ch.max_kw) - self.budget(ch)
        return sorted(commands, key=delta)

    def review(self, command: Command, now: float) -> Review:
        """The grant for one due setpoint on a grid channel (see the module docstring). ``now``: site
        time, for the longest wait (:data:`MAX_WAIT_S`)."""
        ch = self._channels[(command.asset_id, command.command_type)]
        limit = self.limit.limit(command.command_type)
        assert limit is not None
        if command.source != "grid" and abs(ch.requested - command.value) > _EPS:
            ch.requested = float(command.value)
            self._dirty = True
            self._regrant_due = True
        self._ensure()
        target = ch.target
        budget = self.budget(ch)
        others = sum(self.budget(o) for o in self._side(command.command_type) if o is not ch)
        if target > budget + _EPS and others + target > limit + _EPS:  # an increase that does not fit yet
            since = self._waiting.setdefault(command.command_id, now)
            if now - since < MAX_WAIT_S and self._decrease_coming(command.command_type, ch):
                return Review("wait")
            target = max(0.0, min(target, limit - others))
        self._waiting.pop(command.command_id, None)
        ch.told = target
        return Review("send", target, target < command.value - _EPS, limit)

    def _decrease_coming(self, ctype: CommandType, me: _Channel) -> bool:
        """Another channel of this side will draw less soon (a decrease in flight, or its target below its budget)."""
        for ch in self._side(ctype):
            if ch is not me and self.budget(ch) > ch.target + _EPS:
                return True
        return False

    @property
    def regrant_pending(self) -> bool:
        """Targets moved since the last :meth:`regrants`: ask for regrants again."""
        return self._regrant_due

    @property
    def waiting(self) -> bool:
        """Some due command waits for room: review again after the next change."""
        return bool(self._waiting)

    def regrants(self, due_channels: set[tuple[str, CommandType]]) -> list[Regrant]:
        """New grants to tell channels whose target moved away from what they were told (channels with a
        command of their own due now are left to that command). An asset that does not use its share is
        told 0 (the command is HELD until it is healthy again, then sent before anything else for it)."""
        if not self._regrant_due:
            return []
        self._regrant_due = False
        self._ensure()
        out = []
        for key, ch in self._channels.items():
            if key in due_channels:
                continue
            target = ch.target
            if abs(target - ch.told) < REGRANT_STEP_KW and ch.told != math.inf:
                continue
            if ch.told == math.inf and ch.requested <= 0 and target <= 0 and ch.confirmed <= 0:
                ch.told = 0.0
                continue
            ch.told = target
            out.append(Regrant(ch.asset_id, ch.command_type, ch.requested, target))
        return out

    def channels_by_asset(self) -> dict[str, frozenset[CommandType]]:
        """The setpoint types the grid manages, per asset."""
        out: dict[str, set[CommandType]] = {}
        for asset_id, ctype in self._channels:
            out.setdefault(asset_id, set()).add(ctype)
        return {a: frozenset(t) for a, t in out.items()}

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """The books, for metrics and tests: {"asset:TYPE": {requested, confirmed, in_flight, target, budget}}."""
        self._ensure()
        return {f"{ch.asset_id}:{ch.command_type.value}": {
            "requested": ch.requested, "confirmed": ch.confirmed, "in_flight": ch.in_flight, "target": ch.target,
            "budget": self.budget(ch), "sharing": self._sharing.get(ch.asset_id, False)}
            for ch in self._channels.values()}

    def total_budget(self, command_type: CommandType) -> float:
        """Sum of the budgets of one side (what the assets may be drawing, or feeding, right now)."""
        return sum(self.budget(ch) for ch in self._side(command_type))
