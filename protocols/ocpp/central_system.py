"""The OCPP central system: one websockets server for OCPP 1.6 and 2.0.1 charge points.

Usage (on the site's I/O loop)::

    cs = CentralSystem(host="0.0.0.0", port=9000, basic_auth={"CP1": "secret"})
    await cs.start()                  # cs.port is the bound port (useful with port=0)
    cs.register_listener("CP1", callback)
    result = await cs.call("CP1", ocpp.v16.call.GetConfiguration(), timeout=5)
    await cs.stop()                   # closes the server and every connection, awaits every task

Charge points connect to ``ws://host:port/<anything>/<charge point id>``; the id is the last path
segment. The subprotocol (``ocpp2.0.1`` or ``ocpp1.6``) picks the message set; a client that offers
neither is refused during the handshake (HTTP 400) and a warning names its id and what it offered.
With ``allow_ids`` an id outside the set is refused (HTTP 404, as OCPP-J 1.6 recommends); with
``basic_auth`` (OCPP security profile 1) every charge point must send HTTP Basic credentials whose
username is its id and whose password is ``basic_auth[id]`` (HTTP 401 otherwise).

One :class:`ocpp.charge_point.ChargePoint` object serves one connection; a newer connection for an id
replaces (closes) the older one. Per charge point id the central system remembers a
:class:`ChargePointRecord` across connections: protocol version, registration, the running
transaction per connector/EVSE, the last status, and the charging rate unit the charger accepts (read
after every BootNotification with GetConfiguration ``ChargingScheduleAllowedChargingRateUnit`` (1.6)
or GetVariables ``SmartChargingCtrlr.RateUnit`` (2.0.1); "W" when the charger does not say).

A charge point that reconnects without a BootNotification (a network loss, or the site restarted) is
online at its first message, or ``reconnect_grace`` seconds after connecting, if it was accepted
before or its id is known. Such a charger may still be charging in a transaction this central system
does not know (it started before the site restarted), so the central system then asks it, best
effort, to re-announce its state: 1.6 TriggerMessage(MeterValues) and TriggerMessage(StatusNotification)
(MeterValues of a running transaction carry its ``transactionId``), 2.0.1
TriggerMessage(TransactionEvent) (a TransactionEvent Updated per running transaction). A running
transaction is learned from those messages (and from any later 1.6 MeterValues with a
``transactionId`` / 2.0.1 TransactionEvent naming its EVSE), reported as a ``TransactionStarted``.

1.6 transaction ids are assigned by the central system. They start at the current Unix time in
seconds (and above any id this process already gave out), not at 1, so that a restarted central system
does not hand out the id of a transaction still running from before the restart. Ids would only repeat
if an earlier run gave out more ids than seconds passed since it started (more than one transaction
per second on average); they stay below 2**31 until 2038. A new 1.6 transaction is recorded after the
StartTransaction answer went out, so no call naming it (a TxProfile) can reach the charger before the id.

A BootNotification is answered Accepted for a *known* id (one with a registered listener, or listed
in ``allow_ids`` or ``basic_auth``) and ``unknown_boot`` ("Accepted" or "Pending") for any other id.
Registering a listener for a connected Pending charge point sends it TriggerMessage(BootNotification).

Nothing is ever awaited inside an ``@on`` handler: calls to the charger run in tasks owned by the
connection (cancelled and awaited when it closes) or by the central system (awaited by :meth:`stop`).
Every frame is logged at INFO by the ``protocols.ocpp.wire`` logger (set it to WARNING in production
with many chargers).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import itertools
import logging
import math
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http import HTTPStatus
from typing import Any, Awaitable, Iterable, Literal, Mapping
from urllib.parse import unquote

import ocpp.messages
from ocpp.routing import after, on
from ocpp.v16 import ChargePoint as _ChargePoint16
from ocpp.v16 import call as call16
from ocpp.v16 import call_result as result16
from ocpp.v16.enums import Action as Action16
from ocpp.v201 import ChargePoint as _ChargePoint201
from ocpp.v201 import call as call201
from ocpp.v201 import call_result as result201
from ocpp.v201.enums import Action as Action201
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed, NegotiationError

from .events import (ChargerOffline, ChargerOnline, ConnectorStatus, MeterReading, OcppEvent, OcppListener,
                     TransactionEnded, TransactionStarted)
from .mapping import (state_for_16_status, state_for_201_connector_status, state_for_201_transaction_event)

log = logging.getLogger(__name__)
WIRE_LOG = logging.getLogger("protocols.ocpp.wire")

__all__ = ["CentralSystem", "ChargePointRecord", "ChargerNotConnected", "SUBPROTOCOLS", "charge_point_id_from_path",
           "parse_rate_unit", "parse_meter_values"]

#: Subprotocols in order of preference (the server picks the first one the client offers).
SUBPROTOCOLS: tuple[str, ...] = ("ocpp2.0.1", "ocpp1.6")
_VERSION_OF = {"ocpp1.6": "1.6", "ocpp2.0.1": "2.0.1"}

_RATE_UNIT_KEY_16 = "ChargingScheduleAllowedChargingRateUnit"
_RATE_UNIT_COMPONENT_201 = ("SmartChargingCtrlr", "RateUnit")


class ChargerNotConnected(Exception):
    """The charge point has no open connection (or it closed while a call waited for the answer)."""


def charge_point_id_from_path(path: str) -> str:
    """The charge point id in a websocket request path: its last non-empty segment, URL-decoded."""
    path = path.split("?", 1)[0].rstrip("/")
    return unquote(path.rsplit("/", 1)[-1]) if path else ""


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def parse_rate_unit(value: str | None) -> str | None:
    """"W" or "A" from a 1.6 ``ChargingScheduleAllowedChargingRateUnit`` ("Current,Power") or a 2.0.1
    ``SmartChargingCtrlr.RateUnit`` ("A,W") value; "W" when both are allowed, None when neither."""
    if not value:
        return None
    tokens = {t.strip().lower() for t in str(value).split(",")}
    if tokens & {"power", "w"}:
        return "W"
    if tokens & {"current", "a"}:
        return "A"
    return None


_PHASES = {"L1", "L2", "L3", "L1-N", "L2-N", "L3-N"}


def _sample_value(sample: Mapping[str, Any]) -> tuple[float, str | None] | None:
    """(value scaled to W/Wh, unit) of one 1.6 or 2.0.1 sampled value; None if not a number."""
    try:
        value = float(sample.get("value"))  # 1.6: a string; 2.0.1: a number
    except (TypeError, ValueError):
        return None
    if not math.isfinite(value):
        return None
    unit = sample.get("unit")
    uom = sample.get("unit_of_measure")
    if isinstance(uom, Mapping):  # 2.0.1
        unit = uom.get("unit", unit)
        mult = uom.get("multiplier")
        if isinstance(mult, int) and not isinstance(mult, bool):
            value *= 10.0 ** mult
    if unit in ("kW", "kWh"):
        value *= 1000.0
    return value, unit


def parse_meter_values(meter_values: Iterable[Mapping[str, Any]] | None) -> tuple[float | None, float | None]:
    """(power_kw, energy_kwh) from the latest 1.6 / 2.0.1 meterValue entry that has them.

    Power is Power.Active.Import (the total sample, else the sum of the phase samples), energy is
    Energy.Active.Import.Register (the default measurand). Units W/kW and Wh/kWh (and 2.0.1
    multipliers) are honoured.
    """
    power = energy = None
    for mv in meter_values or ():
        if not isinstance(mv, Mapping):
            continue
        p_total = e_total = None
        p_phases: list[float] = []
        e_phases: list[float] = []
        for s in mv.get("sampled_value") or ():
            if not isinstance(s, Mapping):
                continue
            measurand = s.get("measurand") or "Energy.Active.Import.Register"
            if measurand not in ("Power.Active.Import", "Energy.Active.Import.Register"):
                continue
            parsed = _sample_value(s)
            if parsed is None:
                continue
            value, _unit = parsed
            phase = s.get("phase")
            if measurand == "Power.Active.Import":
                if phase is None:
                    p_total = value
                elif phase in _PHASES:
                    p_phases.append(value)
            else:
                if phase is None:
                    e_total = value
                elif phase in _PHASES:
                    e_phases.append(value)
        if p_total is None and p_phases:
            p_total = sum(p_phases)
        if e_total is None and e_phases:
            e_total = sum(e_phases)
        if p_total is not None:
            power = p_total / 1000.0
        if e_total is not None:
            energy = e_total / 1000.0
    return power, energy


@dataclass
class ChargePointRecord:
    """What the central system knows about one charge point id (kept across connections).

    ``connector`` keys are 1.6 connector ids or 2.0.1 EVSE ids.
    """

    cp_id: str
    version: str | None = None            #: "1.6" or "2.0.1" (of the latest connection)
    registration: str | None = None       #: last BootNotification answer: "Accepted" / "Pending"
    online: bool = False                  #: connected and registered (ChargerOnline was sent)
    ever_online: bool = False
    rate_unit: str = "W"                  #: charging rate unit for profiles: "W" or "A"
    rate_unit_known: bool = False         #: the charger told us (else "W" is an assumption)
    transactions: dict[int, int | str] = field(default_factory=dict)
    #: ids of the latest ended transactions (a late message naming one does not bring it back)
    ended_transactions: list[str] = field(default_factory=list)
    statuses: dict[int, str] = field(default_factory=dict)        #: last StatusNotification status per connector
    states: dict[int, tuple[str, str]] = field(default_factory=dict)  #: last (state, raw value) per connector
    charging_states: dict[int, str] = field(default_factory=dict)  #: 2.0.1 chargingState per EVSE
    boot: dict[str, Any] = field(default_factory=dict)            #: last BootNotification payload
    connection: Any = field(default=None, repr=False)

    @property
    def connected(self) -> bool:
        return self.connection is not None

    def transaction_on(self, connector: int) -> int | str | None:
        return self.transactions.get(connector)

    def connector_of(self, transaction_id: int | str) -> int | None:
        for conn, tx in self.transactions.items():
            if str(tx) == str(transaction_id):
                return conn
        return None

    def transaction_ended(self, transaction_id: int | str | None) -> None:
        """Remember that ``transaction_id`` ended (the latest 32 are kept)."""
        if transaction_id is None:
            return
        self.ended_transactions.append(str(transaction_id))
        del self.ended_transactions[:-32]

    def has_ended(self, transaction_id: int | str) -> bool:
        return str(transaction_id) in self.ended_transactions


_CLOSED = object()  # put into a connection's response queue when it closes
_last_transaction_id = 0  # the highest 1.6 transaction id any CentralSystem of this process gave out


class _Connection:
    """Mixin for the per-connection ChargePoint classes: owned tasks, announce logic, calls."""

    version: str

    def _setup(self, cs: "CentralSystem", record: ChargePointRecord) -> None:
        self._cs = cs
        self._record = record
        self._tasks: set[asyncio.Task[Any]] = set()
        self._registration: str | None = None  # this connection's BootNotification answer
        self._announcing = False
        self._closed = False
        self.replaced = False

    # ---- tasks owned by this connection --------------------------------------------------------
    def spawn(self, coro: Awaitable[Any], name: str) -> asyncio.Task[Any] | None:
        if self._closed:
            coro.close()  # type: ignore[attr-defined]
            return None
        task = asyncio.get_running_loop().create_task(coro, name=f"ocpp-{self.id}-{name}")  # type: ignore[attr-defined]
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            if isinstance(exc, (ConnectionClosed, ChargerNotConnected)):
                log.debug("charge point %s: %s ended: connection closed", self.id, task.get_name())  # type: ignore[attr-defined]
            else:
                log.error("charge point %s: task %s failed", self.id, task.get_name(), exc_info=exc)  # type: ignore[attr-defined]

    async def shutdown(self) -> None:
        """Cancel and await every task this connection started; wake a waiting call."""
        self._closed = True
        self._response_queue.put_nowait(_CLOSED)  # type: ignore[attr-defined]
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    # ---- calls ---------------------------------------------------------------------------------
    async def _get_specific_response(self, unique_id: str, timeout: float) -> Any:
        # Replaces the library's version: ignores late answers to calls that timed out, and ends the
        # wait at once when the connection closes.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise asyncio.TimeoutError
            async with asyncio.timeout(remaining):  # unlike wait_for, no extra task per call
                response = await self._response_queue.get()  # type: ignore[attr-defined]
            if response is _CLOSED:
                self._response_queue.put_nowait(_CLOSED)  # type: ignore[attr-defined]
                raise ChargerNotConnected(f"charge point {self.id!r} disconnected while a call waited")  # type: ignore[attr-defined]
            if response.unique_id == unique_id:
                return response
            log.debug("charge point %s: ignoring a late answer (unique id %s)", self.id, response.unique_id)  # type: ignore[attr-defined]

    # ---- registration / announce ---------------------------------------------------------------
    def _boot_answer(self, payload: Mapping[str, Any]) -> tuple[str, int]:
        status = self._cs._registration_for(self.id)  # type: ignore[attr-defined]
        self._registration = status
        self._record.registration = status
        self._record.boot = dict(payload)
        # A reboot ends every transaction (the charger reports the old ones with StopTransaction later).
        self._record.transactions.clear()
        self._record.charging_states.clear()
        interval = self._cs.heartbeat_interval if status == "Accepted" else self._cs.pending_interval
        if status != "Accepted":
            log.info("charge point %s: BootNotification answered %s (unknown id)", self.id, status)  # type: ignore[attr-defined]
        return status, interval

    def _after_boot(self) -> None:
        if self._registration == "Accepted":
            reason = "rebooted" if self._record.ever_online else "booted"
            self._announcing = True
            self.spawn(self._announce(reason, read_unit=True), "post-boot")

    def _on_traffic(self) -> None:
        """Any message but BootNotification (or the reconnect grace timer): a charge point that reconnected
        without booting is online if it was accepted before, or if it was never seen by this central
        system but its id is known (a charger reconnecting after the site restarted does not boot)."""
        if self._announcing or self._registration is not None or self._closed:
            return
        reg = self._record.registration
        if reg == "Accepted" or (reg is None and self._cs._is_known(self.id)):  # type: ignore[attr-defined]
            self._announcing = True
            self.spawn(self._announce("reconnected", read_unit=not self._record.rate_unit_known), "reconnect")

    async def _reconnect_grace(self, delay: float) -> None:
        await asyncio.sleep(delay)
        self._on_traffic()

    async def _announce(self, reason: str, read_unit: bool) -> None:
        if reason == "reconnected":
            # It did not boot, so it may still be charging in a transaction we do not know (the site
            # restarted) or that changed while it was away: ask it to tell (in its own task; the
            # triggers go out before the rate unit query, so their answers usually precede ChargerOnline).
            self.spawn(self._resync(), "resync")
        if read_unit:
            await self._read_rate_unit()
        rec = self._record
        if rec.connection is not self or self._closed:
            return
        # "reconnected" without ever being online here: it was connected to an earlier run of the site
        # and may hold stale profiles, so it counts as rebooted too.
        rebooted = rec.ever_online or reason == "reconnected"
        rec.online = True
        rec.ever_online = True
        log.info("charge point %s online (OCPP %s, %s, rate unit %s)", self.id, self.version, reason,  # type: ignore[attr-defined]
                 rec.rate_unit)
        self._cs._emit(self.id, ChargerOnline(self.id, self.version, rebooted, reason, rec.rate_unit))  # type: ignore[attr-defined]

    async def _read_rate_unit(self) -> None:
        try:
            unit = await asyncio.wait_for(self._query_rate_unit(), self._cs.response_timeout)
        except (ConnectionClosed, ChargerNotConnected):
            raise
        except asyncio.TimeoutError:
            log.warning("charge point %s: no answer about its charging rate unit; using %s", self.id,  # type: ignore[attr-defined]
                        self._record.rate_unit)
            return
        except Exception as exc:  # CallError, invalid answer
            log.warning("charge point %s: could not read its charging rate unit (%s); using %s", self.id,  # type: ignore[attr-defined]
                        exc, self._record.rate_unit)
            return
        if unit is None:
            log.info("charge point %s did not report a charging rate unit; using %s", self.id,  # type: ignore[attr-defined]
                     self._record.rate_unit)
            return
        self._record.rate_unit = unit
        self._record.rate_unit_known = True

    async def _query_rate_unit(self) -> str | None:  # pragma: no cover - overridden
        raise NotImplementedError

    def _resync_triggers(self) -> list[Any]:  # pragma: no cover - overridden
        raise NotImplementedError

    async def _resync(self) -> None:
        """Best effort: TriggerMessage for each message that re-announces the charger's transactions and
        status. Refusals, CallErrors (NotSupported/NotImplemented) and timeouts are logged and ignored."""
        for payload in self._resync_triggers():
            if self._closed:
                return
            try:
                res = await asyncio.wait_for(self.call(payload, suppress=False), self._cs.response_timeout)
            except (ConnectionClosed, ChargerNotConnected):
                return
            except Exception as exc:  # noqa: BLE001 - CallError, timeout, invalid answer: best effort
                log.info("charge point %s: TriggerMessage(%s) failed (%s); ignored", self.id,  # type: ignore[attr-defined]
                         payload.requested_message, exc or type(exc).__name__)
                continue
            log.debug("charge point %s: TriggerMessage(%s) answered %s", self.id,  # type: ignore[attr-defined]
                      payload.requested_message, res.status)

    async def _trigger_boot(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    # ---- helpers for the handlers ----------------------------------------------------------------
    def _set_state(self, connector: int, state: str | None, raw: str, error_code: str | None = None,
                   info: str | None = None, *, status_notification: bool = True) -> None:
        """Record and report a connector state. A StatusNotification is always reported; a state
        derived from a TransactionEvent only when it differs from the last one."""
        rec = self._record
        if status_notification:
            rec.statuses[connector] = raw
        if state is None:
            log.warning("charge point %s connector %s: unknown status %r", self.id, connector, raw)  # type: ignore[attr-defined]
            return
        if not status_notification and rec.states.get(connector) == (state, raw):
            return
        rec.states[connector] = (state, raw)
        self._cs._emit(self.id, ConnectorStatus(self.id, connector, state, raw, error_code, info))  # type: ignore[attr-defined]

    def _meter(self, connector: int, meter_value: Any, transaction_id: int | str | None = None) -> None:
        power, energy = parse_meter_values(meter_value)
        if power is None and energy is None:
            return
        self._cs._emit(self.id, MeterReading(self.id, connector, power, energy, transaction_id))  # type: ignore[attr-defined]

    def _learn_transaction(self, connector: int, transaction_id: int | str) -> None:
        """A message names a running transaction on ``connector`` (1.6 MeterValues): record it if it is
        new (e.g. it started before the site restarted) and report it as started. An id that ended
        here (a late, queued message) is ignored."""
        rec = self._record
        if rec.transactions.get(connector) == transaction_id or rec.has_ended(transaction_id):
            return
        rec.transactions[connector] = transaction_id
        log.info("charge point %s: transaction %s on connector %s learned from its messages", self.id,  # type: ignore[attr-defined]
                 transaction_id, connector)
        self._cs._emit(self.id, TransactionStarted(self.id, connector, transaction_id))  # type: ignore[attr-defined]


class _ChargePoint16Conn(_Connection, _ChargePoint16):
    version = "1.6"

    def __init__(self, cp_id: str, ws: ServerConnection, cs: "CentralSystem", record: ChargePointRecord) -> None:
        _ChargePoint16.__init__(self, cp_id, ws, response_timeout=cs.response_timeout, logger=WIRE_LOG)
        self._setup(cs, record)
        self._started: tuple[int, int, str] | None = None

    async def _query_rate_unit(self) -> str | None:
        res = await self.call(call16.GetConfiguration(key=[_RATE_UNIT_KEY_16]), suppress=False)
        for kv in res.configuration_key or ():
            if isinstance(kv, Mapping) and kv.get("key") == _RATE_UNIT_KEY_16:
                return parse_rate_unit(kv.get("value"))
        return None

    async def _trigger_boot(self) -> None:
        res = await self.call(call16.TriggerMessage(requested_message="BootNotification"), suppress=False)
        log.info("charge point %s: TriggerMessage(BootNotification) answered %s", self.id, res.status)

    @on(Action16.boot_notification)
    def on_boot_notification(self, **payload: Any) -> Any:
        status, interval = self._boot_answer(payload)
        return result16.BootNotification(current_time=_now_iso(), interval=interval, status=status)

    @after(Action16.boot_notification)
    def after_boot_notification(self, **_: Any) -> None:
        self._after_boot()

    @on(Action16.heartbeat)
    def on_heartbeat(self, **_: Any) -> Any:
        self._on_traffic()
        return result16.Heartbeat(current_time=_now_iso())

    @on(Action16.status_notification)
    def on_status_notification(self, connector_id: int, error_code: str, status: str, info: str | None = None,
                               **_: Any) -> Any:
        self._on_traffic()
        self._set_state(connector_id, state_for_16_status(status), status, error_code, info)
        return result16.StatusNotification()

    @on(Action16.authorize)
    def on_authorize(self, id_tag: str, **_: Any) -> Any:
        self._on_traffic()
        return result16.Authorize(id_tag_info={"status": "Accepted"})

    def _resync_triggers(self) -> list[Any]:
        return [call16.TriggerMessage(requested_message="MeterValues"),
                call16.TriggerMessage(requested_message="StatusNotification")]

    @on(Action16.start_transaction)
    def on_start_transaction(self, connector_id: int, id_tag: str, meter_start: int, timestamp: str,
                             **_: Any) -> Any:
        self._on_traffic()
        tx = self._cs._next_transaction_id()
        self._started = (connector_id, tx, id_tag)
        return result16.StartTransaction(transaction_id=tx, id_tag_info={"status": "Accepted"})

    @after(Action16.start_transaction)
    def after_start_transaction(self, **_: Any) -> None:
        # Recorded (and told) only after the answer went out: a command that sees the transaction in the
        # record sends its TxProfile after the charger got the id, never before.
        if self._started is not None:
            connector_id, tx, id_tag = self._started
            self._started = None
            self._record.transactions[connector_id] = tx
            self._cs._emit(self.id, TransactionStarted(self.id, connector_id, tx, id_tag))

    @on(Action16.stop_transaction)
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
            return result16.StopTransaction(id_tag_info={"status": "Accepted"})
        return result16.StopTransaction()

    @on(Action16.meter_values)
    def on_meter_values(self, connector_id: int, meter_value: list[Any], transaction_id: int | None = None,
                        **_: Any) -> Any:
        self._on_traffic()
        if transaction_id is not None and connector_id > 0:
            self._learn_transaction(connector_id, transaction_id)
        self._meter(connector_id, meter_value, transaction_id)
        return result16.MeterValues()


class _ChargePoint201Conn(_Connection, _ChargePoint201):
    version = "2.0.1"

    def __init__(self, cp_id: str, ws: ServerConnection, cs: "CentralSystem", record: ChargePointRecord) -> None:
        _ChargePoint201.__init__(self, cp_id, ws, response_timeout=cs.response_timeout, logger=WIRE_LOG)
        self._setup(cs, record)

    async def _query_rate_unit(self) -> str | None:
        comp, var = _RATE_UNIT_COMPONENT_201
        res = await self.call(call201.GetVariables(get_variable_data=[
            {"component": {"name": comp}, "variable": {"name": var}}]), suppress=False)
        for r in res.get_variable_result or ():
            if (isinstance(r, Mapping) and r.get("attribute_status") == "Accepted"
                    and (r.get("variable") or {}).get("name") == var):
                return parse_rate_unit(r.get("attribute_value"))
        return None

    async def _trigger_boot(self) -> None:
        res = await self.call(call201.TriggerMessage(requested_message="BootNotification"), suppress=False)
        log.info("charge point %s: TriggerMessage(BootNotification) answered %s", self.id, res.status)

    def _resync_triggers(self) -> list[Any]:
        return [call201.TriggerMessage(requested_message="TransactionEvent")]

    @on(Action201.boot_notification)
    def on_boot_notification(self, **payload: Any) -> Any:
        status, interval = self._boot_answer(payload)
        return result201.BootNotification(current_time=_now_iso(), interval=interval, status=status)

    @after(Action201.boot_notification)
    def after_boot_notification(self, **_: Any) -> None:
        self._after_boot()

    @on(Action201.heartbeat)
    def on_heartbeat(self, **_: Any) -> Any:
        self._on_traffic()
        return result201.Heartbeat(current_time=_now_iso())

    @on(Action201.status_notification)
    def on_status_notification(self, timestamp: str, connector_status: str, evse_id: int, connector_id: int,
                               **_: Any) -> Any:
        self._on_traffic()
        rec = self._record
        state = state_for_201_connector_status(
            connector_status, transaction_active=evse_id in rec.transactions,
            charging_state=rec.charging_states.get(evse_id))
        self._set_state(evse_id, state, connector_status)
        return result201.StatusNotification()

    @on(Action201.authorize)
    def on_authorize(self, id_token: Mapping[str, Any], **_: Any) -> Any:
        self._on_traffic()
        return result201.Authorize(id_token_info={"status": "Accepted"})

    @on(Action201.transaction_event)
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
            return result201.TransactionEvent(id_token_info={"status": "Accepted"})
        return result201.TransactionEvent()

    @on(Action201.meter_values)
    def on_meter_values(self, evse_id: int, meter_value: list[Any], **_: Any) -> Any:
        self._on_traffic()
        self._meter(evse_id, meter_value, self._record.transactions.get(evse_id))
        return result201.MeterValues()

    @on(Action201.notify_report)
    def on_notify_report(self, request_id: int, generated_at: str, seq_no: int,
                         report_data: list[Any] | None = None, **_: Any) -> Any:
        self._on_traffic()
        comp, var = _RATE_UNIT_COMPONENT_201
        for item in report_data or ():
            if ((item.get("component") or {}).get("name") == comp
                    and (item.get("variable") or {}).get("name") == var):
                for attr in item.get("variable_attribute") or ():
                    unit = parse_rate_unit(attr.get("value"))
                    if unit is not None:
                        self._record.rate_unit, self._record.rate_unit_known = unit, True
        return result201.NotifyReport()


class CentralSystem:
    """OCPP 1.6 + 2.0.1 central system (see the module docstring).

    ``response_timeout`` bounds every call the central system makes on its own (rate unit query,
    TriggerMessage) and is the default for :meth:`call`. ``inline_validation`` (default True) has the
    ``ocpp`` library validate every message against its JSON schema on the I/O loop itself instead of
    handing each one to a thread pool (``ocpp.messages.ASYNC_VALIDATION = False``, a process-wide
    setting of the library): in a process with hundreds of actor threads the hand-off costs more than
    the validation. Validation stays on either way. ``reconnect_grace``: a charge point that was
    registered before and reconnects without a BootNotification is online at its first message or
    after this many seconds. ``pending_interval`` is the BootNotification interval given with a
    Pending answer (when the charger retries). ``close_timeout`` bounds a websocket closing handshake.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, allow_ids: Iterable[str] | None = None,
                 basic_auth: Mapping[str, str | bytes] | None = None,
                 unknown_boot: Literal["Accepted", "Pending"] = "Accepted", heartbeat_interval: int = 300,
                 response_timeout: float = 10.0, pending_interval: int = 30, reconnect_grace: float = 2.0,
                 close_timeout: float = 5.0, compression: str | None = None,
                 ping_interval: float | None = 20.0, ping_timeout: float | None = 20.0,
                 inline_validation: bool = True) -> None:
        if unknown_boot not in ("Accepted", "Pending"):
            raise ValueError(f"unknown_boot: must be 'Accepted' or 'Pending', got {unknown_boot!r}")
        if not (isinstance(port, int) and 0 <= port <= 65535):
            raise ValueError(f"port: must be 0..65535, got {port!r}")
        if response_timeout <= 0:
            raise ValueError(f"response_timeout: must be > 0, got {response_timeout!r}")
        if isinstance(allow_ids, str):
            raise ValueError("allow_ids: give a set of charge point ids, not one string")
        self.host = host
        self._requested_port = port
        self.allow_ids: frozenset[str] | None = frozenset(allow_ids) if allow_ids is not None else None
        self.basic_auth: dict[str, bytes] | None = None
        if basic_auth is not None:
            self.basic_auth = {str(k): (v if isinstance(v, bytes) else str(v).encode("utf-8"))
                               for k, v in basic_auth.items()}
        self.unknown_boot = unknown_boot
        self.heartbeat_interval = int(heartbeat_interval)
        self.pending_interval = int(pending_interval)
        self.response_timeout = float(response_timeout)
        self.reconnect_grace = float(reconnect_grace)
        self.close_timeout = close_timeout
        self.compression = compression
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.inline_validation = inline_validation
        self._server: Server | None = None
        self._port: int | None = None
        self._records: dict[str, ChargePointRecord] = {}
        self._listeners: dict[str, list[OcppListener]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        # Not 1: a restarted central system must not reuse the id of a transaction still running (see
        # the module docstring); above the ids this process gave out before (a site restarted in-process).
        self._tx_ids = itertools.count(max(int(time.time()), _last_transaction_id + 1))

    # ---- lifecycle -------------------------------------------------------------------------------
    @property
    def port(self) -> int:
        """The bound port (after :meth:`start`)."""
        if self._port is None:
            raise RuntimeError("CentralSystem.port: the central system is not started")
        return self._port

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def url(self) -> str:
        """``ws://host:port`` (append ``/<charge point id>``)."""
        return f"ws://{self.host}:{self.port}"

    async def start(self) -> None:
        """Start serving on the running loop. :attr:`port` is the bound port afterwards."""
        if self._server is not None:
            raise RuntimeError("CentralSystem already started")
        if self.inline_validation:
            ocpp.messages.ASYNC_VALIDATION = False
        self._server = await serve(
            self._handle, self.host, self._requested_port, subprotocols=list(SUBPROTOCOLS),
            select_subprotocol=self._select_subprotocol, process_request=self._process_request,
            compression=self.compression, close_timeout=self.close_timeout, ping_interval=self.ping_interval,
            ping_timeout=self.ping_timeout, logger=logging.getLogger("protocols.ocpp.websockets"))
        self._port = self._server.sockets[0].getsockname()[1]
        log.info("OCPP central system listening on ws://%s:%d (subprotocols %s)", self.host, self._port,
                 ", ".join(SUBPROTOCOLS))

    async def stop(self) -> None:
        """Close the server and every connection; await every task the central system started."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        for rec in self._records.values():
            rec.connection = None
            rec.online = False
        if server is not None:
            log.info("OCPP central system on port %s stopped", self._port)

    async def __aenter__(self) -> "CentralSystem":
        await self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()

    # ---- registry and listeners ------------------------------------------------------------------
    def charge_point(self, cp_id: str) -> ChargePointRecord | None:
        """What is known about ``cp_id`` (None if it never connected)."""
        return self._records.get(cp_id)

    def connected_ids(self) -> list[str]:
        return [cp_id for cp_id, rec in self._records.items() if rec.connection is not None]

    def online_ids(self) -> list[str]:
        return [cp_id for cp_id, rec in self._records.items() if rec.online]

    def register_listener(self, cp_id: str, callback: OcppListener) -> None:
        """Call ``callback(event)`` (on the loop) for every :mod:`protocols.ocpp.events` event of ``cp_id``.

        A connected charge point whose boot was answered Pending is asked to boot again (it is now known).
        """
        self._listeners.setdefault(cp_id, []).append(callback)
        rec = self._records.get(cp_id)
        if rec is not None and rec.connection is not None and rec.registration == "Pending":
            conn = rec.connection
            conn.spawn(conn._trigger_boot(), "trigger-boot")

    def unregister_listener(self, cp_id: str, callback: OcppListener) -> None:
        callbacks = self._listeners.get(cp_id)
        if callbacks and callback in callbacks:
            callbacks.remove(callback)
            if not callbacks:
                del self._listeners[cp_id]

    def _emit(self, cp_id: str, event: OcppEvent) -> None:
        for callback in list(self._listeners.get(cp_id, ())):
            try:
                callback(event)
            except Exception:
                log.exception("OCPP listener %r for %s raised on %r", callback, cp_id, event)

    def _is_known(self, cp_id: str) -> bool:
        return (cp_id in self._listeners or (self.allow_ids is not None and cp_id in self.allow_ids)
                or (self.basic_auth is not None and cp_id in self.basic_auth))

    def _registration_for(self, cp_id: str) -> str:
        return "Accepted" if self._is_known(cp_id) else self.unknown_boot

    def _next_transaction_id(self) -> int:
        global _last_transaction_id
        tx = next(self._tx_ids)
        _last_transaction_id = max(_last_transaction_id, tx)
        return tx

    def _spawn(self, coro: Awaitable[Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ---- calls -----------------------------------------------------------------------------------
    async def call(self, cp_id: str, payload: Any, *, timeout: float | None = None) -> Any:
        """Send one call (an ``ocpp.v16.call.*`` / ``ocpp.v201.call.*`` object matching the charge
        point's version) and return the ``call_result`` object.

        :raises ChargerNotConnected: no connection, or it closed before the answer.
        :raises TimeoutError: no answer within ``timeout`` (default ``response_timeout``).
        :raises ocpp.exceptions.OCPPError: the charger answered with a CallError (or the payload is invalid).
        """
        rec = self._records.get(cp_id)
        conn = rec.connection if rec is not None else None
        if conn is None:
            raise ChargerNotConnected(f"charge point {cp_id!r} is not connected")
        try:
            return await asyncio.wait_for(conn.call(payload, suppress=False),
                                          self.response_timeout if timeout is None else timeout)
        except ConnectionClosed as exc:
            raise ChargerNotConnected(f"charge point {cp_id!r} disconnected ({exc})") from None

    # ---- handshake -------------------------------------------------------------------------------
    def _process_request(self, connection: ServerConnection, request: Any) -> Any:
        cp_id = charge_point_id_from_path(request.path)
        peer = connection.remote_address
        if not cp_id:
            log.warning("refusing a websocket client from %s: no charge point id in the path %r", peer, request.path)
            return connection.respond(HTTPStatus.NOT_FOUND, "no charge point id in the URL path\n")
        if self.allow_ids is not None and cp_id not in self.allow_ids:
            log.warning("refusing charge point %r from %s: not in the allow-list", cp_id, peer)
            return connection.respond(HTTPStatus.NOT_FOUND, "unknown charge point\n")
        if self.basic_auth is not None:
            why = self._check_basic_auth(cp_id, request.headers.get("Authorization"))
            if why is not None:
                log.warning("refusing charge point %r from %s: %s", cp_id, peer, why)
                response = connection.respond(HTTPStatus.UNAUTHORIZED, "authentication failed\n")
                response.headers["WWW-Authenticate"] = 'Basic realm="ocpp", charset="UTF-8"'
                return response
        return None

    def _check_basic_auth(self, cp_id: str, header: str | None) -> str | None:
        """None when the credentials are right, else why not."""
        assert self.basic_auth is not None
        expected = self.basic_auth.get(cp_id)
        if expected is None:
            return "no password configured for this id (basic_auth)"
        if not header:
            return "no HTTP Basic credentials"
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "basic":
            return f"unsupported authorization scheme {scheme!r}"
        try:
            raw = base64.b64decode(token.strip(), validate=True)
        except (binascii.Error, ValueError):
            return "malformed HTTP Basic credentials"
        user, sep, password = raw.partition(b":")
        if not sep:
            return "malformed HTTP Basic credentials"
        if user.decode("utf-8", "replace") != cp_id:
            return f"HTTP Basic username {user.decode('utf-8', 'replace')!r} is not the charge point id"
        if not hmac.compare_digest(password, expected):
            return "wrong password"
        return None

    def _select_subprotocol(self, connection: ServerConnection, offered: Any) -> Any:
        for proto in SUBPROTOCOLS:
            if proto in offered:
                return proto
        request = connection.request
        cp_id = charge_point_id_from_path(request.path) if request is not None else "?"
        log.warning("refusing charge point %r from %s: it offered subprotocols %s; this central system speaks %s",
                    cp_id, connection.remote_address, list(offered) or "(none)", ", ".join(SUBPROTOCOLS))
        raise NegotiationError(f"unsupported subprotocol {list(offered)!r}; expected one of {', '.join(SUBPROTOCOLS)}")

    # ---- one connection --------------------------------------------------------------------------
    async def _handle(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        cp_id = charge_point_id_from_path(ws.request.path)
        version = _VERSION_OF.get(ws.subprotocol or "")
        if version is None:  # select_subprotocol refuses this during the handshake; defensive
            log.warning("charge point %r connected without an OCPP subprotocol; closing", cp_id)
            await ws.close(1002, "OCPP subprotocol required")
            return
        rec = self._records.get(cp_id)
        if rec is None:
            rec = self._records[cp_id] = ChargePointRecord(cp_id)
        cls = _ChargePoint16Conn if version == "1.6" else _ChargePoint201Conn
        conn = cls(cp_id, ws, self, rec)
        old = rec.connection
        rec.connection = conn
        rec.version = version
        if old is not None:
            log.warning("charge point %s: a new connection replaces the open one", cp_id)
            old.replaced = True
            self._spawn(self._close_replaced(old), f"ocpp-{cp_id}-close-replaced")
            if rec.online:
                rec.online = False
                self._emit(cp_id, ChargerOffline(cp_id, "replaced by a new connection"))
        log.info("charge point %s connected from %s (OCPP %s)", cp_id, ws.remote_address, version)
        if rec.registration == "Accepted" or (rec.registration is None and self._is_known(cp_id)):
            conn.spawn(conn._reconnect_grace(self.reconnect_grace), "reconnect-grace")
        reason = "connection closed"
        try:
            await conn.start()
        except ConnectionClosed as exc:
            reason = f"connection closed ({exc.rcvd.code if exc.rcvd else 1006})"
        except asyncio.CancelledError:
            reason = "central system stopped"
            raise
        except Exception:
            log.exception("charge point %s: connection failed", cp_id)
            reason = "connection failed"
        finally:
            await conn.shutdown()
            if rec.connection is conn:
                rec.connection = None
                was_online, rec.online = rec.online, False
                log.info("charge point %s disconnected: %s", cp_id, reason)
                if was_online:
                    self._emit(cp_id, ChargerOffline(cp_id, reason))

    async def _close_replaced(self, old: _Connection) -> None:
        try:
            await old._connection.close(1000, "replaced by a newer connection")  # type: ignore[attr-defined]
        except Exception:  # pragma: no cover - best effort
            log.debug("closing a replaced connection failed", exc_info=True)
