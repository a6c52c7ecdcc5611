"""CommandLog: the dispatcher's command journal - recovery at start-up, compact records, bounded by compaction.

A :class:`CommandLog` is what the dispatcher writes its changes to. Opening one (at site start):

1. deletes what an interrupted compaction left behind (covered files, temp files);
2. recovers the stream (:func:`~runtime.core.recovery.recover_files`: the newest snapshot, the sealed
   logs after it, the active log) into the given command table (:func:`~runtime.core.recovery.restore_table`);
3. opens the active log ``commands.jnl`` for appending (sealing it first if it is a version-1 file);
4. if what it read is at least :attr:`CompactionPolicy.min_bytes`, seals the active log and compacts
   everything up to it in a background thread, using the state it already read (no second pass).

:meth:`CommandLog.commit` is the dispatcher's one call per burst: the burst's schedule records and table
changes are encoded (:class:`~runtime.core.records.RecordEncoder`), written in one write, synced (per the
fsync policy), and then, if the active log is large or old enough
(:class:`~runtime.core.retention.CompactionPolicy`), it is sealed (a rename and a new file: dispatch waits
for nothing more) and a background thread compacts the sealed logs
(:func:`~runtime.core.compaction.compact_stream`), in a child process that it waits for
(:mod:`runtime.core.compaction_process`, :attr:`CompactionPolicy.isolation`). One compaction runs at a time; a
failed one is logged, leaves the journal valid, and is tried again at the next trigger.

:meth:`CommandLog.close` syncs and closes the active log and waits for a running compaction (at most
``close_wait_s``; after that it is abandoned at its next step, or its child process killed, which is as
safe as a crash).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any, Iterable

from .clock import Clock
from .command_table import Change, CommandTable
from .compaction import CompactionResult, compact_stream, log_compacted
from .compaction_process import CompactionAbandoned, compact_in_child
from .journal import FsyncPolicy
from .journal_stats import StreamMeter, StreamStats
from .records import COMMAND_KINDS, RecordEncoder
from .recovery import RecoveredState, recover_files, restore_table
from .retention import CompactionPolicy
from .segments import SegmentedJournal, StreamDir

log = logging.getLogger(__name__)

__all__ = ["CommandLog", "STREAM"]

#: The command stream's name: ``commands.jnl`` and its segments.
STREAM = "commands"


class _Abandoned(Exception):
    """A compaction stopped at shutdown (at a step boundary: the layout stays valid)."""


class CommandLog:
    """The command journal in ``directory``, recovered into ``table`` (see the module docstring).

    ``retention_s``: final commands that ended within it are kept in full by compaction (as in memory);
    the dedupe window is the table's (:attr:`CommandTable.dedupe_window_s`). After opening,
    :attr:`state` is what was recovered (None once a compaction took it) and :attr:`recovery_s` how
    long it took. Owned by one thread (the dispatcher's) except :meth:`stats`, which any thread may call.
    """

    def __init__(self, directory: str | os.PathLike[str], table: CommandTable, clock: Clock, *,
                 fsync: FsyncPolicy = "batch", policy: CompactionPolicy | None = None,
                 retention_s: float = 3600.0, close_wait_s: float = 5.0) -> None:
        t0 = time.perf_counter()
        self._clock = clock
        self._table = table
        self.policy = policy or CompactionPolicy()
        self.retention_s = float(retention_s)
        self._fsync: FsyncPolicy = fsync
        self._close_wait_s = close_wait_s
        self.stream = StreamDir(directory, STREAM)
        self.meter = StreamMeter(self.stream)
        self.stream.cleanup(fsync != "never")
        live, _, _ = self.stream.scan()
        read_bytes = sum(s.size for s in live)
        state = recover_files([s.path for s in live])
        now = clock.time()
        restore_table(table, state, now)
        self.state: RecoveredState | None = state
        self._encoder = RecordEncoder()
        self._encoder.seed(state.commands.values(), ((b.batch_id, len(b)) for b in state.batches))
        self._journal = SegmentedJournal(directory, STREAM, fsync, kinds=COMMAND_KINDS, now=now)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._result: CompactionResult | None = None  # set by the compaction thread, read by the owner
        self._last_result: CompactionResult | None = None
        self._batches_since_seal: set[str] = set()
        self.recovery_s = time.perf_counter() - t0
        self.meter.recovery_s = self.recovery_s
        if state.records:
            log.info("journal %s: %d records in %d files (%d bytes), %d batches, %d commands read in %.3f s",
                     self.stream.active_path, state.records, len(live), read_bytes, len(state.batches),
                     len(state.commands), self.recovery_s)
        if self.policy.at_startup and read_bytes >= self.policy.min_bytes and state.records:
            upto = self._seal(now) if not self._journal.empty else self._journal.last_seq
            if upto:
                self._start_compaction(upto, now, state)

    # ---- the dispatcher's calls ----------------------------------------------------------------
    def commit(self, records: list[dict[str, Any]], changes: Iterable[Change]) -> None:
        """Journal one burst: ``records`` (schedule records, as the dispatcher builds them) then the records
        of ``changes``, in one write, synced per the fsync policy; then compact if it is time."""
        now = self._clock.time()
        for rec in records:
            if rec.get("k") == "batch":
                b = rec["b"]
                self._encoder.note_batch(b["id"], len(b["times"]) // 8)
                self._batches_since_seal.add(b["id"])
        out = records + self._encoder.encode(changes, now)
        if out:
            before = self._journal.size
            self._journal.append_many(out)
            self._journal.sync()
            self.meter.appended(self._journal.size - before, len(out))
        self._after_compaction()
        started = self._journal.started
        if not self.compacting and self.policy.due(self._journal.size, None if started is None else now - started):
            self._start_compaction(self._seal(now), now, None)

    def sync(self) -> None:
        self._journal.sync()

    def close(self) -> None:
        """Sync and close the active log; wait for a running compaction (bounded, see the module docstring)."""
        self._journal.close()
        thread = self._thread
        if thread is not None:
            thread.join(self._close_wait_s)
            if thread.is_alive():
                log.warning("journal %s: compaction still running after %g s at shutdown; abandoning it (the "
                            "journal stays valid)", self.stream.active_path, self._close_wait_s)
                self._stopping = True
                thread.join()
            self._thread = None

    @property
    def closed(self) -> bool:
        return self._journal.closed

    # ---- compaction ------------------------------------------------------------------------------
    @property
    def compacting(self) -> bool:
        thread = self._thread
        return thread is not None and thread.is_alive()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait (at most ``timeout`` s) until no compaction runs; True when none does."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return not self.compacting

    def compact_now(self, wait: bool = True) -> CompactionResult | None:
        """Seal the active log and compact now (tests, tools); with ``wait``, return the result (None when
        one was already running, or this one failed: see the log)."""
        if self.compacting:
            if not wait:
                return None
            assert self._thread is not None
            self._thread.join()
        now = self._clock.time()
        self._result = None
        self._start_compaction(self._seal(now), now, None)
        if wait:
            assert self._thread is not None
            self._thread.join()
            self._after_compaction()
            return self._last_result
        return None

    def stats(self) -> StreamStats:
        """The command stream's figures (any thread)."""
        return self.meter.stats()

    def _seal(self, now: float) -> int:
        self._batches_since_seal = set()
        return self._journal.rotate(now)

    def _start_compaction(self, upto: int, now: float, state: RecoveredState | None) -> None:
        self.meter.started()
        self.state = None
        self._thread = threading.Thread(target=self._run, args=(upto, now, state), daemon=True,
                                        name=f"journal-compaction-{self.stream.name}")
        self._thread.start()

    def _run(self, upto: int, now: float, state: RecoveredState | None) -> None:
        durable = self._fsync != "never"
        try:
            if state is None and self.policy.isolation == "process":
                result = compact_in_child(self.stream, upto, now, retention_s=self.retention_s,
                                          dedupe_window_s=self._table.dedupe_window_s, durable=durable,
                                          should_stop=lambda: self._stopping)
                log_compacted(self.stream, result, " in a child process")
            else:
                result = compact_stream(self.stream, upto, now, retention_s=self.retention_s,
                                        dedupe_window_s=self._table.dedupe_window_s, state=state,
                                        durable=durable, step=self._step)
        except (_Abandoned, CompactionAbandoned):
            self.meter.failed("abandoned at shutdown")
        except Exception as exc:  # the journal is unchanged (or the snapshot is complete): valid either way
            log.exception("journal %s: compaction failed; the journal is still valid and compaction is tried "
                          "again later", self.stream.active_path)
            self.meter.failed(f"{type(exc).__name__}: {exc}")
        else:
            self._result = result
            self.meter.finished(result.at, result.duration_s, result.bytes_before, result.bytes_after)

    def _step(self, name: str) -> None:
        if self._stopping:
            raise _Abandoned(name)

    def _after_compaction(self) -> None:
        """In the owner's thread, after a compaction finished: forget the batches it retired."""
        result, self._result = self._result, None
        if result is not None:
            self._last_result = result
            self._encoder.forget_batches(set(result.summary.kept_batch_ids) | self._batches_since_seal)

    def __repr__(self) -> str:
        return f"<CommandLog {self.stream.active_path} {self._journal.size} bytes>"
