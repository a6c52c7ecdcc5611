"""Meter values: what an OCPP 1.6 or 2.0.1 MeterValues (or TransactionEvent) says a connector draws.

:func:`parse_meter_values` takes the snake_case ``meter_value`` list the ``ocpp`` library hands to a
handler and returns (power_kw, energy_kwh); samples it cannot read are skipped. A sample that passes the
schema but is no finite number once scaled (a 2.0.1 ``unitOfMeasure.multiplier`` of 400, a value of
``1e400``, a sum of phases beyond the float range) is ignored with a warning: one absurd sample must not
turn the charger's MeterValues into an error answer, nor an infinite reading into the site's numbers.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Iterable, Mapping

log = logging.getLogger("protocols.ocpp.central_system")  # where the other warnings about a charger go

__all__ = ["parse_meter_values"]

_PHASES = {"L1", "L2", "L3", "L1-N", "L2-N", "L3-N"}


def _sample_value(sample: Mapping[str, Any], charger: str) -> tuple[float, str | None] | None:
    """(value scaled to W/Wh, unit) of one 1.6 or 2.0.1 sampled value; None if not a number, or not a
    finite one once scaled (logged)."""
    try:
        value = float(sample.get("value"))  # 1.6: a string; 2.0.1: a number
    except (TypeError, ValueError):
        return None
    except OverflowError:  # a 2.0.1 integer beyond the float range
        return _ignored(sample, charger, "value beyond the float range")
    unit = sample.get("unit")
    uom = sample.get("unit_of_measure")
    try:
        if isinstance(uom, Mapping):  # 2.0.1
            unit = uom.get("unit", unit)
            mult = uom.get("multiplier")
            if isinstance(mult, int) and not isinstance(mult, bool):
                value *= 10.0 ** mult
        if unit in ("kW", "kWh"):
            value *= 1000.0
    except OverflowError:  # 10.0 ** 400
        return _ignored(sample, charger, "multiplier beyond the float range")
    if not math.isfinite(value):
        return _ignored(sample, charger, "not a finite number")
    return value, unit


def _ignored(sample: Mapping[str, Any], charger: str, why: str) -> None:
    log.warning("charge point %s: meter sample ignored (%s): %.200r", charger, why, dict(sample))
    return None


def _finite_total(total: float | None, what: str, charger: str) -> float | None:
    if total is not None and not math.isfinite(total):
        log.warning("charge point %s: %s ignored: the sum of its phases is beyond the float range", charger, what)
        return None
    return total


def parse_meter_values(meter_values: Iterable[Mapping[str, Any]] | None, *,
                       charger: str = "?") -> tuple[float | None, float | None]:
    """(power_kw, energy_kwh) from the latest 1.6 / 2.0.1 meterValue entry that has them.

    Power is Power.Active.Import (the total sample, else the sum of the phase samples), energy is
    Energy.Active.Import.Register (the default measurand). Units W/kW and Wh/kWh (and 2.0.1
    multipliers) are honoured. ``charger`` names the charge point in the warning for an ignored sample.
    """
    power = energy = None
    for mv in meter_values or ():
        if not isinstance(mv, Mapping):
            continue
        p_total = e_total = None
        p_phases: list[float] = []
        e_phases: list[float] = []
        for s in mv.get("sampled_value") or ():
            if not isinstance(s, Mapping):
                continue
            measurand = s.get("measurand") or "Energy.Active.Import.Register"
            if measurand not in ("Power.Active.Import", "Energy.Active.Import.Register"):
                continue
            parsed = _sample_value(s, charger)
            if parsed is None:
                continue
            value, _unit = parsed
            phase = s.get("phase")
            if measurand == "Power.Active.Import":
                if phase is None:
                    p_total = value
                elif phase in _PHASES:
                    p_phases.append(value)
            else:
                if phase is None:
                    e_total = value
                elif phase in _PHASES:
                    e_phases.append(value)
        if p_total is None and p_phases:
            p_total = _finite_total(sum(p_phases), "Power.Active.Import", charger)
        if e_total is None and e_phases:
            e_total = _finite_total(sum(e_phases), "Energy.Active.Import.Register", charger)
        if p_total is not None:
            power = p_total / 1000.0
        if e_total is not None:
            energy = e_total / 1000.0
    return power, energy

