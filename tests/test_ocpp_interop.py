"""Interop: our central system + OcppChargerLink against a charge point we did not write.

The peer is ``tests/interop/ocpp_rpc_cp.js``, built on the npm package ``ocpp-rpc`` in strict mode: it
validates every call we send against the official OCPP 1.6 / 2.0.1 JSON schemas and answers an
invalid one with a CallError. Needs ``node`` (>= 17.3) and the package:

    npm install --prefix tests/interop ocpp-rpc
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from protocols.base import CommandProgress, DeviceContext, LinkUp, Outcome, StatusReport
from protocols.ocpp import CentralSystem, OcppChargerLink
from runtime.core.clock import RealClock
from runtime.core.commands import Command, CommandType

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("no_leaks")]  # no_leaks: tests/conftest.py

INTEROP = Path(__file__).resolve().parent / "interop"
SCRIPT = INTEROP / "ocpp_rpc_cp.js"
INSTALL = "npm install --prefix tests/interop ocpp-rpc"


def _node_env() -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(INTEROP / "node_modules")] + ([env["NODE_PATH"]] if env.get("NODE_PATH") else [])
    env["NODE_PATH"] = os.pathsep.join(paths)
    return env


def _peer_missing() -> str | None:
    node = shutil.which("node")
    if node is None:
        return f"node is not installed (install Node.js >= 17.3, then: {INSTALL})"
    try:
        probe = subprocess.run([node, "-e", "require('ocpp-rpc')"], env=_node_env(), cwd=INTEROP,
                               capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:  # pragma: no cover
        return f"cannot run node: {exc}"
    if probe.returncode != 0:
        return f"the npm package ocpp-rpc is missing (run: {INSTALL})"
    return None


_MISSING = _peer_missing()


class Peer:
    """The node charge point as a subprocess; its JSON lines are collected in :attr:`lines`."""

    def __init__(self, url: str, protocol: str, unit: str = "W") -> None:
        self.args = [shutil.which("node") or "node", str(SCRIPT), url, "--protocol", protocol, "--unit", unit]
        self.lines: list[dict[str, Any]] = []
        self.stderr = b""

    async def __aenter__(self) -> "Peer":
        self.proc = await asyncio.create_subprocess_exec(
            *self.args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=_node_env(), cwd=str(INTEROP))
        self._reader = asyncio.get_running_loop().create_task(self._read())
        return self

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            try:
                self.lines.append(json.loads(raw))
            except ValueError:
                self.lines.append({"event": "unparsed", "text": raw.decode(errors="replace")})

    async def __aexit__(self, *exc: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), 10)
        except asyncio.TimeoutError:  # pragma: no cover
            self.proc.kill()
            await self.proc.wait()
        await asyncio.wait_for(self._reader, 5)
        assert self.proc.stderr is not None
        self.stderr = await self.proc.stderr.read()

    def events(self, name: str) -> list[dict[str, Any]]:
        return [line for line in self.lines if line.get("event") == name]

    def calls(self, method: str) -> list[dict[str, Any]]:
        return [line["params"] for line in self.events("call") if line.get("method") == method]

    async def wait_for(self, pred: Any, what: str, timeout: float = 10.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not pred():
            if loop.time() > deadline or self.proc.returncode is not None:
                raise AssertionError(f"node peer: no {what}; lines={self.lines} stderr={self.stderr!r}")
            await asyncio.sleep(0.02)


def cmd(kind: CommandType, value: float = 0.0, n: list[int] = [0]) -> Command:  # noqa: B006
    n[0] += 1
    return Command(f"interop-{n[0]}", "ev-node", kind, value, datetime.now(timezone.utc))


@pytest.mark.parametrize("protocol, version", [("ocpp1.6", "1.6"), ("ocpp2.0.1", "2.0.1")])
@pytest.mark.parametrize("unit", ["W", "A"])
def test_ocpp_rpc_strict_peer_accepts_our_calls(protocol: str, version: str, unit: str) -> None:
    if _MISSING is not None:  # not a skip: the README's set-up command installs the peer
        pytest.fail(f"{_MISSING} (the set-up command `bash tests/setup.sh` installs it)")

    async def body() -> None:
        cs = CentralSystem("127.0.0.1", 0, response_timeout=5.0)
        await cs.start()
        clock = RealClock()
        events: list[Any] = []
        link = OcppChargerLink("NODE1", call_timeout=5.0, voltage=230.0, phases=3)
        try:
            await link.start(DeviceContext(asyncio.get_running_loop(), clock, {"ocpp": cs}), events.append)
            async with Peer(f"{cs.url}/NODE1", protocol, unit) as peer:
                await peer.wait_for(lambda: peer.events("ready"), "ready")
                assert peer.events("connected")[0]["protocol"] == protocol
                assert peer.events("boot")[0]["status"] == "Accepted"
                loop = asyncio.get_running_loop()
                deadline = loop.time() + 10
                while not any(isinstance(e, LinkUp) for e in events):
                    assert loop.time() < deadline, f"no LinkUp: {events} {peer.lines}"
                    await asyncio.sleep(0.02)
                assert cs.charge_point("NODE1").rate_unit == unit
                assert any(isinstance(e, StatusReport) and e.state == "AVAILABLE" for e in events)

                # TxDefaultProfile (no transaction yet)
                res = await link.execute(cmd(CommandType.SET_CHARGE_RATE, 7.4))
                assert res.outcome is Outcome.COMPLETED, (res, peer.lines)
                await peer.wait_for(lambda: peer.calls("SetChargingProfile"), "SetChargingProfile")
                limit = 7400.0 if unit == "W" else 10.7
                _check_profile(peer.calls("SetChargingProfile")[0], version, "TxDefaultProfile", unit, limit)

                # Remote start -> the peer starts a transaction -> TxProfile for it
                start = cmd(CommandType.START_CHARGING)
                res = await link.execute(start)
                assert res.outcome in (Outcome.ACKNOWLEDGED, Outcome.COMPLETED), (res, peer.lines)
                await peer.wait_for(lambda: peer.events("transaction"), "transaction")
                while cs.charge_point("NODE1").transaction_on(1) is None:
                    assert loop.time() < deadline + 10
                    await asyncio.sleep(0.02)
                if res.outcome is Outcome.ACKNOWLEDGED:
                    while CommandProgress(start.command_id, Outcome.COMPLETED) not in events:
                        assert loop.time() < deadline + 10
                        await asyncio.sleep(0.02)
                res = await link.execute(cmd(CommandType.SET_CHARGE_RATE, 3.0))
                assert res.outcome is Outcome.COMPLETED, (res, peer.lines)
                await peer.wait_for(lambda: len(peer.calls("SetChargingProfile")) == 2, "second SetChargingProfile")
                tx = peer.events("transaction")[0]["transactionId"]
                sent = _check_profile(peer.calls("SetChargingProfile")[1], version, "TxProfile", unit,
                                      3000.0 if unit == "W" else 4.3)
                assert sent["transactionId"] == tx

                # Station cap, availability and remote stop payloads pass the strict schemas too.
                assert (await link.execute(cmd(CommandType.SET_POWER_LIMIT, 11))).outcome is Outcome.COMPLETED
                assert (await link.execute(cmd(CommandType.CHANGE_AVAILABILITY, 1))).outcome is Outcome.COMPLETED
                res = await link.execute(cmd(CommandType.STOP_CHARGING))
                assert res.outcome in (Outcome.ACKNOWLEDGED, Outcome.COMPLETED), (res, peer.lines)
                stop_method = "RemoteStopTransaction" if version == "1.6" else "RequestStopTransaction"
                await peer.wait_for(lambda: peer.calls(stop_method), stop_method)
                assert not peer.events("strictValidationFailure"), peer.events("strictValidationFailure")
                assert not peer.events("error"), peer.events("error")
        finally:
            await link.stop()
            await cs.stop()
            clock.stop()

    async def main() -> None:
        await asyncio.wait_for(body(), 45)
        await asyncio.sleep(0)
        leftover = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        assert not leftover, f"leaked tasks: {leftover}"

    asyncio.run(main())


def _check_profile(params: dict[str, Any], version: str, purpose: str, unit: str, limit: float) -> dict[str, Any]:
    """Assert one SetChargingProfile as the peer received it (camelCase JSON); returns the profile."""
    if version == "1.6":
        profile = params["csChargingProfiles"]
        schedule = profile["chargingSchedule"]
        assert params["connectorId"] == 1
    else:
        profile = params["chargingProfile"]
        assert params["evseId"] == 1 and isinstance(profile["chargingSchedule"], list)
        schedule = profile["chargingSchedule"][0]
        assert schedule["id"] == profile["id"]
    assert profile["chargingProfilePurpose"] == purpose
    assert schedule["chargingRateUnit"] == unit
    period = schedule["chargingSchedulePeriod"][0]
    assert period["startPeriod"] == 0
    assert period["limit"] == pytest.approx(limit)
    if unit == "A":
        assert period["numberPhases"] == 3
    return profile
