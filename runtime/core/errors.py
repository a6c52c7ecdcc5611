"""The one exception hierarchy of the runtime: every error it raises on purpose is a :class:`CoordinatorError`.

::

    CoordinatorError
    ├── ConfigurationError (ValueError)    a spec, policy or option is invalid; names the field and the value
    │   └── ConfigFileError                a site or scenario file with problems: one line each, all at once
    │       └── ScenarioError              a scenario file that cannot be run
    ├── CommandError (ValueError)
    │   ├── InvalidCommand                 a command field is invalid (names the field and the command)
    │   ├── InvalidCommandTransition       a status change the lifecycle does not allow
    │   └── UnsupportedCommand             an adapter cannot express this command type for this asset
    ├── ScheduleError (ValueError)         a schedule cell, column or index is invalid (names column, row, value)
    ├── InvalidTransition                  a state machine trigger not allowed in the current state
    ├── JournalError
    │   ├── JournalCorrupt                 a journal damaged before its end, or not a journal at all
    │   └── JournalUnsupported             a journal of a format version or record kind this reader does not know
    ├── SiteError
    │   ├── SiteNotRunning (RuntimeError)  the site is not started, or stopped
    │   │   └── SiteFailed                 the dispatcher or event actor died (names it and the cause)
    │   └── UnknownAsset (KeyError)        a command or schedule names an asset the site does not have
    └── DeviceError                        a device, its link or its description is at fault
        ├── ChargerNotConnected            an OCPP charge point has no open connection
        ├── RegisterMapError (ValueError)  a Modbus register map is invalid, or a device answered outside it
        └── SimNotConnected                a simulator was asked to send while it has no connection

Catch :class:`CoordinatorError` for "anything the runtime refused", or a branch for one kind. Where a
built-in exception used to be raised, the new class also derives from it (``ScheduleError`` is still
a ``ValueError``, ``UnknownAsset`` a ``KeyError``), so existing ``except`` clauses keep working.
Every class here is exported from :mod:`runtime`.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "CoordinatorError", "ConfigurationError", "ConfigFileError", "CommandError", "InvalidCommand",
    "InvalidCommandTransition", "UnsupportedCommand", "ScheduleError", "InvalidTransition", "JournalError",
    "JournalCorrupt", "JournalUnsupported", "SiteError", "SiteNotRunning", "SiteFailed", "UnknownAsset", "ScenarioError",
    "DeviceError", "ChargerNotConnected", "RegisterMapError", "SimNotConnected",
]


class CoordinatorError(Exception):
    """Base of every error the runtime raises on purpose."""


class ConfigurationError(CoordinatorError, ValueError):
    """A spec, policy or option is invalid. The message names the field and the value given."""


class ConfigFileError(ConfigurationError):
    """A configuration file that cannot be used. ``problems`` has one line per problem (all of them,
    not just the first), each naming the key path, the value given and what was expected; ``str()``
    is every line prefixed by the file's path."""

    def __init__(self, path: str, problems: Any) -> None:
        self.path = str(path)
        self.problems = [str(p) for p in problems]
        super().__init__("\n".join(f"{self.path}: {p}" for p in self.problems))


# ---- commands ----------------------------------------------------------------------------------

class CommandError(CoordinatorError, ValueError):
    """A command that cannot be accepted, changed or expressed as asked."""


class InvalidCommand(CommandError):
    """A command field is invalid (the message names the field, the value and the command)."""


class InvalidCommandTransition(CommandError):
    """A status change the lifecycle does not allow (names the command and both statuses)."""


class UnsupportedCommand(CommandError):
    """The adapter cannot express this command type for this asset (names the asset and the type)."""


class ScheduleError(CoordinatorError, ValueError):
    """A schedule that cannot be turned into commands. The message names the column, the row (its
    timestamp) and the offending value, as far as they apply."""


class InvalidTransition(CoordinatorError):
    """A trigger that is not allowed from the current state (or whose guard said no); names the asset,
    the state and the trigger."""

    def __init__(self, asset_id: str, state: Any, trigger: str, reason: str = "not in the transition table") -> None:
        self.asset_id, self.state, self.trigger, self.reason = asset_id, state, trigger, reason
        super().__init__(f"asset {asset_id}: trigger {trigger!r} is not allowed in state {state.name} ({reason})")


# ---- journal -----------------------------------------------------------------------------------

class JournalError(CoordinatorError):
    """A journal that cannot be read or written as the runtime needs."""


class JournalCorrupt(JournalError):
    """A journal is damaged somewhere other than its last record, or is not a journal at all.

    ``path`` and ``offset`` (byte offset of the damaged record from the start of the file) say
    where; ``reason`` says what is wrong.
    """

    def __init__(self, path: str, offset: int, reason: str) -> None:
        self.path = path
        self.offset = offset
        self.reason = reason
        super().__init__(f"journal {path}: corrupt at byte offset {offset}: {reason}")


class JournalUnsupported(JournalError):
    """A journal written in a form this reader does not understand: a newer format version, or a record
    kind its header says a reader must know (or that it does not declare at all). Such a file is
    refused, never skipped past or "repaired": its records may matter (a newer coordinator wrote them),
    so the file is left exactly as it is. Upgrade the coordinator, or move the file away.

    ``path``, ``version`` (the file's format version) and ``kind`` (the record kind, or None when the
    version itself is the problem) say what; the message names all three.
    """

    def __init__(self, path: str, version: int | None, kind: str | None, reason: str) -> None:
        self.path = path
        self.version = version
        self.kind = kind
        self.reason = reason
        what = f"record kind {kind!r}" if kind is not None else "the format"
        super().__init__(f"journal {path} (format version {version}): {what} is not supported: {reason}")


# ---- site --------------------------------------------------------------------------------------

class SiteError(CoordinatorError):
    """A running site refused a call."""


class SiteNotRunning(SiteError, RuntimeError):
    """The site has not been started, or has been stopped."""


class SiteFailed(SiteNotRunning):
    """The site stopped working on its own: its dispatcher or event actor died. The message names
    the actor and the cause; the site must be stopped (and may be started again)."""


class UnknownAsset(SiteError, KeyError):
    """A command or schedule names an asset the site does not have."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class ScenarioError(ConfigFileError):
    """A scenario file that cannot be run (each problem names the file, the key and the value)."""


# ---- devices -----------------------------------------------------------------------------------

class DeviceError(CoordinatorError):
    """A device, its link or its description is at fault. Links raise it for a failure they could
    not turn into a device result themselves."""


class ChargerNotConnected(DeviceError):
    """The charge point has no open connection (or it closed while a call waited for the answer)."""


class RegisterMapError(DeviceError, ValueError):
    """A register map that is invalid, or a device whose answers do not fit it."""


class SimNotConnected(DeviceError):
    """A device simulator was asked to send something while it has no open connection."""
