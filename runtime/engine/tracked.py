"""Commands as the seed API hands them out: views that always show the command's current state.

In the seed's loop::

    for cmd in engine.get_pending_commands(now):
        engine.dispatch_command(cmd, registry.get(cmd.asset_id))
        print(cmd.status)                      # DISPATCHED: the command the user holds moves with it

the user holds a :class:`TrackedCommand`: a read-only view of one command id in one engine. Every
attribute (``status``, ``attempts``, ``last_error``, ...) is read from the engine's current snapshot
(:class:`~runtime.core.commands.Command`, an immutable named tuple that the engine and the actors keep
passing around unchanged). :class:`TrackedBatch` is a schedule's batch whose items are such views.

A view compares equal to another view of the same command, and to a ``Command`` equal to its current
snapshot; :attr:`TrackedCommand.snapshot` gives the snapshot itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, overload

from ..core.batch import CommandBatch
from ..core.commands import Command

__all__ = ["TrackedCommand", "TrackedBatch"]


class TrackedCommand:
    """A live, read-only view of one command (see the module docstring). Not thread-safe, like the engine."""

    __slots__ = ("command_id", "_lookup", "_last")

    def __init__(self, snapshot: Command, lookup: Callable[[str], Command | None]) -> None:
        self.command_id = snapshot.command_id
        self._lookup = lookup
        self._last = snapshot

    @property
    def snapshot(self) -> Command:
        """The command's current immutable snapshot (the last one seen, should the engine forget it)."""
        current = self._lookup(self.command_id)
        if current is not None:
            self._last = current
        return self._last

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.snapshot, name)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, TrackedCommand):
            return other.command_id == self.command_id and other.snapshot == self.snapshot
        if isinstance(other, Command):
            return other == self.snapshot
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.command_id)

    def __repr__(self) -> str:
        return f"Tracked{self.snapshot!r}"


class TrackedBatch(Sequence[TrackedCommand]):
    """A schedule's :class:`~runtime.core.batch.CommandBatch` whose items are :class:`TrackedCommand`
    views; every other attribute (``batch_id``, ``times``, ``assets``, ``command_id(i)``, ...) is the batch's."""

    def __init__(self, batch: CommandBatch, lookup: Callable[[str], Command | None]) -> None:
        self.batch = batch
        self._lookup = lookup

    def __len__(self) -> int:
        return len(self.batch)

    @overload
    def __getitem__(self, i: int) -> TrackedCommand: ...

    @overload
    def __getitem__(self, i: slice) -> list[TrackedCommand]: ...

    def __getitem__(self, i: int | slice) -> TrackedCommand | list[TrackedCommand]:
        if isinstance(i, slice):
            return [TrackedCommand(c, self._lookup) for c in self.batch[i]]
        return TrackedCommand(self.batch[i], self._lookup)

    def __iter__(self) -> Iterator[TrackedCommand]:
        return (TrackedCommand(c, self._lookup) for c in self.batch)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("batch", "_lookup"):
            raise AttributeError(name)
        return getattr(self.batch, name)

    def __repr__(self) -> str:
        return f"Tracked{self.batch!r}"
