"""How long the site keeps what it journals: the policies, in one place.

Three different things are kept for three different reasons, and each has its own knob:

* **Commands** (``commands.jnl`` and its segments) are kept for recovery and idempotence, not for
  history. Compaction (:mod:`runtime.core.compaction`) rewrites them to what a restart needs: every
  command that is not final, every schedule batch that still has rows to run, final commands that
  ended within ``retention_s`` (the same retention as in memory: they can still be looked up after a
  restart), and the ids of older final commands for the dedupe window. :class:`CompactionPolicy` says
  when it runs. The dedupe window itself (how long a final id stays known) belongs to the command
  table: :data:`~runtime.core.command_table.DEFAULT_DEDUPE_WINDOW_S`.
* **Events** (``events.jnl`` and its segments) are history: telemetry, state changes. Nothing needs
  them to recover, so old segments are simply deleted: :class:`EventRetention` (by age and by size).
* **Later streams** that must keep records until someone else has them (the edge's command log for
  the cloud channel: what the cloud has not acknowledged, however old) use the same segment
  retention with a ``pin``: a segment for which ``pin(segment)`` is true is never deleted, and
  neither is anything newer than it (retention deletes oldest first and stops there).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal

from .errors import ConfigurationError
from .segments import Segment

__all__ = ["CompactionPolicy", "EventRetention", "MiB"]

MiB = 1024 * 1024


def _positive(name: str, value: float | None, allow_none: bool = False, allow_zero: bool = False) -> None:
    if value is None and allow_none:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and \
        (value >= 0 if allow_zero else value > 0)
    if not ok:
        raise ConfigurationError(f"{name}: must be a finite number {'>= 0' if allow_zero else '> 0'}"
                                 f"{' or None' if allow_none else ''}, got {value!r}")


@dataclass(frozen=True)
class CompactionPolicy:
    """When the command journal is compacted (in a background thread; dispatch only seals the file
    being appended to and starts a new one, a few file operations).

    * ``max_log_bytes``: when the file being appended to reaches this size (default 8 MiB);
    * ``interval_s``: or when it is this old on the site clock (default 6 h) and holds at least
      ``min_bytes`` (default 64 KiB: a quiet site is not rewritten for nothing);
    * ``at_startup``: and at start-up, when what was recovered is at least ``min_bytes`` (default on).
    * ``isolation``: where a compaction while running reads and rewrites the files: ``"process"``
      (default), a child process (:mod:`runtime.core.compaction_process`): its memory peak (about 20x
      the bytes compacted) leaves with it and it does not hold the site's GIL; or ``"thread"``, in the
      site's process (no child process; the peak stays in the site's RSS). The start-up compaction always
      runs in a thread: it reuses the state that recovery has just read.
    """

    max_log_bytes: int = 8 * MiB
    interval_s: float = 6 * 3600.0
    min_bytes: int = 64 * 1024
    at_startup: bool = True
    isolation: Literal["process", "thread"] = "process"

    def __post_init__(self) -> None:
        _positive("max_log_bytes", self.max_log_bytes)
        _positive("interval_s", self.interval_s)
        _positive("min_bytes", self.min_bytes, allow_zero=True)
        if self.isolation not in ("process", "thread"):
            raise ConfigurationError(f"isolation: must be 'process' or 'thread', got {self.isolation!r}")

    def due(self, log_bytes: int, log_age_s: float | None) -> bool:
        """Whether a file of ``log_bytes`` started ``log_age_s`` ago should be sealed and compacted now."""
        if log_bytes >= self.max_log_bytes:
            return True
        return log_age_s is not None and log_age_s >= self.interval_s and log_bytes >= self.min_bytes


@dataclass(frozen=True)
class EventRetention:
    """How much of the event journal is kept. The file being appended to is sealed when it reaches
    ``segment_bytes`` (default 16 MiB) or is ``segment_s`` old (default 1 day, site clock); then sealed
    segments are deleted, oldest first, while the newest record in them is older than ``max_age_s``
    (default 7 days; None: no age limit) or the stream is larger than ``max_bytes`` (default 256 MiB;
    None: no size limit). ``pin`` (optional): a segment for which it returns True is kept, and so is
    everything after it (see the module docstring). The newest data is always kept: at least the file
    being appended to.
    """

    max_age_s: float | None = 7 * 86400.0
    max_bytes: int | None = 256 * MiB
    segment_bytes: int = 16 * MiB
    segment_s: float = 86400.0
    pin: Callable[[Segment], bool] | None = None

    def __post_init__(self) -> None:
        _positive("max_age_s", self.max_age_s, allow_none=True)
        _positive("max_bytes", self.max_bytes, allow_none=True)
        _positive("segment_bytes", self.segment_bytes)
        _positive("segment_s", self.segment_s)

    def rotate_due(self, log_bytes: int, log_age_s: float | None, empty: bool) -> bool:
        """Whether the file being appended to should be sealed now."""
        if empty:
            return False
        return log_bytes >= self.segment_bytes or (log_age_s is not None and log_age_s >= self.segment_s)

    def expired(self, sealed: list[tuple[Segment, float | None]], active_bytes: int, now: float) -> list[Segment]:
        """The sealed segments to delete, oldest first. ``sealed``: (segment, time its newest record was
        written or None when unknown), oldest first; ``active_bytes``: the file being appended to."""
        total = active_bytes + sum(seg.size for seg, _ in sealed)
        out: list[Segment] = []
        for seg, ended in sealed:
            if self.pin is not None and self.pin(seg):
                break
            too_old = self.max_age_s is not None and ended is not None and ended < now - self.max_age_s
            too_big = self.max_bytes is not None and total > self.max_bytes
            if not (too_old or too_big):
                break
            out.append(seg)
            total -= seg.size
        return out
