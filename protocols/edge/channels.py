"""The channels an edge publishes, and what each means for the site's commands.

Names follow OpenEMS where one exists (a battery's ``SetActivePower`` in W, positive = discharge; a
charger's ``SetChargePowerLimit``; ``MinSoc`` for a configuration override). Each channel maps onto the
runtime's command types; :func:`device_channels` lists a device's channels for its capabilities, and
:func:`to_runtime` turns a setpoint on one of them into (command type, value in the runtime's units)
or raises :class:`~protocols.edge.wire.WireError` naming the channel, the value and the limit.

==================  ==========  =============  ==============================================  ===========
device kind         channel     command type   meaning                                         runtime
==================  ==========  =============  ==============================================  ===========
battery             SetActivePower  setpoint   W, > 0 discharge, < 0 charge                    SET_DISCHARGE_RATE /
                                                                                               SET_CHARGE_RATE (kW)
battery             SetSocTarget    setpoint   %, charging stops there                         SET_SOC_TARGET
battery             MinSoc          config_override  %, no discharge below it, for duration_sec  a lease
charger             SetChargePowerLimit setpoint W, 0..max                                     SET_CHARGE_RATE (kW)
charger             SetAvailability setpoint   1 operative / 0 inoperative                     CHANGE_AVAILABILITY
battery             Soc             (read only) %, measured                                    telemetry soc_pct
battery, charger    ActivePower     (read only) W, measured (battery: > 0 discharge)           telemetry power_kw
site                schedule        scheduler_control / mode_change  true: follow schedules    a controller
site                grid_limit      scheduler_control / mode_change  true: enforce the limit   a controller
site                sync_config / restart_link / report_status  system                         the edge link
==================  ==========  =============  ==============================================  ===========

Power values may come in W or kW (``unit``); percentages in %. Read-only channels are published with
``writable`` false (a command on one is refused); :func:`telemetry_values` names the site's measured
values after them. :func:`site_channels` lists the site device's channels (controllers, system).
"""

from __future__ import annotations

from typing import Any

from runtime.core.commands import CommandType

from .wire import Channel, WireError

__all__ = ["SITE_DEVICE", "CONTROLLERS", "SYSTEM_CHANNELS", "device_channels", "site_channels", "to_runtime",
           "to_kw", "telemetry_values"]

#: The device id of the site itself (controllers, system commands).
SITE_DEVICE = "site"
CONTROLLERS = {"schedule": "follow the schedules submitted to the site",
               "grid_limit": "enforce the site's grid import/export limit"}
SYSTEM_CHANNELS = ("sync_config", "restart_link", "report_status")
_POWER_UNITS = {"W": 0.001, "kW": 1.0, "w": 0.001, "kw": 1.0}


def to_kw(value: Any, unit: str | None, where: str) -> float:
    """A power ``value`` in ``unit`` (W by default) as kW."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise WireError(f"{where}: value must be a number, got {value!r}", "invalid_value")
    factor = _POWER_UNITS.get(unit or "W")
    if factor is None:
        raise WireError(f"{where}: unit {unit!r} cannot be converted to kW (use W or kW)", "invalid_unit")
    return float(value) * factor


def device_channels(kind: str, max_charge_kw: float, max_discharge_kw: float) -> list[Channel]:
    """The channels an asset of ``kind`` publishes, with their ranges in W (or %)."""
    if kind == "battery":
        return [Channel(name="SetActivePower", unit="W", min=-max_charge_kw * 1000, max=max_discharge_kw * 1000,
                        description="active power, W; > 0 discharge, < 0 charge"),
                Channel(name="SetSocTarget", unit="%", min=0, max=100, description="charging stops at this SoC"),
                Channel(name="MinSoc", unit="%", min=0, max=100, command_type="config_override",
                        description="no discharge below this SoC, for duration_sec"),
                Channel(name="Soc", writable=False, unit="%", min=0, max=100,
                        description="state of charge, measured"),
                Channel(name="ActivePower", writable=False, unit="W",
                        description="active power, measured, W; > 0 discharge, < 0 charge")]
    return [Channel(name="SetChargePowerLimit", unit="W", min=0, max=max_charge_kw * 1000,
                    description="charging power limit, W"),
            Channel(name="SetAvailability", unit=None, min=0, max=1, description="1 operative, 0 inoperative"),
            Channel(name="ActivePower", writable=False, unit="W", description="charging power, measured, W")]


def site_channels() -> list[Channel]:
    """The channels of the site device (:data:`SITE_DEVICE`): its controllers (true/false, "on"/"off") and the
    system commands."""
    return ([Channel(name=name, unit=None, min=0, max=1, command_type="scheduler_control", description=text)
             for name, text in CONTROLLERS.items()]
            + [Channel(name=name, unit=None, command_type="system") for name in SYSTEM_CHANNELS])


def telemetry_values(kind: str, values: dict[str, float]) -> dict[str, float]:
    """The site's measured values of a ``kind`` device (``soc_pct``, ``power_kw`` > 0 charging, ...) named after
    its read-only channels: ``Soc`` (%), ``ActivePower`` (W; a battery's > 0 discharge). Others keep their key."""
    out: dict[str, float] = {}
    for key, value in values.items():
        if key == "soc_pct":
            out["Soc"] = value
        elif key == "power_kw":
            out["ActivePower"] = (-value if kind == "battery" else value) * 1000 + 0.0  # + 0.0: no -0.0
        else:
            out[key] = value
    return out


def to_runtime(kind: str, channel: str, value: Any, unit: str | None, limits: tuple[float, float],
               where: str) -> tuple[CommandType, float]:
    """(runtime command type, value in kW or %) for a setpoint on ``channel`` of a ``kind`` device whose
    (max charge kW, max discharge kW) are ``limits``; WireError when the channel or value does not fit."""
    max_charge, max_discharge = limits
    if kind == "battery" and channel == "SetActivePower":
        kw = to_kw(value, unit, where)
        if not -max_charge - 1e-9 <= kw <= max_discharge + 1e-9:
            raise WireError(f"{where}: {value!r} {unit or 'W'} is outside {-max_charge * 1000:g}.."
                            f"{max_discharge * 1000:g} W", "out_of_range")
        return (CommandType.SET_DISCHARGE_RATE, kw) if kw >= 0 else (CommandType.SET_CHARGE_RATE, -kw)
    if kind == "battery" and channel == "SetSocTarget":
        pct = _number(value, where)
        if not 0 <= pct <= 100:
            raise WireError(f"{where}: {value!r} % is outside 0..100", "out_of_range")
        return CommandType.SET_SOC_TARGET, pct
    if kind == "charger" and channel == "SetChargePowerLimit":
        kw = to_kw(value, unit, where)
        if not -1e-9 <= kw <= max_charge + 1e-9:
            raise WireError(f"{where}: {value!r} {unit or 'W'} is outside 0..{max_charge * 1000:g} W", "out_of_range")
        return CommandType.SET_CHARGE_RATE, max(0.0, kw)
    if kind == "charger" and channel == "SetAvailability":
        if value not in (0, 1, True, False):
            raise WireError(f"{where}: must be 1 (operative) or 0 (inoperative), got {value!r}", "out_of_range")
        return CommandType.CHANGE_AVAILABILITY, float(bool(value))
    raise WireError(f"{where}: a {kind} has no writable setpoint channel {channel!r}", "unknown_channel")


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise WireError(f"{where}: value must be a number, got {value!r}", "invalid_value")
    return float(value)
