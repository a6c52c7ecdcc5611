"""Helpers for tests that drive protocol code on their own asyncio loop."""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable


def run(body: Callable[[], Awaitable[None]], timeout: float = 10.0) -> None:
    """Run ``body`` on a fresh loop; fail if it leaves any task behind."""
    async def main() -> None:
        await asyncio.wait_for(body(), timeout)
        await asyncio.sleep(0.01)  # let cancelled tasks finish their cleanup
        leftover = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        assert not leftover, f"leaked tasks: {leftover}"
    asyncio.run(main())


async def settle(predicate: Callable[[], Any], timeout: float = 3.0, what: str = "condition") -> None:
    """Wait (bounded) until ``predicate()`` is true, checking every 10 ms of loop time."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)
