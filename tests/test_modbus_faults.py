"""ModbusBatteryLink against misbehaving batteries (real sockets on 127.0.0.1, BatterySim, no mocks):

* a non-finite float32 reading (inf/NaN) is skipped with a warning; the poller lives on;
* an unexpected error in one poll neither stops polling nor the revert-timer keepalive;
* a battery that accepts TCP but never answers is never reported up, and the reconnect backoff grows.

No timing assertions: behaviour and event sequences only (pytest-timeout guards hangs).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import pytest

from protocols.base import DeviceContext, LinkDown, LinkUp, Outcome, StatusReport, Telemetry
from protocols.modbus import ModbusBatteryLink, RegisterMap, sunspec_map
from protocols.modbus.register_map import BatteryRegisterMap, PointWrite, WriteBlock
from runtime.core.commands import CommandType

from .asyncsupport import settle as until
from .test_modbus_link import Rig, cmd, run

pytestmark = [pytest.mark.timeout(30), pytest.mark.usefixtures("no_leaks")]

FLOAT_MAP = {
    "name": "float-dev",
    "writes": {"SET_CHARGE_RATE": {"register": 40001, "scale": 10}},
    "reads": {"soc_pct": {"register": 40011, "type": "float32"},
              "power_kw": {"register": 40013, "type": "int16", "scale": 10},
              "status": {"register": 40020, "type": "float32", "states": {0: "IDLE", 1: "CHARGING"}}},
}
PLUS_INF, MINUS_INF, NAN = (0x7F80, 0), (0xFF80, 0), (0x7FC0, 0)


def _link_events(rig: Rig) -> list[type]:
    return [type(e) for e in rig.events if isinstance(e, (LinkUp, LinkDown))]


def _warnings(caplog: pytest.LogCaptureFixture, *needles: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records
            if r.levelno >= logging.WARNING and all(n in r.getMessage() for n in needles)]


# ------------------------------------------------------------------------- non-finite readings

@pytest.mark.parametrize("register, words, shown", [
    (40020, PLUS_INF, "inf"), (40020, NAN, "nan"),      # status
    (40011, MINUS_INF, "-inf"), (40011, NAN, "nan"),    # telemetry (SoC)
])
def test_a_non_finite_float32_reading_is_skipped_and_polling_goes_on(caplog, register, words, shown):
    caplog.set_level(logging.WARNING, logger="protocols.modbus")

    async def t() -> None:
        async with Rig(RegisterMap.from_config(FLOAT_MAP), poll_interval_s=60) as rig:
            link = rig.link
            await until(lambda: rig.of(StatusReport), what="first status")
            assert rig.of(Telemetry)[0].values == {"soc_pct": 50.0, "power_kw": 0.0}
            assert rig.of(StatusReport)[0].state == "IDLE"

            rig.sim.force(register, words)  # the device's register now reads inf/NaN
            n_tel, n_status = len(rig.of(Telemetry)), len(rig.of(StatusReport))
            for _ in range(3):  # several poll ticks with the broken register: the poller survives them
                polls = link.stats["polls"]
                rig.clock.advance(60)
                await until(lambda: link.stats["polls"] > polls, what="poll while the register is broken")
            warned = _warnings(caplog, f"register {register}", shown)
            assert warned, [r.getMessage() for r in caplog.records]
            if register == 40020:  # status skipped, telemetry still reported
                assert len(rig.of(StatusReport)) == n_status
                assert len(rig.of(Telemetry)) == n_tel + 3
            else:  # only the broken reading is left out; power and status still come through
                assert [set(e.values) for e in rig.of(Telemetry)[n_tel:]] == [{"power_kw"}] * 3
                assert len(rig.of(StatusReport)) == n_status + 3

            rig.sim.force(register, None)  # the device recovers: full telemetry again
            rig.clock.advance(60)
            await until(lambda: len(rig.of(StatusReport)) > n_status + (0 if register == 40020 else 3),
                        what="status after the register recovered")
            assert rig.of(Telemetry)[-1].values == {"soc_pct": 50.0, "power_kw": 0.0}
            assert rig.of(StatusReport)[-1].state == "IDLE"
            assert all(not task.done() for task in link._tasks)
            assert link.connected and rig.of(LinkDown) == [] and len(rig.of(LinkUp)) == 1
            # and the link still commands the battery
            assert (await rig.execute("SET_CHARGE_RATE", 5)).outcome is Outcome.COMPLETED
    run(t)


class _ExplodingTelemetry(BatteryRegisterMap):
    """A map whose telemetry decoding raises something nobody expects (a bug, a device oddity)."""

    def __init__(self, inner: BatteryRegisterMap) -> None:
        self.inner, self.name, self.revert_s = inner, inner.name, inner.revert_s

    def supports(self, command_type: CommandType) -> bool:
        return self.inner.supports(command_type)

    async def bind(self, read: Any) -> BatteryRegisterMap:
        return _ExplodingTelemetry(await self.inner.bind(read))

    def setup_reads(self, command_type: CommandType) -> list[tuple[int, int]]:
        return self.inner.setup_reads(command_type)

    def plan(self, command_type: CommandType, value: float, image: Mapping[int, int]) -> list[PointWrite]:
        return self.inner.plan(command_type, value, image)

    def blocks(self, command_type: CommandType, value: float, image: Mapping[int, int]) -> list[WriteBlock]:
        return self.inner.blocks(command_type, value, image)

    def telemetry_reads(self) -> list[tuple[int, int]]:
        return self.inner.telemetry_reads()

    def decode_telemetry(self, image: Mapping[int, int]) -> dict[str, float]:
        raise OverflowError("cannot convert float infinity to integer")


def test_an_unexpected_poll_error_is_logged_and_the_keepalive_goes_on(caplog):
    caplog.set_level(logging.WARNING, logger="protocols.modbus")

    async def t() -> None:
        inner = sunspec_map(revert_s=30)
        rig = Rig(inner, poll_interval_s=300)  # the simulator speaks the real map ...
        rig.map = _ExplodingTelemetry(inner)   # ... the link decodes through the exploding one
        async with rig:
            assert (await rig.execute("SET_CHARGE_RATE", 10)).outcome is Outcome.COMPLETED
            for _ in range(6):  # 60 s of site time in 10 s poll ticks: every poll raises, keepalive runs
                rig.clock.advance(10)
                before = rig.link.stats["keepalives"]
                await until(lambda: rig.link.stats["keepalives"] > before, what="keepalive")
            assert rig.sim.setpoint_kw == pytest.approx(10.0)  # the revert timer never ran out
            assert _warnings(caplog, "poll failed unexpectedly")
            assert "OverflowError" in caplog.text
            assert rig.link.stats["polls"] == 0 and not rig.of(Telemetry)
            assert all(not task.done() for task in rig.link._tasks) and rig.link.connected
    run(t)


def test_a_task_that_ends_unexpectedly_is_logged(caplog):
    caplog.set_level(logging.WARNING, logger="protocols.modbus")

    async def t() -> None:
        async with Rig(RegisterMap.default()) as rig:
            link = rig.link

            async def dies() -> None:
                raise RuntimeError("poller bug")

            async def returns() -> None:
                return None

            # the link's done-callback on tasks that end the two ways its own tasks must never end
            for body in (dies, returns):
                task = asyncio.get_running_loop().create_task(body(), name=f"modbus-{body.__name__}")
                link._tasks.append(task)
                task.add_done_callback(link._task_done)
                await asyncio.gather(task, return_exceptions=True)
                await asyncio.sleep(0)  # done-callbacks run on the next loop iteration
                link._tasks.remove(task)
            assert _warnings(caplog, "modbus-dies died", "RuntimeError", "poller bug")
            assert _warnings(caplog, "modbus-returns ended unexpectedly")
        # stop() cancels the real tasks: that is not reported
        assert not _warnings(caplog, "modbus-connect") and not _warnings(caplog, "modbus-poll")
    run(t)


# --------------------------------------------------------------------------- silent battery

async def _silent_start(rig: Rig) -> ModbusBatteryLink:
    await rig.sim.start()
    rig.sim.set_silent(True)  # accepts TCP, answers nothing
    link = ModbusBatteryLink("127.0.0.1", rig.sim.port, register_map=rig.map, **rig.link_kwargs)
    rig.link = link
    await link.start(DeviceContext(asyncio.get_running_loop(), rig.clock), rig.events.append)
    return link


def test_a_battery_that_accepts_tcp_but_never_answers_is_never_up():
    async def t() -> None:
        rig = Rig(RegisterMap.default(), timeout=0.1, reconnect_delay=0.01, reconnect_delay_max=0.08)
        link = await _silent_start(rig)
        try:
            assert _link_events(rig) == [LinkDown] and not link.connected
            assert "does not answer" in rig.events[0].reason
            # several TCP connects, each probed, none answered: still no LinkUp, one LinkDown, and the
            # backoff grew to its cap instead of starting over on every TCP connect
            await until(lambda: link.stats["tcp_connects"] >= 5, timeout=10, what="reconnect attempts")
            assert not rig.of(LinkUp) and len(rig.of(LinkDown)) == 1 and link.stats["connects"] == 0
            assert link.reconnect_backoff == pytest.approx(0.08)
            r = await link.execute(cmd("SET_CHARGE_RATE", 5))
            assert r.outcome is Outcome.NOT_CONNECTED and "does not answer" in r.reason
            assert rig.sim.setpoint_kw == 0.0

            rig.sim.set_silent(False)  # it answers again: up, first connection of this start()
            await until(lambda: rig.of(LinkUp), timeout=10, what="LinkUp")
            assert _link_events(rig) == [LinkDown, LinkUp] and rig.of(LinkUp)[0].rebooted is False
            assert link.reconnect_backoff == pytest.approx(0.01)  # reset by the answered probe
            assert (await link.execute(cmd("SET_CHARGE_RATE", 5))).outcome is Outcome.COMPLETED
        finally:
            await link.stop()
            await rig.sim.stop()
    run(t)


def test_a_battery_that_goes_silent_does_not_flap():
    async def t() -> None:
        async with Rig(RegisterMap.default(), timeout=0.1, reconnect_delay=0.01, reconnect_delay_max=0.08) as rig:
            link = rig.link
            assert _link_events(rig) == [LinkUp]
            rig.sim.set_silent(True)
            for _ in range(10):  # requests time out until pymodbus gives the connection up
                r = await link.execute(cmd("SET_CHARGE_RATE", 5))
                if r.outcome is Outcome.NOT_CONNECTED:
                    break
                assert r.outcome is Outcome.TIMED_OUT, r
            await until(lambda: rig.of(LinkDown), what="LinkDown")
            tcp = link.stats["tcp_connects"]
            await until(lambda: link.stats["tcp_connects"] >= tcp + 4, timeout=10, what="reconnect attempts")
            # reconnected (TCP) several times while silent: never reported up, so the asset actor was
            # never told to re-send its targets
            assert _link_events(rig) == [LinkUp, LinkDown] and not link.connected
            assert link.reconnect_backoff == pytest.approx(0.08)

            rig.sim.set_silent(False)
            await until(lambda: len(rig.of(LinkUp)) == 2, timeout=10, what="LinkUp after silence")
            assert _link_events(rig) == [LinkUp, LinkDown, LinkUp]
            assert rig.of(LinkUp)[-1].rebooted is True
            assert (await link.execute(cmd("SET_CHARGE_RATE", 6))).outcome is Outcome.COMPLETED
            assert rig.sim.setpoint_kw == 6.0
    run(t)


def test_an_exception_response_to_the_probe_still_counts_as_up():
    async def t() -> None:
        rig = Rig(RegisterMap.default())
        await rig.sim.start()
        rig.sim.set_exception("SERVER_DEVICE_BUSY")  # it answers, just not with data
        link = ModbusBatteryLink("127.0.0.1", rig.sim.port, **rig.link_kwargs)
        await link.start(DeviceContext(asyncio.get_running_loop(), rig.clock), rig.events.append)
        try:
            assert _link_events(rig) == [LinkUp] and link.connected
        finally:
            await link.stop()
            await rig.sim.stop()
    run(t)
