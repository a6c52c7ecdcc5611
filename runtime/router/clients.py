"""Operator and service connections, and which status frames each of them gets.

A :class:`ClientConn` is one authenticated client websocket. It gets the status of every command it
submitted itself, and, after a ``subscribe``, of every command on the subscribed edge (``edge_id`` None:
every edge it may view). Whatever it subscribes to, it only ever sees edges its token lets it view.
:class:`ClientHub` fans each status out (encoded once per form, whatever the number of clients). Used on the
router's loop only.
"""

from __future__ import annotations

from typing import Any

from .auth import ALL, Principal
from .outbox import Encoded, Outbox
from .states import FINAL

__all__ = ["ClientConn", "ClientHub"]


class ClientConn:
    """One operator or service websocket."""

    def __init__(self, principal: Principal, ws: Any, outbox: Outbox, remote: str) -> None:
        self.principal = principal
        self.ws = ws
        self.outbox = outbox
        self.remote = remote
        #: Subscribed edges, or ALL (every edge the token may view).
        self.subscriptions: set[str] | str = set()

    def wants(self, edge_id: str) -> bool:
        if self.subscriptions == ALL or edge_id in self.subscriptions:
            return self.principal.may_view(edge_id)
        return False


class ClientHub:
    """The connected clients and the routing of status frames to them."""

    def __init__(self) -> None:
        self.conns: set[ClientConn] = set()
        #: command id -> the connection that submitted it (until the command is final)
        self._origin: dict[str, ClientConn] = {}

    def add(self, conn: ClientConn) -> None:
        self.conns.add(conn)

    def remove(self, conn: ClientConn) -> None:
        self.conns.discard(conn)
        for cid in [c for c, owner in self._origin.items() if owner is conn]:
            del self._origin[cid]

    def submitted(self, command_id: str, conn: ClientConn) -> None:
        """``conn`` submitted ``command_id``: it gets that command's statuses."""
        self._origin[command_id] = conn

    def forget(self, command_id: str) -> None:
        """No more statuses will come for ``command_id`` (a TIMED_OUT command that was closed)."""
        self._origin.pop(command_id, None)

    def deliver(self, status: dict[str, Any]) -> int:
        """Send a status frame (the dict of one: see :class:`~runtime.router.outbox.Encoded`) to every client
        that should see it; how many got it."""
        frame = Encoded(status)
        cid, state, edge_id = status["command_id"], status["status"], status["edge_id"]
        # a TIMED_OUT command may still get a late ack: its submitter keeps hearing of it until it is closed
        last = state in FINAL and state != "TIMED_OUT"
        origin = self._origin.pop(cid, None) if last else self._origin.get(cid)
        sent = 0
        if origin is not None and origin in self.conns:
            sent += origin.outbox.put(frame)
        for conn in self.conns:
            if conn is not origin and conn.wants(edge_id):
                sent += conn.outbox.put(frame)
        return sent
