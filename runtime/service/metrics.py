"""Prometheus metrics of one site: :class:`SiteMetrics`, with a :class:`~prometheus_client.CollectorRegistry`
of its own (never the process-global one, so two sites in one process, or a test, never share series).

Where each value comes from, and in which thread it is computed:

* **events** (most metrics): :meth:`SiteMetrics.start` subscribes to every site event (the ``Subscribe``
  that :meth:`SiteEvents.subscribe` sends, asked through :meth:`Site.ask_async` so that the loop does not
  wait). The subscriber runs in its own actor thread (see :class:`~runtime.site.SiteEvents`): a slow
  scrape never delays the runtime, and the runtime never waits for the metrics. prometheus_client metrics are thread-safe;
  the little state the subscriber keeps (which commands are open, when each was first dispatched)
  is guarded by a lock.
* **scrape time** (journal sizes and compactions, actor inbox depths, the site's state): read by a
  collector when the registry is rendered, on the I/O loop. Each read is cheap and never blocks:
  :meth:`Site.journal_stats` (a directory listing and counters), ``qsize()`` of an actor's inbox, an
  attribute. No actor is asked from the collector.
* **the loop, at start and before a scrape** (:meth:`start`, :meth:`refresh`): a few asks through
  :meth:`Site.ask_async` (bounded, no thread waits) to learn what no event says: the commands that
  were already open and the link states when the metrics started, and the current asset actors
  (an asset actor is replaced when it restarts).

The metric names, types, labels and meanings are listed in :data:`METRICS` (and in the README).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import weakref
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from actors.messages import GetAssetRef, ListCommands, Subscribe, Unsubscribe
from runtime.core.commands import CommandStatus
from runtime.core.events import Event, EventType
from runtime.site import Site

from .gateway import SiteGateway
from .siteinfo import asset_kinds

log = logging.getLogger(__name__)

__all__ = ["SiteMetrics", "site_metrics", "METRICS", "CONTENT_TYPE"]

#: (name as exposed, type, labels, meaning): the reference list of every metric (the README copies it).
METRICS: tuple[tuple[str, str, str, str], ...] = (
    ("coordinator_commands_total", "counter", "state, kind",
     "command transitions into each state, by asset kind (a retried command enters PENDING again)"),
    ("coordinator_commands_open", "gauge", "state, kind",
     ("commands now PENDING, HELD, DISPATCHED or ACKNOWLEDGED (the command queue; schedule rows count "
      "from when they fall due)")),
    ("coordinator_dispatch_latency_seconds", "histogram", "kind",
     "time from a command's first DISPATCHED to its final state (site clock)"),
    ("coordinator_dispatch_delay_seconds", "histogram", "kind",
     "time from a command's scheduled time to its first DISPATCHED (site clock)"),
    ("coordinator_device_link_up", "gauge", "asset, kind", "1 while the asset's device link is up, else 0"),
    ("coordinator_actor_restarts_total", "counter", "asset, kind", "asset actor restarts by the supervisor"),
    ("coordinator_assets_given_up_total", "counter", "asset, kind",
     "times the supervisor gave up on an asset (too many crashes; the asset is UNAVAILABLE)"),
    ("coordinator_grid_curtailments_total", "counter", "kind",
     "setpoints the grid limit curtailed (GRID_LIMITED events; 'site' when the event names no asset)"),
    ("coordinator_events_total", "counter", "type", "site events, by event type"),
    ("coordinator_actor_inbox_messages", "gauge", "actor, asset",
     "messages waiting in an actor's inbox (dispatcher, supervisor, events, asset)"),
    ("coordinator_journal_bytes", "gauge", "stream", "bytes on disk of each journal stream (commands, events)"),
    ("coordinator_journal_files", "gauge", "stream", "files on disk of each journal stream"),
    ("coordinator_journal_compactions_total", "counter", "stream",
     "compactions of the command journal; retention passes of the event journal that deleted something"),
    ("coordinator_journal_last_compaction_timestamp_seconds", "gauge", "stream",
     "when the last compaction ended (site clock, epoch seconds)"),
    ("coordinator_journal_last_compaction_duration_seconds", "gauge", "stream",
     "how long the last compaction took (real seconds)"),
    ("coordinator_journal_last_compaction_bytes", "gauge", "stream, when",
     "the stream's bytes before and after the last compaction (when: before, after)"),
    ("coordinator_site_running", "gauge", "", "1 while the site runs, 0 when it failed or stopped"),
    ("coordinator_folder_files_total", "counter", "outcome",
     "schedule files taken from the watched folder: done or failed"),
)

#: The content type of :meth:`SiteMetrics.render` (Prometheus text format 0.0.4).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_OPEN = frozenset({CommandStatus.PENDING, CommandStatus.HELD, CommandStatus.DISPATCHED,
                   CommandStatus.ACKNOWLEDGED})
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_DELAY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
#: A bound on each ask made from the loop (start, refresh); the metrics are never worth a long wait.
ASK_TIMEOUT_S = 5.0

_by_site: "weakref.WeakKeyDictionary[Site, SiteMetrics]" = weakref.WeakKeyDictionary()
_by_site_lock = threading.Lock()


def site_metrics(site: Site) -> "SiteMetrics":
    """The one :class:`SiteMetrics` of ``site`` (created on first use), shared by the components of a
    site process: the HTTP API serves it, the watched folder counts its files in it."""
    with _by_site_lock:
        metrics = _by_site.get(site)
        if metrics is None:
            metrics = _by_site[site] = SiteMetrics(site)
        return metrics


def _grid_limited() -> EventType | None:
    """EventType.GRID_LIMITED when this runtime has it (looked up by name: it is being added)."""
    return getattr(EventType, "GRID_LIMITED", None)


class SiteMetrics:
    """The metrics of one site (see the module docstring). :meth:`start` and :meth:`stop` are
    coroutines for the site's I/O loop; :meth:`render` may be called anywhere."""

    def __init__(self, site: Site) -> None:
        self.site = site
        self.registry = CollectorRegistry()
        self.kinds = asset_kinds(site)
        r = self.registry
        self.commands = Counter("coordinator_commands", _doc("coordinator_commands_total"), ["state", "kind"],
                                registry=r)
        self.open = Gauge("coordinator_commands_open", _doc("coordinator_commands_open"), ["state", "kind"],
                          registry=r)
        self.latency = Histogram("coordinator_dispatch_latency_seconds",
                                 _doc("coordinator_dispatch_latency_seconds"), ["kind"], buckets=_LATENCY_BUCKETS,
                                 registry=r)
        self.delay = Histogram("coordinator_dispatch_delay_seconds", _doc("coordinator_dispatch_delay_seconds"),
                               ["kind"], buckets=_DELAY_BUCKETS, registry=r)
        self.link_up = Gauge("coordinator_device_link_up", _doc("coordinator_device_link_up"), ["asset", "kind"],
                             registry=r)
        self.restarts = Counter("coordinator_actor_restarts", _doc("coordinator_actor_restarts_total"),
                                ["asset", "kind"], registry=r)
        self.given_up = Counter("coordinator_assets_given_up", _doc("coordinator_assets_given_up_total"),
                                ["asset", "kind"], registry=r)
        self.curtailments = Counter("coordinator_grid_curtailments", _doc("coordinator_grid_curtailments_total"),
                                    ["kind"], registry=r)
        self.events = Counter("coordinator_events", _doc("coordinator_events_total"), ["type"], registry=r)
        self.folder_files = Counter("coordinator_folder_files", _doc("coordinator_folder_files_total"),
                                    ["outcome"], registry=r)
        for state in _OPEN:  # every open state is shown, 0 included, for every kind the site has
            for kind in set(self.kinds.values()):
                self.open.labels(state.value, kind)
        for asset_id, kind in self.kinds.items():
            self.link_up.labels(asset_id, kind)
            self.restarts.labels(asset_id, kind)
        for outcome in ("done", "failed"):
            self.folder_files.labels(outcome)
        r.register(_ScrapeCollector(self))
        # state kept by the subscriber (its actor thread) and by start() (the loop): under the lock
        self._lock = threading.Lock()
        self._open_status: dict[str, tuple[str, str]] = {}   # command id -> (open state, kind)
        self._dispatched: dict[str, float] = {}              # command id -> first DISPATCHED (epoch s)
        self._link_seen: set[str] = set()                    # assets whose link an event reported
        self._asset_refs: dict[str, Any] = {}                # asset id -> its current actor ref
        self._subscription: int | None = None
        self._started = False

    # ---- lifecycle (on the site's I/O loop) -------------------------------------------------------
    async def start(self) -> None:
        """Subscribe to the site's events, then learn (bounded asks) what was already true: open
        commands, link states, asset actors. Idempotent."""
        if self._started:
            return
        self._started = True
        async with asyncio.timeout(ASK_TIMEOUT_S):
            self._subscription = await self.site.ask_async("events", Subscribe(None, self._on_event))
        try:
            await self._seed()
        except Exception:  # the metrics still count from now on
            log.warning("metrics: could not read the site's state at start; counting from now on", exc_info=True)

    async def stop(self) -> None:
        """Unsubscribe (bounded); the registry keeps its last values."""
        if not self._started:
            return
        self._started = False
        sid, self._subscription = self._subscription, None
        if sid is not None and self.site.running:
            try:
                async with asyncio.timeout(ASK_TIMEOUT_S):
                    await self.site.ask_async("events", Unsubscribe(sid))
            except Exception:
                log.warning("metrics: unsubscribing from the site's events failed", exc_info=True)

    async def _seed(self) -> None:
        gateway = SiteGateway(self.site, timeout_s=ASK_TIMEOUT_S)
        for state in _OPEN:
            async with asyncio.timeout(ASK_TIMEOUT_S):
                listed = await self.site.ask_async("dispatcher", ListCommands(state))
            with self._lock:
                for c in listed:
                    if c.command_id not in self._open_status:  # an event already said something newer
                        self._set_open(c.command_id, c.status.value, self._kind(c.asset_id))
        for status in await gateway.asset_statuses():
            with self._lock:
                if status.asset_id not in self._link_seen:
                    self.link_up.labels(status.asset_id, self._kind(status.asset_id)).set(status.link == "up")
        await self.refresh()

    async def refresh(self) -> None:
        """Learn the current actor of every asset whose known actor is gone (it restarted), for the
        inbox depths. Called on the loop before a scrape; bounded; cheap when nothing restarted."""
        stale = [a for a in self.kinds if not _alive(self._asset_refs.get(a))]
        if not stale or not self.site.running:
            return
        try:
            async with asyncio.timeout(ASK_TIMEOUT_S):
                refs = await asyncio.gather(*(self.site.ask_async("supervisor", GetAssetRef(a)) for a in stale))
        except Exception:
            log.debug("metrics: asset actor refs not refreshed", exc_info=True)
            return
        for asset_id, ref in zip(stale, refs):
            if ref is not None:
                self._asset_refs[asset_id] = ref

    def render(self) -> bytes:
        """The registry in the Prometheus text format (runs the scrape-time collector: cheap, no asks)."""
        return generate_latest(self.registry)

    # ---- events (in the subscriber's actor thread) -------------------------------------------------
    def _kind(self, asset_id: Any) -> str:
        return self.kinds.get(asset_id, "unknown") if asset_id is not None else "site"

    def _set_open(self, command_id: str, status: str, kind: str) -> None:
        """Move a command between the open-state gauges (lock held)."""
        old = self._open_status.pop(command_id, None)
        if old is not None:
            self.open.labels(*old).dec()
        if CommandStatus(status) in _OPEN:
            self._open_status[command_id] = (status, kind)
            self.open.labels(status, kind).inc()

    def _on_event(self, event: Event) -> None:
        """Every site event (in the subscriber actor's thread)."""
        etype = event.type
        self.events.labels(etype.value).inc()
        payload = event.payload
        if etype.name.startswith("COMMAND_") and "status" in payload:
            self._on_command(event, payload)
        elif etype is EventType.ASSET_CONNECTED or etype is EventType.ASSET_DISCONNECTED:
            asset_id = payload.get("asset_id")
            with self._lock:
                self._link_seen.add(asset_id)
                self.link_up.labels(asset_id, self._kind(asset_id)).set(etype is EventType.ASSET_CONNECTED)
        elif etype is EventType.ASSET_RESTARTED:
            self.restarts.labels(payload.get("asset_id"), self._kind(payload.get("asset_id"))).inc()
        elif etype is EventType.ASSET_UNAVAILABLE:
            self.given_up.labels(payload.get("asset_id"), self._kind(payload.get("asset_id"))).inc()
        elif etype is _grid_limited():
            self.curtailments.labels(self._kind(payload.get("asset_id"))).inc()

    def _on_command(self, event: Event, payload: dict[str, Any]) -> None:
        command_id, status = payload.get("command_id"), payload["status"]
        kind = self._kind(payload.get("asset_id"))
        self.commands.labels(status, kind).inc()
        at = event.timestamp.timestamp()
        first_dispatch = False
        with self._lock:
            self._set_open(command_id, status, kind)
            if status == CommandStatus.DISPATCHED.value:
                first_dispatch = command_id not in self._dispatched
                self._dispatched.setdefault(command_id, at)
            elif CommandStatus(status).is_final:
                started = self._dispatched.pop(command_id, None)
                if started is not None:
                    self.latency.labels(kind).observe(max(0.0, at - started))
        if first_dispatch:
            self._observe_delay(command_id, kind, at, payload.get("scheduled_time"))

    def _observe_delay(self, command_id: str, kind: str, dispatched_at: float, scheduled: Any) -> None:
        """Scheduled time (epoch seconds, in every command event's payload) -> first DISPATCHED."""
        if scheduled is not None:
            when = scheduled.timestamp() if isinstance(scheduled, datetime) else float(scheduled)
            self.delay.labels(kind).observe(max(0.0, dispatched_at - when))


def _alive(ref: Any) -> bool:
    return ref is not None and ref.is_alive()


def _doc(name: str) -> str:
    return next(meaning for n, _, _, meaning in METRICS if n == name)


class _ScrapeCollector(Collector):
    """The values read at scrape time (on the loop): cheap, non-blocking reads, no actor asked."""

    def __init__(self, metrics: SiteMetrics) -> None:
        self._metrics = metrics

    def describe(self) -> Iterator[Any]:
        return iter(self._families())

    def _families(self) -> list[Any]:
        def gauge(name: str, labels: list[str]) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, _doc(name), labels=labels)
        return [gauge("coordinator_journal_bytes", ["stream"]), gauge("coordinator_journal_files", ["stream"]),
                CounterMetricFamily("coordinator_journal_compactions", _doc("coordinator_journal_compactions_total"),
                                    labels=["stream"]),
                gauge("coordinator_journal_last_compaction_timestamp_seconds", ["stream"]),
                gauge("coordinator_journal_last_compaction_duration_seconds", ["stream"]),
                gauge("coordinator_journal_last_compaction_bytes", ["stream", "when"]),
                gauge("coordinator_actor_inbox_messages", ["actor", "asset"]),
                gauge("coordinator_site_running", [])]

    def collect(self) -> Iterator[Any]:
        site = self._metrics.site
        families = self._families()
        journal, files, compactions, last_at, last_s, last_bytes, inbox, running = families
        stats = site.journal_stats()
        for stream in (stats.commands, stats.events) if stats is not None else ():
            journal.add_metric([stream.name], stream.bytes)
            files.add_metric([stream.name], stream.files)
            compactions.add_metric([stream.name], stream.compactions)
            if stream.last_compaction_at is not None:
                last_at.add_metric([stream.name], stream.last_compaction_at)
            if stream.last_compaction_s is not None:
                last_s.add_metric([stream.name], stream.last_compaction_s)
            if stream.last_bytes_before is not None and stream.last_bytes_after is not None:
                last_bytes.add_metric([stream.name, "before"], stream.last_bytes_before)
                last_bytes.add_metric([stream.name, "after"], stream.last_bytes_after)
        for name, depth in site.inbox_depths().items():
            inbox.add_metric([name, ""], float(depth))
        for asset_id, ref in list(self._metrics._asset_refs.items()):
            if _alive(ref):
                inbox.add_metric(["asset", asset_id], _depth(ref))
        running.add_metric([], 1.0 if site.state == "running" else 0.0)
        return iter(families)


def _depth(ref: Any) -> float:
    inbox = getattr(ref, "actor_inbox", None)
    return float(inbox.qsize()) if inbox is not None else 0.0
