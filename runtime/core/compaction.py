"""Compaction of the command journal: rewrite what recovery needs, crash-safely, off the dispatch path.

What a compacted snapshot keeps (:func:`compact_state`, a pure function of the recovered state):

* every command that is not final, in full (``"n"``);
* every schedule batch that still has a row to run (a lazy PENDING row, or a materialized row that is
  not final), with the rows of it that were superseded while lazy (``"m"``) and the rows that ended
  and whose records are dropped (``"f"``);
* final commands that ended within ``retention_s`` (looked up by id after a restart, like in memory);
* for idempotence: the ids of older final commands, and of batches whose rows all ended, each until
  its dedupe deadline: the later of (ended + ``dedupe_window_s``) and its expiry (``expires_at``, or its
  scheduled time + ``dedupe_window_s``) (``"d"``, ``"db"``). After that, an id is forgotten: a duplicate
  then is past its expiry, so the command table EXPIRES it at once instead of applying it.

Everything else (the transitions of final commands, superseded schedules, supersession records) is
dropped. Recovering the snapshot (and the logs after it) restores exactly the table that recovering
the uncompacted journal restores, except that final commands that ended more than ``retention_s`` ago
are known by id only (tests/test_compaction.py checks this on random histories).

The procedure (:func:`compact_stream`), for the sealed logs up to seq N (see :mod:`runtime.core.segments`):

1. read the newest snapshot and the sealed logs after it up to N (or take the state recovery already
   read, at start-up);
2. write ``commands.<N>.snap`` through a temp file: written, fsynced, renamed, directory fsynced
   (:meth:`~runtime.core.journal.Journal.compact`);
3. delete the files it covers (the older snapshot and the sealed logs <= N), oldest first.

A crash (kill -9, power cut) at any point leaves either the old files (the temp file is ignored and
deleted later), or the new snapshot plus leftovers it covers (never read again, deleted later): no
state is lost, and since covered files are never replayed on top of the snapshot nothing is applied
twice. The dispatcher keeps appending to its own file meanwhile: compaction only reads sealed files.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np

from .batch import CommandBatch
from .command_table import effective_expiry
from .commands import Command, CommandStatus
from .journal import Journal, _fsync_dir
from .records import COMMAND_KINDS, new_record, rows_bytes
from .recovery import RecoveredState, recover_files
from .segments import StreamDir, _unlink

log = logging.getLogger(__name__)

__all__ = ["CompactionSummary", "CompactionResult", "compact_state", "compact_stream", "log_compacted", "STEPS"]

_SUPERSEDED = CommandStatus.SUPERSEDED
_PENDING = CommandStatus.PENDING
#: Ids per ``"d"``/``"db"`` record.
_CHUNK = 4096
#: The points of :func:`compact_stream` at which ``step`` is called (crash injection in tests).
STEPS = ("listed", "recovered", "written", "renamed", "synced", "deleted-one", "deleted")


@dataclass
class CompactionSummary:
    """What a snapshot holds: commands not final, recent final ones, batches still running, known ids
    (commands and batches), and what was dropped."""

    live_commands: int = 0
    recent_final: int = 0
    batches: int = 0
    known_ids: int = 0
    known_batches: int = 0
    forgotten: int = 0
    kept_batch_ids: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class CompactionResult:
    """One compaction: the stream's bytes on disk before and after, how long it took (seconds, real
    time), when it ran (site clock), the seq it covers and what the snapshot holds."""

    upto: int
    at: float
    duration_s: float
    bytes_before: int
    bytes_after: int
    files_before: int
    files_after: int
    summary: CompactionSummary


def _row_of(command_id: str) -> tuple[str, int] | None:
    """(batch id, row) when ``command_id`` has the form of a batch row id (as the command table reads it)."""
    prefix, sep, tail = command_id.rpartition("-")
    if not sep or not (tail.isascii() and tail.isdigit()) or tail != str(int(tail)):
        return None
    return prefix, int(tail)


def compact_state(state: RecoveredState, now: float, retention_s: float,
                  dedupe_window_s: float | None) -> tuple[list[dict[str, Any]], CompactionSummary]:
    """The records of a snapshot of ``state`` taken at site time ``now`` (see the module docstring)."""
    window = dedupe_window_s
    recent_after = now - retention_s
    summary = CompactionSummary()
    batch_index = {b.batch_id: i for i, b in enumerate(state.batches)}
    # commands by where they belong: rows of a stored batch (by batch), rows of a retired one (dropped:
    # the batch id covers them), standalone commands
    rows_of: dict[str, list[tuple[int, Command]]] = {}
    standalone: list[Command] = []
    for cid, cmd in state.commands.items():
        row = _row_of(cid)
        if row is not None:
            bid, i = row
            pos = batch_index.get(bid)
            if pos is not None and i < len(state.batches[pos]):
                rows_of.setdefault(bid, []).append((i, cmd))
                continue
            retired = state.retired.get(bid)
            if pos is None and retired is not None and i < retired[0]:
                continue
        standalone.append(cmd)

    # supersessions that apply to each batch: those of the batches after it (only the first per id counts)
    sups = {sup["id"]: sup for sup in state.batch_supersessions}
    later_sups: list[dict[str, Any]] = []
    plans = []
    for batch in reversed(state.batches):  # newest first, collecting the supersessions of later batches
        plans.append(_plan_batch(batch, later_sups, state, rows_of.get(batch.batch_id, []), now, recent_after,
                                 window))
        sup = sups.get(batch.batch_id)
        if sup is not None:
            later_sups.append(sup)
    plans.reverse()
    batch_records: list[dict[str, Any]] = []
    kept_rows: set[str] = set()
    retired: dict[str, tuple[int, float]] = {}
    for batch, (kind, recs, keep_ids, until) in zip(state.batches, plans):
        if kind == "keep":
            batch_records.extend(recs)
            kept_rows.update(keep_ids)
            summary.batches += 1
            summary.kept_batch_ids.append(batch.batch_id)
        elif until >= now:
            retired[batch.batch_id] = (len(batch), until)
        else:
            summary.forgotten += 1
    for bid, (n, until) in state.retired.items():
        if bid not in batch_index and until >= now:
            retired[bid] = (n, until)

    command_records: list[dict[str, Any]] = []
    known: dict[str, float] = {}
    for cid, cmd in state.commands.items():
        if cid in kept_rows:
            ended = state.final_at.get(cid)
            command_records.append(new_record(cmd, ended if ended is not None and cmd.is_final else now))
            if cmd.is_final:
                summary.recent_final += 1
            else:
                summary.live_commands += 1
    for cmd in standalone:
        cid = cmd.command_id
        if not cmd.is_final:
            command_records.append(new_record(cmd, now))
            summary.live_commands += 1
            continue
        ended = state.final_at.get(cid, now)  # unknown (a version-1 record): counted from now
        if ended >= recent_after:
            command_records.append(new_record(cmd, ended))
            summary.recent_final += 1
            continue
        until = _until(ended, cmd, window)
        if until >= now:
            known[cid] = until
        else:
            summary.forgotten += 1
    for cid, until in state.known.items():
        if until >= now and cid not in state.commands:
            known[cid] = until
    # batches first (in order, each with its masks and ended rows), then commands in first-seen order
    records = batch_records + command_records
    records.extend(_known_records(known))
    records.extend(_retired_records(retired))
    summary.known_ids = len(known)
    summary.known_batches = len(retired)
    return records, summary


def _until(ended: float, cmd: Command, window: float | None) -> float:
    if window is None:
        return math.inf
    expiry = effective_expiry(cmd.expires_at.timestamp() if cmd.expires_at is not None else None,
                              cmd.scheduled_time.timestamp(), window)
    return max(ended + window, expiry if expiry is not None else -math.inf)


def _plan_batch(batch: CommandBatch, later_sups: list[dict[str, Any]], state: RecoveredState,
                rows: list[tuple[int, Command]], now: float, recent_after: float,
                window: float | None) -> tuple[str, list[dict[str, Any]], list[str], float]:
    """What the snapshot keeps of one batch: ("keep", its records, the ids of its rows whose snapshots
    are kept, 0) or ("retire", [], [], known until). Mirrors how :func:`~runtime.core.recovery.restore_table`
    rebuilds a batch: recorded masks and ended rows first, then the supersessions of later batches
    (lazy rows only), then the row snapshots (a SUPERSEDED one masks its row, an untouched PENDING one
    leaves it lazy, any other is the row's state). Every snapshot of a row that is not final is kept as it
    is, unless it is the row's batch form: the transitions written after the snapshot build on it."""
    n = len(batch)
    bid = batch.batch_id
    masked = np.zeros(n, dtype=bool)
    ended = np.zeros(n, dtype=bool)
    last_end = -math.inf
    old = state.masks.get(bid)
    if old is not None:
        rows_m = old[0][(old[0] >= 0) & (old[0] < n)]
        masked[rows_m] = True
        last_end = max(last_end, old[1])
    old = state.final_rows.get(bid)
    if old is not None:
        rows_f = old[0][(old[0] >= 0) & (old[0] < n)]
        ended[rows_f] = True
        ended &= ~masked
        last_end = max(last_end, old[1])
    taken = ended.copy()
    for sup in later_sups:
        codes = [batch.assets.index(a) for a in sup["assets"] if a in batch.assets]
        if not codes:
            continue
        start = int(np.searchsorted(batch.times, sup["from"], side="left"))
        if start >= n:
            continue
        sel = np.zeros(n, dtype=bool)
        sel[start:] = np.isin(batch.asset_codes[start:], codes)
        sel &= ~taken & ~masked
        if sel.any():
            masked |= sel
            last_end = max(last_end, sup["at"])
    snapshot_rows: dict[int, Command] = {}
    for i, cmd in rows:
        if taken[i]:
            continue  # a row whose records were dropped: restore skips its snapshot too
        if cmd.status is _SUPERSEDED:
            masked[i] = True
            ended_at = state.final_at.get(cmd.command_id)
            if ended_at is not None:
                last_end = max(last_end, ended_at)
            snapshot_rows.pop(i, None)
            continue
        if cmd.status is _PENDING and cmd.attempts == 0:
            if not masked[i] and cmd == batch.command(i):
                snapshot_rows.pop(i, None)
                continue  # an untouched row: lazy, and its batch is its record
            # kept with its mask bit: restore leaves such a row lazy, or materializes it when masked
            snapshot_rows[i] = cmd
            continue
        masked[i] = False  # any other snapshot is the row's state, masked or not
        snapshot_rows[i] = cmd
    lazy_pending = ~masked & ~ended
    for i in snapshot_rows:
        lazy_pending[i] = False
    keep_ids: list[str] = []
    newly_ended: list[int] = []
    running = bool(lazy_pending.any())
    for i, cmd in snapshot_rows.items():
        if not cmd.is_final:
            running = True
            keep_ids.append(cmd.command_id)
            continue
        at = state.final_at.get(cmd.command_id, now)
        if at >= recent_after:
            running = True
            keep_ids.append(cmd.command_id)
        else:
            newly_ended.append(i)
        last_end = max(last_end, at)
    if not running:
        if window is None:
            return "retire", [], [], math.inf
        exp = np.where(np.isnan(batch.expires), batch.times + window, batch.expires)
        latest = float(exp.max()) if n else -math.inf
        end = last_end if last_end != -math.inf else now
        return "retire", [], [], max(end + window, latest)
    records: list[dict[str, Any]] = [{"k": "batch", "b": batch.to_record()}]
    if masked.any():
        records.append({"k": "m", "b": bid, "r": rows_bytes(np.flatnonzero(masked)),
                        "w": last_end if last_end != -math.inf else now})
    if newly_ended:
        ended[newly_ended] = True
    if ended.any():
        records.append({"k": "f", "b": bid, "r": rows_bytes(np.flatnonzero(ended)),
                        "w": last_end if last_end != -math.inf else now})
    return "keep", records, keep_ids, 0.0


def _known_records(known: dict[str, float]) -> Iterator[dict[str, Any]]:
    items = list(known.items())
    for start in range(0, len(items), _CHUNK):
        chunk = items[start:start + _CHUNK]
        yield {"k": "d", "i": [cid for cid, _ in chunk],
               "u": np.asarray([u for _, u in chunk], dtype="<f8").tobytes()}


def _retired_records(retired: dict[str, tuple[int, float]]) -> Iterator[dict[str, Any]]:
    items = list(retired.items())
    for start in range(0, len(items), _CHUNK):
        chunk = items[start:start + _CHUNK]
        yield {"k": "db", "i": [bid for bid, _ in chunk], "n": [n for _, (n, _) in chunk],
               "u": np.asarray([u for _, (_, u) in chunk], dtype="<f8").tobytes()}


def compact_stream(stream: StreamDir, upto: int, now: float, *, retention_s: float, dedupe_window_s: float | None,
                   state: RecoveredState | None = None, durable: bool = True,
                   step: Callable[[str], None] | None = None) -> CompactionResult:
    """Compact ``stream`` up to sealed log ``upto`` at site time ``now`` (see the module docstring).

    ``state``: what recovery already read from exactly those files (start-up), else they are read here.
    ``durable``: fsync the snapshot and the directory (off only with the journal's ``fsync="never"``).
    ``step(name)`` is called at each point of :data:`STEPS` (tests inject crashes there); it may raise
    to abandon the compaction, which leaves a valid layout like a crash would.
    """
    t0 = time.perf_counter()
    mark = step or (lambda name: None)
    live, covered, temps = stream.scan()
    base = next((s for s in live if s.kind == "snap"), None)
    inputs = ([base] if base is not None else []) + [s for s in live if s.kind == "log" and (s.seq or 0) <= upto]
    bytes_before = sum(s.size for s in live + covered)
    files_before = len(live) + len(covered)
    mark("listed")
    if state is None:
        state = recover_files([s.path for s in inputs])
    mark("recovered")
    records, summary = compact_state(state, now, retention_s, dedupe_window_s)
    target = stream.path(upto, "snap")
    Journal.compact(target, records, kinds=COMMAND_KINDS, durable=durable, mode_like=stream.active_path,
                    meta={"s": stream.name, "snap": upto, "t": now}, before_replace=lambda tmp: mark("written"))
    mark("renamed")
    if durable:
        _fsync_dir(stream.directory)
    mark("synced")
    doomed = sorted([s for s in inputs + covered if s.path != target],
                    key=lambda s: (s.seq or 0, s.kind == "snap"))
    for seg in doomed:
        _unlink(seg.path)
        mark("deleted-one")
    for tmp in temps:
        _unlink(tmp)
    if durable and (doomed or temps):
        _fsync_dir(stream.directory)
    mark("deleted")
    live_after, covered_after, _ = stream.scan()
    bytes_after = sum(s.size for s in live_after + covered_after)
    result = CompactionResult(upto=upto, at=now, duration_s=time.perf_counter() - t0, bytes_before=bytes_before,
                              bytes_after=bytes_after, files_before=files_before,
                              files_after=len(live_after) + len(covered_after), summary=summary)
    log_compacted(stream, result)
    return result


def log_compacted(stream: StreamDir, result: CompactionResult, where: str = "") -> None:
    """The one INFO line a compaction logs (``where``: e.g. " in a child process")."""
    summary = result.summary
    log.info("journal %s compacted%s (snapshot %d): %d -> %d bytes, %d -> %d files in %.3f s; %d commands not "
             "final, %d recently final, %d batches running, %d ids and %d batches kept for dedupe, %d forgotten",
             os.path.join(stream.directory, stream.name), where, result.upto, result.bytes_before,
             result.bytes_after, result.files_before, result.files_after, result.duration_s, summary.live_commands,
             summary.recent_final, summary.batches, summary.known_ids, summary.known_batches, summary.forgotten)
