"""The one private part of the ``ocpp`` library the central system relies on still works as assumed.

:mod:`protocols.ocpp.response_wait` replaces ``ChargePoint._get_specific_response``. These tests fail
loudly when the pinned library stops routing ``call`` through it, renames the response queue, or when
the replacement stops doing its two jobs: end a waiting call at once when the connection closes, and
skip a late answer to an earlier call that timed out.
"""

from __future__ import annotations

import asyncio
import inspect
import json

import pytest
from ocpp.charge_point import ChargePoint
from ocpp.v16 import call as call16
from websockets.asyncio.client import connect

from protocols.ocpp import CentralSystem
from protocols.ocpp.v16.central import ChargePoint16Connection
from runtime.core.errors import ChargerNotConnected

from .asyncsupport import run, settle


def test_the_library_still_waits_for_answers_through_get_specific_response():
    source = inspect.getsource(ChargePoint.call)
    assert "self._get_specific_response(" in source, "ocpp ChargePoint.call no longer calls _get_specific_response"
    assert list(inspect.signature(ChargePoint._get_specific_response).parameters) == ["self", "unique_id", "timeout"]
    assert "self._response_queue.put_nowait(msg)" in inspect.getsource(ChargePoint.route_message), \
        "ocpp ChargePoint.route_message no longer hands answers over through _response_queue"


def test_our_connection_classes_use_the_replacement():
    assert ChargePoint16Connection._get_specific_response is not ChargePoint._get_specific_response
    assert ChargePoint16Connection.__mro__.index(ChargePoint) > [
        c.__name__ for c in ChargePoint16Connection.__mro__].index("ClosingResponseWait")


async def _raw_charger(cs: CentralSystem, cp_id: str):  # a charger that answers only when told to
    ws = await connect(f"{cs.url}/{cp_id}", subprotocols=["ocpp1.6"])
    await settle(lambda: cs.charge_point(cp_id) is not None and cs.charge_point(cp_id).connected, what="connected")
    return ws


def test_a_call_waiting_for_its_answer_ends_when_the_connection_closes():
    async def body() -> None:
        async with CentralSystem(port=0) as cs:
            ws = await _raw_charger(cs, "CP-CLOSE")
            waiting = asyncio.create_task(cs.call("CP-CLOSE", call16.GetConfiguration(), timeout=30))
            frame = json.loads(await ws.recv())
            assert frame[0] == 2 and frame[2] == "GetConfiguration"
            await ws.close()
            with pytest.raises(ChargerNotConnected):  # not TimeoutError after 30 s
                await waiting
    run(body, timeout=20)


def test_a_late_answer_to_a_timed_out_call_is_skipped_and_the_next_call_gets_its_own():
    async def body() -> None:
        async with CentralSystem(port=0) as cs:
            ws = await _raw_charger(cs, "CP-LATE")
            first = asyncio.create_task(cs.call("CP-LATE", call16.GetConfiguration(), timeout=0.2))
            late_id = json.loads(await ws.recv())[1]
            with pytest.raises(TimeoutError):
                await first
            second = asyncio.create_task(cs.call("CP-LATE", call16.GetConfiguration(key=["HeartbeatInterval"])))
            frame = json.loads(await ws.recv())
            await ws.send(json.dumps([3, late_id, {"configurationKey": [{"key": "Late", "readonly": True}]}]))
            await ws.send(json.dumps([3, frame[1], {"configurationKey": [
                {"key": "HeartbeatInterval", "readonly": False, "value": "300"}]}]))
            result = await second
            assert result.configuration_key == [{"key": "HeartbeatInterval", "readonly": False, "value": "300"}]
            await ws.close()
    run(body, timeout=20)
