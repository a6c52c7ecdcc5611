"""The battery simulator on real sockets: physics over a virtual clock, limits, fault injection, the
SunSpec layout as pysunspec2's scanner sees it, and the CLI process."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
import sunspec2.modbus.client as sunspec_client
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusIOException

from protocols.base import DeviceContext, Outcome
from protocols.modbus import ModbusBatteryLink, sunspec_map
from protocols.sim.battery import BatterySim
from runtime.core.clock import VirtualClock
from runtime.core.commands import Command, CommandType, new_command_id

from .asyncsupport import settle
from .conftest import T0
from .test_modbus_link import run

pytestmark = [pytest.mark.timeout(30), pytest.mark.usefixtures("no_leaks")]

ROOT = Path(__file__).resolve().parents[1]


async def client_for(sim: BatterySim, timeout: float = 0.3) -> AsyncModbusTcpClient:
    client = AsyncModbusTcpClient("127.0.0.1", port=sim.port, timeout=timeout, retries=0, reconnect_delay=0)
    assert await client.connect()
    return client


async def close(client: AsyncModbusTcpClient) -> None:
    client.close()
    await asyncio.sleep(0)


# ------------------------------------------------------------------------------------- physics

def test_soc_integrates_power_over_the_virtual_clock():
    async def t() -> None:
        clock = VirtualClock(T0)
        async with BatterySim(capacity_kwh=100, max_charge_kw=50, max_discharge_kw=40, soc_pct=50,
                              clock=clock) as sim:
            client = await client_for(sim)
            try:
                assert not (await client.write_registers(40000, [500, 0])).isError()  # charge 50 kW
                clock.advance(1800)  # 25 kWh into 100 kWh
                assert sim.soc_pct == pytest.approx(75.0)
                rr = await client.read_holding_registers(40009, count=2)
                assert rr.registers == [750, 500]  # SoC 75.0 %, power 50.0 kW
                clock.advance(3600)  # would reach 125 %: stops at 100 % after 30 min, power drops to 0
                assert sim.soc_pct == 100.0 and sim.power_kw == 0.0 and sim.setpoint_kw == 50.0
                rr = await client.read_holding_registers(40009, count=2)
                assert rr.registers == [1000, 0]
                # discharge 40 kW (the device maximum) for 3 h: empty after 2.5 h, then 0 kW
                assert not (await client.write_registers(40000, [0, 400])).isError()
                clock.advance(3 * 3600)
                assert sim.soc_pct == 0.0 and sim.power_kw == 0.0
                rr = await client.read_holding_registers(40010, count=1)
                assert client.convert_from_registers(rr.registers, client.DATATYPE.INT16) == 0
                # power limit 10 kW caps a 50 kW charge; SoC target 30 % stops charging there
                assert not (await client.write_registers(40000, [500, 0, 100, 300])).isError()
                assert sim.power_kw == 10.0
                clock.advance(3600 * 5)
                assert sim.soc_pct == pytest.approx(30.0) and sim.power_kw == 0.0
                rr = await client.read_holding_registers(40009, count=2)
                assert rr.registers == [300, 0]
            finally:
                await close(client)
    run(t)


def test_limits_are_enforced_with_exception_codes():
    async def t() -> None:
        async with BatterySim(max_charge_kw=50, max_discharge_kw=40) as sim:
            client = await client_for(sim)
            try:
                rr = await client.write_registers(40000, [501])  # 50.1 kW > 50 kW
                assert rr.isError() and rr.exception_code == 3
                rr = await client.write_registers(40001, [401])  # 40.1 kW discharge > 40 kW
                assert rr.isError() and rr.exception_code == 3
                rr = await client.write_registers(40003, [1001])  # SoC target 100.1 %
                assert rr.isError() and rr.exception_code == 3
                assert sim.setpoint_kw == 0.0 and sim.writes == []  # nothing landed
                rr = await client.write_registers(40009, [0])  # SoC is read-only
                assert rr.isError() and rr.exception_code == 2
                rr = await client.read_holding_registers(40005, count=1)  # not a register of the map
                assert rr.isError() and rr.exception_code == 2
                rr = await client.write_register(40000, 123)  # function 6 works too
                assert not rr.isError() and sim.setpoint_kw == pytest.approx(12.3)
            finally:
                await close(client)
    run(t)


# ---------------------------------------------------------------------------------- fault injection

def test_fault_injection_exception_silence_offline():
    async def t() -> None:
        async with BatterySim() as sim:
            port = sim.port
            client = await client_for(sim, timeout=0.2)
            try:
                sim.set_exception("ILLEGAL_DATA_VALUE")
                for rr in (await client.read_holding_registers(40009, count=1),
                           await client.write_registers(40000, [10])):
                    assert rr.isError() and rr.exception_code == 3
                sim.set_exception(4)
                rr = await client.read_holding_registers(40009, count=1)
                assert rr.isError() and rr.exception_code == 4
                sim.set_exception(None)
                sim.set_silent(True)
                with pytest.raises(ModbusIOException):
                    await client.write_registers(40000, [10])
                assert sim.setpoint_kw == 0.0 and sim.dropped == 1
                sim.set_silent(False)
                assert not (await client.write_registers(40000, [10])).isError()
                await sim.set_offline()
                await settle(lambda: not client.connected, what="the client to see the connection drop")
                assert not sim.online
                with pytest.raises(ConnectionException):
                    await client.read_holding_registers(40000, count=1)
                await sim.set_online()
                assert sim.port == port
                assert await client.connect()
                rr = await client.read_holding_registers(40000, count=1)
                assert rr.registers == [10]  # kept its setpoint across the outage (no reboot)
                await sim.set_offline()
                await sim.set_online(reboot=True)
                assert await client.connect()
                assert (await client.read_holding_registers(40000, count=1)).registers == [0]
            finally:
                await close(client)
    run(t)


# ------------------------------------------------------------------------------------------ SunSpec

def _scan(port: int) -> dict[str, Any]:
    device = sunspec_client.SunSpecModbusClientDeviceTCP(slave_id=1, ipaddr="127.0.0.1", ipport=port, timeout=2)
    try:
        device.scan()
        m1, m124, m704 = device.models[1][0], device.models[124][0], device.models[704][0]
        return {
            "models": [k for k in device.models if isinstance(k, int)], "base": device.base_addr,
            "errors": m124.error_info + m704.error_info, "Mn": m1.Mn.value, "Md": m1.Md.value,
            "WChaMax": m124.WChaMax.cvalue, "InWRte": m124.InWRte.cvalue, "StorCtl_Mod": m124.StorCtl_Mod.value,
            "RvrtTms": m124.InOutWRte_RvrtTms.value, "ChaState": m124.ChaState.cvalue, "ChaSt": m124.ChaSt.value,
            "WSetEna": m704.WSetEna.value, "WSetMod": m704.WSetMod.value, "WSet": m704.WSet.cvalue,
            "W": device.models[701][0].W.cvalue,
        }
    finally:
        device.close()


def test_pysunspec2_scanner_reads_models_written_by_our_link():
    async def t() -> None:
        clock = VirtualClock(T0)
        async with BatterySim(register_map=sunspec_map(), soc_pct=42.5, clock=clock) as sim:
            for control, value in (("der", 20.0), ("storage", 15.0)):
                link = ModbusBatteryLink("127.0.0.1", sim.port, register_map=sunspec_map(control=control, revert_s=900),
                                         timeout=0.5)
                await link.start(DeviceContext(asyncio.get_running_loop(), clock), lambda e: None)
                r = await link.execute(Command(new_command_id(), "b", CommandType.SET_CHARGE_RATE, value, T0))
                assert r.outcome is Outcome.COMPLETED, r
                await link.stop()
                if control == "der":  # hand the battery back from 704 to 124
                    client = await client_for(sim)
                    await client.write_registers(sim.register_map.address(704, "WSetEna"), [0])
                    await close(client)
            got = await asyncio.wait_for(asyncio.to_thread(_scan, sim.port), 15)
        assert got["models"] == [1, 701, 124, 704] and got["base"] == 40000 and got["errors"] == ""
        assert got["Mn"] == "Qubit Energy" and got["Md"] == "BatterySim"
        assert got["WChaMax"] == 50000 and got["InWRte"] == 30.0 and got["StorCtl_Mod"] == 1  # 15 kW of 50 kW
        assert got["RvrtTms"] == 900 and got["ChaState"] == 42.5 and got["ChaSt"] == 4  # CHARGING
        assert got["W"] == -15000  # 701: absorbing 15 kW
        assert got["WSetEna"] == 0 and got["WSetMod"] == 1 and got["WSet"] == -20000  # what 704 last held
    run(t)


def test_sunspec_revert_timer_in_the_simulator():
    async def t() -> None:
        clock = VirtualClock(T0)
        mp = sunspec_map()
        async with BatterySim(register_map=mp, clock=clock) as sim:
            client = await client_for(sim)
            try:
                a = mp.address
                assert not (await client.write_registers(a(124, "OutWRte"), [0, 2000, 0, 60])).isError()
                assert not (await client.write_registers(a(124, "StorCtl_Mod"), [1])).isError()
                assert sim.setpoint_kw == pytest.approx(10.0)  # 20 % of 50 kW
                clock.advance(59)
                assert sim.setpoint_kw == pytest.approx(10.0)
                clock.advance(2)
                assert sim.setpoint_kw == 0.0 and sim.sunspec_point(124, "StorCtl_Mod") == 0
                assert sim.soc_pct == pytest.approx(50 + 10 * 60 / 3600)  # charged for exactly 60 s
                rr = await client.write_registers(a(124, "InWRte"), [10001])  # 100.01 %
                assert rr.isError() and rr.exception_code == 3
                rr = await client.write_registers(a(124, "ChaState"), [0])  # read-only point
                assert rr.isError() and rr.exception_code == 2
                # 704: WSet in watts, negative = charging, with its own revert timer
                assert not (await client.write_registers(a(704, "WSetRvrtTms"), [0, 30])).isError()
                assert not (await client.write_registers(a(704, "WSetEna"), [1, 1, 0xFFFF, 0xFFFF - 4999])).isError()
                assert sim.setpoint_kw == pytest.approx(5.0)
                clock.advance(31)
                assert sim.setpoint_kw == 0.0 and sim.sunspec_point(704, "WSetEna") == 0
            finally:
                await close(client)
    run(t)


# ------------------------------------------------------------------------------------------- CLI

CLI = ("-m", "runtime.cli", "sim", "battery")


async def spawn_cli(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, *CLI, *args, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_cli_runs_batteries_until_sigterm():
    async def t() -> None:
        proc = await spawn_cli("--port", "0", "--count", "2", "--map", "sunspec", "--capacity-kwh", "80")
        try:
            lines: list[str] = []
            while not any("running" in ln for ln in lines):
                line = (await asyncio.wait_for(proc.stdout.readline(), 15)).decode()
                assert line, f"simulator exited: {await proc.wait()} {(await proc.stderr.read()).decode()}"
                lines.append(line)
            ports = [int(ln.split("listening on 127.0.0.1:")[1].split()[0]) for ln in lines if "listening on" in ln]
            assert len(ports) == 2 and len(set(ports)) == 2
            for port in ports:
                client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=1, retries=0, reconnect_delay=0)
                assert await client.connect()
                rr = await client.read_holding_registers(40000, count=2)
                assert rr.registers == [0x5375, 0x6E53]  # "SunS"
                await close(client)
            proc.send_signal(signal.SIGTERM)
            out, err = await asyncio.wait_for(proc.communicate(), 10)
            assert proc.returncode == 0, err.decode()
            assert "stopped 2 battery simulator(s)" in out.decode()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.communicate()
    run(t)


def test_cli_reports_a_busy_port():
    async def t() -> None:
        async with BatterySim() as sim:
            proc = await spawn_cli("--port", str(sim.port))
            out, err = await asyncio.wait_for(proc.communicate(), 15)
            assert proc.returncode == 1 and f"cannot listen on 127.0.0.1:{sim.port}" in err.decode()
    run(t)
