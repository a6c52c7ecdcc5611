"""The audit log: who sent what to which edge, when, every state change with its time, and every refusal.

One :class:`AuditRow` per event. ``kind`` says what happened:

==============  ===========================================================================================
kind            status / detail
==============  ===========================================================================================
``submit``      QUEUED; the command as sent (``payload``), the user and the seq
``state``       the new cloud state (SENT, DELIVERED, ..., TIMED_OUT, EXECUTED_LATE); the reason, if any
``duplicate``   the current state: the same command id (same payload) arrived again and was not queued again
``resend``      the state: an in-flight command sent again to a reconnected edge that had not journaled it
``ack``         the state: an ack that changed nothing (late after TIMED_OUT, or behind the state); what it was
``cancel``      the state: a cancel asked for a command that was already sent (the edge decides)
``refused``     REFUSED; ``code: message`` (forbidden, rate_limited, invalid, duplicate_id, unauthorized, ...)
``edge``        CONNECTED / DISCONNECTED; the remote address, the instance
``login``       SIGNED_IN: a ``[users]`` user signed in to the operator page (from where, for how long)
==============  ===========================================================================================

Two implementations: :mod:`.audit_sqlite` (default; in the queue's SQLite file, committed with it) and
:mod:`.audit_postgres` (psycopg 3, batched COPY). :meth:`AuditLog.record` never blocks the loop;
:meth:`AuditLog.flush` makes what was recorded durable (the router calls it before anything leaves that a row
vouches for). :func:`format_rows` prints rows as a table (rich), JSON or CSV for ``coordinator audit``.
"""

from __future__ import annotations

import csv
import io
import json
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from typing import Any, Sequence

from .states import iso

__all__ = ["AuditRow", "AuditQuery", "AuditLog", "format_rows", "parse_time", "COLUMNS"]

COLUMNS = ("at", "kind", "command_id", "edge_id", "user_id", "status", "detail", "seq", "instance")


@dataclass
class AuditRow:
    """One audit event (see the module docstring); ``at`` in epoch seconds."""

    at: float
    kind: str
    status: str
    command_id: str | None = None
    edge_id: str | None = None
    user_id: str | None = None
    detail: str | None = None
    seq: int | None = None
    instance: str | None = None
    #: the command as sent: a dict, or its JSON text (as the router writes it: serialized once, by pydantic)
    payload: dict[str, Any] | str | None = None

    def payload_json(self) -> str | None:
        if self.payload is None or isinstance(self.payload, str):
            return self.payload
        return json.dumps(self.payload, separators=(",", ":"))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["at"] = iso(self.at)
        if data["payload"] is None:
            del data["payload"]
        elif isinstance(data["payload"], str):
            data["payload"] = json.loads(data["payload"])
        return data


@dataclass
class AuditQuery:
    """A filter over the audit log: every given field must match (``status`` any of the listed);
    ``viewable``: only rows for these edges (None: all rows, including those of no edge)."""

    edge_id: str | None = None
    user_id: str | None = None
    command_id: str | None = None
    kind: str | None = None
    status: Sequence[str] = ()
    since: float | None = None
    until: float | None = None
    limit: int = 1000
    viewable: frozenset[str] | None = None
    #: newest first instead of oldest first
    newest_first: bool = False

    def where(self, placeholder: str = "?") -> tuple[str, list[Any]]:
        """A SQL WHERE clause (``placeholder`` ? for SQLite, %s for psycopg) and its parameters."""
        parts, params = [], []
        for column, value in (("edge_id", self.edge_id), ("user_id", self.user_id),
                              ("command_id", self.command_id), ("kind", self.kind)):
            if value is not None:
                parts.append(f"{column} = {placeholder}")
                params.append(value)
        if self.status:
            parts.append(f"status IN ({', '.join([placeholder] * len(self.status))})")
            params += list(self.status)
        if self.viewable is not None:
            if not self.viewable:
                parts.append("1 = 0")
            else:
                parts.append(f"edge_id IN ({', '.join([placeholder] * len(self.viewable))})")
                params += sorted(self.viewable)
        return (" WHERE " + " AND ".join(parts)) if parts else "", params


class AuditLog(ABC):
    """Where audit rows go (see the module docstring). Used from the router's loop."""

    async def open(self) -> None:
        """Create the table if it is missing."""

    @abstractmethod
    def record(self, row: AuditRow) -> None:
        """Add a row (never blocks; durable after :meth:`flush`)."""

    async def flush(self) -> None:
        """Make every row recorded so far durable."""

    @abstractmethod
    async def query(self, q: AuditQuery) -> list[AuditRow]:
        """The rows matching ``q``, oldest first (or newest first), at most ``q.limit``."""

    async def close(self) -> None:
        """Flush and close."""


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_time(text: str, now: float) -> float:
    """A time for ``--since`` / ``since=``: ISO 8601 (with a zone, or UTC), or an age back from ``now``
    (``90s``, ``15m``, ``2h``, ``7d``); epoch seconds. ValueError names what is accepted."""
    from datetime import datetime, timezone
    value = text.strip()
    if value[:-1].replace(".", "", 1).isdigit() and value[-1:] in _UNITS:
        return now - float(value[:-1]) * _UNITS[value[-1]]
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"not a time: {text!r} (use ISO 8601 like 2026-02-15T14:30:00Z, or an age like 15m, "
                         "2h, 7d)") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.timestamp()


def format_rows(rows: Sequence[AuditRow], fmt: str, out: Any) -> None:
    """Write ``rows`` to ``out`` as ``table`` (rich), ``json`` (one array) or ``csv``."""
    if fmt == "json":
        json.dump([r.to_dict() for r in rows], out, indent=1)
        out.write("\n")
        return
    if fmt == "csv":
        writer = csv.writer(out)
        writer.writerow(COLUMNS)
        for r in rows:
            d = r.to_dict()
            writer.writerow(["" if d.get(c) is None else d[c] for c in COLUMNS])
        return
    from rich.console import Console
    from rich.table import Table
    table = Table(show_lines=False, header_style="bold")
    for column in ("at", "kind", "command_id", "edge_id", "user_id", "status", "detail"):
        table.add_column(column, overflow="fold")
    for r in rows:
        d = r.to_dict()
        table.add_row(*["" if d.get(c) is None else str(d[c]) for c in
                        ("at", "kind", "command_id", "edge_id", "user_id", "status", "detail")])
    buffer = io.StringIO()
    Console(file=buffer, width=160, force_terminal=False).print(table)
    out.write(buffer.getvalue())
    out.write(f"{len(rows)} row(s)\n")
