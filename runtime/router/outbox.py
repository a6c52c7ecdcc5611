"""Writing frames to one websocket peer, in order, after what they vouch for is durable.

Every connection (edge or client) has one :class:`Outbox`: a queue of frames and one writer task on the
router's loop. Callers :meth:`~Outbox.put` and never wait. Before each batch the writer awaits the
``barrier`` (store and audit flush): a command frame never leaves before its SENT row is committed, a status
never before its state. Frames go out as msgpack, or as JSON text once the peer has spoken JSON. A peer
that lets more than ``limit`` frames pile up is too slow: it is disconnected (close 1013) instead of growing
the router's memory.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from typing import Any, Awaitable, Callable

import msgpack
from pydantic import BaseModel

from protocols.edge.wire import encode

from .tasks import stop_tasks

__all__ = ["Outbox", "Encoded"]

log = logging.getLogger(__name__)


class Encoded:
    """A frame encoded at most once per form (msgpack, JSON), however many peers it goes to. The frame is a
    wire model, or the plain dict of one (what ``model_dump(mode="json", exclude_none=True)`` would give:
    the router builds its status frames that way, each field taken from a record it has validated)."""

    __slots__ = ("frame", "_binary", "_text")

    def __init__(self, frame: BaseModel | dict[str, Any]) -> None:
        self.frame = frame
        self._binary: bytes | None = None
        self._text: str | None = None

    def get(self, text: bool) -> bytes | str:
        if text:
            if self._text is None:
                self._text = json.dumps(self.frame, separators=(",", ":")) if isinstance(self.frame, dict) \
                    else encode(self.frame, text=True)  # type: ignore[assignment]
            return self._text  # type: ignore[return-value]
        if self._binary is None:
            self._binary = msgpack.packb(self.frame, use_bin_type=True) if isinstance(self.frame, dict) \
                else encode(self.frame)  # type: ignore[assignment]
        return self._binary  # type: ignore[return-value]


class Outbox:
    """The frames waiting for one peer (see the module docstring)."""

    def __init__(self, ws: Any, barrier: Callable[[], Awaitable[None]], limit: int, name: str) -> None:
        self.ws = ws
        self.barrier = barrier
        self.limit = limit
        self.name = name
        #: Answer in JSON text (the peer sent text frames).
        self.text = False
        self._queue: deque[Encoded] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing: tuple[int, str] | None = None
        self.closed = False
        self.sent = 0

    def start(self) -> "Outbox":
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"outbox-{self.name}")
        return self

    def put(self, frame: BaseModel | dict[str, Any] | Encoded) -> bool:
        """Queue a frame; False if the connection is closing or closed."""
        if self.closed or self._closing is not None:
            return False
        if len(self._queue) >= self.limit:
            log.warning("%s: %d frames waiting; the peer is too slow and is disconnected", self.name,
                        len(self._queue))
            self.close_soon(1013, "too slow: frames piled up")
            return False
        self._queue.append(frame if isinstance(frame, Encoded) else Encoded(frame))
        self._wake.set()
        return True

    def __len__(self) -> int:
        return len(self._queue)

    async def _run(self) -> None:
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                if self._queue:
                    await self.barrier()
                    while self._queue:
                        data = self._queue.popleft().get(self.text)
                        if isinstance(data, str):
                            await self.ws.send_text(data)
                        else:
                            await self.ws.send_bytes(data)
                        self.sent += 1
                if self._closing is not None:
                    code, reason = self._closing
                    await self.ws.close(code, reason)
                    return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the peer is gone (disconnect, reset): the receive side ends the connection
            log.debug("%s: send failed: %r", self.name, exc)
        finally:
            self.closed = True
            self._queue.clear()

    def close_soon(self, code: int = 1000, reason: str = "") -> None:
        """Send what is queued, then close the websocket with ``code``."""
        if self._closing is None and not self.closed:
            self._closing = (code, reason[:120])
            self._wake.set()

    async def aclose(self, code: int = 1000, reason: str = "", timeout: float = 2.0) -> None:
        """:meth:`close_soon` and wait (bounded) for the writer to finish."""
        self.close_soon(code, reason)
        task = self._task
        if task is None or task.done():
            return
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout)
        except TimeoutError:
            task.cancel()

    async def stop(self) -> None:
        """Stop the writer at once (the connection has ended)."""
        self.closed = True
        if self._task is not None:
            await stop_tasks([self._task])
