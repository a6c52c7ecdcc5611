"""What the central system tells the listeners of one charge point id.

A listener (``CentralSystem.register_listener(cp_id, callback)``) is called on the I/O loop, in the
order things happened on that charge point's connection, with one of these events. ``connector`` is
the 1.6 connector id or the 2.0.1 EVSE id (0 = the whole charge point / station). ``state`` is a
name of :class:`runtime.core.statemachine.EVChargerState` (see :mod:`protocols.ocpp.mapping`), ``raw``
the OCPP value it came from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Union

__all__ = [
    "ChargerOnline", "ChargerOffline", "ConnectorStatus", "TransactionStarted", "TransactionEnded",
    "MeterReading", "OcppEvent", "OcppListener",
]


@dataclass(frozen=True, slots=True)
class ChargerOnline:
    """The charge point is connected and registered (BootNotification Accepted, or a reconnect of a
    charge point that was registered before). ``rebooted`` is True when this id was online before
    (it rebooted or reconnected and may have lost its charging profiles); ``reason`` is "booted",
    "rebooted" or "reconnected". ``rate_unit`` is the charging rate unit it accepts ("W" or "A")."""
    cp_id: str
    version: str
    rebooted: bool
    reason: str
    rate_unit: str


@dataclass(frozen=True, slots=True)
class ChargerOffline:
    cp_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class ConnectorStatus:
    """A state change of one connector/EVSE (from StatusNotification or TransactionEvent)."""
    cp_id: str
    connector: int
    state: str
    raw: str
    error_code: str | None = None
    info: str | None = None


@dataclass(frozen=True, slots=True)
class TransactionStarted:
    """1.6 StartTransaction (the central system assigned ``transaction_id``) or 2.0.1 TransactionEvent
    Started. ``remote_start_id`` is the 2.0.1 remoteStartId when the charger reported one."""
    cp_id: str
    connector: int
    transaction_id: int | str
    id_tag: str | None = None
    remote_start_id: int | None = None


@dataclass(frozen=True, slots=True)
class TransactionEnded:
    """1.6 StopTransaction or 2.0.1 TransactionEvent Ended. ``connector`` is None when the
    transaction was not known (e.g. it started before the central system did)."""
    cp_id: str
    connector: int | None
    transaction_id: int | str
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class MeterReading:
    """Measured values of one connector/EVSE; a value is None when the charger did not send it."""
    cp_id: str
    connector: int
    power_kw: float | None
    energy_kwh: float | None
    transaction_id: int | str | None = None


OcppEvent = Union[ChargerOnline, ChargerOffline, ConnectorStatus, TransactionStarted, TransactionEnded,
                  MeterReading]
OcppListener = Callable[[OcppEvent], None]
