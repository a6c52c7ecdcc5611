"""What the site's journals report about themselves: sizes and the last compaction, for metrics and logs.

:class:`JournalStats` is what :meth:`runtime.site.Site.journal_stats` returns: one :class:`StreamStats` per
stream (``commands``, ``events``). A :class:`StreamMeter` collects the figures as the journal's owner
appends and as compactions (or, for events, retention passes) finish; it is thread-safe, because a
compaction finishes in its own thread and the metrics are read from yet another.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass
from typing import Any

from .segments import StreamDir

__all__ = ["StreamStats", "JournalStats", "StreamMeter"]


@dataclass(frozen=True)
class StreamStats:
    """One stream's figures.

    * ``bytes``, ``files``: on disk now (every file of the stream); ``active_bytes``: the file being
      appended to;
    * ``appended_bytes``, ``appended_records``: written since the site started;
    * ``recovery_s``: how long reading the stream back took at start-up (real seconds; commands only);
    * ``compactions``: how many compactions (events: retention passes that deleted something) ran;
      ``last_compaction_at`` (site clock, epoch seconds), ``last_compaction_s`` (real seconds),
      ``last_bytes_before`` / ``last_bytes_after``: the last one; ``compacting``: one is running now;
      ``last_error``: why the last one failed, if it did (cleared by the next success).
    """

    name: str
    bytes: int
    files: int
    active_bytes: int
    appended_bytes: int
    appended_records: int
    recovery_s: float | None
    compactions: int
    last_compaction_at: float | None
    last_compaction_s: float | None
    last_bytes_before: int | None
    last_bytes_after: int | None
    compacting: bool
    last_error: str | None


@dataclass(frozen=True)
class JournalStats:
    """The site's journals: ``directory``, and the ``commands`` and ``events`` streams."""

    directory: str
    commands: StreamStats
    events: StreamStats

    @property
    def bytes(self) -> int:
        """Bytes on disk, both streams."""
        return self.commands.bytes + self.events.bytes

    def as_dict(self) -> dict[str, Any]:
        """Plain values (for JSON and metrics exporters)."""
        return {"directory": self.directory, "bytes": self.bytes, "commands": asdict(self.commands),
                "events": asdict(self.events)}


class StreamMeter:
    """Collects one stream's figures (thread-safe)."""

    def __init__(self, stream: StreamDir) -> None:
        self._stream = stream
        self._lock = threading.Lock()
        self._appended_bytes = 0
        self._appended_records = 0
        self.recovery_s: float | None = None
        self._compactions = 0
        self._last: tuple[float, float, int, int] | None = None
        self._compacting = False
        self._error: str | None = None

    def appended(self, nbytes: int, nrecords: int) -> None:
        with self._lock:
            self._appended_bytes += nbytes
            self._appended_records += nrecords

    def started(self) -> None:
        with self._lock:
            self._compacting = True

    def finished(self, at: float, duration_s: float, bytes_before: int, bytes_after: int) -> None:
        with self._lock:
            self._compacting = False
            self._compactions += 1
            self._last = (at, duration_s, bytes_before, bytes_after)
            self._error = None

    def failed(self, error: str) -> None:
        with self._lock:
            self._compacting = False
            self._error = error

    @property
    def compacting(self) -> bool:
        with self._lock:
            return self._compacting

    @property
    def appended_bytes(self) -> int:
        with self._lock:
            return self._appended_bytes

    def stats(self) -> StreamStats:
        live, covered, temps = self._stream.scan()
        files = live + covered
        with self._lock:
            last = self._last
            return StreamStats(
                name=self._stream.name, bytes=sum(s.size for s in files), files=len(files) + len(temps),
                active_bytes=next((s.size for s in live if s.kind == "active"), 0),
                appended_bytes=self._appended_bytes, appended_records=self._appended_records,
                recovery_s=self.recovery_s, compactions=self._compactions,
                last_compaction_at=last[0] if last else None, last_compaction_s=last[1] if last else None,
                last_bytes_before=last[2] if last else None, last_bytes_after=last[3] if last else None,
                compacting=self._compacting, last_error=self._error)
