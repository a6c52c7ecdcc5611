"""OcppChargerLink driven directly (no actors), against the charge point simulator over real sockets.

Each test runs its own loop (asyncio.run) and ends with the server closed and no task left.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
from datetime import datetime, timedelta, timezone
from typing import Any, AsyncIterator

import pytest

from protocols.base import (CommandProgress, DeviceContext, DeviceError, LinkDown, LinkUp, Outcome, StatusReport,
                            Telemetry)
from protocols.ocpp import CentralSystem, OcppChargerLink
from protocols.sim.chargepoint import ChargePointSim
from runtime.core.clock import RealClock
from runtime.core.commands import Command, CommandType

VERSIONS = ["1.6", "2.0.1"]
pytestmark = [pytest.mark.timeout(30), pytest.mark.usefixtures("no_leaks")]  # no_leaks: tests/conftest.py
_ids = itertools.count(1)


from .asyncsupport import run, settle  # noqa: E402  (shared harness)


def cmd(kind: CommandType, value: float = 0.0) -> Command:
    return Command(f"cmd-{next(_ids)}", "ev1", kind, value, datetime.now(timezone.utc))


class Rig:
    """CentralSystem + one OcppChargerLink (with a recording sink) + its simulator."""

    def __init__(self, version: str, *, cp_id: str = "CP1", link_kw: dict[str, Any] | None = None,
                 **sim_kw: Any) -> None:
        self.version = version
        self.cs = CentralSystem("127.0.0.1", 0, response_timeout=2.0, reconnect_grace=0.3)
        self.clock = RealClock()
        self.events: list[Any] = []
        self.link = OcppChargerLink(cp_id, **{"call_timeout": 1.0, **(link_kw or {})})
        sim_kw.setdefault("meter_interval", 0)
        sim_kw.setdefault("response_timeout", 2.0)
        self.cp_id = cp_id
        self._sim_kw = sim_kw
        self.sim: ChargePointSim | None = None

    async def __aenter__(self) -> "Rig":
        await self.cs.start()
        self.ctx = DeviceContext(asyncio.get_running_loop(), self.clock, {"ocpp": self.cs})
        await self.link.start(self.ctx, self.events.append)
        self.sim = ChargePointSim(self.cp_id, self.cs.url, self.version, **self._sim_kw)
        return self

    async def boot(self) -> ChargePointSim:
        assert self.sim is not None
        await self.sim.start()
        await settle(lambda: self.of(LinkUp), what="LinkUp")
        return self.sim

    async def __aexit__(self, *exc: Any) -> None:
        if self.sim is not None:
            await self.sim.stop()
        await self.link.stop()
        await self.cs.stop()
        self.clock.stop()
        assert not self.cs.running

    def of(self, kind: type) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]

    def states(self) -> list[str]:
        return [e.state for e in self.of(StatusReport)]

    def sent(self, action: str) -> list[Any]:
        assert self.sim is not None
        return self.sim.calls_of(action)


def profile_of(call: Any, version: str) -> tuple[str, dict[str, Any], dict[str, Any], Any]:
    """(purpose, schedule, period, transaction id) of a recorded SetChargingProfile."""
    p = call.payload["cs_charging_profiles"] if version == "1.6" else call.payload["charging_profile"]
    schedule = p["charging_schedule"] if version == "1.6" else p["charging_schedule"][0]
    return p["charging_profile_purpose"], schedule, schedule["charging_schedule_period"][0], p.get("transaction_id")


# ---- link up / down and status --------------------------------------------------------------------

@pytest.mark.parametrize("version", VERSIONS)
def test_states_follow_the_charger_through_a_session(version: str) -> None:
    async def body() -> None:
        async with Rig(version) as r:
            sim = await r.boot()
            assert r.of(LinkUp)[0] == LinkUp(rebooted=False, reason="booted")
            await settle(lambda: r.states()[-1:] == ["AVAILABLE"])
            await sim.plug_in()
            await settle(lambda: r.states()[-1] == "PREPARING")
            await sim.start_transaction()
            await settle(lambda: r.states()[-1] == "CHARGING", what="CHARGING")
            assert (await r.link.execute(cmd(CommandType.SET_CHARGE_RATE, 0))).outcome is Outcome.COMPLETED
            await settle(lambda: r.states()[-1] == "SUSPENDED", what="SUSPENDED")
            await sim.stop_transaction()
            await settle(lambda: r.states()[-1] == "FINISHING", what="FINISHING")
            await sim.unplug()
            await settle(lambda: r.states()[-1] == "AVAILABLE", what="AVAILABLE")
            await sim.fault()
            await settle(lambda: r.states()[-1] == "FAULTED", what="FAULTED")
            await sim.clear_fault()
            await settle(lambda: r.states()[-1] == "AVAILABLE")
            res = await r.link.execute(cmd(CommandType.CHANGE_AVAILABILITY, 0))
            assert res.outcome is Outcome.COMPLETED
            await settle(lambda: r.states()[-1] == "UNAVAILABLE", what="UNAVAILABLE")
            raws = [e.raw for e in r.of(StatusReport)]
            assert "Faulted" in raws and "Unavailable" in raws
    run(body)


@pytest.mark.parametrize("version", VERSIONS)
def test_not_connected_until_registered_and_link_started_late(version: str) -> None:
    async def body() -> None:
        async with Rig(version) as r:
            res = await r.link.execute(cmd(CommandType.SET_CHARGE_RATE, 7))
            assert res.outcome is Outcome.NOT_CONNECTED
            await r.boot()
            # A second link started after the charger came online hears LinkUp at once.
            late_events: list[Any] = []
            late = OcppChargerLink("CP1")
            await late.start(r.ctx, late_events.append)
            assert late_events[0] == LinkUp(rebooted=False, reason="connected")
            assert isinstance(late_events[1], StatusReport) and late_events[1].state == "AVAILABLE"
            await late.stop()
            # Restartable: start again after stop.
            await r.link.stop()
            assert (await r.link.execute(cmd(CommandType.SET_CHARGE_RATE, 7))).outcome is Outcome.NOT_CONNECTED
            await r.link.start(r.ctx, r.events.append)
            assert (await r.link.execute(cmd(CommandType.SET_CHARGE_RATE, 7))).outcome is Outcome.COMPLETED
            with pytest.raises(DeviceError):
                await OcppChargerLink("CP1").start(DeviceContext(asyncio.get_running_loop(), r.clock, {}), print)
    run(body)


@pytest.mark.parametrize("version", VERSIONS)
def test_reboot_gives_linkup_rebooted_and_the_target_can_be_resent(version: str) -> None:
    async def body() -> None:
        async with Rig(version) as r:
            sim = await r.boot()
            assert (await r.link.execute(cmd(CommandType.SET_CHARGE_RATE, 11))).outcome is Outcome.COMPLETED
            assert sim.limit_w == 11000
            await sim.reboot()
            await settle(lambda: len(r.of(LinkUp)) == 2, what="second LinkUp")
            assert r.of(LinkDown)
            assert r.of(LinkUp)[-1] == LinkUp(rebooted=True, reason="rebooted")
            assert sim.limit_w is None  # the simulator lost its profile ...
            assert (await r.link.execute(cmd(CommandType.SET_CHARGE_RATE, 11))).outcome is Outcome.COMPLETED
            assert sim.limit_w == 11000  # ... and got it back
    run(body)


@pytest.mark.parametrize("version", VERSIONS)
def test_reconnect_without_boot_gives_linkup_rebooted(version: str) -> None:
    async def body() -> None:
        async with Rig(version) as r:
            sim = await r.boot()
            await sim.drop()
            await settle(lambda: r.of(LinkDown), what="LinkDown")
            res = await r.link.execute(cmd(CommandType.SET_CHARGE_RATE, 7))
            assert res.outcome is Outcome.NOT_CONNECTED
            await sim.reconnect()
            await settle(lambda: len(r.of(LinkUp)) == 2, what="LinkUp after reconnect")
            assert r.of(LinkUp)[-1] == LinkUp(rebooted=True, reason="reconnected")
            assert sim.boots == 1
            assert (await r.link.execute(cmd(CommandType.SET_CHARGE_RATE, 7))).outcome is Outcome.COMPLETED
    run(body)


# ---- SetChargingProfile ---------------------------------------------------------------------------

@pytest.mark.parametrize("version", VERSIONS)
def test_set_charge_rate_completes_and_power_follows(version: str) -> None:
    async def body() -> None:
        async with Rig(version, max_kw=22.0) as r:
            sim = await r.boot()
            res = await r.link.execute(cmd(CommandType.SET_CHARGE_RATE, 7.4))
            assert res.outcome is Outcome.COMPLETED, res
            assert res.detail["purpose"] == "TxDefaultProfile" and res.detail["unit"] == "W"
            purpose, schedule, period, tx = profile_of(r.sent("SetChargingProfile")[-1], version)
            assert (purpose, schedule["charging_rate_unit"], float(period["limit"]), tx) == (
                "TxDefaultProfile", "W", 7400.0, None)
            assert period["start_period"] == 0 and "start_schedule" in schedule
            payload = r.sent("SetChargingProfile")[-1].payload
            if version == "1.6":
                assert payload["connector_id"] == 1
            else:
                assert payload["evse_id"] == 1 and schedule["id"] == payload["charging_profile"]["id"]
            await sim.start_transaction()
            assert sim.power_kw == pytest.approx(7.4)
            await settle(lambda: any(e.values.get("power_kw") == pytest.approx(7.4) for e in r.of(Telemetry)),
                         what="telemetry 7.4 kW")
            telemetry = [e for e in r.of(Telemetry) if e.values.get("power_kw")][-1]
            assert set(telemetry.values) == {"power_kw", "energy_kwh"}
            assert (await r.link.execute(cmd(CommandType.SET_CHARGE_RATE, 30))).outcome is Outcome.COMPLETED
            assert sim.power_kw == 22.0  # min(max_kw, limit)
    run(body)


@pytest.mark.parametrize("version", VERSIONS)
def test_tx_profile_used_while_a_transaction_runs(version: str) -> None:
    async def body() -> None:
        async with Rig(version) as r:
            sim = await r.boot()
            tx = await sim.start_transaction()
            await settle(lambda: r.cs.charge_point("CP1").transaction_on(1) is not None)
            res = await r.link.execute(cmd(CommandType.SET_CHARGE_RATE, 5))
            assert res.outcome is Outcome.COMPLETED, res
            assert res.detail["purpose"] == "TxProfile" and str(res.detail["transaction_id"]) == str(tx)
            purpose, _schedule, period, sent_tx = profile_of(r.sent("SetChargingProfile")[-1], version)
            assert purpose == "TxProfile" and str(sent_tx) == str(tx) and float(period["limit"]) == 5000.0
            assert sim.power_kw == 5.0
            # Profile ids differ, so the TxProfile did not replace a TxDefaultProfile.
            await sim.stop_transaction()
            await settle(lambda: r.cs.charge_point("CP1").transaction_on(1) is None)
            res = await r.link.execute(cmd(CommandType.SET_CHARGE_RATE, 3))
            assert res.detail["purpose"] == "TxDefaultProfile" and res.detail["profile_id"] != 2
    run(body)


@pytest.mark.parametrize("version", VERSIONS)
def test_amps_per_phase_when_the_charger_only_accepts_amps(version: str) -> None:
    async def body() -> None:
        async with Rig(version, accepted_unit="A", link_kw={"voltage": 230.0, "phases": 3}) as r:
            sim = await r.boot()
            res = await r.link.execute(cmd(CommandType.SET_CHARGE_RATE, 7.4))
            assert res.outcome is Outcome.COMPLETED, res
            expected = math.floor(7400 / (230 * 3) * 10) / 10  # 10.7 A, rounded down
            assert res.detail["unit"] == "A" and res.detail["limit"] == expected
            _purpose, schedule, period, _tx = profile_of(r.sent("SetChargingProfile")[-1], version)
            assert schedule["charging_rate_unit"] == "A"
            assert float(period["limit"]) == expected and period["number_phases"] == 3
            await sim.start_transaction()
            assert sim.power_kw == pytest.approx(expected * 230 * 3 / 1000)
    run(body)


@pytest.mark.parametrize("version", VERSIONS)
def test_power_limit_sets_the_station_max_profile(version: str) -> None:
    async def body() -> None:
        async with Rig(version) as r:
            sim = await r.boot()
            await sim.start_transaction()
            res = await r.link.execute(cmd(CommandType.SET_POWER_LIMIT, 4))
            assert res.outcome is Outcome.COMPLETED, res
            expected = "ChargePointMaxProfile" if version == "1.6" else "ChargingStationMaxProfile"
            assert res.detail["purpose"] == expected and res.detail["target"] == 0
            assert sim.power_kw == 4.0
            assert (await r.link.execute(cmd(CommandType.SET_CHARGE_RATE, 10))).outcome is Outcome.COMPLETED
            assert sim.power_kw == 4.0  # the cap still holds
    run(body)


@pytest.mark.parametrize("version", VERSIONS)
def test_rejected_profile_is_rejected_with_the_reason(version: str) -> None:
    async def body() -> None:
        async with Rig(version) as r:
            sim = await r.boot()
            sim.set_reject_profiles(True)
            res = await r.link.execute(cmd(CommandType.SET_CHARGE_RATE, 7))
            assert res.outcome is Outcome.REJECTED
            assert res.detail["status"] == "Rejected" and "Rejected" in res.reason
            if version == "2.0.1":
                assert "RejectedBySim" in res.reason  # statusInfo.reasonCode
            assert sim.limit_w is None
            # A TxProfile for a transaction the charger does not know is refused too.
            sim.set_reject_profiles(False)
            res = await r.link.execute(cmd(CommandType.SET_CHARGE_RATE, 7))
            assert res.outcome is Outcome.COMPLETED
    run(body)


@pytest.mark.parametrize("version", VERSIONS)
def test_call_error_fails_with_code_and_description(version: str) -> None:
    async def body() -> None:
        async with Rig(version) as r:
            sim = await r.boot()
            sim.set_call_error(True)
            res = await r.link.execute(cmd(CommandType.SET_CHARGE_RATE, 7))
            assert res.outcome is Outcome.FAILED
            assert res.detail["error_code"] == "InternalError"
            assert "InternalError" in res.reason and "simulated error in SetChargingProfile" in res.reason
            sim.set_call_error(False)
            assert (await r.link.execute(cmd(CommandType.SET_CHARGE_RATE, 7))).outcome is Outcome.COMPLETED
    run(body)


@pytest.mark.parametrize("version", VERSIONS)
def test_slow_answer_times_out_and_the_late_answer_is_ignored(version: str) -> None:
    async def body() -> None:
        async with Rig(version, link_kw={"call_timeout": 0.3}) as r:
            sim = await r.boot()
            sim.set_delay(0.6)
            res = await r.link.execute(cmd(CommandType.SET_CHARGE_RATE, 7))
            assert res.outcome is Outcome.TIMED_OUT and "0.3" in res.reason
            sim.set_delay(0)
            connection = r.cs.charge_point(r.cp_id).connection
            await settle(lambda: connection._response_queue.qsize() == 1, what="the late answer to arrive")
            # the late answer waits in the queue: the next call must skip it and take its own
            res = await r.link.execute(cmd(CommandType.SET_CHARGE_RATE, 8))
            assert res.outcome is Outcome.COMPLETED, res
            assert sim.limit_w == 8000
    run(body)


# ---- remote start / stop, availability -------------------------------------------------------------

@pytest.mark.parametrize("version", VERSIONS)
def test_remote_start_and_stop_report_progress(version: str) -> None:
    async def body() -> None:
        async with Rig(version) as r:
            sim = await r.boot()
            stop_none = await r.link.execute(cmd(CommandType.STOP_CHARGING))
            # FAILED (retryable), not REJECTED: the charger may still announce a transaction (site restart)
            assert stop_none.outcome is Outcome.FAILED and stop_none.reason == "no transaction known for connector 1"
            start = cmd(CommandType.START_CHARGING)
            res = await r.link.execute(start)
            assert res.outcome in (Outcome.ACKNOWLEDGED, Outcome.COMPLETED), res
            if res.outcome is Outcome.ACKNOWLEDGED:
                await settle(lambda: CommandProgress(start.command_id, Outcome.COMPLETED) in r.events,
                             what="start progress")
            assert sim.transaction_id is not None and sim.power_kw > 0
            await settle(lambda: r.cs.charge_point("CP1").transaction_on(1) is not None)
            if version == "1.6":
                assert r.sent("RemoteStartTransaction")[0].payload["connector_id"] == 1
            else:
                payload = r.sent("RequestStartTransaction")[0].payload
                assert payload["evse_id"] == 1 and payload["remote_start_id"] >= 1
            again = await r.link.execute(cmd(CommandType.START_CHARGING))
            assert again.outcome is Outcome.COMPLETED and again.reason == "transaction already running"
            stop = cmd(CommandType.STOP_CHARGING)
            tx = sim.transaction_id
            res = await r.link.execute(stop)
            assert res.outcome in (Outcome.ACKNOWLEDGED, Outcome.COMPLETED), res
            assert str(res.detail["transaction_id"]) == str(tx)
            if res.outcome is Outcome.ACKNOWLEDGED:
                await settle(lambda: CommandProgress(stop.command_id, Outcome.COMPLETED) in r.events,
                             what="stop progress")
            assert sim.transaction_id is None
    run(body)


@pytest.mark.parametrize("version", VERSIONS)
def test_remote_start_rejected(version: str) -> None:
    async def body() -> None:
        async with Rig(version) as r:
            sim = await r.boot()
            await sim.fault()
            res = await r.link.execute(cmd(CommandType.START_CHARGING))
            assert res.outcome is Outcome.REJECTED and "Rejected" in res.reason
    run(body)


@pytest.mark.parametrize("version", VERSIONS)
def test_change_availability_scheduled_during_a_transaction(version: str) -> None:
    async def body() -> None:
        async with Rig(version) as r:
            sim = await r.boot()
            await sim.start_transaction()
            c = cmd(CommandType.CHANGE_AVAILABILITY, 0)
            res = await r.link.execute(c)
            assert res.outcome is Outcome.ACKNOWLEDGED and res.detail["status"] == "Scheduled"
            await sim.stop_transaction()
            await sim.unplug()
            await settle(lambda: CommandProgress(c.command_id, Outcome.COMPLETED) in r.events,
                         what="availability progress")
            assert r.states()[-1] == "UNAVAILABLE"
            res = await r.link.execute(cmd(CommandType.CHANGE_AVAILABILITY, 1))
            assert res.outcome is Outcome.COMPLETED
            await settle(lambda: r.states()[-1] == "AVAILABLE")
            bad = await r.link.execute(cmd(CommandType.CHANGE_AVAILABILITY, 2))
            assert bad.outcome is Outcome.REJECTED
    run(body)


def test_unsupported_command_is_rejected() -> None:
    async def body() -> None:
        async with Rig("1.6") as r:
            await r.boot()
            res = await r.link.execute(cmd(CommandType.SET_DISCHARGE_RATE, 1))
            assert res.outcome is Outcome.REJECTED
    run(body)


def test_absolute_profile_starts_at_the_scheduled_time_or_now() -> None:
    async def body() -> None:
        async with Rig("2.0.1") as r:
            await r.boot()
            past = datetime.now(timezone.utc) - timedelta(minutes=5)
            c = Command("cmd-past", "ev1", CommandType.SET_CHARGE_RATE, 7.0, past)
            assert (await r.link.execute(c)).outcome is Outcome.COMPLETED
            _p, schedule, _period, _tx = profile_of(r.sent("SetChargingProfile")[-1], "2.0.1")
            assert schedule["start_schedule"] == past.replace(microsecond=0).isoformat().replace("+00:00", "Z")
            assert r.sent("SetChargingProfile")[-1].payload["charging_profile"]["charging_profile_kind"] == "Absolute"
    run(body)


@pytest.mark.parametrize("version", VERSIONS)
def test_default_profile_on_the_whole_station_when_asked(version: str) -> None:
    async def body() -> None:
        async with Rig(version, link_kw={"default_profile_target": "station"}) as r:
            sim = await r.boot()
            res = await r.link.execute(cmd(CommandType.SET_CHARGE_RATE, 6))
            assert res.outcome is Outcome.COMPLETED and res.detail["target"] == 0
            payload = r.sent("SetChargingProfile")[-1].payload
            assert payload["connector_id" if version == "1.6" else "evse_id"] == 0
            assert sim.limit_w == 6000
    run(body)


@pytest.mark.parametrize("version", VERSIONS)
def test_charger_reconnecting_after_a_site_restart_is_online_without_booting(version: str) -> None:
    async def body() -> None:
        async with Rig(version) as r:
            assert r.sim is not None
            await r.sim.reconnect()  # it never booted with this central system (e.g. the site restarted)
            await settle(lambda: r.of(LinkUp), what="LinkUp")
            assert r.of(LinkUp)[0] == LinkUp(rebooted=True, reason="reconnected")
            assert r.sim.boots == 0
            assert (await r.link.execute(cmd(CommandType.SET_CHARGE_RATE, 7))).outcome is Outcome.COMPLETED
    run(body)


# ---- site restart while a charger is charging; the StartTransaction race ------------------------------

class Site:
    """A central system + link that can be restarted on the same port (a site restart) while the
    simulator keeps running (and reconnects by itself, without a BootNotification)."""

    def __init__(self) -> None:
        self.clock = RealClock()
        self.port = 0
        self.cs: CentralSystem | None = None
        self.link: OcppChargerLink | None = None
        self.events: list[Any] = []

    async def start(self) -> None:
        self.cs = CentralSystem("127.0.0.1", self.port, response_timeout=2.0, reconnect_grace=0.3)
        await self.cs.start()
        self.port = self.cs.port
        self.events = []
        self.link = OcppChargerLink("CP1", call_timeout=1.0)
        await self.link.start(DeviceContext(asyncio.get_running_loop(), self.clock, {"ocpp": self.cs}),
                              self.events.append)

    async def stop(self) -> None:
        if self.link is not None:
            await self.link.stop()
        if self.cs is not None:
            await self.cs.stop()

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    def record(self) -> Any:
        assert self.cs is not None
        return self.cs.charge_point("CP1")

    def of(self, kind: type) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]


@contextlib.asynccontextmanager
async def restartable_site_with_charger(version: str) -> AsyncIterator[tuple[Site, ChargePointSim]]:
    """A started :class:`Site` and a booted charger that reconnects by itself; both stopped afterwards."""
    site = Site()
    await site.start()
    assert site.cs is not None
    sim = ChargePointSim("CP1", site.cs.url, version, meter_interval=0, response_timeout=2.0, auto_reconnect=True)
    try:
        await sim.start()
        await settle(lambda: site.of(LinkUp), what="LinkUp")
        yield site, sim
    finally:
        await sim.stop()
        await site.stop()
        site.clock.stop()


async def _announce_transaction(sim: ChargePointSim) -> None:
    """What a charger sends on its own while charging: MeterValues with the transactionId (1.6), a
    TransactionEvent Updated naming its EVSE (2.0.1)."""
    if sim.version == "1.6":
        await sim.send_meter_values()
    else:
        await sim._send_triggered_transaction_event()


@pytest.mark.parametrize("version", VERSIONS)
def test_site_restart_while_charging_learns_the_running_transaction(version: str) -> None:
    async def body() -> None:
        async with restartable_site_with_charger(version) as (site, sim):
            old_tx = await sim.start_transaction()
            await settle(lambda: site.record().transactions == {1: old_tx}, what="transaction recorded")
            if version == "1.6":
                assert isinstance(old_tx, int) and old_tx > 1  # not a counter that restarts at 1

            await site.restart()  # the charger keeps charging and reconnects without booting
            await settle(lambda: site.of(LinkUp), timeout=8, what="LinkUp after the site restart")
            assert site.of(LinkUp)[0] == LinkUp(rebooted=True, reason="reconnected")
            # No periodic MeterValues (meter_interval=0): the triggers make it re-announce the transaction.
            await settle(lambda: site.record().transactions == {1: old_tx}, what="transaction learned again")
            expected = ["MeterValues", "StatusNotification"] if version == "1.6" else ["TransactionEvent"]
            triggered = await settle(lambda: [c.payload["requested_message"] for c in sim.calls_of("TriggerMessage")
                                              if len(sim.calls_of("TriggerMessage")) >= len(expected)],
                                     what="every trigger")
            assert triggered == expected
            assert sim.boots == 1 and sim.transaction_id == old_tx

            rate = await site.link.execute(cmd(CommandType.SET_CHARGE_RATE, 7))  # type: ignore[union-attr]
            assert rate.outcome is Outcome.COMPLETED, rate
            assert rate.detail["purpose"] == "TxProfile" and str(rate.detail["transaction_id"]) == str(old_tx)
            assert sim.limit_w == 7000

            stop = cmd(CommandType.STOP_CHARGING)
            res = await site.link.execute(stop)  # type: ignore[union-attr]
            assert res.outcome in (Outcome.ACKNOWLEDGED, Outcome.COMPLETED), res
            if res.outcome is Outcome.ACKNOWLEDGED:
                await settle(lambda: CommandProgress(stop.command_id, Outcome.COMPLETED) in site.events,
                             what="stop progress")
            assert sim.transaction_id is None and sim.power_kw == 0
            await settle(lambda: not site.record().transactions, what="transaction ended")

            if version == "1.6":  # a new transaction after the restart gets an id never used before
                new_tx = await sim.start_transaction()
                assert new_tx != old_tx and new_tx > old_tx
                await settle(lambda: site.record().transactions == {1: new_tx}, what="new transaction")
    run(body, timeout=20)


@pytest.mark.parametrize("version", VERSIONS)
def test_stop_without_a_known_transaction_fails_and_a_retry_succeeds_once_it_is_announced(version: str) -> None:
    async def body() -> None:
        async with restartable_site_with_charger(version) as (site, sim):
            tx = await sim.start_transaction()
            sim.set_call_error(True)  # it answers the triggers (and everything else) with a CallError
            await site.restart()
            await settle(lambda: site.of(LinkUp), timeout=8, what="LinkUp after the site restart")
            await settle(lambda: len(sim.calls_of("TriggerMessage")) == (2 if version == "1.6" else 1),
                         what="triggers tried")
            assert not site.record().transactions
            first = await site.link.execute(cmd(CommandType.STOP_CHARGING))  # type: ignore[union-attr]
            assert first.outcome is Outcome.FAILED and first.reason == "no transaction known for connector 1"
            assert sim.transaction_id == tx

            sim.set_call_error(False)
            await _announce_transaction(sim)
            await settle(lambda: site.record().transactions == {1: tx}, what="transaction learned")
            retry = cmd(CommandType.STOP_CHARGING)
            res = await site.link.execute(retry)  # type: ignore[union-attr]
            assert res.outcome in (Outcome.ACKNOWLEDGED, Outcome.COMPLETED), res
            await settle(lambda: sim.transaction_id is None, what="the charger stopped")
    run(body, timeout=20)


@pytest.mark.parametrize("version", VERSIONS)
def test_a_late_message_of_an_ended_transaction_does_not_bring_it_back(version: str) -> None:
    async def body() -> None:
        async with Rig(version) as r:
            sim = await r.boot()
            tx = await sim.start_transaction()
            await settle(lambda: r.cs.charge_point("CP1").transactions == {1: tx}, what="transaction recorded")
            await sim.stop_transaction()
            await settle(lambda: not r.cs.charge_point("CP1").transactions, what="transaction ended")
            sim.transaction_id = tx  # a queued message naming the ended transaction arrives late
            await _announce_transaction(sim)
            sim.transaction_id = None
            await sim.send_meter_values()  # a later message: the late one was handled before it
            assert not r.cs.charge_point("CP1").transactions
    run(body)


def test_charge_rate_sent_as_soon_as_a_16_transaction_is_recorded_reaches_the_charger_after_its_id(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from protocols.ocpp.v16.central import ChargePoint16Connection

    send = ChargePoint16Connection._send

    async def slow_answers(self: Any, message: str) -> None:
        # The central system's answers leave a few loop turns late (a busy socket): a transaction recorded
        # before its StartTransaction answer went out would let the TxProfile overtake that answer.
        if message.startswith("[3"):
            for _ in range(5):
                await asyncio.sleep(0)
        await send(self, message)

    monkeypatch.setattr(ChargePoint16Connection, "_send", slow_answers)

    async def body() -> None:
        async with Rig("1.6") as r:
            sim = await r.boot()
            rec = r.cs.charge_point("CP1")
            seen: list[tuple[Any, Any, Any]] = []
            receive = sim._receive

            async def spy(action: str, **kw: Any) -> None:
                if action == "SetChargingProfile":
                    p = kw["cs_charging_profiles"]
                    seen.append((sim.transaction_id, p["charging_profile_purpose"], p.get("transaction_id")))
                await receive(action, **kw)

            sim._receive = spy  # type: ignore[method-assign]
            ids = []
            for i in range(5):
                async def rate_when_recorded() -> Any:
                    while not rec.transactions:
                        await asyncio.sleep(0)
                    return await r.link.execute(cmd(CommandType.SET_CHARGE_RATE, 7 + i))

                task = asyncio.create_task(rate_when_recorded())
                tx = await sim.start_transaction()
                res = await task
                assert res.outcome is Outcome.COMPLETED, res
                assert res.detail["purpose"] == "TxProfile" and res.detail["transaction_id"] == tx
                # the charger knew the transaction when the profile arrived, and accepted it
                assert seen[-1] == (tx, "TxProfile", tx)
                assert sim.limit_w == (7 + i) * 1000
                await sim.stop_transaction()
                await settle(lambda: not rec.transactions, what="transaction ended")
                ids.append(tx)
            assert len(set(ids)) == 5
    run(body)
