"""One SQLite connection with group commit, shared by the SQLite queue and the SQLite audit log.

Writers (the store, the audit log) keep what they changed in memory and register a flush with
:meth:`SqliteDb.add_writer`; :meth:`SqliteDb.dirty` says there is something to write. At the next turn of the
router's loop (``loop.call_soon``), but never sooner than ``min_interval_s`` after the previous commit, one
transaction writes everything that changed since (each writer with ``executemany``) and commits: at a steady
rate of commands one commit covers many of them instead of one each. :meth:`SqliteDb.durable` waits for that
commit: the router awaits it before anything leaves that a write vouches for (a command frame after its SENT
row, a status after its state), so nothing is said to an edge or a client that a crash could take back. WAL
with ``synchronous=NORMAL``: a commit is a write() into the WAL and survives the router process being killed
(kill -9); only a power loss can take the last commits.

When the queue and the audit log use the same file they share this connection, so a state change and its
audit row are committed in the same transaction. Used from one thread, the router loop's (or, without a
loop, a CLI reading the file).
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any, Callable, Iterable

__all__ = ["SqliteDb"]


class SqliteDb:
    """A SQLite file opened for the router (see the module docstring)."""

    def __init__(self, path: str | Path, min_interval_s: float = 0.0) -> None:
        self.path = Path(path)
        self.min_interval_s = min_interval_s
        self._last_commit = 0.0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.execute("PRAGMA busy_timeout=5000")
        self._writers: list[Callable[[], None]] = []
        self._dirty = False
        self._committed: asyncio.Future[None] | None = None
        self._users = 0
        self.commits = 0

    def acquire(self) -> "SqliteDb":
        """One more user of this connection (closed when the last one releases it)."""
        self._users += 1
        return self

    def add_writer(self, flush: Callable[[], None]) -> None:
        """``flush`` writes a writer's pending changes (inside the commit's transaction, with :meth:`execute`)."""
        self._writers.append(flush)

    def dirty(self) -> None:
        """Something changed: commit it at the next turn of the loop (now, when there is no loop)."""
        if self._dirty:
            return
        self._dirty = True
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (a CLI, a unit test): the caller commits
        self._committed = loop.create_future()
        due = self._last_commit + self.min_interval_s
        if due > loop.time():
            loop.call_at(due, self.commit)
        else:
            loop.call_soon(self.commit)

    def execute(self, sql: str, params: Iterable[Any] = ()) -> sqlite3.Cursor:
        return self.conn.execute(sql, tuple(params))

    def executemany(self, sql: str, rows: Iterable[Iterable[Any]]) -> None:
        self.conn.executemany(sql, rows)

    def query(self, sql: str, params: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        """A read (of what is committed: call :meth:`commit` first to see this turn's changes)."""
        return self.conn.execute(sql, tuple(params)).fetchall()

    def commit(self) -> None:
        """Write every writer's pending changes in one transaction, and commit."""
        waiters, self._committed = self._committed, None
        if self._dirty:
            self._dirty = False
            self.conn.execute("BEGIN")
            try:
                for flush in self._writers:
                    flush()
            except BaseException:
                self.conn.execute("ROLLBACK")
                if waiters is not None and not waiters.done():
                    waiters.set_exception(sqlite3.OperationalError("the commit failed"))
                raise
            self.conn.execute("COMMIT")
            self.commits += 1
            try:
                self._last_commit = asyncio.get_running_loop().time()
            except RuntimeError:
                pass
        if waiters is not None and not waiters.done():
            waiters.set_result(None)

    async def durable(self) -> None:
        """Wait until everything changed so far is committed (at most until the next turn of the loop)."""
        if self._dirty and self._committed is not None:
            await asyncio.shield(self._committed)
        elif self._dirty:
            self.commit()

    def release(self) -> None:
        """One user fewer; the last one commits and closes."""
        self._users -= 1
        if self._users <= 0:
            self.commit()
            self.conn.close()
