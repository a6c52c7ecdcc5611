"""End to end over real sockets on 127.0.0.1, for OCPP 1.6 and 2.0.1:

    schedule / command -> Site (RealClock) -> dispatcher -> asset actor -> OcppChargerLink
    -> the site's CentralSystem -> websocket -> ChargePointSim

The simulator runs on its own I/O thread (as a separate device would). Nothing here sleeps to wait for
logic: site facts are awaited with ``Site.wait_for`` or on a condition fed by the site's events;
simulator facts are polled (bounded) on the simulator's own loop.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Iterable

import pandas as pd
import pytest

from protocols.ocpp import OcppChargerLink
from protocols.sim.chargepoint import ChargePointSim
from runtime.core.assets import ChargerSpec
from runtime.core.commands import FINAL_STATUSES, Command, CommandStatus, CommandType, new_command_id
from runtime.core.events import Event, EventType
from runtime.core.iothread import IOThread
from runtime.core.retry import RetryPolicy
from runtime.site import Site

from .asyncsupport import read_on, until_on

VERSIONS = ["1.6", "2.0.1"]
pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("no_leaks")]

S = CommandStatus
CT = CommandType


# ---- harness ---------------------------------------------------------------------------------------

class Recorder:
    """Every event of the site, in order, with a condition to wait on (subscribers run in their own
    actor thread)."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._cond = threading.Condition()

    def __call__(self, event: Event) -> None:
        with self._cond:
            self.events.append(event)
            self._cond.notify_all()

    def wait(self, pred: Callable[[list[Event]], Any], timeout: float = 5.0, what: str = "event") -> Any:
        with self._cond:
            got = self._cond.wait_for(lambda: pred(self.events), timeout)
            seen = [(e.type.value, e.payload.get("status") or e.payload.get("to_state")) for e in self.events[-15:]]
        assert got, f"timed out after {timeout} s waiting for {what}; last events: {seen}"
        return got

    def of(self, event_type: EventType, **match: Any) -> list[Event]:
        with self._cond:
            return [e for e in self.events if e.type is event_type
                    and all(e.payload.get(k) == v for k, v in match.items())]

    def statuses(self, command_id: str) -> list[str]:
        """The lifecycle of one command, as the statuses of its events."""
        with self._cond:
            return [e.payload["status"] for e in self.events
                    if e.payload.get("command_id") == command_id and "status" in e.payload]


class Rig:
    """A RealClock Site with one OCPP charger "ev-1" (charge point "CP1") and its simulator on a separate
    I/O thread."""

    def __init__(self, version: str, *, max_kw: float = 22.0, link_kw: dict[str, Any] | None = None,
                 **sim_kw: Any) -> None:
        self.version = version
        self.link = OcppChargerLink("CP1", **{"call_timeout": 1.0, **(link_kw or {})})
        self.site = Site([ChargerSpec("ev-1", max_kw=max_kw, device=self.link, ack_timeout_s=5.0)],
                         ocpp={"port": 0, "response_timeout": 2.0, "reconnect_grace": 0.3},
                         retry=RetryPolicy(max_attempts=2, base_delay_s=0.05, jitter=0),
                         ack_timeout_s=5.0, completion_timeout_s=5.0)
        self.io = IOThread("sim-io")
        self.rec = Recorder()
        self._sim_kw = {"meter_interval": 0, "response_timeout": 2.0, **sim_kw}
        self.sim: ChargePointSim | None = None

    def __enter__(self) -> "Rig":
        self.io.start()
        try:
            self.site.start()
            self.site.events.subscribe(None, self.rec)
            port = self.site.service("ocpp").port
            self.sim = ChargePointSim("CP1", f"ws://127.0.0.1:{port}", self.version, **self._sim_kw)
        except BaseException:
            self.site.stop()
            self.io.stop()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            if self.sim is not None:
                self.call(self.sim.stop())
        finally:
            try:
                self.site.stop()
            finally:
                self.io.stop()

    # -- simulator side (its own loop) --
    def call(self, coro: Any, timeout: float = 10.0) -> Any:
        return self.io.call(coro, timeout)

    def read(self, fn: Callable[[], Any]) -> Any:
        """Evaluate ``fn`` on the simulator's loop (its state belongs to that thread)."""
        return read_on(self.io, fn)

    def until(self, fn: Callable[[], Any], timeout: float = 5.0, what: str = "simulator condition") -> Any:
        return until_on(self.io, fn, timeout, what)

    def boot(self) -> ChargePointSim:
        assert self.sim is not None
        self.call(self.sim.start())
        self.rec.wait(lambda evs: any(e.type is EventType.ASSET_CONNECTED for e in evs), what="ASSET_CONNECTED")
        return self.sim

    def profiles(self) -> list[tuple[str, float, Any]]:
        """(purpose, limit in W, transaction id) of every SetChargingProfile the charger received."""
        assert self.sim is not None
        out = []
        for call in self.read(lambda: self.sim.calls_of("SetChargingProfile")):
            if self.version == "1.6":
                p = call.payload["cs_charging_profiles"]
                schedule = p["charging_schedule"]
            else:
                p = call.payload["charging_profile"]
                schedule = p["charging_schedule"][0]
            period = schedule["charging_schedule_period"][0]
            assert schedule["charging_rate_unit"] == "W" and period["start_period"] == 0
            tx = p.get("transaction_id")
            out.append((p["charging_profile_purpose"], float(period["limit"]), None if tx is None else str(tx)))
        return out

    # -- site side --
    def submit(self, command_type: CommandType, value: float = 0.0) -> str:
        c = Command(new_command_id(), "ev-1", command_type, value, self.site.clock.now())
        self.site.submit(c)
        return c.command_id

    def wait(self, command_id: str, statuses: Iterable[CommandStatus] = FINAL_STATUSES,
             timeout: float = 5.0) -> Command:
        return wait_command(self.site, self.rec, command_id, statuses, timeout)

    def wait_state(self, state: str, timeout: float = 5.0) -> None:
        self.rec.wait(lambda evs: any(e.type is EventType.STATE_CHANGED and e.payload["to_state"] == state
                                      for e in evs), timeout, what=f"ev-1 -> {state}")
        assert self.site.asset_state("ev-1") == state

    def telemetry_kw(self, kw: float, timeout: float = 5.0) -> None:
        self.rec.wait(lambda evs: any(e.type is EventType.TELEMETRY and e.payload.get("power_kw") == pytest.approx(kw)
                                      for e in evs), timeout, what=f"TELEMETRY power_kw={kw}")


def wait_command(site: Site, rec: Recorder, command_id: str,
                 statuses: Iterable[CommandStatus] = FINAL_STATUSES, timeout: float = 5.0) -> Command:
    """``Site.wait_for``, then until ``rec`` has the command's event too (subscribers are separate
    actors: one may be a step behind another)."""
    c = site.wait_for(command_id, statuses, timeout)
    rec.wait(lambda evs: any(e.payload.get("command_id") == command_id and e.payload.get("status") == c.status.value
                             for e in evs), timeout, what=f"the {c.status.value} event of {command_id}")
    return c


def in_order(seq: list[str], wanted: Iterable[str]) -> bool:
    it = iter(seq)
    return all(w in it for w in wanted)


# ---- tests -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("version", VERSIONS)
def test_schedule_drives_the_charger_and_its_power_follows(version: str) -> None:
    with Rig(version) as r:
        sim = r.boot()
        r.call(sim.start_transaction())  # an EV charges at full power: no profile yet
        assert r.read(lambda: sim.power_kw) == pytest.approx(22.0)
        r.telemetry_kw(22.0)
        t0 = pd.Timestamp.now(tz="UTC")
        # 7.4 kW now, 11 kW one second later (real time); the last row only bounds the expiry.
        schedule = pd.DataFrame({"ev_1_kw": [7.4, 11.0, 11.0]}, index=pd.date_range(t0, periods=3, freq="1s"))
        batch = r.site.submit_schedule(schedule, asset_map={"ev_1": "ev-1"})
        assert [c.value for c in batch] == [7.4, 11.0]

        first = r.wait(batch.command_id(0), timeout=5)
        assert first.status is S.COMPLETED, first
        tx = str(r.read(lambda: sim.transaction_id))
        assert r.profiles()[0] == ("TxProfile", 7400.0, tx)  # for the running transaction
        r.telemetry_kw(7.4)  # the EV follows; MeterValues -> link -> actor -> TELEMETRY event

        second = r.wait(batch.command_id(1), timeout=5)  # falls due on the real clock
        assert second.status is S.COMPLETED, second
        assert r.profiles() == [("TxProfile", 7400.0, tx), ("TxProfile", 11000.0, tx)]
        assert r.read(lambda: sim.limit_w) == 11000.0
        assert r.read(lambda: sim.power_kw) == pytest.approx(11.0)
        r.telemetry_kw(11.0)
        for cid in (batch.command_id(0), batch.command_id(1)):
            assert in_order(r.rec.statuses(cid), ["PENDING", "DISPATCHED", "ACKNOWLEDGED", "COMPLETED"])


@pytest.mark.parametrize("version", VERSIONS)
def test_command_before_the_charger_connects_is_held_then_delivered_after_boot(version: str) -> None:
    with Rig(version) as r:
        cid = r.submit(CT.SET_CHARGE_RATE, 9.0)
        assert r.wait(cid, {S.HELD}, timeout=5).status is S.HELD  # the charger's link is down
        assert r.sim is not None and not r.sim.calls  # nothing could be sent yet

        sim = r.boot()
        done = r.wait(cid, timeout=5)
        assert done.status is S.COMPLETED, done
        assert r.read(lambda: sim.limit_w) == 9000.0
        assert r.read(lambda: sim.boots) == 1
        assert r.profiles() == [("TxDefaultProfile", 9000.0, None)]
        assert in_order(r.rec.statuses(cid), ["HELD", "PENDING", "DISPATCHED", "COMPLETED"])
        assert r.rec.of(EventType.COMMAND_RELEASED, command_id=cid)


@pytest.mark.parametrize("version", VERSIONS)
def test_reboot_gets_the_current_target_profile_resent_without_a_new_command(version: str) -> None:
    with Rig(version) as r:
        sim = r.boot()
        cid = r.submit(CT.SET_CHARGE_RATE, 11.0)
        assert r.wait(cid, timeout=5).status is S.COMPLETED
        assert r.profiles() == [("TxDefaultProfile", 11000.0, None)]

        r.call(sim.reboot())  # the charger forgets its profiles and boots again
        r.until(lambda: len(sim.calls_of("SetChargingProfile")) == 2 and sim.limit_w == 11000.0,
                what="the target profile re-sent after the reboot")
        assert r.profiles() == [("TxDefaultProfile", 11000.0, None)] * 2
        assert r.read(lambda: sim.boots) == 2
        r.rec.wait(lambda evs: any(e.type is EventType.ASSET_CONNECTED and e.payload["rebooted"]
                                   and e.payload["resent"] == [cid] for e in evs), what="ASSET_CONNECTED rebooted")
        assert r.rec.of(EventType.ASSET_DISCONNECTED)
        # no new command was made for the re-send
        assert {k: n for k, n in r.site.counts().items() if n} == {"COMPLETED": 1}


@pytest.mark.parametrize("version", VERSIONS)
def test_drop_and_reconnect_holds_commands_then_delivers_them(version: str) -> None:
    with Rig(version) as r:
        sim = r.boot()
        first = r.submit(CT.SET_CHARGE_RATE, 11.0)
        assert r.wait(first, timeout=5).status is S.COMPLETED

        r.call(sim.drop())  # TCP abort, no closing handshake
        r.rec.wait(lambda evs: any(e.type is EventType.ASSET_DISCONNECTED for e in evs), what="ASSET_DISCONNECTED")
        during = [r.submit(CT.SET_CHARGE_RATE, 6.0), r.submit(CT.SET_POWER_LIMIT, 16.0)]
        for cid in during:
            assert r.wait(cid, {S.HELD}, timeout=5).status is S.HELD
        assert r.read(lambda: len(sim.calls_of("SetChargingProfile"))) == 1

        r.call(sim.reconnect())  # back without a BootNotification
        for cid in during:
            done = r.wait(cid, timeout=5)
            assert done.status is S.COMPLETED, done
        assert r.read(lambda: sim.boots) == 1
        assert r.read(lambda: sim.limit_w) == 6000.0  # the held setpoint, not the one from before the drop
        purposes = {p for p, _, _ in r.profiles()}
        station_max = "ChargePointMaxProfile" if version == "1.6" else "ChargingStationMaxProfile"
        assert purposes == {"TxDefaultProfile", station_max}
        assert r.rec.of(EventType.ASSET_CONNECTED)[-1].payload["reason"] == "reconnected"


@pytest.mark.parametrize("version", VERSIONS)
def test_rejected_profile_and_call_error(version: str) -> None:
    with Rig(version, reject_profiles=True) as r:
        sim = r.boot()
        cid = r.submit(CT.SET_CHARGE_RATE, 7.0)
        rejected = r.wait(cid, timeout=5)
        assert rejected.status is S.REJECTED, rejected
        assert "charger answered Rejected" in rejected.last_error
        if version == "2.0.1":
            assert "RejectedBySim" in rejected.last_error  # the charger's statusInfo reasonCode
        assert rejected.attempts == 1  # a refusal is final: not retried
        assert len(r.profiles()) == 1

        r.read(lambda: (sim.set_reject_profiles(False), sim.set_call_error(True)))
        cid = r.submit(CT.SET_CHARGE_RATE, 8.0)
        failed = r.wait(cid, timeout=5)
        assert failed.status is S.FAILED, failed
        assert failed.attempts == 2
        assert "CallError InternalError" in failed.last_error and "SetChargingProfile" in failed.last_error
        assert r.rec.of(EventType.COMMAND_RETRY_SCHEDULED, command_id=cid)
        assert [limit for _, limit, _ in r.profiles()] == [7000.0, 8000.0, 8000.0]
        assert r.read(lambda: sim.limit_w) is None


@pytest.mark.parametrize("version", VERSIONS)
def test_slow_charger_completes_and_a_too_slow_one_times_out_and_is_retried(version: str) -> None:
    with Rig(version, link_kw={"call_timeout": 0.3}) as r:
        sim = r.boot()
        r.read(lambda: sim.set_delay(0.1))  # slow, but within the call timeout
        cid = r.submit(CT.SET_CHARGE_RATE, 6.0)
        slow = r.wait(cid, timeout=5)
        assert slow.status is S.COMPLETED and slow.attempts == 1, slow
        assert r.read(lambda: sim.limit_w) == 6000.0

        r.read(lambda: sim.set_delay(0.6))  # beyond the link's call_timeout
        cid = r.submit(CT.SET_CHARGE_RATE, 7.0)
        late = r.wait(cid, timeout=5)
        assert late.status is S.TIMED_OUT, late
        assert late.attempts == 2
        retry = r.rec.of(EventType.COMMAND_RETRY_SCHEDULED, command_id=cid)
        assert len(retry) == 1 and retry[0].payload["attempts"] == 1
        # both attempts reached the charger (it answers them late; the answers are ignored)
        r.until(lambda: len(sim.calls_of("SetChargingProfile")) == 3, timeout=5, what="both attempts received")
        assert [limit for _, limit, _ in r.profiles()] == [6000.0, 7000.0, 7000.0]


@pytest.mark.parametrize("version", VERSIONS)
def test_start_and_stop_charging_complete_when_the_transaction_starts_and_ends(version: str) -> None:
    with Rig(version) as r:
        sim = r.boot()
        r.call(sim.plug_in())
        r.wait_state("PREPARING")

        start = r.submit(CT.START_CHARGING)
        done = r.wait(start, timeout=5)
        assert done.status is S.COMPLETED, done
        assert in_order(r.rec.statuses(start), ["DISPATCHED", "ACKNOWLEDGED", "COMPLETED"])
        action = "RemoteStartTransaction" if version == "1.6" else "RequestStartTransaction"
        assert len(r.read(lambda: sim.calls_of(action))) == 1
        # the central system saw the transaction start; the charger learns its id from the answer
        r.until(lambda: sim.transaction_id is not None, what="the simulator's transaction id")
        r.wait_state("CHARGING")  # from the charger's own status reports
        assert r.read(lambda: sim.power_kw) == pytest.approx(22.0)

        stop = r.submit(CT.STOP_CHARGING)
        done = r.wait(stop, timeout=5)
        assert done.status is S.COMPLETED, done
        assert in_order(r.rec.statuses(stop), ["DISPATCHED", "ACKNOWLEDGED", "COMPLETED"])
        assert r.read(lambda: sim.transaction_id) is None
        r.wait_state("FINISHING")  # the EV is still plugged in
        states = [e.payload["to_state"] for e in r.rec.of(EventType.STATE_CHANGED)]
        assert in_order(states, ["PREPARING", "CHARGING", "FINISHING"])


@pytest.mark.parametrize("version", VERSIONS)
def test_value_over_the_chargers_max_kw_is_rejected_and_never_sent(version: str) -> None:
    with Rig(version, max_kw=11.0) as r:
        sim = r.boot()
        over = r.submit(CT.SET_CHARGE_RATE, 16.0)
        rejected = r.wait(over, timeout=5)
        assert rejected.status is S.REJECTED, rejected
        assert "exceeds the device limit 11.0 kW" in rejected.last_error
        # a valid command after it goes down the same path: once it is done, the charger has seen
        # everything the site sent
        ok = r.submit(CT.SET_CHARGE_RATE, 11.0)
        assert r.wait(ok, timeout=5).status is S.COMPLETED
        assert r.profiles() == [("TxDefaultProfile", 11000.0, None)]
        assert r.read(lambda: sim.limit_w) == 11000.0
        assert r.rec.statuses(over) == ["PENDING", "REJECTED"]  # refused before it is sent: never DISPATCHED
