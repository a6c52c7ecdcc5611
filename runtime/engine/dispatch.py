"""DispatchEngine: the synchronous, actor-free dispatch API (the seed API).

::

    bus = EventBus(); registry = AdapterRegistry()
    registry.register("ast_ev_001", OCPPAdapter("ocpp_site_1"))
    engine = DispatchEngine(event_bus=bus, adapter_registry=registry)
    batch = engine.schedule_to_commands(schedule_df, asset_map={"ev_001": "ast_ev_001"})
    for cmd in engine.get_pending_commands(now):
        engine.dispatch_command(cmd, registry.get(cmd.asset_id))

The engine wraps one :class:`~runtime.core.command_table.CommandTable` (the same core the dispatcher
actor of a :class:`~runtime.site.Site` uses) and publishes one event on its bus for every change
of a command, in the order the changes happen. Payload: ``command_id, asset_id, command_type,
value, status, previous_status, attempts, error, scheduled_time, priority`` (types and statuses as
their string values, times as epoch seconds), plus ``retry_at`` for a scheduled retry and
``request`` (the translated message) for COMMAND_DISPATCHED. A HELD command released to PENDING
publishes nothing (see :class:`~runtime.core.command_table.Change`).

Rows of a schedule are stored lazily (as columns, materialized as they fall due), but every command is
announced when it is created: ``schedule_to_commands`` publishes SCHEDULE_RECEIVED, then one
COMMAND_CREATED per command of the schedule, in row order (only when someone subscribes to
COMMAND_CREATED or to every event: a bus nobody listens to costs nothing per row).

Commands handed to the caller to act on are :class:`~runtime.engine.tracked.TrackedCommand` views: the
items of the batch ``schedule_to_commands`` returns, what ``get_pending_commands`` and ``submit``
return. Their attributes always show the command's current state (after ``dispatch_command(cmd)``,
``cmd.status`` is DISPATCHED). ``get``, ``commands`` and ``check_timeouts`` return immutable snapshots.

Asset health: the engine listens to STATE_CHANGED on its bus. ``to_state`` FAULTED or UNAVAILABLE
marks the asset unavailable (its due commands become HELD), any other state available (its HELD
commands are released). A state machine built on the same bus therefore drives HELD/release.

Times: ``now`` arguments are tz-aware datetimes (a naive one raises ValueError naming the
argument). Omitted, the engine uses the latest ``now`` the caller gave it (to ``get_pending_commands``,
``check_timeouts`` or any other method), so a caller replaying a schedule on its own time line gets
consistent deadlines; before any, the engine's ``clock`` is read. Not thread-safe: one caller at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from typing import Any

from ..core.batch import CommandBatch
from ..core.clock import to_datetime
from ..core.command_table import Change, CommandTable
from ..core.commands import Command, CommandStatus, InvalidCommandTransition
from ..core.errors import ConfigurationError
from ..core.events import Event, EventBus, EventType
from ..core.retry import RetryPolicy
from .tracked import TrackedBatch, TrackedCommand

__all__ = ["DispatchEngine"]

_UNAVAILABLE_STATES = frozenset({"FAULTED", "UNAVAILABLE"})
_IN_FLIGHT = frozenset({CommandStatus.DISPATCHED, CommandStatus.ACKNOWLEDGED})


class DispatchEngine:
    """Synchronous command dispatch over one :class:`CommandTable`.

    ``event_bus``: where events go (a private bus when None, see :attr:`event_bus`);
    ``adapter_registry``: used by :meth:`dispatch_command` when no adapter is given;
    ``retry``, ``ack_timeout_s``, ``completion_timeout_s``: see :class:`CommandTable`;
    ``clock``: returns the current tz-aware datetime (default: the system clock, UTC).
    """

    def __init__(self, event_bus: EventBus | None = None, adapter_registry: Any = None,
                 retry: RetryPolicy | None = None, ack_timeout_s: float = 10.0,
                 completion_timeout_s: float = 60.0, clock: Callable[[], datetime] | None = None) -> None:
        self.event_bus = event_bus if event_bus is not None else EventBus(clock=clock)
        self.adapter_registry = adapter_registry
        self.table = CommandTable(retry if retry is not None else RetryPolicy(), ack_timeout_s=ack_timeout_s,
                                  completion_timeout_s=completion_timeout_s)
        self._clock = clock or (lambda: datetime.now(timezone.utc))
        self._last_now: float | None = None  # the latest time the caller gave (see "Times" above)
        self._announced: set[str] = set()     # batches whose rows were announced (COMMAND_CREATED) on arrival
        self._unsubscribe = self.event_bus.subscribe(EventType.STATE_CHANGED, self._on_state_changed)

    def close(self) -> None:
        """Stop listening to STATE_CHANGED on the bus (the engine is otherwise usable)."""
        self._unsubscribe()

    # ------------------------------------------------------------------ input

    def schedule_to_commands(self, schedule_df: Any, asset_map: Mapping[str, str] | None = None, *,
                             replace: bool = True, now: datetime | None = None, **kwargs: Any) -> TrackedBatch:
        """Turn a schedule into commands (:func:`runtime.core.schedule.schedule_to_commands`, ``kwargs``
        passed on; ``created_at`` defaults to ``now``) and store them as a lazy batch; returns the batch
        (its items are :class:`TrackedCommand` views).

        Publishes SCHEDULE_RECEIVED (``batch_id, commands, assets`` (counts), ``start, end`` (epoch
        seconds, None when empty)). With ``replace`` (default), the new schedule replaces the old
        one: not-yet-dispatched commands of its assets scheduled at or after its first timestamp
        are SUPERSEDED (one event each, after SCHEDULE_RECEIVED). Then COMMAND_CREATED for each of the
        new commands (see the module docstring). A batch id the engine knows is ignored (a retried
        submission changes nothing and publishes nothing).
        """
        from ..core.schedule import schedule_to_commands

        t = self._epoch(now, "now")
        kwargs.setdefault("created_at", t)
        batch = schedule_to_commands(schedule_df, asset_map, **kwargs)
        if self.table.has_batch(batch.batch_id):
            return TrackedBatch(batch, self.table.get)
        n = len(batch)
        self.event_bus.emit(EventType.SCHEDULE_RECEIVED, {
            "batch_id": batch.batch_id, "commands": n, "assets": len(batch.assets),
            "start": float(batch.times[0]) if n else None, "end": float(batch.times[-1]) if n else None},
            timestamp=to_datetime(t))
        if replace and n:
            self._publish(self.table.supersede_future(batch.assets, float(batch.times[0]), t), t)
        self.table.add_batch(batch, t)
        if n and self.event_bus.has_subscribers(EventType.COMMAND_CREATED):
            self._announced.add(batch.batch_id)
            self._announce(batch, t)
        return TrackedBatch(batch, self.table.get)

    def _announce(self, batch: CommandBatch, now: float) -> None:
        """One COMMAND_CREATED per row of a new batch, built from its columns (no Command objects)."""
        stamp = to_datetime(now)
        types = [t.value for t in CommandBatch.TYPES]
        assets, publish = batch.assets, self.event_bus.publish
        for i, (at, code, tcode, value) in enumerate(zip(batch.times.tolist(), batch.asset_codes.tolist(),
                                                         batch.type_codes.tolist(), batch.values.tolist())):
            publish(Event(EventType.COMMAND_CREATED, stamp, {
                "command_id": batch.command_id(i), "asset_id": assets[code], "command_type": types[tcode],
                "value": value, "status": "PENDING", "previous_status": None, "attempts": 0, "error": None,
                "scheduled_time": at, "priority": batch.priority}))

    def submit(self, command: Command, now: datetime | None = None) -> TrackedCommand | None:
        """Add one PENDING command (COMMAND_CREATED); returns a :class:`TrackedCommand` view of it.

        The same id submitted again is ignored: a view of the existing command is returned (None when
        it has been pruned from the table), nothing is published.
        """
        t = self._epoch(now, "now")
        self._publish(self.table.add([command], t), t)
        current = self.table.get(command.command_id)
        return TrackedCommand(current, self.table.get) if current is not None else None

    # ------------------------------------------------------------------ dispatch

    def get_pending_commands(self, now: datetime) -> list[TrackedCommand]:
        """Sweep the table at ``now`` (publishing its changes) and return the due commands, best first,
        as :class:`TrackedCommand` views."""
        t = self._epoch(now, "now")
        self._publish(self.table.sweep(t), t)
        return [TrackedCommand(c, self.table.get) for c in self.table.due(t)]

    def dispatch_command(self, cmd: Command | TrackedCommand, adapter: Any = None,
                         now: datetime | None = None) -> dict[str, Any] | None:
        """Translate the table's current snapshot of ``cmd`` with ``adapter`` (default: the registry's
        adapter of its asset) and mark it DISPATCHED; returns the translated message for the caller
        to send.

        COMMAND_DISPATCHED carries it as ``request``. If translation raises, the command is REJECTED
        with the error text (COMMAND_REJECTED) and None is returned. Raises
        :class:`InvalidCommandTransition` when the command is not PENDING any more (e.g. it was
        superseded), KeyError for an unknown id, ValueError when there is neither an adapter nor a
        registry.
        """
        t = self._epoch(now, "now")
        current = self.table.get(cmd.command_id)
        if current is None:
            raise KeyError(f"unknown command {cmd.command_id!r}")
        if current.status is not CommandStatus.PENDING:
            raise InvalidCommandTransition(f"command {cmd.command_id}: only a PENDING command can be "
                                           f"dispatched, it is {current.status.value}")
        if adapter is None:
            if self.adapter_registry is None:
                raise ConfigurationError(f"dispatch_command: no adapter given and no adapter_registry "
                                 f"(command {cmd.command_id})")
            adapter = self.adapter_registry.get(current.asset_id)
        try:
            request: dict[str, Any] = adapter.translate(current)
        except Exception as exc:
            self._publish(self.table.reject(current.command_id, str(exc) or type(exc).__name__, t), t)
            return None
        self._publish([self.table.mark_dispatched(current.command_id, t)], t, request=request)
        return request

    # ------------------------------------------------------------------ answers

    def acknowledge(self, command_id: str, now: datetime | None = None) -> Command | None:
        """The device acknowledged: DISPATCHED -> ACKNOWLEDGED.

        Like every answer method, returns the command's current snapshot (None once pruned); a late
        answer (the command is superseded, final or not in flight) changes and publishes nothing.
        """
        t = self._epoch(now, "now")
        return self._answer(self.table.acknowledge(command_id, t), command_id, t)

    def complete(self, command_id: str, now: datetime | None = None) -> Command | None:
        """The device applied it: DISPATCHED/ACKNOWLEDGED -> COMPLETED. Returns the current snapshot."""
        t = self._epoch(now, "now")
        return self._answer(self.table.complete(command_id, t), command_id, t)

    def fail(self, command_id: str, error: str, now: datetime | None = None, retryable: bool = True) -> Command | None:
        """The device failed it: retried with backoff while attempts are left (COMMAND_RETRY_SCHEDULED),
        else FAILED (see :meth:`CommandTable.fail`). Returns the current snapshot."""
        t = self._epoch(now, "now")
        return self._answer(self.table.fail(command_id, error, t, retryable=retryable), command_id, t)

    def reject(self, command_id: str, reason: str, now: datetime | None = None) -> Command | None:
        """The command is invalid for the device: REJECTED (final). Returns the current snapshot."""
        t = self._epoch(now, "now")
        return self._answer(self.table.reject(command_id, reason, t), command_id, t)

    def check_timeouts(self, now: datetime) -> list[Command]:
        """Sweep the table at ``now`` (publishing every change) and return the commands that timed out
        (their new snapshot: PENDING/HELD for a retry, TIMED_OUT when final, EXPIRED when expired)."""
        t = self._epoch(now, "now")
        changes = self.table.sweep(t)
        self._publish(changes, t)
        # In a sweep, an in-flight command changes for two reasons only: supersession or a timeout.
        return [ch.command for ch in changes
                if ch.previous in _IN_FLIGHT and ch.command.status is not CommandStatus.SUPERSEDED]

    # ------------------------------------------------------------------ assets and queries

    def set_asset_available(self, asset_id: str, available: bool, now: datetime | None = None) -> None:
        """Mark an asset (un)available: its due commands are HELD, or its HELD commands released."""
        t = self._epoch(now, "now")
        self._publish(self.table.set_available(asset_id, available, t), t)

    def get(self, command_id: str) -> Command | None:
        """Current snapshot of a command (lazy schedule rows included), None if unknown."""
        return self.table.get(command_id)

    def commands(self, status: CommandStatus | None = None) -> list[Command]:
        """Materialized commands, optionally of one status (schedule rows appear once due)."""
        return self.table.commands(status)

    # ------------------------------------------------------------------ internals

    def _on_state_changed(self, event: Event) -> None:
        asset_id, to_state = event.payload.get("asset_id"), event.payload.get("to_state")
        if isinstance(asset_id, str) and to_state is not None:
            self.set_asset_available(asset_id, to_state not in _UNAVAILABLE_STATES)

    def _answer(self, changes: list[Change], command_id: str, now: float) -> Command | None:
        self._publish(changes, now)
        return self.table.get(command_id)

    def _epoch(self, value: datetime | None, name: str) -> float:
        if value is None:
            return self._last_now if self._last_now is not None else self._clock().timestamp()
        if not isinstance(value, datetime):
            raise TypeError(f"{name}: must be a tz-aware datetime, got {value!r}")
        if value.tzinfo is None:
            raise ValueError(f"{name}: naive datetime {value!r}; give a timezone (e.g. UTC)")
        self._last_now = value.timestamp()
        return self._last_now

    def _publish(self, changes: list[Change], now: float, **extra: Any) -> None:
        """One event per change, in order; changes without an event are not published."""
        stamp = to_datetime(now)
        for ch in changes:
            if ch.event is None:
                continue
            c = ch.command
            if ch.event is EventType.COMMAND_CREATED and self._announced and \
                    c.command_id.rpartition("-")[0] in self._announced:
                continue  # a schedule row falling due: it was announced when the schedule arrived
            payload: dict[str, Any] = {
                "command_id": c.command_id, "asset_id": c.asset_id, "command_type": c.command_type.value,
                "value": c.value, "status": c.status.value,
                "previous_status": ch.previous.value if ch.previous is not None else None,
                "attempts": c.attempts, "error": c.last_error, "scheduled_time": c.scheduled_time.timestamp(),
                "priority": c.priority}
            if ch.retry_at is not None:
                payload["retry_at"] = ch.retry_at
            payload.update(extra)
            self.event_bus.publish(Event(ch.event, stamp, payload))
