"""DispatcherActor: keeps the command table and fans due commands out to the asset actors.

It is the only owner of the :class:`~runtime.core.command_table.CommandTable` and of the command journal.
Each message is handled as one step: apply it to the table, sweep (expiry, supersession, holds,
timeouts, retries) and send every due command to its asset actor (one ``Execute`` per asset). The
steps of a burst are then committed together, like one Core Cycle: when the inbox is empty (or before
a submission is answered) every change is journaled in one write and synced, one event per change
is published in one message, and one clock timer is set for the table's next deadline.

A burst is also committed when it grows long: after at most ``MAX_BURST_STEPS`` steps or
``MAX_BURST_S`` seconds of real time, whatever the inbox holds, so a steady stream of messages can
never starve the sends (a due command waits at most that long for its Execute).

Every due command first passes the :class:`~runtime.core.policy.DispatchPolicy` (device limits): a
refused one becomes REJECTED from PENDING and is never sent. Submitted commands are reviewed at once.

Availability of an asset combines two facts: its actor is alive (AssetUp/AssetDown from the
supervisor) and it is healthy (AssetHealth from the asset actor). Commands for an asset that is not
both are HELD, and released when it is. ``ready`` (a future given by the Site) is set once every
asset of the site has an actor and has reported its health: from then on a command for an asset that
is up is sent, never HELD first.

If a message handler raises, pykka stops the actor; ``on_failure(reason)`` (given by the Site) is then
called in this actor's thread, so that the site can say it has failed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import pykka

from runtime.core.clock import Clock, TimerHandle
from runtime.core.command_table import Change, CommandTable
from runtime.core.commands import Command, CommandStatus, CommandType
from runtime.core.events import Event, EventType
from runtime.core.policy import DispatchPolicy

from .event_actor import change_event
from .handlers import HandlerTable, handles
from .messages import (AssetDown, AssetHealth, AssetRebooted, AssetUp, CommandReports, Execute, GetCommand,
                       GetControllers, GetCounts, ListCommands, Ping, Pong, Publish, SetController, SubmitBatch,
                       SubmitCommands, Tick)

log = logging.getLogger(__name__)

__all__ = ["DispatcherActor", "change_event"]


#: Enum member -> its value (the ``.value`` property is slow on CPython 3.11's hot path)
_VALUE: dict[Any, str] = {m: m.value for e in (CommandStatus, CommandType) for m in e}
#: Messages answered without a step (nothing changes); submissions are committed before they are answered.
_QUERIES = frozenset({Ping, GetCommand, ListCommands, GetCounts, GetControllers})
#: The site controllers (SetController): on unless switched off.
CONTROLLERS = ("schedule", "grid_limit")
_SUBMISSIONS = frozenset({SubmitCommands, SubmitBatch})
#: A burst is committed after at most this many steps, or this many seconds of real time (see the module docstring).
MAX_BURST_STEPS = 256
MAX_BURST_S = 0.05


class DispatcherActor(HandlerTable, pykka.ThreadingActor):
    """The command table's owner. Start it with the table (possibly restored from a journal)."""

    def __init__(self, table: CommandTable, *, clock: Clock, events: pykka.ActorRef[Any],
                 journal: Any | None = None, retention_s: float = 3600.0, policy: DispatchPolicy | None = None,
                 expected_assets: Iterable[str] = (), ready: pykka.Future[None] | None = None,
                 on_failure: Callable[[str], None] | None = None) -> None:
        super().__init__()
        self._table = table
        self._policy = policy
        self._waiting_for = set(expected_assets)  # assets that have not reported their health since start
        self._reported: set[str] = set()
        self._ready = ready
        self._on_failure = on_failure
        self._burst_steps = 0
        self._burst_started = time.monotonic()
        self._events_after_commit: list[Event] = []  # published after the step's records are journaled
        self._regrants = 0   # grid regrant commands made by this actor (part of their ids)
        self._grid_seen = 0
        self._flight_seen = 0
        #: per asset, the commands of its Execute still waiting for the device's answer (one Execute in
        #: flight per asset: what is due meanwhile waits in the table, where priority orders it)
        self._in_flight: dict[str, set[str]] = {}
        self._controllers = dict.fromkeys(CONTROLLERS, True)
        self._clock = clock
        self._events = events
        self._journal = journal
        self._refs: dict[str, pykka.ActorRef[Any]] = {}
        self._healthy: dict[str, bool] = {}
        self._timer: TimerHandle | None = None
        self._handled = 0
        self._retention_s = retention_s
        self._pruned_at = clock.time()
        # Changes and journal records not yet committed. A burst of messages (answers from many assets)
        # is committed once, when the inbox is empty; a submission is committed before it is answered.
        self._changes: list[Change] = []
        self._records: list[dict[str, Any]] = []
        self._outbox: dict[str, list[Command]] = {}  # asset -> commands marked DISPATCHED, not yet sent
        self._now = clock.time()   # the current step's time (set at the start of each step)
        self._pump_after = True    # whether the current step ends with a pump

    # ---- step --------------------------------------------------------------------------------
    def receive(self, message: Any) -> Any:
        """One message = one step (in the actor's thread): apply it, pump what fell due, commit at the
        end of the burst (a submission: at once, so that "accepted" means journaled)."""
        kind = type(message)
        if kind in _QUERIES:
            # a query may be the last message of a burst: commit what the burst changed first
            self._flush_if_idle()
            return self.handle(message)
        self._handled += 1
        self._now = self._clock.time()
        grid = self._policy.grid if self._policy is not None else None
        self._pump_after = True
        result = self.handle(message)
        if self._follow_in_flight() or grid is not None:
            self._pump_after = True  # an asset's Execute was answered (its next commands may go), or the
            #                          grid may have room or a moved share: review again
        if self._pump_after and (grid is not None or not self._table.idle_at(self._now)):
            self._pump(self._now)   # (the grid may regrant with nothing due)
        if kind in _SUBMISSIONS:
            self._flush()  # accepted means journaled: the caller's ask returns after the sync
        else:
            self._flush_if_idle()
        return result

    def on_failure(self, exc_type: Any, exc_value: Any, traceback: Any) -> None:
        """A handler raised and pykka is stopping this actor (in its own thread): tell the site."""
        reason = f"dispatcher failed: {exc_type.__name__}: {exc_value}"
        log.error("%s; the site cannot dispatch any more", reason)
        if self._on_failure is not None:
            self._on_failure(reason)

    # ---- queries (answered without a step) ---------------------------------------------------
    @handles(Ping)
    def _ping(self, message: Ping) -> Pong:
        return Pong(self._handled, {"counts": self._table.counts()})

    @handles(GetCommand)
    def _get_command(self, message: GetCommand) -> Command | None:
        return self._table.get(message.command_id)

    @handles(ListCommands)
    def _list_commands(self, message: ListCommands) -> list[Command]:
        return self._table.commands(message.status)

    @handles(GetCounts)
    def _get_counts(self, message: GetCounts) -> dict[str, int]:
        return self._table.counts()

    @handles(GetControllers)
    def _get_controllers(self, message: GetControllers) -> dict[str, bool]:
        return dict(self._controllers)

    @handles(SetController)
    def _set_controller(self, message: SetController) -> dict[str, bool]:
        """Switch a controller: "schedule" off leaves due schedule rows waiting (superseded by newer ones as
        usual), "grid_limit" off sends setpoints as requested (the grid's books still follow them)."""
        if message.name not in self._controllers:
            raise ValueError(f"controller: unknown controller {message.name!r}; this site has "
                             f"{', '.join(self._controllers)}")
        self._controllers[message.name] = bool(message.on)
        log.info("controller %s switched %s", message.name, "on" if message.on else "off")
        return dict(self._controllers)

    # ---- steps ---------------------------------------------------------------------------------
    @handles(SubmitCommands)
    def _submit_commands(self, message: SubmitCommands) -> tuple[str, ...]:
        created = self._table.add(message.commands, self._now)
        self._changes += created
        if self._policy is not None:  # a command that can never be sent is refused at once
            for change in created:
                reason = self._policy.refusal(change.command)
                if reason is not None:
                    self._changes += self._table.reject(change.command.command_id, reason, self._now)
        return tuple(ch.command.command_id for ch in created)

    @handles(SubmitBatch)
    def _submit_batch(self, message: SubmitBatch) -> str:
        now, batch = self._now, message.batch
        if self._table.has_batch(batch.batch_id):  # a retried submission: a no-op, live and after recovery
            log.info("schedule batch %s was accepted before; the repeated submission is ignored", batch.batch_id)
            return batch.batch_id
        if message.replace and len(batch):
            start = float(batch.times[0])
            # rows that were never materialized are covered by the "bsup" record, not one record each
            self._changes += self._table.supersede_future(batch.assets, start, now, row_changes=False)
            self._records.append({"k": "bsup", "id": batch.batch_id, "assets": list(batch.assets), "from": start,
                                  "at": now})
        self._table.add_batch(batch, now)
        self._records.append({"k": "batch", "b": batch.to_record()})
        self._events_after_commit.append(Event(EventType.SCHEDULE_RECEIVED, self._clock.now(), {
            "batch_id": batch.batch_id, "commands": len(batch), "assets": len(batch.assets),
            "start": float(batch.times[0]) if len(batch) else None,
            "end": float(batch.times[-1]) if len(batch) else None}))
        return batch.batch_id

    @handles(CommandReports)
    def _command_reports(self, message: CommandReports) -> None:
        mark = len(self._changes)
        if message.events:  # what the asset published meanwhile: out with this burst's commit, first
            self._events_after_commit += message.events
        reports, asset, now = message.reports, message.asset_id, self._now
        i, n = 0, len(reports)
        while i < n:
            report = reports[i]
            after = reports[i + 1] if i + 1 < n else None
            if (after is not None and report.status is CommandStatus.ACKNOWLEDGED
                    and after.status is CommandStatus.COMPLETED and after.command_id == report.command_id):
                self._changes += self._apply_report(asset, report, now, completed=True)  # both at once
                i += 2
                continue
            self._changes += self._apply_report(asset, report, now)
            i += 1
        # answers make nothing due now, unless one put a command back to PENDING (a retry)
        self._pump_after = any(ch.command.status is CommandStatus.PENDING for ch in self._changes[mark:])

    @handles(AssetHealth)
    def _asset_health(self, message: AssetHealth) -> None:
        self._healthy[message.asset_id] = message.healthy
        if self._policy is not None and self._policy.grid is not None:
            self._policy.grid.set_sharing(message.asset_id, message.healthy, message.state)
        self._reported.add(message.asset_id)
        self._changes += self._table.set_available(message.asset_id, self._available(message.asset_id), self._now)
        self._check_ready(message.asset_id)

    @handles(AssetUp)
    def _asset_up(self, message: AssetUp) -> None:
        self._refs[message.asset_id] = message.ref
        # a fresh actor gets nothing until it has reported its health (once its link started); that
        # report may arrive before or after this message
        self._changes += self._table.set_available(message.asset_id, self._available(message.asset_id), self._now)
        self._check_ready(message.asset_id)

    @handles(AssetDown)
    def _asset_down(self, message: AssetDown) -> None:
        self._refs.pop(message.asset_id, None)
        self._healthy[message.asset_id] = False  # its successor reports afresh
        self._reported.discard(message.asset_id)
        self._in_flight.pop(message.asset_id, None)
        if self._policy is not None and self._policy.grid is not None:
            self._policy.grid.set_sharing(message.asset_id, False, "UNAVAILABLE")
        self._changes += self._table.hold_in_flight(message.asset_id, message.reason, self._now)
        self._changes += self._table.set_available(message.asset_id, False, self._now)

    @handles(AssetRebooted)
    def _asset_rebooted(self, message: AssetRebooted) -> None:
        """The device lost its setpoints: the grid re-sends them, reviewed like every other command."""
        if self._policy is not None and self._policy.grid is not None:
            self._policy.grid.rebooted(message.asset_id)

    @handles(Tick)
    def _tick(self, message: Tick) -> None:
        """A clock timer fired: the pump after every step does the work."""

    def _check_ready(self, asset_id: str) -> None:
        """Set ``ready`` once every expected asset has an actor and has reported its health (``asset_id``:
        the asset whose message this is, the only one that may have become ready)."""
        if self._ready is None or not self._waiting_for:
            return
        if asset_id in self._refs and asset_id in self._reported:
            self._waiting_for.discard(asset_id)
        if not self._waiting_for:
            self._ready.set(None)

    def _flush_if_idle(self) -> None:
        """Commit at the end of a burst: when no other message is waiting (the Core Cycle's end), or
        when the burst has run long (``MAX_BURST_STEPS`` steps or ``MAX_BURST_S`` seconds)."""
        if self._burst_steps == 0:
            self._burst_started = time.monotonic()
        self._burst_steps += 1
        if (self.actor_inbox.empty() or self._burst_steps >= MAX_BURST_STEPS
                or time.monotonic() - self._burst_started >= MAX_BURST_S):
            self._flush()

    def _flush(self) -> None:
        """Journal (one write + sync), publish (one message) and re-arm the timer for what the steps
        since the last flush changed."""
        self._burst_steps = 0
        if self._changes or self._records or self._events_after_commit:
            self._commit(self._changes, self._records)
            self._follow_in_flight()
            self._changes, self._records = [], []
            self._grid_seen = self._flight_seen = 0
        now = self._clock.time()
        if now - self._pruned_at >= min(60.0, self._retention_s):  # memory stays bounded on a long run
            self._pruned_at = now
            self._table.prune(now - self._retention_s)
        if self._outbox:
            self._send()
            if self._changes:  # commands held because their actor died meanwhile
                self._commit(self._changes, [])
                self._follow_in_flight()
                self._changes = []
                self._grid_seen = self._flight_seen = 0
        self._arm_timer()

    def _available(self, asset_id: str) -> bool:
        return asset_id in self._refs and self._healthy.get(asset_id, False)

    def _apply_report(self, asset_id: str, report: Any, now: float, completed: bool = False) -> list[Change]:
        """The table changes for one report (``completed``: an ACKNOWLEDGED report followed by the
        COMPLETED report of the same command, applied together)."""
        t, cid = self._table, report.command_id
        command = t.get(cid)
        if command is None or command.asset_id != asset_id:
            log.warning("report from asset %s for %s command %s ignored", asset_id,
                        "unknown" if command is None else f"{command.asset_id}'s", cid)
            return []
        if report.attempt and report.attempt != command.attempts:
            log.info("asset %s: %s for attempt %d of command %s ignored (it is at attempt %d, %s)", asset_id,
                     report.status.value, report.attempt, cid, command.attempts, command.status.value)
            return []
        s = report.status
        if completed:
            return t.acknowledge_and_complete(cid, now)
        if s is CommandStatus.ACKNOWLEDGED:
            return t.acknowledge(cid, now)
        if s is CommandStatus.COMPLETED:
            return t.complete(cid, now)
        if s is CommandStatus.REJECTED:
            return t.reject(cid, report.reason or "rejected by the device", now)
        if s is CommandStatus.TIMED_OUT:
            return t.time_out(cid, now, report.reason)
        if s is CommandStatus.HELD:
            return t.hold(cid, report.reason or "asset not healthy", now)
        return t.fail(cid, report.reason or "device failure", now, retryable=report.retryable)

    def _pump(self, now: float) -> None:
        """Sweep, then review every due command and mark the ones that may go DISPATCHED, queued for their
        asset (one Execute per asset). The Execute messages go out in :meth:`_flush`, after the journal
        has the change. With a grid limit, decreases are reviewed before increases, an increase may wait
        for room, and the grid's regrants (new grants for assets whose share moved) join the due commands."""
        table, policy, changes = self._table, self._policy, self._changes
        grid = policy.grid if policy is not None else None
        changes += table.sweep(now)
        for _ in range(4):  # regrants made by one round of reviews are reviewed in the next (bounded)
            if grid is not None:
                self._observe_grid(grid)
                regrants = grid.regrants({(c.asset_id, c.command_type) for c in table.due(now)})
                if regrants:
                    changes += table.add([self._regrant(r, now) for r in regrants], now)
                    changes += table.sweep(now)
                    self._observe_grid(grid)
            due = table.due(now)
            if grid is not None:
                due = grid.order(due)
            self._follow_in_flight()
            in_flight = self._in_flight
            sending: set[str] = set()   # assets given commands in this round: all of them go in one Execute
            for command in due:
                asset = command.asset_id
                if asset not in sending and in_flight.get(asset):
                    continue   # its Execute is still unanswered
                if command.source == "schedule" and not self._controllers["schedule"]:
                    continue
                reason = policy.refusal(command) if policy is not None else None
                if reason is not None:
                    changes += table.reject(command.command_id, reason, now)
                    continue
                granted = None
                if grid is not None and grid.applies_to(command) and not self._controllers["grid_limit"]:
                    granted = command.value   # enforcement off: as requested (the books still follow it)
                elif grid is not None and grid.applies_to(command):
                    self._observe_grid(grid)
                    review = grid.review(command, now)
                    if review.action == "wait":
                        continue
                    granted = review.granted
                    if review.limited:
                        self._events_after_commit.append(Event(EventType.GRID_LIMITED, self._clock.now(), {
                            "asset_id": command.asset_id, "command_id": command.command_id,
                            "command_type": _VALUE[command.command_type], "requested_kw": command.value,
                            "granted_kw": granted, "limit_kw": review.limit_kw, "policy": grid.limit.policy}))
                change = table.mark_dispatched(command.command_id, now, granted=granted)
                changes.append(change)
                sending.add(asset)
                self._outbox.setdefault(asset, []).append(change.command)
                in_flight.setdefault(asset, set()).add(command.command_id)
            if grid is None:
                break
            self._observe_grid(grid)
            if not grid.regrant_pending:
                break
        if grid is not None and grid.waiting:
            self._pump_after = True  # commands wait for room: review them again after the next message

    def _follow_in_flight(self) -> bool:
        """Drop from each asset's in-flight set the commands that left DISPATCHED since the last look;
        True when an asset's Execute is now fully answered."""
        freed = False
        for change in self._changes[self._flight_seen:]:
            if change.previous is CommandStatus.DISPATCHED and change.command.status is not CommandStatus.DISPATCHED:
                ids = self._in_flight.get(change.command.asset_id)
                if ids:
                    ids.discard(change.command.command_id)
                    freed = freed or not ids
        self._flight_seen = len(self._changes)
        return freed

    def _observe_grid(self, grid: Any) -> None:
        """Show the grid's books every change since it last looked (once each, in order)."""
        if self._grid_seen < len(self._changes):
            grid.observe(self._changes[self._grid_seen:])
            self._grid_seen = len(self._changes)

    def _regrant(self, regrant: Any, now: float) -> Command:
        self._regrants += 1
        return Command(f"grid-{regrant.asset_id}-{int(now * 1000)}-{self._regrants}", regrant.asset_id,
                       regrant.command_type, regrant.value, self._clock.now(), source="grid",
                       granted=regrant.granted)

    def _send(self) -> None:
        outbox, self._outbox = self._outbox, {}
        now = self._clock.time()
        get, dispatched = self._table.get, CommandStatus.DISPATCHED
        for asset_id, queued in outbox.items():
            # a command held, released or superseded later in the same burst may be queued twice or
            # not be in flight any more: send each id once, as the snapshot the table has now
            commands: dict[str, Command] = {}
            for c in queued:
                current = get(c.command_id)
                if current is not None and current.status is dispatched:
                    commands[c.command_id] = current
            if not commands:
                continue
            ref = self._refs.get(asset_id)
            try:
                if ref is None:
                    raise pykka.ActorDeadError(asset_id)
                ref.tell(Execute(tuple(commands.values())))
            except pykka.ActorDeadError:  # died since due() saw it available: hold, resend on AssetUp
                self._refs.pop(asset_id, None)
                self._changes += self._table.hold_in_flight(asset_id, f"asset actor {asset_id} is not running", now)
                self._changes += self._table.set_available(asset_id, False, now)

    # ---- journal, events, timer ------------------------------------------------------------------
    def _commit(self, changes: list[Change], records: list[dict[str, Any]]) -> None:
        """Journal first (one write + sync), then publish: no event tells of something not yet journaled."""
        if self._journal is not None and (changes or records):
            self._journal.commit(records, changes)  # one write + sync (runtime.core.command_log.CommandLog)
        events, self._events_after_commit = self._events_after_commit, []
        if not events and not changes:
            return
        try:  # the event actor makes the changes' events, for the types someone takes
            self._events.tell(Publish(tuple(events), tuple(changes), self._clock.now() if changes else None))
        except pykka.ActorDeadError:
            pass

    def _arm_timer(self) -> None:
        deadline = self._table.next_deadline()
        if self._timer is not None:
            if deadline is not None and self._timer.when == deadline and not self._timer.cancelled:
                return
            self._timer.cancel()
            self._timer = None
        if deadline is None:
            return
        me = self.actor_ref

        def fire() -> None:
            try:
                me.tell(Tick())
            except pykka.ActorDeadError:
                pass
        self._timer = self._clock.call_at(deadline, fire)

    def on_stop(self) -> None:
        self._flush()
        if self._timer is not None:
            self._timer.cancel()
        if self._journal is not None:
            self._journal.close()
