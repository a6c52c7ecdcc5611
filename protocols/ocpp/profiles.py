"""What both OCPP versions share about charging profiles: the limit a charger is given, and the
request as it travels on the wire.

* :func:`charging_limit`: kW -> the profile's ``limit`` in W, or in A per phase, rounded DOWN to a
  multiple of 0.1 (1.6 requires one decimal at most; rounding down never allows more than asked).
* :func:`set_charging_profile`: the version's own builder
  (:func:`protocols.ocpp.v16.profiles.set_charging_profile` or
  :func:`protocols.ocpp.v201.profiles.set_charging_profile`).
* :func:`wire_payload`: a request object as the camelCase dict the ``ocpp`` library puts on the wire.
"""

from __future__ import annotations

import math
from typing import Any

from ocpp.charge_point import remove_nones, serialize_as_dict, snake_to_camel_case

from .v16 import profiles as profiles16
from .v201 import profiles as profiles201

__all__ = ["charging_limit", "set_charging_profile", "wire_payload"]


def charging_limit(kw: float, unit: str, *, voltage: float = 230.0, phases: int = 3) -> float:
    """``kw`` as a profile limit: W, or A per phase (``kW * 1000 / (voltage * phases)``), rounded down
    to a multiple of 0.1. Negative values count as 0. ``unit`` is "W" or "A"."""
    watts = max(0.0, float(kw)) * 1000.0
    value = watts if unit == "W" else watts / (voltage * phases)
    return math.floor(value * 10 + 1e-6) / 10  # 1e-6 absorbs float noise (7.4 kW must stay 7400.0 W)


def set_charging_profile(version: str, *, target: int, **spec: Any) -> Any:
    """The SetChargingProfile request of OCPP ``version`` ("1.6" or "2.0.1") for connector / EVSE
    ``target``; ``spec`` as the version's builder takes it."""
    if version == "2.0.1":
        return profiles201.set_charging_profile(evse_id=target, **spec)
    if version == "1.6":
        return profiles16.set_charging_profile(connector_id=target, **spec)
    raise ValueError(f"version: must be '1.6' or '2.0.1', got {version!r}")


def wire_payload(request: Any) -> dict[str, Any]:
    """The camelCase payload the ``ocpp`` library sends for ``request`` (None fields left out)."""
    return snake_to_camel_case(remove_nones(serialize_as_dict(request)))
