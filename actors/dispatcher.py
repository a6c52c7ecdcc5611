"""DispatcherActor: keeps the command table and fans due commands out to the asset actors.

It is the only owner of the :class:`~runtime.command_table.CommandTable` and of the command journal.
Each message is handled as one step: apply it to the table, sweep (expiry, supersession, holds,
timeouts, retries), send every due command to its asset actor (one ``Execute`` per asset), journal
every change (one write, synced before the step ends), publish one event per change, and set one
clock timer for the table's next deadline.

Availability of an asset combines two facts: its actor is alive (AssetUp/AssetDown from the
supervisor) and it is healthy (AssetHealth from the asset actor). Commands for an asset that is not
both are HELD, and released when it is.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any

import pykka

from runtime.batch import CommandBatch
from runtime.clock import Clock, TimerHandle
from runtime.command_table import Change, CommandTable
from runtime.commands import Command, CommandStatus
from runtime.events import Event, EventType

from .messages import (AssetDown, AssetHealth, AssetUp, CommandReports, Execute, GetCommand, GetCounts,
                       ListCommands, Ping, Pong, Publish, SubmitBatch, SubmitCommands, Tick)

log = logging.getLogger(__name__)

__all__ = ["DispatcherActor", "change_event"]


def change_event(change: Change, now: Any) -> Event | None:
    """The lifecycle event for one table change (None for silent changes such as a release)."""
    if change.event is None:
        return None
    c = change.command
    payload = {"command_id": c.command_id, "asset_id": c.asset_id, "command_type": c.command_type.value,
               "value": c.value, "status": c.status.value,
               "previous_status": change.previous.value if change.previous else None,
               "attempts": c.attempts, "error": c.last_error}
    if change.retry_at is not None:
        payload["retry_at"] = change.retry_at
    return Event(change.event, now, payload)


class DispatcherActor(pykka.ThreadingActor):
    """The command table's owner. Start it with the table (possibly restored from a journal)."""

    def __init__(self, table: CommandTable, *, clock: Clock, events: pykka.ActorRef[Any],
                 journal: Any | None = None) -> None:
        super().__init__()
        self._table = table
        self._clock = clock
        self._events = events
        self._journal = journal
        self._refs: dict[str, pykka.ActorRef[Any]] = {}
        self._healthy: dict[str, bool] = {}
        self._timer: TimerHandle | None = None
        self._handled = 0

    # ---- step --------------------------------------------------------------------------------
    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Ping):
            return Pong(self._handled, {"counts": self._table.counts()})
        if isinstance(message, GetCommand):
            return self._table.get(message.command_id)
        if isinstance(message, ListCommands):
            return self._table.commands(message.status)
        if isinstance(message, GetCounts):
            return self._table.counts()
        self._handled += 1
        now = self._clock.time()
        changes: list[Change] = []
        records: list[dict[str, Any]] = []
        result: Any = None
        if isinstance(message, SubmitCommands):
            created = self._table.add(message.commands, now)
            changes += created
            result = tuple(ch.command.command_id for ch in created)
        elif isinstance(message, SubmitBatch):
            result = self._submit_batch(message, now, changes, records)
        elif isinstance(message, CommandReports):
            for report in message.reports:
                changes += self._apply_report(report, now)
        elif isinstance(message, AssetHealth):
            self._healthy[message.asset_id] = message.healthy
            changes += self._table.set_available(message.asset_id, self._available(message.asset_id), now)
        elif isinstance(message, AssetUp):
            self._refs[message.asset_id] = message.ref
            self._healthy.pop(message.asset_id, None)  # a fresh actor reports its own health
            changes += self._table.set_available(message.asset_id, True, now)
        elif isinstance(message, AssetDown):
            self._refs.pop(message.asset_id, None)
            changes += self._table.hold_in_flight(message.asset_id, message.reason, now)
            changes += self._table.set_available(message.asset_id, False, now)
        elif not isinstance(message, Tick):
            raise TypeError(f"DispatcherActor: unexpected message {message!r}")
        changes += self._pump(now)
        self._commit(changes, records, now)
        self._arm_timer()
        return result

    def _available(self, asset_id: str) -> bool:
        return asset_id in self._refs and self._healthy.get(asset_id, True)

    def _submit_batch(self, message: SubmitBatch, now: float, changes: list[Change],
                      records: list[dict[str, Any]]) -> str:
        batch: CommandBatch = message.batch
        if message.replace and len(batch):
            start = float(batch.times[0])
            changes += self._table.supersede_future(batch.assets, start, now)
            records.append({"k": "bsup", "id": batch.batch_id, "assets": list(batch.assets), "from": start,
                            "at": now})
        self._table.add_batch(batch, now)
        records.append({"k": "batch", "b": batch.to_record()})
        self._publish([Event(EventType.SCHEDULE_RECEIVED, self._clock.now(), {
            "batch_id": batch.batch_id, "commands": len(batch), "assets": len(batch.assets),
            "start": float(batch.times[0]) if len(batch) else None,
            "end": float(batch.times[-1]) if len(batch) else None})])
        return batch.batch_id

    def _apply_report(self, report: Any, now: float) -> list[Change]:
        t, cid = self._table, report.command_id
        if t.get(cid) is None:
            log.warning("report for unknown command %s ignored", cid)
            return []
        s = report.status
        if s is CommandStatus.ACKNOWLEDGED:
            return t.acknowledge(cid, now)
        if s is CommandStatus.COMPLETED:
            return t.complete(cid, now)
        if s is CommandStatus.REJECTED:
            return t.reject(cid, report.reason or "rejected by the device", now)
        if s is CommandStatus.TIMED_OUT:
            return t.time_out(cid, now)
        if s is CommandStatus.HELD:
            command = t.get(cid)
            return t.hold_in_flight(command.asset_id, report.reason or "asset not healthy", now) if command else []
        return t.fail(cid, report.reason or "device failure", now, retryable=report.retryable)

    def _pump(self, now: float) -> list[Change]:
        """Sweep, then send every due command to its asset actor, one Execute per asset."""
        changes = self._table.sweep(now)
        by_asset: dict[str, list[Command]] = defaultdict(list)
        for command in self._table.due(now):
            by_asset[command.asset_id].append(command)
        for asset_id, commands in by_asset.items():
            ref = self._refs.get(asset_id)
            if ref is None:  # due() only returns commands for available assets, which have a ref
                continue
            sent = []
            for command in commands:
                change = self._table.mark_dispatched(command.command_id, now)
                changes.append(change)
                sent.append(change.command)
            try:
                ref.tell(Execute(tuple(sent)))
            except pykka.ActorDeadError:
                self._refs.pop(asset_id, None)
                changes += self._table.hold_in_flight(asset_id, f"asset actor {asset_id} is dead", now)
                changes += self._table.set_available(asset_id, False, now)
        return changes

    # ---- journal, events, timer ------------------------------------------------------------------
    def _commit(self, changes: list[Change], records: list[dict[str, Any]], now: float) -> None:
        if self._journal is not None and (changes or records):
            self._journal.append_many(records + [{"k": "cmd", "c": ch.command.to_record()} for ch in changes])
            self._journal.sync()
        if changes:
            ts = self._clock.now()
            self._publish([e for e in (change_event(ch, ts) for ch in changes) if e is not None])

    def _publish(self, events: list[Event]) -> None:
        if not events:
            return
        try:
            self._events.tell(Publish(tuple(events)))
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
        if self._timer is not None:
            self._timer.cancel()
        if self._journal is not None:
            self._journal.close()
