"""Every message the actors exchange. All are frozen dataclasses: safe to share between threads.

Follow a command through the folders by its messages:
``SubmitCommands``/``SubmitBatch`` (Site -> dispatcher) -> ``Execute`` (dispatcher -> asset actor) ->
``DeviceDone`` (I/O loop -> asset actor) -> ``CommandReports`` (asset actor -> dispatcher).
The supervisor tells the dispatcher ``AssetUp``/``AssetDown``; everybody tells the event actor ``Publish``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from runtime.core.commands import Command, CommandStatus
from runtime.core.events import Event, EventType

if TYPE_CHECKING:  # pragma: no cover
    import pykka

    from protocols.base import DeviceEvent, DeviceResult
    from runtime.core.batch import CommandBatch
    from runtime.core.command_table import Change

__all__ = [
    "SubmitCommands", "SubmitBatch", "Tick", "Execute", "CommandReport", "CommandReports", "AssetUp",
    "AssetDown", "AssetHealth", "GetCommand", "GetCounts", "Publish", "Subscribe", "Unsubscribe", "Deliver",
    "Ping", "Pong", "DeviceDone", "DeviceReport", "Crashed", "Restart", "GetAssetState", "GetStatus",
    "ListCommands", "GetAssetRef", "AssetMemory", "LinkStarted", "AssetRebooted", "SetController",
    "GetControllers", "SetParameter", "EdgeConnected", "EdgeFrame", "EdgeDisconnected", "EdgeSiteEvent",
    "EdgeReply", "EdgeTimer", "GetEdgeState",
]


# ---- Site / dispatcher ---------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class SubmitCommands:
    """Accept commands (ask: returns the tuple of ids that were new; known ids are ignored)."""
    commands: tuple[Command, ...]


@dataclass(frozen=True, slots=True)
class SubmitBatch:
    """Accept a schedule batch (ask). ``replace`` supersedes the assets' pending commands from its start."""
    batch: "CommandBatch"
    replace: bool = True


@dataclass(frozen=True, slots=True)
class Tick:
    """A clock timer fired: sweep and dispatch what is due."""


@dataclass(frozen=True, slots=True)
class GetCommand:
    command_id: str


@dataclass(frozen=True, slots=True)
class ListCommands:
    status: CommandStatus | None = None


@dataclass(frozen=True, slots=True)
class GetCounts:
    """Counts per status (ask)."""


@dataclass(frozen=True, slots=True)
class SetController:
    """Switch a site controller on or off (ask: returns the controllers' states). ``name``: "schedule"
    (follow the submitted schedules) or "grid_limit" (enforce the grid limit)."""
    name: str
    on: bool


@dataclass(frozen=True, slots=True)
class GetControllers:
    """Ask the dispatcher for {controller name: on}."""


# ---- dispatcher <-> asset actor ----------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Execute:
    """Apply these commands, in order (dispatcher -> asset actor)."""
    commands: tuple[Command, ...]


@dataclass(frozen=True, slots=True)
class CommandReport:
    """What became of one command at the asset: ``status`` is ACKNOWLEDGED, COMPLETED, FAILED,
    TIMED_OUT, REJECTED or HELD (device not reachable / asset not healthy). ``attempt``: the attempt
    (``Command.attempts`` as sent) the answer is for, 0 when not known; the dispatcher ignores the answer
    to an earlier attempt once a later one is in flight (a silent device that speaks again answers both)."""
    command_id: str
    status: CommandStatus
    reason: str | None = None
    retryable: bool = True
    attempt: int = 0


@dataclass(frozen=True, slots=True)
class CommandReports:
    """What became of commands at the asset; ``events``: what the asset published while handling them
    (telemetry, state changes), which the dispatcher publishes with its next commit, before the
    reports' own lifecycle events: they travel together instead of as a Publish of their own."""
    asset_id: str
    reports: tuple[CommandReport, ...]
    events: tuple[Event, ...] = ()


@dataclass(frozen=True, slots=True)
class AssetHealth:
    """The asset's state changed: ``healthy`` False holds its commands (FAULTED/UNAVAILABLE/link down)."""
    asset_id: str
    healthy: bool
    state: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class AssetRebooted:
    """The asset's device rebooted and lost its setpoints (asset actor -> dispatcher, when the grid limit
    re-sends them through the policy stage instead of the asset actor)."""
    asset_id: str


@dataclass(frozen=True, slots=True)
class LinkStarted:
    """The device link's start() finished (``error`` when it raised): the actor reports its health."""
    error: str | None = None


@dataclass(frozen=True, slots=True)
class SetParameter:
    """Set (``value``) or clear (None) an operating parameter of an asset (supervisor -> asset actor; the
    supervisor keeps it for a restarted actor). ``min_soc``: a battery refuses to discharge below it (%)."""
    asset_id: str
    name: str
    value: float | None


@dataclass(frozen=True, slots=True)
class GetAssetState:
    """Ask an asset actor what it knows of its asset (an :class:`~runtime.core.assets.AssetStatus`)."""


# ---- supervisor ------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class AssetUp:
    """An asset actor (re)started: ``ref`` is where its commands go now."""
    asset_id: str
    ref: "pykka.ActorRef[Any]"
    restarts: int = 0


@dataclass(frozen=True, slots=True)
class AssetDown:
    """An asset actor died. ``permanent``: the supervisor gave up; the asset is UNAVAILABLE."""
    asset_id: str
    reason: str
    permanent: bool = False


@dataclass(frozen=True, slots=True)
class AssetMemory:
    """What a dying asset actor knew, handed to its successor: the state machine's state and the last
    completed setpoint per channel (to re-send after the device reboots)."""
    state: str
    targets: tuple[Command, ...] = ()


@dataclass(frozen=True, slots=True)
class Crashed:
    """Sent by a dying asset actor (from ``on_failure``) to its supervisor."""
    asset_id: str
    reason: str
    memory: AssetMemory | None = None


@dataclass(frozen=True, slots=True)
class Restart:
    """Backoff timer fired: restart this asset actor."""
    asset_id: str


@dataclass(frozen=True, slots=True)
class GetAssetRef:
    """Ask the supervisor for an asset actor's current ref (None while it is down)."""
    asset_id: str


@dataclass(frozen=True, slots=True)
class GetStatus:
    """Ask the supervisor for {asset_id: "running" | "restarting" | "unavailable"}."""


# ---- device I/O (I/O loop -> asset actor) --------------------------------------------------------

@dataclass(frozen=True, slots=True)
class DeviceDone:
    """A device coroutine finished: results for the commands of one Execute, in order.
    ``resend``: these were completed targets re-applied after a reboot/reconnect, not new commands.
    ``attempts``: each result's command attempt as sent (empty: not known)."""
    results: tuple[tuple[str, "DeviceResult"], ...]
    token: int
    resend: bool = False
    attempts: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class DeviceReport:
    """Something the device said on its own (see protocols.base.DeviceEvent)."""
    event: "DeviceEvent"


# ---- events ----------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Publish:
    """Broadcast these events, in order; then the lifecycle event of each of ``changes`` (command table
    changes, stamped ``at``), which the event actor builds only for the types someone subscribed to."""
    events: tuple[Event, ...]
    changes: "tuple[Change, ...]" = ()
    at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Subscribe:
    """Register a subscriber (ask: returns a subscription id). ``event_type`` None = every type."""
    event_type: EventType | None
    fn: Any


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    subscription_id: int


@dataclass(frozen=True, slots=True)
class Deliver:
    """Event actor -> one subscriber's delivery actor."""
    events: tuple[Event, ...]


# ---- settling (tests and scenarios) ------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Ping:
    """Ask any runtime actor how many messages it has handled (used to detect quiescence)."""


@dataclass(frozen=True, slots=True)
class Pong:
    handled: int
    detail: dict[str, Any] = field(default_factory=dict)


# ---- edge link (the cloud command channel; see actors.edge_link) ---------------------------------

@dataclass(frozen=True, slots=True)
class EdgeConnected:
    """A session with the cloud router opened (I/O loop -> edge link): ``conn`` numbers the sessions."""
    conn: int


@dataclass(frozen=True, slots=True)
class EdgeFrame:
    """A validated frame from the router on session ``conn`` (a protocols.edge.wire model)."""
    conn: int
    frame: Any


@dataclass(frozen=True, slots=True)
class EdgeDisconnected:
    """Session ``conn`` ended (the link reconnects by itself)."""
    conn: int
    reason: str


@dataclass(frozen=True, slots=True)
class EdgeSiteEvent:
    """A site event the edge link follows (its commands' lifecycle, telemetry, asset states)."""
    event: Event


@dataclass(frozen=True, slots=True)
class EdgeReply:
    """The answer to the edge link's ``Request`` number ``token`` (result, or the error the actor raised)."""
    token: int
    result: Any
    error: BaseException | None = None


@dataclass(frozen=True, slots=True)
class EdgeTimer:
    """An edge-link timer fired: ``kind`` "expiry", "lease", "telemetry" or "state"; ``key`` says for what."""
    kind: str
    key: str = ""


@dataclass(frozen=True, slots=True)
class GetEdgeState:
    """Ask the edge link what it is doing (a dict: connected, ready, last_seq, queued, in_flight, leases,
    controllers)."""
