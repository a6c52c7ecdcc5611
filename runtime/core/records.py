"""The command journal's records (format version 2): what each record holds, and how a change becomes one.

A record is a msgpack map with a kind ``"k"``. Keys are one or two letters and values are codes, so that
a command's life costs tens of bytes per transition, not hundreds: the full command is written once,
when the journal first hears of it, and each later change carries only what changed.

Kinds
-----
``"n"``: a new command, in full::

    {"k": "n", "i": id, "a": asset, "y": type code, "v": value, "t": scheduled time, "s": status code,
     "w": time of the record, and only when not the default: "n": attempts (0), "p": priority (0),
     "x": expires_at (none), "c": created_at (none), "e": last error (none), "o": source ("api"),
     "g": granted (none)}

``"t"``: a transition of a command the journal already holds (an ``"n"`` record, a version-1 ``"cmd"``
snapshot, or a row of a stored batch, whose full form is the batch itself)::

    {"k": "t", "i": id, "s": status code, "w": time of the change,
     and only when it changed: "n": attempts, "e": last error (nil when cleared), "g": granted, "p", "x", "c"}

Command times (``"t"``, ``"x"``, ``"c"``) are epoch seconds as floats (site clock); the record time
``"w"`` is whole epoch seconds, rounded up (it only serves retention and the dedupe window, and fits in
5 bytes instead of 9). A schedule row that falls due is not written at all while it is an untouched
PENDING row: its batch already holds it, and recovery treats a row without records as PENDING. One
commit (one write) holds one record per command: its state at the end of the commit (recovery needs
the state, not the path; the record sits where the command's first change was, so first-seen order
is kept). A typical schedule row costs two ``"t"`` records: DISPATCHED, then COMPLETED.

The schedule kinds are ``"batch"`` (:meth:`~runtime.core.batch.CommandBatch.to_record`: raw column
bytes) and ``"bsup"`` (a batch replaced older ones; see :mod:`runtime.core.recovery`). Compaction
(:mod:`runtime.core.compaction`) writes four more kinds that only a compacted snapshot holds:

* ``"m"``: ``{"k": "m", "b": batch id, "r": rows (u32 LE bytes), "w": when}``: rows of the batch that were
  superseded while they were still lazy (no record of their own);
* ``"f"``: ``{"k": "f", "b": batch id, "r": rows, "w": latest}``: rows that ended (final) and whose
  records were dropped; ``w`` is when the last of them ended;
* ``"d"``: ``{"k": "d", "i": [ids], "u": until (f8 LE bytes)}``: final commands forgotten by compaction
  whose ids stay known until ``u`` (the dedupe window);
* ``"db"``: ``{"k": "db", "i": [batch ids], "n": [lengths], "u": until}``: batches whose rows all ended,
  known (so that a retried submission is a no-op) until ``u``.

The status and type codes below are part of the format: never renumber them, only append.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np

from .clock import to_datetime
from .command_table import Change
from .commands import Command, CommandStatus, CommandType

__all__ = ["STATUS_CODE", "STATUS_OF", "TYPE_CODE", "TYPE_OF", "COMMAND_KINDS", "new_record", "transition_record",
           "command_from_new", "rows_bytes", "rows_from", "record_time", "RecordEncoder"]

_S = CommandStatus
#: Status <-> code (format contract: append only).
STATUS_CODE: dict[CommandStatus, int] = {
    _S.PENDING: 0, _S.DISPATCHED: 1, _S.ACKNOWLEDGED: 2, _S.COMPLETED: 3, _S.FAILED: 4, _S.TIMED_OUT: 5,
    _S.EXPIRED: 6, _S.SUPERSEDED: 7, _S.REJECTED: 8, _S.HELD: 9}
STATUS_OF: dict[int, CommandStatus] = {v: k for k, v in STATUS_CODE.items()}
_T = CommandType
#: Command type <-> code (format contract: append only).
TYPE_CODE: dict[CommandType, int] = {
    _T.SET_CHARGE_RATE: 0, _T.SET_DISCHARGE_RATE: 1, _T.SET_POWER_LIMIT: 2, _T.SET_SOC_TARGET: 3,
    _T.START_CHARGING: 4, _T.STOP_CHARGING: 5, _T.CHANGE_AVAILABILITY: 6}
TYPE_OF: dict[int, CommandType] = {v: k for k, v in TYPE_CODE.items()}

#: Every kind a version-2 command journal may hold (all of them required: none may be skipped).
COMMAND_KINDS = ("n", "t", "batch", "bsup", "m", "f", "d", "db")

_PENDING = _S.PENDING


def _ts(value: Any) -> float | None:
    return value.timestamp() if value is not None else None


def record_time(now: float) -> int:
    """The ``"w"`` of a record written at ``now``: whole seconds, rounded up."""
    return math.ceil(now)


def new_record(cmd: Command, now: float) -> dict[str, Any]:
    """The ``"n"`` record of ``cmd`` (its full snapshot), stamped ``now``."""
    rec: dict[str, Any] = {"k": "n", "i": cmd.command_id, "a": cmd.asset_id, "y": TYPE_CODE[cmd.command_type],
                           "v": float(cmd.value), "t": cmd.scheduled_time.timestamp(),
                           "s": STATUS_CODE[cmd.status], "w": record_time(now)}
    if cmd.attempts:
        rec["n"] = cmd.attempts
    if cmd.priority:
        rec["p"] = cmd.priority
    if cmd.expires_at is not None:
        rec["x"] = cmd.expires_at.timestamp()
    if cmd.created_at is not None:
        rec["c"] = cmd.created_at.timestamp()
    if cmd.last_error is not None:
        rec["e"] = cmd.last_error
    if cmd.source != "api":
        rec["o"] = cmd.source
    if cmd.granted is not None:
        rec["g"] = cmd.granted
    return rec


def transition_record(old: Command, new: Command, now: float) -> dict[str, Any]:
    """The ``"t"`` record that turns snapshot ``old`` (what the journal holds) into ``new``."""
    rec: dict[str, Any] = {"k": "t", "i": new.command_id, "s": STATUS_CODE[new.status], "w": record_time(now)}
    if new[6:11] == old[6:11] and new[12] == old[12]:  # attempts .. last_error, granted: only the status moved
        return rec
    if new.attempts != old.attempts:
        rec["n"] = new.attempts
    if new.last_error != old.last_error:
        rec["e"] = new.last_error
    if new.granted != old.granted:
        rec["g"] = new.granted
    if new.priority != old.priority:
        rec["p"] = new.priority
    if new.expires_at != old.expires_at:
        rec["x"] = _ts(new.expires_at)
    if new.created_at != old.created_at:
        rec["c"] = _ts(new.created_at)
    return rec


def command_from_new(rec: dict[str, Any]) -> Command:
    """The Command an ``"n"`` record holds (KeyError/ValueError/TypeError when malformed)."""
    x, c = rec.get("x"), rec.get("c")
    return Command(rec["i"], rec["a"], TYPE_OF[rec["y"]], rec["v"], to_datetime(rec["t"]), STATUS_OF[rec["s"]],
                   rec.get("n", 0), rec.get("p", 0), to_datetime(x) if x is not None else None,
                   to_datetime(c) if c is not None else None, rec.get("e"), rec.get("o", "api"), rec.get("g"))


def rows_bytes(rows: Iterable[int] | np.ndarray) -> bytes:
    """Row indices as u32 little-endian bytes (the ``"r"`` field of ``"m"`` and ``"f"`` records)."""
    return np.asarray(rows if isinstance(rows, np.ndarray) else list(rows), dtype="<u4").tobytes()


def rows_from(data: bytes) -> np.ndarray:
    """Row indices from a ``"r"`` field (int64 array)."""
    return np.frombuffer(data, dtype="<u4").astype(np.int64)


class RecordEncoder:
    """Turns the command table's changes into records, knowing what the journal already holds.

    It keeps the last journaled snapshot of every command that is not final (a command's first record
    is its ``"n"``, later ones are ``"t"`` against that snapshot; a final one is dropped, it never
    changes again) and the ids and lengths of the stored batches (a row's full form is its batch).
    :meth:`seed` tells it what a recovered journal holds. Not thread-safe: the journal's owner uses it.
    """

    def __init__(self) -> None:
        self._last: dict[str, Command] = {}
        self._batches: dict[str, int] = {}

    def seed(self, commands: Iterable[Command], batches: Iterable[tuple[str, int]]) -> None:
        """What recovery found: the last snapshot of each command, and the batches (id, length)."""
        for cmd in commands:
            if not cmd.is_final:
                self._last[cmd.command_id] = cmd
        for batch_id, n in batches:
            self._batches[batch_id] = n

    def note_batch(self, batch_id: str, n: int) -> None:
        """A batch record of ``n`` rows is being journaled."""
        self._batches[batch_id] = n

    def forget_batches(self, keep: Iterable[str]) -> None:
        """Drop every batch id but ``keep`` (those whose rows can still change), to stay bounded."""
        keep = set(keep)
        self._batches = {b: n for b, n in self._batches.items() if b in keep}

    @property
    def tracked(self) -> int:
        """Number of commands whose last snapshot is held (the non-final ones)."""
        return len(self._last)

    def is_row(self, command_id: str) -> bool:
        """True when ``command_id`` is a row of a batch this encoder knows."""
        if not self._batches:
            return False
        prefix, sep, tail = command_id.rpartition("-")
        if not sep or not tail.isdigit():
            return False
        n = self._batches.get(prefix)
        return n is not None and int(tail) < n and tail == str(int(tail))

    def encode(self, changes: Iterable[Change], now: float) -> list[dict[str, Any]]:
        """The records for one commit of ``changes``, stamped ``now``: one per command (its last state in
        the commit), in the order of each command's first change."""
        latest: dict[str, Command] = {}
        for ch in changes:
            latest[ch.command.command_id] = ch.command  # dict order: first change; value: the last one
        out: list[dict[str, Any]] = []
        last = self._last
        for cid, cmd in latest.items():
            old = last.get(cid)
            if old is None:
                if self.is_row(cid):
                    if (cmd.status is _PENDING and cmd.attempts == 0 and cmd.last_error is None
                            and cmd.granted is None):
                        last[cid] = cmd  # a row that fell due: the batch holds it already
                        continue
                    old = cmd._replace(status=_PENDING, attempts=0, last_error=None, granted=None)
                    out.append(transition_record(old, cmd, now))
                else:
                    out.append(new_record(cmd, now))
            elif old != cmd:
                out.append(transition_record(old, cmd, now))
            if cmd.is_final:
                last.pop(cid, None)
            else:
                last[cid] = cmd
        return out
