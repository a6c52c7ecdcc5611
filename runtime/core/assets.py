"""Asset descriptions: what a site has, its limits, and which device link drives it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from .commands import Command, CommandType
from .errors import ConfigurationError

__all__ = ["AssetSpec", "ChargerSpec", "BatterySpec", "AssetKind", "AssetStatus", "LinkState"]

AssetKind = Literal["charger", "battery"]
#: A device link: "up" (reachable), "down" (it was up and is not now), "never connected" (since the
#: asset's actor started).
LinkState = Literal["up", "down", "never connected"]

_CHARGER_TYPES = frozenset({CommandType.SET_CHARGE_RATE, CommandType.SET_POWER_LIMIT, CommandType.START_CHARGING,
                            CommandType.STOP_CHARGING, CommandType.CHANGE_AVAILABILITY})
_BATTERY_TYPES = frozenset({CommandType.SET_CHARGE_RATE, CommandType.SET_DISCHARGE_RATE,
                            CommandType.SET_POWER_LIMIT, CommandType.SET_SOC_TARGET,
                            CommandType.CHANGE_AVAILABILITY})
_RATE_TYPES = frozenset({CommandType.SET_CHARGE_RATE, CommandType.SET_DISCHARGE_RATE, CommandType.SET_POWER_LIMIT})


@dataclass(frozen=True)
class AssetSpec:
    """One asset of the site.

    ``max_charge_kw`` / ``max_discharge_kw`` are the device limits that commands are checked against
    (a command outside them is REJECTED, never sent). ``device`` is the link that drives it (a
    :class:`protocols.base.DeviceLink`; typed loosely because the ground floor does not import the
    protocols); None means an in-memory simulated device. ``ack_timeout_s`` bounds the wait for the device's answer to
    one command (None: the site's ``ack_timeout_s``).
    """

    asset_id: str
    kind: AssetKind
    max_charge_kw: float
    max_discharge_kw: float = 0.0
    capacity_kwh: float | None = None
    device: Any = field(default=None, compare=False)
    ack_timeout_s: float | None = None

    def __post_init__(self) -> None:
        if not self.asset_id or not isinstance(self.asset_id, str):
            raise ConfigurationError(f"asset_id: must be a non-empty string, got {self.asset_id!r}")
        if self.kind not in ("charger", "battery"):
            raise ConfigurationError(f"kind: must be 'charger' or 'battery', got {self.kind!r} (asset {self.asset_id})")
        for name in ("max_charge_kw", "max_discharge_kw"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or v < 0 or v != v:
                raise ConfigurationError(f"{name}: must be a number >= 0, got {v!r} (asset {self.asset_id})")
        if self.ack_timeout_s is not None and not self.ack_timeout_s > 0:
            raise ConfigurationError(f"ack_timeout_s: must be > 0, got {self.ack_timeout_s!r} (asset {self.asset_id})")

    def supported(self) -> frozenset[CommandType]:
        return _CHARGER_TYPES if self.kind == "charger" else _BATTERY_TYPES

    def check(self, command: Command) -> str | None:
        """Why ``command`` is invalid for this device, or None when it is fine."""
        ct, v = command.command_type, command.value
        if ct not in self.supported():
            return f"{ct.value} is not supported by {self.kind} {self.asset_id}"
        if ct in _RATE_TYPES:
            if v < 0:
                return f"value {v} kW for {ct.value} on {self.asset_id} is negative"
            if ct is CommandType.SET_CHARGE_RATE:
                limit = self.max_charge_kw
            elif ct is CommandType.SET_DISCHARGE_RATE:
                limit = self.max_discharge_kw
            else:
                limit = max(self.max_charge_kw, self.max_discharge_kw)
            if v > limit + 1e-9:
                return f"value {v} kW for {ct.value} on {self.asset_id} exceeds the device limit {limit} kW"
        elif ct is CommandType.SET_SOC_TARGET:
            if not 0 <= v <= 100:
                return f"value {v} % for SET_SOC_TARGET on {self.asset_id} is outside 0..100"
        elif ct is CommandType.CHANGE_AVAILABILITY and v not in (0, 1):
            return f"value {v} for CHANGE_AVAILABILITY on {self.asset_id} must be 1 (operative) or 0 (inoperative)"
        return None


def ChargerSpec(asset_id: str, max_kw: float = 22.0, device: Any = None,
                ack_timeout_s: float | None = None) -> AssetSpec:
    """An EV charger of ``max_kw`` (charging only)."""
    return AssetSpec(asset_id, "charger", max_charge_kw=max_kw, device=device, ack_timeout_s=ack_timeout_s)


def BatterySpec(asset_id: str, max_charge_kw: float = 50.0, max_discharge_kw: float = 50.0,
                capacity_kwh: float = 100.0, device: Any = None,
                ack_timeout_s: float | None = None) -> AssetSpec:
    """A stationary battery."""
    return AssetSpec(asset_id, "battery", max_charge_kw=max_charge_kw, max_discharge_kw=max_discharge_kw,
                     capacity_kwh=capacity_kwh, device=device, ack_timeout_s=ack_timeout_s)


@dataclass(frozen=True, slots=True)
class AssetStatus:
    """What the site knows about one asset now (:meth:`runtime.site.Site.asset_status`).

    ``state`` is the asset's state as the site can vouch for it: the state machine's state while the
    device link is up, and "UNAVAILABLE" while it is not (a charger that never connected is not
    AVAILABLE). ``device_state`` is the state machine's own state (the last one the device reported or
    implied; None while the link has never been up). ``link`` says whether the device is reachable.
    ``healthy`` is True when the asset's commands are sent (link up, not FAULTED or UNAVAILABLE);
    ``reason`` says why not. ``supervision`` is "running", "restarting" or "unavailable" (the
    supervisor gave up on the asset's actor).
    """

    asset_id: str
    state: str
    device_state: str | None
    link: LinkState
    healthy: bool
    reason: str = ""
    supervision: str = "running"
