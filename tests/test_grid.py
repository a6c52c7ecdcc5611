"""The site grid limit: the sum of what the assets are told to draw (feed) never exceeds it.

First the allocator's rules on their own (a table of situations), then a site on a virtual clock with
in-memory devices, then a property test: random schedules, operator commands and faults never make the
sum of what the devices were told exceed the limit, at any moment (GRID_EXAMPLES=300 runs it deeper).
"""

from __future__ import annotations

import os
import threading
from datetime import timedelta
from typing import Any

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from protocols.memory import InMemoryDevice
from runtime import (BatterySpec, ChargerSpec, Command, CommandStatus as S, CommandType as T, EventType, GridLimit,
                     Site, VirtualClock)
from runtime.core.command_table import Change
from runtime.core.errors import ConfigurationError
from runtime.core.grid import GridAllocator

from .conftest import T0

pytestmark = [pytest.mark.timeout(120)]


def cmd(cid: str, asset: str, kw: float, ctype: T = T.SET_CHARGE_RATE, source: str = "api") -> Command:
    return Command(cid, asset, ctype, kw, T0, source=source)


def allocator(limit: float, *specs: Any, policy: str = "proportional", priorities: dict[str, int] | None = None,
              export: float | None = None) -> GridAllocator:
    specs = specs or tuple(ChargerSpec(f"ev-{i}", max_kw=22.0) for i in range(3))
    g = GridAllocator(GridLimit(import_kw=limit, export_kw=export, policy=policy),  # type: ignore[arg-type]
                      {s.asset_id: s for s in specs}, priorities or {})
    for s in specs:
        g.set_sharing(s.asset_id, True, "AVAILABLE")
    return g


def dispatch(g: GridAllocator, c: Command) -> Command:
    """Review ``c`` and, if it may go, record it as sent with its grant."""
    review = g.review(c, 0.0)
    assert review.action == "send", review
    sent = c.evolve(S.DISPATCHED, attempts=1, granted=review.granted)
    g.observe([Change(sent, S.PENDING, EventType.COMMAND_DISPATCHED)])
    return sent


def complete(g: GridAllocator, sent: Command) -> None:
    g.observe([Change(sent.evolve(S.COMPLETED), S.DISPATCHED, EventType.COMMAND_COMPLETED)])


# ---- the allocator's rules --------------------------------------------------------------------------

def test_requests_that_fit_are_granted_in_full():
    g = allocator(50.0)
    assert [dispatch(g, c).granted for c in g.order([cmd("a", "ev-0", 11), cmd("b", "ev-1", 22)])] == [11, 22]


@pytest.mark.parametrize("policy, priorities, expected", [
    ("proportional", {}, {"ev-0": 11.0, "ev-1": 11.0, "ev-2": 11.0}),       # everyone scaled by 33/66
    ("priority", {"ev-2": 5, "ev-0": 1}, {"ev-2": 22.0, "ev-0": 11.0, "ev-1": 0.0}),  # by priority
])
def test_when_the_requests_exceed_the_limit_the_policy_decides(policy, priorities, expected):
    g = allocator(33.0, policy=policy, priorities=priorities)
    due = g.order([cmd(f"c{i}", f"ev-{i}", 22.0) for i in range(3)])
    granted = {c.asset_id: dispatch(g, c).granted for c in due}
    assert granted == pytest.approx(expected)
    assert sum(granted.values()) <= 33.0


def test_decreases_land_before_increases_so_the_sum_stays_under_the_limit_during_the_change():
    g = allocator(40.0)
    for sent in [dispatch(g, cmd("a1", "ev-0", 20)), dispatch(g, cmd("b1", "ev-1", 20))]:
        complete(g, sent)
    down, up = cmd("a2", "ev-0", 10), cmd("b2", "ev-1", 30)
    assert g.order([up, down]) == [down, up]              # the decrease is reviewed first
    a2 = dispatch(g, down)
    assert g.review(up, 0.0).action == "wait"             # 20 (ev-0, in flight) + 30 would be 50
    complete(g, a2)
    assert dispatch(g, up).granted == 30.0                # room once the decrease has landed


def test_an_increase_does_not_wait_forever_for_a_decrease():
    g = allocator(40.0)
    for sent in [dispatch(g, cmd("a1", "ev-0", 20)), dispatch(g, cmd("b1", "ev-1", 20))]:
        complete(g, sent)
    dispatch(g, cmd("a2", "ev-0", 10))                    # on its way, never confirmed
    up = cmd("b2", "ev-1", 30)
    assert g.review(up, 0.0).action == "wait"
    later = g.review(up, 31.0)                            # after MAX_WAIT_S it gets what fits now
    assert later.action == "send" and later.granted == 20.0


def test_a_finishing_charger_is_told_zero_and_its_share_goes_to_the_others_once_that_landed():
    g = allocator(33.0)
    sent = [dispatch(g, c) for c in g.order([cmd(f"c{i}", f"ev-{i}", 22.0) for i in range(3)])]
    for c in sent:
        complete(g, c)
    g.set_sharing("ev-0", True, "FINISHING")
    regrants = {(r.asset_id, r.granted) for r in g.regrants(set())}
    assert ("ev-0", 0.0) in regrants and ("ev-1", 16.5) in regrants and ("ev-2", 16.5) in regrants
    up = cmd("g1", "ev-1", 22.0, source="grid")
    assert g.review(up, 0.0).action == "wait"             # ev-0 still counts 11 until its 0 lands
    zero = dispatch(g, cmd("g0", "ev-0", 22.0, source="grid"))
    assert zero.granted == 0.0
    complete(g, zero)
    assert dispatch(g, up).granted == 16.5


def test_a_faulted_charger_counts_nothing_and_gets_its_share_back_when_it_recovers():
    g = allocator(33.0)
    for c in g.order([cmd(f"c{i}", f"ev-{i}", 22.0) for i in range(3)]):
        complete(g, dispatch(g, c))
    g.set_sharing("ev-2", False, "FAULTED")
    assert g.total_budget(T.SET_CHARGE_RATE) == 22.0      # a faulted charger draws nothing
    assert {r.asset_id: r.granted for r in g.regrants(set())} == {"ev-0": 16.5, "ev-1": 16.5, "ev-2": 0.0}
    g.set_sharing("ev-2", True, "AVAILABLE")
    assert {r.asset_id: r.granted for r in g.regrants(set())} == {"ev-0": 11.0, "ev-1": 11.0, "ev-2": 11.0}


def test_after_a_reboot_a_charger_counts_at_its_maximum_until_it_is_told_again():
    g = allocator(33.0)
    for c in g.order([cmd(f"c{i}", f"ev-{i}", 10.0) for i in range(3)]):
        complete(g, dispatch(g, c))
    g.rebooted("ev-0")                                    # without its profile it may draw 22 kW
    assert g.snapshot()["ev-0:SET_CHARGE_RATE"]["budget"] == 22.0
    assert [(r.asset_id, r.granted) for r in g.regrants(set())] == [("ev-0", 10.0)]   # the lost setpoint, re-sent


def test_discharging_batteries_are_capped_by_the_export_limit_and_do_not_buy_import_room():
    g = allocator(10.0, ChargerSpec("ev-0", max_kw=22.0), BatterySpec("bat-0"), BatterySpec("bat-1"), export=30.0)
    assert dispatch(g, cmd("e", "ev-0", 22.0)).granted == 10.0          # a discharge does not add import room
    due = g.order([cmd("d0", "bat-0", 40.0, T.SET_DISCHARGE_RATE), cmd("d1", "bat-1", 20.0, T.SET_DISCHARGE_RATE)])
    assert sum(dispatch(g, c).granted for c in due) == pytest.approx(30.0)


def test_a_grid_limit_is_checked_when_it_is_made():
    with pytest.raises(ConfigurationError, match="import_kw: must be a finite number >= 0"):
        GridLimit(import_kw=-1)
    with pytest.raises(ConfigurationError, match="policy"):
        GridLimit(import_kw=1, policy="fair")  # type: ignore[arg-type]


# ---- a site -------------------------------------------------------------------------------------------

def _schedule(values: dict[str, list[float]]) -> pd.DataFrame:
    n = len(next(iter(values.values())))
    return pd.DataFrame({f"{a.replace('-', '_')}_kw": v for a, v in values.items()},
                        index=pd.date_range(T0, periods=n, freq="5min"))


@pytest.mark.usefixtures("no_leaks")
def test_a_site_scales_setpoints_down_records_requested_and_granted_and_says_so():
    assets = [ChargerSpec(f"ev-{i}", max_kw=22.0) for i in range(3)]
    with Site(assets, clock=VirtualClock(T0), grid=GridLimit(import_kw=33.0)) as site:
        limited: list[Any] = []
        site.events.subscribe(EventType.GRID_LIMITED, limited.append)
        batch = site.submit_schedule(_schedule({f"ev-{i}": [22.0, 5.0] for i in range(3)}),
                                     asset_map={f"ev_{i}": f"ev-{i}" for i in range(3)})
        site.settle()
        first = [site.command(batch.command_id(i)) for i in range(3)]
        assert all(c.status is S.COMPLETED and c.value == 22.0 and c.granted == 11.0 for c in first)
        assert sum(site.device(a).setpoints["SET_CHARGE_RATE"] for a in site.asset_ids) == 33.0
        assert len(limited) == 3 and limited[0].payload["requested_kw"] == 22.0
        assert limited[0].payload["granted_kw"] == 11.0
        site.advance(300)
        assert {a: site.device(a).setpoints["SET_CHARGE_RATE"] for a in site.asset_ids} == {
            "ev-0": 5.0, "ev-1": 5.0, "ev-2": 5.0}


@pytest.mark.usefixtures("no_leaks")
def test_a_faulted_chargers_share_goes_to_the_others_at_once_and_comes_back():
    assets = [ChargerSpec(f"ev-{i}", max_kw=22.0) for i in range(3)]
    with Site(assets, clock=VirtualClock(T0), grid=GridLimit(import_kw=33.0)) as site:
        site.submit_schedule(_schedule({f"ev-{i}": [22.0] for i in range(3)}),
                             asset_map={f"ev_{i}": f"ev-{i}" for i in range(3)})
        site.settle()
        site.device("ev-0").report_status("FAULTED")
        site.settle()
        told = {a: site.device(a).setpoints["SET_CHARGE_RATE"] for a in ("ev-1", "ev-2")}
        assert told == {"ev-1": 16.5, "ev-2": 16.5}
        site.device("ev-0").report_status("AVAILABLE")
        site.settle()
        assert {a: site.device(a).setpoints["SET_CHARGE_RATE"] for a in site.asset_ids} == {
            "ev-0": 11.0, "ev-1": 11.0, "ev-2": 11.0}
        assert all(c.status in (S.COMPLETED, S.SUPERSEDED) for c in site.commands())


# ---- the property: never above the limit ---------------------------------------------------------------

class Monitor:
    """What every device was told, and the largest sum of it at any moment (devices that drew nothing
    because they were faulted count 0, and a device recovering from a fault draws nothing until it is
    told again)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.told: dict[str, float] = {}
        self.off: set[str] = set()
        self.peak = 0.0

    def applied(self, asset: str, kw: float) -> None:
        with self.lock:
            self.told[asset] = kw
            self.off.discard(asset)
            self.peak = max(self.peak, sum(v for a, v in self.told.items() if a not in self.off))

    def fault(self, asset: str) -> None:
        with self.lock:
            self.off.add(asset)


class WatchedCharger(InMemoryDevice):
    def __init__(self, name: str, monitor: Monitor) -> None:
        super().__init__(name)
        self.monitor = monitor

    async def execute(self, command: Command) -> Any:
        result = await super().execute(command)
        if command.command_type is T.SET_CHARGE_RATE and result.outcome.value == "COMPLETED":
            self.monitor.applied(self.name, command.setpoint)
        return result


steps = st.lists(st.lists(st.sampled_from([0.0, 3.7, 7.4, 11.0, 16.0, 22.0]), min_size=4, max_size=4),
                 min_size=2, max_size=5)
events = st.lists(st.tuples(st.integers(0, 4), st.integers(0, 3),
                            st.sampled_from(["fault", "recover", "finish", "plug", "command"]),
                            st.sampled_from([0.0, 11.0, 22.0])), max_size=8)


@settings(max_examples=int(os.environ.get("GRID_EXAMPLES", "25")), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(limit=st.sampled_from([10.0, 25.0, 40.0]), policy=st.sampled_from(["proportional", "priority"]),
       rows=steps, actions=events)
def test_random_schedules_faults_and_commands_never_exceed_the_limit(limit, policy, rows, actions):
    monitor = Monitor()
    assets = [ChargerSpec(f"ev-{i}", max_kw=22.0, device=WatchedCharger(f"ev-{i}", monitor)) for i in range(4)]
    with Site(assets, clock=VirtualClock(T0), grid=GridLimit(import_kw=limit, policy=policy),
              priorities={"ev-3": 2, "ev-1": 1}) as site:
        site.submit_schedule(_schedule({f"ev-{i}": [r[i] for r in rows] for i in range(4)}),
                             asset_map={f"ev_{i}": f"ev-{i}" for i in range(4)})
        site.settle()
        for step in range(len(rows)):
            for n, (at, asset_i, what, kw) in enumerate(actions):
                if at != step:
                    continue
                asset, dev = f"ev-{asset_i}", site.device(f"ev-{asset_i}")
                if what == "fault":
                    monitor.fault(asset)
                    dev.report_status("FAULTED")
                elif what == "recover":
                    dev.report_status("AVAILABLE")
                elif what == "finish":
                    dev.report_status("CHARGING")
                    dev.report_status("FINISHING")
                elif what == "plug":
                    dev.report_status("PREPARING")
                else:
                    site.submit(Command(f"op-{step}-{n}", asset, T.SET_CHARGE_RATE, kw,
                                        T0 + timedelta(minutes=5 * step)))
                site.settle()
            site.advance(300)
        books = site._policy.grid.total_budget(T.SET_CHARGE_RATE)
    assert monitor.peak <= limit + 1e-6, (monitor.peak, monitor.told)
    assert books <= limit + 1e-6
