"""The OCPP 2.0.1 SetChargingProfile request: the one builder the charger link, the seed adapter and
the fleet benchmark's bare script all use.

2.0.1 specifics: the profile goes to an ``evseId`` (0 = the whole station), its id is ``id``,
``chargingSchedule`` is a LIST (1..3) whose entries need their own ``id``, and a TxProfile names
its ``transactionId`` as a string. Build the limit with :func:`protocols.ocpp.profiles.charging_limit`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from ocpp.v201 import call

from ..timestamps import ocpp_timestamp

__all__ = ["set_charging_profile"]


def set_charging_profile(*, evse_id: int, profile_id: int, purpose: str, limit: float, unit: str = "W",
                         kind: str = "Absolute", stack_level: int = 0, start_schedule: datetime | None = None,
                         number_phases: int | None = None,
                         transaction_id: int | str | None = None) -> call.SetChargingProfile:
    """A 2.0.1 SetChargingProfile with one schedule (``id`` = ``profile_id``) of one period
    (``startPeriod`` 0) of ``limit`` in ``unit``.

    ``start_schedule`` (truncated to the second) is sent only for an Absolute profile;
    ``number_phases`` only for a limit in A; ``transaction_id`` only for a TxProfile.
    """
    period: dict[str, Any] = {"start_period": 0, "limit": limit}
    if unit == "A" and number_phases is not None:
        period["number_phases"] = number_phases
    schedule: dict[str, Any] = {"id": profile_id, "charging_rate_unit": unit, "charging_schedule_period": [period]}
    if kind == "Absolute" and start_schedule is not None:
        schedule["start_schedule"] = ocpp_timestamp(start_schedule)
    profile: dict[str, Any] = {"id": profile_id, "stack_level": stack_level, "charging_profile_purpose": purpose,
                               "charging_profile_kind": kind, "charging_schedule": [schedule]}
    if purpose == "TxProfile" and transaction_id is not None:
        profile["transaction_id"] = str(transaction_id)
    return call.SetChargingProfile(evse_id=evse_id, charging_profile=profile)
