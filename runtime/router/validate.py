"""Checking a command against the capabilities its edge published, before it is queued.

The edge checks again when the command arrives (its devices may have changed since); this check is there so
that an operator hears at once, with the reason, that a command cannot work, instead of after a queue and
a round trip. It follows the edge's rules (:mod:`protocols.edge.channels`): the device exists, the channel
exists and is writable, it takes this command type, the unit converts (W and kW for power channels, the
channel's own unit otherwise), the value is within the published min/max, and a ``config_override`` says
how long it holds (``duration_sec``). Controllers
(``mode_change`` / ``scheduler_control``) and ``system`` commands target the site device.

An edge that never published capabilities (never connected) gets its commands queued unchecked: the edge's
own check is then the only one.
"""

from __future__ import annotations

from protocols.edge.channels import SITE_DEVICE, to_kw
from protocols.edge.wire import Capabilities, Channel, EdgeCommand, WireError

__all__ = ["check_command"]

_POWER = ("W", "kW", "w", "kw")


def check_command(command: EdgeCommand, caps: Capabilities | None) -> None:
    """Raise :class:`WireError` (code, reason naming device, channel, value and limit) when ``command`` does
    not fit ``caps``; do nothing when it fits or when ``caps`` is None."""
    if caps is None:
        return
    target = command.target
    device_id = target.device_id or SITE_DEVICE
    where = f"{device_id}.{target.channel}"
    kind = command.command_type
    devices = {d.device_id: d for d in caps.devices}
    if kind in ("mode_change", "scheduler_control"):
        if device_id != SITE_DEVICE:
            raise WireError(f"{where}: {kind} commands target the site (device_id {SITE_DEVICE!r} or none)",
                            "unknown_device", command.command_id)
        site = devices.get(SITE_DEVICE)
        names = set(caps.controllers) | {c.name for c in (site.channels if site else []) if c.command_type == kind
                                         or c.command_type in ("mode_change", "scheduler_control")}
        if target.channel not in names:
            raise WireError(f"{where}: the edge has no controller {target.channel!r} (controllers: "
                            f"{', '.join(sorted(names)) or 'none'})", "unknown_channel", command.command_id)
        if command.value not in (True, False, 0, 1, "on", "off"):
            raise WireError(f"{where}: a controller is switched with true/false (or 1/0, \"on\"/\"off\"), got "
                            f"{command.value!r}", "invalid_value", command.command_id)
        return
    device = devices.get(device_id)
    if device is None:
        raise WireError(f"{where}: device {device_id!r} is not on edge {target.edge_id} (devices: "
                        f"{', '.join(sorted(devices)) or 'none'})", "unknown_device", command.command_id)
    channels = {c.name: c for c in device.channels}
    channel = channels.get(target.channel)
    if channel is None:
        raise WireError(f"{where}: a {device.kind} has no channel {target.channel!r} (channels: "
                        f"{', '.join(channels) or 'none'})", "unknown_channel", command.command_id)
    if not channel.writable:
        raise WireError(f"{where}: channel {channel.name} is read only", "not_writable", command.command_id)
    if channel.command_type != kind:
        raise WireError(f"{where}: channel {channel.name} takes {channel.command_type} commands, not {kind}",
                        "wrong_command_type", command.command_id)
    if kind == "system":
        return
    if kind == "config_override" and command.duration_sec is None:
        raise WireError(f"{where}: a config_override needs duration_sec (how long it holds before it reverts)",
                        "missing_duration", command.command_id)
    _check_value(command, channel, where)


def _check_value(command: EdgeCommand, channel: Channel, where: str) -> None:
    value, unit = command.value, command.unit
    if channel.unit in _POWER:
        kw = to_kw(value, unit or channel.unit, where)
        low = None if channel.min is None else to_kw(channel.min, channel.unit, where)
        high = None if channel.max is None else to_kw(channel.max, channel.unit, where)
        shown = f"{_show(value)} {unit or channel.unit}"
    else:
        if unit not in (None, channel.unit):
            raise WireError(f"{where}: unit {unit!r} does not fit channel {channel.name} (unit "
                            f"{channel.unit or 'none'})", "invalid_unit", command.command_id)
        if isinstance(value, bool):
            value = float(value)
        if not isinstance(value, (int, float)):
            raise WireError(f"{where}: value must be a number, got {value!r}", "invalid_value", command.command_id)
        kw, low, high = float(value), channel.min, channel.max
        shown = _show(value) + (f" {channel.unit}" if channel.unit else "")
    eps = 1e-9 * max(1.0, abs(kw))
    if (low is not None and kw < low - eps) or (high is not None and kw > high + eps):
        span = f"{_g(channel.min)}..{_g(channel.max)}" + (f" {channel.unit}" if channel.unit else "")
        raise WireError(f"{where}: {shown} is outside {span}", "out_of_range", command.command_id)


def _show(value: object) -> str:
    return f"{value:.12g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else repr(value)


def _g(value: float | None) -> str:
    return "" if value is None else f"{value:.12g}"
