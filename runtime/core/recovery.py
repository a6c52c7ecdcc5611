"""Rebuilding the dispatcher's state from its journal when a Site restarts on an existing directory.

Pure functions over journal records (no actors, no clock, no I/O beyond reading the files):
:func:`recover_files` folds the files of a stream (a compacted snapshot, then the log segments after
it, oldest first; see :mod:`runtime.core.segments`) into a :class:`RecoveredState`, and
:func:`restore_table` puts that state into a fresh :class:`~runtime.core.command_table.CommandTable`.

Record kinds (the contract between the journal writer - the dispatcher - and this module)
---------------------------------------------------------------------------------------------
Every record is a map with a kind ``"k"``. Version-2 files (see :mod:`runtime.core.journal`) hold the
kinds of :mod:`runtime.core.records`: ``"n"`` (a new command, in full), ``"t"`` (a transition of a command
the stream holds, or of a row of a stored batch), the schedule kinds below, and the kinds only a
compacted snapshot holds (``"m"``, ``"f"``, ``"d"``, ``"db"``). Version-1 files hold:

``{"k": "cmd", "c": Command.to_record()}``
    A snapshot of one command, written after every change to it (creation, every status change,
    attempts/error updates). The last snapshot of an id is its current state.
``{"k": "batch", "b": CommandBatch.to_record()}`` (both versions)
    A schedule accepted as a batch. Its rows are commands ``f"{batch_id}-{i}"`` that are PENDING
    until a record of that id says otherwise.
``{"k": "bsup", "id": batch_id, "assets": [asset ids], "from": epoch float, "at": epoch float}`` (both)
    Written just before the ``batch`` record of batch ``id`` when that batch replaces older ones:
    every not-yet-dispatched command of those assets scheduled at or after ``from`` (inclusive), in
    the batches accepted *before* it, was superseded at time ``at``. Materialized commands also get
    their own SUPERSEDED record; this record covers the lazy batch rows that never got one.
    Replaying it means: before adding batch ``id``, supersede from ``from`` for those assets. Only the
    first ``bsup`` of an id counts: a later one comes from a repeated submission of the same batch,
    which changes nothing (the dispatcher no longer writes one; older journals may hold it).
``{"k": "ev", "e": Event.to_record()}``
    An event as published. Recovery only counts them.

A record of a kind this module does not know is refused with
:class:`~runtime.core.errors.JournalUnsupported`, unless the file's header declares it optional (then
it is skipped and counted): a newer writer's records may matter, so they are never skipped silently.
A known kind whose content cannot be decoded raises :class:`~runtime.core.journal.JournalCorrupt` with
the record's offset: the record passed its CRC, so the writer wrote something wrong, and guessing is
not safe.

Idempotency: command ids are unique, so replaying the same snapshot twice (e.g. after a compaction
that kept it) changes nothing; the same batch journaled twice is kept once. An id can come back only
after the dedupe window forgot it (see :mod:`runtime.core.command_table`): a second ``"n"`` of an id, or a
different batch under a known batch id, is a new command (batch), and what the journal held of the
old one is dropped.

Cost: folding is one pass over the records plus one Command per id (built once, at the end);
:func:`restore_table` is proportional to the batches, supersessions and commands the state holds
(supersessions are looked up by batch id). After compaction that is what is live.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

from .batch import CommandBatch
from .command_table import Change, CommandTable
from .commands import Command
from .journal import Journal, JournalCorrupt, JournalHeader
from .records import COMMAND_KINDS, STATUS_OF, command_from_new, rows_from

log = logging.getLogger(__name__)

__all__ = ["RecoveredState", "recover", "recover_files", "recover_records", "non_final", "restore_table",
           "V1_KINDS", "KNOWN_KINDS"]

#: The kinds a version-1 journal holds (the version-1 writer wrote nothing else).
V1_KINDS = frozenset({"cmd", "batch", "bsup", "ev"})
#: Every kind this module reads.
KNOWN_KINDS = frozenset(COMMAND_KINDS) | V1_KINDS

_FIELD = {"e": "last_error", "g": "granted", "p": "priority"}


@dataclass
class RecoveredState:
    """What a journal says.

    * ``commands``: the last snapshot of every command id the stream holds a record of, in first-seen order
    * ``final_at``: for commands whose last snapshot is final, when they ended (epoch s; version-2 records)
    * ``batches``: accepted batches in journal order (one per batch id)
    * ``batch_supersessions``: the ``bsup`` records, in order (keys ``id``, ``assets``, ``from``, ``at``)
    * ``masks``: batch id -> (rows superseded while lazy, when) (``"m"`` records of a compacted snapshot)
    * ``final_rows``: batch id -> (rows that ended and have no record, when the last ended) (``"f"``)
    * ``known``: final command ids without a snapshot -> known until (``"d"``)
    * ``retired``: batches whose rows all ended -> (length, known until) (``"db"``)
    * ``events``: number of event records; ``records``: number of records read (all kinds)
    * ``unknown``: number of records of an optional kind this module does not know (skipped)
    * ``last_time``: the latest record time (``"w"``) seen, or None
    """

    commands: dict[str, Command] = field(default_factory=dict)
    final_at: dict[str, float] = field(default_factory=dict)
    batches: list[CommandBatch] = field(default_factory=list)
    batch_supersessions: list[dict[str, Any]] = field(default_factory=list)
    masks: dict[str, tuple[np.ndarray, float]] = field(default_factory=dict)
    final_rows: dict[str, tuple[np.ndarray, float]] = field(default_factory=dict)
    known: dict[str, float] = field(default_factory=dict)
    retired: dict[str, tuple[int, float]] = field(default_factory=dict)
    events: int = 0
    records: int = 0
    unknown: int = 0
    last_time: float | None = None


def recover(path: str | os.PathLike[str]) -> RecoveredState:
    """Read the journal at ``path`` into a :class:`RecoveredState`. A missing or empty file gives an
    empty state. A torn last record is skipped (with a warning); damage elsewhere raises
    :class:`~runtime.core.journal.JournalCorrupt`."""
    return recover_files([path])


def recover_files(paths: Iterable[str | os.PathLike[str]]) -> RecoveredState:
    """Fold the journal files ``paths`` (in order: a snapshot, then the log segments after it) into one
    :class:`RecoveredState`. Missing files are skipped. Each file's header is checked first: a file
    that requires a kind this module does not know is refused before any of its records is used."""
    fold = _Fold()
    for path in paths:
        path = os.fspath(path)
        if not os.path.exists(path):
            continue
        header = Journal.read_header(path)
        header.check(KNOWN_KINDS)
        fold.feed(Journal.read_with_offsets(path), path, header)
    return fold.finish()


def recover_records(records: Iterable[tuple[int, dict[str, Any]] | dict[str, Any]],
                    path: str = "<records>", header: JournalHeader | None = None) -> RecoveredState:
    """Fold journal records (plain dicts, or ``(offset, dict)`` pairs) into a :class:`RecoveredState`.
    A malformed record raises :class:`~runtime.core.journal.JournalCorrupt` with its byte offset (-1 when
    plain dicts were given) and its index. ``header``: the file's (default: a version-2 file that
    declares nothing optional)."""
    fold = _Fold()
    fold.feed(records, path, header or JournalHeader(path, 2, frozenset(), frozenset()))
    return fold.finish()


class _Fold:
    """One pass over the records of one or more files. Commands are kept raw (their base record plus
    the fields later transitions changed) and built once at the end: building a Command costs far
    more than reading a record, and most ids have several records."""

    def __init__(self) -> None:
        self.state = RecoveredState()
        # id -> [base, changes, path, offset, index, w]; base: ("cmd"|"n", raw) or ("row", batch, i)
        self.entries: dict[str, list[Any]] = {}
        self.batch_pos: dict[str, int] = {}
        self.batch_raw: dict[str, dict[str, Any]] = {}
        self.sup_ids: set[str] = set()
        self.preceding_sup: dict[str, Any] | None = None  # the bsup just read, waiting for its batch record
        self.index = 0

    def feed(self, records: Iterable[tuple[int, dict[str, Any]] | dict[str, Any]], path: str,
             header: JournalHeader) -> None:
        state, entries = self.state, self.entries
        known = KNOWN_KINDS if header.version >= 2 else V1_KINDS
        for item in records:
            rec: dict[str, Any]
            offset, rec = item if isinstance(item, tuple) else (-1, item)
            index = self.index
            self.index += 1
            state.records += 1
            kind = rec.get("k")
            try:
                if kind not in known:
                    if header.check_kind(kind, known):  # raises unless the file declares it optional
                        state.unknown += 1
                    continue
                if kind == "t":
                    cid = rec["i"]
                    entry = entries.get(cid)
                    if entry is None:
                        entry = entries[cid] = [self._row_base(cid), {}, path, offset, index, None]
                    changes = entry[1]
                    changes["status"] = rec["s"]
                    if "n" in rec:
                        changes["attempts"] = rec["n"]
                    for key in ("e", "g", "p", "x", "c"):
                        if key in rec:
                            changes[key] = rec[key]
                    entry[2:] = [path, offset, index, rec["w"]]
                    self._time(rec["w"])
                elif kind == "n":
                    cid = rec["i"]
                    if not isinstance(cid, str):
                        raise TypeError(f"command id {cid!r}")
                    # a second "n" of an id: the id was forgotten (dedupe window) and reused; a new command
                    entries.pop(cid, None)
                    entries[cid] = [("n", rec), {}, path, offset, index, rec["w"]]
                    self._time(rec["w"])
                elif kind == "cmd":
                    raw = rec["c"]
                    entry = entries.get(raw["id"])
                    if entry is None:
                        entries[raw["id"]] = [("cmd", raw), {}, path, offset, index, None]
                    else:
                        entry[:] = [("cmd", raw), {}, path, offset, index, None]
                elif kind == "ev":
                    state.events += 1
                elif kind == "batch":
                    self._batch(rec["b"])
                elif kind == "bsup":
                    sup = {"id": str(rec["id"]), "assets": [str(a) for a in rec["assets"]],
                           "from": float(rec["from"]), "at": float(rec["at"])}
                    self.preceding_sup = sup  # a new batch reusing a forgotten id keeps it (see _batch)
                    if sup["id"] not in self.sup_ids:
                        self.sup_ids.add(sup["id"])
                        state.batch_supersessions.append(sup)
                    # else: a repeated submission (changes nothing), unless a new batch reusing the id follows
                elif kind == "m":
                    _union(state.masks, str(rec["b"]), rows_from(rec["r"]), float(rec["w"]))
                elif kind == "f":
                    _union(state.final_rows, str(rec["b"]), rows_from(rec["r"]), float(rec["w"]))
                elif kind == "d":
                    until = np.frombuffer(rec["u"], dtype="<f8")
                    ids = rec["i"]
                    if len(ids) != len(until):
                        raise ValueError(f"{len(ids)} ids but {len(until)} times")
                    state.known.update(zip(map(str, ids), until.tolist()))
                elif kind == "db":
                    until = np.frombuffer(rec["u"], dtype="<f8")
                    ids, lengths = rec["i"], rec["n"]
                    if not len(ids) == len(lengths) == len(until):
                        raise ValueError(f"{len(ids)} ids, {len(lengths)} lengths, {len(until)} times")
                    for bid, n, u in zip(ids, lengths, until.tolist()):
                        state.retired[str(bid)] = (int(n), u)
            except (KeyError, TypeError, ValueError) as exc:
                raise _malformed(path, offset, index, kind, exc) from exc

    def _batch(self, raw: dict[str, Any]) -> None:
        """A batch record. The same batch again (older journals) is kept once; a different batch with a
        known id reuses an id that was forgotten (past its dedupe window): it is a new batch, and the
        old one, every record of its rows and its supersession go."""
        state = self.state
        batch = CommandBatch.from_record(raw)
        bid = batch.batch_id
        sup, self.preceding_sup = self.preceding_sup, None
        pos = self.batch_pos.get(bid)
        if pos is not None and _same_batch(self.batch_raw[bid], raw):
            return
        if pos is not None:
            old = state.batches.pop(pos)
            self.batch_pos = {b.batch_id: i for i, b in enumerate(state.batches)}
            for i in range(len(old)):
                self.entries.pop(old.command_id(i), None)
            state.masks.pop(bid, None)
            state.final_rows.pop(bid, None)
            state.batch_supersessions = [s for s in state.batch_supersessions if s["id"] != bid]
            if sup is not None and sup["id"] == bid:
                state.batch_supersessions.append(sup)
        state.retired.pop(bid, None)
        self.batch_pos[bid] = len(state.batches)
        self.batch_raw[bid] = raw
        state.batches.append(batch)

    def _row_base(self, command_id: str) -> tuple[str, CommandBatch, int]:
        prefix, sep, tail = command_id.rpartition("-")
        pos = self.batch_pos.get(prefix) if sep and tail.isdigit() else None
        if pos is not None:
            batch = self.state.batches[pos]
            i = int(tail)
            if i < len(batch) and tail == str(i):
                return ("row", batch, i)
        raise ValueError(f"a transition of {command_id!r}, which the journal holds no record of")

    def _time(self, w: Any) -> None:
        w = float(w)
        if self.state.last_time is None or w > self.state.last_time:
            self.state.last_time = w

    def finish(self) -> RecoveredState:
        state = self.state
        commands, final_at = state.commands, state.final_at
        for cid, (base, changes, path, offset, index, w) in self.entries.items():
            try:
                cmd = _build(base, changes)
            except (KeyError, TypeError, ValueError) as exc:
                raise _malformed(path, offset, index, base[0] if base[0] != "row" else "t", exc) from exc
            commands[cid] = cmd
            if w is not None and cmd.is_final:
                final_at[cid] = float(w)
        return state


def _build(base: tuple[Any, ...], changes: dict[str, Any]) -> Command:
    if base[0] == "cmd":
        cmd = Command.from_record(base[1])
    elif base[0] == "n":
        cmd = command_from_new(base[1])
    else:
        cmd = base[1].command(base[2])
    if not changes:
        return cmd
    from .clock import to_datetime
    fields: dict[str, Any] = {}
    for key, value in changes.items():
        if key == "status":
            fields["status"] = STATUS_OF[value]
        elif key == "attempts":
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"attempts {value!r}")
            fields["attempts"] = value
        elif key in ("x", "c"):
            name = "expires_at" if key == "x" else "created_at"
            fields[name] = to_datetime(value) if value is not None else None
        else:
            fields[_FIELD[key]] = value
    return cmd._replace(**fields)


def _same_batch(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Two batch records hold the same batch (same id, rows and settings)."""
    return all(a.get(k) == b.get(k) for k in ("id", "times", "assets", "acodes", "tcodes", "values", "expires",
                                              "priority", "source"))


def _union(target: dict[str, tuple[np.ndarray, float]], batch_id: str, rows: np.ndarray, w: float) -> None:
    old = target.get(batch_id)
    target[batch_id] = (rows, w) if old is None else (np.union1d(old[0], rows), max(old[1], w))


def _malformed(path: str, offset: int, index: int, kind: Any, exc: Exception) -> JournalCorrupt:
    return JournalCorrupt(path, offset,
                          f"record #{index}: malformed {kind!r} record ({type(exc).__name__}: {exc})")


def non_final(state: RecoveredState) -> list[Command]:
    """Commands whose last snapshot is not final (PENDING, DISPATCHED, ACKNOWLEDGED, HELD), in
    first-seen order. Batch rows without any record are not included: they are PENDING by
    definition and the command table restores them from the batch itself."""
    return [cmd for cmd in state.commands.values() if not cmd.is_final]


def restore_table(table: CommandTable, state: RecoveredState, now: float) -> list[Change]:
    """Put a recovered state into ``table`` (a fresh one); returns the changes :meth:`CommandTable.restore`
    made (in-flight commands re-queued as PENDING: nothing to journal, the journal says where they were).

    Batches go in in journal order; a batch that replaced older ones first supersedes their lazy rows
    (its ``bsup``), then each batch gets the rows a compaction recorded as masked or ended, then every
    command snapshot is restored (the snapshot is the truth, even for a masked row), then the ids known
    without a snapshot. Cost: proportional to what the state holds."""
    sups = {sup["id"]: sup for sup in state.batch_supersessions}
    for batch in state.batches:  # in journal order; a replacement supersedes only earlier batches
        sup = sups.get(batch.batch_id)
        if sup is not None:
            table.supersede_future(sup["assets"], sup["from"], sup["at"])
        table.add_batch(batch, now)
        mask = state.masks.get(batch.batch_id)
        if mask is not None:
            table.restore_mask(batch.batch_id, mask[0], mask[1])
        ended = state.final_rows.get(batch.batch_id)
        if ended is not None:
            table.restore_final_rows(batch.batch_id, ended[0])
    changes = table.restore(state.commands.values(), now)
    table.restore_known(state.known, state.retired)
    return changes
