"""OCPP 1.6 + 2.0.1: the central system, the charger link, and what both versions share.

Laid out like the ``ocpp`` library: a room per version, shared parts beside them.

* :class:`~protocols.ocpp.central_system.CentralSystem`: the websockets server (one per site, on the I/O
  loop): handshake, security profiles 1-3, the charge point registry, listeners, calls.
* :class:`~protocols.ocpp.link.OcppChargerLink`: one charger connector/EVSE as a device link.
* :mod:`protocols.ocpp.v16` / :mod:`protocols.ocpp.v201`: the per-connection handlers
  (``central.py``) and the SetChargingProfile builder (``profiles.py``) of each version.
* Shared: :mod:`~protocols.ocpp.connection` (one connection's tasks and registration),
  :mod:`~protocols.ocpp.frames` (how a bad OCPP-J frame is answered, per version),
  :mod:`~protocols.ocpp.records` (what is known per charge point), :mod:`~protocols.ocpp.meter`
  (meter values), :mod:`~protocols.ocpp.mapping` (OCPP statuses -> charger states),
  :mod:`~protocols.ocpp.notifications` (what the central system tells its listeners),
  :mod:`~protocols.ocpp.profiles` (charging limits, the wire payload), :mod:`~protocols.ocpp.timestamps`,
  :mod:`~protocols.ocpp.security` (security profiles: TLS contexts, client-certificate checks),
  :mod:`~protocols.ocpp.authorization` (which id tags may charge), :mod:`~protocols.ocpp.data_transfer`
  (DataTransfer: the vendor hook), and :mod:`~protocols.ocpp.response_wait` (one of the two overrides of a
  private ``ocpp`` method; the other, ``_send``, is in :mod:`~protocols.ocpp.connection`).

Names are resolved lazily, so that importing one small part (a profile builder) does not start the
whole central system's imports.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "CentralSystem": "protocols.ocpp.central_system", "ChargePointRecord": "protocols.ocpp.records",
    "ChargerNotConnected": "runtime.core.errors", "OcppChargerLink": "protocols.ocpp.link",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'protocols.ocpp' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


if TYPE_CHECKING:  # pragma: no cover
    from runtime.core.errors import ChargerNotConnected  # noqa: F401

    from .central_system import CentralSystem  # noqa: F401
    from .link import OcppChargerLink  # noqa: F401
    from .records import ChargePointRecord  # noqa: F401
