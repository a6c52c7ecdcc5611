"""Conformance suite: the real CentralSystem against a charge point made of raw OCPP-J frames.

Modelled on the Open Charge Alliance's compliance test tool (OCTT): one test per CSMS test case that
applies to this central system's scope, named after the case id. The ids and steps come from the OCPP 1.6
OCTT test case document ("TC_xxx_CSMS") and OCPP 2.0.1 Part 6 ("TC_<block>_<nn>_CSMS"), as published
case by case on ocpplab.com/docs/protocols/.../test-cases; where no CSMS case id was found, the test
names the specification clause it checks instead (the README maps every test).

The charge point (:class:`RawChargePoint`) uses no OCPP library: it speaks websocket frames through
``websockets.asyncio.client``. Every frame it sends is validated against the official JSON schema of its
action (the schemas shipped in the ``ocpp`` package), so that it is a faithful stand-in for a conformant
charger, and so is every CALL and CALLRESULT the central system sends it: the "tool validations" of the
OCTT. The central system is the real :class:`~protocols.ocpp.central_system.CentralSystem` on
127.0.0.1 port 0, with an :class:`~protocols.ocpp.link.OcppChargerLink` where a case needs the central
system to act (remote start/stop, charging profiles), as the site would drive it.

No bare sleeps: every wait is bounded and on a condition (``tests/asyncsupport.py``).
"""

from __future__ import annotations

import asyncio
import decimal
import functools
import itertools
import json
import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import jsonschema
import ocpp
import pytest
from ocpp.v201 import call as call201
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from protocols.base import CommandProgress, DeviceContext, LinkUp, Outcome
from protocols.ocpp import CentralSystem, OcppChargerLink
from protocols.ocpp.authorization import IdTagPolicy
from protocols.ocpp.notifications import TransactionEnded
from runtime.core.clock import RealClock
from runtime.core.commands import Command, CommandType

from .asyncsupport import run, settle

VERSIONS = ["1.6", "2.0.1"]
SUBPROTOCOL = {"1.6": "ocpp1.6", "2.0.1": "ocpp2.0.1"}
SCHEMAS = Path(ocpp.__file__).parent
pytestmark = [pytest.mark.timeout(30), pytest.mark.usefixtures("no_leaks")]  # no_leaks: tests/conftest.py
_ids = itertools.count(1)


# ---- the official schemas ---------------------------------------------------------------------------

@functools.cache
def _validator(version: str, action: str, kind: str) -> tuple[Any, Any]:
    """The jsonschema validator of ``action``'s ``kind`` ("request" or "response") in ``version``, and the
    float parser its payloads are read with (1.6: Decimal, as the ``ocpp`` package does: multipleOf 0.1)."""
    if version == "1.6":
        path = SCHEMAS / "v16" / "schemas" / (f"{action}.json" if kind == "request" else f"{action}Response.json")
        parse_float: Any = decimal.Decimal
    else:
        path = SCHEMAS / "v201" / "schemas" / f"{action}{'Request' if kind == 'request' else 'Response'}.json"
        parse_float = float
    schema = json.loads(path.read_text(encoding="utf-8-sig"), parse_float=parse_float)
    cls = jsonschema.validators.validator_for(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER), parse_float


def assert_valid(version: str, action: str, kind: str, payload: Any) -> None:
    validator, parse_float = _validator(version, action, kind)
    validator.validate(json.loads(json.dumps(payload), parse_float=parse_float))


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# ---- a charge point of raw frames -------------------------------------------------------------------

class CallErrorReply(Exception):
    """The central system answered our CALL with a CALLERROR."""

    def __init__(self, code: str, description: str, details: Any) -> None:
        super().__init__(f"{code}: {description}")
        self.code, self.description, self.details = code, description, details


def _default_answers(version: str) -> dict[str, Callable[[dict[str, Any]], dict[str, Any]]]:
    """How the raw charge point answers the calls a test does not answer itself."""
    if version == "1.6":
        return {
            "GetConfiguration": lambda p: {"configurationKey": [
                {"key": "ChargingScheduleAllowedChargingRateUnit", "readonly": True, "value": "Power"}]},
            "TriggerMessage": lambda p: {"status": "Accepted"},
        }
    return {
        "GetVariables": lambda p: {"getVariableResult": [
            {"attributeStatus": "Accepted", "attributeValue": "W", "component": {"name": "SmartChargingCtrlr"},
             "variable": {"name": "RateUnit"}}]},
        "TriggerMessage": lambda p: {"status": "Accepted"},
    }


class RawChargePoint:
    """A charge point that speaks raw OCPP-J frames; every frame in either direction is schema-checked.

    ``call(action, payload)`` sends a CALL and returns the CALLRESULT payload (raises :class:`CallErrorReply`
    on a CALLERROR); ``send_raw(text, unique_id)`` sends any text and returns the frame answering that id.
    CALLs from the central system are recorded in :attr:`received`; those in :attr:`answers` are answered
    at once, the others wait for the test: ``expect(action)`` then ``reply(uid, action, payload)``.
    """

    def __init__(self, url: str, cp_id: str, version: str, **connect_kw: Any) -> None:
        self.url, self.cp_id, self.version = url, cp_id, version
        self.connect_kw = connect_kw
        self.received: list[tuple[str, dict[str, Any]]] = []
        self.answers = _default_answers(version)
        self.ws: ClientConnection | None = None
        self._pending: dict[str, asyncio.Future[list[Any]]] = {}
        self._calls: asyncio.Queue[tuple[str, str, dict[str, Any]]] = asyncio.Queue()
        self._reader: asyncio.Task[None] | None = None
        self._ids = itertools.count(1)
        self.errors: list[BaseException] = []  # what the reader found wrong (an invalid frame): fails the test

    async def __aenter__(self) -> "RawChargePoint":
        offered: Any = [SUBPROTOCOL[self.version]]
        self.ws = await connect(f"{self.url}/{self.cp_id}", subprotocols=offered, open_timeout=5, close_timeout=2,
                                **self.connect_kw)
        self._reader = asyncio.create_task(self._read(), name=f"raw-{self.cp_id}-read")
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def close(self, abort: bool = False) -> None:
        if self.ws is not None:
            if abort and self.ws.transport is not None:
                self.ws.transport.abort()
            else:
                await self.ws.close()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
            self._reader = None
        if self.errors:
            raise self.errors[0]

    async def _read(self) -> None:
        assert self.ws is not None
        try:
            async for text in self.ws:
                try:
                    await self._frame(text)
                except Exception as exc:  # noqa: BLE001 - an invalid frame: recorded, fails the test
                    self.errors.append(exc)
                    for fut in self._pending.values():
                        if not fut.done():
                            fut.set_exception(exc)
        except ConnectionClosed:
            pass
        finally:
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(ConnectionError("connection closed"))

    async def _frame(self, text: str | bytes) -> None:
        frame = json.loads(text)
        if frame[0] == 2:
            _, uid, action, payload = frame
            assert_valid(self.version, action, "request", payload)  # what the central system sends
            self.received.append((action, payload))
            answer = self.answers.get(action)
            if answer is not None:
                await self.reply(uid, action, answer(payload))
            else:
                self._calls.put_nowait((uid, action, payload))
        elif frame[1] in self._pending:
            self._pending.pop(frame[1]).set_result(frame)
        else:
            raise AssertionError(f"unexpected frame from the central system: {text!r}")

    async def send_raw(self, text: str, unique_id: str, timeout: float = 5.0) -> list[Any]:
        """Send ``text`` as it is; the frame that answers ``unique_id``."""
        assert self.ws is not None
        fut = self._pending[unique_id] = asyncio.get_running_loop().create_future()
        await self.ws.send(text)
        async with asyncio.timeout(timeout):
            return await fut

    async def call(self, action: str, payload: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
        assert_valid(self.version, action, "request", payload)  # what we send
        uid = f"{self.cp_id}-{next(self._ids)}"
        frame = await self.send_raw(json.dumps([2, uid, action, payload]), uid, timeout)
        if frame[0] == 4:
            raise CallErrorReply(frame[2], frame[3], frame[4])
        assert frame[0] == 3, frame
        assert_valid(self.version, action, "response", frame[2])  # what the central system answers
        return frame[2]

    async def expect(self, action: str, timeout: float = 5.0) -> tuple[str, dict[str, Any]]:
        """The next CALL of the central system not answered automatically; it must be ``action``."""
        async with asyncio.timeout(timeout):
            uid, got, payload = await self._calls.get()
        assert got == action, f"expected {action}, the central system sent {got} {payload}"
        return uid, payload

    async def reply(self, uid: str, action: str, payload: dict[str, Any]) -> None:
        assert self.ws is not None
        assert_valid(self.version, action, "response", payload)  # what we answer
        await self.ws.send(json.dumps([3, uid, payload]))

    def calls_of(self, action: str) -> list[dict[str, Any]]:
        return [p for a, p in self.received if a == action]

    # -- the messages of a charger, per version --
    async def boot(self, reason: str = "PowerUp") -> dict[str, Any]:
        if self.version == "1.6":
            return await self.call("BootNotification", {"chargePointVendor": "OCTT-like",
                                                        "chargePointModel": "Raw",
                                                        "chargePointSerialNumber": self.cp_id[:25]})
        return await self.call("BootNotification", {"reason": reason, "chargingStation": {
            "vendorName": "OCTT-like", "model": "Raw", "serialNumber": self.cp_id}})

    async def status(self, status: str, connector: int = 1) -> dict[str, Any]:
        if self.version == "1.6":
            return await self.call("StatusNotification", {"connectorId": connector, "errorCode": "NoError",
                                                          "status": status, "timestamp": now()})
        return await self.call("StatusNotification", {"timestamp": now(), "connectorStatus": status,
                                                      "evseId": connector, "connectorId": 1})

    async def authorize(self, tag: str) -> dict[str, Any]:
        if self.version == "1.6":
            return (await self.call("Authorize", {"idTag": tag}))["idTagInfo"]
        return (await self.call("Authorize", {"idToken": {"idToken": tag, "type": "ISO14443"}}))["idTokenInfo"]

    async def heartbeat(self) -> dict[str, Any]:
        return await self.call("Heartbeat", {})

    async def transaction_event(self, event_type: str, trigger: str, tx: str, seq: int, *,
                                charging_state: str | None = None, tag: str | None = None,
                                stopped_reason: str | None = None, remote_start_id: int | None = None,
                                evse: bool = True, meter_w: float | None = None) -> dict[str, Any]:
        """2.0.1 TransactionEvent."""
        info: dict[str, Any] = {"transactionId": tx}
        if charging_state is not None:
            info["chargingState"] = charging_state
        if stopped_reason is not None:
            info["stoppedReason"] = stopped_reason
        if remote_start_id is not None:
            info["remoteStartId"] = remote_start_id
        payload: dict[str, Any] = {"eventType": event_type, "timestamp": now(), "triggerReason": trigger,
                                   "seqNo": seq, "transactionInfo": info}
        if evse:
            payload["evse"] = {"id": 1, "connectorId": 1}
        if tag is not None:
            payload["idToken"] = {"idToken": tag, "type": "ISO14443"}
        if meter_w is not None:
            payload["meterValue"] = [{"timestamp": now(), "sampledValue": [
                {"value": meter_w, "measurand": "Power.Active.Import", "unitOfMeasure": {"unit": "W"}}]}]
        return await self.call("TransactionEvent", payload)


# ---- the system under test --------------------------------------------------------------------------

class Csms:
    """The CentralSystem on 127.0.0.1:0 and one OcppChargerLink for ``cp_id`` (whose events are recorded)."""

    def __init__(self, version: str, cp_id: str = "CP1", **cs_kw: Any) -> None:
        cs_kw.setdefault("response_timeout", 3.0)
        cs_kw.setdefault("reconnect_grace", 0.3)
        self.version, self.cp_id = version, cp_id
        self.cs = CentralSystem("127.0.0.1", 0, **cs_kw)
        self.clock = RealClock()
        self.link = OcppChargerLink(cp_id, call_timeout=3.0)
        self.events: list[Any] = []

    async def __aenter__(self) -> "Csms":
        await self.cs.start()
        await self.link.start(DeviceContext(asyncio.get_running_loop(), self.clock, {"ocpp": self.cs}),
                              self.events.append)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.link.stop()
        await self.cs.stop()
        self.clock.stop()

    def charger(self, cp_id: str | None = None, **kw: Any) -> RawChargePoint:
        return RawChargePoint(self.cs.url, cp_id or self.cp_id, self.version, **kw)

    async def online(self, cp: RawChargePoint) -> dict[str, Any]:
        """Boot ``cp`` (Accepted) and wait until the central system has it online (rate unit read)."""
        conf = await cp.boot()
        assert conf["status"] == "Accepted", conf
        await settle(lambda: (rec := self.cs.charge_point(cp.cp_id)) is not None and rec.online, what="online")
        await cp.status("Available")
        return conf

    def command(self, kind: CommandType, value: float = 0.0) -> "asyncio.Task[Any]":
        cmd = Command(f"cmd-{next(_ids)}", "ev1", kind, value, datetime.now(timezone.utc))
        return asyncio.create_task(self.link.execute(cmd))

    def of(self, kind: type) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]


def tx_started(version: str, cs: CentralSystem, cp_id: str = "CP1") -> Any:
    rec = cs.charge_point(cp_id)
    return rec is not None and rec.transaction_on(1)


async def start_16(cp: RawChargePoint, tag: str = "TAG1") -> dict[str, Any]:
    return await cp.call("StartTransaction", {"connectorId": 1, "idTag": tag, "meterStart": 0, "timestamp": now()})


async def charging(csms: Csms, cp: RawChargePoint) -> int | str:
    """Reusable state Charging (1.6) / EnergyTransferStarted (2.0.1): a transaction runs on connector/EVSE 1."""
    if cp.version == "1.6":
        await cp.status("Preparing")
        assert (await cp.authorize("TAG1"))["status"] == "Accepted"
        conf = await start_16(cp)
        await cp.status("Charging")
        tx: int | str = conf["transactionId"]
    else:
        await cp.status("Occupied")
        await cp.transaction_event("Started", "Authorized", "TX-1", 0, charging_state="Charging", tag="TAG1")
        tx = "TX-1"
    await settle(lambda: tx_started(cp.version, csms.cs), what="transaction recorded")
    return tx


# ==== B. Provisioning / cold boot ====================================================================

def test_tc_001_csms_cold_boot_charge_point() -> None:
    """1.6 TC_001_CSMS: BootNotification Accepted with the heartbeat interval; StatusNotification per
    connector and connector 0; Heartbeat answered with the current time."""
    async def body() -> None:
        async with Csms("1.6", heartbeat_interval=120) as csms, csms.charger() as cp:
            conf = await cp.boot()
            assert conf["status"] == "Accepted" and conf["interval"] == 120
            for connector in (0, 1):
                assert await cp.status("Available", connector) == {}
            beat = await cp.heartbeat()
            assert datetime.fromisoformat(beat["currentTime"].replace("Z", "+00:00")).tzinfo is not None
            await settle(lambda: csms.of(LinkUp), what="LinkUp")
            assert cp.calls_of("GetConfiguration")  # it read the rate unit, schema-valid
    run(body)


def test_tc_b_01_csms_cold_boot_charging_station_accepted() -> None:
    """2.0.1 TC_B_01_CSMS: reusable state Booted (BootNotification Accepted, StatusNotification, Heartbeat)."""
    async def body() -> None:
        async with Csms("2.0.1", heartbeat_interval=90) as csms, csms.charger() as cp:
            conf = await cp.boot()
            assert conf["status"] == "Accepted" and conf["interval"] == 90
            assert await cp.status("Available") == {}
            assert "currentTime" in await cp.heartbeat()
            await settle(lambda: csms.of(LinkUp), what="LinkUp")
            assert cp.calls_of("GetVariables")
    run(body)


@pytest.mark.parametrize("version", VERSIONS)
def test_tc_002_and_tc_b_02_csms_cold_boot_pending(version: str) -> None:
    """1.6 Pending (TC_002, modelled on TC_002_CS: its CSMS twin was not found) and 2.0.1 TC_B_02_CSMS: an
    unknown id is answered Pending with the retry interval; once it is known the central system triggers
    a BootNotification, which is Accepted."""
    async def body() -> None:
        async with Csms(version, cp_id="KNOWN", unknown_boot="Pending", pending_interval=45) as csms, \
                csms.charger("NEWCOMER") as cp:
            conf = await cp.boot()
            assert conf["status"] == "Pending" and conf["interval"] == 45
            csms.cs.register_listener("NEWCOMER", lambda event: None)  # the operator adds it
            await settle(lambda: cp.calls_of("TriggerMessage"), what="TriggerMessage(BootNotification)")
            assert cp.calls_of("TriggerMessage")[0]["requestedMessage"] == "BootNotification"
            assert (await cp.boot())["status"] == "Accepted"
    run(body)


# ==== regular charging sessions ======================================================================

def test_tc_003_csms_regular_charging_session_plugin_first() -> None:
    """1.6 TC_003_CSMS: Preparing, Authorize Accepted, StartTransaction Accepted (a transaction id),
    Charging; then stopped locally: StopTransaction answered, Finishing, Available."""
    async def body() -> None:
        async with Csms("1.6") as csms, csms.charger() as cp:
            await csms.online(cp)
            await cp.status("Preparing")
            assert (await cp.authorize("TAG1"))["status"] == "Accepted"
            conf = await start_16(cp)
            assert conf["idTagInfo"]["status"] == "Accepted" and isinstance(conf["transactionId"], int)
            await cp.status("Charging")
            stop = await cp.call("StopTransaction", {"transactionId": conf["transactionId"], "meterStop": 1200,
                                                     "timestamp": now(), "reason": "Local", "idTag": "TAG1"})
            assert stop["idTagInfo"]["status"] == "Accepted"
            await cp.status("Finishing")
            await cp.status("Available")
            assert csms.cs.charge_point("CP1").transaction_on(1) is None
    run(body)


def test_tc_004_1_csms_regular_charging_session_identification_first() -> None:
    """1.6 TC_004_1_CSMS: Authorize before the cable; then Preparing, StartTransaction, Charging."""
    async def body() -> None:
        async with Csms("1.6") as csms, csms.charger() as cp:
            await csms.online(cp)
            assert (await cp.authorize("TAG1"))["status"] == "Accepted"
            await cp.status("Preparing")
            assert (await start_16(cp))["idTagInfo"]["status"] == "Accepted"
            await cp.status("Charging")
            await settle(lambda: tx_started("1.6", csms.cs), what="transaction recorded")
    run(body)


def test_tc_e_03_csms_local_start_transaction_cable_plugin_first() -> None:
    """2.0.1 TC_E_03_CSMS: EVConnectedPreSession (Occupied, TransactionEvent Started CablePluggedIn), then
    Authorized (Authorize and TransactionEvent with the idToken: Accepted) and EnergyTransferStarted."""
    async def body() -> None:
        async with Csms("2.0.1") as csms, csms.charger() as cp:
            await csms.online(cp)
            await cp.status("Occupied")
            conf = await cp.transaction_event("Started", "CablePluggedIn", "TX-7", 0, charging_state="EVConnected")
            assert conf == {}  # no idToken, no idTokenInfo
            assert (await cp.authorize("TAG1"))["status"] == "Accepted"
            conf = await cp.transaction_event("Updated", "Authorized", "TX-7", 1, tag="TAG1")
            assert conf["idTokenInfo"]["status"] == "Accepted"
            await cp.transaction_event("Updated", "ChargingStateChanged", "TX-7", 2, charging_state="Charging",
                                       meter_w=7000.0, evse=False)
            assert csms.cs.charge_point("CP1").transaction_on(1) == "TX-7"
    run(body)


def test_tc_e_04_csms_local_start_transaction_authorization_first() -> None:
    """2.0.1 TC_E_04_CSMS: Authorized first (Authorize, TransactionEvent Started with the idToken), then
    EnergyTransferStarted."""
    async def body() -> None:
        async with Csms("2.0.1") as csms, csms.charger() as cp:
            await csms.online(cp)
            assert (await cp.authorize("TAG1"))["status"] == "Accepted"
            conf = await cp.transaction_event("Started", "Authorized", "TX-8", 0, tag="TAG1")
            assert conf["idTokenInfo"]["status"] == "Accepted"
            await cp.status("Occupied")
            await cp.transaction_event("Updated", "ChargingStateChanged", "TX-8", 1, charging_state="Charging")
            assert csms.cs.charge_point("CP1").transaction_on(1) == "TX-8"
    run(body)


# ==== C. Authorization (the id-tag policy) ===========================================================

LOCAL_LIST = {"mode": "local_list", "tags": [
    {"id_tag": "GOOD", "status": "Accepted", "expiry": "2999-01-01T00:00:00Z"},
    {"id_tag": "BLOCKED", "status": "Blocked"},
    {"id_tag": "OLD", "status": "Accepted", "expiry": "2020-01-01T00:00:00Z"},
]}


@pytest.mark.parametrize("case, tag, expected", [
    ("TC_023_1_CSMS", "STRANGER", "Invalid"),
    ("TC_023_2_CSMS", "OLD", "Expired"),
    ("TC_023_3_CSMS", "BLOCKED", "Blocked"),
])
def test_tc_023_csms_authorize_invalid_expired_blocked(case: str, tag: str, expected: str) -> None:
    """1.6 TC_023_1/2/3_CSMS: Authorize.conf idTagInfo.status Invalid / Expired / Blocked."""
    async def body() -> None:
        async with Csms("1.6", authorize=LOCAL_LIST) as csms, csms.charger() as cp:
            await csms.online(cp)
            assert (await cp.authorize(tag)) == {"status": expected}
            good = await cp.authorize("good")  # case-insensitive (CiString20)
            assert good == {"status": "Accepted", "expiryDate": "2999-01-01T00:00:00Z"}
    run(body)


@pytest.mark.parametrize("case, tag, expected", [
    ("TC_C_02_CSMS", "STRANGER", "Unknown"),
    ("TC_C_06_CSMS", "BLOCKED", "Blocked"),
    ("TC_C_07_CSMS", "OLD", "Expired"),
])
def test_tc_c_csms_local_start_transaction_authorization_refused(case: str, tag: str, expected: str) -> None:
    """2.0.1 TC_C_02/06/07_CSMS: AuthorizeResponse idTokenInfo.status Unknown / Blocked / Expired."""
    async def body() -> None:
        async with Csms("2.0.1", authorize=LOCAL_LIST) as csms, csms.charger() as cp:
            await csms.online(cp)
            assert (await cp.authorize(tag)) == {"status": expected}
            assert (await cp.authorize("GOOD"))["cacheExpiryDateTime"] == "2999-01-01T00:00:00Z"
    run(body)


@pytest.mark.parametrize("version", VERSIONS)
def test_start_transaction_and_transaction_event_answer_the_tag_status(version: str) -> None:
    """A refused tag is answered with its status in 1.6 StartTransaction (which still gets a transaction
    id, as 1.6 requires) and in a 2.0.1 TransactionEvent carrying the idToken; an allow-list refuses
    strangers but accepts the tag the central system itself sent in a remote start (own case)."""
    async def body() -> None:
        async with Csms(version, authorize=IdTagPolicy("allow_list", allow=["OK1"])) as csms, csms.charger() as cp:
            await csms.online(cp)
            if version == "1.6":
                conf = await start_16(cp, "STRANGER")
                assert conf["idTagInfo"] == {"status": "Invalid"} and conf["transactionId"] > 0
                stop = await cp.call("StopTransaction", {"transactionId": conf["transactionId"], "meterStop": 0,
                                                         "timestamp": now(), "reason": "DeAuthorized",
                                                         "idTag": "STRANGER"})
                assert stop["idTagInfo"] == {"status": "Invalid"}
                assert (await start_16(cp, "ok1"))["idTagInfo"]["status"] == "Accepted"
            else:
                conf = await cp.transaction_event("Started", "Authorized", "TX-9", 0, tag="STRANGER")
                assert conf["idTokenInfo"] == {"status": "Unknown"}
                assert (await cp.transaction_event("Updated", "Authorized", "TX-9", 1, tag="OK1"))[
                    "idTokenInfo"]["status"] == "Accepted"
            assert (await cp.authorize("coordinator"))["status"] != "Accepted"  # not sent yet: unknown
    run(body)


# ==== F. Remote control ==============================================================================

def test_tc_010_csms_remote_start_charging_session_cable_plugged_in_first() -> None:
    """1.6 TC_010_CSMS: Preparing; the central system sends RemoteStartTransaction (connector and idTag);
    Authorize and StartTransaction of that tag are Accepted, even under an allow-list that does not
    list it (the central system sent it); Charging. The command completes when the transaction starts."""
    async def body() -> None:
        async with Csms("1.6", authorize=IdTagPolicy("allow_list", allow=["SOMEONE"])) as csms, \
                csms.charger() as cp:
            await csms.online(cp)
            await cp.status("Preparing")
            command = csms.command(CommandType.START_CHARGING)
            uid, req = await cp.expect("RemoteStartTransaction")
            assert req["connectorId"] == 1 and req["idTag"]
            await cp.reply(uid, "RemoteStartTransaction", {"status": "Accepted"})
            assert (await command).outcome is Outcome.ACKNOWLEDGED
            assert (await cp.authorize(req["idTag"]))["status"] == "Accepted"
            conf = await start_16(cp, req["idTag"])
            assert conf["idTagInfo"]["status"] == "Accepted"
            await cp.status("Charging")
            await settle(lambda: [e for e in csms.of(CommandProgress) if e.outcome is Outcome.COMPLETED],
                         what="START_CHARGING completed")
    run(body)


def test_tc_011_1_csms_remote_start_charging_session_remote_start_first() -> None:
    """1.6 TC_011_1_CSMS: RemoteStartTransaction first, then Authorize, Preparing, StartTransaction, Charging."""
    async def body() -> None:
        async with Csms("1.6") as csms, csms.charger() as cp:
            await csms.online(cp)
            command = csms.command(CommandType.START_CHARGING)
            uid, req = await cp.expect("RemoteStartTransaction")
            await cp.reply(uid, "RemoteStartTransaction", {"status": "Accepted"})
            assert (await command).outcome is Outcome.ACKNOWLEDGED
            assert (await cp.authorize(req["idTag"]))["status"] == "Accepted"
            await cp.status("Preparing")
            assert (await start_16(cp, req["idTag"]))["idTagInfo"]["status"] == "Accepted"
            await cp.status("Charging")
            await settle(lambda: tx_started("1.6", csms.cs), what="transaction recorded")
    run(body)


def test_tc_f_01_csms_remote_start_transaction_cable_plugin_first() -> None:
    """2.0.1 TC_F_01_CSMS: EVConnectedPreSession (Occupied; TxStartPoint Authorized: no transaction yet); the
    CSMS sends RequestStartTransaction (idToken type Central, evseId, remoteStartId); the station answers
    Accepted and starts the transaction (TransactionEvent, triggerReason RemoteStart, that remoteStartId),
    whose idToken is Accepted; EnergyTransferStarted. The command completes when the transaction starts."""
    async def body() -> None:
        async with Csms("2.0.1") as csms, csms.charger() as cp:
            await csms.online(cp)
            await cp.status("Occupied")
            command = csms.command(CommandType.START_CHARGING)
            uid, req = await cp.expect("RequestStartTransaction")
            assert req["idToken"]["type"] == "Central" and req["evseId"] == 1
            await cp.reply(uid, "RequestStartTransaction", {"status": "Accepted"})
            assert (await command).outcome is Outcome.ACKNOWLEDGED
            conf = await cp.transaction_event("Started", "RemoteStart", "TX-R", 0, tag=req["idToken"]["idToken"],
                                              remote_start_id=req["remoteStartId"], charging_state="EVConnected")
            assert conf["idTokenInfo"]["status"] == "Accepted"
            await cp.transaction_event("Updated", "ChargingStateChanged", "TX-R", 1, charging_state="Charging")
            await settle(lambda: [e for e in csms.of(CommandProgress) if e.outcome is Outcome.COMPLETED],
                         what="START_CHARGING completed")
    run(body)


@pytest.mark.parametrize("version", VERSIONS)
def test_tc_012_and_tc_e_21_csms_remote_stop(version: str) -> None:
    """1.6 TC_012_CSMS / 2.0.1 TC_E_21_CSMS: the central system sends RemoteStopTransaction /
    RequestStopTransaction with the running transaction's id; the charger ends it (reason Remote)."""
    async def body() -> None:
        async with Csms(version) as csms, csms.charger() as cp:
            await csms.online(cp)
            tx = await charging(csms, cp)
            command = csms.command(CommandType.STOP_CHARGING)
            action = "RemoteStopTransaction" if version == "1.6" else "RequestStopTransaction"
            uid, req = await cp.expect(action)
            assert req["transactionId"] == tx
            await cp.reply(uid, action, {"status": "Accepted"})
            assert (await command).outcome is Outcome.ACKNOWLEDGED
            if version == "1.6":
                await cp.call("StopTransaction", {"transactionId": tx, "meterStop": 500, "timestamp": now(),
                                                  "reason": "Remote"})
                await cp.status("Finishing")
                await cp.status("Available")
            else:
                await cp.transaction_event("Ended", "RemoteStop", str(tx), 9, charging_state="EVConnected",
                                           stopped_reason="Remote")
            await settle(lambda: [e for e in csms.of(CommandProgress) if e.outcome is Outcome.COMPLETED],
                         what="STOP_CHARGING completed")
    run(body)


# ==== K. Smart charging ==============================================================================

@pytest.mark.parametrize("version", VERSIONS)
def test_tc_056_csms_and_k01_tx_default_profile(version: str) -> None:
    """1.6 TC_056_CSMS / 2.0.1 use case K01 (no CSMS case id found): with no transaction, a charge rate
    is a TxDefaultProfile for the configured connector/EVSE, without a transactionId, one period from 0."""
    async def body() -> None:
        async with Csms(version) as csms, csms.charger() as cp:
            await csms.online(cp)
            command = csms.command(CommandType.SET_CHARGE_RATE, 11.0)
            uid, req = await cp.expect("SetChargingProfile")
            await cp.reply(uid, "SetChargingProfile", {"status": "Accepted"})
            assert (await command).outcome is Outcome.COMPLETED
            if version == "1.6":
                target, profile, schedule = req["connectorId"], req["csChargingProfiles"], \
                    req["csChargingProfiles"]["chargingSchedule"]
            else:
                target, profile = req["evseId"], req["chargingProfile"]
                schedule = profile["chargingSchedule"][0]
            assert target == 1 and profile["chargingProfilePurpose"] == "TxDefaultProfile"
            assert "transactionId" not in profile and "recurrencyKind" not in profile
            assert schedule["chargingSchedulePeriod"][0]["startPeriod"] == 0
            assert float(schedule["chargingSchedulePeriod"][0]["limit"]) == 11000.0
    run(body)


@pytest.mark.parametrize("version", VERSIONS)
def test_tc_057_csms_and_k02_tx_profile(version: str) -> None:
    """1.6 TC_057_CSMS / 2.0.1 use case K02: during a transaction a charge rate is a TxProfile naming the
    transaction id, no recurrencyKind, Absolute with a startSchedule (the draft OCTT document also asks
    an Absolute TxProfile for validFrom, validTo and duration: not sent, see the README)."""
    async def body() -> None:
        async with Csms(version) as csms, csms.charger() as cp:
            await csms.online(cp)
            tx = await charging(csms, cp)
            command = csms.command(CommandType.SET_CHARGE_RATE, 7.4)
            uid, req = await cp.expect("SetChargingProfile")
            await cp.reply(uid, "SetChargingProfile", {"status": "Accepted"})
            assert (await command).outcome is Outcome.COMPLETED
            profile = req["csChargingProfiles"] if version == "1.6" else req["chargingProfile"]
            schedule = profile["chargingSchedule"] if version == "1.6" else profile["chargingSchedule"][0]
            assert profile["chargingProfilePurpose"] == "TxProfile" and profile["transactionId"] == tx
            assert "recurrencyKind" not in profile and profile["chargingProfileKind"] == "Absolute"
            assert "startSchedule" in schedule
    run(body)


# ==== P. DataTransfer ================================================================================

@pytest.mark.parametrize("version", VERSIONS)
def test_tc_064_and_tc_p_02_csms_data_transfer_unknown_vendor(version: str) -> None:
    """1.6 TC_064_CSMS / 2.0.1 TC_P_02_CSMS: a DataTransfer of a vendor the central system does not know
    is answered with a DataTransfer answer, status UnknownVendorId (not a CALLERROR)."""
    async def body() -> None:
        async with Csms(version) as csms, csms.charger() as cp:
            await csms.online(cp)
            conf = await cp.call("DataTransfer", {"vendorId": "com.example.octt", "messageId": "Probe",
                                                  "data": "hello"})
            assert conf == {"status": "UnknownVendorId"}
    run(body)


@pytest.mark.parametrize("version", VERSIONS)
def test_data_transfer_vendor_hook(version: str) -> None:
    """Own case: a vendor's own DataTransfer goes to its handler (vendorId compared without regard to case);
    a handler that raises is answered Rejected."""
    seen: list[tuple[str, Any, Any]] = []

    def acme(cp_id: str, message_id: str | None, data: Any) -> tuple[str, Any]:
        seen.append((cp_id, message_id, data))
        return ("Accepted", {"ok": True}) if message_id == "Temp" else ("UnknownMessageId", None)

    def broken(cp_id: str, message_id: str | None, data: Any) -> str:
        raise RuntimeError("vendor bug")

    async def body() -> None:
        async with Csms(version, data_transfer={"com.acme": acme, "com.broken": broken}) as csms, \
                csms.charger() as cp:
            await csms.online(cp)
            conf = await cp.call("DataTransfer", {"vendorId": "COM.ACME", "messageId": "Temp", "data": "21.5"})
            assert conf["status"] == "Accepted"
            assert (json.loads(conf["data"]) if version == "1.6" else conf["data"]) == {"ok": True}
            assert (await cp.call("DataTransfer", {"vendorId": "com.acme", "messageId": "X"})) == {
                "status": "UnknownMessageId"}
            assert (await cp.call("DataTransfer", {"vendorId": "com.broken"})) == {"status": "Rejected"}
            assert seen == [("CP1", "Temp", "21.5"), ("CP1", "X", None)]
    run(body)


# ==== unknown and malformed messages (OCPP-J 1.6 §4.2.3 Table 7, 2.0.1 §4.3 Table 8) ==================

@pytest.mark.parametrize("version", VERSIONS)
def test_unknown_action_is_not_implemented(version: str) -> None:
    """An action the version does not define: CALLERROR NotImplemented "Requested Action is not known by
    receiver" (the ``ocpp`` library would answer NotSupported); the connection stays usable."""
    async def body() -> None:
        async with Csms(version) as csms, csms.charger() as cp:
            await csms.online(cp)
            frame = await cp.send_raw(json.dumps([2, "cp-50", "Probe", {"x": 1}]), "cp-50")
            assert frame == [4, "cp-50", "NotImplemented", "Requested Action is not known by receiver", {}]
            other = "TransactionEvent" if version == "1.6" else "StartTransaction"  # the other version's action
            frame = await cp.send_raw(json.dumps([2, "cp-51", other, {}]), "cp-51")
            assert frame[2] == "NotImplemented"
            assert "currentTime" in await cp.heartbeat()
    run(body)


@pytest.mark.parametrize("version", VERSIONS)
def test_known_action_not_supported_here(version: str) -> None:
    """An action the version defines but that a central system does not receive (a charger sending
    RemoteStartTransaction / RequestStartTransaction): NotSupported "Requested Action is recognized but
    not supported by the receiver"."""
    async def body() -> None:
        async with Csms(version) as csms, csms.charger() as cp:
            await csms.online(cp)
            action = "RemoteStartTransaction" if version == "1.6" else "RequestStartTransaction"
            frame = await cp.send_raw(json.dumps([2, "cp-52", action, {}]), "cp-52")
            assert frame == [4, "cp-52", "NotSupported",
                             "Requested Action is recognized but not supported by the receiver", {}]
    run(body)


INVALID_PAYLOADS = {  # (action, payload) per version and what is wrong
    "extra-property": {"1.6": ("Heartbeat", {"unexpected": 1}), "2.0.1": ("Heartbeat", {"unexpected": 1})},
    "wrong-type": {"1.6": ("Authorize", {"idTag": 5}),
                   "2.0.1": ("Authorize", {"idToken": {"idToken": 5, "type": "ISO14443"}})},
}


@pytest.mark.parametrize("version, problem, code", [
    ("1.6", "extra-property", "FormationViolation"), ("2.0.1", "extra-property", "FormatViolation"),
    ("1.6", "wrong-type", "TypeConstraintViolation"), ("2.0.1", "wrong-type", "TypeConstraintViolation"),
])
def test_invalid_payload_is_answered_with_the_versions_error_code(version: str, problem: str, code: str) -> None:
    """A payload against its schema is answered with the error code as the version spells it: OCPP-J 1.6
    Table 7 has FormationViolation, 2.0.1 FormatViolation (the ``ocpp`` library sends FormatViolation for
    both); the connection stays usable."""
    async def body() -> None:
        async with Csms(version) as csms, csms.charger() as cp:
            await csms.online(cp)
            action, payload = INVALID_PAYLOADS[problem][version]
            frame = await cp.send_raw(json.dumps([2, "bad-1", action, payload]), "bad-1")
            assert frame[:3] == [4, "bad-1", code], frame
            assert "currentTime" in await cp.heartbeat()
    run(body)


@pytest.mark.parametrize("version", VERSIONS)
def test_malformed_frames(version: str) -> None:
    """Frames that are not OCPP-J: not JSON (1.6 FormationViolation, 2.0.1 FormatViolation), a CALL
    without its payload (ProtocolError / RpcFrameworkError), a 2.0.1 unknown message type
    (MessageTypeNotSupported); 1.6 ignores a message type it does not know. The connection stays open."""
    async def body() -> None:
        async with Csms(version) as csms, csms.charger() as cp:
            await csms.online(cp)
            frame = await cp.send_raw('[2, "m-1", "Heartbeat", {', "m-1")
            assert frame[2] == ("FormationViolation" if version == "1.6" else "FormatViolation")
            frame = await cp.send_raw('[2, "m-2", "Heartbeat"]', "m-2")
            assert frame[2] == ("ProtocolError" if version == "1.6" else "RpcFrameworkError")
            if version == "2.0.1":
                frame = await cp.send_raw('[7, "m-3", "Heartbeat", {}]', "m-3")
                assert frame[2] == "MessageTypeNotSupported"
            else:
                assert cp.ws is not None
                await cp.ws.send('[7, "m-3", "Heartbeat", {}]')  # ignored: the next answer is the Heartbeat's
            assert "currentTime" in await cp.heartbeat()
    run(body)


# ==== reconnect and reboot ===========================================================================

@pytest.mark.parametrize("version", VERSIONS)
def test_reconnect_without_boot_reannounces_the_transaction(version: str) -> None:
    """Own case (OCPP-J: a charger that loses its connection reconnects without a BootNotification; 2.0.1
    B04): the central system takes it back online, asks it to re-announce (1.6 TriggerMessage MeterValues
    and StatusNotification, 2.0.1 TriggerMessage TransactionEvent), and the link reports a reconnect so
    that the site re-sends its target."""
    async def body() -> None:
        async with Csms(version) as csms:
            async with csms.charger() as cp:
                await csms.online(cp)
                await charging(csms, cp)
                await cp.close(abort=True)
            await settle(lambda: not csms.cs.charge_point("CP1").connected, what="disconnected")
            async with csms.charger() as cp:
                await cp.heartbeat()
                wanted = {"MeterValues", "StatusNotification"} if version == "1.6" else {"TransactionEvent"}
                await settle(lambda: wanted <= {p["requestedMessage"] for p in cp.calls_of("TriggerMessage")},
                             what="TriggerMessage re-announce")
                await settle(lambda: [e for e in csms.of(LinkUp) if e.rebooted], what="LinkUp(rebooted)")
                assert [e for e in csms.of(LinkUp) if e.rebooted][0].reason == "reconnected"
    run(body)


def test_tc_032_1_csms_power_failure_boot_stops_transaction() -> None:
    """1.6 TC_032_1_CSMS (reboot during a transaction): after a power failure the charger boots
    (Accepted), reports Finishing, and sends StopTransaction reason PowerLoss for the old transaction,
    which is answered and ends it; the link reports the reboot (the site re-sends its target)."""
    async def body() -> None:
        ended: list[Any] = []
        async with Csms("1.6") as csms:
            csms.cs.register_listener("CP1", lambda e: isinstance(e, TransactionEnded) and ended.append(e))
            async with csms.charger() as cp:
                await csms.online(cp)
                tx = await charging(csms, cp)
                await cp.close(abort=True)
            async with csms.charger() as cp:
                assert (await cp.boot())["status"] == "Accepted"
                await cp.status("Finishing")
                assert await cp.call("StopTransaction", {"transactionId": tx, "meterStop": 900, "timestamp": now(),
                                                         "reason": "PowerLoss"}) == {}
                await settle(lambda: ended, what="TransactionEnded")
                assert ended[0].transaction_id == tx and ended[0].reason == "PowerLoss"
                await settle(lambda: [e for e in csms.of(LinkUp) if e.rebooted and e.reason == "rebooted"],
                             what="LinkUp(rebooted)")
    run(body)


def test_tc_b_27_csms_reset_with_ongoing_transaction() -> None:
    """2.0.1 TC_B_27_CSMS (the closest CSMS case found), station-wide: the CSMS sends Reset Immediate; the
    station answers Accepted, ends the transaction (ResetCommand, ImmediateReset), reboots and boots
    again (Accepted); the link reports the reboot."""
    async def body() -> None:
        async with Csms("2.0.1") as csms:
            async with csms.charger() as cp:
                await csms.online(cp)
                tx = await charging(csms, cp)
                reset = asyncio.create_task(csms.cs.call("CP1", call201.Reset(type="Immediate")))
                uid, req = await cp.expect("Reset")
                assert req == {"type": "Immediate"}
                await cp.reply(uid, "Reset", {"status": "Accepted"})
                assert (await reset).status == "Accepted"
                await cp.transaction_event("Ended", "ResetCommand", str(tx), 5, charging_state="EVConnected",
                                           stopped_reason="ImmediateReset")
                assert csms.cs.charge_point("CP1").transaction_on(1) is None
            async with csms.charger() as cp:
                assert (await cp.boot("RemoteReset"))["status"] == "Accepted"
                await settle(lambda: [e for e in csms.of(LinkUp) if e.rebooted], what="LinkUp(rebooted)")
    run(body)


# ==== security profile 2/3 messages ==================================================================

@pytest.mark.parametrize("version", VERSIONS)
def test_security_event_notification_and_sign_certificate_are_answered(version: str,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    """1.6 security whitepaper / 2.0.1 A04 and A02: SecurityEventNotification is answered (and logged:
    as in TC_077_CSMS / TC_078_CSMS steps 7-8 / 3-4); SignCertificate is answered Rejected (this central
    system signs no certificates), never dropped."""
    async def body() -> None:
        async with Csms(version) as csms, csms.charger() as cp:
            await csms.online(cp)
            with caplog.at_level(logging.WARNING, logger="protocols.ocpp.central_system"):
                assert await cp.call("SecurityEventNotification", {
                    "type": "InvalidCentralSystemCertificate" if version == "1.6" else "InvalidCsmsCertificate",
                    "timestamp": now(), "techInfo": "unknown CA"}) == {}
                conf = await cp.call("SignCertificate", {"csr": "-----BEGIN CERTIFICATE REQUEST-----\n..."})
            assert conf["status"] == "Rejected"
    run(body)
    assert any("security event" in r.getMessage() and "unknown CA" in r.getMessage() for r in caplog.records)
