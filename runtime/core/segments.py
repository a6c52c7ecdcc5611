"""A journal stream kept as files in one directory: the active log, sealed logs and compacted snapshots.

A stream (the site's ``commands`` or ``events``) is appended to one file, the *active log*; from time
to time that file is *sealed* (renamed, never written again) and a new active log started, so that old
records can be dropped without rewriting the file being appended to. Layout, for a stream ``NAME``::

    NAME.jnl                the active log (what a version-1 site wrote too: one file per stream)
    NAME.<seq>.jnl          sealed logs, ``seq`` (8 digits) increasing in the order they were sealed
    NAME.<seq>.snap         a snapshot: the stream's state after every sealed log with a seq <= its own
                            (written by compaction, :mod:`runtime.core.compaction`)
    NAME.<...>.tmp          a rewrite in progress, or one a crash left behind: ignored, deleted later

Reading order (recovery): the newest snapshot, the sealed logs after it in seq order, then the active
log. Files with a seq at or below the newest snapshot's are covered by it (what a compaction that was
interrupted before its deletions leaves): they are never read, and :meth:`StreamDir.cleanup` deletes
them. Every step that changes the layout is a single rename or unlink, so a crash at any point leaves a
layout that reads as either the state before the step or the state after it.

:class:`StreamDir` is the layout (listing, sealing, cleanup); :class:`SegmentedJournal` is the writer:
an open active log, with :meth:`SegmentedJournal.rotate`. The writer owns the sequence numbers it hands
out (it never re-lists the directory while a compaction may be deleting files in it).
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from typing import Any, Iterable

from .journal import TEMP_SUFFIX, FsyncPolicy, Journal, JournalHeader, _fsync_dir

log = logging.getLogger(__name__)

__all__ = ["Segment", "StreamDir", "SegmentedJournal"]


@dataclass(frozen=True, slots=True)
class Segment:
    """One file of a stream: ``kind`` is "active", "log" (sealed) or "snap"; ``seq`` is None for the
    active log; ``size`` in bytes; ``started`` is the site time its header records (None: unknown, e.g. a
    version-1 file)."""

    path: str
    kind: str
    seq: int | None
    size: int
    started: float | None = None


class StreamDir:
    """The files of stream ``name`` in ``directory`` (see the module docstring)."""

    def __init__(self, directory: str | os.PathLike[str], name: str) -> None:
        self.directory = os.fspath(directory)
        self.name = name
        self.active_path = os.path.join(self.directory, f"{name}.jnl")
        self._pattern = re.compile(rf"^{re.escape(name)}\.(\d{{8}})\.(jnl|snap)$")

    def path(self, seq: int, kind: str) -> str:
        """The path of sealed log (``"log"``) or snapshot (``"snap"``) number ``seq``."""
        return os.path.join(self.directory, f"{self.name}.{seq:08d}.{'jnl' if kind == 'log' else 'snap'}")

    def scan(self) -> tuple[list[Segment], list[Segment], list[str]]:
        """``(live, covered, temps)``: the files recovery reads, in reading order (newest snapshot,
        sealed logs after it, the active log); the files a newer snapshot covers; leftover temp files."""
        snaps: list[Segment] = []
        logs: list[Segment] = []
        temps: list[str] = []
        active: Segment | None = None
        try:
            names = sorted(os.listdir(self.directory))
        except FileNotFoundError:
            return [], [], []
        for fname in names:
            full = os.path.join(self.directory, fname)
            if fname.startswith(self.name + ".") and fname.endswith(TEMP_SUFFIX):
                temps.append(full)
                continue
            m = self._pattern.match(fname)
            if m:
                seg = Segment(full, "log" if m.group(2) == "jnl" else "snap", int(m.group(1)), _size(full))
                (logs if seg.kind == "log" else snaps).append(seg)
            elif full == self.active_path:
                active = Segment(full, "active", None, _size(full))
        snaps.sort(key=lambda s: s.seq or 0)
        logs.sort(key=lambda s: s.seq or 0)
        base = snaps[-1].seq if snaps else None
        covered = snaps[:-1] + [s for s in logs if base is not None and (s.seq or 0) <= base]
        live = snaps[-1:] + [s for s in logs if base is None or (s.seq or 0) > base]
        if active is not None:
            live.append(active)
        return live, covered, temps

    def next_seq(self) -> int:
        """The seq the next sealed log gets: one more than any sealed log or snapshot present."""
        live, covered, _ = self.scan()
        return 1 + max((s.seq for s in live + covered if s.seq is not None), default=0)

    def cleanup(self, fsync: bool = True) -> int:
        """Delete covered files and leftover temp files; returns the bytes freed. Oldest first, so that an
        interruption leaves a valid layout."""
        _, covered, temps = self.scan()
        freed = 0
        for seg in sorted(covered, key=lambda s: (s.seq or 0, s.kind == "snap")):
            freed += _unlink(seg.path)
        for tmp in temps:
            freed += _unlink(tmp)
        if (covered or temps) and fsync:
            _fsync_dir(self.directory)
        return freed

    def total_bytes(self) -> int:
        """Bytes of every file of the stream (live, covered and temp)."""
        live, covered, temps = self.scan()
        return sum(s.size for s in live + covered) + sum(_size(t) for t in temps)


class SegmentedJournal:
    """The writer of a stream: an open active log plus the sealed logs before it.

    ``SegmentedJournal(directory, name, fsync, kinds=..., optional_kinds=..., now=...)`` opens the active
    log, creating it with a header that declares ``kinds`` (see :class:`~runtime.core.journal.Journal`) and
    the site time ``now`` as its start. An existing active log that cannot take the records this writer
    writes (a version-1 file, or one whose header declares other kinds) is sealed first, and a new one
    started: a file's header stays true for every record in it. ``append_many``/``sync``/``close`` are
    the :class:`~runtime.core.journal.Journal` ones. Not thread-safe: one owner (an actor).
    """

    def __init__(self, directory: str | os.PathLike[str], name: str, fsync: FsyncPolicy = "batch", *,
                 kinds: Iterable[str] = (), optional_kinds: Iterable[str] = (), now: float = 0.0,
                 meta: dict[str, Any] | None = None) -> None:
        self.stream = StreamDir(directory, name)
        self.fsync: FsyncPolicy = fsync
        self._kinds = frozenset(kinds)
        self._optional = frozenset(optional_kinds)
        self._meta = dict(meta or {})
        self._next_seq = self.stream.next_seq()
        self.sealed_at_open: int | None = None
        if os.path.exists(self.stream.active_path) and not self._compatible(self.stream.active_path):
            self.sealed_at_open = self._seal()
        self._journal = self._open(now)

    def _compatible(self, path: str) -> bool:
        header = Journal.read_header(path)
        return header.version != 1 and header.required == self._kinds and header.optional == self._optional

    def _open(self, now: float) -> Journal:
        journal = Journal(self.stream.active_path, fsync=self.fsync, kinds=self._kinds,
                          optional_kinds=self._optional, meta={"s": self.stream.name, "t": now, **self._meta})
        self._appended = journal.records_at_open > 0
        return journal

    def _seal(self) -> int:
        """Rename the active log to the next sealed log; returns its seq."""
        seq = self._next_seq
        self._next_seq += 1
        os.replace(self.stream.active_path, self.stream.path(seq, "log"))
        if self.fsync != "never":
            _fsync_dir(self.stream.directory)
        return seq

    # -- the Journal interface -----------------------------------------------------------------------
    @property
    def path(self) -> str:
        return self.stream.active_path

    @property
    def size(self) -> int:
        """Bytes of the active log."""
        return self._journal.size

    @property
    def header(self) -> JournalHeader:
        return self._journal.header

    @property
    def last_seq(self) -> int:
        """The seq of the newest sealed log or snapshot (0: none)."""
        return self._next_seq - 1

    @property
    def started(self) -> float | None:
        """The site time the active log was started (its header's ``t``)."""
        t = self._journal.header.meta.get("t")
        return float(t) if isinstance(t, (int, float)) else None

    def append_many(self, records: Iterable[dict[str, Any]]) -> None:
        self._journal.append_many(records)
        self._appended = True

    def append(self, record: dict[str, Any]) -> None:
        self._journal.append(record)
        self._appended = True

    def sync(self) -> None:
        self._journal.sync()

    flush = sync

    def close(self) -> None:
        self._journal.close()

    @property
    def closed(self) -> bool:
        return self._journal.closed

    @property
    def empty(self) -> bool:
        """True when the active log holds no record (only its header)."""
        return not self._appended

    # -- rotation ----------------------------------------------------------------------------------
    def rotate(self, now: float) -> int:
        """Seal the active log and start a new one (a few file operations, no copying); returns the
        sealed log's seq. Everything appended before is synced first (per the fsync policy)."""
        self._journal.close()
        seq = self._seal()
        self._journal = self._open(now)
        return seq

    def __repr__(self) -> str:
        return f"<SegmentedJournal {self.stream.active_path} {self.size} bytes, next seq {self._next_seq}>"


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _unlink(path: str) -> int:
    size = _size(path)
    try:
        os.unlink(path)
    except FileNotFoundError:
        return 0
    return size
