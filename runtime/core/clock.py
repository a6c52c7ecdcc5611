"""Injected time: a real clock for production, a virtual clock for scenarios and tests.

Nothing in the runtime reads the system time directly or sleeps to wait for logic. Every component
asks its :class:`Clock` for ``now()`` and registers timers with ``call_at``/``call_later``. Timer
callbacks must be cheap and non-blocking; in practice they are ``actor_ref.tell(...)``.

* :class:`RealClock` fires timers from one scheduler thread, owned by the clock and stopped by
  :meth:`Clock.stop`.
* :class:`VirtualClock` never moves by itself: :meth:`VirtualClock.advance` moves it forward and fires
  every timer that falls due, in deadline order, in the calling thread.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time as _time
from abc import ABC, abstractmethod
from datetime import datetime, timezone
from typing import Callable

log = logging.getLogger(__name__)

__all__ = ["Clock", "RealClock", "VirtualClock", "TimerHandle", "to_datetime", "to_epoch"]


def to_datetime(epoch: float) -> datetime:
    """Epoch seconds -> tz-aware UTC datetime."""
    return datetime.fromtimestamp(epoch, tz=timezone.utc)


def to_epoch(value: datetime | float | int) -> float:
    """A tz-aware datetime (or epoch seconds) -> epoch seconds. Naive datetimes are rejected."""
    if isinstance(value, (int, float)):
        return float(value)
    if value.tzinfo is None:
        raise ValueError(f"naive datetime {value!r}: give a timezone (e.g. UTC)")
    return value.timestamp()


class TimerHandle:
    """A registered timer; :meth:`cancel` makes sure it will not fire."""

    __slots__ = ("when", "callback", "cancelled", "_seq")

    def __init__(self, when: float, callback: Callable[[], None], seq: int) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False
        self._seq = seq

    def cancel(self) -> None:
        self.cancelled = True

    def __lt__(self, other: "TimerHandle") -> bool:
        return (self.when, self._seq) < (other.when, other._seq)


class Clock(ABC):
    """Source of time and timers for the whole site."""

    def __init__(self) -> None:
        self._seq = itertools.count()

    @abstractmethod
    def time(self) -> float:
        """Current time as epoch seconds."""

    def now(self) -> datetime:
        """Current time as a tz-aware UTC datetime."""
        return to_datetime(self.time())

    @abstractmethod
    def call_at(self, when: float, callback: Callable[[], None]) -> TimerHandle:
        """Run ``callback`` once the clock reaches ``when`` (epoch seconds)."""

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        """Run ``callback`` after ``delay`` seconds of this clock's time."""
        return self.call_at(self.time() + max(0.0, delay), callback)

    def stop(self) -> None:
        """Release timer resources. Pending timers never fire after this."""

    @property
    def is_virtual(self) -> bool:
        return False


def _fire(handle: TimerHandle) -> None:
    try:
        handle.callback()
    except Exception:  # a timer callback must never kill the clock
        log.exception("timer callback %r raised", handle.callback)


class RealClock(Clock):
    """Wall-clock time; timers fire from a single daemon scheduler thread started on first use."""

    def __init__(self) -> None:
        super().__init__()
        self._heap: list[TimerHandle] = []
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopped = False

    def time(self) -> float:
        return _time.time()

    def call_at(self, when: float, callback: Callable[[], None]) -> TimerHandle:
        handle = TimerHandle(when, callback, next(self._seq))
        with self._cond:
            if self._stopped:
                handle.cancelled = True
                return handle
            heapq.heappush(self._heap, handle)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="clock-timers", daemon=True)
                self._thread.start()
            self._cond.notify()
        return handle

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopped:
                    while self._heap and self._heap[0].cancelled:
                        heapq.heappop(self._heap)
                    if not self._heap:
                        self._cond.wait()
                        continue
                    delay = self._heap[0].when - _time.time()
                    if delay <= 0:
                        break
                    self._cond.wait(timeout=delay)
                if self._stopped:
                    return
                handle = heapq.heappop(self._heap)
            if not handle.cancelled:
                _fire(handle)

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._heap.clear()
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)


class VirtualClock(Clock):
    """Deterministic time that moves only when told to.

    ``VirtualClock(start)`` starts at ``start`` (tz-aware datetime or epoch seconds; default
    2026-01-01T00:00Z). ``advance(seconds)`` fires due timers one by one in deadline order; before
    each one the clock is set to that timer's deadline, and after each one the optional
    ``on_fire`` hook runs (the Site uses it to let the actors settle, so that a timer scheduled
    by a reaction is honoured within the same advance).
    """

    DEFAULT_START = datetime(2026, 1, 1, tzinfo=timezone.utc)

    def __init__(self, start: datetime | float | None = None) -> None:
        super().__init__()
        self._now = to_epoch(start if start is not None else self.DEFAULT_START)
        self._heap: list[TimerHandle] = []
        self._lock = threading.Lock()
        self._stopped = False
        self.on_fire: Callable[[], object] | None = None

    @property
    def is_virtual(self) -> bool:
        return True

    def time(self) -> float:
        return self._now

    def call_at(self, when: float, callback: Callable[[], None]) -> TimerHandle:
        handle = TimerHandle(when, callback, next(self._seq))
        with self._lock:
            if self._stopped:
                handle.cancelled = True
            else:
                heapq.heappush(self._heap, handle)
        return handle

    def next_deadline(self) -> float | None:
        """Deadline of the earliest live timer, or None."""
        with self._lock:
            while self._heap and self._heap[0].cancelled:
                heapq.heappop(self._heap)
            return self._heap[0].when if self._heap else None

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``, firing every timer that falls due on the way."""
        if seconds < 0:
            raise ValueError(f"seconds must be >= 0, got {seconds}")
        self.advance_to(self._now + seconds)

    def advance_to(self, target: float | datetime) -> None:
        """Move time forward to ``target`` (epoch seconds or tz-aware datetime)."""
        target = to_epoch(target)
        while True:
            with self._lock:
                while self._heap and self._heap[0].cancelled:
                    heapq.heappop(self._heap)
                if self._stopped or not self._heap or self._heap[0].when > target:
                    break
                handle = heapq.heappop(self._heap)
                self._now = max(self._now, handle.when)
            _fire(handle)
            if self.on_fire is not None:
                self.on_fire()
        self._now = max(self._now, target)

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            self._heap.clear()
