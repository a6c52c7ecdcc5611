"""EventActor: broadcasts lifecycle events to subscribers, in order, and journals them.

Each subscriber gets its own :class:`SubscriberActor` (its own thread and inbox). The event actor only
hands events over, so a slow subscriber delays nobody but itself and a raising one is logged and
keeps receiving. Every subscriber sees events in the order the event actor received them.

A burst of ``Publish`` messages is handled as one: when the inbox is empty, the events are journaled
in one write and each subscriber gets one ``Deliver``. The event journal holds every event except
command transitions (COMMAND_*): each of those is already in the command journal as the command's
snapshot, written by the dispatcher before the event was published.

The dispatcher publishes its command table changes as they are (``Publish.changes``), not as events:
this actor builds the lifecycle event of a change (:func:`change_event`) only when a subscriber takes
that type, so a site where nobody listens to COMMAND_DISPATCHED never makes one. It knows its
subscribers exactly when it handles each message, so a subscriber still gets every event published after
its ``Subscribe`` was answered.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import pykka

from runtime.core.command_table import Change
from runtime.core.commands import CommandStatus, CommandType
from runtime.core.events import COMMAND_EVENTS, Event, EventType

from .handlers import HandlerTable, handles
from .inbox import WatchedInbox
from .messages import Deliver, Ping, Pong, Publish, Subscribe, Unsubscribe

log = logging.getLogger(__name__)

__all__ = ["EventActor", "SubscriberActor", "change_event", "change_event_type"]

#: Enum member -> its value (the ``.value`` property is slow on CPython 3.11's hot path)
_VALUE: dict[Any, str] = {m: m.value for e in (CommandStatus, CommandType) for m in e}
_HELD, _PENDING = CommandStatus.HELD, CommandStatus.PENDING


def change_event_type(change: Change) -> EventType | None:
    """The type of the lifecycle event of one table change: ``change.event``, COMMAND_RELEASED for a HELD
    command released to PENDING, None for the other silent changes (in-flight commands re-queued by a
    journal restore)."""
    event_type = change.event
    if event_type is None and change.previous is _HELD and change.command.status is _PENDING:
        return EventType.COMMAND_RELEASED
    return event_type


def change_event(change: Change, now: Any) -> Event | None:
    """The lifecycle event for one table change (None when it has none: see :func:`change_event_type`)."""
    event_type = change_event_type(change)
    if event_type is None:
        return None
    c = change.command
    previous = change.previous
    payload = {"command_id": c.command_id, "asset_id": c.asset_id, "command_type": _VALUE[c.command_type],
               "value": c.value, "status": _VALUE[c.status],
               "previous_status": _VALUE[previous] if previous is not None else None,
               "attempts": c.attempts, "error": c.last_error, "scheduled_time": c.scheduled_time.timestamp()}
    if change.retry_at is not None:
        payload["retry_at"] = change.retry_at
    if c.granted is not None:
        payload["granted"] = c.granted
    return Event(event_type, now, payload)


class SubscriberActor(HandlerTable, pykka.ThreadingActor):
    """Calls one subscriber function for every event it is given."""

    _create_actor_inbox = staticmethod(WatchedInbox)  # Site.settle looks at it instead of waking the actor

    def __init__(self, fn: Callable[[Event], Any]) -> None:
        super().__init__()
        self._fn = fn
        self._handled = 0

    @handles(Deliver)
    def _deliver(self, message: Deliver) -> None:
        for event in message.events:
            try:
                self._fn(event)
            except Exception:
                log.exception("event subscriber %r raised on %s", self._fn, event.type.value)
        self._handled += 1

    @handles(Ping)
    def _ping(self, message: Ping) -> Pong:
        return Pong(self._handled)


class EventActor(HandlerTable, pykka.ThreadingActor):
    """Owns the subscription list and (optionally) the event journal."""

    def __init__(self, journal: Any | None = None, on_failure: Callable[[str], None] | None = None) -> None:
        super().__init__()
        self._journal = journal
        self._on_failure = on_failure
        self._subs: dict[int, tuple[EventType | None, pykka.ActorRef[Any]]] = {}
        self._next_id = 1
        self._handled = 0
        self._pending: list[Event] = []  # published, not yet journaled and delivered (end of burst)
        self.published = 0
        #: the event types some subscriber takes (None: one takes every type), kept with ``_subs``
        self._wanted: frozenset[EventType] | None = frozenset()

    @handles(Publish)
    def _publish(self, message: Publish) -> None:
        self._pending.extend(message.events)
        if message.changes:
            wanted, at = self._wanted, message.at
            if wanted is None:
                self._pending.extend(e for e in (change_event(ch, at) for ch in message.changes) if e is not None)
            elif wanted:
                self._pending.extend(change_event(ch, at) for ch in message.changes
                                     if ch.event in wanted or (ch.event is None and change_event_type(ch) in wanted))
        self._handled += 1
        if self.actor_inbox.empty():  # end of a burst: journal once, one Deliver per subscriber
            self._flush()

    @handles(Subscribe)
    def _subscribe(self, message: Subscribe) -> int:
        self._flush()  # a new subscriber sees only events published after it subscribed
        sid = self._next_id
        self._next_id += 1
        self._subs[sid] = (message.event_type, SubscriberActor.start(message.fn))
        self._follow_subscriptions()
        return sid

    @handles(Unsubscribe)
    def _unsubscribe(self, message: Unsubscribe) -> bool:
        self._flush()  # the leaving subscriber still gets what was published before it left
        entry = self._subs.pop(message.subscription_id, None)
        if entry is not None:
            entry[1].stop(block=False)
            self._follow_subscriptions()
        return entry is not None

    def _follow_subscriptions(self) -> None:
        types = [t for t, _ in self._subs.values()]
        self._wanted = None if None in types else frozenset(t for t in types if t is not None)

    @handles(Ping)
    def _ping(self, message: Ping) -> Pong:
        self._flush()
        return Pong(self._handled, {"subscribers": [ref for _, ref in self._subs.values()]})

    def _flush(self) -> None:
        if not self._pending:
            return
        events, self._pending = tuple(self._pending), []
        if self._journal is not None:
            self._journal_events(tuple(e for e in events if e.type not in COMMAND_EVENTS))
        self.published += len(events)
        for event_type, ref in self._subs.values():
            batch = events if event_type is None else tuple(e for e in events if e.type is event_type)
            if batch:
                try:
                    ref.tell(Deliver(batch))
                except pykka.ActorDeadError:
                    log.warning("subscriber actor %s is gone; events dropped for it", ref)

    def _journal_events(self, events: tuple[Event, ...]) -> None:
        assert self._journal is not None
        if not events:
            return
        try:
            self._journal.append_many({"k": "ev", "e": e.to_record()} for e in events)
        except TypeError:  # a payload value the journal cannot hold: keep the event, as text
            log.exception("event payload cannot be journaled as is; journaling its text instead")
            self._journal.append_many({"k": "ev", "e": {**e.to_record(), "payload": repr(e.payload)}}
                                      for e in events)
        self._journal.sync()

    def on_failure(self, exc_type: Any, exc_value: Any, traceback: Any) -> None:
        """A handler raised (e.g. the event journal could not be written) and pykka is stopping this actor
        (in its own thread): tell the site. Subscribers get nothing more."""
        reason = f"event actor failed: {exc_type.__name__}: {exc_value}"
        log.error("%s; no more events are delivered", reason)
        for _, ref in self._subs.values():
            ref.stop(block=False)
        if self._on_failure is not None:
            self._on_failure(reason)

    def on_stop(self) -> None:
        self._flush()
        for _, ref in self._subs.values():
            try:
                ref.stop(block=True, timeout=5)
            except pykka.Timeout:
                log.error("subscriber actor %s did not stop within 5 s (a subscriber that never returns)", ref)
        self._subs.clear()
        if self._journal is not None:
            self._journal.close()
