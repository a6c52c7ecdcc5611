"""The dispatch policy: the one synchronous stage every command passes on its way to a device.

The dispatcher calls it between the command table's ``due()`` and ``mark_dispatched``, so it sees every
command before it is sent: new ones, retries, commands released from HELD and commands restored after
a restart. It also reviews each command when it is submitted, so a command that can never be sent is
refused at once. A refused command goes PENDING -> REJECTED with the reason: it is never DISPATCHED
and never reaches the device.

Two rules:

* the asset's own device limits (:meth:`~runtime.core.assets.AssetSpec.check`: a type the asset does
  not support, a negative rate, a rate above the limit, a SoC target outside 0..100): refused;
* the site's grid limit (:mod:`runtime.core.grid`, when configured): every charge or discharge setpoint
  gets a ``granted`` value that keeps the sum within the limit, or waits for room.
"""

from __future__ import annotations

from collections.abc import Mapping

from .assets import AssetSpec
from .commands import Command
from .grid import GridAllocator, GridLimit

__all__ = ["DispatchPolicy"]


class DispatchPolicy:
    """Reviews commands against the site's assets. Pure and single-threaded: the dispatcher owns it."""

    def __init__(self, specs: Mapping[str, AssetSpec], grid: GridLimit | None = None,
                 priorities: Mapping[str, int] | None = None) -> None:
        self._specs = dict(specs)
        #: The grid limit's books (None without a grid limit).
        self.grid = GridAllocator(grid, self._specs, dict(priorities or {})) if grid is not None and grid.active \
            else None

    def refusal(self, command: Command) -> str | None:
        """Why ``command`` must not be sent (a sentence naming the asset, the value and the limit), or
        None when it may go."""
        spec = self._specs.get(command.asset_id)
        if spec is None:
            return f"unknown asset {command.asset_id!r}"
        return spec.check(command)
