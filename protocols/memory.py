"""An in-memory simulated device: a :class:`~protocols.base.DeviceLink` with no sockets.

It applies commands instantly and can be told, from any thread, to misbehave the ways real devices
do: refuse, fail, stay silent, drop off, reboot, report a fault, or crash its actor. Tests and
scenarios use it where the protocol is beside the point; the protocol simulators live in
``protocols.sim``.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping

from .base import (CommandProgress, CrashRequest, DeviceContext, DeviceEvent, DeviceLink, DeviceResult, DeviceSink,
                   LinkDown, LinkUp, Outcome, StatusReport, Telemetry)

if TYPE_CHECKING:  # pragma: no cover
    from runtime.core.commands import Command

__all__ = ["InMemoryDevice", "AppliedCommand"]

_RATE_TYPES = frozenset({"SET_CHARGE_RATE", "SET_DISCHARGE_RATE"})


@dataclass(frozen=True, slots=True)
class AppliedCommand:
    command_id: str
    command_type: str
    value: float


class InMemoryDevice(DeviceLink):
    """A simulated device. Knobs (thread-safe, take effect for the next command):

    * ``reject(reason)`` / ``reject(None)``: answer REJECTED with that reason.
    * ``fail_next(n, reason)``: answer FAILED to the next ``n`` commands.
    * ``set_silent(True)``: never answer (the command waits until silence is lifted or the link stops).
    * ``set_connected(False)``: answer NOT_CONNECTED and report LinkDown; True reports LinkUp.
    * ``set_ack_only(True)``: answer ACKNOWLEDGED; ``complete_pending()`` later reports completion.
    * ``report_status(name)``, ``report_telemetry(**values)``, ``reboot()``, ``crash_actor()``.

    ``applied`` lists every command the device applied, in order (a repeated command appears twice).

    ``kind="battery"`` makes it behave as a battery does: after each charge or discharge setpoint it
    reports its power (``Telemetry(power_kw=charge - discharge)``, > 0 = charging), so the asset's
    state follows its power (a 10 kW discharge makes it DISCHARGING). The Site creates its in-memory
    devices with the asset's kind.
    """

    def __init__(self, name: str = "memory", kind: str | None = None) -> None:
        self.name = name
        self.kind = kind
        self._lock = threading.Lock()
        self._sink: DeviceSink | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reject: str | None = None
        self._fail_next = 0
        self._fail_reason = "simulated failure"
        self._silent = False
        self._silence_waiters: list[asyncio.Future[None]] = []
        self._connected = True
        self._ack_only = False
        self._unfinished: list[str] = []
        self.applied: list[AppliedCommand] = []
        self.setpoints: dict[str, float] = {}
        self.starts = 0
        self._own_execute = type(self).execute is not InMemoryDevice.execute
        self._own_start = type(self).start is not InMemoryDevice.start

    # ---- DeviceLink ---------------------------------------------------------------------------
    async def start(self, ctx: DeviceContext, sink: DeviceSink) -> None:
        self._begin(ctx, sink)

    def start_now(self, ctx: DeviceContext, sink: DeviceSink) -> bool:
        """The same as :meth:`start`, at once; False for a subclass that overrides :meth:`start` (its own
        start must run)."""
        if self._own_start:
            return False
        self._begin(ctx, sink)
        return True

    def _begin(self, ctx: DeviceContext, sink: DeviceSink) -> None:
        with self._lock:
            self._sink, self._loop = sink, ctx.loop
            self.starts += 1
            connected = self._connected
        sink(LinkUp(rebooted=False, reason="in-memory device") if connected else LinkDown("in-memory device offline"))

    async def execute(self, command: "Command") -> DeviceResult:
        with self._lock:
            silent, connected = self._silent, self._connected
        if not connected:
            return DeviceResult(Outcome.NOT_CONNECTED, "in-memory device offline")
        if silent:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            with self._lock:
                self._silence_waiters.append(waiter)
            await waiter  # cancelled by stop(), resolved by set_silent(False)
        return self._apply(command)

    def execute_now(self, command: "Command") -> DeviceResult | None:
        """The same as :meth:`execute`, at once; None while silent (then the command waits on the loop), and
        always None for a subclass that overrides :meth:`execute` (its own execute must run)."""
        if self._own_execute:
            return None
        with self._lock:
            silent, connected = self._silent, self._connected
        if not connected:
            return DeviceResult(Outcome.NOT_CONNECTED, "in-memory device offline")
        if silent:
            return None
        return self._apply(command)

    def _apply(self, command: "Command") -> DeviceResult:
        with self._lock:
            if self._reject is not None:
                return DeviceResult(Outcome.REJECTED, self._reject)
            if self._fail_next > 0:
                self._fail_next -= 1
                return DeviceResult(Outcome.FAILED, self._fail_reason)
            self.applied.append(AppliedCommand(command.command_id, command.command_type.value, command.setpoint))
            self.setpoints[command.command_type.value] = command.setpoint
            power = self._battery_power() if command.command_type.value in _RATE_TYPES else None
            if self._ack_only:
                self._unfinished.append(command.command_id)
                result = DeviceResult(Outcome.ACKNOWLEDGED)
            else:
                result = DeviceResult(Outcome.COMPLETED)
        if power is not None:
            self._emit(Telemetry({"power_kw": power}))
        return result

    def _battery_power(self) -> float | None:
        """A battery's power from its setpoints (charge - discharge, kW); None for other kinds."""
        if self.kind != "battery":
            return None
        return self.setpoints.get("SET_CHARGE_RATE", 0.0) - self.setpoints.get("SET_DISCHARGE_RATE", 0.0)

    async def stop(self) -> None:
        with self._lock:
            self._sink = None
            waiters, self._silence_waiters = self._silence_waiters, []
        for w in waiters:
            w.cancel()

    # ---- knobs --------------------------------------------------------------------------------
    def reject(self, reason: str | None) -> None:
        with self._lock:
            self._reject = reason

    def fail_next(self, n: int, reason: str = "simulated failure") -> None:
        with self._lock:
            self._fail_next, self._fail_reason = n, reason

    def set_silent(self, silent: bool) -> None:
        with self._lock:
            self._silent = silent
            waiters = [] if silent else self._silence_waiters
            if not silent:
                self._silence_waiters = []
            loop = self._loop
        for w in waiters:
            if loop is not None:
                loop.call_soon_threadsafe(lambda w=w: w.done() or w.set_result(None))

    def set_connected(self, connected: bool, rebooted: bool = False) -> None:
        with self._lock:
            self._connected = connected
        self._emit(LinkUp(rebooted=rebooted, reason="reconnected") if connected else LinkDown("link lost"))

    def set_ack_only(self, ack_only: bool) -> None:
        with self._lock:
            self._ack_only = ack_only

    def complete_pending(self, outcome: Outcome = Outcome.COMPLETED, reason: str | None = None) -> list[str]:
        """Report a late outcome for every ACKNOWLEDGED command; returns their ids."""
        with self._lock:
            ids, self._unfinished = self._unfinished, []
        for cid in ids:
            self._emit(CommandProgress(cid, outcome, reason))
        return ids

    def report_status(self, state: str, raw: str | None = None) -> None:
        self._emit(StatusReport(state, raw))

    def report_telemetry(self, **values: float) -> None:
        self._emit(Telemetry(dict(values)))

    def reboot(self) -> None:
        """The device restarts: it forgets its setpoints and comes back (LinkUp(rebooted=True))."""
        with self._lock:
            self.setpoints.clear()
        self._emit(LinkUp(rebooted=True, reason="device rebooted"))

    def crash_actor(self, reason: str = "injected crash") -> None:
        """Fault injection: make the owning asset actor crash (exercises the supervisor)."""
        self._emit(CrashRequest(reason))

    def values(self) -> Mapping[str, float]:
        with self._lock:
            return dict(self.setpoints)

    def _emit(self, event: DeviceEvent) -> None:
        with self._lock:
            sink = self._sink
        if sink is not None:
            sink(event)

    def describe(self) -> str:
        return f"InMemoryDevice({self.name})"
