"""The registry of the edges connected to this router instance: edge_id -> its one live connection.

An :class:`EdgeConn` is one edge websocket: its outbox, what its hello said, whether its resume is done
(``ready``: until then new commands wait in the queue, so the replay and new commands go out in seq order),
and its pump (the hub's task that sends its queued commands). A reconnecting edge replaces its old
connection: :meth:`EdgeRegistry.put` returns the old one for the hub to close, and :meth:`EdgeRegistry.remove`
only removes the connection it is given, so the old connection's end never unregisters the new one.
Used on the router's loop only.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Iterator

from protocols.edge.wire import Hello

from .outbox import Outbox

__all__ = ["EdgeConn", "EdgeRegistry"]


class EdgeConn:
    """One connected edge (see the module docstring)."""

    def __init__(self, edge_id: str, ws: Any, outbox: Outbox, remote: str,
                 connected_at: float | None = None) -> None:
        self.edge_id = edge_id
        self.ws = ws
        self.outbox = outbox
        self.remote = remote
        #: when its handshake was let through (the handshake limit counts at that moment)
        self.connected_at = time.time() if connected_at is None else connected_at
        self.last_seen = self.connected_at
        self.hello: Hello | None = None
        self.ready = False
        #: The highest seq this connection's pump has looked at.
        self.cursor = 0
        #: Held while commands are being sent to this edge (the resume, each pump round).
        self.lock = asyncio.Lock()
        self.wake = asyncio.Event()
        self.pump: asyncio.Task[None] | None = None
        self.closed = False
        #: Ids whose final acks are stored and not yet confirmed to the edge (one ``confirm`` frame per loop
        #: turn carries them all; see Hub.on_ack).
        self.confirms: list[str] = []

    def __repr__(self) -> str:
        return f"<EdgeConn {self.edge_id} from {self.remote}>"


class EdgeRegistry:
    """edge_id -> the live :class:`EdgeConn` (see the module docstring)."""

    def __init__(self) -> None:
        self._conns: dict[str, EdgeConn] = {}

    def get(self, edge_id: str) -> EdgeConn | None:
        return self._conns.get(edge_id)

    def put(self, conn: EdgeConn) -> EdgeConn | None:
        """Register ``conn``; returns the connection it replaces, if any."""
        old = self._conns.get(conn.edge_id)
        self._conns[conn.edge_id] = conn
        return old if old is not conn else None

    def remove(self, conn: EdgeConn) -> bool:
        """Unregister ``conn`` if it is still the edge's connection."""
        if self._conns.get(conn.edge_id) is conn:
            del self._conns[conn.edge_id]
            return True
        return False

    def ids(self) -> list[str]:
        return list(self._conns)

    def __iter__(self) -> Iterator[EdgeConn]:
        return iter(list(self._conns.values()))

    def __len__(self) -> int:
        return len(self._conns)

    def __contains__(self, edge_id: object) -> bool:
        return edge_id in self._conns
