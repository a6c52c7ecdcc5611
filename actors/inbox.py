"""WatchedInbox: an actor's inbox that tells, without waking the actor, whether the actor has work.

``Site.settle`` finds a site quiet when two looks in a row at every actor see the same counts and
nothing unfinished. Asking each of 2,000 asset actors for its count wakes 2,000 threads, and on one
core (the GIL) that costs about 100 us each: a look took 0.2-0.5 s however idle the site was. This inbox
keeps what a look needs, under the queue's own lock:

* ``taken``: how many messages the actor has taken out so far;
* whether the actor is busy: from taking a message until it asks for the next one. pykka's actor loop
  calls ``get()`` in the actor's thread once per message, after it has handled the previous one (and after
  ``on_start``: an actor is busy from its creation until its loop first asks).

An actor whose inbox is empty and who is not busy has handled everything it was ever sent, so a look
at it (:meth:`look`, from any thread) is as good as a ``Ping`` answered by it, without a wake-up.
An actor opts in with ``_create_actor_inbox = staticmethod(WatchedInbox)`` (pykka's hook for an actor's inbox).
"""

from __future__ import annotations

import queue
from typing import Any

__all__ = ["WatchedInbox"]


class WatchedInbox(queue.Queue):  # type: ignore[type-arg]
    """A ``queue.Queue`` that counts what its single consumer (the actor's thread) takes, and knows
    whether that consumer is between messages."""

    taken: int
    _busy: bool

    def _init(self, maxsize: int) -> None:  # under construction (Queue.__init__ calls it)
        super()._init(maxsize)
        self.taken = 0
        self._busy = True  # on_start runs before the loop's first get()

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        """In the actor's thread: the actor has finished its previous message (or its start)."""
        with self.mutex:
            self._busy = False
        return super().get(block, timeout)

    def _get(self) -> Any:  # under self.mutex, in the actor's thread
        self.taken += 1
        self._busy = True
        return super()._get()

    def look(self) -> tuple[int, bool]:
        """Any thread: (messages taken so far, idle), idle meaning nothing waits in the inbox and the
        actor is not handling a message (nor starting). One consistent view, under the queue's lock."""
        with self.mutex:
            return self.taken, not self._busy and not self._qsize()
