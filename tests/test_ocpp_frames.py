"""Bad OCPP-J frames from a charger: each gets the answer its version's RPC framework prescribes, and the
connection stays open and keeps working (a Heartbeat sent after the bad frame is answered).

A real :class:`~protocols.ocpp.CentralSystem` on 127.0.0.1 and a raw websocket client that sends the
frames as text. Where a version prescribes no answer (OCPP-J 1.6 for a frame whose unique id cannot be
read, or with a message type other than 2, 3, 4), the test checks that the central system logs a warning
naming the charger and that the next frame the charger receives is the answer to its Heartbeat.
"""

from __future__ import annotations

import inspect
import json
import logging
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

import pytest
from ocpp.charge_point import ChargePoint
from websockets.asyncio.client import ClientConnection, connect

from protocols.ocpp import CentralSystem
from protocols.ocpp.meter import parse_meter_values
from protocols.ocpp.v16.central import ChargePoint16Connection
from protocols.ocpp.v201.central import ChargePoint201Connection

from .asyncsupport import run, settle

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("no_leaks")]  # no_leaks: tests/conftest.py

VERSIONS = ["1.6", "2.0.1"]
CS_LOGGER = "protocols.ocpp.central_system"
DEEP = 100_000  # far beyond Python's recursion limit: json.loads raises RecursionError


@asynccontextmanager
async def raw_charger(version: str, cp_id: str = "CP1") -> AsyncIterator[ClientConnection]:
    """A started central system and a raw websocket connection to it as ``cp_id`` (no BootNotification)."""
    async with CentralSystem("127.0.0.1", 0, response_timeout=2.0) as cs:
        async with connect(f"{cs.url}/{cp_id}", subprotocols=[f"ocpp{version}"]) as ws:
            await settle(lambda: (rec := cs.charge_point(cp_id)) is not None and rec.connected,
                         what=f"{cp_id} connected")
            yield ws


async def next_frame(ws: ClientConnection) -> list[Any]:
    """The next frame the central system sends (bounded by the test's own timeout in ``run``)."""
    return json.loads(await ws.recv())


async def assert_heartbeat_answered(ws: ClientConnection) -> None:
    """The connection still works: a valid Heartbeat CALL gets its CALLRESULT, and it is the next frame."""
    await ws.send('[2,"hb-after","Heartbeat",{}]')
    frame = await next_frame(ws)
    assert frame[:2] == [3, "hb-after"] and "currentTime" in frame[2], frame


def warnings_naming(caplog: pytest.LogCaptureFixture, cp_id: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records
            if r.name == CS_LOGGER and r.levelno == logging.WARNING and cp_id in r.getMessage()]


# (frame, 1.6 answer, 2.0.1 answer); an answer is (unique id, error code) or None: not answered, logged.
BAD_FRAMES = [
    pytest.param('[2,"a5",["Heartbeat"],{}]', ("a5", "FormationViolation"), ("a5", "RpcFrameworkError"),
                 id="action-not-a-string"),
    pytest.param('[2,"a6",7,{}]', ("a6", "FormationViolation"), ("a6", "RpcFrameworkError"),
                 id="action-a-number"),
    pytest.param('[2,"d1","Heartbeat",' + "[" * DEEP + "]" * DEEP + "]", ("d1", "FormationViolation"),
                 ("d1", "FormatViolation"), id="payload-nested-100000-deep"),
    pytest.param("[" * DEEP + "]" * DEEP, None, ("-1", "RpcFrameworkError"), id="nested-100000-deep-no-id"),
    pytest.param('[2,"d2","Heartbeat",{"customData":{"vendorId":"v","x":' + "[" * 100 + "]" * 100 + "}}]",
                 ("d2", "FormationViolation"), ("d2", "FormatViolation"), id="nested-deeper-than-the-limit"),
    pytest.param('[2,"j1","Heartbeat",{]', ("j1", "FormationViolation"), ("j1", "FormatViolation"),
                 id="not-json"),
    pytest.param('[2,"n1","Heartbeat",{"x":' + "1" * 5000 + "}]", ("n1", "FormationViolation"),
                 ("n1", "FormatViolation"), id="integer-too-long-for-python"),
    pytest.param('[2,"s1","Heartbeat"]', ("s1", "ProtocolError"), ("s1", "RpcFrameworkError"),
                 id="call-without-payload"),
    pytest.param('[2,"s2","Heartbeat",{},{}]', ("s2", "FormationViolation"), ("s2", "RpcFrameworkError"),
                 id="call-with-five-elements"),
    pytest.param('[2,"p1","Heartbeat",[]]', ("p1", "FormationViolation"), ("p1", "ProtocolError"),
                 id="payload-not-an-object"),
    pytest.param('{"a": 1}', None, ("-1", "RpcFrameworkError"), id="not-a-list"),
    pytest.param("[]", None, ("-1", "RpcFrameworkError"), id="empty-list"),
    pytest.param('[2,5,"Heartbeat",{}]', None, ("-1", "RpcFrameworkError"), id="unique-id-not-a-string"),
    pytest.param('[7,"u1","Heartbeat",{}]', None, ("u1", "MessageTypeNotSupported"), id="unknown-message-type"),
    pytest.param("[7]", None, ("-1", "MessageTypeNotSupported"), id="unknown-message-type-no-id"),
    pytest.param('["2","t1","Heartbeat",{}]', None, ("t1", "RpcFrameworkError"), id="message-type-not-a-number"),
]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("frame, answer16, answer201", BAD_FRAMES)
def test_a_bad_frame_is_answered_as_the_version_prescribes_and_the_connection_stays(
        version: str, frame: str, answer16: tuple[str, str] | None, answer201: tuple[str, str] | None,
        caplog: pytest.LogCaptureFixture) -> None:
    expected = answer16 if version == "1.6" else answer201
    caplog.set_level(logging.WARNING, logger=CS_LOGGER)

    async def body() -> None:
        async with raw_charger(version) as ws:
            await ws.send(frame)
            if expected is not None:
                answer = await next_frame(ws)
                assert answer[0] == 4 and (answer[1], answer[2]) == expected, answer
                assert len(answer) == 5 and isinstance(answer[3], str) and isinstance(answer[4], dict), answer
            await assert_heartbeat_answered(ws)  # for an unanswered frame: proves nothing came before it
        assert warnings_naming(caplog, "CP1"), "the bad frame was not logged with the charger's id"
    run(body, timeout=30)


@pytest.mark.parametrize("version", VERSIONS)
def test_several_bad_frames_in_a_row_leave_the_connection_working(version: str) -> None:
    async def body() -> None:
        async with raw_charger(version) as ws:
            for i in range(3):
                await ws.send(f'[2,"bad{i}",["Heartbeat"],{{}}]')
                await ws.send(f'[2,"deep{i}","Heartbeat",' + "[" * DEEP + "]" * DEEP + "]")
            answers = [await next_frame(ws) for _ in range(6)]
            assert [a[:2] for a in answers] == [[4, f"{name}{i}"] for i in range(3) for name in ("bad", "deep")]
            await assert_heartbeat_answered(ws)
    run(body, timeout=30)


def test_an_error_while_the_library_handles_a_frame_leaves_the_connection_open(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Past the frame checks, whatever escapes the library (here an ``@after`` handler that fails) is logged;
    the receive loop goes on."""
    def broken(self: Any) -> None:
        raise RuntimeError("after-handler failed")
    monkeypatch.setattr(ChargePoint16Connection, "_after_boot", broken)
    caplog.set_level(logging.ERROR, logger=CS_LOGGER)

    async def body() -> None:
        async with raw_charger("1.6") as ws:
            await ws.send('[2,"b1","BootNotification",{"chargePointVendor":"V","chargePointModel":"M"}]')
            assert (await next_frame(ws))[:2] == [3, "b1"]
            await assert_heartbeat_answered(ws)
        assert any(r.exc_info and "after-handler failed" in str(r.exc_info[1]) for r in caplog.records)
    run(body, timeout=30)


# ---- meter values that overflow --------------------------------------------------------------------

def _meter_values_201(sampled_value: list[dict[str, Any]]) -> str:
    return json.dumps([2, "m1", "MeterValues", {"evseId": 1, "meterValue": [
        {"timestamp": "2026-01-01T08:00:00Z", "sampledValue": sampled_value}]}])


@pytest.mark.parametrize("sample", [
    pytest.param({"value": 1.0, "measurand": "Power.Active.Import",
                  "unitOfMeasure": {"unit": "W", "multiplier": 400}}, id="multiplier-400"),
    pytest.param({"value": 10 ** 400, "measurand": "Energy.Active.Import.Register"}, id="integer-value-1e400"),
])
def test_201_meter_values_whose_sample_overflows_are_answered_and_the_sample_ignored(
        sample: dict[str, Any], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=CS_LOGGER)

    async def body() -> None:
        async with raw_charger("2.0.1", "CP-MV") as ws:
            await ws.send(_meter_values_201([sample]))
            assert await next_frame(ws) == [3, "m1", {}]
            await assert_heartbeat_answered(ws)
        assert warnings_naming(caplog, "CP-MV"), "the ignored sample was not logged with the charger's id"
    run(body, timeout=30)


def test_parse_meter_values_ignores_samples_that_overflow_or_are_not_finite(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=CS_LOGGER)
    mv201 = [{"timestamp": "t", "sampled_value": [
        {"value": 1.0, "measurand": "Power.Active.Import", "unit_of_measure": {"unit": "W", "multiplier": 400}},
        {"value": 5.0, "measurand": "Energy.Active.Import.Register", "unit_of_measure": {"unit": "kWh"}},
    ]}]
    assert parse_meter_values(mv201, charger="CP9") == (None, 5.0)
    assert warnings_naming(caplog, "CP9")
    assert parse_meter_values([{"sampled_value": [{"value": 10 ** 400}]}]) == (None, None)
    assert parse_meter_values([{"sampled_value": [
        {"value": 2.0, "unit_of_measure": {"unit": "Wh", "multiplier": -400}}]}]) == (None, 0.0)  # underflow is 0
    mv16 = [{"timestamp": "t", "sampled_value": [
        {"value": "1e400", "measurand": "Power.Active.Import"},  # inf as a string
        {"value": "1e306", "measurand": "Energy.Active.Import.Register", "unit": "kWh"},  # inf once scaled to Wh
    ]}]
    assert parse_meter_values(mv16) == (None, None)
    phases = [{"timestamp": "t", "sampled_value": [
        {"value": "1e308", "measurand": "Power.Active.Import", "phase": p} for p in ("L1", "L2", "L3")]}]
    assert parse_meter_values(phases) == (None, None)  # each phase is finite, their sum is not
    assert parse_meter_values([{"sampled_value": [{"value": "NaN", "measurand": "Power.Active.Import"}]}]) == (
        None, None)


# ---- the hook ----------------------------------------------------------------------------------------

def test_every_frame_goes_through_the_connections_route_message():
    """The guard sits in ``route_message``: the library's receive loop must still call it for each frame."""
    assert "await self.route_message(message)" in inspect.getsource(ChargePoint.start), \
        "ocpp ChargePoint.start no longer hands every frame to route_message"
    for cls in (ChargePoint16Connection, ChargePoint201Connection):
        assert cls.route_message is not ChargePoint.route_message, f"{cls.__name__} does not guard its frames"
