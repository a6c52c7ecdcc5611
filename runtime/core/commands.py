"""Commands: what the runtime asks a device to do, and the lifecycle every command goes through.

A :class:`Command` is an immutable snapshot (a typed named tuple: cheap to copy and to send). A transition produces a new snapshot
(:meth:`Command.evolve`); the owner of the command table (the dispatcher) holds the current one.
Values are in kW for rates and limits, percent for SET_SOC_TARGET.

Lifecycle::

    PENDING -> DISPATCHED -> ACKNOWLEDGED -> COMPLETED
       |  \\         |             |
       |   HELD      +-> FAILED / TIMED_OUT / REJECTED (final, or back to PENDING for a retry)
       +-> EXPIRED / SUPERSEDED (final)
"""

from __future__ import annotations

import itertools
import os
from datetime import datetime
from enum import Enum
from typing import Any, NamedTuple

from .errors import InvalidCommand, InvalidCommandTransition

__all__ = [
    "Command", "CommandType", "CommandStatus", "FINAL_STATUSES", "ALLOWED_TRANSITIONS",
    "InvalidCommandTransition", "new_command_id", "EMERGENCY_PRIORITY",
]

#: Commands with at least this priority are emergencies: they are sent before every normal command due
#: for their asset, and no normal command supersedes them (see runtime.core.command_table).
EMERGENCY_PRIORITY = 100


class CommandType(str, Enum):
    SET_CHARGE_RATE = "SET_CHARGE_RATE"
    SET_DISCHARGE_RATE = "SET_DISCHARGE_RATE"
    SET_POWER_LIMIT = "SET_POWER_LIMIT"
    SET_SOC_TARGET = "SET_SOC_TARGET"
    START_CHARGING = "START_CHARGING"
    STOP_CHARGING = "STOP_CHARGING"
    CHANGE_AVAILABILITY = "CHANGE_AVAILABILITY"

    @property
    def is_setpoint(self) -> bool:
        """Setpoints are absolute values: a newer one for the same asset+channel supersedes an older one."""
        return self in _SETPOINTS


_SETPOINTS = frozenset({CommandType.SET_CHARGE_RATE, CommandType.SET_DISCHARGE_RATE,
                        CommandType.SET_POWER_LIMIT, CommandType.SET_SOC_TARGET})


class CommandStatus(str, Enum):
    PENDING = "PENDING"
    DISPATCHED = "DISPATCHED"
    ACKNOWLEDGED = "ACKNOWLEDGED"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    TIMED_OUT = "TIMED_OUT"
    EXPIRED = "EXPIRED"
    SUPERSEDED = "SUPERSEDED"
    REJECTED = "REJECTED"
    HELD = "HELD"

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATUSES


FINAL_STATUSES = frozenset({CommandStatus.COMPLETED, CommandStatus.FAILED, CommandStatus.TIMED_OUT,
                            CommandStatus.EXPIRED, CommandStatus.SUPERSEDED, CommandStatus.REJECTED})

_S = CommandStatus
#: Every legal status change. FAILED and TIMED_OUT are final only when no retry is left; a retry
#: goes back to PENDING directly from DISPATCHED/ACKNOWLEDGED (the table records the error).
ALLOWED_TRANSITIONS: dict[CommandStatus, frozenset[CommandStatus]] = {
    _S.PENDING: frozenset({_S.DISPATCHED, _S.HELD, _S.EXPIRED, _S.SUPERSEDED, _S.REJECTED}),
    _S.HELD: frozenset({_S.PENDING, _S.EXPIRED, _S.SUPERSEDED, _S.REJECTED}),
    _S.DISPATCHED: frozenset({_S.ACKNOWLEDGED, _S.COMPLETED, _S.FAILED, _S.TIMED_OUT, _S.REJECTED,
                              _S.SUPERSEDED, _S.PENDING, _S.HELD, _S.EXPIRED}),
    _S.ACKNOWLEDGED: frozenset({_S.COMPLETED, _S.FAILED, _S.TIMED_OUT, _S.REJECTED, _S.SUPERSEDED,
                                _S.PENDING, _S.HELD, _S.EXPIRED}),
    _S.COMPLETED: frozenset(), _S.FAILED: frozenset(), _S.TIMED_OUT: frozenset(),
    _S.EXPIRED: frozenset(), _S.SUPERSEDED: frozenset(), _S.REJECTED: frozenset(),
}



_id_prefix = os.urandom(3).hex()
_id_counter = itertools.count(1)


def new_command_id() -> str:
    """A process-unique command id (``cmd-<random>-<n>``)."""
    return f"cmd-{_id_prefix}-{next(_id_counter)}"


class _CommandFields(NamedTuple):
    command_id: str
    asset_id: str
    command_type: CommandType
    value: float
    scheduled_time: datetime
    status: CommandStatus = CommandStatus.PENDING
    attempts: int = 0
    priority: int = 0
    expires_at: datetime | None = None
    created_at: datetime | None = None
    last_error: str | None = None
    source: str = "api"
    granted: float | None = None


class Command(_CommandFields):
    """One command for one asset: an immutable snapshot (a typed named tuple).

    ``value`` is kW for rate/limit commands (always >= 0; direction is in the type), percent for
    SET_SOC_TARGET, 1/0 (operative/inoperative) for CHANGE_AVAILABILITY, ignored by START/STOP.
    ``scheduled_time`` is when it becomes due; ``expires_at`` (optional) is when it is no longer
    worth applying. ``priority``: higher goes first among commands due at the same time.
    ``granted`` is the value the dispatcher's policy stage allowed when it sent the command (the site's
    grid limit may scale a setpoint down; None: not limited): ``value`` stays what was requested, and
    :attr:`setpoint` is what the device is told.
    The constructor validates every field and names the one that is wrong.
    """

    __slots__ = ()

    def __new__(cls, command_id: str, asset_id: str, command_type: CommandType | str, value: float,
                scheduled_time: datetime, status: CommandStatus | str = CommandStatus.PENDING, attempts: int = 0,
                priority: int = 0, expires_at: datetime | None = None, created_at: datetime | None = None,
                last_error: str | None = None, source: str = "api", granted: float | None = None) -> "Command":
        if not command_id or not isinstance(command_id, str):
            raise InvalidCommand(f"command_id: must be a non-empty string, got {command_id!r}")
        if not isinstance(command_type, CommandType):
            try:
                command_type = CommandType(command_type)
            except ValueError:
                raise InvalidCommand(f"command_type: unknown command type {command_type!r} "
                                 f"(command {command_id})") from None
        if not isinstance(status, CommandStatus):
            try:
                status = CommandStatus(status)
            except ValueError:
                raise InvalidCommand(f"status: unknown status {status!r} (command {command_id})") from None
        if not asset_id or not isinstance(asset_id, str):
            raise InvalidCommand(f"asset_id: must be a non-empty string, got {asset_id!r} (command {command_id})")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            raise InvalidCommand(f"value: must be a number, got {value!r} (command {command_id})")
        for name, ts in (("scheduled_time", scheduled_time), ("expires_at", expires_at),
                         ("created_at", created_at)):
            if (ts is not None or name == "scheduled_time") and (not isinstance(ts, datetime) or ts.tzinfo is None):
                raise InvalidCommand(f"{name}: must be a tz-aware datetime, got {ts!r} (command {command_id})")
        if granted is not None and (isinstance(granted, bool) or not isinstance(granted, (int, float))
                                    or granted != granted):
            raise InvalidCommand(f"granted: must be a number or None, got {granted!r} (command {command_id})")
        return tuple.__new__(cls, (command_id, asset_id, command_type, value, scheduled_time, status, attempts,
                                   priority, expires_at, created_at, last_error, source, granted))

    @property
    def channel(self) -> tuple[str, CommandType]:
        """(asset, command type): a newer setpoint on the same channel supersedes an older one."""
        return (self.asset_id, self.command_type)

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATUSES

    @property
    def setpoint(self) -> float:
        """What the device is told: the granted value when the policy stage limited it, else ``value``."""
        return self.value if self.granted is None else self.granted

    def evolve(self, status: CommandStatus | None = None, **changes: Any) -> "Command":
        """A copy with ``status`` (checked against the lifecycle) and other fields changed.

        Only ``status``, ``attempts``, ``last_error``, ``priority``, ``expires_at``, ``created_at`` and ``granted`` may
        change: the
        identity of a command (id, asset, type, value, time) never does. This is the dispatcher's hot
        path, so it copies slots directly instead of re-running the constructor's validation.
        """
        values = list(self)
        if status is not None and status is not self.status:
            if status not in ALLOWED_TRANSITIONS[self.status]:
                raise InvalidCommandTransition(
                    f"command {self.command_id} ({self.asset_id}): {self.status.value} -> {status.value} "
                    f"is not a legal transition")
            values[5] = status   # _CommandFields.status
        if not changes:
            return tuple.__new__(Command, values)
        for name, value in changes.items():
            index = _EVOLVABLE.get(name)
            if index is None:
                raise InvalidCommand(f"evolve: {name} cannot change (command {self.command_id})")
            values[index] = value
        return tuple.__new__(Command, values)

    def __repr__(self) -> str:
        return (f"Command({self.command_id!r}, {self.asset_id!r}, {self.command_type.value}, {self.value!r}, "
                f"{self.scheduled_time.isoformat()}, {self.status.value}, attempts={self.attempts})")

    def to_record(self) -> dict[str, Any]:
        """A msgpack-friendly dict of this snapshot (epoch seconds for times)."""
        return {
            "id": self.command_id, "asset": self.asset_id, "type": _VALUE[self.command_type],
            "value": float(self.value), "at": self.scheduled_time.timestamp(), "status": _VALUE[self.status],
            "attempts": self.attempts, "priority": self.priority,
            "exp": self.expires_at.timestamp() if self.expires_at else None,
            "created": self.created_at.timestamp() if self.created_at else None,
            "err": self.last_error, "src": self.source, **({"g": self.granted} if self.granted is not None else {}),
        }

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> "Command":
        from .clock import to_datetime
        return cls(
            command_id=rec["id"], asset_id=rec["asset"], command_type=CommandType(rec["type"]),
            value=rec["value"], scheduled_time=to_datetime(rec["at"]), status=CommandStatus(rec["status"]),
            attempts=rec["attempts"], priority=rec["priority"],
            expires_at=to_datetime(rec["exp"]) if rec.get("exp") is not None else None,
            created_at=to_datetime(rec["created"]) if rec.get("created") is not None else None,
            last_error=rec.get("err"), source=rec.get("src", "api"), granted=rec.get("g"),
        )


_EVOLVABLE = {name: _CommandFields._fields.index(name)
              for name in ("status", "attempts", "last_error", "priority", "expires_at", "created_at", "granted")}
assert _EVOLVABLE["status"] == 5  # evolve() sets it by index
#: Enum member -> value; ``.value`` is a slow property on CPython 3.11 and records are a hot path.
_VALUE: dict[Any, str] = {m: m.value for e in (CommandStatus, CommandType) for m in e}
