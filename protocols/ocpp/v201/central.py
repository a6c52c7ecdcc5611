"""The central system's side of one OCPP 2.0.1 connection: a handler per action a 2.0.1 station sends.

BootNotification, Heartbeat, StatusNotification, Authorize, TransactionEvent, MeterValues,
NotifyReport, NotifyEvent, DataTransfer, FirmwareStatusNotification, LogStatusNotification and the
messages a station sends under security profiles 2 and 3 (SecurityEventNotification, SignCertificate)
are answered here; what they mean for the site is reported through the shared
:class:`~protocols.ocpp.connection.ChargePointConnection` helpers. 2.0.1 specifics: the station names
its transactions, the charging detail comes in TransactionEvent ``transactionInfo.chargingState``,
the rate unit from GetVariables ``SmartChargingCtrlr.RateUnit``, and a reconnect is re-announced with
TriggerMessage(TransactionEvent).

Id tokens (Authorize, and a TransactionEvent that carries one) are answered with the central system's
id-tag policy (:mod:`protocols.ocpp.authorization`); a TransactionEvent without an idToken gets no
``idTokenInfo``, as 2.0.1 prescribes.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Mapping

from ocpp.routing import after, on
from ocpp.v201 import ChargePoint, call, call_result
from ocpp.v201.enums import Action
from websockets.asyncio.server import ServerConnection

from ..connection import WIRE_LOG, ChargePointConnection
from ..mapping import state_for_201_connector_status, state_for_201_transaction_event
from ..notifications import TransactionEnded, TransactionStarted
from ..records import ChargePointRecord, parse_rate_unit
from ..timestamps import ocpp_timestamp

if TYPE_CHECKING:  # pragma: no cover
    from ..central_system import CentralSystem

log = logging.getLogger("protocols.ocpp.central_system")

__all__ = ["ChargePoint201Connection", "RATE_UNIT_VARIABLE"]

#: The 2.0.1 (component, variable) that says which charging rate units the station accepts.
RATE_UNIT_VARIABLE = ("SmartChargingCtrlr", "RateUnit")


class ChargePoint201Connection(ChargePointConnection, ChargePoint):
    """One OCPP 2.0.1 charge point connection: the central system's handlers for what a 2.0.1 station sends."""

    version = "2.0.1"

    def __init__(self, cp_id: str, ws: ServerConnection, cs: "CentralSystem", record: ChargePointRecord) -> None:
        ChargePoint.__init__(self, cp_id, ws, response_timeout=cs.response_timeout, logger=WIRE_LOG)
        self._setup(cs, record)

    async def _query_rate_unit(self) -> str | None:
        comp, var = RATE_UNIT_VARIABLE
        res = await self.call(call.GetVariables(get_variable_data=[
            {"component": {"name": comp}, "variable": {"name": var}}]), suppress=False)
        for r in res.get_variable_result or ():
            if (isinstance(r, Mapping) and r.get("attribute_status") == "Accepted"
                    and (r.get("variable") or {}).get("name") == var):
                return parse_rate_unit(r.get("attribute_value"))
        return None

    async def _trigger_boot(self) -> None:
        res = await self.call(call.TriggerMessage(requested_message="BootNotification"), suppress=False)
        log.info("charge point %s: TriggerMessage(BootNotification) answered %s", self.id, res.status)

    def _resync_triggers(self) -> list[Any]:
        return [call.TriggerMessage(requested_message="TransactionEvent")]

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
    def on_status_notification(self, timestamp: str, connector_status: str, evse_id: int, connector_id: int,
                               **_: Any) -> Any:
        self._on_traffic()
        rec = self._record
        state = state_for_201_connector_status(
            connector_status, transaction_active=evse_id in rec.transactions,
            charging_state=rec.charging_states.get(evse_id))
        self._set_state(evse_id, state, connector_status)
        return call_result.StatusNotification()

    @on(Action.authorize)
    def on_authorize(self, id_token: Mapping[str, Any], **_: Any) -> Any:
        self._on_traffic()
        decision = self._decide_tag(str(id_token.get("id_token", "")))
        return call_result.Authorize(id_token_info=decision.id_token_info_201())

    @on(Action.data_transfer)
    async def on_data_transfer(self, vendor_id: str, message_id: str | None = None, data: Any = None,
                               **_: Any) -> Any:
        self._on_traffic()
        status, out = await self._data_transfer(vendor_id, message_id, data)
        return call_result.DataTransfer(status=status, data=out)

    @on(Action.security_event_notification)
    def on_security_event_notification(self, type: str, timestamp: str, tech_info: str | None = None,
                                       **_: Any) -> Any:
        self._on_traffic()
        self._security_event(type, timestamp, tech_info)
        return call_result.SecurityEventNotification()

    @on(Action.sign_certificate)
    def on_sign_certificate(self, csr: str, certificate_type: str | None = None, **_: Any) -> Any:
        self._on_traffic()
        self._csr(certificate_type)
        return call_result.SignCertificate(status="Rejected", status_info={
            "reason_code": "NotSupported", "additional_info": "this CSMS does not sign certificates"})

    @on(Action.notify_event)
    def on_notify_event(self, generated_at: str, seq_no: int, event_data: list[Any], **_: Any) -> Any:
        self._on_traffic()
        log.debug("charge point %s: NotifyEvent with %d event(s)", self.id, len(event_data))
        return call_result.NotifyEvent()

    @on(Action.firmware_status_notification)
    def on_firmware_status_notification(self, status: str, **_: Any) -> Any:
        self._on_traffic()
        log.info("charge point %s: firmware %s", self.id, status)
        return call_result.FirmwareStatusNotification()

    @on(Action.log_status_notification)
    def on_log_status_notification(self, status: str, **_: Any) -> Any:
        self._on_traffic()
        log.info("charge point %s: log upload %s", self.id, status)
        return call_result.LogStatusNotification()

    @on(Action.transaction_event)
    def on_transaction_event(self, event_type: str, timestamp: str, trigger_reason: str, seq_no: int,
                             transaction_info: Mapping[str, Any], meter_value: list[Any] | None = None,
                             evse: Mapping[str, Any] | None = None, id_token: Mapping[str, Any] | None = None,
                             **_: Any) -> Any:
        self._on_traffic()
        rec = self._record
        tx = transaction_info.get("transaction_id")
        evse_id = evse.get("id") if isinstance(evse, Mapping) else None
        if evse_id is None:
            evse_id = rec.connector_of(tx)
        charging_state = transaction_info.get("charging_state")
        if event_type == "Ended":
            rec.transaction_ended(tx)
        elif evse_id is not None and rec.has_ended(tx):  # a late (queued) message of an ended transaction
            log.info("charge point %s: ignoring a %s TransactionEvent of ended transaction %s", self.id,
                     event_type, tx)
            evse_id = None
        if evse_id is not None:
            if event_type == "Ended":
                if str(rec.transactions.get(evse_id)) == str(tx):
                    rec.transactions.pop(evse_id, None)
                    rec.charging_states.pop(evse_id, None)
            else:
                new = rec.transactions.get(evse_id) != tx
                rec.transactions[evse_id] = tx
                if charging_state is not None:
                    rec.charging_states[evse_id] = charging_state
                if new:
                    tag = id_token.get("id_token") if isinstance(id_token, Mapping) else None
                    self._cs._emit(self.id, TransactionStarted(
                        self.id, evse_id, tx, tag, transaction_info.get("remote_start_id")))
            if meter_value:
                self._meter(evse_id, meter_value, tx)
            state = state_for_201_transaction_event(
                event_type, charging_state, connector_occupied=rec.statuses.get(evse_id) == "Occupied")
            if state is not None:
                raw = charging_state or f"Transaction{event_type}"
                self._set_state(evse_id, state, raw, status_notification=False)
        if event_type == "Ended":
            self._cs._emit(self.id, TransactionEnded(self.id, evse_id, tx, transaction_info.get("stopped_reason")))
        if isinstance(id_token, Mapping):
            decision = self._decide_tag(str(id_token.get("id_token", "")))
            return call_result.TransactionEvent(id_token_info=decision.id_token_info_201())
        return call_result.TransactionEvent()

    @on(Action.meter_values)
    def on_meter_values(self, evse_id: int, meter_value: list[Any], **_: Any) -> Any:
        self._on_traffic()
        self._meter(evse_id, meter_value, self._record.transactions.get(evse_id))
        return call_result.MeterValues()

    @on(Action.notify_report)
    def on_notify_report(self, request_id: int, generated_at: str, seq_no: int,
                         report_data: list[Any] | None = None, **_: Any) -> Any:
        self._on_traffic()
        comp, var = RATE_UNIT_VARIABLE
        for item in report_data or ():
            if ((item.get("component") or {}).get("name") == comp
                    and (item.get("variable") or {}).get("name") == var):
                for attr in item.get("variable_attribute") or ():
                    unit = parse_rate_unit(attr.get("value"))
                    if unit is not None:
                        self._record.rate_unit, self._record.rate_unit_known = unit, True
        return call_result.NotifyReport()

