"""EdgeQueue: the edge link's bounded queue of device commands waiting for their device to be free.

The edge link hands the site one cloud command per device at a time (the next once the previous one is
final); the others wait here, in arrival order per device. Pure and single-threaded: it belongs to the
edge-link actor, and times are that actor's monotonic seconds.

* bounded: :meth:`EdgeQueue.offer` refuses a command when ``capacity`` commands wait already (the
  caller rejects it ``edge_busy``: never dropped silently);
* supersession: a newer command for the same (device, channel) replaces the older one still waiting
  (returned, to be acked "superseded"), unless the newer one says ``supersede=False``;
* expiry: :meth:`EdgeQueue.expire` takes out every command whose deadline has passed (acked "expired").

Emergencies never wait here: the edge link submits them at once and the site's dispatcher lets them
overtake what is queued for their asset.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator

__all__ = ["EdgeQueue", "Waiting"]


@dataclass(frozen=True, slots=True)
class Waiting:
    """A validated device command waiting for its device. ``deadline``: monotonic seconds when it expires
    (None: never); ``plan``: what to submit (opaque here)."""

    command_id: str
    device_id: str
    channel: str
    deadline: float | None
    supersede: bool
    plan: Any


class EdgeQueue:
    """See the module docstring."""

    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError(f"capacity: must be >= 0, got {capacity!r}")
        self.capacity = capacity
        self._items: dict[str, Waiting] = {}   # arrival order

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Waiting]:
        return iter(list(self._items.values()))

    def __contains__(self, command_id: object) -> bool:
        return command_id in self._items

    def has_device(self, device_id: str) -> bool:
        """True when a command for ``device_id`` waits."""
        return any(w.device_id == device_id for w in self._items.values())

    def offer(self, item: Waiting) -> tuple[bool, list[Waiting]]:
        """Queue ``item``: (True, the waiting commands it supersedes, now removed), or (False, []) when the
        queue is full even after those would go."""
        channel = (item.device_id, item.channel)
        superseded = ([w for w in self._items.values() if (w.device_id, w.channel) == channel]
                      if item.supersede else [])
        if len(self._items) - len(superseded) >= self.capacity:
            return False, []
        for w in superseded:
            del self._items[w.command_id]
        self._items[item.command_id] = item
        return True, superseded

    def supersede(self, device_id: str, channel: str) -> list[Waiting]:
        """Remove and return every command waiting for (``device_id``, ``channel``): an emergency for that
        channel went to the site ahead of them."""
        gone = [w for w in self._items.values() if (w.device_id, w.channel) == (device_id, channel)]
        for w in gone:
            del self._items[w.command_id]
        return gone

    def take(self, busy: Callable[[str], bool]) -> list[Waiting]:
        """Remove and return the first waiting command of every device that is not ``busy``, in arrival order."""
        taken: dict[str, Waiting] = {}
        for w in self._items.values():
            if w.device_id not in taken and not busy(w.device_id):
                taken[w.device_id] = w
        for w in taken.values():
            del self._items[w.command_id]
        return list(taken.values())

    def expire(self, now: float) -> list[Waiting]:
        """Remove and return every command whose deadline is ``now`` or earlier, in arrival order."""
        gone = [w for w in self._items.values() if w.deadline is not None and w.deadline <= now]
        for w in gone:
            del self._items[w.command_id]
        return gone

    def remove(self, command_id: str) -> Waiting | None:
        """Take one command out (a cancel); None when it is not waiting."""
        return self._items.pop(command_id, None)

    def next_deadline(self) -> float | None:
        """The earliest deadline of a waiting command, or None."""
        deadlines = [w.deadline for w in self._items.values() if w.deadline is not None]
        return min(deadlines) if deadlines else None
