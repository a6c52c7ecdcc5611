"""Site: the running runtime for one site, composed of actors, one I/O loop, a clock and a journal.

Typical use::

    with Site([ChargerSpec("ev1", max_kw=22), BatterySpec("bat1")], clock=VirtualClock()) as site:
        batch = site.submit_schedule(df, asset_map={"ev_001": "ev1", "battery": "bat1"})
        site.advance(300)                 # virtual clock only: move time, let the actors settle
        print(site.command(batch.command_id(0)).status)

What ``start()`` builds (and ``stop()`` takes down in reverse, waiting for every thread and task):
the I/O thread with any protocol services (the OCPP central system when a charger uses OCPP), the
event actor, the dispatcher (its command table restored from the journal, if there is one), and the
supervisor, which starts one asset actor per asset. ``start()`` returns once every asset has reported
its health to the dispatcher: a command for an asset that is up is sent at once, never HELD first.

A site whose dispatcher or event actor dies (an exception in a handler, e.g. a journal write error)
says so: :attr:`Site.state` becomes "failed", :attr:`Site.failure` names the actor and the cause, a
SITE_FAILED event is published (when the event actor still runs), the cause is logged, and every call
raises :class:`~runtime.core.errors.SiteFailed`. Stop it, and start it again if wanted.

In a host application, :meth:`Site.run_forever` runs a started site until SIGTERM or SIGINT and then
stops it cleanly (a plain ``with Site(...)`` block is killed by SIGTERM without stopping).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import os
import signal
import threading
import time as _time
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Iterable, Mapping

import pandas as pd
import pykka

from actors.dispatcher import DispatcherActor
from actors.edge_link import EdgeLinkActor, EdgeLinkOptions
from actors.event_actor import EventActor
from actors.handlers import Request
from actors.inbox import WatchedInbox
from actors.messages import (GetAssetRef, GetAssetState, GetCommand, GetControllers, GetCounts, GetEdgeState,
                             GetStatus, ListCommands, Ping, Publish, SetController, SetParameter, SubmitBatch,
                             SubmitCommands, Subscribe, Unsubscribe)
from actors.supervisor import RestartPolicy, SupervisorActor
from protocols.base import DeviceLink
from protocols.memory import InMemoryDevice

from .core.assets import AssetSpec, AssetStatus
from .core.batch import CommandBatch
from .core.clock import Clock, RealClock, VirtualClock
from .core.command_log import CommandLog
from .core.command_table import DEFAULT_DEDUPE_WINDOW_S, CommandTable
from .core.commands import FINAL_STATUSES, Command, CommandStatus
from .core.errors import ConfigurationError, SiteFailed, SiteNotRunning, UnknownAsset
from .core.event_log import EventLog
from .core.events import Event, EventType
from .core.grid import GridLimit
from .core.iothread import IOThread
from .core.journal_stats import JournalStats
from .core.policy import DispatchPolicy
from .core.retention import CompactionPolicy, EventRetention
from .core.retry import RetryPolicy
from .core.schedule import schedule_to_commands

log = logging.getLogger(__name__)

__all__ = ["Site", "SiteEvents", "UnknownAsset", "SiteNotRunning", "SiteFailed", "RestartPolicy"]

#: How long a Site call waits for an actor's answer before giving up (seconds, real time).
ASK_TIMEOUT_S = 30.0
_BUSY = object()  # Site._activity: something is visibly unfinished




class SiteEvents:
    """Subscribe to a running site's lifecycle events.

    Subscribers run in their own actor thread: a slow one delays only itself, a raising one is
    logged and keeps receiving. Each subscriber sees events in the order they were published.
    """

    def __init__(self, site: "Site") -> None:
        self._site = site

    def subscribe(self, event_type: EventType | None, fn: Callable[[Event], Any]) -> Callable[[], None]:
        """Call ``fn(event)`` for every event of ``event_type`` (None: every event). Returns an
        unsubscribe function."""
        if event_type is not None and not isinstance(event_type, EventType):
            raise TypeError(f"event_type: must be an EventType or None, got {event_type!r}")
        ref = self._site._require("events")
        sid = ref.ask(Subscribe(event_type, fn), timeout=ASK_TIMEOUT_S)

        def unsubscribe() -> None:
            try:
                ref.ask(Unsubscribe(sid), timeout=ASK_TIMEOUT_S)
            except pykka.ActorDeadError:
                pass
        return unsubscribe


class Site:
    """One site: its assets, actors, I/O loop, clock and journal.

    Parameters
    ----------
    assets:
        The site's assets (:func:`~runtime.core.assets.ChargerSpec`, :func:`~runtime.core.assets.BatterySpec`).
        An asset with ``device=None`` gets an in-memory simulated device (see :meth:`device`).
    clock:
        Defaults to :class:`~runtime.core.clock.RealClock`. With a :class:`~runtime.core.clock.VirtualClock`,
        time moves only through :meth:`advance`.
    journal_dir:
        Directory for ``commands.jnl`` and ``events.jnl`` (and their segments). A site started on an
        existing journal recovers every command that was not final. None: no journal (nothing survives
        a restart). The site keeps both bounded itself: see ``compaction`` and ``event_retention``.
    fsync:
        Journal durability: "always" (fsync per write), "batch" (fsync once per dispatcher step,
        default), "never".
    retry, ack_timeout_s, completion_timeout_s:
        Retries with exponential backoff. ``ack_timeout_s``: how long a device gets to answer one
        command (the asset actor's I/O timeout, real time; an asset's own ``ack_timeout_s`` overrides
        it); the dispatcher times a dispatched command out after twice that on the site clock, a safety
        net that also covers time queued behind the asset's earlier commands. ``completion_timeout_s``:
        site-clock time for an acknowledged command to complete.
    retention_s:
        Final commands older than this (site clock) are pruned from memory; their ids stay known, so a
        pruned command is still never applied twice. Compaction keeps them in the journal as long.
    dedupe_window_s:
        How long the id of a final command stays known (default 7 days, at least as long as its expiry):
        a duplicate within it is a no-op. Every command expires at the latest this long after its
        scheduled time, so a duplicate of a forgotten id is EXPIRED at once, never applied as new
        (see :mod:`runtime.core.command_table`). None: ids are known forever.
    compaction, event_retention:
        When the command journal is compacted (:class:`~runtime.core.retention.CompactionPolicy`: at
        start-up, and on size or age of the file being appended to) and how much of the event journal
        is kept (:class:`~runtime.core.retention.EventRetention`: 7 days, 256 MiB by default).
    restart_policy:
        Supervisor restart intensity for crashed asset actors.
    ocpp:
        Keyword arguments for the OCPP :class:`~protocols.ocpp.central_system.CentralSystem` (host,
        port, allow_ids, basic_auth, ...). It is started when given, or when any asset uses an OCPP link.
    grid, priorities:
        The site's grid connection (:class:`~runtime.core.grid.GridLimit`): the sum of what the assets are
        told to draw (feed) never exceeds its import (export) limit; setpoints are scaled down by its
        policy, using ``priorities`` (asset id -> int, higher first) for the "priority" policy.
    rng_seed:
        Seeds the jitter of retry delays, so that a run on a virtual clock repeats exactly (scenarios).
    cloud:
        The edge link to the cloud command router (:class:`~actors.edge_link.EdgeLinkOptions`, or the site
        file's ``[cloud]``): started after the other actors, stopped before them; its journal is
        ``cloud.jnl`` in ``journal_dir``. If it dies (a handler raised), the site fails as for a dead
        dispatcher (``state`` "failed", a SITE_FAILED event with ``actor`` "edge link"). None: no cloud link.
    """

    def __init__(self, assets: Iterable[AssetSpec], *, clock: Clock | None = None,
                 journal_dir: str | os.PathLike[str] | None = None, fsync: str = "batch",
                 retry: RetryPolicy | None = None, ack_timeout_s: float = 10.0,
                 completion_timeout_s: float = 60.0, restart_policy: RestartPolicy | None = None,
                 ocpp: Mapping[str, Any] | None = None, retention_s: float = 3600.0,
                 grid: GridLimit | None = None, priorities: Mapping[str, int] | None = None,
                 rng_seed: int | None = None, dedupe_window_s: float | None = DEFAULT_DEDUPE_WINDOW_S,
                 compaction: CompactionPolicy | None = None, event_retention: EventRetention | None = None,
                 cloud: Any | None = None) -> None:
        specs = list(assets)
        seen: set[str] = set()
        for spec in specs:
            if not isinstance(spec, AssetSpec):
                raise TypeError(f"assets: expected AssetSpec, got {spec!r}")
            if spec.asset_id in seen:
                raise ConfigurationError(f"assets: duplicate asset_id {spec.asset_id!r}")
            seen.add(spec.asset_id)
        if fsync not in ("always", "batch", "never"):
            raise ConfigurationError(f"fsync: must be 'always', 'batch' or 'never', got {fsync!r}")
        self._specs = {s.asset_id: s for s in specs}
        self._links: dict[str, DeviceLink] = {s.asset_id: s.device or InMemoryDevice(s.asset_id, kind=s.kind)
                                              for s in specs}
        self._owns_clock = clock is None
        self.clock: Clock = clock or RealClock()
        self._journal_dir = Path(journal_dir) if journal_dir is not None else None
        self._fsync = fsync
        self._retry = retry or RetryPolicy()
        self._ack_timeout_s = ack_timeout_s
        self._completion_timeout_s = completion_timeout_s
        self._restart_policy = restart_policy or RestartPolicy()
        self._ocpp_config = dict(ocpp) if ocpp is not None else None
        self._retention_s = retention_s
        if grid is not None and not isinstance(grid, GridLimit):
            raise ConfigurationError(f"grid: must be a GridLimit, got {grid!r}")
        self._grid = grid if grid is not None and grid.active else None
        self._priorities = dict(priorities or {})
        unknown = sorted(set(self._priorities) - self._specs.keys())
        if unknown:
            raise ConfigurationError(f"priorities: unknown asset(s) {', '.join(map(repr, unknown))}")
        self._rng_seed = rng_seed
        self._cloud = EdgeLinkOptions.of(cloud) if cloud is not None else None
        self._edge: pykka.ActorRef[Any] | None = None
        self._dedupe_window_s = dedupe_window_s
        CommandTable(dedupe_window_s=dedupe_window_s)  # validates it now, not at start()
        self._compaction = compaction or CompactionPolicy()
        self._event_retention = event_retention or EventRetention()
        self._command_log: CommandLog | None = None
        self._event_log: EventLog | None = None
        self._io: IOThread | None = None
        self._services: dict[str, Any] = {}
        self._refs: dict[str, pykka.ActorRef[Any]] = {}
        self._lock = threading.Lock()
        self.recovered: int = 0
        self.events = SiteEvents(self)
        self._failure: str | None = None  # set (from the dying actor's thread) when a core actor dies
        self._wake = threading.Event()     # set when a core actor dies, or run_forever() gets its signal
        self._ready = False
        self._quiet: tuple[Any, ...] | None = None  # what the last settle that found the site quiet saw

    # ---- lifecycle ------------------------------------------------------------------------------
    def start(self) -> "Site":
        """Start the I/O loop, services and actors. Returns self."""
        with self._lock:
            if self._refs:
                raise RuntimeError("site already started")
            try:
                self._start()
            except BaseException:
                self._stop()
                raise
        return self

    def _start(self) -> None:
        if self._owns_clock:  # a stopped RealClock fires nothing: a restarted site gets a fresh one
            self.clock = RealClock()
        self._failure = None
        self._quiet = None
        self._wake.clear()
        self._io = IOThread().start()
        self._start_services()
        event_journal = cmd_journal = None
        if self._journal_dir is not None:
            self._journal_dir.mkdir(parents=True, exist_ok=True)
            event_journal = self._event_log = EventLog(self._journal_dir, self.clock, fsync=self._fsync,
                                                       retention=self._event_retention)
        self._refs["events"] = EventActor.start(event_journal,
                                                on_failure=lambda reason: self._core_failed("events", reason))
        table = CommandTable(retry=self._retry, ack_timeout_s=2 * self._ack_timeout_s, rng_seed=self._rng_seed,
                             completion_timeout_s=self._completion_timeout_s,
                             dedupe_window_s=self._dedupe_window_s)
        for spec in self._specs.values():
            if spec.ack_timeout_s is not None:
                table.set_ack_timeout(spec.asset_id, 2 * spec.ack_timeout_s)
        if self._journal_dir is not None:
            cmd_journal = self._restore(table)
        ready: pykka.Future[None] = pykka.ThreadingFuture()
        policy = DispatchPolicy(self._specs, self._grid, self._priorities)
        self._policy = policy
        self._refs["dispatcher"] = DispatcherActor.start(
            table, clock=self.clock, events=self._refs["events"], journal=cmd_journal, retention_s=self._retention_s,
            policy=policy, expected_assets=tuple(self._specs), ready=ready,
            on_failure=lambda reason: self._core_failed("dispatcher", reason))
        self._refs["supervisor"] = SupervisorActor.start(
            list(self._specs.values()), self._links, io=self._io, clock=self.clock,
            dispatcher=self._refs["dispatcher"], events=self._refs["events"], policy=self._restart_policy,
            services=self._services, ack_timeout_s=self._ack_timeout_s,
            grid_channels=policy.grid.channels_by_asset() if policy.grid is not None else None)
        # return only once the dispatcher knows every asset actor and every asset's health: a command
        # submitted right after start() is then sent to an asset that is up, never HELD first
        self._refs["supervisor"].ask(Ping(), timeout=ASK_TIMEOUT_S)
        self._ready = False
        try:
            ready.get(timeout=ASK_TIMEOUT_S)
            self._ready = True
        except pykka.Timeout:
            log.warning("site started, but not every asset reported its health within %g s (a device link whose "
                        "start() does not return); their commands are HELD until they do", ASK_TIMEOUT_S)
        if self._cloud is not None:
            self._edge = EdgeLinkActor.start(
                self._cloud, self._specs, io=self._io, clock=self.clock, dispatcher=self._refs["dispatcher"],
                supervisor=self._refs["supervisor"], events=self._refs["events"], journal_dir=self._journal_dir,
                fsync=self._fsync, on_failure=lambda reason: self._core_failed("edge link", reason))
        if isinstance(self.clock, VirtualClock):
            self.clock.on_fire = self.settle
            self.settle()

    def _start_services(self) -> None:
        needed = {name for link in self._links.values() for name in link.required_services}
        if self._ocpp_config is None and "ocpp" not in needed:
            return
        from protocols.ocpp.central_system import CentralSystem  # only sites with OCPP chargers need it
        assert self._io is not None
        central = CentralSystem(**(self._ocpp_config or {}))
        self._io.call(central.start(), timeout=10)
        self._services["ocpp"] = central

    def _restore(self, table: CommandTable) -> CommandLog:
        """Open the command journal: it recovers into ``table`` and compacts (see runtime.core.command_log)."""
        assert self._journal_dir is not None
        self._command_log = CommandLog(self._journal_dir, table, self.clock, fsync=self._fsync,
                                       policy=self._compaction, retention_s=self._retention_s)
        counts = table.counts()
        self.recovered = sum(n for status, n in counts.items() if not CommandStatus(status).is_final)
        if self.recovered:
            log.info("journal %s: %d commands restored that are not final", self._journal_dir, self.recovered)
        return self._command_log

    def journal_stats(self) -> JournalStats | None:
        """Sizes of the journals and their last compaction (see :class:`~runtime.core.journal_stats.JournalStats`);
        None when the site has no journal or was never started. Cheap (a directory listing), any thread."""
        if self._command_log is None or self._event_log is None or self._journal_dir is None:
            return None
        return JournalStats(str(self._journal_dir), self._command_log.stats(), self._event_log.stats())

    def stop(self) -> None:
        """Stop every actor, service, task and thread; returns when all are gone (bounded waits)."""
        with self._lock:
            self._stop()

    def _stop(self) -> None:
        if isinstance(self.clock, VirtualClock):
            self.clock.on_fire = None
        edge, self._edge = self._edge, None
        if edge is not None:  # first: it talks to the actors below
            try:
                edge.stop(block=True, timeout=30)
            except (pykka.Timeout, pykka.ActorDeadError):
                log.error("edge link actor did not stop cleanly")
        for name in ("supervisor", "dispatcher", "events"):
            ref = self._refs.pop(name, None)
            if ref is not None:
                try:
                    ref.stop(block=True, timeout=30)
                except (pykka.Timeout, pykka.ActorDeadError):
                    log.error("%s actor did not stop cleanly", name)
        self._refs.clear()
        if self._io is not None:
            central = self._services.pop("ocpp", None)
            if central is not None and self._io.running:
                try:
                    self._io.call(central.stop(), timeout=10)
                except Exception:
                    log.exception("stopping the OCPP central system failed")
            self._io.stop()
            self._io = None
        if self._owns_clock:
            self.clock.stop()

    def __enter__(self) -> "Site":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def specs(self) -> Mapping[str, AssetSpec]:
        """{asset_id: spec} of every asset (fixed for the site's lifetime)."""
        return MappingProxyType(self._specs)

    @property
    def journal_dir(self) -> Path | None:
        """Where the journal files are (None: no journal)."""
        return self._journal_dir

    @property
    def ready(self) -> bool:
        """True once every asset reported its health during :meth:`start` (False while starting, after a
        start whose health round timed out, and when stopped)."""
        return self._ready and bool(self._refs)

    def inbox_depths(self) -> dict[str, int]:
        """Messages waiting in each core actor's inbox ("dispatcher", "supervisor", "events"): a cheap,
        non-blocking read, safe on the I/O loop (for metrics)."""
        return {name: ref.actor_inbox.qsize() for name, ref in list(self._refs.items())}

    @property
    def running(self) -> bool:
        """True while the site is started and has not failed."""
        return bool(self._refs) and self._failure is None

    @property
    def state(self) -> str:
        """ "stopped", "running" or "failed" (started, but a core actor died: see :attr:`failure`)."""
        if not self._refs:
            return "stopped"
        return "failed" if self._failure is not None else "running"

    @property
    def failure(self) -> str | None:
        """Why the site failed (the actor and the cause), or None; kept after :meth:`stop` until the next start."""
        return self._failure

    def _core_failed(self, name: str, reason: str) -> None:
        """A core actor died (called in that actor's thread, while pykka stops it)."""
        if self._failure is None:
            self._failure = reason
            log.error("site failed: the %s actor died (%s); stop the site and start it again", name, reason)
            events = self._refs.get("events")
            if name != "events" and events is not None:
                try:
                    events.tell(Publish((Event(EventType.SITE_FAILED, self.clock.now(),
                                               {"actor": name, "reason": reason}),)))
                except pykka.ActorDeadError:
                    pass
        self._wake.set()

    def _require(self, name: str) -> pykka.ActorRef[Any]:
        if self._failure is not None:
            raise SiteFailed(f"the site has failed ({self._failure}); stop it and start it again")
        ref = self._refs.get(name)
        if ref is None:
            raise SiteNotRunning("the site is not running: call start() or use it as a context manager")
        return ref

    def _actor(self, name: str) -> pykka.ActorRef[Any]:
        """A running actor by name: "dispatcher", "supervisor", "events", or "edge" (the cloud link)."""
        if name != "edge":
            return self._require(name)
        self._require("dispatcher")
        if self._edge is None:
            raise SiteNotRunning("this site has no cloud link (no [cloud] section, no cloud= option)")
        return self._edge

    @property
    def cloud_options(self) -> EdgeLinkOptions | None:
        """The cloud link's options (``cloud=``), or None for a site without one."""
        return self._cloud

    def cloud_status(self) -> dict[str, Any] | None:
        """The cloud link's state, or None for a site without one (no ``cloud=``, no ``[cloud]``).

        ``connected`` (a session with the router is open), ``ready`` (its ``welcome`` came), ``last_seq``
        (the highest command seq journaled), ``queued`` (device commands waiting at the edge), ``in_flight``
        (at the site), ``leases`` (active overrides and the seconds they have left), ``controllers`` (the
        switches the cloud set), ``sessions`` (how many sessions it has opened), ``log_entries`` (the commands
        its log ``cloud.jnl`` holds in memory). Asked from the caller's thread (bounded wait).
        :raises SiteNotRunning: the site is not running."""
        if self._cloud is None:
            self._require("dispatcher")
            return None
        return dict(self._actor("edge").ask(GetEdgeState(), timeout=ASK_TIMEOUT_S))

    def ask_async(self, target: "str | pykka.ActorRef[Any]", message: Any) -> "asyncio.Future[Any]":
        """Ask an actor from code running on an asyncio loop, without blocking the loop: returns a future
        of the running loop that gets the actor's answer (or its exception).

        ``target`` is "dispatcher", "supervisor", "events", "edge" (the cloud link) or an actor ref (an asset
        actor's, from the supervisor). The actor answers through a :class:`~actors.handlers.Request`; no
        thread waits for it. Await it with a timeout (``asyncio.timeout``): an actor that dies before
        answering leaves it pending."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()

        def reply(result: Any, error: BaseException | None) -> None:  # in the actor's thread
            def settle() -> None:
                if future.done():
                    return
                if error is not None:
                    future.set_exception(error)
                else:
                    future.set_result(result)
            try:
                loop.call_soon_threadsafe(settle)
            except RuntimeError:  # the loop closed meanwhile: nobody waits any more
                pass

        try:
            ref = self._actor(target) if isinstance(target, str) else target
            ref.tell(Request(message, reply))
        except (pykka.ActorDeadError, SiteNotRunning) as exc:
            future.set_exception(exc if isinstance(exc, SiteNotRunning) else
                                 SiteNotRunning(f"the actor to ask is not running ({exc})"))
        return future

    def run_forever(self, signals: Iterable[int] = (signal.SIGTERM, signal.SIGINT)) -> int:
        """Run the site until one of ``signals`` arrives, then stop it; returns that signal's number.

        Starts the site first if it is not running. Must be called from the main thread (Python
        delivers signals there); the previous handlers are restored before it returns. If the site
        fails meanwhile, it is stopped and :class:`~runtime.core.errors.SiteFailed` is raised. Use it
        as the last line of a host application, e.g. ``with Site(assets) as site: site.run_forever()``.
        """
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("run_forever() must be called from the main thread (signals are delivered there)")
        received: list[int] = []

        def on_signal(signum: int, frame: Any) -> None:
            received.append(signum)
            self._wake.set()

        previous = {sig: signal.signal(sig, on_signal) for sig in signals}
        try:
            if not self._refs:
                self.start()
            log.info("site running until %s", " or ".join(signal.Signals(sig).name for sig in previous))
            while not received and self._failure is None:
                self._wake.wait()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            failure = self._failure
            log.info("site stopping (%s)", f"signal {received[0]}" if received else failure)
            self.stop()
        if not received:
            raise SiteFailed(f"the site has failed ({failure})")
        return received[0]

    # ---- commands -------------------------------------------------------------------------------
    def check_assets(self, asset_ids: Iterable[str], what: str) -> None:
        """Raise :class:`UnknownAsset` (naming ``what`` and the ids) for ids this site does not have."""
        unknown = sorted(set(asset_ids) - self._specs.keys())
        if unknown:
            raise UnknownAsset(f"{what}: unknown asset(s) {', '.join(map(repr, unknown))}; this site has "
                               f"{', '.join(map(repr, sorted(self._specs)))} (map schedule ids with asset_map=)")

    def submit(self, command: Command) -> Command | None:
        """Accept one command (idempotent by command_id: a known id is not applied again).
        Returns the command's current snapshot; None for the id of a command that ended so long ago
        (``retention_s``) that the site keeps only its id, not its snapshot (nothing is applied).
        Unknown asset -> :class:`UnknownAsset`."""
        self.submit_many([command])
        return self.command(command.command_id)

    def submit_many(self, commands: Iterable[Command]) -> tuple[str, ...]:
        """Accept several commands in one journal write; returns the ids that were new."""
        commands = tuple(commands)  # types and statuses are checked by the command table (errors come back here)
        unknown = {getattr(c, "asset_id", None) for c in commands} - self._specs.keys() - {None}
        if unknown:
            first = next(c for c in commands if c.asset_id in unknown)
            self.check_assets(unknown, f"command {first.command_id}")
        return self._require("dispatcher").ask(SubmitCommands(commands), timeout=ASK_TIMEOUT_S)

    def submit_schedule(self, schedule: pd.DataFrame, asset_map: Mapping[str, str] | None = None, *,
                        replace: bool = True, priority: int = 0, batch_id: str | None = None) -> CommandBatch:
        """Turn a schedule DataFrame into commands (see :func:`~runtime.core.schedule.schedule_to_commands`)
        and accept them as one batch. ``replace``: the batch's assets' pending commands from the
        schedule's first timestamp on are SUPERSEDED by it. ``batch_id`` names the batch (command ids are
        ``f"{batch_id}-{i}"``; default: a new unique id): submitting a batch id the site already knows is
        a no-op, live and after a restart, so a retried submission is safe."""
        batch = schedule_to_commands(schedule, asset_map, created_at=self.clock.time(), priority=priority,
                                     batch_id=batch_id)
        self.check_assets(batch.assets, "schedule")
        self._require("dispatcher").ask(SubmitBatch(batch, replace=replace), timeout=ASK_TIMEOUT_S)
        return batch

    def command(self, command_id: str) -> Command | None:
        """The current snapshot of a command, or None if the site does not know it."""
        return self._require("dispatcher").ask(GetCommand(command_id), timeout=ASK_TIMEOUT_S)

    def commands(self, status: CommandStatus | None = None) -> list[Command]:
        """Commands the dispatcher holds as objects (schedule rows appear once they fall due)."""
        return self._require("dispatcher").ask(ListCommands(status), timeout=ASK_TIMEOUT_S)

    def counts(self) -> dict[str, int]:
        """Number of commands per status."""
        return self._require("dispatcher").ask(GetCounts(), timeout=ASK_TIMEOUT_S)

    # ---- controllers and parameters -------------------------------------------------------------
    def set_controller(self, name: str, on: bool) -> dict[str, bool]:
        """Switch a site controller on or off; returns every controller's state. "schedule": follow the
        submitted schedules (off: due schedule rows wait, and newer rows supersede them as usual);
        "grid_limit": enforce the grid limit (off: setpoints go as requested). Both start on. Not journaled:
        whoever switches them (the cloud link) restores them after a restart."""
        return self._require("dispatcher").ask(SetController(name, bool(on)), timeout=ASK_TIMEOUT_S)

    def controllers(self) -> dict[str, bool]:
        """{controller name: on}."""
        return self._require("dispatcher").ask(GetControllers(), timeout=ASK_TIMEOUT_S)

    def set_parameter(self, asset_id: str, name: str, value: float | None) -> None:
        """Set (or clear, with None) an asset's operating parameter; it survives the asset actor's
        restarts. ``min_soc`` (%, batteries): no discharge while the reported state of charge is below it."""
        self.check_assets([asset_id], "set_parameter")
        if name != "min_soc":
            raise ConfigurationError(f"set_parameter: unknown parameter {name!r} (known: min_soc)")
        self._require("supervisor").ask(SetParameter(asset_id, name, value), timeout=ASK_TIMEOUT_S)

    # ---- assets ---------------------------------------------------------------------------------
    @property
    def asset_ids(self) -> tuple[str, ...]:
        return tuple(self._specs)

    def device(self, asset_id: str) -> DeviceLink:
        """The device link of an asset (an :class:`InMemoryDevice` unless the spec gave one)."""
        self.check_assets([asset_id], "device")
        return self._links[asset_id]

    def asset_state(self, asset_id: str) -> str:
        """The asset's state as the site can vouch for it: its state machine's state while its device
        link is up, "UNAVAILABLE" while the link is down (or never came up) or its actor is down.
        :meth:`asset_status` says more."""
        return self.asset_status(asset_id).state

    def asset_status(self, asset_id: str) -> AssetStatus:
        """What the site knows about an asset: state, the device's own last state, link state, health
        and supervision (see :class:`~runtime.core.assets.AssetStatus`)."""
        self.check_assets([asset_id], "asset_status")
        supervisor = self._require("supervisor")
        ref = supervisor.ask(GetAssetRef(asset_id), timeout=ASK_TIMEOUT_S)
        supervision = supervisor.ask(GetStatus(), timeout=ASK_TIMEOUT_S).get(asset_id, "unavailable")
        if ref is not None:
            try:
                status: AssetStatus = ref.ask(GetAssetState(), timeout=ASK_TIMEOUT_S)
                return dataclasses.replace(status, supervision=supervision)
            except pykka.ActorDeadError:
                supervision = "restarting"
        return AssetStatus(asset_id, "UNAVAILABLE", None, "down", False, f"asset actor {asset_id} is {supervision}",
                           supervision)

    def supervision(self) -> dict[str, str]:
        """{asset_id: "running" | "restarting" | "unavailable"}."""
        return self._require("supervisor").ask(GetStatus(), timeout=ASK_TIMEOUT_S)

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The asyncio loop of the site's I/O thread (every socket lives there). Run a coroutine on it
        with :meth:`run_coroutine`; never block it."""
        if self._io is None:
            raise SiteNotRunning("the site is not running: call start() or use it as a context manager")
        return self._io.loop

    def run_coroutine(self, coro: Any) -> "concurrent.futures.Future[Any]":
        """Start ``coro`` on the site's I/O loop (from any thread); returns a concurrent future of its result."""
        if self._io is None:
            raise SiteNotRunning("the site is not running: call start() or use it as a context manager")
        return self._io.submit(coro)

    def service(self, name: str) -> Any:
        """A protocol service of the running site, e.g. ``site.service("ocpp")`` (the central system)."""
        if name not in self._services:
            raise KeyError(f"service {name!r} is not running on this site")
        return self._services[name]

    # ---- time -----------------------------------------------------------------------------------
    def advance(self, seconds: float) -> None:
        """Virtual clock only: move time forward, firing timers in order and letting the actors
        settle after each one."""
        if not isinstance(self.clock, VirtualClock):
            raise TypeError("advance() needs a VirtualClock; this site runs on real time")
        self._require("dispatcher")
        self.settle()
        self.clock.advance(seconds)
        self.settle()

    def settle(self, timeout: float = 10.0) -> bool:
        """Wait (at most ``timeout`` s of real time) until no actor has work left and the I/O loop has
        run everything that was ready; on a virtual clock also until a running journal compaction has
        finished (so replays of the same steps compact at the same points). Returns False on timeout. I/O
        that waits on a real device (sockets) is not waited for: use :meth:`wait_for` for that.

        Quiet means two looks in a row at every runtime actor's count of handled messages found the same
        counts (each look, after the loop has run what was ready, asks the dispatcher, supervisor and
        event actor; an asset or subscriber actor is looked at through its inbox
        (:class:`~actors.inbox.WatchedInbox`) and asked only when it is busy, so an idle one is not
        woken). The last look of a settle that found the site quiet counts as the first look of the next
        one, so a settle with nothing new to wait for looks once, not twice (the loop runs what was posted
        meanwhile before the actors are looked at)."""
        deadline = _time.monotonic() + timeout
        last = self._quiet
        self._quiet = None
        try:
            if last is not None and self._io is not None:
                self._io.barrier(max(0.1, deadline - _time.monotonic()))
        except TimeoutError:
            return False
        while _time.monotonic() < deadline:
            counts = self._activity(max(0.1, deadline - _time.monotonic()))
            if counts is None:
                return False
            if counts is not _BUSY and counts == last:
                self._quiet = counts
                return True
            last = None if counts is _BUSY else counts
        return False

    def _activity(self, timeout: float) -> "tuple[Any, ...] | object | None":
        """The count of messages each runtime actor (the cloud link too) has handled, with the actor's
        identity, or ``_BUSY`` while something is visibly unfinished (an asset actor died and the supervisor
        has not handled it yet, a compaction runs on a virtual clock); None on timeout."""
        core = [self._refs.get(n) for n in ("dispatcher", "supervisor", "events")]
        if any(r is None for r in core):
            return None
        busy = False
        counts: list[Any] = []
        try:
            pongs = [r.ask(Ping(), timeout=timeout) for r in core if r is not None]
            counts += (p.handled for p in pongs)
            asked = []
            for ref in pongs[1].detail.get("assets", []) + pongs[2].detail.get("subscribers", []):
                inbox = ref.actor_inbox
                if isinstance(inbox, WatchedInbox) and ref.is_alive():
                    taken, idle = inbox.look()
                    if idle:  # it has handled all it was sent: as good as its answer to a Ping
                        counts += (ref.actor_urn, taken)
                        continue
                try:  # busy (or an actor of the caller's): its answer comes once it has handled the rest
                    asked.append((ref, ref.ask(Ping(), block=False)))
                except pykka.ActorDeadError:
                    busy = True  # crashed: its Crashed message is on the way to the supervisor
            for ref, f in asked:
                try:
                    handled = f.get(timeout=timeout).handled
                except pykka.ActorDeadError:
                    busy = True
                    continue
                if isinstance(ref.actor_inbox, WatchedInbox):
                    # counted by what it took, as at an idle look (its Pong counts what it handled)
                    handled, idle = ref.actor_inbox.look()
                    busy = busy or not idle
                counts += (ref.actor_urn, handled)
            edge = self._edge
            if edge is not None:  # the cloud link (dead: the site has failed, and says so)
                try:
                    counts.append(edge.ask(Ping(), timeout=timeout).handled)
                except pykka.ActorDeadError:
                    pass
            if self._io is not None:
                self._io.barrier(timeout)
        except (pykka.Timeout, TimeoutError):
            return None
        log_ = self._command_log
        if log_ is not None and log_.compacting and isinstance(self.clock, VirtualClock):
            # virtual time waits for a running compaction (real time would move on while it runs): where the
            # next one starts, and so the journal's layout, is the same in every run of the same steps
            return _BUSY if log_.wait_idle(timeout) else None
        return _BUSY if busy else tuple(counts)

    def wait_for(self, command_id: str, statuses: Iterable[CommandStatus] = FINAL_STATUSES,
                 timeout: float = 10.0) -> Command:
        """Block (real time, at most ``timeout`` s) until the command reaches one of ``statuses``
        (default: any final status); returns its snapshot. Raises TimeoutError naming the command and
        its last status."""
        wanted = frozenset(statuses)
        reached = threading.Event()

        def on_event(event: Event) -> None:
            if event.payload.get("command_id") == command_id and CommandStatus(event.payload["status"]) in wanted:
                reached.set()

        unsubscribe = self.events.subscribe(None, on_event)
        try:
            snapshot = self.command(command_id)
            if snapshot is not None and snapshot.status in wanted:
                return snapshot
            reached.wait(timeout)
            snapshot = self.command(command_id)
            if snapshot is None or snapshot.status not in wanted:
                status = snapshot.status.value if snapshot else "unknown"
                raise TimeoutError(f"command {command_id} did not reach {sorted(s.value for s in wanted)} "
                                   f"within {timeout} s (status {status})")
            return snapshot
        finally:
            unsubscribe()
