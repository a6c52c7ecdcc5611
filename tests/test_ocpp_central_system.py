"""The OCPP central system against the charge point simulator, over real sockets on 127.0.0.1.

Every test runs its own event loop (asyncio.run), ends with the server closed and no task left.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from protocols.ocpp import CentralSystem, ChargerNotConnected
from protocols.ocpp.central_system import charge_point_id_from_path
from protocols.ocpp.mapping import (OCPP16_STATUS, OCPP201_CHARGING_STATE, OCPP201_CONNECTOR_STATUS,
                                    state_for_201_connector_status, state_for_201_transaction_event)
from protocols.ocpp.meter import parse_meter_values
from protocols.ocpp.notifications import (ChargerOffline, ChargerOnline, ConnectorStatus, MeterReading,
                                          TransactionEnded, TransactionStarted)
from protocols.ocpp.records import parse_rate_unit
from protocols.sim.chargepoint import ChargePointSim
from protocols.sim.fleet import fleet_ids, start_fleet
from runtime.core.statemachine import EVChargerState

VERSIONS = ["1.6", "2.0.1"]
pytestmark = [pytest.mark.timeout(30), pytest.mark.usefixtures("no_leaks")]  # no_leaks: tests/conftest.py


from .asyncsupport import run, settle, yield_to_loop  # noqa: E402  (shared harness)


class Bench:
    """A started CentralSystem plus the simulators of one test; stops everything on exit."""

    def __init__(self, **cs_kw: Any) -> None:
        cs_kw.setdefault("response_timeout", 2.0)
        self.cs = CentralSystem("127.0.0.1", 0, **cs_kw)
        self.sims: list[ChargePointSim] = []

    async def __aenter__(self) -> "Bench":
        await self.cs.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        for sim in self.sims:
            await sim.stop()
        await self.cs.stop()
        assert not self.cs.running

    def sim(self, cp_id: str, version: str, **kw: Any) -> ChargePointSim:
        kw.setdefault("meter_interval", 0)
        kw.setdefault("response_timeout", 2.0)
        sim = ChargePointSim(cp_id, self.cs.url, version, **kw)
        self.sims.append(sim)
        return sim

    def listen(self, cp_id: str) -> list[Any]:
        events: list[Any] = []
        self.cs.register_listener(cp_id, events.append)
        return events

    async def online(self, cp_id: str, version: str, **kw: Any) -> tuple[list[Any], ChargePointSim]:
        """Listen to ``cp_id``, start its simulator and wait until the central system has it online."""
        events = self.listen(cp_id)
        sim = self.sim(cp_id, version, **kw)
        await sim.start()
        await settle(lambda: of(events, ChargerOnline), what=f"{cp_id} online")
        return events, sim


def of(events: list[Any], kind: type) -> list[Any]:
    return [e for e in events if isinstance(e, kind)]


# ---- pure helpers ------------------------------------------------------------------------------

def test_charge_point_id_from_path() -> None:
    assert charge_point_id_from_path("/CP1") == "CP1"
    assert charge_point_id_from_path("/ocpp/site-a/CP%2F7/") == "CP/7"
    assert charge_point_id_from_path("/ocpp/CP9?token=x") == "CP9"
    assert charge_point_id_from_path("/") == ""


def test_parse_rate_unit() -> None:
    assert parse_rate_unit("Current,Power") == "W"
    assert parse_rate_unit("Current") == "A"
    assert parse_rate_unit("A") == "A"
    assert parse_rate_unit("A,W") == "W"
    assert parse_rate_unit("Power") == "W"
    assert parse_rate_unit("") is None
    assert parse_rate_unit("Volt") is None


def test_parse_meter_values_units_phases_and_multipliers() -> None:
    mv16 = [{"timestamp": "t", "sampled_value": [
        {"value": "2.5", "measurand": "Power.Active.Import", "unit": "kW"},
        {"value": "1500", "unit": "Wh"},  # default measurand: energy
    ]}]
    assert parse_meter_values(mv16) == (2.5, 1.5)
    phases = [{"timestamp": "t", "sampled_value": [
        {"value": "1000", "measurand": "Power.Active.Import", "unit": "W", "phase": phase} for phase in
        ("L1", "L2", "L3")]}]
    assert parse_meter_values(phases) == (3.0, None)
    mv201 = [{"timestamp": "t", "sampled_value": [
        {"value": 7.4, "measurand": "Power.Active.Import", "unit_of_measure": {"unit": "W", "multiplier": 3}},
        {"value": 12.0, "measurand": "Energy.Active.Import.Register", "unit_of_measure": {"unit": "kWh"}},
        {"value": 230.0, "measurand": "Voltage"},
    ]}]
    assert parse_meter_values(mv201) == (7.4, 12.0)
    assert parse_meter_values([]) == (None, None)


def test_status_mapping_covers_every_ocpp_value() -> None:
    names = {s.name for s in EVChargerState}
    assert set(OCPP16_STATUS) == {"Available", "Preparing", "Charging", "SuspendedEVSE", "SuspendedEV", "Finishing",
                                  "Reserved", "Unavailable", "Faulted"}
    assert set(OCPP201_CONNECTOR_STATUS) == {"Available", "Occupied", "Reserved", "Unavailable", "Faulted"}
    assert set(OCPP201_CHARGING_STATE) == {"Charging", "EVConnected", "SuspendedEV", "SuspendedEVSE", "Idle"}
    for table in (OCPP16_STATUS, OCPP201_CONNECTOR_STATUS, OCPP201_CHARGING_STATE):
        assert set(table.values()) <= names
    assert OCPP16_STATUS["SuspendedEV"] == OCPP16_STATUS["SuspendedEVSE"] == "SUSPENDED"
    assert state_for_201_connector_status("Occupied") == "PREPARING"
    assert state_for_201_connector_status("Occupied", transaction_active=True, charging_state="Charging") == "CHARGING"
    assert state_for_201_transaction_event("Ended", "EVConnected") == "FINISHING"
    assert state_for_201_transaction_event("Ended", "Idle") == "AVAILABLE"
    assert state_for_201_transaction_event("Ended", None, connector_occupied=False) == "AVAILABLE"
    assert state_for_201_transaction_event("Updated", None) is None
    import protocols.ocpp.mapping as mapping
    for value in (*OCPP16_STATUS, *OCPP201_CONNECTOR_STATUS, *OCPP201_CHARGING_STATE):
        assert f"| {value} " in mapping.__doc__  # the README table lists every value


# ---- boot, status, registry ------------------------------------------------------------------------

@pytest.mark.parametrize("version", VERSIONS)
def test_boot_registers_and_reports_status(version: str) -> None:
    async def body() -> None:
        async with Bench() as b:
            events = b.listen("CP1")
            sim = b.sim("CP1", version)
            await sim.start()
            assert sim.boot_status == "Accepted"
            await settle(lambda: of(events, ChargerOnline), what="ChargerOnline")
            online = of(events, ChargerOnline)[0]
            assert (online.version, online.rebooted, online.reason, online.rate_unit) == (version, False, "booted", "W")
            rec = b.cs.charge_point("CP1")
            assert rec is not None and rec.online and rec.version == version and rec.rate_unit_known
            assert b.cs.online_ids() == ["CP1"]
            await settle(lambda: of(events, ConnectorStatus), what="status")
            st = of(events, ConnectorStatus)[0]
            assert (st.connector, st.state, st.raw) == (1, "AVAILABLE", "Available")
            # The rate unit was read with the version's standard configuration item.
            assert sim.calls[0].action == ("GetConfiguration" if version == "1.6" else "GetVariables")
    run(body)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("unit, expected", [("A", "A"), ("A,W", "W")])
def test_rate_unit_is_read_after_boot(version: str, unit: str, expected: str) -> None:
    async def body() -> None:
        async with Bench() as b:
            events, _ = await b.online("CPU", version, accepted_unit=unit)
            assert of(events, ChargerOnline)[0].rate_unit == expected
            assert b.cs.charge_point("CPU").rate_unit == expected
    run(body)


@pytest.mark.parametrize("version", VERSIONS)
def test_transactions_meter_values_and_disconnect(version: str) -> None:
    async def body() -> None:
        async with Bench() as b:
            events, sim = await b.online("CPT", version)
            tx = await sim.start_transaction()
            await settle(lambda: of(events, TransactionStarted), what="TransactionStarted")
            started = of(events, TransactionStarted)[0]
            assert (started.connector, str(started.transaction_id)) == (1, str(tx))
            assert str(b.cs.charge_point("CPT").transaction_on(1)) == str(tx)
            await settle(lambda: any(e.power_kw == 22.0 for e in of(events, MeterReading)), what="meter")
            await settle(lambda: b.cs.charge_point("CPT").states[1][0] == "CHARGING", what="CHARGING")
            await sim.stop_transaction()
            await settle(lambda: of(events, TransactionEnded), what="TransactionEnded")
            assert str(of(events, TransactionEnded)[0].transaction_id) == str(tx)
            assert b.cs.charge_point("CPT").transaction_on(1) is None
            await sim.stop()
            await settle(lambda: of(events, ChargerOffline), what="ChargerOffline")
            assert not b.cs.charge_point("CPT").online
            with pytest.raises(ChargerNotConnected):
                await b.cs.call("CPT", object())
    run(body)


@pytest.mark.parametrize("version", VERSIONS)
def test_newest_connection_replaces_the_older_one(version: str) -> None:
    async def body() -> None:
        async with Bench() as b:
            events, first = await b.online("CPR", version)
            old = b.cs.charge_point("CPR").connection
            second = b.sim("CPR", version)
            await second.start()
            await settle(lambda: not first.connected, what="old connection closed")
            await settle(lambda: len(of(events, ChargerOnline)) == 2, what="second ChargerOnline")
            assert of(events, ChargerOffline)[0].reason == "replaced by a new connection"
            assert of(events, ChargerOnline)[1].rebooted
            rec = b.cs.charge_point("CPR")
            assert rec.online and b.cs.connected_ids() == ["CPR"]
            await settle(lambda: old._closed and not old._tasks, what="the old connection's end")
            await yield_to_loop()
            assert rec.online and len(of(events, ChargerOffline)) == 1  # its end did not take the new one offline
    run(body)


def test_stop_closes_every_connection_and_task() -> None:
    async def body() -> None:
        b = Bench()
        async with b:
            fleet = await start_fleet(b.cs.url, 5, "1.6", "F", meter_interval=0.05, response_timeout=2)
            assert len(fleet) == 5 and not fleet.failed
            await settle(lambda: len(b.cs.online_ids()) == 5, what="fleet online")
            assert sorted(b.cs.online_ids()) == fleet_ids(5, "F")
            await b.cs.stop()
            await settle(lambda: not any(s.connected for s in fleet.sims), what="sims disconnected")
            await fleet.stop()
    run(body)


# ---- handshake: subprotocol, auth, allow-list, Pending ---------------------------------------------

@pytest.mark.parametrize("offered", [["ocpp2.0"], None])
def test_client_without_a_supported_subprotocol_is_refused(offered: list[str] | None,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    async def body() -> None:
        async with Bench() as b:
            with caplog.at_level(logging.WARNING, logger="protocols.ocpp.central_system"):
                with pytest.raises(InvalidStatus) as err:
                    async with connect(f"{b.cs.url}/CPX", subprotocols=offered, open_timeout=2):
                        pass
            assert err.value.response.status_code == 400
            assert b.cs.charge_point("CPX") is None
    run(body)
    msgs = [r.getMessage() for r in caplog.records if "refusing charge point" in r.getMessage()]
    assert msgs and "'CPX'" in msgs[0] and ("ocpp2.0" in msgs[0] if offered else "(none)" in msgs[0])


@pytest.mark.parametrize("version", VERSIONS)
def test_basic_auth(version: str) -> None:
    async def body() -> None:
        async with Bench(basic_auth={"CPA": "s3cret", "CPB": "other"}) as b:
            events, _ = await b.online("CPA", version, password="s3cret")
            with pytest.raises(InvalidStatus) as err:
                await b.sim("CPB", version, password="wrong").start()
            assert err.value.response.status_code == 401
            with pytest.raises(InvalidStatus) as err:
                await b.sim("CPB", version).start()  # no credentials
            assert err.value.response.status_code == 401
            with pytest.raises(InvalidStatus) as err:
                await b.sim("CPC", version, password="s3cret").start()  # no password configured for CPC
            assert err.value.response.status_code == 401
            # A username that is not the charge point id is refused even with a right password.
            token = base64.b64encode(b"CPA:other").decode()
            with pytest.raises(InvalidStatus) as err:
                async with connect(f"{b.cs.url}/CPB", subprotocols=["ocpp1.6"],
                                   additional_headers={"Authorization": f"Basic {token}"}, open_timeout=2):
                    pass
            assert err.value.response.status_code == 401
            assert err.value.response.headers.get("WWW-Authenticate", "").startswith("Basic")
    run(body)


@pytest.mark.parametrize("version", VERSIONS)
def test_allow_list(version: str) -> None:
    async def body() -> None:
        async with Bench(allow_ids={"CPOK"}) as b:
            sim = b.sim("CPOK", version)
            await sim.start()
            assert sim.boot_status == "Accepted"  # listed ids are known: Accepted
            with pytest.raises(InvalidStatus) as err:
                await b.sim("CPNO", version).start()
            assert err.value.response.status_code == 404
            assert b.cs.charge_point("CPNO") is None
    run(body)


@pytest.mark.parametrize("version", VERSIONS)
def test_unknown_boot_pending_until_a_listener_registers(version: str) -> None:
    async def body() -> None:
        async with Bench(unknown_boot="Pending", pending_interval=60) as b:
            known_events = b.listen("KNOWN")
            known = b.sim("KNOWN", version)
            await known.start()
            assert known.boot_status == "Accepted"
            sim = b.sim("STRANGER", version)
            await sim.start()
            assert sim.boot_status == "Pending" and sim.heartbeat_interval == 60
            rec = b.cs.charge_point("STRANGER")
            assert rec.registration == "Pending" and not rec.online
            events = b.listen("STRANGER")  # now known: TriggerMessage(BootNotification) -> boots again
            await settle(lambda: of(events, ChargerOnline), what="ChargerOnline after TriggerMessage")
            assert sim.boot_status == "Accepted" and rec.online
            assert sim.calls_of("TriggerMessage")[0].payload["requested_message"] == "BootNotification"
            assert of(known_events, ChargerOnline)
    run(body)


# ---- calls through the central system, and the simulator's other handlers ---------------------------

@pytest.mark.parametrize("version", VERSIONS)
def test_reset_and_clear_charging_profile_through_cs_call(version: str) -> None:
    from ocpp.v16 import call as call16
    from ocpp.v201 import call as call201

    async def body() -> None:
        async with Bench() as b:
            events, sim = await b.online("CPC", version)
            if version == "1.6":
                profile = {"charging_profile_id": 5, "stack_level": 0, "charging_profile_purpose": "TxDefaultProfile",
                           "charging_profile_kind": "Relative", "charging_schedule": {
                               "charging_rate_unit": "W", "charging_schedule_period": [{"start_period": 0, "limit": 3000.0}]}}
                res = await b.cs.call("CPC", call16.SetChargingProfile(connector_id=1, cs_charging_profiles=profile))
                assert res.status == "Accepted" and sim.limit_w == 3000.0
                res = await b.cs.call("CPC", call16.ClearChargingProfile(id=5))
                assert res.status == "Accepted" and sim.limit_w is None
                res = await b.cs.call("CPC", call16.ClearChargingProfile(id=5))
                assert res.status == "Unknown"
                res = await b.cs.call("CPC", call16.Reset(type="Soft"))
            else:
                res = await b.cs.call("CPC", call201.ClearChargingProfile(charging_profile_id=9))
                assert res.status == "Unknown"
                res = await b.cs.call("CPC", call201.Reset(type="Immediate"))
            assert res.status == "Accepted"
            await settle(lambda: len(of(events, ChargerOnline)) == 2, what="online after Reset")
            assert of(events, ChargerOnline)[1].rebooted and sim.boots == 2
            assert of(events, ChargerOffline)
    run(body)


def test_sim_cli_runs_a_fleet_until_sigterm() -> None:
    import signal
    import sys

    async def body() -> None:
        async with Bench() as b:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "runtime.cli", "sim", "ocpp", "--count", "3", "--url", b.cs.url,
                "--version", "2.0.1", "--id-prefix", "CLI", "--meter-interval", "0", "--log-level", "WARNING")
            try:
                await settle(lambda: len(b.cs.online_ids()) == 3, timeout=15, what="3 CLI charge points online")
                assert sorted(b.cs.online_ids()) == ["CLI0001", "CLI0002", "CLI0003"]
                proc.send_signal(signal.SIGTERM)
                assert await asyncio.wait_for(proc.wait(), 10) == 0
            finally:
                if proc.returncode is None:  # pragma: no cover
                    proc.kill()
                    await proc.wait()
            await settle(lambda: not b.cs.connected_ids(), what="CLI charge points disconnected")
    run(body, timeout=25)
