"""Serving the router with uvicorn: in the main thread (``coordinator router``) or on a thread of its own
(tests, benchmarks).

uvicorn runs the app on its own asyncio loop with the sans-I/O websockets implementation; it pings every
websocket peer (``[listen] ping_interval_s`` / ``ping_timeout_s``) and closes a link that stops answering.
:meth:`RouterServer.run` blocks until SIGTERM or SIGINT (uvicorn's handlers: connections get close 1012, the
lifespan closes the stores) and returns 0. :meth:`RouterServer.start` runs the same on a thread named
``router-<instance>`` and returns once the port is bound (``port`` then tells which, when 0 was asked);
:meth:`RouterServer.stop` ends it and joins the thread.

As a process of its own (:meth:`RouterServer.run`, ``coordinator router``), the router freezes what it has
built by the time it listens out of the garbage collector (``gc.collect(); gc.freeze()``: the app, its imports
and the stores), so later collections do not walk them again; on a thread of a host process
(:meth:`RouterServer.start`) the interpreter is the host's and is left alone.
"""

from __future__ import annotations

import asyncio
import gc
import io
import logging
import sys
import threading
import time
import traceback
from typing import Any, Callable

import uvicorn

from .app import create_app
from .config import RouterConfig

__all__ = ["RouterServer"]

log = logging.getLogger(__name__)


class _Uvicorn(uvicorn.Server):
    """uvicorn's server with a hook once its sockets are bound (uvicorn has no started event)."""

    def __init__(self, config: uvicorn.Config, on_started: Callable[[], None] | None) -> None:
        super().__init__(config)
        self.on_started = on_started
        self.loop: asyncio.AbstractEventLoop | None = None

    async def startup(self, sockets: Any = None) -> None:
        self.loop = asyncio.get_running_loop()
        await super().startup(sockets=sockets)
        if self.started and self.on_started is not None:
            self.on_started()


class RouterServer:
    """uvicorn serving one router instance (see the module docstring)."""

    def __init__(self, config: RouterConfig, host: str | None = None, port: int | None = None,
                 on_started: "Callable[[RouterServer], None] | None" = None) -> None:
        self.config = config
        self.host = host or config.listen.host
        self.requested_port = config.listen.port if port is None else port
        listen = config.listen
        self.uvicorn = _Uvicorn(uvicorn.Config(
            create_app(config), host=self.host, port=self.requested_port, ws="websockets-sansio",
            ws_ping_interval=listen.ping_interval_s, ws_ping_timeout=listen.ping_timeout_s, ws_max_size=1 << 20,
            ws_per_message_deflate=listen.compression,
            lifespan="on", log_config=None, access_log=False, backlog=listen.backlog, timeout_graceful_shutdown=5,
            http="h11"), self._started)
        self._on_started = on_started
        self._own_process = False   # set by run(): then the interpreter is ours to tune
        self._up = threading.Event()
        self._thread: threading.Thread | None = None

    def _started(self) -> None:
        if self._own_process:
            gc.collect()
            gc.freeze()
            log.info("router listening; %d objects frozen out of the garbage collector", gc.get_freeze_count())
        self._up.set()
        if self._on_started is not None:
            self._on_started(self)

    @property
    def port(self) -> int:
        """The bound port (once started)."""
        for server in self.uvicorn.servers:
            for sock in server.sockets:
                return int(sock.getsockname()[1])
        return self.requested_port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT (main thread); 0 when stopped, 1 if uvicorn could not start.

        uvicorn re-raises the signal it shut down for once it has restored the handlers it found; the
        handlers it finds here swallow it, so a SIGTERM is a clean stop (exit 0), not a death by signal."""
        import signal
        self._own_process = True
        previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            self.uvicorn.run()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return 0 if self.uvicorn.started else 1

    def start(self, timeout: float = 15.0) -> "RouterServer":
        """Serve on a thread of its own; returns once listening (RuntimeError if it did not come up)."""
        self._thread = threading.Thread(target=self.uvicorn.run, name=f"router-{self.config.instance()}",
                                        daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._up.wait(0.05):
            if not self._thread.is_alive():
                self._thread = None
                raise RuntimeError("the router did not start (see the log)")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the router did not start within {timeout:g} s")
        return self

    def stop(self, timeout: float = 15.0) -> None:
        """Stop serving (graceful: connections closed, stores closed) and join the thread.

        If the graceful stop takes longer than ``timeout``, uvicorn is told to force its exit; a thread still
        alive after another ``timeout`` raises RuntimeError with the thread's stack (a stop that hangs says
        where)."""
        self.uvicorn.should_exit = True
        thread, self._thread = self._thread, None
        if thread is None:
            return
        thread.join(timeout)
        if thread.is_alive():
            log.error("router %s: not stopped within %g s; forcing the exit; its thread is at:\n%s\n"
                      "its tasks:\n%s", self.config.instance(), timeout, _stack(thread), self._tasks())
            self.uvicorn.force_exit = True
            thread.join(timeout)
        if thread.is_alive():
            raise RuntimeError(f"router {self.config.instance()}: its thread did not end within {2 * timeout:g} s "
                               f"of the stop; it is at:\n{_stack(thread)}\nits tasks:\n{self._tasks()}")

    def _tasks(self) -> str:
        """The stacks of the router loop's tasks (asked on the loop, at most 2 s)."""
        loop = self.uvicorn.loop

        async def dump() -> str:
            out = io.StringIO()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.print_stack(limit=12, file=out)
            return out.getvalue()

        if loop is None or loop.is_closed():
            return "(no loop)"
        try:
            return asyncio.run_coroutine_threadsafe(dump(), loop).result(2.0)
        except Exception as exc:  # a loop that does not answer says so
            return f"(the loop did not answer: {exc!r})"


def _stack(thread: threading.Thread) -> str:
    frame = sys._current_frames().get(thread.ident or -1)
    return "".join(traceback.format_stack(frame)) if frame is not None else "(no frame)"
