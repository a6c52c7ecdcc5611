"""A simulated OCPP 1.6 / 2.0.1 charge point, built on the client side of the ``ocpp`` library.

One :class:`ChargePointSim` is one charge point with one connector (1.6 connector ``connector_id``,
2.0.1 EVSE ``connector_id`` with connector 1). It connects to ``<url>/<cp_id>`` with the subprotocol
of its version (and HTTP Basic auth when given a password), boots, reports its status, and then:

* ``plug_in()``, ``start_transaction()``, ``stop_transaction()``, ``unplug()`` drive an EV session
  (1.6: Authorize/StartTransaction/StopTransaction and StatusNotification; 2.0.1: TransactionEvent
  Started/Updated/Ended and StatusNotification);
* its power follows the charging profiles it accepted: ``power_kw = min(max_kw, limit)`` while a
  transaction runs, where the limit is the TxProfile of the running transaction (else the
  TxDefaultProfile), capped by a ChargePointMax/ChargingStationMax profile; a limit of 0 suspends
  charging (SuspendedEVSE);
* it sends MeterValues (Power.Active.Import in W, Energy.Active.Import.Register in Wh) every
  ``meter_interval`` seconds of real time (0 = never periodically) and whenever its power changes;
* fault injection: ``fault()``/``clear_fault()``, ``reboot()`` (close, reconnect, BootNotification;
  profiles and the transaction are lost unless ``keep_profiles_on_reboot``), ``drop()`` (abort the
  TCP connection; ``reconnect()`` comes back without a BootNotification), ``set_delay(seconds)``
  (answer every call late), ``set_reject_profiles(True)``, ``set_call_error(True)`` (answer every
  call with a CallError InternalError).

It answers TriggerMessage for BootNotification, StatusNotification, MeterValues (1.6: with the
running ``transactionId``), Heartbeat and (2.0.1) TransactionEvent (an Updated event naming its EVSE;
Rejected when no transaction runs), sending the message after the answer. 1.6: the transaction id is
taken from the StartTransaction answer in the receive loop, so a TxProfile right behind that answer
finds it (no handler waits).

Every call it receives is recorded in :attr:`ChargePointSim.calls` (action and snake_case payload).

``run_fleet``/``start_fleet`` run many simulators in one process; ``main(argv)`` is the
``coordinator sim ocpp`` command (``--count 200 --url ws://127.0.0.1:9000 --version 1.6``), running
until SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import itertools
import logging
import signal
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable, Literal, Mapping, Sequence
from urllib.parse import quote

from ocpp.exceptions import InternalError
from ocpp.messages import MessageType, unpack
from ocpp.routing import after, on
from ocpp.v16 import ChargePoint as _ChargePoint16
from ocpp.v16 import call as call16
from ocpp.v16 import call_result as result16
from ocpp.v16.enums import Action as Action16
from ocpp.v201 import ChargePoint as _ChargePoint201
from ocpp.v201 import call as call201
from ocpp.v201 import call_result as result201
from ocpp.v201.enums import Action as Action201
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

log = logging.getLogger(__name__)
WIRE_LOG = logging.getLogger("protocols.sim.wire")

__all__ = ["ChargePointSim", "ReceivedCall", "SimNotConnected", "Fleet", "fleet_ids", "start_fleet", "run_fleet",
           "add_sim_ocpp_arguments", "run_sim_ocpp", "main"]

_SUBPROTOCOL = {"1.6": "ocpp1.6", "2.0.1": "ocpp2.0.1"}
_UNIT_16 = {"W": "Power", "A": "Current", "A,W": "Current,Power", "W,A": "Current,Power"}
_RATE_UNIT_KEY_16 = "ChargingScheduleAllowedChargingRateUnit"


class SimNotConnected(Exception):
    """The simulator has no open connection."""


@dataclass(frozen=True)
class ReceivedCall:
    """One call the simulator received: the OCPP action and its payload (snake_case keys)."""
    action: str
    payload: Mapping[str, Any]
    at: float = 0.0  # loop time


@dataclass
class _Profile:
    profile_id: int
    purpose: str
    stack_level: int
    limit_w: float
    unit: str
    transaction_id: Any = None


@dataclass
class _Conn:
    ws: ClientConnection
    cp: Any
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    closed: bool = False


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _first_period_limit(schedule: Mapping[str, Any], voltage: float, phases: int) -> tuple[float, str] | None:
    periods = schedule.get("charging_schedule_period") or []
    if not periods:
        return None
    first = min(periods, key=lambda p: int(p.get("start_period", 0)))
    unit = str(schedule.get("charging_rate_unit", "W"))
    limit = float(first.get("limit"))
    if unit == "A":
        limit = limit * voltage * int(first.get("number_phases") or phases)
    return limit, unit


# ---- the ocpp ChargePoint classes (one per connection); handlers delegate to the simulator ------------

class _SimCP:
    sim: "ChargePointSim"

    def _init_sim(self, sim: "ChargePointSim") -> None:
        self.sim = sim
        self._after_fn: Callable[[], Any] | None = None
        if not sim.validate:
            for handlers in self.route_map.values():  # type: ignore[attr-defined]
                handlers["_skip_schema_validation"] = True

    def _then(self, fn: Callable[[], Any] | None) -> None:
        """Run ``fn`` (a coroutine function) as a simulator task after the answer went out."""
        self._after_fn = fn

    def _run_after(self) -> None:
        fn, self._after_fn = self._after_fn, None
        if fn is not None:
            self.sim._spawn(fn(), "after")


class _SimCP16(_SimCP, _ChargePoint16):
    def __init__(self, cp_id: str, ws: ClientConnection, sim: "ChargePointSim") -> None:
        _ChargePoint16.__init__(self, cp_id, ws, response_timeout=sim.response_timeout, logger=WIRE_LOG)
        self._init_sim(sim)

    async def route_message(self, raw_msg: Any) -> None:
        # Like a real charger, take the transaction id from the StartTransaction answer as it is received
        # (in the receive loop), before handling the next message: a TxProfile the central system sends
        # right after that answer must find the transaction known, without waiting in its @on handler.
        uid = self.sim._start_uid
        if uid is not None and isinstance(raw_msg, str) and uid in raw_msg:
            self.sim._start_answer(raw_msg, uid)
        await super().route_message(raw_msg)

    @on(Action16.set_charging_profile)
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
        return result16.SetChargingProfile(status=status)

    @after(Action16.set_charging_profile)
    def after_set_charging_profile(self, **_: Any) -> None:
        self._run_after()

    @on(Action16.clear_charging_profile)
    async def on_clear_charging_profile(self, **kw: Any) -> Any:
        await self.sim._receive("ClearChargingProfile", **kw)
        found = self.sim._clear_profiles(kw.get("id"), kw.get("charging_profile_purpose"), kw.get("stack_level"))
        if found:
            self._then(self.sim._power_changed)
        return result16.ClearChargingProfile(status="Accepted" if found else "Unknown")

    @after(Action16.clear_charging_profile)
    def after_clear_charging_profile(self, **_: Any) -> None:
        self._run_after()

    @on(Action16.remote_start_transaction)
    async def on_remote_start_transaction(self, id_tag: str, **kw: Any) -> Any:
        await self.sim._receive("RemoteStartTransaction", id_tag=id_tag, **kw)
        ok = self.sim._can_start()
        if ok:
            self._then(lambda: self.sim.start_transaction(id_tag=id_tag, remote=True))
        return result16.RemoteStartTransaction(status="Accepted" if ok else "Rejected")

    @after(Action16.remote_start_transaction)
    def after_remote_start_transaction(self, **_: Any) -> None:
        self._run_after()

    @on(Action16.remote_stop_transaction)
    async def on_remote_stop_transaction(self, transaction_id: int) -> Any:
        await self.sim._receive("RemoteStopTransaction", transaction_id=transaction_id)
        ok = self.sim.transaction_id is not None and str(self.sim.transaction_id) == str(transaction_id)
        if ok:
            self._then(lambda: self.sim.stop_transaction(reason="Remote"))
        return result16.RemoteStopTransaction(status="Accepted" if ok else "Rejected")

    @after(Action16.remote_stop_transaction)
    def after_remote_stop_transaction(self, **_: Any) -> None:
        self._run_after()

    @on(Action16.change_availability)
    async def on_change_availability(self, connector_id: int, type: str) -> Any:
        await self.sim._receive("ChangeAvailability", connector_id=connector_id, type=type)
        status = self.sim._change_availability(type == "Operative")
        self._then(self.sim._refresh)
        return result16.ChangeAvailability(status=status)

    @after(Action16.change_availability)
    def after_change_availability(self, **_: Any) -> None:
        self._run_after()

    @on(Action16.get_configuration)
    async def on_get_configuration(self, key: list[str] | None = None) -> Any:
        await self.sim._receive("GetConfiguration", key=key)
        config = self.sim._configuration_16()
        wanted = list(config) if not key else key
        known = [{"key": k, "readonly": True, "value": config[k]} for k in wanted if k in config]
        unknown = [k for k in wanted if k not in config]
        return result16.GetConfiguration(configuration_key=known or None, unknown_key=unknown or None)

    @on(Action16.reset)
    async def on_reset(self, type: str) -> Any:
        await self.sim._receive("Reset", type=type)
        self._then(self.sim.reboot)
        return result16.Reset(status="Accepted")

    @after(Action16.reset)
    def after_reset(self, **_: Any) -> None:
        self._run_after()

    @on(Action16.trigger_message)
    async def on_trigger_message(self, requested_message: str, connector_id: int | None = None) -> Any:
        await self.sim._receive("TriggerMessage", requested_message=requested_message, connector_id=connector_id)
        fn = self.sim._trigger(requested_message)
        self._then(fn)
        return result16.TriggerMessage(status="Accepted" if fn is not None else "NotImplemented")

    @after(Action16.trigger_message)
    def after_trigger_message(self, **_: Any) -> None:
        self._run_after()


class _SimCP201(_SimCP, _ChargePoint201):
    def __init__(self, cp_id: str, ws: ClientConnection, sim: "ChargePointSim") -> None:
        _ChargePoint201.__init__(self, cp_id, ws, response_timeout=sim.response_timeout, logger=WIRE_LOG)
        self._init_sim(sim)

    @staticmethod
    def _info(reason: str | None) -> dict[str, Any] | None:
        return {"reason_code": reason[:20]} if reason else None

    @on(Action201.set_charging_profile)
    async def on_set_charging_profile(self, evse_id: int, charging_profile: Mapping[str, Any], **kw: Any) -> Any:
        await self.sim._receive("SetChargingProfile", evse_id=evse_id, charging_profile=charging_profile, **kw)
        p = charging_profile
        schedules = p.get("charging_schedule") or [{}]
        status, why = self.sim._set_profile(
            profile_id=int(p["id"]), purpose=str(p["charging_profile_purpose"]),
            stack_level=int(p.get("stack_level", 0)), schedule=schedules[0], transaction_id=p.get("transaction_id"))
        if status == "Accepted":
            self._then(self.sim._power_changed)
        return result201.SetChargingProfile(status=status, status_info=self._info(why))

    @after(Action201.set_charging_profile)
    def after_set_charging_profile(self, **_: Any) -> None:
        self._run_after()

    @on(Action201.clear_charging_profile)
    async def on_clear_charging_profile(self, charging_profile_id: int | None = None,
                                        charging_profile_criteria: Mapping[str, Any] | None = None, **kw: Any) -> Any:
        await self.sim._receive("ClearChargingProfile", charging_profile_id=charging_profile_id,
                                charging_profile_criteria=charging_profile_criteria, **kw)
        crit = charging_profile_criteria or {}
        found = self.sim._clear_profiles(charging_profile_id, crit.get("charging_profile_purpose"),
                                         crit.get("stack_level"))
        if found:
            self._then(self.sim._power_changed)
        return result201.ClearChargingProfile(status="Accepted" if found else "Unknown")

    @after(Action201.clear_charging_profile)
    def after_clear_charging_profile(self, **_: Any) -> None:
        self._run_after()

    @on(Action201.request_start_transaction)
    async def on_request_start_transaction(self, id_token: Mapping[str, Any], remote_start_id: int,
                                           **kw: Any) -> Any:
        await self.sim._receive("RequestStartTransaction", id_token=id_token, remote_start_id=remote_start_id, **kw)
        ok = self.sim._can_start()
        if ok:
            self._then(lambda: self.sim.start_transaction(id_tag=str(id_token.get("id_token")), remote=True,
                                                          remote_start_id=remote_start_id))
        return result201.RequestStartTransaction(status="Accepted" if ok else "Rejected",
                                                 status_info=None if ok else self._info("NotAvailable"))

    @after(Action201.request_start_transaction)
    def after_request_start_transaction(self, **_: Any) -> None:
        self._run_after()

    @on(Action201.request_stop_transaction)
    async def on_request_stop_transaction(self, transaction_id: str, **kw: Any) -> Any:
        await self.sim._receive("RequestStopTransaction", transaction_id=transaction_id, **kw)
        ok = self.sim.transaction_id is not None and str(self.sim.transaction_id) == str(transaction_id)
        if ok:
            self._then(lambda: self.sim.stop_transaction(reason="Remote"))
        return result201.RequestStopTransaction(status="Accepted" if ok else "Rejected",
                                                status_info=None if ok else self._info("UnknownTransaction"))

    @after(Action201.request_stop_transaction)
    def after_request_stop_transaction(self, **_: Any) -> None:
        self._run_after()

    @on(Action201.change_availability)
    async def on_change_availability(self, operational_status: str, evse: Mapping[str, Any] | None = None,
                                     **kw: Any) -> Any:
        await self.sim._receive("ChangeAvailability", operational_status=operational_status, evse=evse, **kw)
        status = self.sim._change_availability(operational_status == "Operative")
        self._then(self.sim._refresh)
        return result201.ChangeAvailability(status=status)

    @after(Action201.change_availability)
    def after_change_availability(self, **_: Any) -> None:
        self._run_after()

    @on(Action201.get_variables)
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
        return result201.GetVariables(get_variable_result=results)

    @on(Action201.reset)
    async def on_reset(self, type: str, **kw: Any) -> Any:
        await self.sim._receive("Reset", type=type, **kw)
        self._then(self.sim.reboot)
        return result201.Reset(status="Accepted")

    @after(Action201.reset)
    def after_reset(self, **_: Any) -> None:
        self._run_after()

    @on(Action201.trigger_message)
    async def on_trigger_message(self, requested_message: str, **kw: Any) -> Any:
        await self.sim._receive("TriggerMessage", requested_message=requested_message, **kw)
        if requested_message == "TransactionEvent" and self.sim.transaction_id is None:
            return result201.TriggerMessage(status="Rejected")  # no transaction to report
        fn = self.sim._trigger(requested_message)
        self._then(fn)
        return result201.TriggerMessage(status="Accepted" if fn is not None else "NotImplemented")

    @after(Action201.trigger_message)
    def after_trigger_message(self, **_: Any) -> None:
        self._run_after()


# ---- the simulator ---------------------------------------------------------------------------------

class ChargePointSim:
    """One simulated charge point (see the module docstring).

    ``accepted_unit``: "W", "A" or "A,W" (what it reports as its allowed charging rate unit and
    accepts in profiles). ``meter_interval``: seconds between periodic MeterValues (0 = only on
    change). ``auto_reconnect``: reconnect (with backoff, without a BootNotification) when the
    connection is lost other than by :meth:`drop`/:meth:`stop`. ``validate``: JSON-schema validation
    of the OCPP messages (turn off for large fleets). ``subprotocols`` overrides what it offers (tests).
    """

    def __init__(self, cp_id: str, url: str, version: Literal["1.6", "2.0.1"] = "1.6", *, max_kw: float = 22.0,
                 password: str | None = None, accepted_unit: str = "W", voltage: float = 230.0, phases: int = 3,
                 connector_id: int = 1, meter_interval: float = 10.0, response_timeout: float = 10.0,
                 id_tag: str = "SIMTAG", vendor: str = "QubitSim", model: str = "SimCP-22",
                 reject_profiles: bool = False, call_error: bool = False, delay: float = 0.0,
                 keep_profiles_on_reboot: bool = False, auto_reconnect: bool = False, validate: bool = True,
                 open_timeout: float = 10.0, subprotocols: Sequence[str] | None = None) -> None:
        if version not in _SUBPROTOCOL:
            raise ValueError(f"version: must be '1.6' or '2.0.1', got {version!r}")
        if accepted_unit not in _UNIT_16:
            raise ValueError(f"accepted_unit: must be 'W', 'A' or 'A,W', got {accepted_unit!r}")
        self.cp_id = cp_id
        self.url = url
        self.version = version
        self.max_kw = float(max_kw)
        self.password = password
        self.accepted_unit = accepted_unit
        self.voltage = float(voltage)
        self.phases = int(phases)
        self.connector_id = int(connector_id)
        self.meter_interval = float(meter_interval)
        self.response_timeout = float(response_timeout)
        self.id_tag = id_tag
        self.vendor = vendor
        self.model = model
        self.reject_profiles = reject_profiles
        self.call_error = call_error
        self.delay = float(delay)
        self.keep_profiles_on_reboot = keep_profiles_on_reboot
        self.auto_reconnect = auto_reconnect
        self.validate = validate
        self.open_timeout = open_timeout
        self.subprotocols = list(subprotocols) if subprotocols is not None else [_SUBPROTOCOL[version]]

        self.calls: list[ReceivedCall] = []
        self.boot_status: str | None = None
        self.heartbeat_interval: int | None = None
        self.transaction_id: int | str | None = None
        self.plugged = False
        self.finished = False          # a transaction ended while the EV is still plugged in
        self.faulted = False
        self.operative = True
        self.energy_wh = 0.0
        self.meter_values_sent = 0
        self.boots = 0
        self.connects = 0
        self.profiles: dict[str, _Profile] = {}
        self._pending_inoperative = False
        self._fault_code = "OtherError"
        self._last_status: Any = None
        self._seq = itertools.count(0)
        self._energy_at: float | None = None
        self._power_w = 0.0
        self._conn: _Conn | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._start_uid: str | None = None  # unique id of the 1.6 StartTransaction call awaiting its answer
        self._stopping = False
        self._dropping = False
        self.registered = asyncio.Event()

    def __repr__(self) -> str:
        return f"<ChargePointSim {self.cp_id} OCPP {self.version} {self.status} {self.power_kw:.1f} kW>"

    # ---- state ---------------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.closed

    @property
    def limit_w(self) -> float | None:
        """The limit the accepted profiles impose now (None: no profile)."""
        limits = []
        cap = self.profiles.get("ChargePointMaxProfile") or self.profiles.get("ChargingStationMaxProfile")
        if cap is not None:
            limits.append(cap.limit_w)
        tx = self.profiles.get("TxProfile")
        if tx is not None and self.transaction_id is not None and str(tx.transaction_id) == str(self.transaction_id):
            limits.append(tx.limit_w)
        elif "TxDefaultProfile" in self.profiles:
            limits.append(self.profiles["TxDefaultProfile"].limit_w)
        return min(limits) if limits else None

    @property
    def power_kw(self) -> float:
        """What the EV draws now: min(max_kw, profile limit) while a transaction runs, else 0."""
        if self.transaction_id is None or self.faulted or not self.operative:
            return 0.0
        limit = self.limit_w
        kw = self.max_kw if limit is None else min(self.max_kw, limit / 1000.0)
        return max(0.0, kw)

    @property
    def status(self) -> str:
        """The 1.6 status (2.0.1: the connector status)."""
        if self.version == "2.0.1":
            if self.faulted:
                return "Faulted"
            if not self.operative:
                return "Unavailable"
            return "Occupied" if self.plugged else "Available"
        if self.faulted:
            return "Faulted"
        if not self.operative:
            return "Unavailable"
        if self.transaction_id is not None:
            return "Charging" if self.power_kw > 0 else "SuspendedEVSE"
        if self.plugged:
            return "Finishing" if self.finished else "Preparing"
        return "Available"

    @property
    def charging_state(self) -> str:
        """The 2.0.1 chargingState."""
        if self.transaction_id is not None:
            return "Charging" if self.power_kw > 0 else "SuspendedEVSE"
        return "EVConnected" if self.plugged else "Idle"

    def calls_of(self, action: str) -> list[ReceivedCall]:
        return [c for c in self.calls if c.action == action]

    # ---- fault injection -------------------------------------------------------------------------
    def set_delay(self, seconds: float) -> None:
        """Answer every call after ``seconds``."""
        self.delay = float(seconds)

    def set_reject_profiles(self, reject: bool = True) -> None:
        self.reject_profiles = reject

    def set_call_error(self, error: bool = True) -> None:
        """Answer every call with a CallError (InternalError)."""
        self.call_error = error

    # ---- tasks -----------------------------------------------------------------------------------
    def _spawn(self, coro: Awaitable[Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=f"sim-{self.cp_id}-{name}")  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _conn_spawn(self, conn: _Conn, coro: Awaitable[Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=f"sim-{self.cp_id}-{name}")  # type: ignore[arg-type]
        conn.tasks.add(task)
        task.add_done_callback(lambda t: (conn.tasks.discard(t), self._task_done(t)))
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            return
        if isinstance(exc, (ConnectionClosed, SimNotConnected, asyncio.TimeoutError)):
            log.debug("sim %s: %s ended: %r", self.cp_id, task.get_name(), exc)
        else:
            log.error("sim %s: task %s failed", self.cp_id, task.get_name(), exc_info=exc)

    # ---- connection ------------------------------------------------------------------------------
    async def start(self) -> "ChargePointSim":
        """Connect, send BootNotification (retried in the background while Pending), and once
        accepted report the connector status. Returns after the first BootNotification answer."""
        self._stopping = False
        await self._connect()
        await self._boot("PowerUp")
        return self

    async def _connect(self) -> None:
        headers = {}
        if self.password is not None:
            token = base64.b64encode(f"{self.cp_id}:{self.password}".encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        ws = await connect(f"{self.url.rstrip('/')}/{quote(self.cp_id, safe='')}", subprotocols=self.subprotocols,
                           additional_headers=headers, open_timeout=self.open_timeout, close_timeout=2,
                           compression=None, logger=logging.getLogger("protocols.sim.websockets"))
        cls = _SimCP16 if self.version == "1.6" else _SimCP201
        conn = _Conn(ws, cls(self.cp_id, ws, self))
        self._conn = conn
        self._dropping = False
        self.connects += 1
        self._conn_spawn(conn, self._serve(conn), "recv")

    async def _serve(self, conn: _Conn) -> None:
        try:
            await conn.cp.start()
        except ConnectionClosed:
            pass
        finally:
            conn.closed = True
            if self._conn is conn:
                self._conn = None
                self.registered.clear()
                if self.auto_reconnect and not self._stopping and not self._dropping:
                    self._spawn(self._reconnect_loop(), "reconnect")
            current = asyncio.current_task()
            for t in list(conn.tasks):
                if t is not current:
                    t.cancel()

    async def _reconnect_loop(self) -> None:
        delay = 0.5
        while not self._stopping:
            await asyncio.sleep(delay)
            try:
                await self.reconnect()
                return
            except (OSError, asyncio.TimeoutError, ConnectionClosed, Exception) as exc:  # noqa: B014
                log.info("sim %s: reconnect failed (%s); retrying in %.1f s", self.cp_id, exc, min(delay * 2, 10))
                delay = min(delay * 2, 10.0)

    async def _call(self, payload: Any, unique_id: str | None = None) -> Any:
        conn = self._conn
        if conn is None or conn.closed:
            raise SimNotConnected(f"sim {self.cp_id} is not connected")
        return await conn.cp.call(payload, suppress=False, unique_id=unique_id,
                                  skip_schema_validation=not self.validate)

    async def _boot(self, reason: str) -> None:
        res = await self._boot_once(reason)
        if res != "Accepted":
            conn = self._conn
            if conn is not None:
                self._conn_spawn(conn, self._boot_retry(reason), "boot-retry")
            return
        await self._registered_now()

    async def _boot_once(self, reason: str) -> str:
        if self.version == "1.6":
            payload: Any = call16.BootNotification(charge_point_model=self.model, charge_point_vendor=self.vendor,
                                                   charge_point_serial_number=self.cp_id[:25])
        else:
            payload = call201.BootNotification(
                charging_station={"vendor_name": self.vendor, "model": self.model, "serial_number": self.cp_id[:25]},
                reason=reason)
        res = await self._call(payload)
        self.boots += 1
        self.boot_status = str(res.status)
        self.heartbeat_interval = int(res.interval)
        return self.boot_status

    async def _boot_retry(self, reason: str) -> None:
        while self.boot_status != "Accepted":
            await asyncio.sleep(max(1, self.heartbeat_interval or 30))
            if self.boot_status == "Accepted":
                return
            if await self._boot_once(reason) == "Accepted":
                await self._registered_now()
                return

    async def _registered_now(self) -> None:
        self.registered.set()
        self._last_status = None
        await self._send_status()
        conn = self._conn
        if conn is None:
            return
        if not any(t.get_name().endswith("-meter") for t in conn.tasks) and self.meter_interval > 0:
            self._conn_spawn(conn, self._meter_loop(), "meter")
        if not any(t.get_name().endswith("-heartbeat") for t in conn.tasks):
            self._conn_spawn(conn, self._heartbeat_loop(), "heartbeat")

    async def _meter_loop(self) -> None:
        while True:
            await asyncio.sleep(self.meter_interval)
            await self.send_meter_values()

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(max(1, self.heartbeat_interval or 300))
            await self._call(call16.Heartbeat() if self.version == "1.6" else call201.Heartbeat())

    async def _close(self, abort: bool = False) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        self._integrate()
        conn.closed = True
        self.registered.clear()
        if abort:
            transport = conn.ws.transport
            if transport is not None:
                transport.abort()
        else:
            try:
                await conn.ws.close()
            except Exception:  # pragma: no cover - best effort
                pass
        tasks = [t for t in conn.tasks if t is not asyncio.current_task()]
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def stop(self) -> None:
        """Close the connection and cancel and await every task of the simulator."""
        self._stopping = True
        await self._close()
        current = asyncio.current_task()
        while True:
            tasks = [t for t in self._tasks if t is not current and not t.done()]
            if not tasks:
                break
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def drop(self) -> None:
        """Abort the TCP connection (no closing handshake). ``reconnect()`` brings it back."""
        self._dropping = True
        await self._close(abort=True)

    async def reconnect(self, boot: bool = False) -> None:
        """Connect again; without ``boot``, report the status as a charger does after a network loss."""
        await self._connect()
        if boot:
            await self._boot("PowerUp")
        else:
            self.registered.set()
            await self._registered_now()

    async def reboot(self) -> None:
        """Close, lose the transaction (and the profiles, unless ``keep_profiles_on_reboot``),
        reconnect and boot again."""
        await self._close()
        self.transaction_id = None
        self.finished = False
        self.faulted = False
        self._pending_inoperative = False
        if not self.keep_profiles_on_reboot:
            self.profiles.clear()
        self._power_w = 0.0
        await self._connect()
        await self._boot("RemoteReset")

    # ---- EV session ------------------------------------------------------------------------------
    async def plug_in(self) -> None:
        self.plugged = True
        self.finished = False
        await self._send_status()

    async def start_transaction(self, id_tag: str | None = None, *, remote: bool = False,
                                remote_start_id: int | None = None) -> int | str:
        """Start charging (plugs the EV in first if needed); returns the transaction id."""
        if self.transaction_id is not None:
            return self.transaction_id
        tag = id_tag or self.id_tag
        if not self.plugged:
            await self.plug_in()
        self._integrate()
        if self.version == "1.6":
            if not remote:
                await self._call(call16.Authorize(id_tag=tag))
            uid = self._start_uid = str(uuid.uuid4())
            try:
                res = await self._call(call16.StartTransaction(
                    connector_id=self.connector_id, id_tag=tag, meter_start=int(self.energy_wh), timestamp=_now_iso()),
                    unique_id=uid)
            finally:
                self._start_uid = None
            if self.transaction_id is None:  # (normally already taken from the answer by the receive loop)
                self._integrate()
                self.transaction_id = int(res.transaction_id)
            self._last_status = None
            await self._after_power_change()
        else:
            self.transaction_id = uuid.uuid4().hex[:16]
            self._seq = itertools.count(0)
            self.finished = False
            info: dict[str, Any] = {"transaction_id": self.transaction_id, "charging_state": self.charging_state}
            if remote_start_id is not None:
                info["remote_start_id"] = remote_start_id
            await self._call(call201.TransactionEvent(
                event_type="Started", timestamp=_now_iso(), trigger_reason="RemoteStart" if remote else "Authorized",
                seq_no=next(self._seq), transaction_info=info,
                evse={"id": self.connector_id, "connector_id": 1},
                id_token={"id_token": tag, "type": "Central" if remote else "ISO14443"},
                meter_value=[self._meter_value()]))
            self._mark_charging_state_sent()
            self._power_w = self.power_kw * 1000
        return self.transaction_id

    async def stop_transaction(self, reason: str = "Local") -> None:
        tx = self.transaction_id
        if tx is None:
            return
        self._integrate()
        self.transaction_id = None
        self.finished = self.plugged
        self.profiles.pop("TxProfile", None)
        if self._pending_inoperative:
            self._pending_inoperative = False
            self.operative = False
        if self.version == "1.6":
            await self._call(call16.StopTransaction(meter_stop=int(self.energy_wh), timestamp=_now_iso(),
                                                    transaction_id=int(tx), reason=reason))
            await self._send_status()
        else:
            trigger = {"Remote": "RemoteStop", "EVDisconnected": "EVCommunicationLost"}.get(reason, "StopAuthorized")
            await self._call(call201.TransactionEvent(
                event_type="Ended", timestamp=_now_iso(), trigger_reason=trigger, seq_no=next(self._seq),
                transaction_info={"transaction_id": str(tx), "charging_state": self.charging_state,
                                  "stopped_reason": reason},
                evse={"id": self.connector_id, "connector_id": 1}, meter_value=[self._meter_value()]))
            self._mark_charging_state_sent()
            await self._send_status()
        self._power_w = 0.0

    async def unplug(self) -> None:
        if self.transaction_id is not None:
            await self.stop_transaction(reason="EVDisconnected")
        self.plugged = False
        self.finished = False
        await self._send_status()

    async def fault(self, error_code: str = "OtherError") -> None:
        """Report Faulted (the EV stops drawing power)."""
        self._integrate()
        self.faulted = True
        self._fault_code = error_code
        await self._after_power_change()

    async def clear_fault(self) -> None:
        self._integrate()
        self.faulted = False
        await self._after_power_change()

    # ---- reporting -------------------------------------------------------------------------------
    def _integrate(self) -> None:
        now = asyncio.get_running_loop().time()
        if self._energy_at is not None:
            self.energy_wh += self._power_w * (now - self._energy_at) / 3600.0
        self._energy_at = now
        self._power_w = self.power_kw * 1000.0

    def _meter_value(self, context: str = "Sample.Periodic") -> dict[str, Any]:
        self._integrate()
        power, energy = round(self._power_w, 1), round(self.energy_wh, 1)
        if self.version == "1.6":
            samples = [
                {"value": f"{power:.1f}", "measurand": "Power.Active.Import", "unit": "W", "context": context},
                {"value": f"{energy:.1f}", "measurand": "Energy.Active.Import.Register", "unit": "Wh",
                 "context": context},
            ]
        else:
            samples = [
                {"value": power, "measurand": "Power.Active.Import", "unit_of_measure": {"unit": "W"},
                 "context": context},
                {"value": energy, "measurand": "Energy.Active.Import.Register", "unit_of_measure": {"unit": "Wh"},
                 "context": context},
            ]
        return {"timestamp": _now_iso(), "sampled_value": samples}

    async def send_meter_values(self, context: str = "Sample.Periodic") -> None:
        mv = self._meter_value(context)
        if self.version == "1.6":
            await self._call(call16.MeterValues(connector_id=self.connector_id, meter_value=[mv],
                                                transaction_id=self.transaction_id))
        elif self.transaction_id is not None:
            await self._call(call201.TransactionEvent(
                event_type="Updated", timestamp=_now_iso(), trigger_reason="MeterValuePeriodic", seq_no=next(self._seq),
                transaction_info={"transaction_id": str(self.transaction_id), "charging_state": self.charging_state},
                meter_value=[mv]))
        else:
            await self._call(call201.MeterValues(evse_id=self.connector_id, meter_value=[mv]))
        self.meter_values_sent += 1

    def _mark_charging_state_sent(self) -> None:
        """2.0.1: the chargingState went out in a TransactionEvent (the connector status did not)."""
        last = self._last_status if isinstance(self._last_status, tuple) else (None, None)
        self._last_status = (last[0], self.charging_state)

    async def _send_status(self) -> None:
        """StatusNotification (and for 2.0.1 a chargingState change in a TransactionEvent) if changed."""
        if self.version == "1.6":
            status = self.status
            if status == self._last_status:
                return
            self._last_status = status
            await self._call(call16.StatusNotification(
                connector_id=self.connector_id, error_code=self._fault_code if self.faulted else "NoError",
                status=status, timestamp=_now_iso()))
            return
        last = self._last_status if isinstance(self._last_status, tuple) else (None, None)
        status, cs = self.status, self.charging_state
        self._last_status = (status, cs)
        if status != last[0]:
            await self._call(call201.StatusNotification(timestamp=_now_iso(), connector_status=status,
                                                        evse_id=self.connector_id, connector_id=1))
        if self.transaction_id is not None and cs != last[1]:
            await self._call(call201.TransactionEvent(
                event_type="Updated", timestamp=_now_iso(), trigger_reason="ChargingStateChanged",
                seq_no=next(self._seq),
                transaction_info={"transaction_id": str(self.transaction_id), "charging_state": cs},
                meter_value=[self._meter_value()]))

    async def _send_triggered_transaction_event(self) -> None:
        """2.0.1 answer to TriggerMessage(TransactionEvent): an Updated event (with its EVSE) for the
        running transaction."""
        if self.transaction_id is None:
            return
        await self._call(call201.TransactionEvent(
            event_type="Updated", timestamp=_now_iso(), trigger_reason="Trigger", seq_no=next(self._seq),
            transaction_info={"transaction_id": str(self.transaction_id), "charging_state": self.charging_state},
            evse={"id": self.connector_id, "connector_id": 1}, meter_value=[self._meter_value("Trigger")]))
        self._mark_charging_state_sent()

    async def _after_power_change(self) -> None:
        await self._send_status()
        await self.send_meter_values()

    async def _power_changed(self) -> None:
        if abs(self.power_kw * 1000.0 - self._power_w) > 1e-6:
            self._integrate()
            await self._after_power_change()
        else:
            await self._send_status()

    async def _refresh(self) -> None:
        await self._send_status()

    # ---- handler logic ---------------------------------------------------------------------------
    async def _receive(self, action: str, **payload: Any) -> None:
        """Record the call; apply the configured delay and call error."""
        self.calls.append(ReceivedCall(action, payload, asyncio.get_running_loop().time()))
        if self.delay > 0:
            await asyncio.sleep(self.delay)
        if self.call_error:
            raise InternalError(description=f"simulated error in {action}")

    def _accepts(self, unit: str) -> bool:
        return unit in self.accepted_unit.split(",")

    def _start_answer(self, raw_msg: str, uid: str) -> None:
        """1.6: the receive loop got a message that may be the answer to StartTransaction ``uid``."""
        try:
            msg = unpack(raw_msg)
        except Exception:  # noqa: BLE001 - the library logs unparsable messages
            return
        if msg.message_type_id != MessageType.CallResult or msg.unique_id != uid or self.transaction_id is not None:
            return
        tx = msg.payload.get("transactionId") if isinstance(msg.payload, Mapping) else None
        if isinstance(tx, int) and not isinstance(tx, bool):
            self._integrate()
            self.transaction_id = tx

    def _set_profile(self, *, profile_id: int, purpose: str, stack_level: int, schedule: Mapping[str, Any],
                     transaction_id: Any) -> tuple[str, str | None]:
        if self.reject_profiles:
            return "Rejected", "RejectedBySim"
        parsed = _first_period_limit(schedule or {}, self.voltage, self.phases)
        if parsed is None:
            return "Rejected", "NoSchedulePeriod"
        limit_w, unit = parsed
        if not self._accepts(unit):
            return "Rejected", "UnsupportedRateUnit"
        if purpose == "TxProfile":
            if self.transaction_id is None or (transaction_id is not None
                                               and str(transaction_id) != str(self.transaction_id)):
                return "Rejected", "TxNotFound"
        self._integrate()
        # A profile with the same id replaces any other purpose's profile with that id (OCPP rule).
        for k, p in list(self.profiles.items()):
            if p.profile_id == profile_id and k != purpose:
                del self.profiles[k]
        self.profiles[purpose] = _Profile(profile_id, purpose, stack_level, limit_w, unit, transaction_id)
        return "Accepted", None

    def _clear_profiles(self, profile_id: Any, purpose: Any, stack_level: Any) -> bool:
        found = False
        for k, p in list(self.profiles.items()):
            if ((profile_id is None or p.profile_id == profile_id) and (purpose is None or p.purpose == purpose)
                    and (stack_level is None or p.stack_level == stack_level)):
                del self.profiles[k]
                found = True
        return found

    def _can_start(self) -> bool:
        return self.transaction_id is None and not self.faulted and self.operative

    def _change_availability(self, operative: bool) -> str:
        if not operative and self.transaction_id is not None:
            self._pending_inoperative = True
            return "Scheduled"
        self._pending_inoperative = False
        self.operative = operative
        return "Accepted"

    def _configuration_16(self) -> dict[str, str]:
        return {_RATE_UNIT_KEY_16: _UNIT_16[self.accepted_unit],
                "HeartbeatInterval": str(self.heartbeat_interval or 0),
                "MeterValueSampleInterval": str(int(self.meter_interval)),
                "NumberOfConnectors": "1"}

    def _variables_201(self) -> dict[tuple[str, str], str]:
        return {("SmartChargingCtrlr", "RateUnit"): ",".join(sorted(self.accepted_unit.split(","))),
                ("SmartChargingCtrlr", "Enabled"): "true",
                ("OCPPCommCtrlr", "HeartbeatInterval"): str(self.heartbeat_interval or 0)}

    def _trigger(self, message: str) -> Callable[[], Any] | None:
        if message == "BootNotification":
            return lambda: self._boot("Triggered")
        if message == "StatusNotification":
            async def status() -> None:
                self._last_status = None
                await self._send_status()
            return status
        if message == "MeterValues":
            return lambda: self.send_meter_values("Trigger")
        if message == "TransactionEvent" and self.version == "2.0.1":
            return self._send_triggered_transaction_event
        if message == "Heartbeat":
            return lambda: self._call(call16.Heartbeat() if self.version == "1.6" else call201.Heartbeat())
        return None


# ---- fleets and the CLI ---------------------------------------------------------------------------

def fleet_ids(count: int, id_prefix: str = "CP") -> list[str]:
    """The charge point ids of a fleet: ``CP0001`` .. (1-based, at least 4 digits)."""
    width = max(4, len(str(count)))
    return [f"{id_prefix}{i:0{width}d}" for i in range(1, count + 1)]


class Fleet:
    """Simulators started by :func:`start_fleet`; ``failed`` lists (id, error) of those that did not start."""

    def __init__(self, sims: list[ChargePointSim], failed: list[tuple[str, str]]) -> None:
        self.sims = sims
        self.failed = failed

    def __len__(self) -> int:
        return len(self.sims)

    async def stop(self) -> None:
        await asyncio.gather(*(s.stop() for s in self.sims), return_exceptions=True)


async def start_fleet(url: str, count: int, version: Literal["1.6", "2.0.1"] = "1.6", id_prefix: str = "CP", *,
                      concurrency: int = 50, plug_in: bool = False, start_transactions: bool = False,
                      **kw: Any) -> Fleet:
    """Start ``count`` simulators (ids from :func:`fleet_ids`), at most ``concurrency`` handshakes at once."""
    sem = asyncio.Semaphore(max(1, concurrency))
    sims = [ChargePointSim(cp_id, url, version, **kw) for cp_id in fleet_ids(count, id_prefix)]
    failed: list[tuple[str, str]] = []

    async def one(sim: ChargePointSim) -> None:
        async with sem:
            try:
                await sim.start()
                if start_transactions:
                    await sim.start_transaction()
                elif plug_in:
                    await sim.plug_in()
            except Exception as exc:
                failed.append((sim.cp_id, f"{type(exc).__name__}: {exc}"))
                await sim.stop()

    await asyncio.gather(*(one(s) for s in sims))
    bad = {cp_id for cp_id, _ in failed}
    return Fleet([s for s in sims if s.cp_id not in bad], failed)


async def run_fleet(url: str, count: int, version: Literal["1.6", "2.0.1"] = "1.6", id_prefix: str = "CP", *,
                    stop: asyncio.Event | None = None, **kw: Any) -> Fleet:
    """Run ``count`` simulators until ``stop`` is set (or the task is cancelled), then stop them all.
    Returns the (stopped) fleet."""
    fleet = await start_fleet(url, count, version, id_prefix, **kw)
    log.info("OCPP %s fleet: %d charge points running against %s (%d failed to start)", version, len(fleet), url,
             len(fleet.failed))
    for cp_id, why in fleet.failed[:10]:
        log.warning("sim %s did not start: %s", cp_id, why)
    try:
        if stop is None:
            await asyncio.Event().wait()
        else:
            await stop.wait()
    finally:
        await fleet.stop()
    return fleet


def add_sim_ocpp_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Options of ``coordinator sim ocpp``."""
    parser.add_argument("--count", type=int, default=1, help="number of charge points (default 1)")
    parser.add_argument("--url", default="ws://127.0.0.1:9000",
                        help="central system URL; each charge point connects to <url>/<id>")
    parser.add_argument("--version", choices=["1.6", "2.0.1"], default="1.6", help="OCPP version (default 1.6)")
    parser.add_argument("--id-prefix", default="CP", help="charge point ids are <prefix>0001.. (default CP)")
    parser.add_argument("--max-kw", type=float, default=22.0, help="power of each charger (default 22)")
    parser.add_argument("--accepted-unit", choices=["W", "A", "A,W"], default="W",
                        help="charging rate unit the chargers accept (default W)")
    parser.add_argument("--password", default=None, help="HTTP Basic password (security profile 1)")
    parser.add_argument("--meter-interval", type=float, default=60.0,
                        help="seconds between periodic MeterValues, 0 = only on change (default 60)")
    parser.add_argument("--plug-in", action="store_true", help="plug an EV into every charger after boot")
    parser.add_argument("--start-transactions", action="store_true", help="start a transaction on every charger")
    parser.add_argument("--concurrency", type=int, default=50, help="simultaneous connection handshakes (default 50)")
    parser.add_argument("--no-validation", action="store_true", help="skip JSON-schema validation (faster)")
    parser.add_argument("--delay", type=float, default=0.0, help="answer every call after this many seconds")
    parser.add_argument("--log-level", default=None,
                        help="logging level, e.g. INFO or WARNING (default: INFO, or what the caller configured)")
    return parser


def run_sim_ocpp(args: argparse.Namespace) -> int:
    """Run the fleet described by ``args`` until SIGINT/SIGTERM; 0 on a clean stop, 1 if none started."""
    if args.count < 1:
        print("sim ocpp: --count must be >= 1")
        return 2
    level = getattr(logging, str(args.log_level).upper(), logging.INFO) if args.log_level else None
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=level or logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    elif level is not None:
        root.setLevel(level)
    logging.getLogger("protocols.sim.wire").setLevel(logging.WARNING)  # one line per OCPP frame otherwise

    async def go() -> int:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, stop.set)
            except (NotImplementedError, RuntimeError):  # pragma: no cover - non-main thread / Windows
                pass
        try:
            fleet = await run_fleet(
                args.url, args.count, args.version, args.id_prefix, stop=stop, max_kw=args.max_kw,
                accepted_unit=args.accepted_unit, password=args.password, meter_interval=args.meter_interval,
                plug_in=args.plug_in, start_transactions=args.start_transactions, concurrency=args.concurrency,
                validate=not args.no_validation, delay=args.delay, auto_reconnect=True)
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                try:
                    loop.remove_signal_handler(sig)
                except (NotImplementedError, RuntimeError):  # pragma: no cover
                    pass
        log.info("OCPP fleet stopped (%d charge points)", len(fleet))
        return 0 if len(fleet) else 1

    return asyncio.run(go())


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m protocols.sim.chargepoint --count 200 --url ws://127.0.0.1:9000 --version 1.6``."""
    parser = add_sim_ocpp_arguments(argparse.ArgumentParser(
        prog="coordinator sim ocpp", description="Run simulated OCPP charge points until SIGINT/SIGTERM."))
    return run_sim_ocpp(parser.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
