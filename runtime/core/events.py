"""Typed lifecycle events and the synchronous :class:`EventBus`.

An :class:`Event` is immutable: a type, a tz-aware timestamp and a payload dict (treat it as
read-only). The same event types flow through the synchronous bus (seed API, usable without
actors) and through the event actor of a running :class:`~runtime.site.Site`.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum
from typing import Any, Callable

log = logging.getLogger(__name__)

__all__ = ["EventType", "Event", "EventBus", "Subscriber", "COMMAND_EVENTS"]


class EventType(str, Enum):
    """Every kind of event the runtime publishes."""

    COMMAND_CREATED = "COMMAND_CREATED"
    COMMAND_DISPATCHED = "COMMAND_DISPATCHED"
    COMMAND_ACKNOWLEDGED = "COMMAND_ACKNOWLEDGED"
    COMMAND_COMPLETED = "COMMAND_COMPLETED"
    COMMAND_FAILED = "COMMAND_FAILED"
    COMMAND_TIMED_OUT = "COMMAND_TIMED_OUT"
    COMMAND_EXPIRED = "COMMAND_EXPIRED"
    COMMAND_SUPERSEDED = "COMMAND_SUPERSEDED"
    COMMAND_REJECTED = "COMMAND_REJECTED"
    COMMAND_HELD = "COMMAND_HELD"
    COMMAND_RELEASED = "COMMAND_RELEASED"
    COMMAND_RETRY_SCHEDULED = "COMMAND_RETRY_SCHEDULED"
    STATE_CHANGED = "STATE_CHANGED"
    SCHEDULE_RECEIVED = "SCHEDULE_RECEIVED"
    TELEMETRY = "TELEMETRY"
    ASSET_CONNECTED = "ASSET_CONNECTED"
    ASSET_DISCONNECTED = "ASSET_DISCONNECTED"
    ASSET_RESTARTED = "ASSET_RESTARTED"
    ASSET_UNAVAILABLE = "ASSET_UNAVAILABLE"
    SITE_FAILED = "SITE_FAILED"
    GRID_LIMITED = "GRID_LIMITED"


#: The command lifecycle events (one per command transition).
COMMAND_EVENTS = frozenset(t for t in EventType if t.name.startswith("COMMAND_"))


@dataclass(frozen=True, slots=True)
class Event:
    """One event: ``type``, ``timestamp`` (tz-aware UTC) and ``payload``."""

    type: EventType
    timestamp: datetime
    payload: dict[str, Any] = field(default_factory=dict)

    def to_record(self) -> dict[str, Any]:
        """A msgpack-friendly dict for the journal. The payload is passed as it is: the journal's
        packer turns datetimes, enums and other objects into plain values (see runtime.core.journal)."""
        return {"type": self.type.value, "ts": self.timestamp.timestamp(), "payload": self.payload}


Subscriber = Callable[[Event], Any]


class EventBus:
    """Typed synchronous publish/subscribe.

    ``subscribe(EventType.X, fn)`` registers ``fn`` for one type; ``subscribe(None, fn)`` for all.
    ``publish`` calls the matching subscribers (typed and catch-all alike) in subscription order, in
    the publishing thread. A subscriber that
    raises is logged and the others still receive the event.
    """

    def __init__(self, clock: Callable[[], datetime] | None = None) -> None:
        self._subs: list[tuple[EventType | None, Subscriber]] = []  # in subscription order
        self._lock = threading.Lock()
        self._now = clock or (lambda: datetime.now(timezone.utc))

    def subscribe(self, event_type: EventType | None, fn: Subscriber) -> Callable[[], None]:
        """Register ``fn``; returns a function that unsubscribes it."""
        if event_type is not None and not isinstance(event_type, EventType):
            raise TypeError(f"event_type must be an EventType or None, got {event_type!r}")
        with self._lock:
            self._subs.append((event_type, fn))

        def unsubscribe() -> None:
            self.unsubscribe(event_type, fn)

        return unsubscribe

    def unsubscribe(self, event_type: EventType | None, fn: Subscriber) -> None:
        with self._lock:
            if (event_type, fn) in self._subs:
                self._subs.remove((event_type, fn))

    def has_subscribers(self, event_type: EventType) -> bool:
        """True when an event of ``event_type`` would reach someone (a subscriber to that type or to every type)."""
        with self._lock:
            return any(t is None or t is event_type for t, _ in self._subs)

    def emit(self, event_type: EventType, payload: dict[str, Any] | None = None,
             timestamp: datetime | None = None) -> Event:
        """Build an event stamped with the bus clock (or ``timestamp``) and publish it."""
        event = Event(event_type, timestamp or self._now(), dict(payload or {}))
        self.publish(event)
        return event

    def publish(self, event: Event) -> None:
        with self._lock:
            targets = [fn for t, fn in self._subs if t is None or t is event.type]
        for fn in targets:
            try:
                fn(event)
            except Exception:
                log.exception("event subscriber %r raised on %s", fn, event.type.value)
