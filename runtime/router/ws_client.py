"""The operators' and services' websocket: ``/ws/client``.

The handshake: within the instance's handshake limit (else 429), a JWT in the Authorization header (or, for
browsers, ``?access_token=``). Then the client sends ``submit`` frames (or the bare command JSON), ``subscribe``
(an edge, or none: every edge it may view) and ``cancel``; it gets a ``status`` frame for every state change
of the commands it submitted and of those on the edges it subscribed to, and an ``error`` frame for each
refusal (forbidden, rate_limited with retry_after, invalid, duplicate_id, ...), each audited. Frames from one
connection are handled in the order they came (a later setpoint supersedes an earlier one as sent).
Replies are msgpack, or JSON text once the client has sent text. Runs on the router's loop.
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, WebSocket

from protocols.edge.wire import Cancel, ErrorFrame, Submit, Subscribe, WireError

from .auth import ALL, AuthError
from .clients import ClientConn
from .hub import Refusal
from .outbox import Outbox
from .state import RouterState
from .ws_common import Closed, deny_handshake, read_frame, refuse, remote_of

__all__ = ["router"]

log = logging.getLogger(__name__)
router = APIRouter()


@router.websocket("/ws/client")
async def client_socket(websocket: WebSocket) -> None:
    state: RouterState = websocket.app.state.router
    hub = state.hub
    remote = remote_of(websocket)
    wait = await hub.limits.handshake()
    if wait is not None:
        await deny_handshake(websocket, wait)
        return
    try:
        who = await state.auth.user(websocket.headers.get("authorization"),
                                    websocket.query_params.get("access_token"))
    except AuthError as exc:
        await refuse(websocket, hub.refused(None, Refusal(exc.code, exc.message, exc.status), remote=remote))
        return
    await websocket.accept()
    outbox = Outbox(websocket, hub.barrier, state.config.listen.max_outbox, f"client {who.subject}").start()
    conn = ClientConn(who, websocket, outbox, remote)
    hub.clients.add(conn)
    try:
        while True:
            try:
                frame, text = await read_frame(websocket)
            except WireError as exc:
                outbox.put(ErrorFrame(code=exc.code, message=str(exc), command_id=exc.command_id))
                hub.refused(who, Refusal(exc.code, str(exc), 422, exc.command_id))
                continue
            outbox.text = text
            if isinstance(frame, Submit):
                outcome = await hub.submit(who, frame.command, client=conn)
                if outcome.refusal is not None:
                    outbox.put(outcome.refusal.frame())
            elif isinstance(frame, Subscribe):
                if frame.edge_id is None:
                    conn.subscriptions = ALL
                    hub.subscribers_changed()
                elif who.may_view(frame.edge_id):
                    if conn.subscriptions != ALL:
                        conn.subscriptions.add(frame.edge_id)  # type: ignore[union-attr]
                    hub.subscribers_changed()
                else:
                    outbox.put(hub.refused(who, Refusal("forbidden", f"{who.subject} may not view edge "
                                                        f"{frame.edge_id!r}", 403), edge_id=frame.edge_id).frame())
            elif isinstance(frame, Cancel):
                outcome = await hub.cancel(who, frame.command_id)
                if outcome.refusal is not None:
                    outbox.put(outcome.refusal.frame())
            else:
                outbox.put(ErrorFrame(code="unexpected", message=f"a client does not send {frame.type} frames"))
    except Closed:
        pass
    except Exception as exc:  # a dead socket
        log.debug("client %s: %r", who.subject, exc)
    finally:
        hub.clients.remove(conn)
        hub.subscribers_changed()
        await outbox.stop()
