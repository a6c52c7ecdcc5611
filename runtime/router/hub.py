"""The hub: where a command is checked, queued, sent, acknowledged, timed out and reported.

It holds the router's parts together: the store (the durable queue and each command's state), the audit
log, the rate limits, the registry of connected edges, the client hub and the fleet. The websocket and REST
handlers only authenticate and decode; everything a command goes through is here, once.

* :meth:`Hub.submit`: may the user control the edge; within the limits; does the command fit the edge's
  published capabilities; then it is put in the store (QUEUED, the edge's next seq; duplicates and reused ids
  are decided there) and routed: to the local edge's pump, to the owning instance (fleet), or it waits.
* The pump of each connected edge (one task per connection) sends the edge's QUEUED commands in seq order:
  QUEUED -> SENT (compare-and-set, and in a fleet only by the instance that owns the edge), then the frame,
  with ``expiry_sec`` recomputed to the time left; the outbox commits the SENT row before the frame leaves.
* :meth:`Hub.attach`: a reconnected edge gets ``welcome`` (resume_after = its last_seq, pending = the seqs it
  should re-send acks for), then every open command it has not journaled, in order, then the pump starts.
* :meth:`Hub.on_ack`: the ack moves the command (:func:`~runtime.router.states.next_state`); a late one after
  TIMED_OUT becomes *_LATE or is recorded as it is; nothing is ever sent again because of an ack.
* The sweeper acts on deadlines: QUEUED past its expiry -> EXPIRED, no ack in ``ack_timeout_s`` -> TIMED_OUT.

Every state change is one audit row and one status frame (to the submitter until the command is closed, to
subscribers, and through the fleet to the other instances' clients). Everything here runs on the router's loop
(uvicorn's).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from protocols.edge.wire import (VERSION, AckFrame, Cancel, Confirm, EdgeCommand, ErrorFrame, Hello, Welcome,
                                 WireError)

from .audit import AuditLog, AuditRow
from .auth import Principal
from .clients import ClientConn, ClientHub
from .config import RouterConfig
from .edges import EdgeDirectory
from .fleet import Fleet
from .ratelimit import RateLimits
from .registry import EdgeConn, EdgeRegistry
from .states import (ACCEPTED, ACK_STATE, DELIVERED, FINAL, QUEUED, SENT, TIMED_OUT, CommandRecord, next_state,
                     payload_digest)
from .store import Store
from .tasks import stop_tasks
from .validate import check_command

__all__ = ["Hub", "SubmitOutcome", "Refusal"]

log = logging.getLogger(__name__)
_STATES = (QUEUED, SENT, DELIVERED, ACCEPTED, TIMED_OUT)
_second: list[Any] = [None, ""]


def _now_iso() -> str:
    """:func:`~protocols.edge.wire.now_iso` for the status frames, the date and time formatted once a second."""
    t = time.time()
    whole = int(t)
    if _second[0] != whole:
        _second[0], _second[1] = whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
    return f"{_second[1]}.{int((t - whole) * 1000):03d}Z"
#: ack status -> {state it may meet: the state it moves the command to} (from next_state, once)
_MOVES = {ack: {s: n for s in _STATES if (n := next_state(s, ack)) is not None} for ack in ACK_STATE}


@dataclass
class Refusal:
    """Why a request was refused: the error frame's code and message, the HTTP status, retry_after."""

    code: str
    message: str
    http: int = 400
    command_id: str | None = None
    retry_after: float | None = None

    def frame(self) -> ErrorFrame:
        return ErrorFrame(code=self.code, message=self.message, command_id=self.command_id,
                          retry_after=self.retry_after)

    def body(self) -> dict[str, Any]:
        return self.frame().model_dump(mode="json", exclude_none=True, exclude={"v", "type"})


@dataclass
class SubmitOutcome:
    record: CommandRecord | None = None
    refusal: Refusal | None = None
    duplicate: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


class Hub:
    """The command flow of one router instance (see the module docstring)."""

    def __init__(self, config: RouterConfig, *, store: Store, audit: AuditLog, limits: RateLimits, fleet: Fleet,
                 clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.store = store
        self.audit = audit
        self.limits = limits
        self.fleet = fleet
        self.clock = clock
        self.instance = fleet.instance
        self.ack_timeout = config.ack_timeout_s
        self.registry = EdgeRegistry()
        self.clients = ClientHub()
        self.edges = EdgeDirectory(store, self.instance)
        self._tasks: list[asyncio.Task[None]] = []
        self.started_at = self.clock()

    # ---- life

    async def start(self) -> None:
        """Load what the store knows and start the sweeper and the housekeeping (on the running loop)."""
        await self.edges.load()
        if self.config.restart_grace_s > 0:
            grace = self.ack_timeout + self.config.restart_grace_s
            extended = await self.store.extend_in_flight(self.clock() + grace)
            if extended:
                log.info("%d command(s) were in flight when the router stopped: their edges have %g s to "
                         "reconnect", extended, grace)
        await self.store.flush()
        await self.fleet.start(self)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._sweeper(), name="router-sweeper"),
                       loop.create_task(self._housekeeping(), name="router-housekeeping")]

    async def stop(self) -> None:
        """Close every connection (1001), stop the tasks and make everything durable."""
        await stop_tasks(self._tasks)
        self._tasks = []
        for conn in self.registry:
            await conn.outbox.aclose(1001, "router shutting down", timeout=1.0)
        for client in list(self.clients.conns):
            await client.outbox.aclose(1001, "router shutting down", timeout=1.0)
        await self.fleet.stop()
        await self.edges.save_dirty()
        await self.barrier()

    async def barrier(self) -> None:
        """Make every store write and audit row so far durable (the outboxes call it before sending)."""
        await self.store.flush()
        await self.audit.flush()

    # ---- audit and status

    def _audit(self, kind: str, status: str, rec: CommandRecord | None = None, *, user: str | None = None,
               detail: str | None = None, payload: str | None = None, command_id: str | None = None,
               edge_id: str | None = None, at: float | None = None) -> None:
        self.audit.record(AuditRow(
            at=self.clock() if at is None else at, kind=kind, status=status,
            command_id=rec.command_id if rec else command_id,
            edge_id=rec.edge_id if rec else edge_id,
            user_id=user if user is not None else (rec.user if rec else None), detail=detail,
            seq=rec.seq if rec else None, instance=self.instance, payload=payload))

    def _status(self, rec: CommandRecord, error: str | None = None) -> dict[str, Any]:
        """A status frame, as the dict :class:`~protocols.edge.wire.Status` dumps to: every field comes from a
        validated record, and building the model again cost more than all the rest of a status."""
        frame: dict[str, Any] = {"v": VERSION, "type": "status", "command_id": rec.command_id,
                                 "edge_id": rec.edge_id, "status": rec.state, "at": _now_iso()}
        for key, value in (("error", error or rec.error), ("source", rec.user or None),
                           ("executed_at", rec.executed_at)):
            if value is not None:
                frame[key] = value
        return frame

    def _notify(self, rec: CommandRecord, error: str | None = None) -> None:
        status = self._status(rec, error)
        self.clients.deliver(status)
        self.fleet.publish_status(status, rec.origin)

    def refused(self, principal: Principal | None, refusal: Refusal, *, edge_id: str | None = None,
                command_id: str | None = None, remote: str | None = None) -> Refusal:
        """Audit a refusal (kind ``refused``) and hand it back for the error frame / HTTP answer."""
        detail = f"{refusal.code}: {refusal.message}" + (f" (from {remote})" if remote else "")
        self._audit("refused", "REFUSED", user=principal.subject if principal else None, detail=detail,
                    command_id=command_id or refusal.command_id, edge_id=edge_id)
        return refusal

    def _deadline(self, state: str, rec: CommandRecord, now: float) -> float | None:
        if state == SENT:
            return now + self.ack_timeout
        if state in (DELIVERED, ACCEPTED):
            return rec.expires_at + self.ack_timeout
        if state == TIMED_OUT:
            return rec.expires_at if rec.expires_at > now else None
        if state == QUEUED:
            return rec.expires_at
        return None

    async def _move(self, command_id: str, to: str, allowed: frozenset[str], rec: CommandRecord, *,
                    error: str | None = None, executed_at: str | None = None, sent: bool = False,
                    owner: str | None = None) -> CommandRecord | None:
        """One state change: compare-and-set in the store, then its audit row and its status frame."""
        now = self.clock()
        deadline = self._deadline(to, rec, now)
        close = True if to == TIMED_OUT and deadline is None else None
        moved, changed = await self.store.transition(command_id, to, allowed=allowed, now=now, deadline=deadline,
                                                     error=error, executed_at=executed_at, sent=sent, close=close,
                                                     owner=owner)
        if not changed or moved is None:
            return None
        self._audit("state", to, moved, detail=error)
        self._notify(moved)
        if close:   # TIMED_OUT past its expiry, closed at once: no sweep will close it, so forget its submitter
            self.clients.forget(command_id)
        return moved

    # ---- submit

    async def submit(self, principal: Principal, command: EdgeCommand, *,
                     client: ClientConn | None = None) -> SubmitOutcome:
        """Check, queue and route one command from ``principal`` (see the module docstring)."""
        edge, cid = command.target.edge_id, command.command_id
        if not principal.may_control(edge):
            why = "may only view" if principal.may_view(edge) else "may not control"
            return SubmitOutcome(refusal=self.refused(principal, Refusal(
                "forbidden", f"{principal.subject} {why} edge {edge!r} (token claim can_control)", 403, cid),
                edge_id=edge))
        over = await self.limits.submit(principal.subject, edge)
        if over is not None:
            which, wait = over
            limit = self.config.limits.user if which == "user" else self.config.limits.edge
            name = f"user {principal.subject}" if which == "user" else f"edge {edge}"
            return SubmitOutcome(refusal=self.refused(principal, Refusal(
                "rate_limited", f"rate limit of {name} ({limit}) reached; retry after {wait:g} s", 429, cid, wait),
                edge_id=edge))
        try:
            check_command(command, await self.edges.capabilities_of(edge))
        except WireError as exc:
            refusal = Refusal(exc.code, str(exc), 422, cid)
            return SubmitOutcome(refusal=self.refused(principal, refusal, edge_id=edge))
        now = self.clock()
        stored = command if command.source else command.model_copy(update={"source": principal.subject})
        expiry = command.expiry_sec if command.expiry_sec is not None else self.config.default_expiry_s
        result = await self.store.put(stored, user=principal.subject, origin=self.instance, now=now,
                                      expires_at=now + expiry, digest=payload_digest(stored))
        rec = result.record
        if result.outcome == "conflict":
            return SubmitOutcome(refusal=self.refused(principal, Refusal(
                "duplicate_id", f"command id {cid!r} was already used for a different command (edge "
                f"{rec.edge_id}, seq {rec.seq}, {rec.state}); use a new id", 409, cid), edge_id=edge))
        if result.outcome == "duplicate":
            self._audit("duplicate", rec.state, rec, user=principal.subject,
                        detail="the same command id and payload again: not queued or sent again")
            if client is not None:
                if not rec.final:
                    self.clients.submitted(cid, client)
                client.outbox.put(self._status(rec))
            return SubmitOutcome(record=rec, duplicate=True)
        self._audit("submit", QUEUED, rec, payload=stored.model_dump_json(exclude_none=True),
                    detail=f"expires in {expiry:g} s")
        for old in result.superseded:
            self._audit("state", old.state, old, detail=old.error)
            self._notify(old)
        if client is not None:
            self.clients.submitted(cid, client)
        self._notify(rec)
        self._route(rec)
        return SubmitOutcome(record=rec)

    def _route(self, rec: CommandRecord) -> None:
        conn = self.registry.get(rec.edge_id)
        if conn is not None:
            conn.wake.set()
            return
        owner = rec.extra.get("owner")
        if self.fleet.shared and owner and owner != self.instance:
            self.fleet.poke(owner, rec.edge_id)

    async def cancel(self, principal: Principal, command_id: str) -> SubmitOutcome:
        """Cancel a command: at once if it is still QUEUED; else a ``cancel`` goes to the edge, which decides
        (it answers ``cancelled``, or the command finishes as it would have)."""
        rec = await self.store.get(command_id)
        if rec is None:
            return SubmitOutcome(refusal=Refusal("not_found", f"no command {command_id!r}", 404, command_id))
        if not principal.may_control(rec.edge_id):
            return SubmitOutcome(refusal=self.refused(principal, Refusal(
                "forbidden", f"{principal.subject} may not control edge {rec.edge_id!r}", 403, command_id),
                edge_id=rec.edge_id))
        if rec.final:
            return SubmitOutcome(record=rec, refusal=Refusal("already_final", f"command {command_id!r} is already "
                                                             f"{rec.state}", 409, command_id))
        if rec.state == QUEUED:
            moved = await self._move(command_id, "CANCELLED", frozenset({QUEUED}), rec,
                                     error=f"cancelled by {principal.subject} before it was sent")
            if moved is not None:
                return SubmitOutcome(record=moved)
            rec = await self.store.get(command_id) or rec
        conn = self.registry.get(rec.edge_id)
        owner = self.instance if conn is not None else await self.fleet.owner(rec.edge_id)
        reached = "the edge decides" if owner else "the edge is offline: the cancel could not be sent"
        self._audit("cancel", rec.state, rec, user=principal.subject,
                    detail=f"cancel asked after it was sent; {reached}")
        if conn is not None:
            conn.outbox.put(Cancel(command_id=command_id))
        elif owner:
            self.fleet.cancel(owner, rec.edge_id, command_id)
        return SubmitOutcome(record=rec)

    # ---- edges

    async def attach(self, conn: EdgeConn, hello: Hello) -> None:
        """Resume a connected edge (welcome, replay in seq order) and start its pump."""
        conn.hello = hello
        await self.edges.connected(conn.edge_id, conn.remote, hello.software, hello.capabilities)
        self._audit("edge", "CONNECTED", edge_id=conn.edge_id, user=f"edge:{conn.edge_id}", at=conn.connected_at,
                    detail=f"from {conn.remote}, last_seq {hello.last_seq} (at the handshake)")
        async with conn.lock:
            await self.store.bump_seq(conn.edge_id, hello.last_seq)
            pending, send = await self.store.resume(conn.edge_id, hello.last_seq)
            conn.outbox.put(Welcome(edge_id=conn.edge_id, resume_after=hello.last_seq, pending=pending))
            for rec in send:
                conn.cursor = max(conn.cursor, rec.seq)
                await self._send(conn, rec)
            conn.ready = True
        conn.pump = asyncio.get_running_loop().create_task(self._pump(conn), name=f"pump-{conn.edge_id}")
        conn.wake.set()

    async def detach(self, conn: EdgeConn, why: str) -> None:
        """The edge's connection has ended: stop its pump and outbox, unregister it (if it is still the one)."""
        conn.closed = True
        conn.wake.set()
        if conn.pump is not None:
            conn.pump.cancel()
            await asyncio.gather(conn.pump, return_exceptions=True)
        await conn.outbox.stop()
        if self.registry.remove(conn):
            await self.fleet.release(conn.edge_id)
            await self.edges.disconnected(conn.edge_id)
        if conn.hello is not None:
            self._audit("edge", "DISCONNECTED", edge_id=conn.edge_id, user=f"edge:{conn.edge_id}", detail=why)

    async def _pump(self, conn: EdgeConn) -> None:
        """The edge's pump: whenever woken (a command was queued, a poke came) and, in a fleet, every poll_s,
        send its QUEUED commands in seq order (one store call moves them all to SENT, or EXPIRED)."""
        poll = self.config.redis.poll_s if self.fleet.shared and self.config.redis else None
        while not conn.closed:
            if poll is None:
                await conn.wake.wait()
            else:
                try:
                    await asyncio.wait_for(conn.wake.wait(), poll)
                except TimeoutError:
                    pass
            conn.wake.clear()
            if conn.closed:
                return
            try:
                async with conn.lock:
                    while not conn.closed:
                        now = self.clock()
                        moved, last = await self.store.claim_queued(
                            conn.edge_id, conn.cursor, now=now, ack_deadline=now + self.ack_timeout,
                            owner=self.instance if self.fleet.shared else None)
                        conn.cursor = max(conn.cursor, last)
                        for rec, tag in moved:
                            self._audit("state", rec.state, rec, detail=rec.error if tag == "expired" else None)
                            self._notify(rec)
                            if tag == "sent":
                                self._frame(conn, rec, rec.expires_at - now)
                        if len(moved) < 500:
                            break
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("pump of edge %s failed; retrying at the next wake", conn.edge_id)

    def _frame(self, conn: EdgeConn, rec: CommandRecord, left: float) -> None:
        """The command frame for ``rec`` (the dict :class:`~protocols.edge.wire.CommandFrame` dumps to), with
        ``expiry_sec`` the time it has left."""
        wire = rec.extra.get("wire")
        if wire is None:
            wire = rec.extra["wire"] = rec.command.model_dump(mode="json", exclude_none=True)
        conn.outbox.put({"v": VERSION, "type": "command", "seq": rec.seq,
                         "command": {**wire, "expiry_sec": max(0.001, round(left, 3))}})

    async def _send(self, conn: EdgeConn, rec: CommandRecord) -> None:
        """Send one open command to ``conn``: QUEUED -> SENT (or, for one in flight the edge has not journaled,
        again in its state); EXPIRED instead when its time is up."""
        now = self.clock()
        left = rec.expires_at - now
        if left <= 0:
            await self._move(rec.command_id, "EXPIRED", frozenset({rec.state}), rec,
                             error="expired before it could be sent")
            return
        if rec.state == QUEUED:
            moved = await self._move(rec.command_id, SENT, frozenset({QUEUED}), rec, sent=True,
                                     owner=self.instance if self.fleet.shared else None)
        else:
            again, changed = await self.store.transition(
                rec.command_id, rec.state, allowed=frozenset({rec.state}), now=now,
                deadline=self._deadline(rec.state, rec, now), sent=True)
            moved = again if changed else None
            if moved is not None:
                self._audit("resend", moved.state, moved, detail=f"sent again (send {moved.sends}): the edge "
                            f"had not journaled seq {moved.seq}")
        if moved is not None:
            self._frame(conn, moved, left)

    async def on_ack(self, conn: EdgeConn, frame: AckFrame) -> None:
        """An ack from ``conn``'s edge (see the module docstring): one store call applies it."""
        cid = frame.command_id
        outcome, rec = await self.store.ack(cid, conn.edge_id, _MOVES[frame.status], now=self.clock(),
                                            ack_timeout=self.ack_timeout, error=frame.error,
                                            executed_at=frame.executed_at)
        if outcome == "ok" and rec is not None:
            self._audit("state", rec.state, rec, detail=frame.error)
            self._notify(rec)
            self._confirm(conn, rec)
            return
        if outcome in ("missing", "foreign") or rec is None:
            self._audit("ack", "UNKNOWN", command_id=cid, edge_id=conn.edge_id, user=f"edge:{conn.edge_id}",
                        detail=f"ack {frame.status!r} for a command the router does not have for this edge")
            conn.outbox.put(ErrorFrame(code="unknown_command", command_id=cid,
                                       message=f"no command {cid!r} for edge {conn.edge_id}"))
            return
        late = rec.state == TIMED_OUT
        detail = (f"late ack {frame.status!r} after TIMED_OUT: recorded, state unchanged" if late else
                  f"ack {frame.status!r} in state {rec.state}: nothing to change")
        if frame.error:
            detail += f" (error: {frame.error})"
        self._audit("ack", rec.state, rec, detail=detail)
        if late:
            self._notify(rec, error=detail)
        self._confirm(conn, rec)

    def _confirm(self, conn: EdgeConn, rec: CommandRecord) -> None:
        """Tell the edge, once the store has it durably, that the final ack of ``rec`` is here, so that its
        log can let the command go (without this only the next ``welcome`` did, and a long session kept every
        command). The ids of one loop turn go in one ``confirm`` frame; the outbox makes the store durable
        before it sends anything."""
        if rec.state not in FINAL or conn.closed:
            return
        conn.confirms.append(rec.command_id)
        if len(conn.confirms) == 1:
            asyncio.get_running_loop().call_soon(self._send_confirms, conn)

    @staticmethod
    def _send_confirms(conn: EdgeConn) -> None:
        ids, conn.confirms = conn.confirms, []
        if ids and not conn.closed:
            conn.outbox.put(Confirm(command_ids=ids))

    def subscribers_changed(self) -> None:
        """A client subscribed or left: the fleet learns how many subscribed clients are here."""
        self.fleet.subscribers(sum(1 for c in self.clients.conns if c.subscriptions))

    # ---- fleet events (FleetEvents)

    def local_edges(self) -> list[str]:
        return [c.edge_id for c in self.registry if c.ready]

    def on_poke(self, edge_id: str) -> None:
        conn = self.registry.get(edge_id)
        if conn is not None:
            conn.wake.set()

    def on_kick(self, edge_id: str, by: str) -> None:
        conn = self.registry.get(edge_id)
        if conn is not None and by != self.instance:
            log.info("edge %s connected to router %s: dropping its connection here", edge_id, by)
            conn.closed = True
            conn.outbox.close_soon(4001, f"connected to router instance {by}")

    def on_cancel(self, edge_id: str, command_id: str) -> None:
        conn = self.registry.get(edge_id)
        if conn is not None:
            conn.outbox.put(Cancel(command_id=command_id))

    def on_status(self, status: dict[str, Any]) -> None:
        self.clients.deliver(status)

    # ---- deadlines and housekeeping

    async def sweep(self) -> int:
        """Act on every passed deadline once; how many commands changed."""
        now = self.clock()
        changed = 0
        for rec in await self.store.due(now):
            if rec.state == QUEUED:
                moved = await self._move(rec.command_id, "EXPIRED", frozenset({QUEUED}), rec,
                                         error=f"expired in the queue after {now - rec.submitted_at:.1f} s "
                                               "(the edge did not take it in time)")
            elif rec.state == SENT:
                moved = await self._move(rec.command_id, TIMED_OUT, frozenset({SENT}), rec,
                                         error=f"no ack within {self.ack_timeout:g} s")
            elif rec.state in (DELIVERED, ACCEPTED):
                moved = await self._move(rec.command_id, TIMED_OUT, frozenset({rec.state}), rec,
                                         error=f"no final ack by {self.ack_timeout:g} s after the command expired")
            elif rec.state == TIMED_OUT:
                await self.store.transition(rec.command_id, TIMED_OUT, allowed=frozenset({TIMED_OUT}), now=now,
                                            deadline=None, close=True)
                self.clients.forget(rec.command_id)
                continue
            else:
                moved = None
            changed += moved is not None
        return changed

    async def _sweeper(self) -> None:
        period = max(0.02, min(1.0, self.ack_timeout / 5))
        while True:
            await asyncio.sleep(period)  # the sweep period
            try:
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("sweep failed; retrying")

    async def _housekeeping(self) -> None:
        last_purge = time.monotonic()
        while True:
            await asyncio.sleep(2.0)  # the housekeeping period
            try:
                self.limits.expire()
                await self.edges.save_dirty()
                if time.monotonic() - last_purge > 60:
                    last_purge = time.monotonic()
                    purged = await self.store.purge(self.clock() - self.config.store.retention_s)
                    if purged:
                        log.info("purged %d final command(s) older than the retention", purged)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("housekeeping failed; retrying")
