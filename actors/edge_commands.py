"""What a cloud command means for this site: the site's capabilities, and each command checked against
them and turned into a plan the edge link carries out.

Pure functions of the site's asset specs (no actor, no I/O). :func:`capabilities` is what the edge
publishes (``hello`` and ``capabilities`` frames); :func:`plan` refuses a command that does not fit
them with a :class:`~protocols.edge.wire.WireError` whose ``code`` and message become the ack's error
(``"<code>: <message>"``), or returns one of:

* :class:`DevicePlan`: a setpoint, as a runtime command type and value (kW or %) for one asset;
* :class:`ControllerPlan`: switch a site controller ("schedule", "grid_limit") on or off;
* :class:`OverridePlan`: a temporary asset parameter (MinSoc -> "min_soc") for ``duration_sec``;
* :class:`SystemPlan`: sync_config, restart_link or report_status.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Union

from protocols.edge.channels import (CONTROLLERS, SITE_DEVICE, SYSTEM_CHANNELS, device_channels, site_channels,
                                     to_runtime)
from protocols.edge.wire import Capabilities, Channel, Device, EdgeCommand, WireError
from runtime.core.assets import AssetSpec
from runtime.core.commands import CommandType

__all__ = ["DevicePlan", "ControllerPlan", "OverridePlan", "SystemPlan", "Plan", "capabilities", "plan",
           "channels_of", "OVERRIDE_PARAMETERS"]

#: Config-override channels -> the asset parameter they set (runtime.site.Site.set_parameter).
OVERRIDE_PARAMETERS = {"MinSoc": "min_soc"}
_ON = {"on": True, "true": True, "off": False, "false": False}


@dataclass(frozen=True, slots=True)
class DevicePlan:
    asset_id: str
    channel: str
    command_type: CommandType
    value: float
    emergency: bool


@dataclass(frozen=True, slots=True)
class ControllerPlan:
    name: str
    on: bool


@dataclass(frozen=True, slots=True)
class OverridePlan:
    asset_id: str
    channel: str
    parameter: str
    value: float
    unit: str | None
    duration_s: float


@dataclass(frozen=True, slots=True)
class SystemPlan:
    action: str


Plan = Union[DevicePlan, ControllerPlan, OverridePlan, SystemPlan]


def channels_of(spec: AssetSpec) -> list[Channel]:
    """The channels one asset publishes."""
    return device_channels(spec.kind, spec.max_charge_kw, spec.max_discharge_kw)


def capabilities(specs: Mapping[str, AssetSpec]) -> Capabilities:
    """The site's capabilities: each asset with its channels, the site device, and the controllers."""
    devices = [Device(device_id=spec.asset_id, kind=spec.kind, channels=channels_of(spec))
               for spec in specs.values()]
    devices.append(Device(device_id=SITE_DEVICE, kind="site", channels=site_channels()))
    return Capabilities(devices=devices, controllers=dict(CONTROLLERS))


def plan(command: EdgeCommand, specs: Mapping[str, AssetSpec], edge_id: str) -> Plan:
    """What ``command`` asks of this site; WireError (code, reason) when it does not fit the site."""
    target = command.target
    where = f"{target.device_id or SITE_DEVICE}.{target.channel}"
    if target.edge_id != edge_id:
        raise WireError(f"target.edge_id: the command is for edge {target.edge_id!r}, this is {edge_id!r}",
                        "wrong_edge")
    kind = command.command_type
    if kind in ("mode_change", "scheduler_control"):
        _site_target(command, where)
        if target.channel not in CONTROLLERS:
            raise WireError(f"{where}: the site has no controller {target.channel!r} (controllers: "
                            f"{', '.join(CONTROLLERS)})", "unknown_channel")
        return ControllerPlan(target.channel, _switch(command.value, where))
    if kind == "system":
        _site_target(command, where)
        if target.channel not in SYSTEM_CHANNELS:
            raise WireError(f"{where}: unknown system command {target.channel!r} (known: "
                            f"{', '.join(SYSTEM_CHANNELS)})", "unknown_channel")
        return SystemPlan(target.channel)
    spec, channel = _device_channel(command, specs, where)
    if channel.command_type != kind:
        raise WireError(f"{where}: channel {channel.name} takes {channel.command_type} commands, not {kind}",
                        "wrong_command_type")
    if kind == "config_override":
        return _override(command, spec, channel, where)
    _unit(command.unit, channel, where)
    ctype, value = to_runtime(spec.kind, channel.name, command.value, command.unit,
                              (spec.max_charge_kw, spec.max_discharge_kw), where)
    return DevicePlan(spec.asset_id, channel.name, ctype, value, command.priority == "emergency")


def _site_target(command: EdgeCommand, where: str) -> None:
    if command.target.device_id not in (None, SITE_DEVICE):
        raise WireError(f"{where}: {command.command_type} commands target the site (device_id {SITE_DEVICE!r} or "
                        f"none), not device {command.target.device_id!r}", "unknown_device")


def _device_channel(command: EdgeCommand, specs: Mapping[str, AssetSpec], where: str) -> tuple[AssetSpec, Channel]:
    device_id = command.target.device_id
    if device_id is None or device_id not in specs:
        known = ", ".join(sorted(specs)) or "none"
        raise WireError(f"{where}: device {device_id!r} is not on this edge (devices: {known})", "unknown_device")
    spec = specs[device_id]
    channels = {c.name: c for c in channels_of(spec)}
    channel = channels.get(command.target.channel)
    if channel is None:
        raise WireError(f"{where}: a {spec.kind} has no channel {command.target.channel!r} (channels: "
                        f"{', '.join(channels)})", "unknown_channel")
    if not channel.writable:
        raise WireError(f"{where}: channel {channel.name} is read only", "not_writable")
    return spec, channel


def _unit(unit: str | None, channel: Channel, where: str) -> None:
    """Percent and unitless channels take no other unit (power units are converted by to_runtime)."""
    if channel.unit in ("W", "kW") or not unit:
        return
    if unit != channel.unit:
        raise WireError(f"{where}: unit {unit!r} cannot be converted to {channel.unit or 'a plain number'}",
                        "invalid_unit")


def _override(command: EdgeCommand, spec: AssetSpec, channel: Channel, where: str) -> OverridePlan:
    parameter = OVERRIDE_PARAMETERS.get(channel.name)
    if parameter is None:  # pragma: no cover - every config_override channel has a parameter
        raise WireError(f"{where}: channel {channel.name} cannot be overridden", "unknown_channel")
    _unit(command.unit, channel, where)
    value = command.value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise WireError(f"{where}: value must be a number, got {value!r}", "invalid_value")
    low = channel.min if channel.min is not None else float("-inf")
    high = channel.max if channel.max is not None else float("inf")
    if not low <= value <= high:
        raise WireError(f"{where}: {value!r} {channel.unit or ''} is outside {low:g}..{high:g}".replace("  ", " "),
                        "out_of_range")
    if command.duration_sec is None:
        raise WireError(f"{where}: a config_override is temporary: give duration_sec", "missing_duration")
    return OverridePlan(spec.asset_id, channel.name, parameter, float(value), channel.unit,
                        float(command.duration_sec))


def _switch(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _ON:
        return _ON[value.strip().lower()]
    raise WireError(f"{where}: value must be true/false or \"on\"/\"off\", got {value!r}", "invalid_value")
