"""The edge link across lost connections and site restarts: it reconnects by itself, resumes from its
journal (``last_seq``, the acks the router lists as pending), executes nothing twice, and keeps its
leases and controller states. Real sockets on loopback against the fake router of test_edge_link.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from collections import deque
from datetime import timedelta
from pathlib import Path

import pytest

from protocols.edge.wire import AckFrame, SiteState
from protocols.sim.battery import BatterySim
from runtime import Command, CommandStatus as S, CommandType as T, VirtualClock
from runtime.core.cloud_log import CloudLog
from runtime.core.iothread import IOThread

from .asyncsupport import wait_until
from .conftest import T0
from .test_edge_link import EDGE, SECRET, FakeRouter, command, edge_state, make_site

pytestmark = [pytest.mark.timeout(90), pytest.mark.usefixtures("no_leaks")]
ROOT = Path(__file__).resolve().parents[1]


def acks_in(router: FakeRouter, session: int) -> list[tuple[str, str]]:
    return [(f.command_id, f.status) for f in router.of_type(AckFrame, session=session)]


def settled_edge(site) -> dict:
    """The edge link's state once every site event so far has reached it."""
    site.settle()
    return edge_state(site)


def test_after_the_router_drops_the_link_the_edge_reconnects_resumes_and_sends_the_offline_acks_first(tmp_path):
    with FakeRouter() as router, make_site(router, tmp_path) as site:
        router.wait_session(1)
        bat = site.device("bat-1")
        bat.set_silent(True)
        router.send(command("a", value=4_000))
        wait_until(lambda: router.statuses("a") == ["delivered", "accepted"])
        router.refuse = True
        router.drop()
        wait_until(lambda: router.refused >= 2, what="the edge retrying")
        bat.set_silent(False)                                  # "a" completes while the cloud is unreachable
        wait_until(lambda: settled_edge(site)["in_flight"] == 0, what="the edge seeing 'a' final")
        assert router.statuses("a") == ["delivered", "accepted"]
        router.send(command("b", channel="SetSocTarget", value=60, unit="%"))   # queued at the router meanwhile
        router.refuse = False
        router.wait_session(2)
        assert router.hellos[1].last_seq == 1
        assert router.welcomes[1].pending == [1] and router.welcomes[1].resume_after == 1
        assert router.wait_final("b") == ["delivered", "accepted", "executed"]
        assert acks_in(router, 2) == [("a", "executed"), ("b", "delivered"), ("b", "accepted"), ("b", "executed")]
        assert [a.command_id for a in bat.applied] == ["cloud:a", "cloud:b"]


def test_the_edge_re_sends_the_latest_ack_of_every_seq_the_router_lists_as_pending_in_the_order_made(tmp_path):
    with FakeRouter() as router, make_site(router, tmp_path) as site:
        router.wait_session(1)
        site.device("bat-1").set_silent(True)
        router.send(command("one", value=1_000))     # seq 1: stays accepted
        router.send(command("two", device="ev-1", channel="SetChargePowerLimit", value=7_000))   # seq 2: executed
        router.wait_final("two")
        wait_until(lambda: router.statuses("one") == ["delivered", "accepted"])
        router.pending_override = [2, 1, 99]          # as if the router lost those acks (99: a seq never seen)
        router.drop()
        router.wait_session(2)
        wait_until(lambda: len(acks_in(router, 2)) == 2)
        assert acks_in(router, 2) == [("one", "accepted"), ("two", "executed")]
        site.device("bat-1").set_silent(False)
        router.wait_final("one")


def test_a_final_ack_is_kept_until_a_welcome_no_longer_lists_it_then_only_for_the_dedupe_window(tmp_path):
    with FakeRouter() as router:
        with make_site(router, tmp_path) as site:
            router.wait_session(1)
            router.send(command("done", value=1_000))
            router.wait_final("done")
            router.drop()                                 # the next welcome does not list seq 1: confirmed
            router.wait_session(2)
            edge_state(site)
        log = CloudLog(tmp_path / "cloud.jnl", now=T0.timestamp() + 3600)
        assert log.get("done").confirmed and log.last_seq == 1
        log.close()
        log = CloudLog(tmp_path / "cloud.jnl", now=T0.timestamp() + 25 * 3600)   # past the 24 h window
        assert log.get("done") is None and log.last_seq == 1
        log.close()


def test_a_half_open_link_is_noticed_by_pings_and_replaced(tmp_path):
    with FakeRouter() as router, make_site(router, tmp_path, ping_interval_s=0.05, ping_timeout_s=0.2):
        router.wait_session(1)

        frozen = router._ws

        async def freeze() -> None:        # the router's side stops reading: no pong ever comes back
            frozen.transport.pause_reading()
        router.io.call(freeze())
        router._ws = None
        router.wait_session(2)             # the edge gave up on the silent link and connected again

        async def abort() -> None:
            frozen.transport.abort()
        router.io.call(abort())


def test_restart_with_the_same_journal_executes_nothing_twice_and_sends_the_acks_made_offline(tmp_path):
    with FakeRouter() as router:
        with make_site(router, tmp_path) as site:
            router.wait_session(1)
            router.send(command("a", value=1_000))
            router.wait_final("a")
            bat = site.device("bat-1")
            bat.set_silent(True)
            router.send(command("b", value=2_000))
            wait_until(lambda: router.statuses("b") == ["delivered", "accepted"])
            router.refuse = True
            router.drop()
            bat.set_silent(False)                      # "b" is executed while the cloud is unreachable
            wait_until(lambda: settled_edge(site)["in_flight"] == 0, what="the edge seeing 'b' final")
            assert [x.command_id for x in bat.applied] == ["cloud:a", "cloud:b"]
        router.refuse = False
        router.resume_override = 0                     # the router replays everything it has
        with make_site(router, tmp_path) as again:
            router.wait_session(2)
            assert router.hellos[1].last_seq == 2 and router.welcomes[1].pending == [2]
            wait_until(lambda: len(acks_in(router, 2)) == 2)
            assert acks_in(router, 2)[0] == ("b", "executed")       # the offline ack, first
            assert acks_in(router, 2)[1] == ("b", "executed")       # the replayed "b": its stored ack again
            assert router.statuses("a") == ["delivered", "accepted", "executed"]   # "a" was final: not replayed
            again.settle()
            assert again.device("bat-1").applied == []
            assert again.command("cloud:b").status is S.COMPLETED


def test_commands_open_at_a_restart_are_carried_on_with_the_time_they_have_left(tmp_path):
    with FakeRouter() as router:
        with make_site(router, tmp_path) as site:
            router.wait_session(1)
            site.device("bat-1").set_silent(True)
            router.send(command("b", value=2_000))                                   # in flight, never answered
            router.send(command("q", channel="SetSocTarget", value=70, unit="%"))    # waits behind it
            wait_until(lambda: edge_state(site)["queued"] == 1 and router.statuses("b")[-1:] == ["accepted"])
        assert site.device("bat-1").applied == []
        later = VirtualClock(T0 + timedelta(seconds=100))
        with make_site(router, tmp_path, clock=later) as again:
            router.wait_session(2)
            assert router.wait_final("b") == ["delivered", "accepted", "executed"]
            # made while the session was starting or after its welcome: the router gets at least the final one
            assert router.wait_final("q") in (["delivered", "executed"], ["delivered", "accepted", "executed"])
            assert [x.command_id for x in again.device("bat-1").applied] == ["cloud:b", "cloud:q"]
            # q had 300 s at arrival; 100 s passed on the site clock: it goes with 200 s left
            assert again.command("cloud:q").expires_at == T0 + timedelta(seconds=300)


def test_a_command_whose_time_ran_out_while_the_site_was_down_is_expired(tmp_path):
    with FakeRouter() as router:
        with make_site(router, tmp_path) as site:
            router.wait_session(1)
            site.device("bat-1").set_silent(True)
            router.send(command("b", value=2_000))
            router.send(command("q", channel="SetSocTarget", value=70, unit="%", expiry_sec=60))
            wait_until(lambda: edge_state(site)["queued"] == 1)
        with make_site(router, tmp_path, clock=VirtualClock(T0 + timedelta(seconds=120))) as again:
            router.wait_session(2)
            assert router.wait_final("q") == ["delivered", "expired"]
            router.wait_final("b")
            assert [x.command_id for x in again.device("bat-1").applied] == ["cloud:b"]


def test_an_override_reverts_after_its_duration_across_a_restart_and_while_the_cloud_is_unreachable(tmp_path):
    with FakeRouter() as router:
        with make_site(router, tmp_path):
            router.wait_session(1)
            router.send(command("keep30", channel="MinSoc", value=30, unit="%", ctype="config_override",
                                duration_sec=3600))
            router.wait_final("keep30")
        router.refuse = True
        with make_site(router, tmp_path, clock=VirtualClock(T0 + timedelta(seconds=1800))) as again:
            lease = wait_until(lambda: edge_state(again)["leases"])[0]
            assert lease["command_id"] == "keep30" and lease["seconds_left"] == 1800
            bat = again.device("bat-1")
            bat.report_telemetry(soc_pct=20.0)
            again.settle()
            again.submit(Command("drain-1", "bat-1", T.SET_DISCHARGE_RATE, 5.0, again.clock.now()))
            refused = again.wait_for("drain-1")
            assert refused.status is S.REJECTED and "MinSoc 30 %" in refused.last_error  # restored by the link
            again.advance(1800)
            wait_until(lambda: not edge_state(again)["leases"], what="the lease ending")
            again.settle()
            again.submit(Command("drain-2", "bat-1", T.SET_DISCHARGE_RATE, 5.0, again.clock.now()))
            assert again.wait_for("drain-2").status is S.COMPLETED      # reverted without the cloud
            router.refuse = False
            router.wait_session(2)
            wait_until(lambda: router.of_type(SiteState, session=2))
            assert router.of_type(SiteState, session=2)[-1].overrides == []


def test_controller_states_the_cloud_switched_are_restored_after_a_restart(tmp_path):
    with FakeRouter() as router:
        with make_site(router, tmp_path) as site:
            router.wait_session(1)
            router.send(command("off", channel="grid_limit", value=False, device=None, ctype="scheduler_control"))
            router.wait_final("off")
            assert site.controllers()["grid_limit"] is False
        with make_site(router, tmp_path) as again:
            wait_until(lambda: again.controllers()["grid_limit"] is False, what="grid_limit restored")
            assert again.controllers()["schedule"] is True


# ---- the site process: coordinator run with [cloud], kill -9 --------------------------------------------

class Process:
    """``coordinator run FILE`` as a child, its log collected."""

    def __init__(self, path: Path) -> None:
        self.lines: deque[str] = deque(maxlen=400)
        self.proc = subprocess.Popen([sys.executable, "-m", "runtime.cli", "run", str(path), "--log-level",
                                      "INFO"], cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True, bufsize=1)
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip())

    def close(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._reader.join(timeout=5)
        return self.proc.returncode


def test_coordinator_run_with_cloud_after_kill_9_resends_the_pending_acks_and_applies_nothing_again(tmp_path):
    io = IOThread(name="test-battery").start()
    battery = BatterySim(host="127.0.0.1", port=0, name="bat-1")
    io.call(battery.start())
    first = second = None
    try:
        with FakeRouter() as router:
            path = tmp_path / "site.toml"
            path.write_text(f"""
[[assets]]
id = "bat-1"
kind = "battery"
modbus = {{ host = "127.0.0.1", port = {battery.port}, poll_interval_s = 1.0 }}

[journal]
dir = "{tmp_path / 'journal'}"

[cloud]
url = "{router.url}"
edge_id = "{EDGE}"
credential = "{SECRET}"
reconnect_min_s = 0.05
reconnect_max_s = 0.5
state_interval_s = 0
""")
            first = Process(path)
            router.wait_session(1, timeout=30)
            router.send(command("a", value=-10_000))      # charge 10 kW
            assert router.wait_final("a", timeout=30) == ["delivered", "accepted", "executed"]
            writes = len(battery.writes)
            assert writes >= 1
            router.final.clear()                         # as if the router never got "executed" (pending: [1])
            router.resume_override = 0                   # ... and replays the command
            first.proc.kill()                            # kill -9
            first.proc.wait(timeout=10)
            second = Process(path)
            router.wait_session(2, timeout=30)
            wait_until(lambda: len(acks_in(router, 2)) == 2, 30, "the re-sent acks")
            assert acks_in(router, 2) == [("a", "executed"), ("a", "executed")]
            assert second.close() == 0, "\n".join(second.lines)
            assert len(battery.writes) == writes, battery.writes   # never applied again
    finally:
        for p in (first, second):
            if p is not None:
                p.close()
        io.call(battery.stop())
        io.stop()
