"""The one asyncio loop of a site, in one thread, where every socket lives.

Actors never run or await coroutines themselves: they hand one to :meth:`IOThread.submit` and get
the outcome back as a message (the done-callback tells the actor). :meth:`IOThread.call` blocks with
a timeout and is meant for the Site's own start and stop, never for actors.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import threading
from typing import Any, Callable, Coroutine, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

__all__ = ["IOThread", "IOOperation"]


class IOOperation:
    """A coroutine posted with :meth:`IOThread.post`; :meth:`cancel` may be called from any thread."""

    __slots__ = ("_io", "_task", "_cancelled")

    def __init__(self, io: "IOThread") -> None:
        self._io = io
        self._task: asyncio.Task[Any] | None = None
        self._cancelled = False

    def cancel(self) -> None:
        self._cancelled = True
        loop = self._io._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self._cancel_on_loop)
            except RuntimeError:  # loop closed meanwhile
                pass

    def _cancel_on_loop(self) -> None:
        if self._task is not None:
            self._task.cancel()


def _report(task: "asyncio.Task[Any]", on_done: Callable[[Any, BaseException | None], None]) -> None:
    if task.cancelled():
        return
    error = task.exception()
    try:
        on_done(None if error is not None else task.result(), error)
    except Exception:
        log.exception("I/O completion callback %r raised", on_done)


class IOThread:
    """Owns an event loop running in a dedicated thread. ``start()``, then ``submit()``; ``stop()``
    cancels every task still running on the loop, waits for them, and joins the thread."""

    def __init__(self, name: str = "site-io") -> None:
        self._name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        # Coroutines posted from other threads, started by the loop in one go: one wake-up per burst.
        self._posted: collections.deque[tuple[Coroutine[Any, Any, Any], Callable[..., None], IOOperation]] = \
            collections.deque()
        self._post_lock = threading.Lock()
        self._wakeup_pending = False

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError("IOThread is not started")
        return self._loop

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> "IOThread":
        if self._thread is not None:
            raise RuntimeError("IOThread already started")
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout=5):
            raise RuntimeError("I/O loop did not start within 5 s")
        return self

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        loop.call_soon(self._ready.set)
        try:
            loop.run_forever()
        finally:
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.run_until_complete(loop.shutdown_default_executor())
            finally:
                loop.close()

    def submit(self, coro: Coroutine[Any, Any, T]) -> "concurrent.futures.Future[T]":
        """Schedule ``coro`` on the loop from any thread; returns a concurrent Future."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def post(self, coro: Coroutine[Any, Any, T],
             on_done: Callable[[T | None, BaseException | None], None]) -> IOOperation:
        """Run ``coro`` on the loop; ``on_done(result, error)`` is called on the I/O thread when it ends
        (not when it is cancelled). Cheaper than :meth:`submit`: posts from many actors are started in
        one loop wake-up. ``on_done`` must not block (it tells an actor)."""
        op = IOOperation(self)
        with self._post_lock:
            self._posted.append((coro, on_done, op))
            wake = not self._wakeup_pending
            self._wakeup_pending = True
        if wake:
            self.loop.call_soon_threadsafe(self._start_posted)
        return op

    def _start_posted(self) -> None:
        with self._post_lock:
            posted, self._posted = self._posted, collections.deque()
            self._wakeup_pending = False
        loop = self.loop
        for coro, on_done, op in posted:
            if op._cancelled:
                coro.close()
                continue
            task = loop.create_task(coro)
            op._task = task
            task.add_done_callback(lambda t, cb=on_done: _report(t, cb))

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        """Run ``coro`` on the loop and wait for its result (at most ``timeout`` seconds).
        Not for use inside actors or on the loop thread itself."""
        if threading.current_thread() is self._thread:
            raise RuntimeError("IOThread.call() from the I/O thread would deadlock")
        fut = self.submit(coro)
        try:
            return fut.result(timeout=timeout)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            raise TimeoutError(f"I/O call {coro!r} did not finish within {timeout} s") from None

    def barrier(self, timeout: float = 5.0) -> None:
        """Return once the loop has run every callback scheduled before this call (two passes)."""
        async def _yield() -> None:
            await asyncio.sleep(0)
            await asyncio.sleep(0)
        self.call(_yield(), timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """Cancel every task on the loop, wait for them to finish, stop the loop and join the thread."""
        if self._thread is None or self._loop is None:
            return
        loop = self._loop

        async def _cancel_all() -> None:
            me = asyncio.current_task()
            tasks = [t for t in asyncio.all_tasks() if t is not me]
            for t in tasks:
                t.cancel()
            if tasks:
                done, pending = await asyncio.wait(tasks, timeout=timeout / 2)
                for t in pending:
                    log.warning("I/O task %r did not finish after cancel", t)

        if loop.is_running():
            try:
                self.call(_cancel_all(), timeout)
            except Exception:
                log.exception("cancelling I/O tasks failed")
            loop.call_soon_threadsafe(loop.stop)
        self._thread.join(timeout=timeout)
        if self._thread.is_alive():
            log.error("I/O thread did not stop within %s s", timeout)
        self._thread = None
