"""A simulated OCPP 1.6 / 2.0.1 charge point, built on the client side of the ``ocpp`` library.

One :class:`ChargePointSim` is one charge point with one connector (1.6 connector ``connector_id``,
2.0.1 EVSE ``connector_id`` with connector 1). It connects to ``<url>/<cp_id>`` with the subprotocol
of its version, boots, reports its status, and then:

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
  TCP connection; ``reconnect()`` comes back without a BootNotification), ``outage(seconds)`` (both, with
  the reconnect retried), ``set_delay(seconds)``
  (answer every call late), ``set_reject_profiles(True)``, ``set_call_error(True)`` (answer every
  call with a CallError InternalError).

It answers TriggerMessage for BootNotification, StatusNotification, MeterValues (1.6: with the
running ``transactionId``), Heartbeat and (2.0.1) TransactionEvent (an Updated event naming its EVSE;
Rejected when no transaction runs), sending the message after the answer. 1.6: the transaction id is
taken from the StartTransaction answer in the receive loop, so a TxProfile right behind that answer
finds it (no handler waits).

Every call it receives is recorded in :attr:`ChargePointSim.calls` (action and snake_case payload).

Security profiles, as a real charger speaks them: 1, ``password=`` (HTTP Basic auth, username = its id);
2, a ``wss://`` url, ``ca_cert=`` (the CA that signed the central system's certificate; default: the
system's trust store) and ``password=``; 3, a ``wss://`` url, ``ca_cert=``, and ``client_cert=`` /
``client_key=`` (PEM files of its own certificate, which should name its id). ``ssl_context=`` gives a
ready :class:`ssl.SSLContext` instead (see :func:`protocols.ocpp.security.client_context`).

The per-version handlers are in :mod:`.v16` and :mod:`.v201`; many simulators in one process are a
fleet (:mod:`protocols.sim.fleet`); the ``coordinator sim ocpp`` command is :mod:`runtime.cli.sim_ocpp`.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import logging
import os
import ssl
import uuid
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Literal, Mapping, Sequence
from urllib.parse import quote

from ocpp.exceptions import InternalError
from ocpp.messages import MessageType, unpack
from ocpp.v16 import call as call16
from ocpp.v201 import call as call201
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from protocols.ocpp.security import client_context
from protocols.ocpp.timestamps import ocpp_timestamp
from runtime.core.errors import SimNotConnected

from .v16 import Sim16Connection
from .v201 import Sim201Connection

log = logging.getLogger("protocols.sim.chargepoint")

__all__ = ["ChargePointSim", "ReceivedCall", "SimNotConnected"]

_SUBPROTOCOL = {"1.6": "ocpp1.6", "2.0.1": "ocpp2.0.1"}
_UNIT_16 = {"W": "Power", "A": "Current", "A,W": "Current,Power", "W,A": "Current,Power"}
_RATE_UNIT_KEY_16 = "ChargingScheduleAllowedChargingRateUnit"



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


class ChargePointSim:
    """One simulated charge point (see the module docstring).

    ``accepted_unit``: "W", "A" or "A,W" (what it reports as its allowed charging rate unit and
    accepts in profiles). ``meter_interval``: seconds between periodic MeterValues (0 = only on
    change). ``auto_reconnect``: reconnect (with backoff, without a BootNotification) when the
    connection is lost other than by :meth:`drop`/:meth:`stop`. ``validate``: JSON-schema validation
    of the OCPP messages (turn off for large fleets). ``subprotocols`` overrides what it offers (tests).
    ``password``, ``ca_cert``, ``client_cert``, ``client_key``, ``ssl_context``: the security profile it
    speaks (see the module docstring); the TLS files are read here, once.
    """

    def __init__(self, cp_id: str, url: str, version: Literal["1.6", "2.0.1"] = "1.6", *, max_kw: float = 22.0,
                 password: str | None = None, accepted_unit: str = "W", voltage: float = 230.0, phases: int = 3,
                 connector_id: int = 1, meter_interval: float = 10.0, response_timeout: float = 10.0,
                 id_tag: str = "SIMTAG", vendor: str = "QubitSim", model: str = "SimCP-22",
                 reject_profiles: bool = False, call_error: bool = False, delay: float = 0.0,
                 keep_profiles_on_reboot: bool = False, auto_reconnect: bool = False, validate: bool = True,
                 open_timeout: float = 10.0, subprotocols: Sequence[str] | None = None,
                 ca_cert: str | os.PathLike[str] | None = None, client_cert: str | os.PathLike[str] | None = None,
                 client_key: str | os.PathLike[str] | None = None,
                 ssl_context: ssl.SSLContext | None = None) -> None:
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
        if client_key is not None and client_cert is None:
            raise ValueError("client_key: give client_cert too")
        tls_files = ca_cert is not None or client_cert is not None
        if ssl_context is not None and tls_files:
            raise ValueError("ssl_context: give either an SSL context or the TLS files, not both")
        if tls_files and not url.startswith("wss://"):
            raise ValueError(f"ca_cert / client_cert: TLS needs a wss:// url, got {url!r}")
        #: The TLS context of a wss:// url (None: plain ws).
        self.ssl_context: ssl.SSLContext | None = ssl_context
        if ssl_context is None and url.startswith("wss://"):
            self.ssl_context = client_context(ca_cert, client_cert, client_key)

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
                           compression=None, ssl=self.ssl_context,
                           logger=logging.getLogger("protocols.sim.websockets"))
        cls = Sim16Connection if self.version == "1.6" else Sim201Connection
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

    async def outage(self, seconds: float) -> None:
        """A network outage: abort the connection, wait ``seconds``, then reconnect (without a
        BootNotification), retried with backoff as after a lost link until it connects or the simulator stops."""
        await self.drop()
        await asyncio.sleep(seconds)
        await self._reconnect_loop()

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
                    connector_id=self.connector_id, id_tag=tag, meter_start=int(self.energy_wh), timestamp=ocpp_timestamp(timespec="milliseconds")),
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
                event_type="Started", timestamp=ocpp_timestamp(timespec="milliseconds"), trigger_reason="RemoteStart" if remote else "Authorized",
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
            await self._call(call16.StopTransaction(meter_stop=int(self.energy_wh), timestamp=ocpp_timestamp(timespec="milliseconds"),
                                                    transaction_id=int(tx), reason=reason))
            await self._send_status()
        else:
            trigger = {"Remote": "RemoteStop", "EVDisconnected": "EVCommunicationLost"}.get(reason, "StopAuthorized")
            await self._call(call201.TransactionEvent(
                event_type="Ended", timestamp=ocpp_timestamp(timespec="milliseconds"), trigger_reason=trigger, seq_no=next(self._seq),
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
        return {"timestamp": ocpp_timestamp(timespec="milliseconds"), "sampled_value": samples}

    async def send_meter_values(self, context: str = "Sample.Periodic") -> None:
        mv = self._meter_value(context)
        if self.version == "1.6":
            await self._call(call16.MeterValues(connector_id=self.connector_id, meter_value=[mv],
                                                transaction_id=self.transaction_id))
        elif self.transaction_id is not None:
            await self._call(call201.TransactionEvent(
                event_type="Updated", timestamp=ocpp_timestamp(timespec="milliseconds"), trigger_reason="MeterValuePeriodic", seq_no=next(self._seq),
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
                status=status, timestamp=ocpp_timestamp(timespec="milliseconds")))
            return
        last = self._last_status if isinstance(self._last_status, tuple) else (None, None)
        status, cs = self.status, self.charging_state
        self._last_status = (status, cs)
        if status != last[0]:
            await self._call(call201.StatusNotification(timestamp=ocpp_timestamp(timespec="milliseconds"), connector_status=status,
                                                        evse_id=self.connector_id, connector_id=1))
        if self.transaction_id is not None and cs != last[1]:
            await self._call(call201.TransactionEvent(
                event_type="Updated", timestamp=ocpp_timestamp(timespec="milliseconds"), trigger_reason="ChargingStateChanged",
                seq_no=next(self._seq),
                transaction_info={"transaction_id": str(self.transaction_id), "charging_state": cs},
                meter_value=[self._meter_value()]))

    async def _send_triggered_transaction_event(self) -> None:
        """2.0.1 answer to TriggerMessage(TransactionEvent): an Updated event (with its EVSE) for the
        running transaction."""
        if self.transaction_id is None:
            return
        await self._call(call201.TransactionEvent(
            event_type="Updated", timestamp=ocpp_timestamp(timespec="milliseconds"), trigger_reason="Trigger", seq_no=next(self._seq),
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
