"""The device boundary: what an asset actor needs from a protocol adapter.

An asset actor owns exactly one :class:`DeviceLink`. All of a link's coroutines run on the site's single
asyncio I/O loop; the actor never awaits them itself. It submits them with
``asyncio.run_coroutine_threadsafe`` and receives the result as a message. A link reports what the
device says on its own (status, telemetry, reconnects, late completions) through the ``sink`` it is given
in :meth:`DeviceLink.start`; the sink is thread-safe and never blocks (it tells the actor).

Links must be safe to start again after a stop: the supervisor restarts a crashed asset actor with the
same link object.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, Callable, Mapping, Union

from runtime.core.errors import DeviceError

if TYPE_CHECKING:  # pragma: no cover
    from runtime.core.clock import Clock
    from runtime.core.commands import Command

__all__ = [
    "Outcome", "DeviceResult", "StatusReport", "Telemetry", "LinkUp", "LinkDown", "CommandProgress",
    "CrashRequest", "DeviceEvent", "DeviceSink", "DeviceContext", "DeviceLink", "DeviceError",
]


class Outcome(str, Enum):
    """How a device answered one command."""

    ACKNOWLEDGED = "ACKNOWLEDGED"   #: accepted; completion follows later as a CommandProgress event
    COMPLETED = "COMPLETED"         #: applied (and verified, where the protocol allows)
    REJECTED = "REJECTED"           #: the device refused it (reason says why); not retried
    FAILED = "FAILED"               #: it went wrong in a way a retry may fix
    TIMED_OUT = "TIMED_OUT"         #: no answer in time; retried
    NOT_CONNECTED = "NOT_CONNECTED"  #: the device is not reachable now; the command is held


@dataclass(frozen=True, slots=True)
class DeviceResult:
    outcome: Outcome
    reason: str | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)



# ---- what a device reports on its own, through the sink -------------------------------------------

@dataclass(frozen=True, slots=True)
class StatusReport:
    """The device's state, as a name of the asset's state machine (e.g. "CHARGING", "FAULTED")."""
    state: str
    raw: str | None = None


@dataclass(frozen=True, slots=True)
class Telemetry:
    """Measured values, e.g. {"soc_pct": 54.2, "power_kw": -3.1} (power > 0 = charging)."""
    values: Mapping[str, float]


@dataclass(frozen=True, slots=True)
class LinkUp:
    """The device is reachable. ``rebooted`` means it lost its setpoints and needs them re-sent."""
    rebooted: bool = False
    reason: str = "connected"


@dataclass(frozen=True, slots=True)
class LinkDown:
    reason: str = "disconnected"


@dataclass(frozen=True, slots=True)
class CommandProgress:
    """A later answer for a command that was ACKNOWLEDGED (e.g. a transaction really started)."""
    command_id: str
    outcome: Outcome
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class CrashRequest:
    """Fault injection only: makes the owning asset actor crash (to exercise the supervisor)."""
    reason: str = "injected crash"


DeviceEvent = Union[StatusReport, Telemetry, LinkUp, LinkDown, CommandProgress, CrashRequest]
DeviceSink = Callable[[DeviceEvent], None]


@dataclass(frozen=True)
class DeviceContext:
    """What a link gets when it starts: the I/O loop, the site clock and shared protocol services
    (for example ``services["ocpp"]`` is the OCPP central system)."""

    loop: asyncio.AbstractEventLoop
    clock: "Clock"
    services: Mapping[str, Any] = field(default_factory=dict)


class DeviceLink(ABC):
    """One device, as seen by its asset actor. All methods are coroutines run on the I/O loop, except
    :meth:`execute_now`, an optional fast path for links that answer without any I/O.

    ``required_services`` names the shared services the Site must start for this link
    (``("ocpp",)`` for an OCPP charger: the central system it registers with).
    """

    required_services: tuple[str, ...] = ()

    @abstractmethod
    async def start(self, ctx: DeviceContext, sink: DeviceSink) -> None:
        """Begin talking to the device; report through ``sink`` from now on."""

    @abstractmethod
    async def execute(self, command: "Command") -> DeviceResult:
        """Apply one command. Must return (not raise) for every device answer, and must bound its own
        waiting with a timeout. Setpoints are absolute: executing the same command twice is harmless."""

    def execute_now(self, command: "Command") -> DeviceResult | None:
        """Apply one command at once in the caller's thread (the asset actor's), if this link can without
        I/O or waiting; return None to have it go through :meth:`execute` on the I/O loop instead (the
        default). What the link reports through its sink meanwhile is handled as if it had come before the
        answer, as on the loop. A link that implements it must never block in it."""
        return None

    def start_now(self, ctx: DeviceContext, sink: DeviceSink) -> bool:
        """Start at once in the caller's thread (the asset actor's, in its ``on_start``), if this link can
        without I/O or waiting, and return True; return False to have :meth:`start` run on the I/O loop
        instead (the default). What the link reports through ``sink`` meanwhile is handled right after, as
        the loop's reports would be. A link that implements it must never block in it."""
        return False

    @abstractmethod
    async def stop(self) -> None:
        """Stop reporting and release sockets and tasks. ``start`` may be called again afterwards."""

    def describe(self) -> str:
        return type(self).__name__
