"""What the router knows about each edge: its capabilities, when it was last seen, its latest telemetry per
device and its latest site state (for ``GET /api/v1/edges`` and the operator page).

Capabilities are saved to the store as soon as they arrive (commands for an offline edge are checked against
the last ones it published, across router restarts and across a fleet). Telemetry and site state come often:
only the latest of each is kept (telemetry: the latest values of each device, merged, with their time), and
they are saved at most every ``save_every_s`` (:meth:`EdgeDirectory.save_dirty`, from the hub's
housekeeping); ``site_state_at`` is when the latest site state arrived (its overrides' ``seconds_left`` count
from then). Each telemetry frame also goes to the ``telemetry_listeners`` (the operator page's
:class:`~runtime.router.telemetry.TelemetryHistory`). In a fleet, another instance's edges are read back from
the store (cached for ``fleet_cache_s``). Runs on the router's loop.
"""

from __future__ import annotations

import json
import time
from typing import Any, Callable

from protocols.edge.wire import Capabilities, SiteState, Telemetry

from .states import iso
from .store import Store

__all__ = ["EdgeDirectory"]


class EdgeDirectory:
    """Per-edge knowledge (see the module docstring)."""

    def __init__(self, store: Store, instance: str, fleet_cache_s: float = 2.0) -> None:
        self.store = store
        self.instance = instance
        self.fleet_cache_s = fleet_cache_s
        self._info: dict[str, dict[str, Any]] = {}
        self._caps: dict[str, Capabilities | None] = {}
        self._dirty: set[str] = set()
        self._loaded_at = 0.0
        #: Called with (edge_id, frame) for every telemetry frame (the operator page's history).
        self.telemetry_listeners: list[Callable[[str, Telemetry], None]] = []
        #: fleet: when each edge was last read back, and the JSON read (unchanged JSON is not parsed again)
        self._checked: dict[str, float] = {}
        self._raw: dict[str, str] = {}

    async def load(self) -> None:
        self._info = await self.store.load_edges()
        self._caps.clear()
        self._loaded_at = time.monotonic()

    async def _refresh(self, force: bool = False) -> None:
        if self.store.shared and (force or time.monotonic() - self._loaded_at > self.fleet_cache_s):
            fresh = await self.store.load_edges()
            for edge, info in fresh.items():
                if edge not in self._dirty and info != self._info.get(edge):
                    self._info[edge] = info
                    self._caps.pop(edge, None)
            self._loaded_at = time.monotonic()

    def _entry(self, edge_id: str) -> dict[str, Any]:
        return self._info.setdefault(edge_id, {"edge_id": edge_id})

    async def capabilities_of(self, edge_id: str) -> Capabilities | None:
        """The last capabilities ``edge_id`` published (None: never). In a fleet, an edge connected elsewhere is
        read back from the store (that edge alone) at most every ``fleet_cache_s``."""
        if self.store.shared and edge_id not in self._dirty:
            checked = self._checked.get(edge_id, -1e9)
            if time.monotonic() - checked > self.fleet_cache_s:
                self._checked[edge_id] = time.monotonic()
                raw = await self.store.load_edge_raw(edge_id)
                if raw is not None and raw != self._raw.get(edge_id):
                    self._raw[edge_id] = raw
                    self._info[edge_id] = json.loads(raw)
                    self._caps.pop(edge_id, None)
        if edge_id not in self._caps:
            raw = self._info.get(edge_id, {}).get("capabilities")
            self._caps[edge_id] = Capabilities.model_validate(raw) if raw else None
        return self._caps[edge_id]

    async def connected(self, edge_id: str, remote: str, software: str | None, caps: Capabilities | None) -> None:
        info = self._entry(edge_id)
        now = time.time()
        info.update(last_seen=now, connected_at=now, instance=self.instance, remote=remote, software=software)
        if caps is not None:
            info["capabilities"] = caps.model_dump(mode="json", exclude_none=True)
            self._caps[edge_id] = caps
        await self.store.save_edge(edge_id, info)
        self._dirty.discard(edge_id)

    async def capabilities(self, edge_id: str, caps: Capabilities) -> None:
        info = self._entry(edge_id)
        info["capabilities"] = caps.model_dump(mode="json", exclude_none=True)
        info["last_seen"] = time.time()
        self._caps[edge_id] = caps
        await self.store.save_edge(edge_id, info)
        self._dirty.discard(edge_id)

    def seen(self, edge_id: str) -> None:
        self._entry(edge_id)["last_seen"] = time.time()
        self._dirty.add(edge_id)

    def telemetry(self, edge_id: str, frame: Telemetry) -> None:
        info = self._entry(edge_id)
        devices = info.setdefault("telemetry", {})
        device = devices.setdefault(frame.device_id, {"values": {}})
        device["values"].update(frame.values)
        device["at"] = frame.at
        info["last_seen"] = time.time()
        self._dirty.add(edge_id)
        for listener in self.telemetry_listeners:
            listener(edge_id, frame)

    def site_state(self, edge_id: str, frame: SiteState) -> None:
        info = self._entry(edge_id)
        info["site_state"] = frame.model_dump(mode="json", exclude={"v", "type"})
        info["last_seen"] = info["site_state_at"] = time.time()
        self._dirty.add(edge_id)

    async def disconnected(self, edge_id: str) -> None:
        info = self._entry(edge_id)
        info["last_seen"] = time.time()
        await self.store.save_edge(edge_id, info)
        self._dirty.discard(edge_id)

    async def save_dirty(self) -> None:
        """Save the edges whose telemetry, site state or last-seen changed since their last save."""
        dirty, self._dirty = self._dirty, set()
        for edge_id in dirty:
            await self.store.save_edge(edge_id, self._info[edge_id])

    async def listing(self, viewable: frozenset[str] | str, owners: dict[str, str | None]) -> list[dict[str, Any]]:
        """Every known edge the caller may view, with ``online`` (and where) from ``owners``."""
        out = []
        for edge_id in sorted(set(self._info) | set(owners)):
            if viewable != "*" and edge_id not in viewable:
                continue
            info = dict(self._info.get(edge_id, {"edge_id": edge_id}))
            owner = owners.get(edge_id)
            info["online"] = owner is not None
            info["instance"] = owner if owner is not None else info.get("instance")
            for key in ("last_seen", "connected_at", "site_state_at"):
                if key in info:
                    info[key] = iso(info[key])
            out.append(info)
        return out

    async def known(self) -> list[str]:
        """Every edge this router (or, in a fleet, any router) has seen, read afresh from a shared store."""
        await self._refresh(force=True)
        return list(self._info)
