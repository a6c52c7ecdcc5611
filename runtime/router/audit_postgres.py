"""The audit log in PostgreSQL (psycopg 3, asyncio): for a fleet, where every router writes one shared log.

Table (``[postgres] table``, default ``router_audit``): ``at timestamptz``, kind, command_id, edge_id, user_id,
status, detail, seq, instance, ``payload jsonb``; indexed by time, edge, user and command (a TimescaleDB
hypertable can be made of it as it is).

Threads and loops: all of it runs on the router's loop. :meth:`PostgresAudit.record` appends to a buffer; a
writer task sends the buffer in batches with COPY (one round trip for many rows) on its own connection;
:meth:`flush` waits until the rows recorded so far are written (bounded: while PostgreSQL is unreachable it
returns at once, rows stay buffered and are written when it is back; the router keeps routing). Queries use a
second connection. A killed router loses at most the batch that was not written yet.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timezone
from typing import Any

import psycopg

from .audit import AuditLog, AuditQuery, AuditRow

__all__ = ["PostgresAudit"]

log = logging.getLogger(__name__)
_FIELDS = "at, kind, command_id, edge_id, user_id, status, detail, seq, instance, payload"


class PostgresAudit(AuditLog):
    """The PostgreSQL audit log (see the module docstring)."""

    def __init__(self, dsn: str, table: str = "router_audit", batch: int = 2000) -> None:
        self.dsn, self.table, self.batch = dsn, table, batch
        self._buffer: list[AuditRow] = []
        self._recorded = 0
        self._written = 0
        self._wake = asyncio.Event()
        self._progress = asyncio.Event()
        self._writer_conn: psycopg.AsyncConnection[Any] | None = None
        self._reader_conn: psycopg.AsyncConnection[Any] | None = None
        self._reader_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._healthy = True
        self._closing = False

    async def open(self) -> None:
        self._writer_conn = await psycopg.AsyncConnection.connect(self.dsn, autocommit=True)
        t = self.table
        await self._writer_conn.execute(
            f"CREATE TABLE IF NOT EXISTS {t} (id BIGSERIAL PRIMARY KEY, at TIMESTAMPTZ NOT NULL, "
            "kind TEXT NOT NULL, command_id TEXT, edge_id TEXT, user_id TEXT, status TEXT NOT NULL, detail TEXT, "
            "seq BIGINT, instance TEXT, payload JSONB)")
        for name, cols in (("at", "at"), ("edge", "edge_id, at"), ("user", "user_id, at"),
                           ("command", "command_id, at")):
            await self._writer_conn.execute(f"CREATE INDEX IF NOT EXISTS {t}_{name} ON {t} ({cols})")
        self._reader_conn = await psycopg.AsyncConnection.connect(self.dsn, autocommit=True)
        self._task = asyncio.get_running_loop().create_task(self._writer(), name="audit-postgres-writer")

    def record(self, row: AuditRow) -> None:
        self._buffer.append(row)
        self._recorded += 1
        self._wake.set()

    async def _write(self, rows: list[AuditRow]) -> None:
        assert self._writer_conn is not None
        async with self._writer_conn.cursor() as cur:
            async with cur.copy(f"COPY {self.table} ({_FIELDS}) FROM STDIN") as copy:
                for r in rows:
                    await copy.write_row((datetime.fromtimestamp(r.at, timezone.utc), r.kind, r.command_id,
                                          r.edge_id, r.user_id, r.status, r.detail, r.seq, r.instance,
                                          r.payload_json()))   # jsonb from its text

    async def _writer(self) -> None:
        """The writer task: batches out of the buffer, reconnecting with a capped backoff on failure."""
        backoff = 0.2
        while True:
            if not self._buffer:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            rows = self._buffer[:self.batch]
            try:
                if self._writer_conn is None or self._writer_conn.closed:
                    self._writer_conn = await psycopg.AsyncConnection.connect(self.dsn, autocommit=True)
                await self._write(rows)
            except (psycopg.Error, OSError) as exc:
                if self._closing:
                    log.error("audit: %d row(s) not written to PostgreSQL at shutdown: %s", len(self._buffer), exc)
                    return
                if self._healthy:
                    log.error("audit: PostgreSQL write failed (%s); rows stay buffered and are retried", exc)
                self._healthy = False
                self._progress.set()
                if self._writer_conn is not None:
                    await self._writer_conn.close()
                    self._writer_conn = None
                await asyncio.sleep(backoff)  # a retry backoff, not a wait on logic
                backoff = min(backoff * 2, 5.0)
                continue
            if not self._healthy:
                log.warning("audit: PostgreSQL is back; writing the buffered rows")
            self._healthy, backoff = True, 0.2
            del self._buffer[:len(rows)]
            self._written += len(rows)
            self._progress.set()
            self._progress = asyncio.Event()

    async def flush(self) -> None:
        target = self._recorded
        while self._healthy and self._written < target and self._task is not None and not self._task.done():
            progress = self._progress
            self._wake.set()
            try:
                await asyncio.wait_for(progress.wait(), 2.0)
            except TimeoutError:
                return

    async def query(self, q: AuditQuery) -> list[AuditRow]:
        await self.flush()
        where, params = q.where("%s")
        for op, value in ((">=", q.since), ("<", q.until)):
            if value is not None:
                where += (" AND " if where else " WHERE ") + f"at {op} %s"
                params.append(datetime.fromtimestamp(value, timezone.utc))
        order = "DESC" if q.newest_first else "ASC"
        sql = f"SELECT {_FIELDS} FROM {self.table}{where} ORDER BY at {order}, id {order} LIMIT %s"
        async with self._reader_lock:
            if self._reader_conn is None or self._reader_conn.closed:
                self._reader_conn = await psycopg.AsyncConnection.connect(self.dsn, autocommit=True)
            cur = await self._reader_conn.execute(sql, params + [q.limit])
            rows = await cur.fetchall()
        return [AuditRow(at=r[0].timestamp(), kind=r[1], command_id=r[2], edge_id=r[3], user_id=r[4], status=r[5],
                         detail=r[6], seq=r[7], instance=r[8], payload=r[9]) for r in rows]

    async def close(self) -> None:
        self._closing = True
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, 5.0)
            except TimeoutError:
                self._task.cancel()
                log.error("audit: %d row(s) not written to PostgreSQL at shutdown", len(self._buffer))
        for conn in (self._writer_conn, self._reader_conn):
            if conn is not None and not conn.closed:
                await conn.close()


def query_postgres_sync(dsn: str, table: str, q: AuditQuery) -> list[AuditRow]:
    """:meth:`PostgresAudit.query` without a router (``coordinator audit``)."""
    async def run() -> list[AuditRow]:
        audit = PostgresAudit(dsn, table)
        audit._reader_conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
        try:
            return await audit.query(q)
        finally:
            await audit._reader_conn.close()
    return asyncio.run(run())
