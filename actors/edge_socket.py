"""EdgeConnection: the edge's persistent WebSocket to the cloud router, on the site's I/O loop.

One coroutine (:meth:`EdgeConnection.run`, posted to the loop by the edge-link actor) connects, reads,
and reconnects by itself, forever, until :meth:`EdgeConnection.stop`:

* the handshake carries ``Authorization: Bearer <credential>``; pings (``ping_interval`` /
  ``ping_timeout``) close a half-open link, which then counts as lost;
* after a lost link (or a refused attempt) it waits ``Backoff.delay(attempt)``: full jitter,
  ``uniform(0, min(cap, base * 2**attempt))``, so that a fleet of edges does not reconnect in step;
  ``attempt`` goes back to 0 once a session got its ``welcome``. A router that says ``retry_after``
  (an ``error`` frame, or a ``Retry-After`` header on a refused handshake) is waited for at least that long;
* every frame it reads is decoded and validated (:func:`protocols.edge.wire.decode`) and handed to
  ``on_frame(conn, frame)``; an undecodable one is answered with an ``error`` frame and skipped.

It knows nothing of commands: the actor decides what to send. ``on_connected(conn)``,
``on_frame(conn, frame)`` and ``on_lost(conn, reason)`` are called on the loop and must only tell the
actor. ``conn`` numbers the sessions, so the actor can tell a late frame of an old session from the
current one. :meth:`send` and :meth:`restart` may be called from any thread: they hop onto the loop,
in call order, and frames for a session that is gone are dropped (whatever must survive is journaled
by the actor and re-sent after the next ``welcome``).
"""

from __future__ import annotations

import asyncio
import logging
import random
from contextlib import suppress
from typing import Any, Callable

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus, WebSocketException

from protocols.edge.wire import ErrorFrame, WireError, decode, encode

log = logging.getLogger(__name__)

__all__ = ["EdgeConnection", "Backoff"]

#: Largest frame the edge accepts (the wire format's own limit).
MAX_FRAME = 1 << 20
_RESTART = object()   # in a session's send queue: close it (after what was queued before) and reconnect


class Backoff:
    """Reconnect delays: exponential with full jitter and a cap (see the module docstring)."""

    def __init__(self, base_s: float, cap_s: float, rng: random.Random | None = None) -> None:
        if not 0 < base_s <= cap_s:
            raise ValueError(f"backoff: need 0 < base_s <= cap_s, got {base_s!r}, {cap_s!r}")
        self.base_s, self.cap_s = base_s, cap_s
        self._rng = rng or random.Random()

    def ceiling(self, attempt: int) -> float:
        """The largest delay of ``attempt`` (0 = the first retry)."""
        return min(self.cap_s, self.base_s * 2 ** min(attempt, 60))

    def delay(self, attempt: int) -> float:
        return self._rng.uniform(0, self.ceiling(attempt))


class EdgeConnection:
    """See the module docstring. Construct it anywhere; :meth:`run` and :meth:`stop` run on ``loop``."""

    def __init__(self, url: str, credential: str, *, loop: asyncio.AbstractEventLoop,
                 on_connected: Callable[[int], None], on_frame: Callable[[int, Any], None],
                 on_lost: Callable[[int, str], None], backoff: Backoff, ping_interval: float | None = 20.0,
                 ping_timeout: float | None = 20.0, open_timeout: float = 10.0, close_timeout: float = 2.0,
                 user_agent: str | None = None) -> None:
        self.url = url
        self._credential = credential
        self._loop = loop
        self._on_connected, self._on_frame, self._on_lost = on_connected, on_frame, on_lost
        self._backoff = backoff
        self._ping_interval, self._ping_timeout = ping_interval, ping_timeout
        self._open_timeout, self._close_timeout = open_timeout, close_timeout
        self._user_agent = user_agent
        self._conn = 0                                   # the last session's number
        self._current: int | None = None                 # the open session's number
        self._ws: ClientConnection | None = None
        self._out: asyncio.Queue[Any] | None = None
        self._wake = asyncio.Event()
        self._restart_now = False
        self._stopping = False
        self._task: asyncio.Task[Any] | None = None
        #: Sessions opened and handshakes attempted (for logs and tests).
        self.sessions = 0
        self.attempts = 0

    # ---- any thread ----------------------------------------------------------------------------
    def send(self, conn: int, frames: list[bytes | str]) -> None:
        """Send ``frames`` on session ``conn`` (dropped when that session is gone). Any thread."""
        try:
            self._loop.call_soon_threadsafe(self._enqueue, conn, list(frames))
        except RuntimeError:  # the loop is closed: the site is stopping
            pass

    def restart(self) -> None:
        """Close the session after what was sent before, and reconnect at once. Any thread."""
        try:
            self._loop.call_soon_threadsafe(self._restart)
        except RuntimeError:
            pass

    # ---- on the loop ---------------------------------------------------------------------------
    def _enqueue(self, conn: int, frames: list[bytes | str]) -> None:
        if conn != self._current or self._out is None:
            log.debug("edge link: %d frame(s) for closed session %d dropped", len(frames), conn)
            return
        for frame in frames:
            self._out.put_nowait(frame)

    def _restart(self) -> None:
        self._restart_now = True
        if self._out is not None:
            self._out.put_nowait(_RESTART)
        else:
            self._wake.set()

    async def run(self) -> None:
        """Connect, read and reconnect until cancelled (see the module docstring). On the I/O loop."""
        self._task = asyncio.current_task()
        attempt = 0
        while not self._stopping:
            connected, welcomed, reason, retry_after = await self._session()
            if self._stopping:
                return
            if welcomed:
                attempt = 0
            if self._restart_now:
                self._restart_now = False
                delay = 0.0
            else:
                delay = max(self._backoff.delay(attempt), retry_after or 0.0)
                attempt += 1
            log.log(logging.WARNING if connected or attempt <= 1 else logging.INFO,
                    "edge link to %s: %s; reconnecting in %.2f s", self.url, reason, delay)
            await self._pause(delay)

    async def _pause(self, delay: float) -> None:
        self._wake.clear()
        with suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._wake.wait()
        self._wake.clear()

    async def _session(self) -> tuple[bool, bool, str, float | None]:
        """One connection: (connected, got a welcome, why it ended, retry_after the router asked for)."""
        connected = welcomed = False
        retry_after: float | None = None
        self.attempts += 1
        try:
            async with connect(self.url, additional_headers={"Authorization": f"Bearer {self._credential}"},
                               ping_interval=self._ping_interval, ping_timeout=self._ping_timeout,
                               open_timeout=self._open_timeout, close_timeout=self._close_timeout,
                               max_size=MAX_FRAME, user_agent_header=self._user_agent) as ws:
                self._conn += 1
                conn = self._conn
                out: asyncio.Queue[Any] = asyncio.Queue()
                self._ws, self._out, self._current = ws, out, conn
                connected = True
                self.sessions += 1
                self._on_connected(conn)
                writer = asyncio.create_task(self._write(ws, out), name=f"edge-link-writer-{conn}")
                try:
                    async for message in ws:
                        try:
                            frame = decode(message)
                        except WireError as exc:
                            log.warning("edge link: undecodable frame from the router (%s: %s)", exc.code, exc)
                            out.put_nowait(encode(ErrorFrame(code=exc.code, message=str(exc),
                                                             command_id=exc.command_id)))
                            continue
                        if frame.type == "welcome":
                            welcomed = True
                        elif frame.type == "error" and frame.retry_after:
                            retry_after = frame.retry_after
                        self._on_frame(conn, frame)
                finally:
                    self._ws, self._out, self._current = None, None, None
                    writer.cancel()
                    await asyncio.gather(writer, return_exceptions=True)
                reason = f"closed by the router ({ws.close_code} {ws.close_reason or ''})".replace(" )", ")")
        except asyncio.CancelledError:
            raise
        except InvalidStatus as exc:
            status = exc.response.status_code
            reason = f"the router refused the handshake (HTTP {status})"
            header = exc.response.headers.get("Retry-After")
            if header is not None and header.strip().isdigit():
                retry_after = float(header.strip())
        except (OSError, TimeoutError, WebSocketException) as exc:
            reason = f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # a bug here must not end the link for good: it reconnects
            log.exception("edge link: session failed")
            reason = f"{type(exc).__name__}: {exc}"
        if connected:
            self._on_lost(self._conn, reason)
        return connected, welcomed, reason, retry_after

    async def _write(self, ws: ClientConnection, out: asyncio.Queue[Any]) -> None:
        """The session's one writer: frames in the order they were queued."""
        while True:
            item = await out.get()
            if item is _RESTART:
                await ws.close(1012, "restart requested")
                return
            await ws.send(item)

    async def stop(self) -> None:
        """Close the session (going away) and end :meth:`run`; bounded. On the I/O loop."""
        self._stopping = True
        self._wake.set()
        ws = self._ws
        if ws is not None:
            with suppress(Exception):
                async with asyncio.timeout(self._close_timeout):
                    await ws.close(1001, "edge stopping")
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait([task], timeout=self._close_timeout + 1)
