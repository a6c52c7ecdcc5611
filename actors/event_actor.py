"""EventActor: broadcasts lifecycle events to subscribers, in order, and journals them.

Each subscriber gets its own :class:`SubscriberActor` (its own thread and inbox). The event actor only
hands events over, so a slow subscriber delays nobody but itself and a raising one is logged and
keeps receiving. Every subscriber sees events in the order the event actor received them.

A burst of ``Publish`` messages is handled as one: when the inbox is empty, the events are journaled
in one write and each subscriber gets one ``Deliver``. The event journal holds every event except
command transitions (COMMAND_*): each of those is already in the command journal as the command's
snapshot, written by the dispatcher before the event was published.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import pykka

from runtime.core.events import COMMAND_EVENTS, Event, EventType

from .handlers import HandlerTable, handles
from .messages import Deliver, Ping, Pong, Publish, Subscribe, Unsubscribe

log = logging.getLogger(__name__)

__all__ = ["EventActor", "SubscriberActor"]


class SubscriberActor(HandlerTable, pykka.ThreadingActor):
    """Calls one subscriber function for every event it is given."""

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

    @handles(Publish)
    def _publish(self, message: Publish) -> None:
        self._pending.extend(message.events)
        self._handled += 1
        if self.actor_inbox.empty():  # end of a burst: journal once, one Deliver per subscriber
            self._flush()

    @handles(Subscribe)
    def _subscribe(self, message: Subscribe) -> int:
        self._flush()  # a new subscriber sees only events published after it subscribed
        sid = self._next_id
        self._next_id += 1
        self._subs[sid] = (message.event_type, SubscriberActor.start(message.fn))
        return sid

    @handles(Unsubscribe)
    def _unsubscribe(self, message: Unsubscribe) -> bool:
        self._flush()  # the leaving subscriber still gets what was published before it left
        entry = self._subs.pop(message.subscription_id, None)
        if entry is not None:
            entry[1].stop(block=False)
        return entry is not None

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
