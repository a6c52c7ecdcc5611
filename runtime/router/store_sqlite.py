"""The command store in a SQLite file: the default, for one router instance.

Tables: ``commands`` (one row per command: the command as JSON, edge, seq, state, times, deadline, open flag),
``edge_seq`` (each edge's last seq) and ``edges`` (what each edge published).

One router owns the file, so the open commands are kept in memory (``_open``): an ack or a send needs no
read and no JSON parse, and so are the ones closed lately (``_recent``, at least until their batch is
committed: a read of the file would not see them before). A change marks the record dirty; the shared
:class:`~runtime.router.sqlite_db.SqliteDb` writes every dirty record once per batch (one upsert each, however
often it changed meanwhile), on its writer thread. Runs on the router's loop thread; every call is short.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from typing import Any

from protocols.edge.wire import EdgeCommand

from .sqlite_db import SqliteDb, Statements
from .states import FINAL, IN_FLIGHT, QUEUED, TIMED_OUT, CommandRecord, supersede_key
from .store import PutResult, Store

__all__ = ["SqliteStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS commands (
    command_id TEXT PRIMARY KEY, edge_id TEXT NOT NULL, seq INTEGER NOT NULL, state TEXT NOT NULL,
    command TEXT NOT NULL, digest TEXT NOT NULL, user TEXT, origin TEXT, dkey TEXT, priority TEXT,
    command_type TEXT, submitted_at REAL NOT NULL, expires_at REAL NOT NULL, sent_at REAL, deadline REAL,
    error TEXT, executed_at TEXT, updated_at REAL NOT NULL, sends INTEGER NOT NULL DEFAULT 0,
    open INTEGER NOT NULL DEFAULT 1);
CREATE UNIQUE INDEX IF NOT EXISTS commands_edge_seq ON commands (edge_id, seq);
CREATE INDEX IF NOT EXISTS commands_open ON commands (edge_id, seq) WHERE open = 1;
CREATE INDEX IF NOT EXISTS commands_final ON commands (updated_at) WHERE open = 0;
CREATE TABLE IF NOT EXISTS edge_seq (edge_id TEXT PRIMARY KEY, seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS edges (edge_id TEXT PRIMARY KEY, info TEXT NOT NULL);
"""
_COLUMNS = ("command_id, command, seq, state, user, submitted_at, expires_at, origin, sent_at, deadline, error, "
            "executed_at, updated_at, sends, digest, open")
_UPSERT = (f"INSERT INTO commands ({_COLUMNS}, edge_id, dkey, priority, command_type) VALUES "
           "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (command_id) DO UPDATE SET "
           "state = excluded.state, sent_at = excluded.sent_at, deadline = excluded.deadline, "
           "error = excluded.error, executed_at = excluded.executed_at, updated_at = excluded.updated_at, "
           "sends = excluded.sends, open = excluded.open")
#: closed commands kept in memory (at least until their batch is committed). Few: every record held is walked
#: by each full garbage collection (20,000 of them made each one about 120 ms longer on a slow machine, a pause
#: every few seconds under load), and a read of an older one is one indexed query on the reader connection.
_RECENT = 2_000
_SEQ = "INSERT INTO edge_seq (edge_id, seq) VALUES (?, ?) ON CONFLICT (edge_id) DO UPDATE SET seq = excluded.seq"


def _record(row: tuple[Any, ...]) -> CommandRecord:
    (_, command, seq, state, user, submitted_at, expires_at, origin, sent_at, deadline, error, executed_at,
     updated_at, sends, digest, is_open) = row
    rec = CommandRecord(command=EdgeCommand.model_validate_json(command), seq=seq, state=state, user=user or "",
                        submitted_at=submitted_at, expires_at=expires_at, origin=origin or "", sent_at=sent_at,
                        deadline=deadline, error=error, executed_at=executed_at, updated_at=updated_at,
                        sends=sends, digest=digest)
    rec.extra["open"] = bool(is_open)
    return rec


class SqliteStore(Store):
    """The SQLite command store (see the module docstring)."""

    def __init__(self, db: SqliteDb) -> None:
        self.db = db.acquire()
        self._open: dict[str, CommandRecord] = {}
        #: edge -> its open commands, in seq order (insertion order: seqs are given in order)
        self._edge_open: dict[str, dict[str, CommandRecord]] = {}
        self._seq: dict[str, int] = {}
        #: closed lately, oldest first (kept at least until the batch that wrote them is committed)
        self._recent: OrderedDict[str, CommandRecord] = OrderedDict()
        #: changed since the last batch: command id -> record, edge id -> last seq, edge id -> info JSON
        self._dirty: dict[str, CommandRecord] = {}
        self._dirty_seq: set[str] = set()
        self._dirty_edges: dict[str, str] = {}
        self.db.add_writer(self._write)

    def _write(self) -> Statements:
        """This store's part of the next batch: every dirty record, seq and edge, once."""
        out: Statements = []
        if self._dirty:
            rows = [(r.command_id, r.command.model_dump_json(exclude_none=True), r.seq, r.state, r.user,
                     r.submitted_at, r.expires_at, r.origin, r.sent_at, r.deadline, r.error, r.executed_at,
                     r.updated_at, r.sends, r.digest, 1 if r.extra.get("open") else 0, r.edge_id,
                     supersede_key(r.command), r.command.priority, r.command.command_type)
                    for r in self._dirty.values()]
            self._dirty = {}
            out.append((_UPSERT, rows))
        if self._dirty_seq:
            out.append((_SEQ, [(e, self._seq[e]) for e in self._dirty_seq]))
            self._dirty_seq = set()
        if self._dirty_edges:
            out.append(("INSERT INTO edges (edge_id, info) VALUES (?, ?) ON CONFLICT (edge_id) DO UPDATE SET "
                        "info = excluded.info", list(self._dirty_edges.items())))
            self._dirty_edges = {}
        return out

    def _changed(self, rec: CommandRecord) -> None:
        self._dirty[rec.command_id] = rec
        rec.extra["batch"] = self.db.batch
        self.db.dirty()

    def _forget_old(self, before: float | None = None) -> None:
        """Forget the oldest closed records beyond the last ``_RECENT``, and (``before``) those last changed
        before that time; never one whose batch is not committed yet."""
        recent, committed = self._recent, self.db.committed
        while recent:
            cid, oldest = next(iter(recent.items()))
            if len(recent) <= _RECENT and (before is None or oldest.updated_at >= before):
                return   # closed in order, mostly: the rest is newer
            if oldest.extra.get("batch", 0) > committed:
                return
            del recent[cid]

    async def open(self) -> None:
        self.db.script(_SCHEMA)
        self._seq = dict(self.db.query("SELECT edge_id, seq FROM edge_seq"))
        for row in self.db.query(f"SELECT {_COLUMNS} FROM commands WHERE open = 1 ORDER BY edge_id, seq"):
            self._remember(_record(row))

    def _remember(self, rec: CommandRecord) -> None:
        self._open[rec.command_id] = rec
        self._edge_open.setdefault(rec.edge_id, {})[rec.command_id] = rec

    async def put(self, command: EdgeCommand, *, user: str, origin: str, now: float, expires_at: float,
                  digest: str) -> PutResult:
        existing = await self.get(command.command_id)
        if existing is not None:
            return PutResult("duplicate" if existing.digest == digest else "conflict", existing)
        edge = command.target.edge_id
        seq = self._seq.get(edge, 0) + 1
        self._seq[edge] = seq
        self._dirty_seq.add(edge)
        dkey = supersede_key(command)
        superseded: list[CommandRecord] = []
        if command.supersede and command.command_type != "system":
            for old in list(self._edge_open.get(edge, {}).values()):
                if (old.state == QUEUED and supersede_key(old.command) == dkey
                        and old.command.command_type != "system"
                        and not (old.command.priority == "emergency" and command.priority == "normal")):
                    rec, changed = await self.transition(
                        old.command_id, "SUPERSEDED", allowed=frozenset({QUEUED}), now=now, deadline=None,
                        error=f"superseded by {command.command_id}")
                    if changed and rec is not None:
                        superseded.append(rec)
        rec = CommandRecord(command=command, seq=seq, state=QUEUED, user=user, submitted_at=now,
                            expires_at=expires_at, origin=origin, deadline=expires_at, updated_at=now,
                            digest=digest)
        rec.extra["open"] = True
        self._remember(rec)
        self._changed(rec)
        return PutResult("new", rec, superseded)

    async def get(self, command_id: str) -> CommandRecord | None:
        rec = self._open.get(command_id) or self._recent.get(command_id)
        if rec is not None:
            return rec
        rows = self.db.query(f"SELECT {_COLUMNS} FROM commands WHERE command_id = ?", (command_id,))
        return _record(rows[0]) if rows else None

    async def transition(self, command_id: str, to: str, *, allowed: frozenset[str], now: float,
                         deadline: float | None, error: str | None = None, executed_at: str | None = None,
                         sent: bool = False, close: bool | None = None,
                         owner: str | None = None) -> tuple[CommandRecord | None, bool]:
        rec = await self.get(command_id)
        if rec is None:
            return None, False
        if rec.state not in allowed:
            return rec, False
        if close is None:
            close = to in FINAL and to != TIMED_OUT
        rec.state, rec.deadline, rec.updated_at = to, deadline, now
        if error is not None:
            rec.error = error
        if executed_at is not None:
            rec.executed_at = executed_at
        if sent:
            rec.sent_at = now
            rec.sends += 1
        if close:
            rec.extra["open"] = False
            rec.extra.pop("wire", None)   # the hub's cached command frame: no frame is sent for a closed command
            self._open.pop(command_id, None)
            self._edge_open.get(rec.edge_id, {}).pop(command_id, None)
            self._recent[command_id] = rec
            self._forget_old()
        self._changed(rec)
        return rec, True

    def _open_of(self, edge_id: str) -> list[CommandRecord]:
        return list(self._edge_open.get(edge_id, {}).values())

    async def queued(self, edge_id: str, after_seq: int) -> list[CommandRecord]:
        return [r for r in self._open_of(edge_id) if r.state == QUEUED and r.seq > after_seq]

    async def resume(self, edge_id: str, last_seq: int) -> tuple[list[int], list[CommandRecord]]:
        pending, send = [], []
        for r in self._open_of(edge_id):
            if r.state == QUEUED or (r.state in IN_FLIGHT and r.seq > last_seq):
                send.append(r)
            elif r.seq <= last_seq and (r.state in IN_FLIGHT or r.state == TIMED_OUT):
                pending.append(r.seq)
        return pending, send

    async def bump_seq(self, edge_id: str, at_least: int) -> None:
        if self._seq.get(edge_id, 0) < at_least:
            self._seq[edge_id] = at_least
            self._dirty_seq.add(edge_id)
            self.db.dirty()

    async def due(self, now: float, limit: int = 500) -> list[CommandRecord]:
        found = [r for r in self._open.values() if r.deadline is not None and r.deadline <= now]
        found.sort(key=lambda r: r.deadline or 0.0)
        return found[:limit]

    async def extend_in_flight(self, until: float) -> int:
        count = 0
        for r in self._open.values():
            if r.state in IN_FLIGHT and r.deadline is not None and r.deadline < until:
                r.deadline = until
                self._changed(r)
                count += 1
        return count

    async def save_edge(self, edge_id: str, info: dict[str, Any]) -> None:
        self._dirty_edges[edge_id] = json.dumps(info, separators=(",", ":"))
        self.db.dirty()

    async def load_edges(self) -> dict[str, dict[str, Any]]:
        await self.db.durable()
        return {edge: json.loads(info) for edge, info in self.db.query("SELECT edge_id, info FROM edges")}

    async def purge(self, before: float) -> int:
        """Delete the final commands last changed before ``before``, and forget them in memory too: the
        closed records kept for quick reads (``_recent``, up to 2,000) would otherwise outlive the
        retention, and a short retention would not bound the router's memory (at 10 commands/s a router
        grew about 2 MB a minute for the half hour it took to fill them)."""
        purged = await self.db.run("DELETE FROM commands WHERE open = 0 AND updated_at < ?", (before,))
        self._forget_old(before)
        return purged

    async def flush(self) -> None:
        await self.db.durable()

    async def close(self) -> None:
        self.db.release()
