"""OCPP status -> EV charger state machine, as data.

The asset actor's charger machine has seven states (:class:`runtime.core.statemachine.EVChargerState`).
OCPP 1.6 reports nine connector statuses in StatusNotification; OCPP 2.0.1 reports five connector
statuses in StatusNotification and the charging detail in TransactionEvent
``transactionInfo.chargingState``. Every value maps to exactly one state name:

| OCPP version | message (field)                                   | OCPP value      | EVChargerState |
|--------------|---------------------------------------------------|-----------------|----------------|
| 1.6          | StatusNotification (status)                       | Available       | AVAILABLE      |
| 1.6          | StatusNotification (status)                       | Preparing       | PREPARING      |
| 1.6          | StatusNotification (status)                       | Charging        | CHARGING       |
| 1.6          | StatusNotification (status)                       | SuspendedEVSE   | SUSPENDED      |
| 1.6          | StatusNotification (status)                       | SuspendedEV     | SUSPENDED      |
| 1.6          | StatusNotification (status)                       | Finishing       | FINISHING      |
| 1.6          | StatusNotification (status)                       | Reserved        | AVAILABLE      |
| 1.6          | StatusNotification (status)                       | Unavailable     | UNAVAILABLE    |
| 1.6          | StatusNotification (status)                       | Faulted         | FAULTED        |
| 2.0.1        | StatusNotification (connectorStatus)              | Available       | AVAILABLE      |
| 2.0.1        | StatusNotification (connectorStatus)              | Occupied        | PREPARING (1)  |
| 2.0.1        | StatusNotification (connectorStatus)              | Reserved        | AVAILABLE      |
| 2.0.1        | StatusNotification (connectorStatus)              | Unavailable     | UNAVAILABLE    |
| 2.0.1        | StatusNotification (connectorStatus)              | Faulted         | FAULTED        |
| 2.0.1        | TransactionEvent (transactionInfo.chargingState)  | Charging        | CHARGING       |
| 2.0.1        | TransactionEvent (transactionInfo.chargingState)  | EVConnected     | PREPARING      |
| 2.0.1        | TransactionEvent (transactionInfo.chargingState)  | SuspendedEV     | SUSPENDED      |
| 2.0.1        | TransactionEvent (transactionInfo.chargingState)  | SuspendedEVSE   | SUSPENDED      |
| 2.0.1        | TransactionEvent (transactionInfo.chargingState)  | Idle            | AVAILABLE      |
| 2.0.1        | TransactionEvent eventType=Ended, EV still there  | (any but Idle)  | FINISHING (2)  |

(1) ``Occupied`` only says an EV is connected. While a transaction runs on that EVSE and its last
chargingState is known, ``Occupied`` maps to that chargingState's state instead (so a repeated
StatusNotification does not move a charging EVSE back to PREPARING).
(2) A transaction that ends while the EV is still connected (chargingState EVConnected, SuspendedEV,
SuspendedEVSE or Charging, or no chargingState while the connector is Occupied) is FINISHING, like
1.6 ``Finishing``; the later StatusNotification ``Available`` (EV unplugged) moves it to AVAILABLE.

``Reserved`` maps to AVAILABLE: a reservation draws no power and the connector becomes PREPARING when
the reserving driver plugs in; the raw OCPP value travels with every status report, so a consumer
that cares can still tell a reserved connector from a free one. ``SuspendedEV`` and ``SuspendedEVSE``
are both SUSPENDED (the raw value says which side paused). A status on 1.6 connector 0 (the whole
charge point) is applied to a connector only when it is ``Unavailable`` or ``Faulted``.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Mapping

from runtime.core.statemachine import EVChargerState

__all__ = [
    "OCPP16_STATUS", "OCPP201_CONNECTOR_STATUS", "OCPP201_CHARGING_STATE", "state_for_16_status",
    "state_for_201_connector_status", "state_for_201_transaction_event", "station_wide_16",
]

_E = EVChargerState

#: 1.6 StatusNotification.status -> EVChargerState name.
OCPP16_STATUS: Mapping[str, str] = MappingProxyType({
    "Available": _E.AVAILABLE.name,
    "Preparing": _E.PREPARING.name,
    "Charging": _E.CHARGING.name,
    "SuspendedEVSE": _E.SUSPENDED.name,
    "SuspendedEV": _E.SUSPENDED.name,
    "Finishing": _E.FINISHING.name,
    "Reserved": _E.AVAILABLE.name,
    "Unavailable": _E.UNAVAILABLE.name,
    "Faulted": _E.FAULTED.name,
})

#: 2.0.1 StatusNotification.connectorStatus -> EVChargerState name.
OCPP201_CONNECTOR_STATUS: Mapping[str, str] = MappingProxyType({
    "Available": _E.AVAILABLE.name,
    "Occupied": _E.PREPARING.name,
    "Reserved": _E.AVAILABLE.name,
    "Unavailable": _E.UNAVAILABLE.name,
    "Faulted": _E.FAULTED.name,
})

#: 2.0.1 TransactionEvent transactionInfo.chargingState -> EVChargerState name.
OCPP201_CHARGING_STATE: Mapping[str, str] = MappingProxyType({
    "Charging": _E.CHARGING.name,
    "EVConnected": _E.PREPARING.name,
    "SuspendedEV": _E.SUSPENDED.name,
    "SuspendedEVSE": _E.SUSPENDED.name,
    "Idle": _E.AVAILABLE.name,
})

#: 1.6 statuses on connector 0 that apply to every connector.
_STATION_WIDE_16 = frozenset({"Unavailable", "Faulted"})


def state_for_16_status(status: str) -> str | None:
    """The state for a 1.6 StatusNotification status (None for a value outside the spec)."""
    return OCPP16_STATUS.get(str(status))


def station_wide_16(status: str) -> bool:
    """True when a 1.6 status reported on connector 0 applies to every connector."""
    return str(status) in _STATION_WIDE_16


def state_for_201_connector_status(status: str, *, transaction_active: bool = False,
                                   charging_state: str | None = None) -> str | None:
    """The state for a 2.0.1 connectorStatus (see note (1) of the table for ``Occupied``)."""
    status = str(status)
    if status == "Occupied" and transaction_active and charging_state in OCPP201_CHARGING_STATE:
        return OCPP201_CHARGING_STATE[charging_state]
    return OCPP201_CONNECTOR_STATUS.get(status)


def state_for_201_transaction_event(event_type: str, charging_state: str | None, *,
                                    connector_occupied: bool = True) -> str | None:
    """The state a 2.0.1 TransactionEvent implies, or None when it implies nothing new.

    ``Started``/``Updated`` use the chargingState (None when absent). ``Ended`` is FINISHING while
    the EV is still connected and AVAILABLE once it is gone (chargingState Idle, or no chargingState
    and the connector not Occupied).
    """
    event_type = str(event_type)
    cs = str(charging_state) if charging_state is not None else None
    if event_type == "Ended":
        if cs == "Idle" or (cs is None and not connector_occupied):
            return _E.AVAILABLE.name
        return _E.FINISHING.name
    if cs is None:
        return None
    return OCPP201_CHARGING_STATE.get(cs)
