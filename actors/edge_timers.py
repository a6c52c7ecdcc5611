"""Timers for the edge link: monotonic time that a wrong wall clock cannot move.

:class:`LoopTime` counts ``time.monotonic()`` and fires callbacks from the site's I/O loop
(``loop.call_later``, which runs on the loop's monotonic clock); :class:`SiteTime` counts a virtual
site clock (which never goes back) and fires from its timers, so that a test or scenario moves it.
:func:`edge_time` picks the one for a site's clock. Either way a callback must only tell an actor, and
``call_later``/``cancel`` may be called from any thread.
"""

from __future__ import annotations

import asyncio
import time
from typing import Callable, Protocol

from runtime.core.clock import Clock

__all__ = ["EdgeTime", "LoopTime", "SiteTime", "edge_time"]


class Cancellable(Protocol):
    def cancel(self) -> None: ...


class EdgeTime(Protocol):
    def now(self) -> float: ...

    def call_later(self, delay: float, callback: Callable[[], None]) -> Cancellable: ...


class _LoopTimer:
    """A ``loop.call_later`` armed and cancelled from any thread (both hop onto the loop)."""

    __slots__ = ("_loop", "_handle", "_cancelled")

    def __init__(self, loop: asyncio.AbstractEventLoop, delay: float, callback: Callable[[], None]) -> None:
        self._loop = loop
        self._handle: asyncio.TimerHandle | None = None
        self._cancelled = False
        try:
            loop.call_soon_threadsafe(self._arm, delay, callback)
        except RuntimeError:  # the loop is closed: nothing fires any more
            self._cancelled = True

    def _arm(self, delay: float, callback: Callable[[], None]) -> None:  # on the loop
        if not self._cancelled:
            self._handle = self._loop.call_later(max(0.0, delay), callback)

    def _disarm(self) -> None:  # on the loop
        if self._handle is not None:
            self._handle.cancel()

    def cancel(self) -> None:
        self._cancelled = True
        try:
            self._loop.call_soon_threadsafe(self._disarm)
        except RuntimeError:
            pass


class LoopTime:
    """Monotonic seconds; timers on the I/O loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def now(self) -> float:
        return time.monotonic()

    def call_later(self, delay: float, callback: Callable[[], None]) -> Cancellable:
        return _LoopTimer(self._loop, delay, callback)


class SiteTime:
    """A virtual site clock's seconds and timers (deterministic: they move when the clock is advanced)."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock

    def now(self) -> float:
        return self._clock.time()

    def call_later(self, delay: float, callback: Callable[[], None]) -> Cancellable:
        return self._clock.call_later(delay, callback)


def edge_time(clock: Clock, loop: asyncio.AbstractEventLoop) -> EdgeTime:
    """Virtual clock: its own time (tests and scenarios move it); real clock: the monotonic clock."""
    return SiteTime(clock) if clock.is_virtual else LoopTime(loop)
