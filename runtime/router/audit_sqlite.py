"""The audit log in a SQLite file (the default): table ``audit``, indexed by time, edge, user and command.

It shares the :class:`~runtime.router.sqlite_db.SqliteDb` of the queue when both name the same file (the
default), so a command's state change and its audit row are committed together: rows wait in memory and
are inserted (``executemany``) by the connection's group commit, once per turn of the loop. ``coordinator
audit`` opens the same file on its own (WAL lets it read while the router writes).
"""

from __future__ import annotations

import json
from typing import Any

from .audit import AuditLog, AuditQuery, AuditRow
from .sqlite_db import SqliteDb, Statements

__all__ = ["SqliteAudit"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, kind TEXT NOT NULL, command_id TEXT, edge_id TEXT,
    user_id TEXT, status TEXT NOT NULL, detail TEXT, seq INTEGER, instance TEXT, payload TEXT);
CREATE INDEX IF NOT EXISTS audit_at ON audit (at);
CREATE INDEX IF NOT EXISTS audit_edge ON audit (edge_id, at);
CREATE INDEX IF NOT EXISTS audit_user ON audit (user_id, at);
CREATE INDEX IF NOT EXISTS audit_command ON audit (command_id, at);
"""
_INSERT = ("INSERT INTO audit (at, kind, command_id, edge_id, user_id, status, detail, seq, instance, payload) "
           "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")


class SqliteAudit(AuditLog):
    """The SQLite audit log (see the module docstring)."""

    def __init__(self, db: SqliteDb) -> None:
        self.db = db.acquire()
        self._pending: list[tuple[Any, ...]] = []
        self.db.add_writer(self._write)

    def _write(self) -> Statements:
        if not self._pending:
            return []
        rows, self._pending = self._pending, []
        return [(_INSERT, rows)]

    async def open(self) -> None:
        self.db.script(_SCHEMA)

    def record(self, row: AuditRow) -> None:
        self._pending.append((row.at, row.kind, row.command_id, row.edge_id, row.user_id, row.status, row.detail,
                              row.seq, row.instance,
                              row.payload_json()))
        self.db.dirty()

    async def flush(self) -> None:
        await self.db.durable()

    async def query(self, q: AuditQuery) -> list[AuditRow]:
        await self.db.durable()
        return self._select(q)

    def query_now(self, q: AuditQuery) -> list[AuditRow]:
        """:meth:`query` without a loop (``coordinator audit`` reading the file)."""
        self.db.commit()
        return self._select(q)

    def _select(self, q: AuditQuery) -> list[AuditRow]:
        where, params = q.where("?")
        for column, op, value in (("at", ">=", q.since), ("at", "<", q.until)):
            if value is not None:
                where += (" AND " if where else " WHERE ") + f"{column} {op} ?"
                params.append(value)
        order = "DESC" if q.newest_first else "ASC"
        rows = self.db.query("SELECT at, kind, command_id, edge_id, user_id, status, detail, seq, instance, "
                             f"payload FROM audit{where} ORDER BY at {order}, id {order} LIMIT ?",
                             params + [q.limit])
        return [AuditRow(at=r[0], kind=r[1], command_id=r[2], edge_id=r[3], user_id=r[4], status=r[5],
                         detail=r[6], seq=r[7], instance=r[8], payload=None if r[9] is None else json.loads(r[9]))
                for r in rows]

    async def close(self) -> None:
        self.db.release()
