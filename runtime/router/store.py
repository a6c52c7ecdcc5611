"""What the router needs from its command store: the durable queue of every edge, and each command's state.

Two implementations: :mod:`.store_sqlite` (one router; the default) and :mod:`.store_redis` (a fleet: one
Redis Stream per edge, a deadline index, compare-and-set transitions in Lua). Both keep, per command, the
:class:`~runtime.router.states.CommandRecord`, and per edge a sequence counter: a command's ``seq`` is given
when it is put, so seq order is queue order.

Every state change is a compare-and-set (:meth:`Store.transition` names the states it may leave), so two
routers (or the sweeper and an ack on one router) never both move a command. A command is *open* while the
edge may still hear of it or answer for it: QUEUED, in flight, or TIMED_OUT until it expires; open commands
are what a reconnecting edge is replayed and told about (:meth:`Store.resume`).

All methods are coroutines run on the router's loop.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Literal

from protocols.edge.wire import EdgeCommand

from .states import ACCEPTED, DELIVERED, QUEUED, SENT, CommandRecord

__all__ = ["Store", "PutResult"]


@dataclass
class PutResult:
    """What :meth:`Store.put` did: ``new`` (``record`` is the new command, ``superseded`` the queued ones it
    replaced), ``duplicate`` (the same id with the same payload: ``record`` is the existing command) or
    ``conflict`` (the same id with another payload: ``record`` is the existing command)."""

    outcome: Literal["new", "duplicate", "conflict"]
    record: CommandRecord
    superseded: list[CommandRecord] = field(default_factory=list)


class Store(ABC):
    """The command store (see the module docstring)."""

    #: True when several routers share it (owner checks on sends make sense).
    shared = False

    async def open(self) -> None:
        """Create what is missing (tables, scripts)."""

    @abstractmethod
    async def put(self, command: EdgeCommand, *, user: str, origin: str, now: float, expires_at: float,
                  digest: str) -> PutResult:
        """Queue ``command`` (state QUEUED, the edge's next seq) unless its id is known. A command that
        supersedes (not ``system``, ``supersede`` true) makes the QUEUED commands on the same edge and (device,
        channel) SUPERSEDED, except emergencies when it is not one."""

    @abstractmethod
    async def get(self, command_id: str) -> CommandRecord | None:
        """The command with this id, if the store still has it."""

    @abstractmethod
    async def transition(self, command_id: str, to: str, *, allowed: frozenset[str], now: float,
                         deadline: float | None, error: str | None = None, executed_at: str | None = None,
                         sent: bool = False, close: bool | None = None,
                         owner: str | None = None) -> tuple[CommandRecord | None, bool]:
        """Move the command to ``to`` if its state is in ``allowed``: returns (the record as it now is, whether
        it changed). ``sent`` stamps the send time and counts the send; ``close`` (default: ``to`` is final and
        not TIMED_OUT) takes it off the edge's open list; ``owner``: only if that instance owns the edge."""

    @abstractmethod
    async def queued(self, edge_id: str, after_seq: int) -> list[CommandRecord]:
        """The edge's QUEUED commands with seq > ``after_seq``, in seq order."""

    async def claim_queued(self, edge_id: str, after_seq: int, *, now: float, ack_deadline: float,
                           owner: str | None = None,
                           limit: int = 500) -> tuple[list[tuple[CommandRecord, str]], int]:
        """For the edge's pump: each QUEUED command with seq > ``after_seq``, in seq order, moved to SENT (tag
        ``sent``, deadline ``ack_deadline``) or, if its time is up, to EXPIRED (tag ``expired``); nothing when
        ``owner`` does not own the edge. Returns the moved records and the highest seq looked at."""
        out: list[tuple[CommandRecord, str]] = []
        last = after_seq
        for rec in (await self.queued(edge_id, after_seq))[:limit]:
            last = max(last, rec.seq)
            if rec.expires_at <= now:
                moved, changed = await self.transition(rec.command_id, "EXPIRED", allowed=frozenset({QUEUED}),
                                                       now=now, deadline=None,
                                                       error="expired before it could be sent")
                if changed and moved is not None:
                    out.append((moved, "expired"))
                continue
            moved, changed = await self.transition(rec.command_id, SENT, allowed=frozenset({QUEUED}), now=now,
                                                   deadline=ack_deadline, sent=True, owner=owner)
            if changed and moved is not None:
                out.append((moved, "sent"))
            elif moved is not None and moved.state == QUEUED:
                return out, rec.seq - 1   # not the owner: leave the rest to the edge's owner
        return out, last

    async def ack(self, command_id: str, edge_id: str, moves: dict[str, str], *, now: float, ack_timeout: float,
                  error: str | None = None, executed_at: str | None = None) -> tuple[str, CommandRecord | None]:
        """Apply an ack of ``edge_id``: the command moves to ``moves[its state]`` (DELIVERED and ACCEPTED get the
        deadline ``expires_at + ack_timeout``). Returns (``ok``, the record) when it moved, (``same``, the
        record) when its state has no move, (``foreign``, the record) when it is another edge's command, or
        (``missing``, None)."""
        rec = await self.get(command_id)
        if rec is None:
            return "missing", None
        if rec.edge_id != edge_id:
            return "foreign", rec
        to = moves.get(rec.state)
        if to is None:
            return "same", rec
        deadline = rec.expires_at + ack_timeout if to in (DELIVERED, ACCEPTED) else None
        moved, changed = await self.transition(command_id, to, allowed=frozenset({rec.state}), now=now,
                                               deadline=deadline, error=error, executed_at=executed_at)
        return ("ok" if changed else "same"), moved

    @abstractmethod
    async def resume(self, edge_id: str, last_seq: int) -> tuple[list[int], list[CommandRecord]]:
        """For an edge that says it journaled up to ``last_seq``: the seqs it should re-send acks for (open, sent,
        seq <= last_seq) and the commands to send it (QUEUED, or in flight with seq > last_seq), in seq order."""

    @abstractmethod
    async def bump_seq(self, edge_id: str, at_least: int) -> None:
        """Make the edge's next seq greater than ``at_least`` (an edge that remembers more than the store)."""

    @abstractmethod
    async def due(self, now: float, limit: int = 500) -> list[CommandRecord]:
        """Open commands whose deadline has passed (see :mod:`.states`), oldest deadline first."""

    @abstractmethod
    async def extend_in_flight(self, until: float) -> int:
        """After a restart: in-flight commands whose deadline is before ``until`` get ``until`` (how many)."""

    @abstractmethod
    async def save_edge(self, edge_id: str, info: dict[str, Any]) -> None:
        """Remember what an edge published (capabilities, last seen, latest telemetry and site state)."""

    @abstractmethod
    async def load_edges(self) -> dict[str, dict[str, Any]]:
        """Every edge remembered by :meth:`save_edge`."""

    async def load_edge_raw(self, edge_id: str) -> str | None:
        """One edge remembered by :meth:`save_edge`, as the JSON text saved (None: never saved)."""
        import json
        info = (await self.load_edges()).get(edge_id)
        return None if info is None else json.dumps(info)

    @abstractmethod
    async def purge(self, before: float) -> int:
        """Forget final commands last changed before ``before`` (how many)."""

    async def flush(self) -> None:
        """Make every write so far durable (before something leaves that vouches for it)."""

    async def close(self) -> None:
        """Flush and let go of the connection."""
