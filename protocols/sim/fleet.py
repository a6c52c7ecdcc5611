"""Many simulated charge points in one process: a fleet, started with bounded concurrency.

``start_fleet(url, count)`` starts ``count`` :class:`~protocols.sim.chargepoint.ChargePointSim` (ids from
:func:`fleet_ids`: ``CP0001``...), at most ``concurrency`` handshakes at a time; ``run_fleet`` runs one
until told to stop. The ``coordinator sim ocpp`` command (:mod:`runtime.cli.sim_ocpp`) and the fleet
benchmark use it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Literal

from .chargepoint import ChargePointSim

log = logging.getLogger(__name__)

__all__ = ["Fleet", "fleet_ids", "start_fleet", "run_fleet"]


def fleet_ids(count: int, id_prefix: str = "CP") -> list[str]:
    """The charge point ids of a fleet: ``CP0001`` .. (1-based, at least 4 digits)."""
    width = max(4, len(str(count)))
    return [f"{id_prefix}{i:0{width}d}" for i in range(1, count + 1)]


class Fleet:
    """Simulators started by :func:`start_fleet`; ``failed`` lists (id, error) of those that did not start."""

    def __init__(self, sims: list[ChargePointSim], failed: list[tuple[str, str]]) -> None:
        self.sims = sims
        self.failed = failed

    def __len__(self) -> int:
        return len(self.sims)

    async def stop(self) -> None:
        await asyncio.gather(*(s.stop() for s in self.sims), return_exceptions=True)


async def start_fleet(url: str, count: int, version: Literal["1.6", "2.0.1"] = "1.6", id_prefix: str = "CP", *,
                      concurrency: int = 50, plug_in: bool = False, start_transactions: bool = False,
                      **kw: Any) -> Fleet:
    """Start ``count`` simulators (ids from :func:`fleet_ids`), at most ``concurrency`` handshakes at once."""
    sem = asyncio.Semaphore(max(1, concurrency))
    sims = [ChargePointSim(cp_id, url, version, **kw) for cp_id in fleet_ids(count, id_prefix)]
    failed: list[tuple[str, str]] = []

    async def one(sim: ChargePointSim) -> None:
        async with sem:
            try:
                await sim.start()
                if start_transactions:
                    await sim.start_transaction()
                elif plug_in:
                    await sim.plug_in()
            except Exception as exc:
                failed.append((sim.cp_id, f"{type(exc).__name__}: {exc}"))
                await sim.stop()

    await asyncio.gather(*(one(s) for s in sims))
    bad = {cp_id for cp_id, _ in failed}
    return Fleet([s for s in sims if s.cp_id not in bad], failed)


async def run_fleet(url: str, count: int, version: Literal["1.6", "2.0.1"] = "1.6", id_prefix: str = "CP", *,
                    stop: asyncio.Event | None = None, **kw: Any) -> Fleet:
    """Run ``count`` simulators until ``stop`` is set (or the task is cancelled), then stop them all.
    Returns the (stopped) fleet."""
    fleet = await start_fleet(url, count, version, id_prefix, **kw)
    log.info("OCPP %s fleet: %d charge points running against %s (%d failed to start)", version, len(fleet), url,
             len(fleet.failed))
    for cp_id, why in fleet.failed[:10]:
        log.warning("sim %s did not start: %s", cp_id, why)
    try:
        if stop is None:
            await asyncio.Event().wait()
        else:
            await stop.wait()
    finally:
        await fleet.stop()
    return fleet
