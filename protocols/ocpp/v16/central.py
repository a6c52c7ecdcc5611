"""The central system's side of one OCPP 1.6 connection: a handler per action a 1.6 charger sends.

Every message a 1.6 charge point sends has a handler here: the Core profile (BootNotification,
Heartbeat, StatusNotification, Authorize, StartTransaction, StopTransaction, MeterValues, DataTransfer),
the Firmware Management notifications (DiagnosticsStatusNotification, FirmwareStatusNotification) and the
security whitepaper's (SecurityEventNotification, SignCertificate, LogStatusNotification,
SignedFirmwareStatusNotification). What they mean for the site is reported through the shared
:class:`~protocols.ocpp.connection.ChargePointConnection` helpers. 1.6 specifics: the central system
assigns transaction ids (a new one is recorded only after the StartTransaction answer went out), the
rate unit comes from GetConfiguration ``ChargingScheduleAllowedChargingRateUnit``, and a reconnect is
re-announced with TriggerMessage(MeterValues) and TriggerMessage(StatusNotification).

Id tags (Authorize, StartTransaction, StopTransaction) are answered with the central system's id-tag
policy (:mod:`protocols.ocpp.authorization`); a StartTransaction with a refused tag still gets its
transaction id, as 1.6 requires, and the charger decides whether to stop (its
``StopTransactionOnInvalidId``).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Mapping

from ocpp.routing import after, on
from ocpp.v16 import ChargePoint, call, call_result
from ocpp.v16.enums import Action
from websockets.asyncio.server import ServerConnection

from ..connection import WIRE_LOG, ChargePointConnection
from ..mapping import state_for_16_status
from ..notifications import TransactionEnded, TransactionStarted
from ..records import ChargePointRecord, parse_rate_unit
from ..timestamps import ocpp_timestamp

if TYPE_CHECKING:  # pragma: no cover
    from ..central_system import CentralSystem

log = logging.getLogger("protocols.ocpp.central_system")

__all__ = ["ChargePoint16Connection", "RATE_UNIT_KEY"]

#: The 1.6 configuration key that says which charging rate units the charger accepts.
RATE_UNIT_KEY = "ChargingScheduleAllowedChargingRateUnit"


class ChargePoint16Connection(ChargePointConnection, ChargePoint):
    """One OCPP 1.6 charge point connection: the central system's handlers for what a 1.6 charger sends."""

    version = "1.6"

    def __init__(self, cp_id: str, ws: ServerConnection, cs: "CentralSystem", record: ChargePointRecord) -> None:
        ChargePoint.__init__(self, cp_id, ws, response_timeout=cs.response_timeout, logger=WIRE_LOG)
        self._setup(cs, record)
        self._started: tuple[int, int, str] | None = None

    async def _query_rate_unit(self) -> str | None:
        res = await self.call(call.GetConfiguration(key=[RATE_UNIT_KEY]), suppress=False)
        for kv in res.configuration_key or ():
            if isinstance(kv, Mapping) and kv.get("key") == RATE_UNIT_KEY:
                return parse_rate_unit(kv.get("value"))
        return None

    async def _trigger_boot(self) -> None:
        res = await self.call(call.TriggerMessage(requested_message="BootNotification"), suppress=False)
        log.info("charge point %s: TriggerMessage(BootNotification) answered %s", self.id, res.status)

    @on(Action.boot_notification)
    def on_boot_notification(self, **payload: Any) -> Any:
        status, interval = self._boot_answer(payload)
        return call_result.BootNotification(current_time=ocpp_timestamp(), interval=interval, status=status)

    @after(Action.boot_notification)
    def after_boot_notification(self, **_: Any) -> None:
        self._after_boot()

    @on(Action.heartbeat)
    def on_heartbeat(self, **_: Any) -> Any:
        self._on_traffic()
        return call_result.Heartbeat(current_time=ocpp_timestamp())

    @on(Action.status_notification)
    def on_status_notification(self, connector_id: int, error_code: str, status: str, info: str | None = None,
                               **_: Any) -> Any:
        self._on_traffic()
        self._set_state(connector_id, state_for_16_status(status), status, error_code, info)
        return call_result.StatusNotification()

    @on(Action.authorize)
    def on_authorize(self, id_tag: str, **_: Any) -> Any:
        self._on_traffic()
        return call_result.Authorize(id_tag_info=self._decide_tag(id_tag).id_tag_info_16())

    @on(Action.data_transfer)
    async def on_data_transfer(self, vendor_id: str, message_id: str | None = None, data: str | None = None,
                               **_: Any) -> Any:
        self._on_traffic()
        status, out = await self._data_transfer(vendor_id, message_id, data)
        return call_result.DataTransfer(status=status, data=out)

    @on(Action.diagnostics_status_notification)
    def on_diagnostics_status_notification(self, status: str, **_: Any) -> Any:
        self._on_traffic()
        log.info("charge point %s: diagnostics upload %s", self.id, status)
        return call_result.DiagnosticsStatusNotification()

    @on(Action.firmware_status_notification)
    def on_firmware_status_notification(self, status: str, **_: Any) -> Any:
        self._on_traffic()
        log.info("charge point %s: firmware %s", self.id, status)
        return call_result.FirmwareStatusNotification()

    @on(Action.security_event_notification)
    def on_security_event_notification(self, type: str, timestamp: str, tech_info: str | None = None,
                                       **_: Any) -> Any:
        self._on_traffic()
        self._security_event(type, timestamp, tech_info)
        return call_result.SecurityEventNotification()

    @on(Action.sign_certificate)
    def on_sign_certificate(self, csr: str, **_: Any) -> Any:
        self._on_traffic()
        self._csr(None)
        return call_result.SignCertificate(status="Rejected")

    @on(Action.log_status_notification)
    def on_log_status_notification(self, status: str, **_: Any) -> Any:
        self._on_traffic()
        log.info("charge point %s: log upload %s", self.id, status)
        return call_result.LogStatusNotification()

    @on(Action.signed_firmware_status_notification)
    def on_signed_firmware_status_notification(self, status: str, **_: Any) -> Any:
        self._on_traffic()
        log.info("charge point %s: signed firmware %s", self.id, status)
        return call_result.SignedFirmwareStatusNotification()

    def _resync_triggers(self) -> list[Any]:
        return [call.TriggerMessage(requested_message="MeterValues"),
                call.TriggerMessage(requested_message="StatusNotification")]

    @on(Action.start_transaction)
    def on_start_transaction(self, connector_id: int, id_tag: str, meter_start: int, timestamp: str,
                             **_: Any) -> Any:
        self._on_traffic()
        tx = self._cs._next_transaction_id()
        self._started = (connector_id, tx, id_tag)
        info = self._decide_tag(id_tag).id_tag_info_16()
        return call_result.StartTransaction(transaction_id=tx, id_tag_info=info)

    @after(Action.start_transaction)
    def after_start_transaction(self, **_: Any) -> None:
        # Recorded (and told) only after the answer went out: a command that sees the transaction in the
        # record sends its TxProfile after the charger got the id, never before.
        if self._started is not None:
            connector_id, tx, id_tag = self._started
            self._started = None
            self._record.transactions[connector_id] = tx
            self._cs._emit(self.id, TransactionStarted(self.id, connector_id, tx, id_tag))

    @on(Action.stop_transaction)
    def on_stop_transaction(self, meter_stop: int, timestamp: str, transaction_id: int, reason: str | None = None,
                            id_tag: str | None = None, transaction_data: list[Any] | None = None, **_: Any) -> Any:
        self._on_traffic()
        connector = self._record.connector_of(transaction_id)
        self._record.transaction_ended(transaction_id)
        if connector is not None:
            del self._record.transactions[connector]
            if transaction_data:
                self._meter(connector, transaction_data, transaction_id)
        self._cs._emit(self.id, TransactionEnded(self.id, connector, transaction_id, reason))
        if id_tag is not None:
            return call_result.StopTransaction(id_tag_info=self._decide_tag(id_tag).id_tag_info_16())
        return call_result.StopTransaction()

    @on(Action.meter_values)
    def on_meter_values(self, connector_id: int, meter_value: list[Any], transaction_id: int | None = None,
                        **_: Any) -> Any:
        self._on_traffic()
        if transaction_id is not None and connector_id > 0:
            self._learn_transaction(connector_id, transaction_id)
        self._meter(connector_id, meter_value, transaction_id)
        return call_result.MeterValues()

