"""The OCPP 1.6 SetChargingProfile request: the one builder the charger link, the seed adapter and
the fleet benchmark's bare script all use.

1.6 specifics: the profile goes to a ``connectorId`` (0 = the whole charge point), its id is
``chargingProfileId``, ``chargingSchedule`` is ONE object, and a TxProfile names an integer
``transactionId``. Build the limit with :func:`protocols.ocpp.profiles.charging_limit`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from ocpp.v16 import call

from ..timestamps import ocpp_timestamp

__all__ = ["set_charging_profile"]


def set_charging_profile(*, connector_id: int, profile_id: int, purpose: str, limit: float, unit: str = "W",
                         kind: str = "Absolute", stack_level: int = 0, start_schedule: datetime | None = None,
                         number_phases: int | None = None,
                         transaction_id: int | str | None = None) -> call.SetChargingProfile:
    """A 1.6 SetChargingProfile with one period (``startPeriod`` 0) of ``limit`` in ``unit``.

    ``start_schedule`` (truncated to the second) is sent only for an Absolute profile;
    ``number_phases`` only for a limit in A; ``transaction_id`` only for a TxProfile.
    """
    period: dict[str, Any] = {"start_period": 0, "limit": limit}
    if unit == "A" and number_phases is not None:
        period["number_phases"] = number_phases
    schedule: dict[str, Any] = {"charging_rate_unit": unit, "charging_schedule_period": [period]}
    if kind == "Absolute" and start_schedule is not None:
        schedule["start_schedule"] = ocpp_timestamp(start_schedule)
    profile: dict[str, Any] = {"charging_profile_id": profile_id, "stack_level": stack_level,
                               "charging_profile_purpose": purpose, "charging_profile_kind": kind,
                               "charging_schedule": schedule}
    if purpose == "TxProfile" and transaction_id is not None:
        profile["transaction_id"] = int(transaction_id)
    return call.SetChargingProfile(connector_id=connector_id, cs_charging_profiles=profile)
