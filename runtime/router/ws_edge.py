"""The edges' websocket: ``/ws/edge`` (or ``/ws/edge/{edge_id}``), one persistent connection per edge.

The handshake: within this instance's handshake limit (else 429), an edge credential in the Authorization
header (:meth:`~runtime.router.auth.Authenticator.edge`; the path's edge id, if given, must be the
credential's). Then the edge sends ``hello`` within ``[listen] hello_timeout_s``, naming the same edge; the
connection replaces any older one of that edge (closed with 4000), the instance claims the edge (fleet), and
the hub resumes it (welcome, replay). After that the edge sends ``ack``, ``capabilities``, ``telemetry`` and
``site_state`` frames; anything undecodable or unexpected is answered with an ``error`` frame and the
connection stays up. uvicorn pings the edge every ``ping_interval_s`` and closes a link that stops answering,
which ends this handler and unregisters the edge. Runs on the router's loop.
"""

from __future__ import annotations

import asyncio
import logging
import time

from fastapi import APIRouter, WebSocket

from protocols.edge.wire import AckFrame, Capabilities, ErrorFrame, Hello, SiteState, Telemetry, WireError

from .auth import AuthError
from .hub import Refusal
from .outbox import Outbox
from .registry import EdgeConn
from .state import RouterState
from .ws_common import Closed, deny_handshake, read_frame, refuse, remote_of

__all__ = ["router"]

log = logging.getLogger(__name__)
router = APIRouter()


@router.websocket("/ws/edge")
@router.websocket("/ws/edge/{edge_id}")
async def edge_socket(websocket: WebSocket, edge_id: str | None = None) -> None:
    state: RouterState = websocket.app.state.router
    hub = state.hub
    remote = remote_of(websocket)
    wait = await hub.limits.handshake()
    if wait is not None:
        await deny_handshake(websocket, wait)
        return
    handshake_at = time.time()
    try:
        who = await state.auth.edge(websocket.headers.get("authorization"))
        if edge_id is not None and edge_id != who.edge_id:
            raise AuthError("wrong_edge", f"the credential is for edge {who.edge_id!r}, not {edge_id!r}", 403)
    except AuthError as exc:
        await refuse(websocket, hub.refused(None, Refusal(exc.code, exc.message, exc.status), edge_id=edge_id,
                                            remote=remote))
        return
    assert who.edge_id is not None
    await websocket.accept()
    try:
        hello, text = await asyncio.wait_for(read_frame(websocket), state.config.listen.hello_timeout_s)
    except (TimeoutError, WireError, Closed) as exc:
        if not isinstance(exc, Closed):
            why = str(exc) if isinstance(exc, WireError) else \
                f"no hello within {state.config.listen.hello_timeout_s:g} s"
            await refuse(websocket, hub.refused(who, Refusal("no_hello", why), edge_id=who.edge_id, remote=remote),
                         accepted=True)
        return
    if not isinstance(hello, Hello) or hello.edge_id != who.edge_id:
        refusal = Refusal("no_hello", f"the first frame must be hello, got {getattr(hello, 'type', '?')}") \
            if not isinstance(hello, Hello) else \
            Refusal("wrong_edge", f"the credential is for edge {who.edge_id!r}; hello says {hello.edge_id!r}", 403)
        await refuse(websocket, hub.refused(who, refusal, edge_id=who.edge_id, remote=remote), accepted=True)
        return
    outbox = Outbox(websocket, hub.barrier, state.config.listen.max_outbox, f"edge {who.edge_id}")
    outbox.text = text
    conn = EdgeConn(who.edge_id, websocket, outbox.start(), remote, handshake_at)
    old = hub.registry.put(conn)
    if old is not None:
        old.closed = True
        old.wake.set()
        async with old.lock:  # its pump finishes the command it is sending; the resume below sees it SENT
            pass
        old.outbox.close_soon(4000, "replaced by a newer connection of the same edge")
    why = "closed"
    try:
        await hub.fleet.claim(conn.edge_id)
        await hub.attach(conn, hello)
        while True:
            try:
                frame, _ = await read_frame(websocket)
            except WireError as exc:
                outbox.put(ErrorFrame(code=exc.code, message=str(exc), command_id=exc.command_id))
                continue
            conn.last_seen = time.time()
            if isinstance(frame, AckFrame):
                await hub.on_ack(conn, frame)
            elif isinstance(frame, Telemetry):
                hub.edges.telemetry(conn.edge_id, frame)
            elif isinstance(frame, SiteState):
                hub.edges.site_state(conn.edge_id, frame)
            elif isinstance(frame, Capabilities):
                await hub.edges.capabilities(conn.edge_id, frame)
            elif isinstance(frame, ErrorFrame):
                log.warning("edge %s reports an error: %s: %s", conn.edge_id, frame.code, frame.message)
                hub._audit("edge", "ERROR", edge_id=conn.edge_id, user=f"edge:{conn.edge_id}",
                           command_id=frame.command_id, detail=f"{frame.code}: {frame.message}")
            else:
                outbox.put(ErrorFrame(code="unexpected", message=f"an edge does not send {frame.type} frames"))
    except Closed as exc:
        why = f"closed by the peer ({exc.code})"
    except Exception as exc:  # a send or receive on a dead socket
        why = f"connection lost: {exc!r}"
        log.debug("edge %s: %s", conn.edge_id, why)
    finally:
        await hub.detach(conn, why)
