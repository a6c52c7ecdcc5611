"""One SQLite connection with group commit, shared by the SQLite queue and the SQLite audit log.

Writes run at once on the router's loop thread inside an open transaction; the transaction is committed at
the next turn of the loop (``loop.call_soon``), or earlier by :meth:`SqliteDb.commit`, which the router calls
before anything leaves that a write vouches for (a command frame after its SENT row, a status frame after its
state). So many writes of one turn share one commit, and nothing is said to an edge or a client that a
crash could take back. WAL with ``synchronous=NORMAL``: a commit is a write() into the WAL and survives the
router process being killed (kill -9); only a power loss can take the last commits.

When the queue and the audit log use the same file they share this connection, so a state change and its
audit row commit together.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any, Iterable

__all__ = ["SqliteDb"]


class SqliteDb:
    """A SQLite file opened for the router (see the module docstring). Used from one thread, the loop's."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.execute("PRAGMA busy_timeout=5000")
        self._in_tx = False
        self._scheduled = False
        self._users = 0

    def acquire(self) -> "SqliteDb":
        """One more user of this connection (closed when the last one releases it)."""
        self._users += 1
        return self

    def execute(self, sql: str, params: Iterable[Any] = ()) -> sqlite3.Cursor:
        """A write, inside the open transaction (one is begun if none is)."""
        if not self._in_tx:
            self.conn.execute("BEGIN")
            self._in_tx = True
            self._schedule()
        return self.conn.execute(sql, tuple(params))

    def executemany(self, sql: str, rows: Iterable[Iterable[Any]]) -> None:
        if not self._in_tx:
            self.conn.execute("BEGIN")
            self._in_tx = True
            self._schedule()
        self.conn.executemany(sql, rows)

    def query(self, sql: str, params: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        """A read (it sees this connection's uncommitted writes)."""
        return self.conn.execute(sql, tuple(params)).fetchall()

    def commit(self) -> None:
        """Commit the open transaction, if any."""
        if self._in_tx:
            self._in_tx = False
            self.conn.execute("COMMIT")

    def _schedule(self) -> None:
        if self._scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (a CLI query, a test): the caller commits
        self._scheduled = True

        def later() -> None:
            self._scheduled = False
            self.commit()
        loop.call_soon(later)

    def release(self) -> None:
        """One user fewer; the last one commits and closes."""
        self._users -= 1
        if self._users <= 0:
            self.commit()
            self.conn.close()
