"""What the two websocket endpoints share: the handshake limit, refusing a peer with an error frame, and
reading one frame.

A handshake over this instance's limit is denied before it is accepted: HTTP 429 with ``Retry-After`` (the
ASGI websocket.http.response extension, which uvicorn has), so a reconnect storm costs little. A refused
credential is accepted, answered with one ``error`` frame (JSON text, readable by any client) and closed with
1008 (policy violation): the peer learns exactly why instead of seeing a bare 403. Runs on the router's loop.
"""

from __future__ import annotations

import math
from typing import Any

from fastapi import WebSocket
from fastapi.responses import JSONResponse

from protocols.edge.wire import ErrorFrame, decode, encode

from .hub import Refusal

__all__ = ["remote_of", "deny_handshake", "refuse", "read_frame", "Closed"]


class Closed(Exception):
    """The peer has gone (a disconnect message)."""

    def __init__(self, code: int | None) -> None:
        self.code = code
        super().__init__(f"closed ({code})")


def remote_of(ws: WebSocket) -> str:
    return f"{ws.client.host}:{ws.client.port}" if ws.client else "?"


async def deny_handshake(ws: WebSocket, retry_after: float) -> None:
    """Answer the handshake with 429 + Retry-After (or a plain 403 where the server lacks the extension)."""
    body = {"code": "rate_limited", "message": f"too many websocket handshakes on this router; retry after "
            f"{retry_after:g} s", "retry_after": retry_after}
    if "websocket.http.response" in ws.scope.get("extensions", {}):
        await ws.send_denial_response(JSONResponse(body, status_code=429,
                                                   headers={"Retry-After": str(max(1, math.ceil(retry_after)))}))
    else:
        await ws.close(1013)


async def refuse(ws: WebSocket, refusal: Refusal, *, accepted: bool = False) -> None:
    """Accept (unless already), send one error frame, close with 1008."""
    if not accepted:
        await ws.accept()
    try:
        await ws.send_text(encode(refusal.frame(), text=True))  # type: ignore[arg-type]
        await ws.close(1008, refusal.message[:120])
    except Exception:  # the peer left first
        pass


async def read_frame(ws: WebSocket) -> tuple[Any, bool]:
    """The next frame (decoded, validated: WireError if not) and whether it came as text; :class:`Closed`
    when the peer has gone."""
    message = await ws.receive()
    if message["type"] == "websocket.disconnect":
        raise Closed(message.get("code"))
    text = message.get("text")
    if text is not None:
        return decode(text), True
    return decode(message.get("bytes") or b""), False


def error_frame(code: str, message: str, command_id: str | None = None) -> ErrorFrame:
    return ErrorFrame(code=code, message=message, command_id=command_id)
