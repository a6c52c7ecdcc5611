"""Helpers for tests that drive protocol code on their own asyncio loop."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Awaitable, Callable


def run(body: Callable[[], Awaitable[None]], timeout: float = 10.0) -> None:
    """Run ``body`` on a fresh loop; fail if it leaves any task behind."""
    async def main() -> None:
        await asyncio.wait_for(body(), timeout)
        await asyncio.sleep(0.01)  # let cancelled tasks finish their cleanup
        leftover = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        assert not leftover, f"leaked tasks: {leftover}"
    asyncio.run(main())


async def settle(predicate: Callable[[], Any], timeout: float = 3.0, what: str = "condition") -> Any:
    """Wait (bounded) until ``predicate()`` is truthy, checking every 5 ms of loop time; returns its value."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        got = predicate()
        if got:
            return got
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


async def yield_to_loop(iterations: int = 50) -> None:
    """Let everything that is ready on the loop run (``iterations`` turns of the loop, no waiting on
    time): before checking that something did NOT happen."""
    for _ in range(iterations):
        await asyncio.sleep(0)


def read_on(io: Any, fn: Callable[[], Any], timeout: float = 5.0) -> Any:
    """Evaluate ``fn`` on a simulator's I/O thread (``runtime.core.iothread.IOThread``): its state belongs there."""
    async def read() -> Any:
        return fn()
    return io.call(read(), timeout)


def wait_until(fn: Callable[[], Any], timeout: float = 5.0, what: str = "condition") -> Any:
    """Poll ``fn`` from a plain thread until it is truthy (bounded, every 10 ms); returns its value."""
    deadline = time.monotonic() + timeout
    while True:
        got = fn()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.01)


def until_on(io: Any, fn: Callable[[], Any], timeout: float = 5.0, what: str = "simulator condition") -> Any:
    """Poll a simulator fact on its I/O thread until it is truthy (bounded): simulators have no events
    of their own to wait on."""
    return wait_until(lambda: read_on(io, fn), timeout, what)
