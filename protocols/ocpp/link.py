"""OcppChargerLink: one OCPP charger connector/EVSE as a :class:`protocols.base.DeviceLink`.

The link talks through the site's :class:`~protocols.ocpp.central_system.CentralSystem`
(``ctx.services["ocpp"]``). It listens to its charge point id and reports through the sink:

* ``LinkUp`` when the charger is connected and registered; ``LinkUp(rebooted=True)`` after it
  rebooted or reconnected (it may have lost its profiles: the asset actor re-sends its target);
* ``LinkDown`` when the connection closes;
* ``StatusReport(state, raw)`` for every status of its connector (1.6) / EVSE (2.0.1), and for a
  1.6 connector-0 ``Unavailable``/``Faulted`` (see :mod:`protocols.ocpp.mapping`);
* ``Telemetry({"power_kw", "energy_kwh"})`` from MeterValues / TransactionEvent meter values;
* ``CommandProgress(COMPLETED)`` for an ACKNOWLEDGED START_CHARGING when the transaction starts,
  STOP_CHARGING when it ends, and a Scheduled CHANGE_AVAILABILITY when the status follows.

Commands (values in kW):

=====================  =============================================  ============================================
command                1.6                                            2.0.1
=====================  =============================================  ============================================
SET_CHARGE_RATE        SetChargingProfile TxProfile (running tx,      SetChargingProfile TxProfile (running tx,
                       profile ``profile_id + 1``) on the connector,  ``profile_id + 1``) / TxDefaultProfile
                       else TxDefaultProfile (``profile_id``)         (``profile_id``) on the EVSE, schedule list
                                                                      with ``id`` and ``startPeriod`` 0
SET_POWER_LIMIT        ChargePointMaxProfile, connector 0,            ChargingStationMaxProfile, EVSE 0,
                       ``profile_id + 2`` (``power_limit_profile=``   ``profile_id + 2`` (or like SET_CHARGE_RATE)
                       "tx": like SET_CHARGE_RATE)
START_CHARGING         RemoteStartTransaction                         RequestStartTransaction (remoteStartId)
STOP_CHARGING          RemoteStopTransaction (running tx)             RequestStopTransaction (running tx)
CHANGE_AVAILABILITY    ChangeAvailability (1 Operative, 0 Inop.)      ChangeAvailability (evse)
=====================  =============================================  ============================================

The TxDefaultProfile goes to the link's own connector/EVSE (so two links on one multi-connector
charger do not overwrite each other's default); ``default_profile_target="station"`` sends it to
connector/EVSE 0 (all connectors) instead.

Limits are W, or A per phase (``kW * 1000 / (voltage * phases)`` with ``numberPhases``) when the
charger said it only accepts A; rounded down to a multiple of 0.1 (never above the request). The
three profiles have distinct ids so that none replaces another (a TxProfile with the TxDefault id
would delete the default for the next transaction). ``profile_kind`` "Absolute" (default) starts the
schedule at the command's scheduled time or now, whichever is earlier, truncated to the second;
"Relative" sends no ``startSchedule``.

STOP_CHARGING while no transaction is known on the connector/EVSE -> FAILED ("no transaction known for
connector N"; retryable: after a site restart the central system learns a running transaction from the
charger's next MeterValues / TransactionEvent). A 1.6 transaction is in the record only once the
StartTransaction answer went out, so a TxProfile never reaches the charger before its transaction id.

Answers: Accepted -> COMPLETED (START/STOP: ACKNOWLEDGED, completed later; CHANGE_AVAILABILITY
Scheduled -> ACKNOWLEDGED); Rejected / NotSupported -> REJECTED with the charger's status and
statusInfo; a CallError -> FAILED with its code and description (NotImplemented / NotSupported ->
REJECTED: a retry cannot help); no answer within ``call_timeout`` -> TIMED_OUT; not connected or
not registered, or the connection closed during the call -> NOT_CONNECTED (the command is held).
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Literal

from ocpp.exceptions import OCPPError
from ocpp.v16 import call as call16
from ocpp.v201 import call as call201

from protocols.base import (CommandProgress, DeviceContext, DeviceError, DeviceLink, DeviceResult, DeviceSink,
                            LinkDown, LinkUp, Outcome, StatusReport, Telemetry)
from runtime.core.commands import Command, CommandType
from runtime.core.errors import ChargerNotConnected, ConfigurationError

from .central_system import CentralSystem
from .mapping import station_wide_16
from .notifications import (ChargerOffline, ChargerOnline, ConnectorStatus, MeterReading, OcppEvent,
                            TransactionEnded, TransactionStarted)
from .profiles import charging_limit, set_charging_profile
from .records import ChargePointRecord

log = logging.getLogger(__name__)

__all__ = ["OcppChargerLink"]


@dataclass
class _Pending:
    command_id: str
    key: Any = None          # remoteStartId (2.0.1 start), transaction id (stop), target state (availability)
    in_flight: bool = True   # the call has not returned yet
    done: bool = False       # completion seen while the call was in flight


class OcppChargerLink(DeviceLink):
    """One connector (1.6) / EVSE (2.0.1) of an OCPP charge point (see the module docstring)."""

    def __init__(self, charge_point_id: str, connector_id: int = 1, evse_id: int = 1, *, voltage: float = 230.0,
                 phases: int = 3, call_timeout: float = 10.0, profile_id: int = 1, stack_level: int = 0,
                 profile_kind: Literal["Absolute", "Relative"] = "Absolute", id_tag: str = "coordinator",
                 power_limit_profile: Literal["station_max", "tx"] = "station_max",
                 default_profile_target: Literal["connector", "station"] = "connector") -> None:
        if not isinstance(charge_point_id, str) or not charge_point_id:
            raise ConfigurationError(f"charge_point_id: must be a non-empty string, got {charge_point_id!r}")
        for name, v, low in (("connector_id", connector_id, 1), ("evse_id", evse_id, 1),
                             ("profile_id", profile_id, 0), ("stack_level", stack_level, 0)):
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ConfigurationError(f"{name}: must be an integer >= {low}, got {v!r}")
        if isinstance(voltage, bool) or not isinstance(voltage, (int, float)) or not voltage > 0:
            raise ConfigurationError(f"voltage: must be a number > 0, got {voltage!r}")
        if phases not in (1, 2, 3) or isinstance(phases, bool):
            raise ConfigurationError(f"phases: must be 1, 2 or 3, got {phases!r}")
        if not call_timeout > 0:
            raise ConfigurationError(f"call_timeout: must be > 0, got {call_timeout!r}")
        if profile_kind not in ("Absolute", "Relative"):
            raise ConfigurationError(f"profile_kind: must be 'Absolute' or 'Relative', got {profile_kind!r}")
        if power_limit_profile not in ("station_max", "tx"):
            raise ConfigurationError(f"power_limit_profile: must be 'station_max' or 'tx', got {power_limit_profile!r}")
        if default_profile_target not in ("connector", "station"):
            raise ConfigurationError(f"default_profile_target: must be 'connector' or 'station', got {default_profile_target!r}")
        if not isinstance(id_tag, str) or not 0 < len(id_tag) <= 20:
            raise ConfigurationError(f"id_tag: must be a string of 1..20 characters, got {id_tag!r}")
        self.charge_point_id = charge_point_id
        self.connector_id = connector_id
        self.evse_id = evse_id
        self.voltage = float(voltage)
        self.phases = phases
        self.call_timeout = float(call_timeout)
        self.profile_id = profile_id
        self.stack_level = stack_level
        self.profile_kind = profile_kind
        self.id_tag = id_tag
        self.power_limit_profile = power_limit_profile
        self.default_profile_target = default_profile_target
        self._cs: CentralSystem | None = None
        self._sink: DeviceSink | None = None
        self._ctx: DeviceContext | None = None
        self._remote_start_ids = itertools.count(1)
        self._pending_start: _Pending | None = None
        self._pending_stop: _Pending | None = None
        self._pending_availability: _Pending | None = None

    def describe(self) -> str:
        return f"OCPP charger {self.charge_point_id} (connector {self.connector_id} / EVSE {self.evse_id})"

    def __repr__(self) -> str:
        return f"OcppChargerLink({self.charge_point_id!r}, connector_id={self.connector_id}, evse_id={self.evse_id})"

    # ---- lifecycle -------------------------------------------------------------------------------
    async def start(self, ctx: DeviceContext, sink: DeviceSink) -> None:
        cs = ctx.services.get("ocpp") if ctx.services is not None else None
        if cs is None:
            raise DeviceError(f"{self.describe()}: no OCPP central system in the device context "
                              f"(services['ocpp'])")
        if self._cs is not None:
            await self.stop()
        self._cs, self._sink, self._ctx = cs, sink, ctx
        cs.register_listener(self.charge_point_id, self._on_event)
        rec = cs.charge_point(self.charge_point_id)
        if rec is not None and rec.online:
            self._emit(LinkUp(rebooted=False, reason="connected"))
            connector = self._connector(rec)
            if connector in rec.states:
                state, raw = rec.states[connector]
                self._emit(StatusReport(state, raw))

    async def stop(self) -> None:
        cs, self._cs = self._cs, None
        if cs is not None:
            cs.unregister_listener(self.charge_point_id, self._on_event)
        self._sink = None
        self._pending_start = self._pending_stop = self._pending_availability = None

    # ---- events from the central system ----------------------------------------------------------
    def _connector(self, rec: ChargePointRecord | None) -> int:
        version = rec.version if rec is not None else None
        return self.evse_id if version == "2.0.1" else self.connector_id

    def _emit(self, event: Any) -> None:
        sink = self._sink
        if sink is None:
            return
        try:
            sink(event)
        except Exception:
            log.exception("%s: the sink raised on %r", self.describe(), event)

    def _on_event(self, ev: OcppEvent) -> None:
        rec = self._cs.charge_point(self.charge_point_id) if self._cs is not None else None
        mine = self._connector(rec)
        if isinstance(ev, ChargerOnline):
            self._emit(LinkUp(rebooted=ev.rebooted, reason=ev.reason))
        elif isinstance(ev, ChargerOffline):
            self._emit(LinkDown(reason=ev.reason))
        elif isinstance(ev, ConnectorStatus):
            if ev.connector == mine or (ev.connector == 0 and station_wide_16(ev.raw)):
                self._emit(StatusReport(ev.state, ev.raw))
                p = self._pending_availability
                if p is not None and ev.state == p.key:
                    self._complete("_pending_availability", p)
        elif isinstance(ev, TransactionStarted):
            p = self._pending_start
            if ev.connector == mine and p is not None and (
                    p.key is None or ev.remote_start_id is None or ev.remote_start_id == p.key):
                self._complete("_pending_start", p)
        elif isinstance(ev, TransactionEnded):
            p = self._pending_stop
            if p is not None and str(ev.transaction_id) == str(p.key):
                self._complete("_pending_stop", p)
        elif isinstance(ev, MeterReading):
            if ev.connector == mine:
                values: dict[str, float] = {}
                if ev.power_kw is not None:
                    values["power_kw"] = ev.power_kw
                if ev.energy_kwh is not None:
                    values["energy_kwh"] = ev.energy_kwh
                self._emit(Telemetry(values))

    def _complete(self, attr: str, p: _Pending) -> None:
        if p.in_flight:
            p.done = True  # execute() returns COMPLETED instead of ACKNOWLEDGED
            return
        setattr(self, attr, None)
        self._emit(CommandProgress(p.command_id, Outcome.COMPLETED))

    # ---- commands --------------------------------------------------------------------------------
    async def execute(self, command: Command) -> DeviceResult:
        cs = self._cs
        if cs is None:
            return DeviceResult(Outcome.NOT_CONNECTED, f"{self.describe()}: link not started")
        rec = cs.charge_point(self.charge_point_id)
        if rec is None or rec.connection is None:
            return DeviceResult(Outcome.NOT_CONNECTED, f"charge point {self.charge_point_id} is not connected")
        if not rec.online:
            return DeviceResult(Outcome.NOT_CONNECTED,
                                f"charge point {self.charge_point_id} is connected but not registered yet")
        t = command.command_type
        if t is CommandType.SET_CHARGE_RATE or t is CommandType.SET_POWER_LIMIT:
            return await self._set_limit(command, rec)
        if t is CommandType.START_CHARGING:
            return await self._start_charging(command, rec)
        if t is CommandType.STOP_CHARGING:
            return await self._stop_charging(command, rec)
        if t is CommandType.CHANGE_AVAILABILITY:
            return await self._change_availability(command, rec)
        return DeviceResult(Outcome.REJECTED, f"{t.value} is not supported by an OCPP charger")

    async def _call(self, payload: Any) -> tuple[Any, DeviceResult | None]:
        """(call result, None) or (None, the DeviceResult for a failure)."""
        assert self._cs is not None
        action = type(payload).__name__
        try:
            result = await self._cs.call(self.charge_point_id, payload, timeout=self.call_timeout)
        except ChargerNotConnected as exc:
            return None, DeviceResult(Outcome.NOT_CONNECTED, str(exc), {"action": action})
        except TimeoutError:
            return None, DeviceResult(Outcome.TIMED_OUT, f"no answer to {action} within {self.call_timeout:g} s",
                                      {"action": action})
        except OCPPError as exc:
            code = getattr(exc, "code", type(exc).__name__)
            outcome = Outcome.REJECTED if code in ("NotImplemented", "NotSupported") else Outcome.FAILED
            return None, DeviceResult(outcome, f"CallError {code}: {exc.description}",
                                      {"action": action, "error_code": code, "error_description": exc.description,
                                       "error_details": exc.details})
        except Exception as exc:  # e.g. UnknownCallErrorCodeError, an answer we cannot parse
            return None, DeviceResult(Outcome.FAILED, f"{action} failed: {type(exc).__name__}: {exc}",
                                      {"action": action})
        return result, None

    @staticmethod
    def _refusal(action: str, result: Any, detail: dict[str, Any]) -> DeviceResult:
        status = str(getattr(result, "status", "?"))
        reason = f"{action}: charger answered {status}"
        info = getattr(result, "status_info", None)
        if isinstance(info, dict) and info:
            reason += f" ({info.get('reason_code')}" + (f": {info['additional_info']}" if info.get("additional_info")
                                                       else "") + ")"
            detail["status_info"] = info
        detail["status"] = status
        return DeviceResult(Outcome.REJECTED, reason, detail)

    def _start_schedule(self, command: Command) -> datetime:
        now = self._ctx.clock.now() if self._ctx is not None else datetime.now(timezone.utc)
        return min(command.scheduled_time, now)

    def _profile_payload(self, rec: ChargePointRecord, command: Command, purpose: str, profile_id: int,
                         target: int, tx: int | str | None, limit: float, unit: str) -> Any:
        return set_charging_profile(
            rec.version or "1.6", target=target, profile_id=profile_id, purpose=purpose, limit=limit, unit=unit,
            kind=self.profile_kind, stack_level=self.stack_level, start_schedule=self._start_schedule(command),
            number_phases=self.phases, transaction_id=tx)

    async def _set_limit(self, command: Command, rec: ChargePointRecord) -> DeviceResult:
        unit = rec.rate_unit if rec.rate_unit in ("W", "A") else "W"
        limit = charging_limit(command.setpoint, unit, voltage=self.voltage, phases=self.phases)
        station = command.command_type is CommandType.SET_POWER_LIMIT and self.power_limit_profile == "station_max"
        for attempt in (1, 2):
            if station:
                purpose = "ChargePointMaxProfile" if rec.version == "1.6" else "ChargingStationMaxProfile"
                target, tx, profile_id = 0, None, self.profile_id + 2
            else:
                target = self._connector(rec)
                tx = rec.transaction_on(target)
                purpose = "TxProfile" if tx is not None else "TxDefaultProfile"
                profile_id = self.profile_id + 1 if tx is not None else self.profile_id
                if tx is None and self.default_profile_target == "station":
                    target = 0
            payload = self._profile_payload(rec, command, purpose, profile_id, target, tx, limit, unit)
            result, failure = await self._call(payload)
            detail: dict[str, Any] = {"action": "SetChargingProfile", "purpose": purpose, "profile_id": profile_id,
                                      "limit": limit, "unit": unit, "target": target, "transaction_id": tx}
            if failure is not None:
                return DeviceResult(failure.outcome, failure.reason, {**detail, **failure.detail})
            if str(result.status) == "Accepted":
                return DeviceResult(Outcome.COMPLETED, None, {**detail, "status": "Accepted"})
            # A TxProfile refused because the transaction ended meanwhile: set the default instead.
            if attempt == 1 and tx is not None and rec.transaction_on(target) != tx:
                continue
            return self._refusal("SetChargingProfile", result, detail)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _start_charging(self, command: Command, rec: ChargePointRecord) -> DeviceResult:
        target = self._connector(rec)
        running = rec.transaction_on(target)
        if running is not None:
            return DeviceResult(Outcome.COMPLETED, "transaction already running", {"transaction_id": running})
        if rec.version == "2.0.1":
            rsid = next(self._remote_start_ids)
            payload: Any = call201.RequestStartTransaction(
                id_token={"id_token": self.id_tag, "type": "Central"}, remote_start_id=rsid, evse_id=target)
            action = "RequestStartTransaction"
        else:
            rsid = None
            payload = call16.RemoteStartTransaction(id_tag=self.id_tag, connector_id=target)
            action = "RemoteStartTransaction"
        return await self._await_transaction(
            "_pending_start", _Pending(command.command_id, rsid), payload, action,
            {"action": action, "remote_start_id": rsid}, "waiting for the transaction to start",
            answered_done=lambda result: bool(getattr(result, "transaction_id", None)),
            done_detail=lambda: {"transaction_id": rec.transaction_on(target)})

    async def _stop_charging(self, command: Command, rec: ChargePointRecord) -> DeviceResult:
        target = self._connector(rec)
        tx = rec.transaction_on(target)
        if tx is None:
            # FAILED (retryable), not REJECTED: after a site restart a charger may still be charging in a
            # transaction the central system learns only from its next messages (see central_system).
            return DeviceResult(Outcome.FAILED, f"no transaction known for connector {target}", {"target": target})
        if rec.version == "2.0.1":
            payload: Any = call201.RequestStopTransaction(transaction_id=str(tx))
            action = "RequestStopTransaction"
        else:
            payload = call16.RemoteStopTransaction(transaction_id=int(tx))
            action = "RemoteStopTransaction"
        return await self._await_transaction(
            "_pending_stop", _Pending(command.command_id, tx), payload, action,
            {"action": action, "transaction_id": tx}, "waiting for the transaction to end")

    async def _await_transaction(self, slot: str, pending: _Pending, payload: Any, action: str,
                                 detail: dict[str, Any], waiting: str, *,
                                 answered_done: Callable[[Any], bool] = lambda result: False,
                                 done_detail: Callable[[], dict[str, Any]] = dict) -> DeviceResult:
        """Send a remote start/stop whose completion is a transaction event, tracked in ``slot``.

        Accepted and the transaction event already seen (or ``answered_done(result)``): COMPLETED;
        accepted otherwise: ACKNOWLEDGED, completed later by the event; refused or failed: the slot is
        freed and the charger's answer reported."""
        setattr(self, slot, pending)
        try:
            result, failure = await self._call(payload)
        finally:
            pending.in_flight = False
        refused = failure is not None or str(result.status) != "Accepted"
        done = not refused and (pending.done or answered_done(result))
        if (refused or done) and getattr(self, slot) is pending:
            setattr(self, slot, None)
        if failure is not None:
            return DeviceResult(failure.outcome, failure.reason, {**detail, **failure.detail})
        if refused:
            return self._refusal(action, result, detail)
        if done:
            return DeviceResult(Outcome.COMPLETED, None, {**detail, "status": "Accepted", **done_detail()})
        return DeviceResult(Outcome.ACKNOWLEDGED, waiting, {**detail, "status": "Accepted"})

    async def _change_availability(self, command: Command, rec: ChargePointRecord) -> DeviceResult:
        if command.value not in (0, 1):
            return DeviceResult(Outcome.REJECTED, f"CHANGE_AVAILABILITY value must be 1 (operative) or 0 "
                                                  f"(inoperative), got {command.value!r}")
        operative = command.value == 1
        kind = "Operative" if operative else "Inoperative"
        target = self._connector(rec)
        if rec.version == "2.0.1":
            payload: Any = call201.ChangeAvailability(operational_status=kind, evse={"id": target})
        else:
            payload = call16.ChangeAvailability(connector_id=target, type=kind)
        pending = self._pending_availability = _Pending(command.command_id, "AVAILABLE" if operative else "UNAVAILABLE")
        try:
            result, failure = await self._call(payload)
        finally:
            pending.in_flight = False
        detail: dict[str, Any] = {"action": "ChangeAvailability", "type": kind, "target": target}
        status = str(getattr(result, "status", ""))
        waiting = failure is None and status == "Scheduled" and not pending.done
        if not waiting and self._pending_availability is pending:
            self._pending_availability = None
        if failure is not None:
            return DeviceResult(failure.outcome, failure.reason, {**detail, **failure.detail})
        if status == "Accepted" or (status == "Scheduled" and pending.done):
            return DeviceResult(Outcome.COMPLETED, None, {**detail, "status": status})
        if status == "Scheduled":
            return DeviceResult(Outcome.ACKNOWLEDGED, "scheduled: applies when the running transaction ends",
                                {**detail, "status": status})
        return self._refusal("ChangeAvailability", result, detail)
