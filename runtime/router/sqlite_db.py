"""One SQLite file with group commit on a writer thread, shared by the SQLite queue and the SQLite audit log.

Writers (the store, the audit log) keep what they changed in memory and register a collector with
:meth:`SqliteDb.add_writer`; :meth:`SqliteDb.dirty` says there is something to write. At the next turn of the
router's loop (``loop.call_soon``), but never sooner than ``min_interval_s`` after the previous batch, the
collectors turn everything changed since into statements (on the loop: that part is Python), and one
transaction runs them on the ``router-sqlite`` writer thread, with its own connection, and commits. The loop
never waits on the disk: a batch of hundreds of rows, or a WAL checkpoint's fsync, takes its time on the
writer thread (sqlite3 releases the GIL while SQLite works). Batches run one at a time, in order.

:meth:`SqliteDb.durable` waits until everything changed so far is committed: the router awaits it before
anything leaves that a change vouches for (a command frame after its SENT row, a status after its state), so
nothing is said to an edge or a client that a crash could take back. WAL with ``synchronous=NORMAL``: a
commit is a write() into the WAL and survives the router process being killed (kill -9); only a power loss
can take the last commits. Reads use a second connection on the loop's thread and see what is committed;
the store keeps what is not committed yet in memory (:attr:`SqliteDb.batch` tells which batch a change will
be in, :attr:`SqliteDb.committed` which batch was committed last).

When the queue and the audit log use the same file they share this object, so a state change and its audit
row are committed in the same transaction. Without a running loop (a CLI reading the file, a unit test),
batches run at once on the calling thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import sqlite3
from pathlib import Path
from typing import Any, Callable, Iterable

__all__ = ["SqliteDb", "Statements"]

log = logging.getLogger(__name__)

#: What a collector hands over: (SQL, rows for executemany) pairs, run in this order.
Statements = list[tuple[str, list[tuple[Any, ...]]]]


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=5000")
    return conn


class SqliteDb:
    """A SQLite file opened for the router (see the module docstring)."""

    def __init__(self, path: str | Path, min_interval_s: float = 0.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = _connect(self.path)
        self.reader = _connect(self.path)
        self.min_interval_s = min_interval_s
        self._collectors: list[Callable[[], Statements]] = []
        self._dirty = False
        self._next: asyncio.Future[None] | None = None     # resolved when the next batch is committed
        self._inflight: asyncio.Future[None] | None = None  # the batch on the writer thread
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._last_batch_at = 0.0
        self._users = 0
        #: the batch changes made now will be in; the last batch committed
        self.batch = 1
        self.committed = 0

    def acquire(self) -> "SqliteDb":
        """One more user of this file (closed when the last one releases it)."""
        self._users += 1
        return self

    def add_writer(self, collect: Callable[[], Statements]) -> None:
        """``collect`` returns (and forgets) a writer's pending changes as statements."""
        self._collectors.append(collect)

    def script(self, sql: str) -> None:
        """Run a schema script (at open, before any batch)."""
        self._writer.executescript(sql)

    def query(self, sql: str, params: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        """A read on the loop's connection: what is committed."""
        return self.reader.execute(sql, tuple(params)).fetchall()

    def dirty(self) -> None:
        """Something changed: write it in the next batch."""
        if self._dirty:
            return
        self._dirty = True
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop: commit() runs it when called
        self._next = loop.create_future()
        due = self._last_batch_at + self.min_interval_s
        if due > loop.time():
            loop.call_at(due, self.commit)
        else:
            loop.call_soon(self.commit)

    def _run(self, statements: Statements) -> None:
        """One transaction (on the writer thread, or inline without a loop)."""
        self._writer.execute("BEGIN")
        try:
            for sql, rows in statements:
                self._writer.executemany(sql, rows)
        except BaseException:
            self._writer.execute("ROLLBACK")
            raise
        self._writer.execute("COMMIT")

    def _collect(self) -> tuple[int, Statements]:
        batch = self.batch
        self.batch += 1
        self._dirty = False
        statements: Statements = []
        for collect in self._collectors:
            statements += collect()
        return batch, statements

    def commit(self) -> None:
        """Hand everything changed so far to the writer (at once, without a running loop)."""
        waiters, self._next = self._next, None
        if not self._dirty:
            if waiters is not None and not waiters.done():
                waiters.set_result(None)
            return
        batch, statements = self._collect()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._run(statements)
            self.committed = batch
            return
        self._last_batch_at = loop.time()
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="router-sqlite")
        future = loop.run_in_executor(self._executor, self._run, statements)
        self._inflight = future

        def done(f: asyncio.Future[None]) -> None:
            exc = f.exception() if not f.cancelled() else asyncio.CancelledError()
            if exc is None:
                self.committed = max(self.committed, batch)
            else:
                log.error("SQLite batch %d was not committed: %r", batch, exc)
            if waiters is not None and not waiters.done():
                waiters.set_exception(exc) if exc is not None else waiters.set_result(None)
        future.add_done_callback(done)

    async def durable(self) -> None:
        """Wait until everything changed so far is committed."""
        if self._dirty and self._next is not None:
            await asyncio.shield(self._next)
        elif self._dirty:
            self.commit()
        elif self._inflight is not None and not self._inflight.done():
            await asyncio.shield(self._inflight)

    def _run_one(self, sql: str, params: tuple[Any, ...]) -> int:
        return self._writer.execute(sql, params).rowcount   # autocommit: its own transaction

    async def run(self, sql: str, params: Iterable[Any] = ()) -> int:
        """One statement after every batch so far (a purge), committed; the rows it changed."""
        await self.durable()
        if self._executor is None:
            return self._run_one(sql, tuple(params))
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._run_one, sql, tuple(params))

    def release(self) -> None:
        """One user fewer; the last one writes what is left, stops the writer thread and closes the file."""
        self._users -= 1
        if self._users > 0:
            return
        if self._executor is not None:
            self._executor.shutdown(wait=True)   # the batches already handed over
            self._executor = None
        if self._dirty:
            batch, statements = self._collect()
            self._run(statements)
            self.committed = batch
        if self._next is not None and not self._next.done():
            self._next.set_result(None)
        self._writer.close()
        self.reader.close()
