"""OCPP 1.6 + 2.0.1: the central system, the charger link and the status mapping.

* :class:`~protocols.ocpp.central_system.CentralSystem` - the websockets server (one per site, on the I/O loop).
* :class:`~protocols.ocpp.link.OcppChargerLink` - one charger connector/EVSE as a DeviceLink.
* :mod:`protocols.ocpp.mapping` - OCPP statuses -> EVChargerState names (a table).
* :mod:`protocols.ocpp.events` - what the central system tells its listeners.
"""

from .central_system import CentralSystem, ChargePointRecord, ChargerNotConnected
from .link import OcppChargerLink

__all__ = ["CentralSystem", "ChargePointRecord", "ChargerNotConnected", "OcppChargerLink"]
