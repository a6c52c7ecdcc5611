"""The simulated charge point's OCPP 2.0.1 side: the calls a CSMS sends to a 2.0.1 station.

SetChargingProfile, ClearChargingProfile, RequestStart/StopTransaction, ChangeAvailability,
GetVariables, Reset and TriggerMessage (TransactionEvent: Rejected when no transaction runs).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

from ocpp.routing import after, on
from ocpp.v201 import ChargePoint, call_result
from ocpp.v201.enums import Action
from websockets.asyncio.client import ClientConnection

from .connection import WIRE_LOG, SimConnection

if TYPE_CHECKING:  # pragma: no cover
    from .simulator import ChargePointSim

__all__ = ["Sim201Connection"]


class Sim201Connection(SimConnection, ChargePoint):
    """The simulator's OCPP 2.0.1 connection: a handler per call a 2.0.1 CSMS sends."""

    def __init__(self, cp_id: str, ws: ClientConnection, sim: "ChargePointSim") -> None:
        ChargePoint.__init__(self, cp_id, ws, response_timeout=sim.response_timeout, logger=WIRE_LOG)
        self._init_sim(sim)

    @staticmethod
    def _info(reason: str | None) -> dict[str, Any] | None:
        return {"reason_code": reason[:20]} if reason else None

    @on(Action.set_charging_profile)
    async def on_set_charging_profile(self, evse_id: int, charging_profile: Mapping[str, Any], **kw: Any) -> Any:
        await self.sim._receive("SetChargingProfile", evse_id=evse_id, charging_profile=charging_profile, **kw)
        p = charging_profile
        schedules = p.get("charging_schedule") or [{}]
        status, why = self.sim._set_profile(
            profile_id=int(p["id"]), purpose=str(p["charging_profile_purpose"]),
            stack_level=int(p.get("stack_level", 0)), schedule=schedules[0], transaction_id=p.get("transaction_id"))
        if status == "Accepted":
            self._then(self.sim._power_changed)
        return call_result.SetChargingProfile(status=status, status_info=self._info(why))

    @after(Action.set_charging_profile)
    def after_set_charging_profile(self, **_: Any) -> None:
        self._run_after()

    @on(Action.clear_charging_profile)
    async def on_clear_charging_profile(self, charging_profile_id: int | None = None,
                                        charging_profile_criteria: Mapping[str, Any] | None = None, **kw: Any) -> Any:
        await self.sim._receive("ClearChargingProfile", charging_profile_id=charging_profile_id,
                                charging_profile_criteria=charging_profile_criteria, **kw)
        crit = charging_profile_criteria or {}
        found = self.sim._clear_profiles(charging_profile_id, crit.get("charging_profile_purpose"),
                                         crit.get("stack_level"))
        if found:
            self._then(self.sim._power_changed)
        return call_result.ClearChargingProfile(status="Accepted" if found else "Unknown")

    @after(Action.clear_charging_profile)
    def after_clear_charging_profile(self, **_: Any) -> None:
        self._run_after()

    @on(Action.request_start_transaction)
    async def on_request_start_transaction(self, id_token: Mapping[str, Any], remote_start_id: int,
                                           **kw: Any) -> Any:
        await self.sim._receive("RequestStartTransaction", id_token=id_token, remote_start_id=remote_start_id, **kw)
        ok = self.sim._can_start()
        if ok:
            self._then(lambda: self.sim.start_transaction(id_tag=str(id_token.get("id_token")), remote=True,
                                                          remote_start_id=remote_start_id))
        return call_result.RequestStartTransaction(status="Accepted" if ok else "Rejected",
                                                 status_info=None if ok else self._info("NotAvailable"))

    @after(Action.request_start_transaction)
    def after_request_start_transaction(self, **_: Any) -> None:
        self._run_after()

    @on(Action.request_stop_transaction)
    async def on_request_stop_transaction(self, transaction_id: str, **kw: Any) -> Any:
        await self.sim._receive("RequestStopTransaction", transaction_id=transaction_id, **kw)
        ok = self.sim.transaction_id is not None and str(self.sim.transaction_id) == str(transaction_id)
        if ok:
            self._then(lambda: self.sim.stop_transaction(reason="Remote"))
        return call_result.RequestStopTransaction(status="Accepted" if ok else "Rejected",
                                                status_info=None if ok else self._info("UnknownTransaction"))

    @after(Action.request_stop_transaction)
    def after_request_stop_transaction(self, **_: Any) -> None:
        self._run_after()

    @on(Action.change_availability)
    async def on_change_availability(self, operational_status: str, evse: Mapping[str, Any] | None = None,
                                     **kw: Any) -> Any:
        await self.sim._receive("ChangeAvailability", operational_status=operational_status, evse=evse, **kw)
        status = self.sim._change_availability(operational_status == "Operative")
        self._then(self.sim._refresh)
        return call_result.ChangeAvailability(status=status)

    @after(Action.change_availability)
    def after_change_availability(self, **_: Any) -> None:
        self._run_after()

    @on(Action.get_variables)
    async def on_get_variables(self, get_variable_data: list[Mapping[str, Any]], **kw: Any) -> Any:
        await self.sim._receive("GetVariables", get_variable_data=get_variable_data, **kw)
        variables = self.sim._variables_201()
        results = []
        for item in get_variable_data:
            comp = (item.get("component") or {}).get("name")
            var = (item.get("variable") or {}).get("name")
            value = variables.get((comp, var))
            if value is not None:
                status = "Accepted"
            elif comp not in {c for c, _ in variables}:
                status = "UnknownComponent"
            else:
                status = "UnknownVariable"
            r: dict[str, Any] = {"attribute_status": status, "component": {"name": comp}, "variable": {"name": var}}
            if value is not None:
                r["attribute_value"] = value
            results.append(r)
        return call_result.GetVariables(get_variable_result=results)

    @on(Action.reset)
    async def on_reset(self, type: str, **kw: Any) -> Any:
        await self.sim._receive("Reset", type=type, **kw)
        self._then(self.sim.reboot)
        return call_result.Reset(status="Accepted")

    @after(Action.reset)
    def after_reset(self, **_: Any) -> None:
        self._run_after()

    @on(Action.trigger_message)
    async def on_trigger_message(self, requested_message: str, **kw: Any) -> Any:
        await self.sim._receive("TriggerMessage", requested_message=requested_message, **kw)
        if requested_message == "TransactionEvent" and self.sim.transaction_id is None:
            return call_result.TriggerMessage(status="Rejected")  # no transaction to report
        fn = self.sim._trigger(requested_message)
        self._then(fn)
        return call_result.TriggerMessage(status="Accepted" if fn is not None else "NotImplemented")

    @after(Action.trigger_message)
    def after_trigger_message(self, **_: Any) -> None:
        self._run_after()
