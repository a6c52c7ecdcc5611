"""AssetActor: one EV charger or battery. It owns the asset's state machine and its device link.

Nothing else mutates the asset's state. The actor never awaits I/O: each ``Execute`` becomes one
coroutine on the site's I/O loop (commands of an asset run strictly one after another, in order), and
the outcome comes back as a ``DeviceDone`` message. What the device says on its own arrives as
``DeviceReport`` messages through the sink the actor gives its link.

A link that can answer without I/O (:meth:`~protocols.base.DeviceLink.execute_now`, the in-memory
device) is asked at once, in the actor's thread, when none of the asset's coroutines is on the loop: what
it reports through its sink meanwhile is handled first, then its answers, exactly as the loop's
``DeviceReport`` and ``DeviceDone`` messages would have been, without the round trip. The events one
message makes are published together: with the ``CommandReports`` they led to (the dispatcher publishes
them with its commit, before the reports' lifecycle events), else in one ``Publish`` of their own, before
anything else the actor tells the dispatcher.

Rules it applies before anything reaches the device:

* a command outside the device limits (``AssetSpec.check``) is REJECTED with the reason, never sent;
* a command for an unhealthy asset (FAULTED, UNAVAILABLE, or link down) is reported HELD.

After a reboot or reconnect (``LinkUp(rebooted=True)``) the actor re-applies the last completed
setpoint of every channel: setpoints are absolute, so repeating one is safe.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
from typing import Any, Callable

import pykka

from protocols.base import (CommandProgress, CrashRequest, DeviceContext, DeviceEvent, DeviceLink, DeviceResult,
                            LinkDown, LinkUp, Outcome, StatusReport, Telemetry)
from runtime.core.assets import AssetSpec, AssetStatus
from runtime.core.clock import Clock
from runtime.core.commands import Command, CommandStatus, CommandType
from runtime.core.events import Event, EventType
from runtime.core.grid import NOT_SHARING_STATES
from runtime.core.iothread import IOOperation, IOThread
from runtime.core.statemachine import BatteryState, StateMachine, battery_machine, ev_charger_machine

from .handlers import HandlerTable, handles
from .inbox import WatchedInbox
from .messages import (AssetHealth, AssetMemory, AssetRebooted, CommandReport, CommandReports, Crashed, DeviceDone,
                       DeviceReport, Execute, GetAssetState, LinkStarted, Ping, Pong, Publish, SetParameter)

log = logging.getLogger(__name__)

__all__ = ["AssetActor", "AssetCrash"]

_OUTCOME_STATUS = {
    Outcome.ACKNOWLEDGED: CommandStatus.ACKNOWLEDGED,
    Outcome.COMPLETED: CommandStatus.COMPLETED,
    Outcome.REJECTED: CommandStatus.REJECTED,
    Outcome.FAILED: CommandStatus.FAILED,
    Outcome.TIMED_OUT: CommandStatus.TIMED_OUT,
    Outcome.NOT_CONNECTED: CommandStatus.HELD,
}
_UNHEALTHY_STATES = frozenset({"FAULTED", "UNAVAILABLE"})
#: What a device link may report through its sink (each has a handler below).
_DEVICE_EVENTS = frozenset({StatusReport, Telemetry, LinkUp, LinkDown, CommandProgress, CrashRequest})
#: |power| below this (kW) counts as idle when a battery's state follows its measured power.
POWER_DEADBAND_KW = 0.05


def _status_of(outcome: Any, command_id: str, asset_id: str) -> CommandStatus:
    """The command status for a device outcome; anything that is not an Outcome is a FAILED attempt."""
    status = _OUTCOME_STATUS.get(outcome)
    if status is None:
        log.error("asset %s: device link returned %r for %s; counted as a failed attempt", asset_id, outcome,
                  command_id)
        return CommandStatus.FAILED
    return status


class AssetCrash(RuntimeError):
    """Raised inside the actor to crash it on purpose (fault injection via CrashRequest)."""


#: ``DeviceResult.detail`` of a command that never reached the device (see :func:`_apply`)
_NOT_SENT = {"sent": False}


async def _apply(link: DeviceLink, commands: tuple[Command, ...], timeout: float, lock: asyncio.Lock,
                 wait_s: float | None) -> tuple[tuple[str, DeviceResult], ...]:
    """Send ``commands`` to the device in order, one device call at a time per asset (``lock``), each
    bounded by ``timeout``. With ``wait_s``, the wait for the asset's previous call is bounded too: a
    call that cannot start by then is answered NOT_CONNECTED with detail ``_NOT_SENT``, and its commands,
    which never reached the device, are held and sent again at once without losing an attempt. So an
    asset whose device, or the loop, is slower than the dispatcher's timeouts and supersessions holds at
    most about one waiting call, instead of a queue of calls that grows with every new Execute."""
    if wait_s is None:
        await lock.acquire()
    else:
        try:
            async with asyncio.timeout(wait_s):
                await lock.acquire()
        except TimeoutError:
            reason = f"not sent: the asset's previous device call was still running after {wait_s:g} s"
            return tuple((c.command_id, DeviceResult(Outcome.NOT_CONNECTED, reason, _NOT_SENT)) for c in commands)
    results = []
    try:
        for command in commands:
            try:
                async with asyncio.timeout(timeout):  # no extra task per command, unlike wait_for
                    result = await link.execute(command)
            except TimeoutError:
                result = DeviceResult(Outcome.TIMED_OUT, f"no answer from the device within {timeout} s")
            except Exception as exc:  # a link bug must not kill the actor: the command fails, is retried
                log.exception("%s.execute(%s) raised", link.describe(), command.command_id)
                result = DeviceResult(Outcome.FAILED, f"{type(exc).__name__}: {exc}")
            results.append((command.command_id, result))
    finally:
        lock.release()
    return tuple(results)


class AssetActor(HandlerTable, pykka.ThreadingActor):
    """One asset. Started and restarted by the supervisor with the same ``link`` object."""

    _create_actor_inbox = staticmethod(WatchedInbox)  # Site.settle looks at it instead of waking the actor

    def __init__(self, spec: AssetSpec, link: DeviceLink, *, io: IOThread, clock: Clock,
                 dispatcher: pykka.ActorRef[Any], events: pykka.ActorRef[Any], supervisor: pykka.ActorRef[Any],
                 services: dict[str, Any] | None = None, memory: "AssetMemory | None" = None,
                 ack_timeout_s: float = 10.0, grid_channels: frozenset[CommandType] = frozenset(),
                 parameters: dict[str, float] | None = None) -> None:
        super().__init__()
        self.spec = spec
        self.link = link
        self._ack_timeout_s = spec.ack_timeout_s or ack_timeout_s  # real-time bound on one device call
        self._io, self._clock = io, clock
        self._dispatcher, self._events, self._supervisor = dispatcher, events, supervisor
        self._services = services or {}
        self._lock = asyncio.Lock()
        self._in_flight: dict[int, IOOperation] = {}  # token -> device coroutine on the I/O loop
        self._next_token = 0
        self._targets: dict[CommandType, Command] = {}
        self._sent: dict[str, Command] = {}          # sent to the device, no answer yet
        self._awaiting: dict[str, Command] = {}      # ACKNOWLEDGED, completion to come as CommandProgress
        # A CommandProgress that overtook its command's DeviceDone (the link saw the completion right after
        # the device's answer, before the I/O task's result reached this actor): applied after the answer.
        self._early: dict[str, CommandProgress] = {}
        self._link_up = False
        self._link_ever_up = False
        self._healthy_reported: tuple[bool, bool] | None = None   # (healthy, sharing its grid share)
        #: Setpoint channels the site's grid limit manages: after a reboot the dispatcher re-sends them
        #: (through its policy stage), not this actor.
        self._grid_channels = grid_channels
        #: Operating parameters (SetParameter): "min_soc" (%) refuses discharging below it.
        self._parameters = dict(parameters or {})
        self._soc: float | None = None   # the last state of charge the device reported (%)
        self._handled = 0
        #: events of the message being handled, published together (see the module docstring)
        self._events_out: list[Event] | None = None
        #: in the actor's thread while the link answers at once: what its sink reports meanwhile
        self._local = threading.local()
        factory: Callable[..., StateMachine] = ev_charger_machine if spec.kind == "charger" else battery_machine
        self.sm = factory(spec.asset_id, on_change=self._on_state_change)
        #: a successor of a crashed actor: its predecessor's link.stop() may still wait on the loop, so its
        #: link starts there too, after that stop (never at once, before it)
        self._restarted = memory is not None
        if memory is not None:  # restarted after a crash: carry on from what the predecessor knew
            self.sm.restore(self.sm.states[memory.state])
            for command in memory.targets:
                self._targets[command.command_type] = command

    # ---- lifecycle -----------------------------------------------------------------------------
    def on_start(self) -> None:
        ctx = DeviceContext(loop=self._io.loop, clock=self._clock, services=self._services)
        me = self.actor_ref
        local = self._local

        def sink(event: DeviceEvent) -> None:
            captured = getattr(local, "captured", None)
            if captured is not None:  # the link is answering at once, in this actor's thread
                captured.append(event)
                return
            try:
                me.tell(DeviceReport(event))
            except pykka.ActorDeadError:
                log.debug("%s: device report after the actor stopped: %r", self.spec.asset_id, event)

        if not self._restarted and self._start_now(ctx, sink):
            return

        def started(result: Any, error: BaseException | None) -> None:  # on the I/O thread: only tells
            try:
                me.tell(LinkStarted(None if error is None else f"{type(error).__name__}: {error}"))
            except pykka.ActorDeadError:
                pass
        self._io.post(self.link.start(ctx, sink), started)

    def _start_now(self, ctx: DeviceContext, sink: Callable[[DeviceEvent], None]) -> bool:
        """Start a link that can start at once (:meth:`DeviceLink.start_now`) in this thread, then handle what it
        reported meanwhile and its ``LinkStarted`` as the messages they would have been from the loop.
        False: the link starts on the loop."""
        captured: list[DeviceEvent] = []
        self._local.captured = captured
        error = None
        try:
            started = self.link.start_now(ctx, sink)
        except Exception as exc:  # as a failed start on the loop
            started, error = True, f"{type(exc).__name__}: {exc}"
        finally:
            self._local.captured = None
        if not started:
            return False
        try:
            for event in captured:
                self.receive(DeviceReport(event))
            self.receive(LinkStarted(error))
        except Exception:  # pykka stops an actor whose on_start raises without calling on_failure: crash it
            self.on_failure(*sys.exc_info())  # as a handler's exception does (the supervisor restarts it)
            raise
        return True

    def on_failure(self, exc_type: Any, exc_value: Any, tb: Any) -> None:
        self._release_link(block=False)
        memory = AssetMemory(self.sm.state.name, tuple(self._targets.values()))
        try:
            self._supervisor.tell(Crashed(self.spec.asset_id, f"{exc_type.__name__}: {exc_value}", memory))
        except pykka.ActorDeadError:
            pass

    def on_stop(self) -> None:
        self._release_link(block=True)

    def _release_link(self, block: bool) -> None:
        for fut in self._in_flight.values():
            fut.cancel()
        self._in_flight.clear()
        if not self._io.running:
            return
        stopping = self._io.submit(self.link.stop())
        if block:
            try:
                stopping.result(timeout=5)
            except Exception:
                log.exception("%s: stopping the device link failed", self.spec.asset_id)

    # ---- messages ------------------------------------------------------------------------------
    def receive(self, message: Any) -> Any:
        if type(message) is Ping:  # pings do not count: they measure the actor's quiescence
            return self.handle(message)
        self._handled += 1
        self._events_out = []
        try:
            return self.handle(message)
        finally:
            self._flush_events()
            self._events_out = None

    @handles(Ping)
    def _ping(self, message: Ping) -> Pong:
        return Pong(self._handled, {"in_flight": len(self._in_flight)})

    @handles(Execute)
    def _on_execute(self, message: Execute) -> None:
        self._execute(message.commands)

    @handles(DeviceDone)
    def _on_device_done(self, message: DeviceDone) -> None:
        self._device_done(message)

    @handles(DeviceReport)
    def _on_device_report(self, message: DeviceReport) -> None:
        if type(message.event) not in _DEVICE_EVENTS:
            log.warning("%s: ignoring unknown device report %r", self.spec.asset_id, message.event)
            return
        self.handle(message.event)

    @handles(GetAssetState)
    def _get_state(self, message: GetAssetState) -> AssetStatus:
        link = "up" if self._link_up else "down" if self._link_ever_up else "never connected"
        return AssetStatus(self.spec.asset_id, self.sm.state.name if self._link_up else "UNAVAILABLE",
                           self.sm.state.name if self._link_ever_up else None, link, self._healthy,
                           "" if self._healthy else self._health_reason)

    @handles(SetParameter)
    def _set_parameter(self, message: SetParameter) -> None:
        if message.value is None:
            self._parameters.pop(message.name, None)
        else:
            self._parameters[message.name] = float(message.value)

    def _refusal(self, command: Command) -> str | None:
        """Why the asset refuses ``command`` now, beyond its static limits (a battery below its MinSoc)."""
        min_soc = self._parameters.get("min_soc")
        if (min_soc is not None and command.command_type is CommandType.SET_DISCHARGE_RATE and command.value > 0
                and self._soc is not None and self._soc < min_soc):
            return (f"asset {self.spec.asset_id}: state of charge {self._soc:g} % is below its MinSoc {min_soc:g} %: "
                    f"no discharge")
        return None

    @handles(LinkStarted)
    def _link_started(self, message: LinkStarted) -> None:
        if message.error is not None:
            log.error("%s: starting the device link failed: %s", self.spec.asset_id, message.error)
        self._report_health(self._health_reason)  # the dispatcher sends nothing until it hears this

    def _execute(self, commands: tuple[Command, ...]) -> None:
        reports: list[CommandReport] = []
        send: list[Command] = []
        for command in commands:
            problem = self.spec.check(command) or self._refusal(command)
            if problem is not None:
                reports.append(CommandReport(command.command_id, CommandStatus.REJECTED, problem, retryable=False,
                                             attempt=command.attempts))
            elif not self._healthy:
                reports.append(CommandReport(command.command_id, CommandStatus.HELD, self._health_reason,
                                             attempt=command.attempts))
            else:
                send.append(command)
        if reports:
            self._report(reports)
        if send:
            self._run(tuple(send), resend=False)

    def _run(self, commands: tuple[Command, ...], resend: bool) -> None:
        if not resend:
            self._sent.update((c.command_id, c) for c in commands)
        if not self._in_flight:  # nothing of this asset on the loop: the link may answer at once, in order
            commands = self._run_now(commands, resend)
            if not commands:
                return
        me = self.actor_ref
        self._next_token += 1
        token = self._next_token

        attempts_of = {c.command_id: c.attempts for c in commands}

        def done(results: Any, error: BaseException | None) -> None:  # on the I/O thread: only tells
            if error is not None:
                results = tuple((c.command_id, DeviceResult(Outcome.FAILED, f"{type(error).__name__}: {error}"))
                                for c in commands)
            try:
                me.tell(DeviceDone(results, token, resend=resend,
                                   attempts=tuple(attempts_of.get(cid, 0) for cid, _ in results)))
            except pykka.ActorDeadError:
                pass
        # a re-send after a reboot waits for its turn: nothing else would put those setpoints back
        wait_s = None if resend else self._ack_timeout_s
        self._in_flight[token] = self._io.post(_apply(self.link, commands, self._ack_timeout_s, self._lock, wait_s),
                                               done)

    def _run_now(self, commands: tuple[Command, ...], resend: bool) -> tuple[Command, ...]:
        """Ask the link to answer ``commands`` at once (:meth:`DeviceLink.execute_now`); returns those it
        could not (from the first one it declined on), which go to the loop. What the link reported
        meanwhile is handled before the answers, as the loop's messages would be."""
        results: list[tuple[str, DeviceResult]] = []
        captured: list[DeviceEvent] = []
        rest: tuple[Command, ...] = ()
        self._local.captured = captured
        try:
            for i, command in enumerate(commands):
                try:
                    result = self.link.execute_now(command)
                except Exception as exc:  # a link bug must not kill the actor: the command fails, is retried
                    log.exception("%s.execute_now(%s) raised", self.link.describe(), command.command_id)
                    result = DeviceResult(Outcome.FAILED, f"{type(exc).__name__}: {exc}")
                if result is None:
                    rest = commands[i:]
                    break
                results.append((command.command_id, result))
        finally:
            self._local.captured = None
        for event in captured:
            self._on_device_report(DeviceReport(event))
        if results:
            self._device_done(DeviceDone(tuple(results), 0, resend=resend,
                                         attempts=tuple(c.attempts for c in commands[:len(results)])))
        return rest

    def _device_done(self, message: DeviceDone) -> None:
        self._in_flight.pop(message.token, None)
        if message.resend:
            for cid, result in message.results:
                if result.outcome is not Outcome.COMPLETED:
                    log.warning("%s: re-sending target %s after reconnect: %s %s", self.spec.asset_id, cid,
                                result.outcome.value, result.reason or "")
            return
        reports: list[CommandReport] = []
        attempts = message.attempts
        for i, (cid, result) in enumerate(message.results):
            attempt = attempts[i] if i < len(attempts) else 0
            command, early = self._sent.get(cid), None
            if command is not None and attempt and command.attempts != attempt:
                command = None   # the answer to an earlier attempt: the later one (and its progress) stays awaited
            else:
                self._sent.pop(cid, None)
                early = self._early.pop(cid, None)
            status = _status_of(result.outcome, cid, self.spec.asset_id)
            if status is CommandStatus.COMPLETED:
                reports.append(CommandReport(cid, CommandStatus.ACKNOWLEDGED, attempt=attempt))
                if command is not None:
                    self._remember_target(command)
            elif status is CommandStatus.ACKNOWLEDGED and command is not None:
                self._awaiting[cid] = command
            elif status is CommandStatus.HELD and result.detail is not _NOT_SENT:
                self._set_link(False, result.reason or "device not connected")
            reports.append(CommandReport(cid, status, result.reason,
                                         retryable=status is not CommandStatus.REJECTED, attempt=attempt))
            if early is not None and status is CommandStatus.ACKNOWLEDGED:
                reports.append(self._progress(early))
        self._report(reports)

    def _progress(self, event: CommandProgress) -> CommandReport:
        command = self._awaiting.pop(event.command_id, None)
        status = _status_of(event.outcome, event.command_id, self.spec.asset_id)
        if status is CommandStatus.HELD:  # a late "not connected" cannot hold a command the device took
            status = CommandStatus.FAILED
        if status is CommandStatus.COMPLETED and command is not None:
            self._remember_target(command)
        return CommandReport(event.command_id, status, event.reason,
                             retryable=status is not CommandStatus.REJECTED,
                             attempt=command.attempts if command is not None else 0)

    def _remember_target(self, command: Command) -> None:
        if command.command_type.is_setpoint:
            # Kept in the order they were applied, and re-sent in that order after a reboot: channels can
            # overlap on the device (a battery's charge and discharge rates exclude each other), so the
            # latest one must land last.
            self._targets.pop(command.command_type, None)
            self._targets[command.command_type] = command

    # ---- what the device says on its own (DeviceReport -> the handler of the event's type) ------
    @handles(LinkUp)
    def _link_up(self, event: LinkUp) -> None:
        self._set_link(True, event.reason)
        resend: tuple[Command, ...] = ()
        if event.rebooted:
            # a channel with a newer command already on its way to the device gets that one instead, and
            # the grid's channels are re-sent by the dispatcher (their grant may have changed meanwhile)
            busy = {c.command_type for c in (*self._sent.values(), *self._awaiting.values())} | self._grid_channels
            resend = tuple(c for c in self._targets.values() if c.command_type not in busy)
            if self._grid_channels:
                self._dispatcher.tell(AssetRebooted(self.spec.asset_id))
            if resend:
                self._run(resend, resend=True)
        self._publish(EventType.ASSET_CONNECTED, {"asset_id": self.spec.asset_id, "rebooted": event.rebooted,
                                                  "reason": event.reason,
                                                  "resent": [c.command_id for c in resend] if event.rebooted
                                                  else []})

    @handles(LinkDown)
    def _link_down(self, event: LinkDown) -> None:
        self._publish(EventType.ASSET_DISCONNECTED, {"asset_id": self.spec.asset_id, "reason": event.reason})
        self._set_link(False, event.reason)

    @handles(CommandProgress)
    def _command_progress(self, event: CommandProgress) -> None:
        if event.command_id in self._sent:  # the device's answer to the command is still on its way
            self._early[event.command_id] = event
            return
        self._report([self._progress(event)])

    @handles(CrashRequest)
    def _crash_request(self, event: CrashRequest) -> None:
        raise AssetCrash(f"asset {self.spec.asset_id}: {event.reason}")

    @handles(StatusReport)
    def _follow_status(self, event: StatusReport) -> None:
        try:
            target = self.sm.states[event.state]
        except KeyError:
            log.warning("asset %s: device reported unknown state %r (raw %r); ignored",
                        self.spec.asset_id, event.state, event.raw)
            return
        path = self.sm.path_to(target)
        if path is None:
            log.warning("asset %s: no transition path from %s to %s; ignored", self.spec.asset_id,
                        self.sm.state.name, target.name)
            return
        for trigger in path:
            self.sm.trigger(trigger)

    @handles(Telemetry)
    def _telemetry(self, event: Telemetry) -> None:
        values: dict[str, float] = {}
        for key, raw in event.values.items():
            try:
                value = float(raw)
            except (TypeError, ValueError):
                value = float("nan")
            if value != value or value in (float("inf"), float("-inf")):
                log.warning("asset %s: telemetry %s=%r is not a number; ignored", self.spec.asset_id, key, raw)
                continue
            values[str(key)] = value
        self._publish(EventType.TELEMETRY, {"asset_id": self.spec.asset_id, **values})
        if "soc_pct" in values:
            self._soc = values["soc_pct"]
        power = values.get("power_kw")
        if self.spec.kind != "battery" or power is None:
            return
        state = self.sm.state
        if state not in (BatteryState.IDLE, BatteryState.CHARGING, BatteryState.DISCHARGING):
            return
        wanted = (BatteryState.CHARGING if power > POWER_DEADBAND_KW else
                  BatteryState.DISCHARGING if power < -POWER_DEADBAND_KW else BatteryState.IDLE)
        trigger = {BatteryState.CHARGING: "charge", BatteryState.DISCHARGING: "discharge",
                   BatteryState.IDLE: "stop"}[wanted]
        if wanted is not state:
            self.sm.trigger(trigger)

    # ---- health ---------------------------------------------------------------------------------
    @property
    def _healthy(self) -> bool:
        return self._link_up and self.sm.state.name not in _UNHEALTHY_STATES

    @property
    def _health_reason(self) -> str:
        if not self._link_up:
            return f"asset {self.spec.asset_id}: device link is down"
        return f"asset {self.spec.asset_id} is {self.sm.state.name}"

    def _set_link(self, up: bool, reason: str) -> None:
        self._link_up = up
        self._link_ever_up = self._link_ever_up or up
        self._report_health(reason)

    def _report_health(self, reason: str = "") -> None:
        """Tell the dispatcher when the asset's health changes, or (under a grid limit) whether it uses
        its share (a FINISHING charger does not)."""
        healthy = self._healthy
        sharing = healthy and self.sm.state.name not in NOT_SHARING_STATES
        reported = (healthy, sharing if self._grid_channels else healthy)
        if reported != self._healthy_reported:
            self._healthy_reported = reported
            self._flush_events()  # the events that led here go out first
            self._dispatcher.tell(AssetHealth(self.spec.asset_id, healthy, self.sm.state.name,
                                              reason if not healthy else ""))

    def _on_state_change(self, before: Any, after: Any, trigger: str) -> None:
        self._publish(EventType.STATE_CHANGED, {"asset_id": self.spec.asset_id, "from_state": before.name,
                                                "to_state": after.name, "trigger": trigger})
        self._report_health(self._health_reason)

    # ---- outbound ------------------------------------------------------------------------------
    def _report(self, reports: list[CommandReport]) -> None:
        events: tuple[Event, ...] = ()
        if self._events_out:  # the events that led here travel with the reports (see CommandReports)
            events, self._events_out = tuple(self._events_out), []
        try:
            self._dispatcher.tell(CommandReports(self.spec.asset_id, tuple(reports), events))
        except pykka.ActorDeadError:
            log.warning("%s: dispatcher is gone; %d reports dropped", self.spec.asset_id, len(reports))
            if events:
                try:
                    self._events.tell(Publish(events))
                except pykka.ActorDeadError:
                    pass

    def _publish(self, event_type: EventType, payload: dict[str, Any]) -> None:
        event = Event(event_type, self._clock.now(), payload)
        if self._events_out is not None:
            self._events_out.append(event)  # published at the end of the message (or before a tell)
            return
        try:
            self._events.tell(Publish((event,)))
        except pykka.ActorDeadError:
            pass

    def _flush_events(self) -> None:
        events = self._events_out
        if not events:
            return
        self._events_out = []
        try:
            self._events.tell(Publish(tuple(events)))
        except pykka.ActorDeadError:
            pass
