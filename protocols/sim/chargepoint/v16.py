"""The simulated charge point's OCPP 1.6 side: the calls a central system sends to a 1.6 charger.

SetChargingProfile, ClearChargingProfile, RemoteStart/StopTransaction, ChangeAvailability,
GetConfiguration, Reset and TriggerMessage. 1.6 specifics: the transaction id is taken from the
StartTransaction answer in the receive loop (:meth:`Sim16Connection.route_message`), so a TxProfile
right behind that answer finds it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

from ocpp.routing import after, on
from ocpp.v16 import ChargePoint, call_result
from ocpp.v16.enums import Action
from websockets.asyncio.client import ClientConnection

from .connection import WIRE_LOG, SimConnection

if TYPE_CHECKING:  # pragma: no cover
    from .simulator import ChargePointSim

__all__ = ["Sim16Connection"]


class Sim16Connection(SimConnection, ChargePoint):
    """The simulator's OCPP 1.6 connection: a handler per call a 1.6 central system sends."""

    def __init__(self, cp_id: str, ws: ClientConnection, sim: "ChargePointSim") -> None:
        ChargePoint.__init__(self, cp_id, ws, response_timeout=sim.response_timeout, logger=WIRE_LOG)
        self._init_sim(sim)

    async def route_message(self, raw_msg: Any) -> None:
        # Like a real charger, take the transaction id from the StartTransaction answer as it is received
        # (in the receive loop), before handling the next message: a TxProfile the central system sends
        # right after that answer must find the transaction known, without waiting in its @on handler.
        uid = self.sim._start_uid
        if uid is not None and isinstance(raw_msg, str) and uid in raw_msg:
            self.sim._start_answer(raw_msg, uid)
        await super().route_message(raw_msg)

    @on(Action.set_charging_profile)
    async def on_set_charging_profile(self, connector_id: int, cs_charging_profiles: Mapping[str, Any]) -> Any:
        await self.sim._receive("SetChargingProfile", connector_id=connector_id,
                                cs_charging_profiles=cs_charging_profiles)
        p = cs_charging_profiles
        status, _why = self.sim._set_profile(
            profile_id=int(p["charging_profile_id"]), purpose=str(p["charging_profile_purpose"]),
            stack_level=int(p.get("stack_level", 0)), schedule=p["charging_schedule"],
            transaction_id=p.get("transaction_id"))
        if status == "Accepted":
            self._then(self.sim._power_changed)
        return call_result.SetChargingProfile(status=status)

    @after(Action.set_charging_profile)
    def after_set_charging_profile(self, **_: Any) -> None:
        self._run_after()

    @on(Action.clear_charging_profile)
    async def on_clear_charging_profile(self, **kw: Any) -> Any:
        await self.sim._receive("ClearChargingProfile", **kw)
        found = self.sim._clear_profiles(kw.get("id"), kw.get("charging_profile_purpose"), kw.get("stack_level"))
        if found:
            self._then(self.sim._power_changed)
        return call_result.ClearChargingProfile(status="Accepted" if found else "Unknown")

    @after(Action.clear_charging_profile)
    def after_clear_charging_profile(self, **_: Any) -> None:
        self._run_after()

    @on(Action.remote_start_transaction)
    async def on_remote_start_transaction(self, id_tag: str, **kw: Any) -> Any:
        await self.sim._receive("RemoteStartTransaction", id_tag=id_tag, **kw)
        ok = self.sim._can_start()
        if ok:
            self._then(lambda: self.sim.start_transaction(id_tag=id_tag, remote=True))
        return call_result.RemoteStartTransaction(status="Accepted" if ok else "Rejected")

    @after(Action.remote_start_transaction)
    def after_remote_start_transaction(self, **_: Any) -> None:
        self._run_after()

    @on(Action.remote_stop_transaction)
    async def on_remote_stop_transaction(self, transaction_id: int) -> Any:
        await self.sim._receive("RemoteStopTransaction", transaction_id=transaction_id)
        ok = self.sim.transaction_id is not None and str(self.sim.transaction_id) == str(transaction_id)
        if ok:
            self._then(lambda: self.sim.stop_transaction(reason="Remote"))
        return call_result.RemoteStopTransaction(status="Accepted" if ok else "Rejected")

    @after(Action.remote_stop_transaction)
    def after_remote_stop_transaction(self, **_: Any) -> None:
        self._run_after()

    @on(Action.change_availability)
    async def on_change_availability(self, connector_id: int, type: str) -> Any:
        await self.sim._receive("ChangeAvailability", connector_id=connector_id, type=type)
        status = self.sim._change_availability(type == "Operative")
        self._then(self.sim._refresh)
        return call_result.ChangeAvailability(status=status)

    @after(Action.change_availability)
    def after_change_availability(self, **_: Any) -> None:
        self._run_after()

    @on(Action.get_configuration)
    async def on_get_configuration(self, key: list[str] | None = None) -> Any:
        await self.sim._receive("GetConfiguration", key=key)
        config = self.sim._configuration_16()
        wanted = list(config) if not key else key
        known = [{"key": k, "readonly": True, "value": config[k]} for k in wanted if k in config]
        unknown = [k for k in wanted if k not in config]
        return call_result.GetConfiguration(configuration_key=known or None, unknown_key=unknown or None)

    @on(Action.reset)
    async def on_reset(self, type: str) -> Any:
        await self.sim._receive("Reset", type=type)
        self._then(self.sim.reboot)
        return call_result.Reset(status="Accepted")

    @after(Action.reset)
    def after_reset(self, **_: Any) -> None:
        self._run_after()

    @on(Action.trigger_message)
    async def on_trigger_message(self, requested_message: str, connector_id: int | None = None) -> Any:
        await self.sim._receive("TriggerMessage", requested_message=requested_message, connector_id=connector_id)
        fn = self.sim._trigger(requested_message)
        self._then(fn)
        return call_result.TriggerMessage(status="Accepted" if fn is not None else "NotImplemented")

    @after(Action.trigger_message)
    def after_trigger_message(self, **_: Any) -> None:
        self._run_after()
