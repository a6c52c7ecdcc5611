"""Stopping the router's background tasks even when a library swallows a cancellation.

A task cancelled while it awaits a third-party coroutine can lose the CancelledError inside it (redis-py's
asyncio client has had such races: redis/redis-py#2028); the task then goes round its loop again and a
``gather`` of the cancelled tasks never returns, so the router's shutdown hangs. :func:`stop_tasks` cancels,
waits a little, and cancels again what is still running, within a bounded time; what still will not stop is
logged by name and left behind (the process is ending). Runs on the router's loop.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Collection

__all__ = ["stop_tasks"]

log = logging.getLogger(__name__)


async def stop_tasks(tasks: Collection[asyncio.Task[object]], timeout: float = 5.0,
                     retry_s: float = 0.1) -> None:
    """Cancel ``tasks`` and wait until they are done, cancelling again every ``retry_s`` what a swallowed
    cancellation kept running; after ``timeout`` s log the ones left (exceptions of the done ones are
    retrieved, never raised). ``tasks`` is read twice, so it is a collection, not an iterator."""
    loop = asyncio.get_running_loop()
    pending = {t for t in tasks if not t.done()}
    deadline = loop.time() + timeout
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=min(retry_s, max(0.0, deadline - loop.time())))
        if pending and loop.time() >= deadline:
            log.error("router: %d task(s) did not stop within %g s of being cancelled: %s", len(pending), timeout,
                      ", ".join(sorted(t.get_name() for t in pending)))
            break
    for task in tasks:
        if task.done() and not task.cancelled():
            task.exception()   # retrieved: a task that failed earlier was logged where it failed
