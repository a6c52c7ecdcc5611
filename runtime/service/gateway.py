"""The site, asked from the asyncio loop: the async face of :class:`~runtime.site.Site` for the HTTP API
and the watched folder.

Every method is a coroutine for the site's own I/O loop. It asks the actors through
:meth:`Site.ask_async` (the actor answers through a reply callback: no ``ask().get()`` blocks the loop,
and no thread waits per request), each answer bounded by ``timeout_s``. CPU work that can be large
(turning a schedule into a batch) runs in the loop's default executor.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd

from actors.messages import (GetAssetRef, GetAssetState, GetCommand, GetCounts, GetEdgeState, GetStatus,
                             SubmitBatch, SubmitCommands)
from runtime.core.assets import AssetStatus
from runtime.core.batch import CommandBatch
from runtime.core.commands import Command
from runtime.core.schedule import schedule_to_commands
from runtime.site import Site

__all__ = ["SiteGateway"]


class SiteGateway:
    """Async access to one running site (see the module docstring)."""

    def __init__(self, site: Site, timeout_s: float = 10.0) -> None:
        self.site = site
        self.timeout_s = timeout_s

    async def _ask(self, target: Any, message: Any) -> Any:
        async with asyncio.timeout(self.timeout_s):
            return await self.site.ask_async(target, message)

    async def submit(self, commands: Iterable[Command]) -> tuple[str, ...]:
        """Accept commands (one journal write); returns the ids that were new."""
        commands = tuple(commands)
        self.site.check_assets({c.asset_id for c in commands}, "command")
        return await self._ask("dispatcher", SubmitCommands(commands))

    async def submit_schedule(self, schedule: pd.DataFrame, asset_map: Mapping[str, str] | None = None, *,
                              replace: bool = True, priority: int = 0, batch_id: str | None = None) -> CommandBatch:
        """As :meth:`Site.submit_schedule`; the conversion runs in the executor."""
        now = self.site.clock.time()
        loop = asyncio.get_running_loop()
        batch: CommandBatch = await loop.run_in_executor(None, lambda: schedule_to_commands(
            schedule, asset_map, created_at=now, priority=priority, batch_id=batch_id))
        self.site.check_assets(batch.assets, "schedule")
        await self._ask("dispatcher", SubmitBatch(batch, replace=replace))
        return batch

    async def command(self, command_id: str) -> Command | None:
        return await self._ask("dispatcher", GetCommand(command_id))

    async def counts(self) -> dict[str, int]:
        return await self._ask("dispatcher", GetCounts())

    async def asset_status(self, asset_id: str) -> AssetStatus:
        """As :meth:`Site.asset_status`."""
        self.site.check_assets([asset_id], "asset")
        ref = await self._ask("supervisor", GetAssetRef(asset_id))
        supervision = (await self._ask("supervisor", GetStatus())).get(asset_id, "unavailable")
        if ref is not None:
            try:
                status: AssetStatus = await self._ask(ref, GetAssetState())
                return AssetStatus(status.asset_id, status.state, status.device_state, status.link, status.healthy,
                                   status.reason, supervision)
            except Exception:  # the actor died between the two questions
                supervision = "restarting"
        return AssetStatus(asset_id, "UNAVAILABLE", None, "down", False, f"asset actor {asset_id} is {supervision}",
                           supervision)

    async def cloud_status(self) -> dict[str, Any] | None:
        """As :meth:`Site.cloud_status`."""
        if self.site.cloud_options is None:
            return None
        return dict(await self._ask("edge", GetEdgeState()))

    async def asset_statuses(self) -> list[AssetStatus]:
        return list(await asyncio.gather(*(self.asset_status(a) for a in self.site.asset_ids)))
