"""ModbusBatteryLink against the battery simulator over real sockets on 127.0.0.1 (no pymodbus mocks).

Every test runs its own event loop (``run``), checks that no task is left on it, and uses the
``no_leaks`` fixture for sockets and threads.
"""

from __future__ import annotations

import asyncio
import dataclasses
import struct
from typing import Any, Awaitable, Callable

import pytest
from pyModbusTCP.client import ModbusClient

from protocols.base import DeviceContext, LinkDown, LinkUp, Outcome, Telemetry
from protocols.modbus import ModbusBatteryLink, RegisterMap, RegisterMapError, sunspec_map
from protocols.modbus.codec import RegisterSpec
from protocols.modbus.register_map import (PointWrite, SunSpecMap, WriteBlock, load_register_map, merge_reads,
                                          merge_writes, sunspec_model_points)
from protocols.sim.battery import BatterySim
from runtime.core.clock import VirtualClock
from runtime.core.commands import Command, CommandType, new_command_id

from .asyncsupport import run as shared_run, settle as until, yield_to_loop
from .conftest import T0

pytestmark = [pytest.mark.timeout(30), pytest.mark.usefixtures("no_leaks")]

CUSTOM = {
    "name": "vendor-x",
    "writes": {
        "SET_CHARGE_RATE": {"register": 40101, "type": "int32", "scale": 1000, "word_order": "little"},
        "SET_DISCHARGE_RATE": {"register": 40103, "type": "float32", "scale": 1},
        "SET_POWER_LIMIT": {"register": 40105, "type": "uint32", "scale": 100, "word_order": "little"},
    },
    "reads": {
        "soc_pct": {"register": 40120, "type": "float32", "word_order": "little"},
        "power_kw": {"register": 40122, "type": "int32", "scale": 1000, "sign": "discharge_positive"},
    },
}


def run(test: Callable[[], Awaitable[None]], timeout: float = 15.0) -> None:
    shared_run(test, timeout)


def cmd(ct: str, value: float) -> Command:
    return Command(new_command_id(), "bat-1", CommandType(ct), value, T0)


class Rig:
    """A simulator, a link to it, the events the link reported, and a virtual clock for both."""

    def __init__(self, register_map: Any = None, *, sim_kwargs: dict | None = None, **link_kwargs: Any) -> None:
        self.clock = VirtualClock(T0)
        self.map = register_map
        self.sim = BatterySim(register_map=register_map, clock=self.clock, **(sim_kwargs or {}))
        self.link_kwargs = {"timeout": 0.25, "reconnect_delay": 0.02, "reconnect_delay_max": 0.1, **link_kwargs}
        self.events: list[Any] = []
        self.link: ModbusBatteryLink | None = None

    async def __aenter__(self) -> "Rig":
        await self.sim.start()
        self.link = ModbusBatteryLink("127.0.0.1", self.sim.port, register_map=self.map, **self.link_kwargs)
        await self.link.start(DeviceContext(asyncio.get_running_loop(), self.clock), self.events.append)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self.link is not None:
            await self.link.stop()
        await self.sim.stop()

    def of(self, kind: type) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]

    async def execute(self, ct: str, value: float):
        assert self.link is not None
        return await self.link.execute(cmd(ct, value))


# ---------------------------------------------------------------------------------- default map

def test_default_map_writes_are_absolute_verified_and_exclusive():
    async def t() -> None:
        async with Rig(RegisterMap.default()) as rig:
            assert rig.of(LinkUp) == [LinkUp(rebooted=False, reason=rig.of(LinkUp)[0].reason)]
            r = await rig.execute("SET_CHARGE_RATE", 15)
            assert r.outcome is Outcome.COMPLETED, r
            assert rig.sim.setpoint_kw == pytest.approx(15.0)
            assert rig.sim.point("SET_CHARGE_RATE") == 15.0 and rig.sim.point("SET_DISCHARGE_RATE") == 0.0
            # charge + zeroed discharge went out as ONE function-16 write of 40001..40002
            assert rig.sim.writes[-1] == (40000, [150, 0])
            r = await rig.execute("SET_DISCHARGE_RATE", 20)
            assert r.outcome is Outcome.COMPLETED, r
            assert rig.sim.setpoint_kw == pytest.approx(-20.0) and rig.sim.point("SET_CHARGE_RATE") == 0.0
            assert (await rig.execute("SET_POWER_LIMIT", 12.5)).outcome is Outcome.COMPLETED
            assert rig.sim.power_limit_kw == 12.5 and rig.sim.power_kw == pytest.approx(-12.5)
            assert (await rig.execute("SET_SOC_TARGET", 80)).outcome is Outcome.COMPLETED
            assert rig.sim.soc_target_pct == 80.0
            # repeating a setpoint is harmless
            assert (await rig.execute("SET_SOC_TARGET", 80)).outcome is Outcome.COMPLETED
            r = await rig.execute("CHANGE_AVAILABILITY", 1)
            assert r.outcome is Outcome.REJECTED and "CHANGE_AVAILABILITY is not in register map 'default'" in r.reason
    run(t)


def test_custom_map_int32_little_and_float32():
    async def t() -> None:
        mp = RegisterMap.from_config(CUSTOM)
        async with Rig(mp, sim_kwargs={"soc_pct": 61.25}) as rig:
            r = await rig.execute("SET_CHARGE_RATE", 15)
            assert r.outcome is Outcome.COMPLETED, r
            assert rig.sim.setpoint_kw == pytest.approx(15.0)
            raw = 15000  # int32 x1000, low word first
            assert [rig.sim.image[40100], rig.sim.image[40101]] == [raw & 0xFFFF, raw >> 16]
            assert [rig.sim.image[40102], rig.sim.image[40103]] == [0, 0]  # float32 0.0 (exclusive rates)
            r = await rig.execute("SET_DISCHARGE_RATE", 7.5)
            assert r.outcome is Outcome.COMPLETED, r
            assert rig.sim.setpoint_kw == pytest.approx(-7.5)
            words = [rig.sim.image[40102], rig.sim.image[40103]]
            assert struct.unpack(">f", struct.pack(">HH", *words))[0] == 7.5  # float32, high word first
            assert (await rig.execute("SET_POWER_LIMIT", 40.25)).outcome is Outcome.COMPLETED
            assert rig.sim.power_limit_kw == pytest.approx(40.25)
            r = await rig.execute("SET_SOC_TARGET", 50)
            assert r.outcome is Outcome.REJECTED and "SET_SOC_TARGET" in r.reason
            # telemetry: float32 little-endian SoC, int32 power counted discharge-positive on the wire
            rig.clock.advance(5.0)
            tel = await until(lambda: [e for e in rig.of(Telemetry) if e.values.get("power_kw", 0) < 0], what="telemetry")
            assert tel[-1].values["power_kw"] == pytest.approx(-7.5)
            assert tel[-1].values["soc_pct"] == pytest.approx(61.25 - 7.5 * 5 / 3600, abs=1e-4)
    run(t)


# ------------------------------------------------------------------------------------- SunSpec

@pytest.mark.parametrize("control", ["storage", "der"])
def test_sunspec_map_with_scale_factors_read_from_the_device(control):
    async def t() -> None:
        # 100 kW makes the simulator choose WChaMax_SF = 1 and W_SF = 1: the link must read them
        mp = sunspec_map(control=control)
        async with Rig(mp, sim_kwargs={"max_charge_kw": 100, "max_discharge_kw": 100}) as rig:
            sim = rig.sim
            assert sim.sunspec_point(124, "WChaMax_SF") == 1 and sim.sunspec_point(124, "WChaMax") == 10000
            r = await rig.execute("SET_CHARGE_RATE", 15)
            assert r.outcome is Outcome.COMPLETED, r
            assert sim.setpoint_kw == pytest.approx(15.0) and sim.power_kw == pytest.approx(15.0)
            if control == "storage":
                assert sim.sunspec_point(124, "InWRte") == 1500  # 15 % of 100 kW at InOutWRte_SF -2
                assert sim.sunspec_point(124, "OutWRte") == 0 and sim.sunspec_point(124, "StorCtl_Mod") == 1
            else:
                assert sim.sunspec_point(704, "WSet") == -15000 and sim.sunspec_point(704, "WSetEna") == 1
                assert sim.sunspec_point(704, "WSetMod") == 1
            r = await rig.execute("SET_DISCHARGE_RATE", 30)
            assert r.outcome is Outcome.COMPLETED, r
            assert sim.setpoint_kw == pytest.approx(-30.0)
            assert (await rig.execute("SET_POWER_LIMIT", 40)).outcome is Outcome.COMPLETED
            assert sim.sunspec_point(124, "WChaMax") == 4000 and sim.power_limit_kw == pytest.approx(40.0)
            r = await rig.execute("SET_SOC_TARGET", 80)
            assert r.outcome is Outcome.REJECTED and "no SunSpec point" in r.reason
            rig.clock.advance(5.0)
            tel = await until(lambda: [e for e in rig.of(Telemetry) if e.values.get("power_kw", 0) < 0], what="telemetry")
            # storage: OutWRte is a percentage of WChaMax, so the 40 kW limit scales the 30 % rate to 12 kW
            assert tel[-1].values["power_kw"] == pytest.approx(-12.0 if control == "storage" else -30.0)
    run(t)


def test_sunspec_revert_timer_and_keepalive():
    async def t() -> None:
        mp = sunspec_map(revert_s=30)
        async with Rig(mp, poll_interval_s=300) as rig:
            assert (await rig.execute("SET_CHARGE_RATE", 10)).outcome is Outcome.COMPLETED
            assert rig.sim.sunspec_point(124, "InOutWRte_RvrtTms") == 30
            for _ in range(6):  # 60 s of site time in 10 s poll ticks (revert_s / 3): the link keeps it alive
                rig.clock.advance(10)
                before = rig.link.stats["keepalives"]
                await until(lambda: rig.link.stats["keepalives"] > before, what="keepalive")
            assert rig.sim.setpoint_kw == pytest.approx(10.0)
            await rig.link.stop()
            rig.clock.advance(31)  # nobody refreshes: the device reverts to 0 W
            assert rig.sim.setpoint_kw == 0.0 and rig.sim.sunspec_point(124, "StorCtl_Mod") == 0
    run(t)


# ------------------------------------------------------------------------------- failure modes

def test_read_back_mismatch_is_failed():
    async def t() -> None:
        async with Rig(RegisterMap.default(), sim_kwargs={"over_limit": "clamp"}) as rig:
            r = await rig.execute("SET_CHARGE_RATE", 60)  # the device silently clamps to 50 kW
            assert r.outcome is Outcome.FAILED
            assert "read-back 50.0 != written 60.0" in r.reason and "SET_CHARGE_RATE" in r.reason
    run(t)


def test_exception_responses_are_rejected_with_the_code_name():
    async def t() -> None:
        async with Rig(RegisterMap.default()) as rig:
            rig.sim.set_exception(3)
            r = await rig.execute("SET_CHARGE_RATE", 10)
            assert r.outcome is Outcome.REJECTED and "ILLEGAL_DATA_VALUE (3)" in r.reason
            assert r.detail["exception_code"] == 3
            rig.sim.set_exception("SERVER_DEVICE_BUSY")
            r = await rig.execute("SET_CHARGE_RATE", 10)
            assert r.outcome is Outcome.REJECTED and "SERVER_DEVICE_BUSY (6)" in r.reason
            rig.sim.set_exception(None)
            assert rig.sim.setpoint_kw == 0.0
            # the real limit check of the device: 60 kW > 50 kW
            r = await rig.execute("SET_CHARGE_RATE", 60)
            assert r.outcome is Outcome.REJECTED and "ILLEGAL_DATA_VALUE (3)" in r.reason
            assert (await rig.execute("SET_CHARGE_RATE", 10)).outcome is Outcome.COMPLETED
            # a value the register cannot hold never reaches the wire
            r = await rig.execute("SET_CHARGE_RATE", 7000)
            assert r.outcome is Outcome.REJECTED and "out of range for uint16" in r.reason
    run(t)


def test_silence_times_out_and_a_dead_battery_never_delays_another():
    async def t() -> None:
        async with Rig(RegisterMap.default(), timeout=0.2) as silent, Rig(RegisterMap.default(), timeout=0.2) as ok:
            silent.sim.set_silent(True)
            slow = asyncio.ensure_future(silent.execute("SET_CHARGE_RATE", 5))
            fast = asyncio.ensure_future(ok.execute("SET_CHARGE_RATE", 5))
            done, _ = await asyncio.wait({slow, fast}, return_when=asyncio.FIRST_COMPLETED)
            assert done == {fast} and not slow.done()  # the healthy battery did not wait for the silent one
            r1, r2 = await slow, fast.result()
            assert r1.outcome is Outcome.TIMED_OUT and "no answer" in r1.reason
            assert r2.outcome is Outcome.COMPLETED
            assert silent.sim.setpoint_kw == 0.0 and silent.sim.dropped >= 1  # the write did not land
            silent.sim.set_silent(False)
            r = await silent.execute("SET_CHARGE_RATE", 5)
            assert r.outcome is Outcome.COMPLETED and silent.sim.setpoint_kw == 5.0
    run(t)


def test_offline_is_not_connected_then_reconnect_reports_rebooted():
    async def t() -> None:
        async with Rig(RegisterMap.default()) as rig:
            assert (await rig.execute("SET_CHARGE_RATE", 12)).outcome is Outcome.COMPLETED
            await rig.sim.set_offline()
            await until(lambda: rig.of(LinkDown), what="LinkDown")
            r = await rig.execute("SET_CHARGE_RATE", 13)
            assert r.outcome is Outcome.NOT_CONNECTED
            tried = rig.link.stats["attempts"]
            await until(lambda: rig.link.stats["attempts"] >= tried + 3, what="three refused reconnects")
            assert len(rig.of(LinkDown)) == 1  # still one LinkDown per outage
            await rig.sim.set_online(reboot=True)  # power-cycled: it forgot its setpoint
            up = await until(lambda: [e for e in rig.of(LinkUp) if e.rebooted], what="LinkUp(rebooted=True)")
            assert len(up) == 1 and rig.sim.setpoint_kw == 0.0
            r = await rig.execute("SET_CHARGE_RATE", 13)  # what the actor does on rebooted=True
            assert r.outcome is Outcome.COMPLETED and rig.sim.setpoint_kw == 13.0
    run(t)


def test_start_does_not_block_on_a_dead_battery():
    async def t() -> None:
        rig = Rig(RegisterMap.default())
        await rig.sim.start()
        port = rig.sim.port
        await rig.sim.set_offline()
        link = ModbusBatteryLink("127.0.0.1", port, timeout=0.25, reconnect_delay=0.02, reconnect_delay_max=0.05)
        # returns while the battery is still offline (were it to wait for a connection, the test's
        # timeout would fail it)
        await link.start(DeviceContext(asyncio.get_running_loop(), rig.clock), rig.events.append)
        assert [type(e) for e in rig.events] == [LinkDown] and not link.connected
        assert (await link.execute(cmd("SET_CHARGE_RATE", 1))).outcome is Outcome.NOT_CONNECTED
        await rig.sim.set_online()
        await until(lambda: rig.of(LinkUp), what="LinkUp")
        assert rig.of(LinkUp)[0].rebooted is False  # first connection of this start()
        assert (await link.execute(cmd("SET_CHARGE_RATE", 1))).outcome is Outcome.COMPLETED
        await link.stop()
        # a link can start again after stop (the supervisor restarts actors with the same link)
        await link.start(DeviceContext(asyncio.get_running_loop(), rig.clock), rig.events.append)
        assert link.connected
        await link.stop()
        await rig.sim.stop()
    run(t)


def test_a_device_that_does_not_fit_the_map_stays_down_with_the_reason():
    async def t() -> None:
        rig = Rig(RegisterMap.default())  # a plain battery ...
        await rig.sim.start()
        link = ModbusBatteryLink("127.0.0.1", rig.sim.port, register_map=sunspec_map(), timeout=5.0,
                                 reconnect_delay=0.02, reconnect_delay_max=0.05)  # ... driven as SunSpec
        await link.start(DeviceContext(asyncio.get_running_loop(), rig.clock), rig.events.append)
        await until(lambda: link.stats["attempts"] >= 3, what="three discovery attempts")
        downs = rig.of(LinkDown)  # several attempts, one LinkDown
        assert len(downs) == 1 and "no SunSpec marker 'SunS' at register 40001" in downs[0].reason
        assert not rig.of(LinkUp) and link.stats["connects"] == 0
        r = await link.execute(cmd("SET_CHARGE_RATE", 1))
        assert r.outcome is Outcome.NOT_CONNECTED and "SunS" in r.reason
        await link.stop()
        await rig.sim.stop()
    run(t)


def test_telemetry_is_polled_on_the_site_clock():
    async def t() -> None:
        async with Rig(RegisterMap.default(), poll_interval_s=60) as rig:
            first = await until(lambda: rig.of(Telemetry), what="first telemetry")
            assert first[0].values == {"soc_pct": 50.0, "power_kw": 0.0}
            assert (await rig.execute("SET_CHARGE_RATE", 30)).outcome is Outcome.COMPLETED
            await yield_to_loop()
            assert len(rig.of(Telemetry)) == 1  # virtual time has not moved: no poll
            rig.clock.advance(60)
            tel = await until(lambda: rig.of(Telemetry)[1:], what="second telemetry")
            # 30 kW for 60 s into 100 kWh = +0.5 %; the default map carries SoC at 0.1 %
            assert tel[0].values == {"soc_pct": 50.5, "power_kw": 30.0}
            assert rig.link.stats["polls"] == 2
    run(t)


# ------------------------------------------------------------------------------------- interop

def _read_with_pymodbustcp(port: int, address: int, count: int) -> list[int]:
    client = ModbusClient(host="127.0.0.1", port=port, unit_id=1, auto_open=True, timeout=2.0)
    try:
        regs = client.read_holding_registers(address, count)
        assert regs is not None, f"pyModbusTCP read failed: {client.last_error_as_txt} {client.last_except_as_txt}"
        return regs
    finally:
        client.close()


def test_independent_client_reads_back_what_the_link_wrote():
    async def t() -> None:
        async with Rig(RegisterMap.default()) as rig:
            assert (await rig.execute("SET_DISCHARGE_RATE", 23.4)).outcome is Outcome.COMPLETED
            regs = await asyncio.wait_for(asyncio.to_thread(_read_with_pymodbustcp, rig.sim.port, 40000, 4), 10)
            assert regs == [0, 234, 500, 1000]  # charge, discharge 23.4 kW, limit 50 kW, SoC target 100 %
        async with Rig(RegisterMap.from_config(CUSTOM)) as rig:
            assert (await rig.execute("SET_CHARGE_RATE", 42.125)).outcome is Outcome.COMPLETED
            lo, hi = await asyncio.wait_for(asyncio.to_thread(_read_with_pymodbustcp, rig.sim.port, 40100, 2), 10)
            assert (hi << 16) | lo == 42125  # int32, low word first, x1000
    run(t)


# -------------------------------------------------------------------------------- register maps

def test_register_map_config_errors_name_the_key_and_value():
    cases = [
        ({"writes": {"SET_CHARGE_RATE": {"register": 40001, "type": "int33"}}}, "writes.SET_CHARGE_RATE.type", "'int33'"),
        ({"writes": {"SET_CHARGE_RATE": {"register": 40001, "word_order": "middle"}}}, "word_order", "'middle'"),
        ({"writes": {"SET_CHARGE_RATE": {"register": 40001, "scale": 0}}}, "writes.SET_CHARGE_RATE.scale", "0"),
        ({"writes": {"SET_CHARGE_RATE": {"register": "40001"}}}, "writes.SET_CHARGE_RATE.register", "'40001'"),
        ({"writes": {"SET_CHARGE_RATE": {"type": "uint16"}}}, "writes.SET_CHARGE_RATE.register", "missing"),
        ({"writes": {"SET_CHARGE_RATE": {"register": 70000}}}, "writes.SET_CHARGE_RATE", "70000"),
        ({"writes": {"CHARGE_FAST": {"register": 40001}}}, "writes.CHARGE_FAST", "unknown command type"),
        ({"writes": {}}, "writes", "{}"),
        ({"writes": {"SET_CHARGE_RATE": {"register": 40001, "type": "int32"},
                     "SET_DISCHARGE_RATE": {"register": 40002}}}, "both use register 40002", "SET_DISCHARGE_RATE"),
        ({"writes": {"SET_CHARGE_RATE": {"register": 40001}}, "reads": {"voltage": {"register": 40010}}},
         "reads.voltage", "unknown read point"),
        ({"writes": {"SET_CHARGE_RATE": {"register": 40001}},
          "reads": {"power_kw": {"register": 40011, "sign": "up"}}}, "reads.power_kw.sign", "'up'"),
        ({"writes": {"SET_CHARGE_RATE": {"register": 40001}},
          "reads": {"status": {"register": 40012, "states": {"1": "BUSY"}}}}, "reads.status.states.1", "'BUSY'"),
        ({"writes": {"SET_CHARGE_RATE": {"register": 40001}}, "adressing": "x"}, "unknown key 'adressing'", ""),
        ({"profile": "sunspec", "control": "magic"}, "control", "'magic'"),
    ]
    for cfg, key, value in cases:
        with pytest.raises(RegisterMapError) as e:
            RegisterMap.from_config(cfg)
        assert key in str(e.value) and value in str(e.value), (cfg, str(e.value))


def test_register_maps_as_data():
    d = RegisterMap.default()
    assert {ct.value: s.register for ct, s in d.writes.items()} == {
        "SET_CHARGE_RATE": 40001, "SET_DISCHARGE_RATE": 40002, "SET_POWER_LIMIT": 40003, "SET_SOC_TARGET": 40004}
    assert d.reads["soc_pct"].register == 40010 and d.reads["power_kw"].data_type == "int16"
    assert d.telemetry_reads() == [(40009, 2)]
    zero = RegisterMap.from_config({"addressing": "zero_based", "writes": {"SET_CHARGE_RATE": {"register": 100}},
                                    "reads": {"status": {"register": 101, "states": {0: "IDLE", 1: "CHARGING"}}}})
    assert zero.writes[CommandType.SET_CHARGE_RATE].address == 100
    assert zero.decode_status({101: 1}) == ("CHARGING", "1")
    ss = RegisterMap.from_config({"profile": "sunspec", "revert_s": 60, "control": "der"})
    assert ss.revert_s == 60 and ss.control == "der"
    # SunSpec offsets are pysunspec2's: model 124 InWRte is 13 registers after the model's ID
    _, points = sunspec_model_points(124)
    assert points["InWRte"].offset == 13 and points["InOutWRte_SF"].type == "sunssf"
    assert sunspec_model_points(704)[1]["WSet"].size == 2
    m = sunspec_map()
    assert m.model_addresses[1] == 40002 and m.address(124, "InWRte") == m.model_addresses[124] + 13


# ------------------------------------------------- register maps: gaps found by mutation testing (tests/tools/mutate.py)
# Plain unit tests of the maps (no sockets): a map turns a command and a register image into write plans.

def _pw(register: int, words: int = 1) -> PointWrite:
    spec = RegisterSpec(register, "uint32" if words == 2 else "uint16", 1.0)
    return PointWrite.of(f"r{register}", spec, 1)


def _blocks(blocks: list[WriteBlock]) -> list[tuple[int, int]]:
    return [(b.address + 1, len(b.words)) for b in blocks]  # (first register, count)


def test_merge_writes_keeps_plan_order_unless_asked_to_reorder():
    assert _blocks(merge_writes([_pw(11), _pw(10)])) == [(11, 1), (10, 1)]
    assert _blocks(merge_writes([_pw(11), _pw(10)], reorder=True)) == [(10, 2)]
    assert _blocks(merge_writes([_pw(10, 2), _pw(12)])) == [(10, 3)]


def test_merge_writes_reorders_only_points_that_form_one_contiguous_range():
    assert _blocks(merge_writes([_pw(20), _pw(10)], reorder=True)) == [(20, 1), (10, 1)]
    assert _blocks(merge_writes([_pw(12), _pw(10), _pw(11)], reorder=True)) == [(10, 3)]


def test_merge_reads_merges_overlapping_and_touching_ranges_up_to_125_registers():
    assert merge_reads([(10, 5), (11, 2)]) == [(10, 5)]  # a range inside another
    assert merge_reads([(11, 3), (10, 2), (14, 1)]) == [(10, 5)]
    assert merge_reads([(10, 2), (13, 1)]) == [(10, 2), (13, 1)]  # a gap is never read
    assert merge_reads([(0, 100), (90, 50)]) == [(0, 100), (90, 50)]  # merged, it would be 140 registers
    assert merge_reads([(0, 100), (90, 35)]) == [(0, 125)]


def test_a_register_map_is_immutable_and_compared_by_identity():
    d = RegisterMap.default()
    with pytest.raises(dataclasses.FrozenInstanceError):
        d.name = "x"  # type: ignore[misc]
    assert d == d and d != RegisterMap.default() and len({d, RegisterMap.default()}) == 2


def test_register_map_config_errors_for_tables_states_overlaps_and_flags():
    cases = [
        ({"writes": {"SET_CHARGE_RATE": 40001}}, "writes.SET_CHARGE_RATE: must be a table with register/type/scale/word_order, got 40001"),
        ({"writes": {"SET_CHARGE_RATE": {"register": 40001}}, "exclusive_rates": "yes"},
         "exclusive_rates: must be true or false, got 'yes'"),
        ({"writes": {"SET_CHARGE_RATE": {"register": 40001}},
          "reads": {"status": {"register": 40012, "states": {"one": "IDLE"}}}}, "reads.status.states: key 'one' is not an integer"),
        ({"writes": {"SET_CHARGE_RATE": {"register": 40001}}, "reads": {"soc_pct": {"register": 40001}}},
         "reads.soc_pct and writes.SET_CHARGE_RATE both use register 40001"),
        ({"writes": {"SET_CHARGE_RATE": {"register": 40001}},
          "reads": {"soc_pct": {"register": 40010}, "status": {"register": 40010, "states": {0: "IDLE"}}}},
         "reads.status and reads.soc_pct both use register 40010"),
        ({"profile": "sunspec", "discover": "yes"}, "discover: must be true or false, got 'yes'"),
    ]
    for cfg, message in cases:
        with pytest.raises(RegisterMapError) as e:
            RegisterMap.from_config(cfg)
        assert message in str(e.value), (cfg, str(e.value))


def test_load_register_map_accepts_names_tables_and_maps_and_refuses_anything_else():
    mp = RegisterMap.from_config(CUSTOM)
    assert load_register_map(None).name == "default" and load_register_map("default").name == "default"
    assert isinstance(load_register_map("sunspec"), SunSpecMap) and load_register_map(mp) is mp
    assert load_register_map(CUSTOM).name == "vendor-x"
    with pytest.raises(RegisterMapError, match="expected 'default', 'sunspec', a table or a map, got 42"):
        load_register_map(42)  # type: ignore[arg-type]


def test_a_plain_map_supports_exactly_its_write_points_and_has_no_status_without_one():
    mp = RegisterMap.from_config(CUSTOM)
    assert mp.supports(CommandType.SET_CHARGE_RATE) is True and mp.supports(CommandType.SET_SOC_TARGET) is False
    assert mp.decode_status({}) is None


def test_any_positive_rate_zeroes_the_opposite_rate_but_a_zero_rate_or_exclusive_false_does_not():
    d = RegisterMap.default()
    plan = d.plan(CommandType.SET_CHARGE_RATE, 0.5, {})
    assert [(p.point, p.value) for p in plan] == [("SET_DISCHARGE_RATE", 0.0), ("SET_CHARGE_RATE", 0.5)]
    assert [p.point for p in d.plan(CommandType.SET_CHARGE_RATE, 0, {})] == ["SET_CHARGE_RATE"]
    free = RegisterMap.from_config({"exclusive_rates": False, "writes": {"SET_CHARGE_RATE": {"register": 40001},
                                                                        "SET_DISCHARGE_RATE": {"register": 40002}}})
    assert [p.point for p in free.plan(CommandType.SET_CHARGE_RATE, 20, {})] == ["SET_CHARGE_RATE"]


# -- SunSpec maps on a register image


def sunspec_image(mp: SunSpecMap, points: dict[tuple[int, str], int]) -> dict[int, int]:
    """Every register of the map's models, zero, except ``points``: (model, point) -> raw integer."""
    image: dict[int, int] = {}
    for model in mp.model_addresses:
        addr, count = mp.model_range(model)
        image.update(dict.fromkeys(range(addr, addr + count), 0))
    for (model, name), raw in points.items():
        size = mp.point(model, name).size
        unsigned = raw & ((1 << (16 * size)) - 1)
        for k in range(size):
            image[mp.address(model, name) + k] = (unsigned >> (16 * (size - 1 - k))) & 0xFFFF
    return image


STORAGE = {(124, "WChaMax"): 5000, (124, "WChaMax_SF"): 1, (124, "InOutWRte_SF"): -2}  # 50 kW, rates in 0.01 %


def _plan(mp: SunSpecMap, ct: str, value: float, points: dict[tuple[int, str], int]) -> list[tuple[str, float]]:
    return [(p.point, p.value) for p in mp.plan(CommandType(ct), value, sunspec_image(mp, points))]


def test_sunspec_storage_discharge_writes_outwrte_as_a_percentage_and_the_discharge_mode():
    mp = sunspec_map(discover=False, revert_s=60)
    assert _plan(mp, "SET_DISCHARGE_RATE", 10, STORAGE) == [
        ("124.OutWRte", 20.0), ("124.InWRte", 0.0), ("124.InOutWRte_WinTms", 0.0), ("124.InOutWRte_RvrtTms", 60.0),
        ("124.StorCtl_Mod", 2.0)]


def test_sunspec_storage_zero_rate_clears_only_its_own_direction():
    mp = sunspec_map(discover=False)
    both = {**STORAGE, (124, "StorCtl_Mod"): 3}
    assert _plan(mp, "SET_CHARGE_RATE", 0, both) == [("124.InWRte", 0.0), ("124.StorCtl_Mod", 2.0)]
    assert _plan(mp, "SET_DISCHARGE_RATE", 0, both) == [("124.OutWRte", 0.0), ("124.StorCtl_Mod", 1.0)]
    charging = {**STORAGE, (124, "StorCtl_Mod"): 1}
    assert _plan(mp, "SET_DISCHARGE_RATE", 0, charging) == [("124.OutWRte", 0.0), ("124.StorCtl_Mod", 1.0)]
    unimplemented = {**STORAGE, (124, "StorCtl_Mod"): 0xFFFF}  # bitfield16 "not implemented": no bit is set
    assert _plan(mp, "SET_CHARGE_RATE", 0, unimplemented) == [("124.InWRte", 0.0), ("124.StorCtl_Mod", 0.0)]


def test_sunspec_storage_rate_with_a_zero_wchamax_is_refused():
    mp = sunspec_map(discover=False)
    with pytest.raises(RegisterMapError, match="124.WChaMax is 0 W: cannot express 5 kW as a percentage"):
        _plan(mp, "SET_CHARGE_RATE", 5, {**STORAGE, (124, "WChaMax"): 0})


def test_sunspec_der_rates_write_the_revert_timer_then_one_signed_wset_in_watts():
    mp = sunspec_map(control="der", revert_s=30, discover=False)
    assert _plan(mp, "SET_CHARGE_RATE", 15, {}) == [
        ("704.WSetRvrtTms", 30.0), ("704.WSetEna", 1.0), ("704.WSetMod", 1.0), ("704.WSet", -15000.0)]
    image = sunspec_image(mp, {(704, "WSet_SF"): 1})
    plan = mp.plan(CommandType.SET_DISCHARGE_RATE, 20, image)
    assert (plan[-1].point, plan[-1].value, plan[-1].words) == ("704.WSet", 20000.0, (0, 2000))  # raw = W / 10^1
    blocks = mp.blocks(CommandType.SET_DISCHARGE_RATE, 20, image)
    assert [[p.point for p in b.points] for b in blocks] == [["704.WSetRvrtTms"], ["704.WSetEna", "704.WSetMod", "704.WSet"]]


def test_sunspec_der_zero_rate_stops_only_its_own_direction():
    mp = sunspec_map(control="der", discover=False)
    charging = {(704, "WSetEna"): 1, (704, "WSet"): -15000}
    assert _plan(mp, "SET_DISCHARGE_RATE", 0, charging) == []  # charging goes on
    assert _plan(mp, "SET_CHARGE_RATE", 0, charging)[-1] == ("704.WSet", 0.0)  # stops charging
    discharging = {(704, "WSetEna"): 1, (704, "WSet"): 20000}
    assert _plan(mp, "SET_CHARGE_RATE", 0, discharging) == []
    assert _plan(mp, "SET_DISCHARGE_RATE", 0, discharging)[-1] == ("704.WSet", 0.0)
    disabled = {(704, "WSetEna"): 0, (704, "WSet"): 20000}  # WSet not in force: a zero is written
    assert _plan(mp, "SET_CHARGE_RATE", 0, disabled)[-1] == ("704.WSet", 0.0)


def test_sunspec_der_setup_reads_cover_model_124_and_the_current_wset():
    mp = sunspec_map(control="der", discover=False)
    reads = mp.setup_reads(CommandType.SET_CHARGE_RATE)
    for name in ("WSetEna", "WSet", "WSet_SF"):
        addr, size = mp.address(704, name), mp.point(704, name).size
        assert any(a <= addr and addr + size <= a + c for a, c in reads), name
    assert mp.model_range(124) in reads and mp.setup_reads(CommandType.SET_POWER_LIMIT) == [mp.model_range(124)]


def test_sunspec_raw_values_read_not_implemented_as_none_and_apply_twos_complement():
    mp = sunspec_map(discover=False)
    assert mp.raw(sunspec_image(mp, {(704, "WSet"): -15000}), 704, "WSet") == -15000
    assert mp.raw(sunspec_image(mp, {(704, "WSet"): 0x80000000}), 704, "WSet") is None  # int32 "not implemented"
    assert mp.raw(sunspec_image(mp, {(701, "W"): 0x8000}), 701, "W") is None  # int16 "not implemented"
    assert mp.raw(sunspec_image(mp, {(701, "W"): 0x8001}), 701, "W") == -32767


def test_sunspec_telemetry_leaves_out_points_the_device_does_not_implement():
    mp = sunspec_map(discover=False)
    ok = {(124, "ChaState"): 425, (124, "ChaState_SF"): -1, (701, "W"): -150, (701, "W_SF"): 2}
    assert mp.decode_telemetry(sunspec_image(mp, ok)) == {"soc_pct": 42.5, "power_kw": 15.0}
    assert mp.decode_telemetry(sunspec_image(mp, {**ok, (701, "W"): 0x8000})) == {"soc_pct": 42.5}
    assert mp.decode_telemetry(sunspec_image(mp, {**ok, (124, "ChaState_SF"): 0x8000})) == {"power_kw": 15.0}
    assert mp.decode_telemetry(sunspec_image(mp, {**ok, (124, "ChaState"): 0xFFFF})) == {"power_kw": 15.0}


def test_sunspec_scale_factors_from_minus_10_to_10_are_accepted_and_others_refused():
    mp = sunspec_map(discover=False)
    for sf in (-10, 0, 10):
        assert mp.sf(sunspec_image(mp, {(124, "WChaMax_SF"): sf}), 124, "WChaMax_SF") == sf
    for raw in (11, -11, 0x8000):
        with pytest.raises(RegisterMapError, match="124.WChaMax_SF is not implemented or invalid"):
            mp.sf(sunspec_image(mp, {(124, "WChaMax_SF"): raw}), 124, "WChaMax_SF")


def test_sunspec_models_may_end_exactly_at_the_top_of_the_address_space():
    layout = sunspec_map(discover=False).model_addresses  # at base 40000
    span = layout[704] + 2 + sunspec_model_points(704)[0] + 2 - 40000  # "SunS" up to the end marker
    top = 0x10000 - span
    assert sunspec_map(top).base_address == top
    with pytest.raises(RegisterMapError, match=f"do not fit above base address {top + 1}"):
        sunspec_map(top + 1)


class FakeDevice:
    """Holding registers for bind(): a SunSpec chain laid out from ``base``; reads past 0xFFFF fail the test."""

    def __init__(self, base: int, models: list[tuple[int, int]], end_marker: bool = True) -> None:
        self.mem = {base: 0x5375, base + 1: 0x6E53}
        addr = base + 2
        for mid, length in models:
            self.mem[addr], self.mem[addr + 1] = mid, length
            addr += 2 + length
        if end_marker:
            self.mem[addr] = 0xFFFF
        self.reads: list[tuple[int, int]] = []

    async def read(self, addr: int, count: int) -> list[int]:
        assert addr + count <= 0x10000, f"read of {count} registers at {addr} runs past the last register"
        self.reads.append((addr, count))
        return [self.mem.get(a, 0) for a in range(addr, addr + count)]


def test_sunspec_discovery_stops_at_the_top_of_the_address_space():
    length = sunspec_model_points(124)[0] + 1  # a device may implement a longer model
    base = 0xFFFF - 4 - length  # model 124 ends right below the last register, with no end marker after it
    device = FakeDevice(base, [(124, length)], end_marker=False)

    async def t() -> None:
        bound = await sunspec_map(base, models=(124,)).bind(device.read)
        assert dict(bound.model_addresses) == {124: base + 2}
    run(t)


def test_sunspec_discovery_checks_the_length_of_every_model_it_uses_and_skips_vendor_models():
    full = sunspec_model_points(124)[0]

    async def t() -> None:
        short_common = FakeDevice(40000, [(1, 10), (124, full)])
        with pytest.raises(RegisterMapError, match="SunSpec model 1 at register 40003 has length 10, "
                                                   "pysunspec2's definition needs 66"):
            await sunspec_map().bind(short_common.read)
        vendor = FakeDevice(40000, [(64001, 5), (124, full)])  # a model pysunspec2 does not know: skipped
        bound = await sunspec_map().bind(vendor.read)
        assert dict(bound.model_addresses) == {64001: 40002, 124: 40009}
    run(t)


def test_a_status_register_reading_a_non_finite_value_gives_no_status(caplog):
    mp = RegisterMap.from_config({"writes": {"SET_CHARGE_RATE": {"register": 40001}},
                                  "reads": {"status": {"register": 40012, "type": "float32", "states": {1: "CHARGING"}}}})
    assert mp.decode_status({40011: 0x3F80, 40012: 0}) == ("CHARGING", "1")  # float32 1.0
    assert mp.decode_status({40011: 0x7FC0, 40012: 0}) is None  # NaN: skipped with a warning
    assert "register 40012 (float32) reads nan" in caplog.text


def test_sunspec_map_keeps_its_models_as_a_tuple_and_requires_the_models_its_control_needs():
    assert sunspec_map(models=[1, 124]).models == (1, 124)
    with pytest.raises(RegisterMapError, match=r"lack model\(s\) \[124\] needed for control 'storage'"):
        sunspec_map(models=(1, 701))
    with pytest.raises(RegisterMapError, match=r"lack model\(s\) \[704\] needed for control 'der'"):
        sunspec_map(control="der", models=(1, 124))


def test_a_sunspec_map_supports_the_rates_and_the_power_limit_only():
    mp = sunspec_map()
    assert [ct.value for ct in CommandType if mp.supports(ct)] == ["SET_CHARGE_RATE", "SET_DISCHARGE_RATE",
                                                                  "SET_POWER_LIMIT"]


def test_a_sunspec_base_address_must_leave_room_for_the_marker_and_a_model_header():
    assert sunspec_map(0, models=(124,)).base_address == 0
    for bad in (65532, -1, True, "40000"):
        with pytest.raises(RegisterMapError, match=r"base_address: must be a PDU address in 0\.\.65531, got "):
            sunspec_map(bad)  # type: ignore[arg-type]
