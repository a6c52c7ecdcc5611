"""EdgeLinkActor: the edge end of the cloud command channel.

It keeps the site's persistent WebSocket to the cloud router (:class:`~actors.edge_socket.EdgeConnection`
on the site's I/O loop), receives commands, carries them out through the site's actors and acks them.
Everything it decides runs in its own thread, one message at a time; it never blocks: the socket lives
on the I/O loop, and every question to another actor is a :class:`~actors.handlers.Request` whose answer
comes back as an :class:`~actors.messages.EdgeReply` message.

A session::

    edge                                         router
    hello(edge_id, last_seq, capabilities)  ->
                                            <-   welcome(resume_after, pending)
    latest ack of each pending seq          ->   (in the order the acks were made)
                                            <-   command(seq, command) ...   (the replay, then live)
    ack delivered / accepted / executed ... ->
    telemetry, site_state                   ->

Rules:

* a command is journaled (``cloud.jnl``, :class:`~runtime.core.cloud_log.CloudLog`) before its
  "delivered" ack is sent, and every ack is journaled before it is sent. Acks made while no session is
  ready (link down, or before the ``welcome``) are only journaled: the ``welcome`` lists the seqs the
  router lacks a final ack for, and the edge sends the latest ack of each first;
* a command id seen before (within the dedupe window, or not yet confirmed) is not executed again:
  its latest ack is sent again;
* validation (:func:`actors.edge_commands.plan`): a command that does not fit the site's capabilities is
  acked "rejected" with ``"<code>: <reason>"``;
* device commands: one per device at a time goes to the dispatcher (the next once the previous is final);
  the others wait in a bounded :class:`~actors.edge_queue.EdgeQueue` (full: "rejected" ``edge_busy``;
  a newer one on the same channel supersedes a waiting one). Emergencies go to the dispatcher at once
  (priority :data:`~runtime.core.commands.EMERGENCY_PRIORITY`) and supersede what waits on their channel.
  "accepted" is sent once the dispatcher has journaled the command; then its lifecycle events give the
  final ack (COMPLETED -> executed, REJECTED -> rejected, FAILED / TIMED_OUT -> failed, EXPIRED ->
  expired, SUPERSEDED -> superseded);
* expiry counts ``expiry_sec`` (the time the command has left) on the edge's monotonic clock from
  arrival (:mod:`actors.edge_timers`); a command that expires while waiting is acked "expired"; one sent
  to the site carries ``expires_at`` = site clock now + the time it has left;
* mode_change / scheduler_control switch a site controller (journaled, restored after a restart);
  config_override holds a journaled lease that reverts by itself when its duration ends, also while the
  cloud is unreachable and across a restart (the lease's end is kept in site-clock time); system:
  sync_config re-publishes the capabilities, report_status sends a site_state, restart_link reconnects;
* telemetry: at most one frame per device every ``telemetry_interval_s`` (the latest values), and a
  site_state frame (controllers, overrides with the time they have left, device states) when it changes,
  at most every ``state_interval_s``; both are dropped while no session is ready, and the latest are sent
  after the next ``welcome``.

After a restart it carries on with every command that has no final ack: one the site has is followed
(its final state may already be there), one it has not is submitted again (same runtime id
``cloud:<command_id>``: the dispatcher applies an id once), one not yet submitted is queued with the time
it has left counted on the site clock.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, fields
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Mapping

import pykka

from protocols.edge.channels import telemetry_values
from protocols.edge.wire import (AckFrame, Cancel, CommandFrame, Confirm, EdgeCommand, ErrorFrame, Hello,
                                 SiteState, Telemetry, Welcome, WireError, encode, now_iso)
from runtime.core.assets import AssetSpec
from runtime.core.clock import Clock, to_datetime
from runtime.core.cloud_log import CloudEntry, CloudLog
from runtime.core.commands import EMERGENCY_PRIORITY, Command, CommandStatus
from runtime.core.errors import ConfigurationError
from runtime.core.events import COMMAND_EVENTS, Event, EventType
from runtime.core.iothread import IOOperation, IOThread

from .edge_commands import (OVERRIDE_PARAMETERS, ControllerPlan, DevicePlan, OverridePlan, SystemPlan,
                            capabilities, plan)
from .edge_queue import EdgeQueue, Waiting
from .edge_socket import Backoff, EdgeConnection
from .edge_timers import Cancellable, LoopTime, edge_time
from .handlers import HandlerTable, Request, handles
from .messages import (EdgeConnected, EdgeDisconnected, EdgeFrame, EdgeReply, EdgeSiteEvent, EdgeTimer,
                       GetAssetRef, GetAssetState, GetCommand, GetControllers, GetEdgeState, Ping, Pong,
                       SetController, SetParameter, SubmitCommands, Subscribe, Unsubscribe)

log = logging.getLogger(__name__)

__all__ = ["EdgeLinkActor", "EdgeLinkOptions", "RUNTIME_PREFIX", "JOURNAL_NAME"]

#: Runtime command ids of cloud commands: ``cloud:<command_id>``.
RUNTIME_PREFIX = "cloud:"
#: The edge link's journal, in the site's journal directory.
JOURNAL_NAME = "cloud.jnl"
_FINAL = {CommandStatus.COMPLETED: "executed", CommandStatus.REJECTED: "rejected", CommandStatus.FAILED: "failed",
          CommandStatus.TIMED_OUT: "failed", CommandStatus.EXPIRED: "expired",
          CommandStatus.SUPERSEDED: "superseded"}
_FOLLOWED = frozenset({EventType.TELEMETRY, EventType.STATE_CHANGED, EventType.ASSET_CONNECTED,
                       EventType.ASSET_DISCONNECTED, EventType.ASSET_UNAVAILABLE})
_PARAMETER_CHANNELS = {parameter: channel for channel, parameter in OVERRIDE_PARAMETERS.items()}
#: How often (site-clock seconds, at most) the in-memory log forgets what retention no longer needs: every
#: hour, or every quarter of the dedupe window when that is shorter (memory holds at most 1.25 windows).
_PRUNE_EVERY_S = 3600.0


@dataclass(frozen=True)
class EdgeLinkOptions:
    """How the edge link connects and behaves (``[cloud]`` of the site file; see CloudConfig)."""

    url: str
    edge_id: str
    credential: str
    #: Device commands that may wait for their device; one more is rejected "edge_busy".
    queue_size: int = 100
    #: Reconnect backoff: full jitter between 0 and min(reconnect_max_s, reconnect_min_s * 2**attempt).
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 60.0
    #: WebSocket pings (None: none); an unanswered ping closes a half-open link.
    ping_interval_s: float | None = 20.0
    ping_timeout_s: float | None = 20.0
    open_timeout_s: float = 10.0
    #: At most one telemetry frame per device this often (seconds); site_state at most this often.
    telemetry_interval_s: float = 10.0
    state_interval_s: float = 1.0
    #: A command id seen within this window (site clock) is never executed again.
    dedupe_window_s: float = 24 * 3600.0
    #: Seeds the reconnect jitter (tests); None: random.
    seed: int | None = None

    def __post_init__(self) -> None:
        if not self.url.startswith(("ws://", "wss://")):
            raise ConfigurationError(f"cloud.url: must start with ws:// or wss://, got {self.url!r}")
        if not self.edge_id or not self.credential:
            raise ConfigurationError("cloud: edge_id and credential must not be empty")
        if self.queue_size < 0:
            raise ConfigurationError(f"cloud.queue_size: must be >= 0, got {self.queue_size!r}")
        if not 0 < self.reconnect_min_s <= self.reconnect_max_s:
            raise ConfigurationError(f"cloud: need 0 < reconnect_min_s <= reconnect_max_s, got "
                                     f"{self.reconnect_min_s!r}, {self.reconnect_max_s!r}")
        for name in ("telemetry_interval_s", "state_interval_s"):
            if getattr(self, name) < 0:
                raise ConfigurationError(f"cloud.{name}: must be >= 0, got {getattr(self, name)!r}")
        if self.dedupe_window_s <= 0:
            raise ConfigurationError(f"cloud.dedupe_window_s: must be > 0, got {self.dedupe_window_s!r}")

    @classmethod
    def of(cls, cloud: Any) -> "EdgeLinkOptions":
        """Options from an EdgeLinkOptions, a mapping, or any object with these attribute names (the
        site file's CloudConfig): what it lacks keeps its default."""
        if isinstance(cloud, cls):
            return cloud
        names = [f.name for f in fields(cls)]
        if isinstance(cloud, Mapping):
            unknown = sorted(set(cloud) - set(names))
            if unknown:
                raise ConfigurationError(f"cloud: unknown option(s) {', '.join(unknown)}")
            return cls(**dict(cloud))
        return cls(**{n: getattr(cloud, n) for n in names if hasattr(cloud, n)})


class EdgeLinkActor(HandlerTable, pykka.ThreadingActor):
    """The edge link (see the module docstring). Started by the Site after its core actors, stopped before them."""

    def __init__(self, options: EdgeLinkOptions, specs: Mapping[str, AssetSpec], *, io: IOThread, clock: Clock,
                 dispatcher: pykka.ActorRef[Any], supervisor: pykka.ActorRef[Any], events: pykka.ActorRef[Any],
                 journal_dir: str | Path | None = None, fsync: str = "batch",
                 on_failure: Callable[[str], None] | None = None) -> None:
        super().__init__()
        self._handled = 0
        self._on_failure = on_failure
        self._options = options
        self._specs = dict(specs)
        self._io, self._clock = io, clock
        self._dispatcher, self._supervisor, self._events = dispatcher, supervisor, events
        # Opened here, in the starting thread: a damaged journal fails the site's start, loudly.
        path = Path(journal_dir) / JOURNAL_NAME if journal_dir is not None else None
        self._log = CloudLog(path, now=clock.time(), fsync=fsync,  # type: ignore[arg-type]
                             dedupe_window_s=options.dedupe_window_s)
        self._pruned_at = clock.time()
        self._prune_every_s = min(_PRUNE_EVERY_S, options.dedupe_window_s / 4)
        self._queue = EdgeQueue(options.queue_size)
        self._time = edge_time(clock, io.loop)       # command expiry and leases
        self._net_time = LoopTime(io.loop)           # rate limits of telemetry and site_state (real time)
        self._capabilities = capabilities(self._specs)
        me = self.actor_ref

        def tell(message: Any) -> None:  # from the I/O loop
            try:
                me.tell(message)
            except pykka.ActorDeadError:
                pass
        self._conn = EdgeConnection(
            options.url, options.credential, loop=io.loop, on_connected=lambda c: tell(EdgeConnected(c)),
            on_frame=lambda c, f: tell(EdgeFrame(c, f)), on_lost=lambda c, r: tell(EdgeDisconnected(c, r)),
            backoff=Backoff(options.reconnect_min_s, options.reconnect_max_s, random.Random(options.seed)),
            ping_interval=options.ping_interval_s, ping_timeout=options.ping_timeout_s,
            open_timeout=options.open_timeout_s, user_agent=f"qubit-energy-coordinator edge {options.edge_id}")
        self._tell = tell
        self._conn_op: IOOperation | None = None
        self._session: int | None = None     # the open session
        self._ready = False                  # its welcome has been handled
        self._outbox: list[bytes | str] = []
        self._restart_after_commit = False
        self._replies: dict[int, Callable[[Any, BaseException | None], None]] = {}
        self._next_token = 0
        self._subscription: int | None = None
        self._timers: dict[tuple[str, str], Cancellable] = {}
        # device commands handed to the site and not final: asset -> command ids; runtime id -> command id
        self._busy: dict[str, set[str]] = {}
        self._asset_of: dict[str, str] = {}
        self._following: dict[str, str] = {}
        self._answered: set[str] = set()                              # submissions the dispatcher answered
        self._early: dict[str, tuple[CommandStatus, str | None, Any]] = {}  # final events before that answer
        self._lease_deadline: dict[str, float] = {}
        self._controllers: dict[str, bool] = {}
        self._sm_state: dict[str, str] = {}
        self._link_up: dict[str, bool] = {}
        self._telemetry: dict[str, tuple[dict[str, float], Any]] = {}
        self._telemetry_dirty: set[str] = set()
        self._telemetry_sent: dict[str, float] = {}
        self._state_dirty = False
        self._state_sent: float | None = None

    # ---- lifecycle (the actor's thread) --------------------------------------------------------
    def on_start(self) -> None:
        """Subscribe to the site's events first (so no transition of a command submitted later is missed),
        then recover and connect (in :meth:`_subscribed`)."""
        me = self.actor_ref

        def on_event(event: Event) -> None:  # in the subscriber's own actor thread: filter, then tell
            if event.type in COMMAND_EVENTS:
                if not str(event.payload.get("command_id", "")).startswith(RUNTIME_PREFIX):
                    return
            elif event.type not in _FOLLOWED:
                return
            try:
                me.tell(EdgeSiteEvent(event))
            except pykka.ActorDeadError:
                pass
        self._ask(self._events, Subscribe(None, on_event), self._subscribed)

    def on_stop(self) -> None:
        """Close the session (a bounded wait on the loop), cancel the timers, drop the subscription, close
        the journal."""
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        if self._subscription is not None:
            try:
                self._events.tell(Unsubscribe(self._subscription))
            except pykka.ActorDeadError:
                pass
        if self._io.running:
            try:
                self._io.submit(self._conn.stop()).result(timeout=10)
            except Exception:
                log.exception("edge link: closing the session failed")
        elif self._conn_op is not None:
            self._conn_op.cancel()
        self._log.close()

    def on_failure(self, exc_type: Any, exc_value: Any, traceback: Any) -> None:
        """A handler raised (a journal write failed, say), in this actor's thread: the link is gone, and
        ``on_failure`` (given by the Site) fails the site, as a dead dispatcher does: a site the cloud can no
        longer reach must say so, and the site process exits non-zero so that its supervisor restarts it
        (``cloud.jnl`` then carries every command on)."""
        reason = f"edge link failed: {exc_type.__name__}: {exc_value}"
        log.error("%s; the site is no longer reachable from the cloud", reason)
        if self._conn_op is not None:
            self._conn_op.cancel()
        self._log.close()
        if self._on_failure is not None:
            self._on_failure(reason)

    def _subscribed(self, subscription: Any, error: BaseException | None) -> None:
        if error is not None:
            log.error("edge link: cannot follow the site's events (%s); not connecting", error)
            return
        self._subscription = subscription
        self._ask(self._dispatcher, GetControllers(), self._got_controllers)
        for name, on in self._log.controllers.items():   # the site does not keep them: the cloud link does
            self._ask(self._dispatcher, SetController(name, on), self._got_controllers)
        self._recover_leases()
        for entry in self._log.open_entries():
            self._recover(entry)
        for asset_id in self._specs:
            self._ask(self._supervisor, GetAssetRef(asset_id),
                      lambda ref, err, a=asset_id: self._got_ref(a, ref, err))

        def ended(result: Any, error: BaseException | None) -> None:  # on the I/O thread: only tells
            self._tell(EdgeDisconnected(-1, f"the connection task ended ({error or 'returned'})"))
        self._conn_op = self._io.post(self._conn.run(), ended)
        log.info("edge link %s -> %s started (last seq %d, %d open command(s), %d lease(s))",
                 self._options.edge_id, self._options.url, self._log.last_seq, len(self._log.open_entries()),
                 len(self._log.leases()))

    # ---- every message -------------------------------------------------------------------------
    def receive(self, message: Any) -> Any:
        """Handle one message, then make what it journaled durable and send what it queued (in that order).
        Pings do not count as handled: they measure the actor's quiescence (:meth:`Site.settle`)."""
        if type(message) is not Ping:
            self._handled += 1
        try:
            return self.handle(message)
        finally:
            self._commit()

    def _commit(self) -> None:
        self._log.sync()
        if self._state_dirty and self._ready:
            self._offer_state()
        if self._outbox:
            if self._session is not None:
                self._conn.send(self._session, self._outbox)
            self._outbox = []
        if self._restart_after_commit:
            self._restart_after_commit = False
            self._conn.restart()

    def _ask(self, ref: pykka.ActorRef[Any], message: Any,
             then: Callable[[Any, BaseException | None], None]) -> None:
        """Ask ``ref`` without waiting: ``then(result, error)`` runs in this actor when the answer arrives."""
        self._next_token += 1
        token = self._next_token
        self._replies[token] = then
        me = self.actor_ref

        def reply(result: Any, error: BaseException | None) -> None:  # in the asked actor's thread
            try:
                me.tell(EdgeReply(token, result, error))
            except pykka.ActorDeadError:
                pass
        try:
            ref.tell(Request(message, reply))
        except pykka.ActorDeadError as exc:
            del self._replies[token]
            then(None, exc)

    @handles(EdgeReply)
    def _on_reply(self, message: EdgeReply) -> None:
        then = self._replies.pop(message.token, None)
        if then is not None:
            then(message.result, message.error)

    @handles(Ping)
    def _ping(self, message: Ping) -> Pong:
        return Pong(self._handled)

    @handles(GetEdgeState)
    def _get_state(self, message: GetEdgeState) -> dict[str, Any]:
        return {"connected": self._session is not None, "ready": self._ready, "last_seq": self._log.last_seq,
                "queued": len(self._queue), "in_flight": sum(len(ids) for ids in self._busy.values()),
                "leases": self._overrides(), "controllers": dict(self._controllers),
                "sessions": self._conn.sessions, "log_entries": len(self._log.entries())}

    # ---- the session ---------------------------------------------------------------------------
    @handles(EdgeConnected)
    def _on_connected(self, message: EdgeConnected) -> None:
        self._session, self._ready, self._outbox = message.conn, False, []
        self._outbox.append(encode(Hello(edge_id=self._options.edge_id, last_seq=self._log.last_seq,
                                         capabilities=self._capabilities, software="qubit-energy-coordinator")))
        log.info("edge link: connected to %s (session %d); hello with last seq %d", self._options.url,
                 message.conn, self._log.last_seq)

    @handles(EdgeDisconnected)
    def _on_disconnected(self, message: EdgeDisconnected) -> None:
        if message.conn in (self._session, -1):
            self._session, self._ready, self._outbox = None, False, []
        if message.conn == -1:
            log.error("edge link: %s", message.reason)

    @handles(EdgeFrame)
    def _on_frame(self, message: EdgeFrame) -> None:
        if message.conn != self._session:
            return  # a late frame of a closed session
        frame = message.frame
        if isinstance(frame, Welcome):
            self._welcome(frame)
        elif isinstance(frame, CommandFrame):
            self._command(frame)
        elif isinstance(frame, Cancel):
            self._cancel(frame.command_id)
        elif isinstance(frame, Confirm):
            self._log.confirm_ids(frame.command_ids, self._clock.time())
        elif isinstance(frame, ErrorFrame):
            log.warning("edge link: the router says %s: %s%s", frame.code, frame.message,
                        f" (command {frame.command_id})" if frame.command_id else "")
        else:
            log.warning("edge link: unexpected %s frame from the router ignored", frame.type)

    def _welcome(self, welcome: Welcome) -> None:
        """Send the latest ack of every pending seq (in the order made), confirm the rest, then go live."""
        now = self._clock.time()
        if welcome.edge_id != self._options.edge_id:
            log.warning("edge link: welcome for edge %r, this is %r", welcome.edge_id, self._options.edge_id)
        resent = self._log.pending_acks(welcome.pending)
        for entry, ack in resent:
            self._outbox.append(self._ack_frame(entry, ack))
        confirmed = self._log.confirm(welcome.pending, now)
        self._ready = True
        log.info("edge link: welcome (resume after %d, %d pending): %d ack(s) re-sent, %d confirmed",
                 welcome.resume_after, len(welcome.pending), len(resent), len(confirmed))
        self._telemetry_dirty.update(self._telemetry)
        for asset_id in list(self._telemetry):
            self._offer_telemetry(asset_id)
        self._state_dirty = True
        self._state_sent = None
        self._prune(now, force=True)

    # ---- commands ------------------------------------------------------------------------------
    def _command(self, frame: CommandFrame) -> None:
        command, now = frame.command, self._clock.time()
        cid = command.command_id
        known = self._log.get(cid)
        if known is not None:  # seen before: not executed again; its latest ack goes back
            entry = self._log.duplicate(cid, frame.seq, now)
            log.info("edge link: command %s (seq %d) seen before; its %s ack is sent again", cid, frame.seq,
                     entry.latest["status"] if entry.latest else "no")
            if entry.latest is not None:
                self._send(self._ack_frame(entry, entry.latest))
            return
        entry = self._log.receive(frame.seq, command.model_dump(mode="json"), now)
        assert entry.latest is not None
        self._send(self._ack_frame(entry, entry.latest))  # leaves after the sync that ends this message
        deadline = self._time.now() + command.expiry_sec if command.expiry_sec is not None else None
        self._carry_out(entry, command, deadline)
        self._prune(now)

    def _carry_out(self, entry: CloudEntry, command: EdgeCommand, deadline: float | None) -> None:
        """Validate the command and start what it asks for."""
        cid = entry.command_id
        try:
            p = plan(command, self._specs, self._options.edge_id)
        except WireError as exc:
            self._ack(cid, "rejected", error=f"{exc.code}: {exc}")
            return
        if isinstance(p, DevicePlan):
            self._device(cid, command, p, deadline)
        elif isinstance(p, ControllerPlan):
            self._controller(cid, p)
        elif isinstance(p, OverridePlan):
            self._override(cid, p)
        else:
            self._system(cid, p)

    def _device(self, cid: str, command: EdgeCommand, p: DevicePlan, deadline: float | None) -> None:
        if deadline is not None and deadline <= self._time.now():
            self._ack(cid, "expired", error="expired before it could be sent to the device")
            return
        if p.emergency:
            for gone in self._queue.supersede(p.asset_id, p.channel) if command.supersede else []:
                self._ack(gone.command_id, "superseded", error=f"superseded by emergency command {cid}")
            self._submit(cid, p, deadline)
        elif not self._busy.get(p.asset_id) and not self._queue.has_device(p.asset_id):
            self._submit(cid, p, deadline)
        else:
            waiting = Waiting(cid, p.asset_id, p.channel, deadline, command.supersede, p)
            accepted, superseded = self._queue.offer(waiting)
            if not accepted:
                self._ack(cid, "rejected", error=f"edge_busy: {len(self._queue)} command(s) wait for their "
                                                 f"devices already (queue_size {self._queue.capacity}); send it "
                                                 f"again later")
            for gone in superseded:
                self._ack(gone.command_id, "superseded", error=f"superseded by command {cid}")
        self._arm_expiry()

    def _submit(self, cid: str, p: DevicePlan, deadline: float | None) -> None:
        """Hand the command to the dispatcher; "accepted" follows once it has journaled it."""
        left = None if deadline is None else deadline - self._time.now()
        if left is not None and left <= 0:
            self._ack(cid, "expired", error="expired in the edge queue")
            return
        rid = RUNTIME_PREFIX + cid
        now = self._clock.now()
        runtime = Command(rid, p.asset_id, p.command_type, p.value, now,
                          priority=EMERGENCY_PRIORITY if p.emergency else 0,
                          expires_at=now + timedelta(seconds=left) if left is not None else None, created_at=now,
                          source="cloud")
        self._log.submitted(cid, rid, self._clock.time())
        self._follow(cid, rid, p.asset_id)
        self._ask(self._dispatcher, SubmitCommands((runtime,)), lambda result, error: self._submit_answered(
            cid, rid, result, error))

    def _follow(self, cid: str, rid: str, asset_id: str) -> None:
        self._busy.setdefault(asset_id, set()).add(cid)
        self._asset_of[cid] = asset_id
        self._following[rid] = cid

    def _submit_answered(self, cid: str, rid: str, result: Any, error: BaseException | None) -> None:
        if error is not None:
            self._settle(cid, "rejected", f"site_refused: {error}")
            return
        self._answered.add(cid)
        self._accepted(cid)
        early = self._early.pop(cid, None)
        if early is not None:
            self._final(cid, *early)
        elif rid not in result:  # the site knew the id already (a restart): its state may be final
            self._ask(self._dispatcher, GetCommand(rid),
                      lambda snap, err: self._snapshot(cid, rid, snap, err, False))

    def _snapshot(self, cid: str, rid: str, snapshot: Command | None, error: BaseException | None,
                  resubmit: bool) -> None:
        """What the dispatcher knows of a command this edge handed it (after a restart, or a repeated submit)."""
        if cid not in self._asset_of:
            return  # settled meanwhile
        if error is not None:
            log.error("edge link: cannot ask the site about %s: %s", rid, error)
            return
        if snapshot is None:
            if resubmit:  # the site never journaled it: submit it again, with the time it has left
                entry = self._log.get(cid)
                if entry is not None:
                    self._unfollow(cid)
                    self._restart_command(entry, submitted=False)
                return
            self._settle(cid, "failed", "unknown_outcome: the site no longer knows the command")
            return
        self._answered.add(cid)
        self._accepted(cid)
        early = self._early.pop(cid, None)
        if snapshot.status.is_final:
            self._final(cid, snapshot.status, snapshot.last_error, None)
        elif early is not None:
            self._final(cid, *early)

    def _final(self, cid: str, status: CommandStatus, error: str | None, when: Any) -> None:
        ack = _FINAL[status]
        executed_at = now_iso(when or self._clock.now()) if ack == "executed" else None
        self._settle(cid, ack, error if ack != "executed" else None, executed_at)

    def _settle(self, cid: str, status: str, error: str | None = None, executed_at: str | None = None) -> None:
        """A device command is final: ack it, free its device, hand the device its next command."""
        self._unfollow(cid)
        self._ack(cid, status, error=error, executed_at=executed_at)
        self._pump()

    def _unfollow(self, cid: str) -> None:
        asset_id = self._asset_of.pop(cid, None)
        if asset_id is not None:
            self._busy.get(asset_id, set()).discard(cid)
        self._following.pop(RUNTIME_PREFIX + cid, None)
        self._answered.discard(cid)
        self._early.pop(cid, None)

    def _pump(self) -> None:
        """Submit the next waiting command of every device that is free now."""
        while True:
            taken = self._queue.take(lambda asset_id: bool(self._busy.get(asset_id)))
            if not taken:
                break
            for w in taken:
                self._submit(w.command_id, w.plan, w.deadline)
        self._arm_expiry()

    def _arm_expiry(self) -> None:
        deadline = self._queue.next_deadline()
        old = self._timers.pop(("expiry", ""), None)
        if old is not None:
            old.cancel()
        if deadline is not None:
            self._timers[("expiry", "")] = self._time.call_later(deadline - self._time.now(),
                                                                 lambda: self._tell(EdgeTimer("expiry")))

    def _cancel(self, cid: str) -> None:
        waiting = self._queue.remove(cid)
        if waiting is not None:
            self._ack(cid, "cancelled", error="cancelled while waiting for its device")
            self._arm_expiry()
            return
        entry = self._log.get(cid)
        if entry is not None and entry.latest is not None:  # too late to cancel: say where it is
            self._send(self._ack_frame(entry, entry.latest))

    # ---- site controllers, overrides, system commands ----------------------------------------------
    def _controller(self, cid: str, p: ControllerPlan) -> None:
        self._ack(cid, "accepted")
        self._log.controller(p.name, p.on, cid, self._clock.time())

        def done(result: Any, error: BaseException | None) -> None:
            if error is not None:
                self._ack(cid, "failed", error=f"controller_failed: {error}")
                return
            self._got_controllers(result, None)
            self._ack(cid, "executed", executed_at=now_iso(self._clock.now()))
        self._ask(self._dispatcher, SetController(p.name, p.on), done)

    def _got_controllers(self, result: Any, error: BaseException | None) -> None:
        if error is None and isinstance(result, dict) and result != self._controllers:
            self._controllers = dict(result)
            self._state_dirty = True

    def _override(self, cid: str, p: OverridePlan) -> None:
        self._ack(cid, "accepted")
        now = self._clock.time()
        self._log.lease(cid, p.asset_id, p.parameter, p.value, now + p.duration_s, now)
        self._hold_lease(cid, p.duration_s)

        def done(result: Any, error: BaseException | None) -> None:
            if error is not None:
                self._ack(cid, "failed", error=f"override_failed: {error}")
            else:
                self._ack(cid, "executed", executed_at=now_iso(self._clock.now()))
        self._apply_parameter(p.asset_id, p.parameter, done)

    def _hold_lease(self, cid: str, seconds: float) -> None:
        self._lease_deadline[cid] = self._time.now() + seconds
        self._timers[("lease", cid)] = self._time.call_later(seconds, lambda: self._tell(EdgeTimer("lease", cid)))
        self._state_dirty = True

    def _end_lease(self, cid: str) -> None:
        lease = self._log.end_lease(cid, self._clock.time())
        self._lease_deadline.pop(cid, None)
        timer = self._timers.pop(("lease", cid), None)
        if timer is not None:
            timer.cancel()
        if lease is not None:
            log.info("edge link: override %s of %s (%s = %g) ended; reverting", cid, lease.asset_id, lease.name,
                     lease.value)
            self._apply_parameter(lease.asset_id, lease.name, self._reverted)

    def _reverted(self, result: Any, error: BaseException | None) -> None:
        """The supervisor has the reverted parameter: the next site_state shows the override gone."""
        self._state_dirty = True

    def _apply_parameter(self, asset_id: str, name: str,
                         then: Callable[[Any, BaseException | None], None] | None = None) -> None:
        """Give the asset the value of its newest active lease of ``name``, or none (the revert)."""
        value = None
        for lease in self._log.leases():
            if (lease.asset_id, lease.name) == (asset_id, name):
                value = lease.value

        def done(result: Any, error: BaseException | None) -> None:
            if error is not None:
                log.error("edge link: setting %s of %s to %s failed: %s", name, asset_id, value, error)
            if then is not None:
                then(result, error)
        self._ask(self._supervisor, SetParameter(asset_id, name, value), done)

    def _recover_leases(self) -> None:
        """After a restart: re-apply the leases still running (site-clock time left), revert the rest."""
        now = self._clock.time()
        touched = set()
        for lease in self._log.leases():
            touched.add((lease.asset_id, lease.name))
            left = lease.ends_at - now
            if left <= 0:
                self._log.end_lease(lease.command_id, now)
                log.info("edge link: override %s ended while the site was down", lease.command_id)
            else:
                self._hold_lease(lease.command_id, left)
        for asset_id, name in touched:
            self._apply_parameter(asset_id, name)

    def _system(self, cid: str, p: SystemPlan) -> None:
        self._ack(cid, "accepted")
        if p.action == "sync_config":
            self._send(encode(self._capabilities))
        elif p.action == "report_status":
            self._send(encode(self._site_state()))
            self._state_sent, self._state_dirty = self._net_time.now(), False
        self._ack(cid, "executed", executed_at=now_iso(self._clock.now()))
        if p.action == "restart_link":
            self._restart_after_commit = True

    # ---- after a restart -----------------------------------------------------------------------
    def _recover(self, entry: CloudEntry) -> None:
        self._restart_command(entry, submitted=entry.submitted is not None)

    def _restart_command(self, entry: CloudEntry, submitted: bool) -> None:
        """Carry on with a command that has no final ack (see the module docstring)."""
        cid = entry.command_id
        try:
            command = EdgeCommand.model_validate(entry.command)
        except ValueError as exc:
            self._ack(cid, "failed", error=f"unreadable: the journaled command cannot be read back ({exc})")
            return
        if submitted:
            try:
                p = plan(command, self._specs, self._options.edge_id)
            except WireError as exc:
                self._ack(cid, "failed", error=f"{exc.code}: {exc} (after a restart)")
                return
            if isinstance(p, DevicePlan):
                rid = RUNTIME_PREFIX + cid
                self._follow(cid, rid, p.asset_id)
                self._ask(self._dispatcher, GetCommand(rid),
                          lambda snap, err: self._snapshot(cid, rid, snap, err, True))
                return
        if command.command_type == "system":  # its effect is part of every new session anyway
            self._ack(cid, "executed", executed_at=now_iso(self._clock.now()))
            return
        if command.command_type == "config_override" and self._log.lease_of(cid) is not None:
            self._ack(cid, "executed", executed_at=now_iso(self._clock.now()))
            return
        deadline = None
        if command.expiry_sec is not None:  # the monotonic clock did not survive: count on the site clock
            deadline = self._time.now() + command.expiry_sec - (self._clock.time() - entry.received_at)
        self._carry_out(entry, command, deadline)

    # ---- site events ---------------------------------------------------------------------------
    @handles(EdgeSiteEvent)
    def _on_site_event(self, message: EdgeSiteEvent) -> None:
        event = message.event
        payload = event.payload
        if event.type in COMMAND_EVENTS:
            cid = self._following.get(payload.get("command_id", ""))
            if cid is None:
                return
            status = CommandStatus(payload["status"])
            if not status.is_final:
                return
            if cid not in self._answered:  # the submission's answer is still on its way: keep the order
                self._early[cid] = (status, payload.get("error"), event.timestamp)
                return
            self._final(cid, status, payload.get("error"), event.timestamp)
            return
        asset_id = payload.get("asset_id")
        if asset_id not in self._specs:
            return
        if event.type is EventType.TELEMETRY:
            values = {k: float(v) for k, v in payload.items()
                      if k != "asset_id" and isinstance(v, (int, float)) and not isinstance(v, bool)}
            previous = self._telemetry.get(asset_id, ({}, None))[0]
            self._telemetry[asset_id] = ({**previous, **telemetry_values(self._specs[asset_id].kind, values)},
                                         event.timestamp)
            self._telemetry_dirty.add(asset_id)
            self._offer_telemetry(asset_id)
        elif event.type is EventType.STATE_CHANGED:
            self._set_device(asset_id, state=payload.get("to_state"))
        elif event.type is EventType.ASSET_CONNECTED:
            self._set_device(asset_id, up=True)
        elif event.type in (EventType.ASSET_DISCONNECTED, EventType.ASSET_UNAVAILABLE):
            self._set_device(asset_id, up=False)

    def _got_ref(self, asset_id: str, ref: Any, error: BaseException | None) -> None:
        if error is None and ref is not None:
            self._ask(ref, GetAssetState(), lambda status, err: self._got_asset_state(asset_id, status, err))

    def _got_asset_state(self, asset_id: str, status: Any, error: BaseException | None) -> None:
        if error is None and status is not None and asset_id not in self._sm_state:  # events are newer
            self._set_device(asset_id, state=status.device_state or status.state, up=status.link == "up")

    def _set_device(self, asset_id: str, state: str | None = None, up: bool | None = None) -> None:
        before = self._device_states().get(asset_id)
        if state is not None:
            self._sm_state[asset_id] = state
        if up is not None:
            self._link_up[asset_id] = up
        if self._device_states().get(asset_id) != before:
            self._state_dirty = True

    def _device_states(self) -> dict[str, str]:
        known = (a for a in self._specs if a in self._sm_state or a in self._link_up)
        return {a: self._sm_state.get(a, "UNKNOWN") if self._link_up.get(a, a in self._sm_state) else "UNAVAILABLE"
                for a in known}

    # ---- telemetry and site state (rate-limited on real time) -----------------------------------
    def _offer_telemetry(self, asset_id: str) -> None:
        if not self._ready or asset_id not in self._telemetry_dirty:
            return
        now, last = self._net_time.now(), self._telemetry_sent.get(asset_id)
        interval = self._options.telemetry_interval_s
        if last is None or now - last >= interval:
            values, at = self._telemetry[asset_id]
            self._send(encode(Telemetry(device_id=asset_id, values=values, at=now_iso(at))))
            self._telemetry_sent[asset_id] = now
            self._telemetry_dirty.discard(asset_id)
        elif ("telemetry", asset_id) not in self._timers:
            self._timers[("telemetry", asset_id)] = self._net_time.call_later(
                last + interval - now, lambda: self._tell(EdgeTimer("telemetry", asset_id)))

    def _offer_state(self) -> None:
        now, interval = self._net_time.now(), self._options.state_interval_s
        if self._state_sent is None or now - self._state_sent >= interval:
            self._send(encode(self._site_state()))
            self._state_sent, self._state_dirty = now, False
        elif ("state", "") not in self._timers:
            self._timers[("state", "")] = self._net_time.call_later(self._state_sent + interval - now,
                                                                    lambda: self._tell(EdgeTimer("state")))

    def _site_state(self) -> SiteState:
        return SiteState(controllers=dict(self._controllers), overrides=self._overrides(),
                         devices=self._device_states())

    def _overrides(self) -> list[dict[str, Any]]:
        now = self._time.now()
        return [{"command_id": lease.command_id, "device_id": lease.asset_id,
                 "channel": _PARAMETER_CHANNELS.get(lease.name, lease.name), "value": lease.value, "unit": "%",
                 "seconds_left": round(max(0.0, self._lease_deadline.get(lease.command_id, now) - now), 3),
                 "ends_at": now_iso(to_datetime(lease.ends_at))}
                for lease in self._log.leases()]

    @handles(EdgeTimer)
    def _on_timer(self, message: EdgeTimer) -> None:
        self._timers.pop((message.kind, message.key), None)
        if message.kind == "expiry":
            for gone in self._queue.expire(self._time.now()):
                self._ack(gone.command_id, "expired", error="expired in the edge queue, waiting for its device")
            self._arm_expiry()
        elif message.kind == "lease":
            self._end_lease(message.key)
        elif message.kind == "telemetry":
            self._offer_telemetry(message.key)
        elif message.kind == "state" and self._state_dirty and self._ready:
            self._offer_state()

    # ---- acks and frames -----------------------------------------------------------------------
    def _accepted(self, cid: str) -> None:
        entry = self._log.get(cid)
        if entry is not None and entry.latest is not None and entry.latest["status"] == "delivered":
            self._ack(cid, "accepted")

    def _ack(self, cid: str, status: str, error: str | None = None, executed_at: str | None = None) -> None:
        """Journal an ack, and send it when a session is ready (else the next welcome asks for it)."""
        ack = self._log.ack(cid, status, self._clock.time(), error=error, executed_at=executed_at)
        entry = self._log.get(cid)
        if ack is not None and entry is not None:
            if status not in ("delivered", "accepted"):
                log.info("edge link: command %s %s%s", cid, status, f" ({error})" if error else "")
            self._send(self._ack_frame(entry, ack))

    @staticmethod
    def _ack_frame(entry: CloudEntry, ack: dict[str, Any]) -> bytes | str:
        return encode(AckFrame(seq=entry.seq, command_id=entry.command_id, status=ack["status"],
                               executed_at=ack.get("executed_at"), error=ack.get("error")))

    def _send(self, frame: bytes | str) -> None:
        """Queue a frame for the end of this message (after the journal sync); dropped while no session is
        ready."""
        if self._ready:
            self._outbox.append(frame)

    def _prune(self, now: float, force: bool = False) -> None:
        if force or now - self._pruned_at >= self._prune_every_s:
            self._pruned_at = now
            self._log.prune(now)
