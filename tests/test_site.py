"""The actor runtime behind Site, on a virtual clock with in-memory devices."""

from __future__ import annotations

import asyncio
import io
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import pytest

from actors.messages import GetAssetRef
from actors.supervisor import RestartPolicy
from protocols.memory import InMemoryDevice
from runtime import (BatterySpec, ChargerSpec, Command, CommandStatus as S, CommandType as T, EventType,
                     RetryPolicy, Site, SiteFailed, UnknownAsset, VirtualClock)
from runtime.core.journal import Journal

from .asyncsupport import wait_until
from .conftest import T0

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("no_leaks")]


def _site(*assets, **kw) -> Site:
    assets = assets or (ChargerSpec("ev-1", max_kw=22.0), BatterySpec("bat-1"))
    return Site(list(assets), clock=VirtualClock(T0), **kw)


def _cmd(cid: str, asset: str = "ev-1", value: float = 7.0, at_s: float = 0, ctype: T = T.SET_CHARGE_RATE,
         **kw) -> Command:
    return Command(cid, asset, ctype, value, T0 + timedelta(seconds=at_s), **kw)


def _events(site: Site, kinds=None) -> list:
    got: list = []
    site.events.subscribe(kinds, got.append)
    return got


def test_a_schedule_is_dispatched_when_due_and_completed_on_the_device():
    with _site() as site:
        df = pd.DataFrame({"ev_1_kw": [7.0, 7.0, 11.0], "battery_charge_kw": [5.0, 0.0, 0.0],
                           "battery_discharge_kw": [0.0, 3.0, 3.0]},
                          index=pd.date_range(T0, periods=3, freq="5min"))
        batch = site.submit_schedule(df, asset_map={"ev_1": "ev-1", "battery": "bat-1"})
        site.settle()
        first_due = [c.command_id for c in batch if c.scheduled_time == T0]
        assert all(site.command(cid).status is S.COMPLETED for cid in first_due)
        later = [c for c in batch if c.scheduled_time > T0]
        assert all(site.command(c.command_id).status is S.PENDING for c in later)
        site.advance(600)
        assert all(site.command(c.command_id).status is S.COMPLETED for c in batch)
        device = site.device("ev-1")
        assert [a.value for a in device.applied] == [7.0, 11.0]


def test_lifecycle_events_arrive_in_order_for_each_command():
    with _site() as site:
        events = _events(site)
        site.submit(_cmd("c1"))
        site.settle()
        statuses = [e.payload["status"] for e in events if e.payload.get("command_id") == "c1"]
        assert statuses == ["PENDING", "DISPATCHED", "ACKNOWLEDGED", "COMPLETED"]


def test_same_command_id_twice_is_applied_once():
    with _site() as site:
        assert site.submit_many([_cmd("c1")]) == ("c1",)
        assert site.submit_many([_cmd("c1", value=9.0)]) == ()
        site.settle()
        assert [a.command_id for a in site.device("ev-1").applied] == ["c1"]


def test_value_outside_device_limits_is_rejected_with_the_reason_and_never_sent():
    with _site() as site:
        c = site.submit(_cmd("big", value=50.0))
        site.settle()
        c = site.command("big")
        assert c.status is S.REJECTED and "exceeds the device limit 22.0 kW" in c.last_error
        assert site.device("ev-1").applied == []


def test_unknown_asset_is_refused_at_submission_naming_it():
    with _site() as site:
        with pytest.raises(UnknownAsset, match="'nope'"):
            site.submit(_cmd("x", asset="nope"))
        df = pd.DataFrame({"ev_9_kw": [1.0]}, index=pd.date_range(T0, periods=1, freq="5min"))
        with pytest.raises(UnknownAsset, match="ev_9"):
            site.submit_schedule(df)
        assert site.counts().get("PENDING", 0) == 0


def test_commands_for_a_faulted_asset_are_held_and_released_on_recovery():
    with _site() as site:
        site.device("ev-1").report_status("FAULTED")
        site.settle()
        assert site.asset_state("ev-1") == "FAULTED"
        site.submit(_cmd("c1"))
        site.settle()
        assert site.command("c1").status is S.HELD
        site.device("ev-1").report_status("AVAILABLE")
        site.settle()
        assert site.command("c1").status is S.COMPLETED


def test_device_rejection_is_final_and_failure_is_retried_with_backoff():
    retry = RetryPolicy(max_attempts=3, base_delay_s=10, factor=2, jitter=0)
    with _site(retry=retry) as site:
        site.device("ev-1").fail_next(2, "relay stuck")
        site.submit(_cmd("c1"))
        site.settle()
        c = site.command("c1")
        assert c.status is S.PENDING and c.attempts == 1 and "relay stuck" in c.last_error
        site.advance(9.9)
        assert site.command("c1").attempts == 1
        site.advance(0.1)   # first retry after 10 s
        assert site.command("c1").attempts == 2
        site.advance(20)    # second retry after 20 s more
        assert site.command("c1").status is S.COMPLETED and site.command("c1").attempts == 3
        site.device("bat-1").reject("mode locked")
        site.submit(_cmd("c2", asset="bat-1"))
        site.settle()
        assert site.command("c2").status is S.REJECTED and site.command("c2").last_error == "mode locked"


def test_a_silent_device_times_out_and_attempts_are_bounded():
    retry = RetryPolicy(max_attempts=2, base_delay_s=1, jitter=0)
    with _site(retry=retry, ack_timeout_s=5) as site:   # the dispatcher's safety net: twice that, 10 s
        site.device("ev-1").set_silent(True)
        site.submit(_cmd("c1"))
        site.advance(9.9)
        assert site.command("c1").status is S.DISPATCHED
        site.advance(0.1)
        c = site.command("c1")
        assert c.status is S.PENDING and c.attempts == 1 and "no acknowledgement after 10 s" in c.last_error
        site.advance(1 + 10)
        assert site.command("c1").status is S.TIMED_OUT and site.command("c1").attempts == 2


class _Recording(InMemoryDevice):
    """An in-memory device that records every (command, attempt) that reached it, answered or not."""

    def __init__(self, *args, **kw) -> None:
        super().__init__(*args, **kw)
        self.reached: list[tuple[str, int]] = []

    async def execute(self, command):
        self.reached.append((command.command_id, command.attempts))
        return await super().execute(command)


def test_a_device_call_that_cannot_start_in_time_is_held_and_sent_again_without_losing_an_attempt():
    dev = _Recording("bat-1")
    rates = (T.SET_CHARGE_RATE, T.SET_DISCHARGE_RATE, T.SET_POWER_LIMIT)
    with _site(BatterySpec("bat-1", device=dev), retry=RetryPolicy(max_attempts=1), ack_timeout_s=1.0) as site:
        held = _events(site, EventType.COMMAND_HELD)
        dev.set_silent(True)   # each of the first call's three commands waits out its 1 s: 3 s in all
        site.submit_many([_cmd(f"old-{k}", "bat-1", 5.0, ctype=t) for k, t in enumerate(rates)])
        wait_until(lambda: dev.reached, what="the first call at the device")
        # newer setpoints (and a one-off command) supersede the three in flight and go at once, behind that call
        site.submit_many([_cmd(f"new-{k}", "bat-1", 6.0, ctype=t) for k, t in enumerate(rates)]
                         + [_cmd("avail", "bat-1", 1, ctype=T.CHANGE_AVAILABILITY)])
        wait_until(lambda: [e for e in held if e.payload["command_id"] == "avail"], timeout=5,
                   what="the waiting call given up")
        note = next(e for e in held if e.payload["command_id"] == "avail").payload["error"]
        assert "not sent: the asset's previous device call was still running after 1 s" in note
        assert not [hit for hit in dev.reached if not hit[0].startswith("old")]   # none reached the device
        assert site.asset_status("bat-1").link == "up" and site.asset_status("bat-1").healthy
        dev.set_silent(False)   # the first call ends; the commands sent again go through
        wait_until(lambda: site.command("avail").is_final and site.command("new-2").is_final, timeout=10,
                   what="the commands sent again")
        for cid in ("new-0", "new-1", "new-2", "avail"):   # one attempt allowed, and it was not used up waiting
            assert (site.command(cid).status, site.command(cid).attempts) == (S.COMPLETED, 1), site.command(cid)
        assert sorted(c for c, _ in dev.reached if not c.startswith("old")) == ["avail", "new-0", "new-1", "new-2"]
        assert [site.command(f"old-{k}").status for k in range(3)] == [S.SUPERSEDED] * 3


class _SlowDischarge(InMemoryDevice):
    """Answers every command, but takes 0.4 s for a discharge or power-limit setpoint (within its 0.5 s)."""

    def __init__(self, *args, **kw) -> None:
        super().__init__(*args, **kw)
        self.reached: list[str] = []

    async def execute(self, command):
        self.reached.append(command.command_id)
        if command.command_type in (T.SET_DISCHARGE_RATE, T.SET_POWER_LIMIT):
            await asyncio.sleep(0.4)   # the device's own pace
        return await super().execute(command)


def test_targets_re_sent_after_a_reboot_wait_for_a_long_call_instead_of_being_dropped():
    dev = _SlowDischarge("bat-1", kind="battery")
    with _site(BatterySpec("bat-1", device=dev), ack_timeout_s=0.5) as site:
        site.submit(_cmd("charge", "bat-1", 5.0, ctype=T.SET_CHARGE_RATE))
        wait_until(lambda: site.command("charge").status is S.COMPLETED, what="charge completed")
        # one call of two slow commands holds the asset's lock about 0.8 s, longer than the 0.5 s bound
        site.submit_many([_cmd("dis", "bat-1", 0.0, ctype=T.SET_DISCHARGE_RATE),
                          _cmd("lim", "bat-1", 40.0, ctype=T.SET_POWER_LIMIT)])
        wait_until(lambda: "dis" in dev.reached, what="the long call at the device")
        dev.reboot()   # forgets its setpoints: the asset re-applies the charge rate, after that call
        wait_until(lambda: dev.setpoints.get("SET_CHARGE_RATE") == 5.0, timeout=5, what="the charge rate re-applied")
        wait_until(lambda: site.command("lim").status is S.COMPLETED, what="lim completed")


def test_a_newer_setpoint_supersedes_a_held_one():
    with _site() as site:
        site.device("ev-1").set_connected(False)
        site.submit(_cmd("old", value=5.0))
        site.settle()
        assert site.command("old").status is S.HELD
        site.submit(_cmd("new", value=6.0, at_s=1))
        site.advance(1)
        assert site.command("old").status is S.SUPERSEDED
        site.device("ev-1").set_connected(True)
        site.settle()
        assert site.command("new").status is S.COMPLETED
        assert [a.command_id for a in site.device("ev-1").applied] == ["new"]


def test_reboot_resends_the_last_completed_setpoint():
    with _site() as site:
        events = _events(site, EventType.ASSET_CONNECTED)
        site.submit(_cmd("c1", value=8.0))
        site.settle()
        site.device("ev-1").reboot()
        site.settle()
        assert [a.command_id for a in site.device("ev-1").applied] == ["c1", "c1"]
        assert site.device("ev-1").values() == {"SET_CHARGE_RATE": 8.0}
        assert events[-1].payload["resent"] == ["c1"]


def test_crashed_asset_actor_is_restarted_and_its_commands_are_held_meanwhile():
    policy = RestartPolicy(max_restarts=3, window_s=60, base_backoff_s=2)
    with _site(restart_policy=policy) as site:
        events = _events(site, EventType.ASSET_RESTARTED)
        site.device("ev-1").crash_actor()
        site.settle()
        assert site.supervision()["ev-1"] == "restarting"
        site.submit(_cmd("c1"))
        site.settle()
        assert site.command("c1").status is S.HELD
        site.advance(2)
        assert site.supervision()["ev-1"] == "running"
        assert site.command("c1").status is S.COMPLETED
        assert [e.payload["restarts"] for e in events] == [1]


def test_supervisor_gives_up_after_too_many_crashes_and_says_why():
    policy = RestartPolicy(max_restarts=2, window_s=60, base_backoff_s=1)
    with _site(restart_policy=policy) as site:
        events = _events(site, EventType.ASSET_UNAVAILABLE)
        for _ in range(3):
            site.device("ev-1").crash_actor()
            site.settle()
            site.advance(5)
        assert site.supervision()["ev-1"] == "unavailable"
        assert site.asset_state("ev-1") == "UNAVAILABLE"
        assert len(events) == 1 and "crashed 3 times" in events[0].payload["reason"]
        site.submit(_cmd("c1"))
        site.settle()
        assert site.command("c1").status is S.HELD   # held, never dropped
        assert site.command("c1") is not None


def test_slow_or_raising_subscriber_does_not_block_others():
    with _site() as site:
        gate = threading.Event()
        fast: list = []
        site.events.subscribe(None, lambda e: gate.wait(5))
        site.events.subscribe(None, lambda e: 1 / 0)
        site.events.subscribe(EventType.COMMAND_COMPLETED, fast.append)
        site.submit(_cmd("c1"))
        done = site.wait_for("c1", timeout=5)
        assert done.status is S.COMPLETED
        site.settle(timeout=0.5)   # the slow subscriber keeps the site from settling; nothing else waits
        gate.set()
        assert site.settle()
        assert [e.payload["command_id"] for e in fast] == ["c1"]


def test_battery_state_follows_measured_power_sign():
    with _site() as site:
        dev = site.device("bat-1")
        dev.report_telemetry(power_kw=12.0, soc_pct=40.0)
        site.settle()
        assert site.asset_state("bat-1") == "CHARGING"
        dev.report_telemetry(power_kw=-3.0)
        site.settle()
        assert site.asset_state("bat-1") == "DISCHARGING"
        dev.report_telemetry(power_kw=0.0)
        site.settle()
        assert site.asset_state("bat-1") == "IDLE"


def test_unknown_device_state_is_ignored_without_corrupting_the_machine(caplog):
    with _site() as site:
        site.device("ev-1").report_status("DANCING", raw="Dancing")
        site.settle()
        assert site.asset_state("ev-1") == "AVAILABLE"
        assert "unknown state 'DANCING'" in caplog.text
        site.submit(_cmd("c1"))
        site.settle()
        assert site.command("c1").status is S.COMPLETED


def test_journal_recovery_resumes_every_non_final_command_without_double_apply(tmp_path):
    df = pd.DataFrame({"ev_1_kw": [7.0, 9.0, 11.0]}, index=pd.date_range(T0, periods=3, freq="5min"))
    first = _site(journal_dir=tmp_path)
    with first as site:
        batch = site.submit_schedule(df, asset_map={"ev_1": "ev-1"})
        site.device("bat-1").set_connected(False)
        site.submit(_cmd("held", asset="bat-1", value=4.0))
        site.settle()
        assert site.command(batch.command_id(0)).status is S.COMPLETED
        assert site.command("held").status is S.HELD
    clock = VirtualClock(T0 + timedelta(seconds=1))
    second = Site([ChargerSpec("ev-1", max_kw=22.0), BatterySpec("bat-1")], clock=clock, journal_dir=tmp_path)
    with second as site:
        assert second.recovered == 3   # two schedule rows not yet due + the held command
        assert site.command(batch.command_id(0)).status is S.COMPLETED
        assert site.submit_many([_cmd("held", asset="bat-1", value=4.0)]) == ()   # known id
        site.settle()
        assert site.command("held").status is S.COMPLETED
        site.advance(600)
        assert [site.command(c.command_id).status for c in batch] == [S.COMPLETED] * 3
        assert [a.value for a in site.device("ev-1").applied] == [9.0, 11.0]   # 7.0 not applied again


def test_torn_journal_tail_is_skipped_and_the_site_still_starts(tmp_path, caplog):
    with _site(journal_dir=tmp_path) as site:
        site.submit(_cmd("c1", at_s=60))
    with open(tmp_path / "commands.jnl", "ab") as f:
        f.write(b"\x40\x00\x00\x00\x01\x02")   # a record header with no payload: a crash mid-write
    with _site(journal_dir=tmp_path) as site:
        assert site.command("c1").status is S.PENDING
        site.advance(60)
        assert site.command("c1").status is S.COMPLETED
    assert "torn" in caplog.text.lower() or "truncat" in caplog.text.lower()
    assert any(r["k"] == "t" and r["i"] == "c1" for r in Journal.read(tmp_path / "commands.jnl"))


def test_stop_leaves_no_actor_threads():
    site = _site()
    site.start()
    site.submit(_cmd("c1"))
    site.settle()
    site.stop()
    assert not site.running
    import pykka
    assert pykka.ActorRegistry.get_all() == []


# ---- regressions found in review ------------------------------------------------------------------

def test_a_reboot_does_not_bring_back_an_older_setpoint_than_the_one_on_its_way():
    with _site() as site:
        dev = site.device("ev-1")
        site.submit(_cmd("a", value=5.0))
        site.settle()
        dev.set_silent(True)
        site.submit(_cmd("b", value=7.0))
        site.settle()
        dev.reboot()               # the device restarts while b is waiting for it
        site.settle()
        dev.set_silent(False)
        assert site.wait_for("b", timeout=5).status is S.COMPLETED
        site.settle()
        assert [(a.command_id, a.value) for a in dev.applied] == [("a", 5.0), ("b", 7.0)]
        assert dev.values() == {"SET_CHARGE_RATE": 7.0}


def test_a_restarted_actor_keeps_its_predecessors_targets_and_state():
    policy = RestartPolicy(base_backoff_s=1)
    with _site(restart_policy=policy) as site:
        dev = site.device("ev-1")
        site.submit(_cmd("a", value=5.0))
        site.settle()
        dev.report_status("FAULTED")
        site.settle()
        dev.crash_actor()
        site.settle()
        site.advance(1)
        assert site.supervision()["ev-1"] == "running"
        assert site.asset_state("ev-1") == "FAULTED"       # not reset to AVAILABLE by the restart
        site.submit(_cmd("x", value=6.0, at_s=1))
        site.advance(1)
        assert site.command("x").status is S.HELD          # still faulted: held, not sent
        dev.report_status("AVAILABLE")
        dev.reboot()                                        # the successor still knows what to re-send
        site.settle()
        assert site.command("x").status is S.COMPLETED
        assert [a.command_id for a in dev.applied][:1] == ["a"] and dev.values() == {"SET_CHARGE_RATE": 6.0}


def test_a_settle_with_nothing_new_looks_once_and_still_waits_for_what_the_loop_was_about_to_deliver(monkeypatch):
    dev = InMemoryDevice("ev-1")
    with _site(ChargerSpec("ev-1", device=dev)) as site:
        looks = []
        activity = Site._activity
        monkeypatch.setattr(Site, "_activity", lambda self, timeout: looks.append(1) or activity(self, timeout))
        assert site.settle() and len(looks) == 1       # the last look of the settle in start() counts
        site.submit(_cmd("c1"))
        looks.clear()
        # something was handled since: two looks in a row at least (more when the first one met c1 on its way)
        assert site.settle() and len(looks) >= 2
        changes = _events(site, EventType.STATE_CHANGED)

        def busy_loop_then_report(state: str) -> None:   # on the I/O loop: it is busy a while, then the device
            time.sleep(0.2)                               # reports (after the actors could have been asked)
            dev.report_status(state)
        for state in ("FAULTED", "AVAILABLE"):
            assert site.settle()
            site._io.loop.call_soon_threadsafe(busy_loop_then_report, state)
            looks.clear()
            assert site.settle() and len(looks) >= 2     # the report counted: the loop ran before the first look
            assert changes and changes[-1].payload["to_state"] == state   # out to subscribers, not on its way


def test_a_settle_does_not_wake_idle_asset_actors():
    with _site(ChargerSpec("ev-1"), ChargerSpec("ev-2")) as site:
        refs = {a: site._refs["supervisor"].ask(GetAssetRef(a), timeout=5) for a in ("ev-1", "ev-2")}
        inboxes = {a: ref.actor_inbox for a, ref in refs.items()}
        taken = {a: inbox.look()[0] for a, inbox in inboxes.items()}
        assert site.settle() and site.settle()
        assert {a: inbox.look() for a, inbox in inboxes.items()} == {a: (n, True) for a, n in taken.items()}
        site.submit(_cmd("c1", "ev-1"))
        assert site.settle() and site.command("c1").status is S.COMPLETED
        assert inboxes["ev-1"].look()[0] > taken["ev-1"] and inboxes["ev-2"].look() == (taken["ev-2"], True)


def test_a_settle_waits_for_a_subscriber_still_handling_an_event():
    with _site() as site:
        entered, release, done = threading.Event(), threading.Event(), []

        def slow(event) -> None:       # busy when settle looks at it; done a while later
            entered.set()
            assert release.wait(5)
            done.append(event)
        site.events.subscribe(EventType.COMMAND_COMPLETED, slow)
        site.submit(_cmd("c1"))
        assert entered.wait(5)
        timer = threading.Timer(0.3, release.set)
        timer.start()
        try:
            assert site.settle()
            assert len(done) == 1             # settle returned only after the subscriber had finished
        finally:
            timer.cancel()
            release.set()
            timer.join(5)


def test_polling_a_command_never_strands_the_dispatchers_commit():
    from datetime import datetime, timezone
    with Site([ChargerSpec("ev-1", max_kw=22.0)], ack_timeout_s=1.0) as site:
        for k in range(30):
            cid = f"c{k}"
            site.submit_many([Command(cid, "ev-1", T.SET_CHARGE_RATE, float(k % 20),
                                      datetime.now(timezone.utc))])
            for _ in range(20):          # a host polling for the result keeps the dispatcher busy
                site.command(cid)
            assert site.wait_for(cid, timeout=3).status is S.COMPLETED


def test_a_site_can_be_started_again_after_stop():
    from datetime import datetime, timezone
    site = Site([ChargerSpec("ev-1", max_kw=22.0)])
    for run in range(2):
        with site:
            due = datetime.now(timezone.utc) + timedelta(milliseconds=50)   # needs a working timer
            site.submit(Command(f"r{run}", "ev-1", T.SET_CHARGE_RATE, 3.0, due))
            assert site.wait_for(f"r{run}", timeout=3).status is S.COMPLETED


def test_bad_telemetry_values_are_ignored_and_do_not_crash_the_actor(caplog):
    with _site() as site:
        site.device("bat-1").report_telemetry(soc_pct=None, power_kw="lots")   # type: ignore[arg-type]
        site.device("bat-1").report_telemetry(power_kw=5.0)
        site.settle()
        assert site.supervision()["bat-1"] == "running"
        assert site.asset_state("bat-1") == "CHARGING"
        assert "telemetry soc_pct=None is not a number" in caplog.text


def test_commands_submitted_right_after_start_are_sent_once_without_bouncing():
    from datetime import datetime, timezone
    with Site([ChargerSpec("ev-1", max_kw=22.0)]) as site:
        events = _events(site, EventType.COMMAND_HELD)
        site.submit(Command("x", "ev-1", T.SET_CHARGE_RATE, 4.0, datetime.now(timezone.utc)))
        done = site.wait_for("x", timeout=3)
        assert done.status is S.COMPLETED and done.attempts == 1
        assert events == []


def test_prune_keeps_memory_bounded_and_ids_known():
    with _site(retention_s=60) as site:
        site.submit(_cmd("old"))
        site.settle()
        site.advance(200)
        assert site.command("old") is None                       # pruned from memory...
        assert site.submit_many([_cmd("old", at_s=200)]) == ()   # ...but never applied again
        assert site.submit(_cmd("old", at_s=200)) is None      # submit says so: known, nothing to show
        assert site.counts()["PENDING"] == 0


# ---- regressions: what a new user ran into, and latent defects of the core -----------------------

class _SlowToConnect(InMemoryDevice):
    """A device whose link comes up a moment after the actor starts (as a real device's does)."""

    async def start(self, ctx, sink) -> None:
        await asyncio.sleep(0.3)   # the device, not the test, takes its time
        await super().start(ctx, sink)


def test_a_started_site_is_ready_no_command_for_an_asset_that_is_up_is_held_first():
    with Site([ChargerSpec("ev-1", max_kw=22.0, device=_SlowToConnect("ev-1"))]) as site:
        held = _events(site, EventType.COMMAND_HELD)
        site.submit(Command("x", "ev-1", T.SET_CHARGE_RATE, 4.0, datetime.now(timezone.utc)))
        done = site.wait_for("x", timeout=5)
        assert done.status is S.COMPLETED and done.attempts == 1
        assert held == []


class _StartsAtOnceFaulted(InMemoryDevice):
    """An in-memory device that says where it was started, and reports a fault as it starts."""

    def start_now(self, ctx, sink) -> bool:
        self.started_in = threading.current_thread().name
        started = super().start_now(ctx, sink)
        self.report_status("FAULTED")
        return started


def test_an_in_memory_device_starts_in_its_actors_thread_and_what_it_reports_meanwhile_counts():
    dev = _StartsAtOnceFaulted("ev-1")
    with _site(ChargerSpec("ev-1", device=dev), BatterySpec("bat-1")) as site:
        assert dev.starts == 1 and dev.started_in != "site-io"   # not on the I/O loop: no round trip
        status = site.asset_status("ev-1")
        assert (status.link, status.state, status.healthy) == ("up", "FAULTED", False)
        assert site.asset_status("bat-1").healthy
        site.submit(_cmd("c1"))
        site.settle()
        assert site.command("c1").status is S.HELD and dev.applied == []


class _StartFails(InMemoryDevice):
    def start_now(self, ctx, sink) -> bool:
        raise OSError("no such device")


def test_a_link_whose_immediate_start_raises_leaves_its_asset_unhealthy_and_the_site_running(caplog):
    with _site(ChargerSpec("ev-1", device=_StartFails("ev-1")), BatterySpec("bat-1")) as site:
        assert "ev-1: starting the device link failed: OSError: no such device" in caplog.text
        assert site.asset_status("ev-1").link == "never connected"
        site.submit_many([_cmd("c1"), _cmd("b1", "bat-1", ctype=T.SET_CHARGE_RATE)])
        site.settle()
        assert (site.command("c1").status, site.command("b1").status) == (S.HELD, S.COMPLETED)


class _CrashesAsItStarts(InMemoryDevice):
    def start_now(self, ctx, sink) -> bool:
        started = super().start_now(ctx, sink)
        if self.starts == 1:
            self.crash_actor("crash while starting")
        return started


def test_a_crash_reported_while_the_link_starts_at_once_is_a_crash_the_supervisor_restarts():
    policy = RestartPolicy(max_restarts=3, window_s=60, base_backoff_s=1)
    with _site(ChargerSpec("ev-1", device=_CrashesAsItStarts("ev-1")), restart_policy=policy) as site:
        assert site.supervision()["ev-1"] == "restarting"
        site.advance(1)
        assert site.supervision()["ev-1"] == "running" and site.asset_status("ev-1").healthy
        assert site.device("ev-1").starts == 2


def test_a_device_that_overrides_start_is_started_on_the_loop():
    dev = _SlowToConnect("ev-1")
    assert dev.start_now(None, lambda event: None) is False and dev.starts == 0


def test_a_charger_that_never_connected_is_not_reported_available():
    dev = InMemoryDevice("ev-1")
    dev.set_connected(False)
    with _site(ChargerSpec("ev-1", device=dev)) as site:
        status = site.asset_status("ev-1")
        assert (status.state, status.link, status.device_state, status.healthy) == (
            "UNAVAILABLE", "never connected", None, False)
        assert site.asset_state("ev-1") == "UNAVAILABLE"
        dev.set_connected(True)
        site.settle()
        status = site.asset_status("ev-1")
        assert (status.state, status.link, status.healthy, status.supervision) == ("AVAILABLE", "up", True, "running")
        dev.set_connected(False)
        site.settle()
        assert site.asset_status("ev-1").link == "down" and site.asset_state("ev-1") == "UNAVAILABLE"


def test_an_in_memory_battery_follows_its_power_like_a_real_one():
    with _site() as site:
        site.submit(_cmd("d", "bat-1", 10.0, ctype=T.SET_DISCHARGE_RATE))
        site.settle()
        assert site.asset_state("bat-1") == "DISCHARGING"
        site.submit(_cmd("c", "bat-1", 20.0, ctype=T.SET_CHARGE_RATE))   # charge 20 - discharge 10 = +10 kW
        site.settle()
        assert site.asset_state("bat-1") == "CHARGING"


def test_a_value_beyond_the_device_limit_is_refused_before_it_is_sent():
    with _site() as site:
        events = _events(site)
        site.submit(_cmd("over", "bat-1", 80.0, ctype=T.SET_DISCHARGE_RATE))
        site.settle()
        over = site.command("over")
        assert over.status is S.REJECTED and over.attempts == 0
        assert "exceeds the device limit 50.0 kW" in over.last_error
        assert [e.payload["status"] for e in events if e.payload.get("command_id") == "over"] == [
            "PENDING", "REJECTED"]
        assert site.device("bat-1").applied == []


def test_the_demo_shows_the_over_limit_setpoint_refused_before_it_is_sent():
    from runtime.demo import run_demo
    out = io.StringIO()
    assert run_demo(out) == 0
    lines = [line for line in out.getvalue().splitlines() if "SET_DISCHARGE_RATE   80.0" in line]
    assert any("PENDING -> REJECTED" in line for line in lines) and not any("DISPATCHED" in line for line in lines)


def test_resubmitting_a_schedule_with_the_same_batch_id_is_a_no_op_live_and_after_a_restart(tmp_path):
    df = pd.DataFrame({"ev_1_kw": [7.0, 8.0, 9.0, 10.0]}, index=pd.date_range(T0, periods=4, freq="5min"))
    with _site(journal_dir=tmp_path) as site:
        site.submit_schedule(df, asset_map={"ev_1": "ev-1"}, batch_id="plan-1")
        site.settle()
        site.submit_schedule(df, asset_map={"ev_1": "ev-1"}, batch_id="plan-1")   # a retried submission
        site.settle()
        live = {k: v for k, v in site.counts().items() if v}
        assert live == {"COMPLETED": 1, "PENDING": 3}
    with _site(journal_dir=tmp_path) as site:
        assert {k: v for k, v in site.counts().items() if v} == live
        site.advance(900)
        assert {k: v for k, v in site.counts().items() if v} == {"COMPLETED": 4}


def test_a_dead_dispatcher_is_noticed_state_event_log_and_calls_refused(tmp_path, monkeypatch, caplog):
    with _site(journal_dir=tmp_path) as site:
        failed = _events(site, EventType.SITE_FAILED)
        dev = site.device("ev-1")
        dev.set_silent(True)
        site.submit(_cmd("c1"))                      # accepted and journaled; the device does not answer yet

        real_append = Journal.append_many

        def disk_full(self, records):
            if str(self.path).endswith("commands.jnl"):
                raise OSError(28, "No space left on device")
            return real_append(self, records)
        monkeypatch.setattr(Journal, "append_many", disk_full)
        dev.set_silent(False)                        # the answer arrives; journaling it fails in a tell handler
        wait_until(lambda: site.state == "failed", what="the site to notice its dispatcher died")
        assert not site.running
        assert "dispatcher failed: OSError" in site.failure and "No space left" in site.failure
        wait_until(lambda: failed, what="SITE_FAILED")
        assert failed[0].payload["actor"] == "dispatcher"
        assert "site failed: the dispatcher actor died" in caplog.text
        with pytest.raises(SiteFailed, match="dispatcher failed"):
            site.submit(_cmd("c2"))
        monkeypatch.undo()
    assert site.state == "stopped"


def test_a_dead_event_actor_is_noticed_too(tmp_path, monkeypatch, caplog):
    with _site(journal_dir=tmp_path) as site:
        real_append = Journal.append_many

        def broken(self, records):
            if str(self.path).endswith("events.jnl"):
                raise OSError(5, "Input/output error")
            return real_append(self, records)
        monkeypatch.setattr(Journal, "append_many", broken)
        site.device("ev-1").report_status("FAULTED")     # a STATE_CHANGED event, journaled by the event actor
        wait_until(lambda: site.state == "failed", what="the site to notice its event actor died")
        assert "event actor failed: OSError" in site.failure
        assert "site failed: the events actor died" in caplog.text
        with pytest.raises(SiteFailed):
            site.counts()
        monkeypatch.undo()


RUN_FOREVER = """
import logging, sys, threading
from runtime import Site, ChargerSpec, Command, CommandType
from datetime import datetime, timezone
logging.basicConfig(level=logging.INFO, format="%(message)s")
site = Site([ChargerSpec("ev-1")], journal_dir=sys.argv[1])
with site:
    site.submit(Command("c1", "ev-1", CommandType.SET_CHARGE_RATE, 7.0, datetime.now(timezone.utc)))
    site.wait_for("c1")
    signum = site.run_forever()
print("stopped", signum, site.state, sorted(t.name for t in threading.enumerate() if t.is_alive()), flush=True)
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_run_forever_stops_the_site_cleanly_on_a_signal(tmp_path, sig):
    proc = subprocess.Popen([sys.executable, "-c", RUN_FOREVER, str(tmp_path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1])
    try:
        for line in proc.stderr:             # the site says when its signal handlers are in place
            if line.startswith("site running until SIGTERM or SIGINT"):
                break
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert out.strip() == f"stopped {int(sig)} stopped ['MainThread']"
    assert Journal.read(str(tmp_path / "commands.jnl"))   # the journal was closed cleanly, and holds the command


# ---- priorities, controllers, parameters ---------------------------------------------------------

def test_an_emergency_command_is_not_superseded_by_a_newer_normal_one():
    with _site() as site:
        dev = site.device("ev-1")
        dev.set_silent(True)                                     # the emergency stays on its way a while
        site.submit(_cmd("stop-now", value=0.0, priority=100))
        site.settle()
        site.submit(_cmd("schedule-row", value=22.0, at_s=1))    # a normal row one second later
        site.advance(1)
        assert site.command("schedule-row").status is S.SUPERSEDED
        assert "superseded by stop-now" in site.command("schedule-row").last_error
        dev.set_silent(False)
        assert site.wait_for("stop-now").status is S.COMPLETED
        site.settle()
        assert [a.value for a in dev.applied] == [0.0]           # 22 kW never reached the charger


def test_an_emergency_command_overtakes_normal_ones_queued_for_the_same_asset():
    with _site() as site:
        dev = site.device("bat-1")
        dev.set_silent(True)
        site.submit(_cmd("first", "bat-1", 10.0, ctype=T.SET_CHARGE_RATE))   # in flight, unanswered
        site.settle()
        site.submit_many([_cmd("soc", "bat-1", 80.0, ctype=T.SET_SOC_TARGET),
                          _cmd("limit", "bat-1", 40.0, ctype=T.SET_POWER_LIMIT)])
        site.submit(_cmd("stop", "bat-1", 0.0, ctype=T.SET_DISCHARGE_RATE, priority=100))
        site.settle()
        assert site.command("soc").status is S.PENDING           # waiting in the table, not behind the device
        dev.set_silent(False)
        site.settle()
        order = [a.command_id for a in dev.applied]
        assert order[:2] == ["first", "stop"] and set(order[2:]) == {"soc", "limit"}


def test_switching_schedule_following_off_leaves_schedule_rows_waiting_and_on_sends_the_current_one():
    df = pd.DataFrame({"ev_1_kw": [7.0, 11.0]}, index=pd.date_range(T0, periods=2, freq="5min"))
    with _site() as site:
        assert site.controllers() == {"schedule": True, "grid_limit": True}
        site.set_controller("schedule", False)
        batch = site.submit_schedule(df, asset_map={"ev_1": "ev-1"})
        site.submit(_cmd("operator", "bat-1", 3.0))             # operator commands still go
        site.settle()
        assert site.command(batch.command_id(0)).status is S.PENDING
        assert site.command("operator").status is S.COMPLETED
        site.advance(300)                                        # the older row expires as the newer takes over
        assert site.command(batch.command_id(0)).status is S.EXPIRED
        assert site.command(batch.command_id(1)).status is S.PENDING
        site.set_controller("schedule", True)                    # back on: the current row goes at once
        site.settle()
        assert site.command(batch.command_id(1)).status is S.COMPLETED
        assert [a.value for a in site.device("ev-1").applied] == [11.0]
        with pytest.raises(ValueError, match="unknown controller 'peak_shaving'"):
            site.set_controller("peak_shaving", True)


def test_a_battery_below_its_min_soc_refuses_to_discharge_until_the_parameter_is_cleared():
    with _site() as site:
        dev = site.device("bat-1")
        dev.report_telemetry(soc_pct=12.0, power_kw=0.0)
        site.set_parameter("bat-1", "min_soc", 15.0)
        site.submit(_cmd("d1", "bat-1", 5.0, ctype=T.SET_DISCHARGE_RATE))
        site.settle()
        refused = site.command("d1")
        assert refused.status is S.REJECTED and "below its MinSoc 15 %" in refused.last_error
        site.submit(_cmd("c1", "bat-1", 5.0, ctype=T.SET_CHARGE_RATE))   # charging is fine
        site.set_parameter("bat-1", "min_soc", None)
        site.submit(_cmd("d2", "bat-1", 5.0, ctype=T.SET_DISCHARGE_RATE))
        site.settle()
        assert site.command("c1").status is S.COMPLETED and site.command("d2").status is S.COMPLETED
