"""A command table driven the way the dispatcher drives it, with the journal records it would write.

Tests of compaction and recovery build histories with it (random ones, for the property test) and then
compare what different journals of the same history recover to (:func:`view`).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np

from runtime.core.batch import CommandBatch
from runtime.core.command_table import Change, CommandTable
from runtime.core.commands import Command, CommandStatus, CommandType
from runtime.core.records import RecordEncoder
from runtime.core.recovery import RecoveredState, restore_table

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
ASSETS = ("ev-1", "ev-2", "bat-1")
WINDOW = 3000.0      # dedupe window of the histories (short, so that histories cross it)
RETENTION = 600.0    # final snapshots kept in full by compaction


class History:
    """A table plus the journal records of everything done to it, commit by commit."""

    def __init__(self, window: float | None = WINDOW) -> None:
        self.table = CommandTable(dedupe_window_s=window, rng_seed=1)
        self.encoder = RecordEncoder()
        self.now = T0.timestamp()
        self.records: list[dict[str, Any]] = []    # every record, in order (the uncompacted journal)
        self.commands: dict[str, Command] = {}     # every command submitted, by id (first submission)
        self.batches: dict[str, CommandBatch] = {}

    def commit(self, records: list[dict[str, Any]], changes: list[Change]) -> list[dict[str, Any]]:
        """What CommandLog.commit writes for one burst."""
        for rec in records:
            if rec["k"] == "batch":
                self.encoder.note_batch(rec["b"]["id"], len(rec["b"]["times"]) // 8)
        out = records + self.encoder.encode(changes, self.now)
        self.records.extend(out)
        return out

    # ---- what the dispatcher does -----------------------------------------------------------------
    def submit(self, commands: list[Command]) -> list[dict[str, Any]]:
        for c in commands:
            self.commands.setdefault(c.command_id, c)
        changes = self.table.add(commands, self.now)
        changes += self._pump()
        return self.commit([], changes)

    def submit_batch(self, batch: CommandBatch, replace: bool = True) -> list[dict[str, Any]]:
        self.batches.setdefault(batch.batch_id, batch)
        if self.table.has_batch(batch.batch_id):
            return self.commit([], self._pump())
        records: list[dict[str, Any]] = []
        changes: list[Change] = []
        if replace and len(batch):
            start = float(batch.times[0])
            changes += self.table.supersede_future(batch.assets, start, self.now, row_changes=False)
            records.append({"k": "bsup", "id": batch.batch_id, "assets": list(batch.assets), "from": start,
                            "at": self.now})
        self.table.add_batch(batch, self.now)
        records.append({"k": "batch", "b": batch.to_record()})
        changes += self._pump()
        return self.commit(records, changes)

    def tick(self, seconds: float) -> list[dict[str, Any]]:
        self.now += seconds
        return self.commit([], self._pump())

    def answer(self, pick: int, how: str) -> list[dict[str, Any]]:
        """Answer one in-flight command (the ``pick``-th, cyclically) as a device would."""
        t = self.table
        flight = [c for c in t.commands() if c.status in (CommandStatus.DISPATCHED, CommandStatus.ACKNOWLEDGED)]
        if not flight:
            return self.commit([], [])
        cid = flight[pick % len(flight)].command_id
        changes = {"ack": lambda: t.acknowledge(cid, self.now), "complete": lambda: t.complete(cid, self.now),
                   "fail": lambda: t.fail(cid, "device failure", self.now),
                   "fatal": lambda: t.fail(cid, "broken", self.now, retryable=False),
                   "reject": lambda: t.reject(cid, "no", self.now), "timeout": lambda: t.time_out(cid, self.now),
                   "hold": lambda: t.hold(cid, "link down", self.now)}[how]()
        return self.commit([], changes)

    def availability(self, asset: str, up: bool) -> list[dict[str, Any]]:
        return self.commit([], self.table.set_available(asset, up, self.now) + self._pump())

    def prune(self) -> None:
        self.table.prune(self.now - RETENTION)

    def _pump(self) -> list[Change]:
        changes = self.table.sweep(self.now)
        for cmd in self.table.due(self.now):
            changes.append(self.table.mark_dispatched(cmd.command_id, self.now))
        return changes

    # ---- helpers for building commands ------------------------------------------------------------
    def command(self, cid: str, asset: str, at_s: float, value: float = 5.0, setpoint: bool = True,
                expires_s: float | None = None, priority: int = 0) -> Command:
        when = datetime.fromtimestamp(self.now + at_s, timezone.utc)
        return Command(cid, asset, CommandType.SET_CHARGE_RATE if setpoint else CommandType.START_CHARGING, value,
                       when, priority=priority,
                       expires_at=when + timedelta(seconds=expires_s) if expires_s is not None else None)

    def batch(self, batch_id: str, offsets: list[float], assets: list[int], values: list[float]) -> CommandBatch:
        n = len(offsets)
        return CommandBatch(batch_id, times=self.now + np.asarray(offsets, dtype=float),
                            asset_codes=np.asarray(assets[:n]), assets=ASSETS,
                            type_codes=np.full(n, CommandBatch.type_code(CommandType.SET_CHARGE_RATE)),
                            values=np.asarray(values[:n], dtype=float), created_at=self.now)


def restored(state: RecoveredState, now: float, window: float | None = WINDOW) -> CommandTable:
    """A fresh table with ``state`` restored into it, as a starting site does."""
    table = CommandTable(dedupe_window_s=window, rng_seed=1)
    restore_table(table, state, now)
    return table


def universe(history: History) -> list[str]:
    """Every command id of the history: submitted commands and every batch row."""
    ids = list(history.commands)
    for b in history.batches.values():
        ids.extend(b.command_id(i) for i in range(len(b)))
    return ids


def future(table: CommandTable, now: float, steps: int = 4, step_s: float = 900.0) -> list[Any]:
    """What the table does from ``now`` on if every due command is sent and completes: the sends, in order."""
    sent = []
    for k in range(steps):
        t = now + k * step_s
        changes = table.sweep(t)
        sent.append(sorted((c.command.command_id, c.command.status.value) for c in changes))
        for cmd in table.due(t):
            sent.append(("send", cmd.command_id, cmd.attempts))
            table.mark_dispatched(cmd.command_id, t)
            table.complete(cmd.command_id, t)
    return sent
