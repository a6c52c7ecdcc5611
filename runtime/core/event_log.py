"""EventLog: the event journal, kept to a bounded size by deleting old segments.

The event actor appends every published event but the command transitions (those are the command
journal's) to ``events.jnl``: telemetry (one record per meter value), state changes, schedules received.
Nothing needs these records to recover, so instead of compaction the stream is cut into segments
(:mod:`runtime.core.segments`): when the active log reaches :attr:`EventRetention.segment_bytes` or
:attr:`EventRetention.segment_s` of age it is sealed, and sealed segments beyond the retention (age,
size; see :class:`~runtime.core.retention.EventRetention`) are deleted, oldest first. Sealing and deleting
are a rename and a few unlinks: done inline, in the event actor's thread.

It offers what the event actor uses of a :class:`~runtime.core.journal.Journal`: ``append_many``, ``sync``
and ``close``.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Iterable

from .clock import Clock
from .journal import FsyncPolicy, Journal
from .journal_stats import StreamMeter, StreamStats
from .retention import EventRetention
from .segments import Segment, SegmentedJournal, StreamDir

log = logging.getLogger(__name__)

__all__ = ["EventLog", "STREAM", "EVENT_KINDS"]

#: The event stream's name (``events.jnl`` and its segments), and the kinds its records have.
STREAM = "events"
EVENT_KINDS = ("ev",)


class EventLog:
    """The event journal in ``directory`` (see the module docstring). One owner thread (the event actor)
    but :meth:`stats`."""

    def __init__(self, directory: str | os.PathLike[str], clock: Clock, *, fsync: FsyncPolicy = "batch",
                 retention: EventRetention | None = None) -> None:
        self._clock = clock
        self.retention = retention or EventRetention()
        self.stream = StreamDir(directory, STREAM)
        self.meter = StreamMeter(self.stream)
        self.stream.cleanup(fsync != "never")
        now = clock.time()
        self._journal = SegmentedJournal(directory, STREAM, fsync, kinds=EVENT_KINDS, now=now)
        self._sealed: list[tuple[Segment, float | None]] = self._read_sealed()
        self._enforce(now)

    def _read_sealed(self) -> list[tuple[Segment, float | None]]:
        """The sealed segments, oldest first, each with the time its newest record was written: the
        start of the segment after it (its header's time), None when unknown."""
        live, _, _ = self.stream.scan()
        sealed = [s for s in live if s.kind == "log"]
        starts = [_started(s.path) for s in sealed] + [self._journal.started]
        return [(seg, starts[i + 1]) for i, seg in enumerate(sealed)]

    def append_many(self, records: Iterable[dict[str, Any]]) -> None:
        before = self._journal.size
        records = list(records)
        self._journal.append_many(records)
        self.meter.appended(self._journal.size - before, len(records))
        now = self._clock.time()
        started = self._journal.started
        if self.retention.rotate_due(self._journal.size, None if started is None else now - started,
                                     self._journal.empty):
            self._journal.sync()
            seq = self._journal.rotate(now)
            self._sealed.append((_segment(self.stream, seq), now))
            self._enforce(now)

    def append(self, record: dict[str, Any]) -> None:
        self.append_many([record])

    def sync(self) -> None:
        self._journal.sync()

    flush = sync

    def close(self) -> None:
        self._journal.close()

    @property
    def closed(self) -> bool:
        return self._journal.closed

    def stats(self) -> StreamStats:
        return self.meter.stats()

    def _enforce(self, now: float) -> None:
        """Delete the sealed segments beyond the retention (oldest first), with a log line."""
        doomed = self.retention.expired(self._sealed, self._journal.size, now)
        if not doomed:
            return
        t0 = time.perf_counter()
        before = self.stream.total_bytes()
        for seg in doomed:
            try:
                os.unlink(seg.path)
            except FileNotFoundError:
                pass
        gone = {seg.path for seg in doomed}
        self._sealed = [(s, e) for s, e in self._sealed if s.path not in gone]
        after = self.stream.total_bytes()
        duration = time.perf_counter() - t0
        self.meter.finished(now, duration, before, after)
        log.info("journal %s: retention deleted %d segments: %d -> %d bytes in %.3f s",
                 self.stream.active_path, len(doomed), before, after, duration)


def _started(path: str) -> float | None:
    try:
        t = Journal.read_header(path).meta.get("t")
    except Exception:  # a damaged or foreign segment: its age is unknown, size still counts
        return None
    return float(t) if isinstance(t, (int, float)) else None


def _segment(stream: StreamDir, seq: int) -> Segment:
    path = stream.path(seq, "log")
    return Segment(path, "log", seq, os.path.getsize(path), _started(path))
