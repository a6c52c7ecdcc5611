"""End to end: Site -> asset actors -> ModbusBatteryLink -> real sockets -> BatterySim, for the default,
a custom and the SunSpec map. The simulators run on their own I/O thread (as a separate device would),
on the site's virtual clock."""

from __future__ import annotations


import pytest

from protocols.modbus import ModbusBatteryLink, RegisterMap, sunspec_map
from protocols.sim.battery import BatterySim
from runtime.core.assets import BatterySpec
from runtime.core.clock import VirtualClock
from runtime.core.commands import Command, CommandStatus, CommandType, new_command_id
from runtime.core.iothread import IOThread
from runtime.site import Site

from .asyncsupport import wait_until
from .conftest import T0
from .test_modbus_link import CUSTOM

pytestmark = [pytest.mark.timeout(30), pytest.mark.usefixtures("no_leaks")]


def until(pred, timeout: float = 5.0, what: str = "condition"):
    return wait_until(pred, timeout, what)


def test_site_drives_modbus_batteries_end_to_end():
    clock = VirtualClock(T0)
    maps = {"bat-default": RegisterMap.default(), "bat-custom": RegisterMap.from_config(CUSTOM),
            "bat-sunspec": sunspec_map(control="storage")}
    io = IOThread("sim-io").start()
    sims = {aid: BatterySim(register_map=mp, clock=clock, name=aid) for aid, mp in maps.items()}
    try:
        for sim in sims.values():
            io.call(sim.start())
        specs = [BatterySpec(aid, device=ModbusBatteryLink("127.0.0.1", sims[aid].port, register_map=mp, timeout=0.5,
                                                           reconnect_delay=0.05, reconnect_delay_max=0.2,
                                                           poll_interval_s=30))
                 for aid, mp in maps.items()]
        with Site(specs, clock=clock) as site:
            ids = {}
            for aid in maps:
                c = Command(new_command_id(), aid, CommandType.SET_CHARGE_RATE, 20.0, clock.now())
                site.submit(c)
                ids[aid] = c.command_id
            site.advance(0)
            for aid, cid in ids.items():
                done = site.wait_for(cid, timeout=10)
                assert done.status is CommandStatus.COMPLETED, (aid, done)
                assert sims[aid].setpoint_kw == pytest.approx(20.0)
            # telemetry on the site clock: the actors follow the measured power sign
            site.advance(30)
            until(lambda: all(site.asset_state(aid) == "CHARGING" for aid in maps), what="CHARGING")
            # over the device limit: the asset spec refuses it before the wire
            over = Command(new_command_id(), "bat-default", CommandType.SET_CHARGE_RATE, 80.0, clock.now())
            site.submit(over)
            site.advance(0)
            assert site.wait_for(over.command_id, timeout=10).status is CommandStatus.REJECTED
            # a power-cycled battery gets its target re-sent by the actor (LinkUp(rebooted=True))
            sim = sims["bat-sunspec"]
            io.call(sim.set_offline())
            until(lambda: site.asset_status("bat-sunspec").link == "down", what="the link to notice the outage")
            io.call(sim.set_online(reboot=True))
            until(lambda: sim.setpoint_kw == pytest.approx(20.0), what="target re-sent after reboot")
            # discharging flips the state machine once the next poll sees negative power
            d = Command(new_command_id(), "bat-custom", CommandType.SET_DISCHARGE_RATE, 10.0, clock.now())
            site.submit(d)
            site.advance(0)
            assert site.wait_for(d.command_id, timeout=10).status is CommandStatus.COMPLETED
            site.advance(30)
            until(lambda: site.asset_state("bat-custom") == "DISCHARGING", what="DISCHARGING")
            assert sims["bat-custom"].soc_pct < sims["bat-default"].soc_pct
    finally:
        for sim in sims.values():
            io.call(sim.stop())
        io.stop()
