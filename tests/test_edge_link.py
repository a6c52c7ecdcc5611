"""The edge link (actors.edge_link) against a fake cloud router: real WebSockets on loopback, a real Site
with in-memory devices.

:class:`FakeRouter` is a websockets server speaking the edge wire format the way the router is meant
to: it checks the edge's bearer credential, answers ``hello`` with a ``welcome`` whose ``pending`` lists
the seqs it sent and lacks a final ack for (``resume_after`` = the edge's ``last_seq``), replays what the
edge has not journaled, and records every frame. Tests wait on conditions (bounded), never on time.
"""

from __future__ import annotations

import threading
from datetime import timedelta
from http import HTTPStatus
from typing import Any

import pandas as pd
import pytest
from websockets.asyncio.server import ServerConnection, serve

from actors.edge_link import EdgeLinkOptions
from protocols.edge.wire import (AckFrame, Cancel, Capabilities, CommandFrame, Confirm, Hello, SiteState,
                                 Telemetry, Welcome, decode, encode)
from runtime import (BatterySpec, ChargerSpec, Command, CommandStatus as S, CommandType as T, RealClock, Site,
                     VirtualClock)
from runtime.core.cloud_log import FINAL_ACKS, CloudLog
from runtime.core.errors import SiteFailed
from runtime.core.events import EventType
from runtime.core.iothread import IOThread

from .asyncsupport import wait_until
from .conftest import T0

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("no_leaks")]

EDGE = "edge-1"
SECRET = "s3cret"


class FakeRouter:
    """A cloud router for tests (see the module docstring). Use it as a context manager."""

    def __init__(self, credential: str = SECRET) -> None:
        self.credential = credential
        self.io = IOThread("fake-router")
        self._lock = threading.Lock()
        self.frames: list[tuple[int, Any]] = []        # (session, frame) in arrival order
        self.hellos: list[Hello] = []
        self.welcomes: list[Welcome] = []
        self.refused = 0
        self.sessions = 0
        self.commands: dict[int, dict[str, Any]] = {}   # seq -> command
        self.sent: set[int] = set()
        self.final: dict[int, str] = {}
        self.acks: dict[str, list[str]] = {}
        self.errors: dict[str, list[str | None]] = {}
        #: set to force the next welcome's fields (None: computed as a router would)
        #: True: refuse every handshake (HTTP 503), as an unreachable cloud would
        self.refuse = False
        self.pending_override: list[int] | None = None
        self.resume_override: int | None = None
        self._ws: ServerConnection | None = None
        self._next_seq = 1
        self._server: Any = None

    # ---- lifecycle ----
    def __enter__(self) -> "FakeRouter":
        self.io.start()

        async def start() -> Any:
            return await serve(self._handler, "127.0.0.1", 0, process_request=self._auth)
        self._server = self.io.call(start())
        self.port = self._server.sockets[0].getsockname()[1]
        self.url = f"ws://127.0.0.1:{self.port}/edge"
        return self

    def __exit__(self, *exc: Any) -> None:
        async def stop() -> None:
            self._server.close()
            await self._server.wait_closed()
        self.io.call(stop())
        self.io.stop()

    def _auth(self, connection: ServerConnection, request: Any) -> Any:
        if self.refuse:
            with self._lock:
                self.refused += 1
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "down\n")
        if request.headers.get("Authorization") != f"Bearer {self.credential}":
            with self._lock:
                self.refused += 1
            return connection.respond(HTTPStatus.UNAUTHORIZED, "bad credential\n")
        return None

    async def _handler(self, ws: ServerConnection) -> None:
        hello = decode(await ws.recv())
        assert isinstance(hello, Hello)
        with self._lock:
            self.sessions += 1
            session = self.sessions
            self.hellos.append(hello)
            self.frames.append((session, hello))
            pending = (sorted(s for s in self.sent if s not in self.final) if self.pending_override is None
                       else list(self.pending_override))
            resume = hello.last_seq if self.resume_override is None else self.resume_override
            self.pending_override = self.resume_override = None
            welcome = Welcome(edge_id=hello.edge_id, resume_after=resume, pending=pending)
            self.welcomes.append(welcome)
            replay = [s for s in sorted(self.commands) if s > resume and s not in self.final]
        await ws.send(encode(welcome))
        for seq in replay:
            await self._send(ws, seq)
        self._ws = ws
        try:
            async for message in ws:
                frame = decode(message)
                with self._lock:
                    self.frames.append((session, frame))
                    if isinstance(frame, AckFrame):
                        self.acks.setdefault(frame.command_id, []).append(frame.status)
                        self.errors.setdefault(frame.command_id, []).append(frame.error)
                        if frame.status in FINAL_ACKS and frame.seq is not None:
                            self.final[frame.seq] = frame.status
        except Exception:  # the edge went away mid-frame: that session is over
            pass
        finally:
            if self._ws is ws:
                self._ws = None

    async def _send(self, ws: ServerConnection, seq: int) -> None:
        await ws.send(encode(CommandFrame.model_validate({"seq": seq, "command": self.commands[seq]})))
        with self._lock:
            self.sent.add(seq)

    # ---- test API (any thread) ----
    @property
    def online(self) -> bool:
        return self._ws is not None

    def send_frame(self, frame: Any) -> None:
        """Send any frame to the edge now (it must be online)."""
        ws = self._ws
        assert ws is not None, "the edge is not online"
        self.io.call(ws.send(encode(frame)))

    def send(self, command: dict[str, Any], seq: int | None = None) -> int:
        """Queue a command (as a new seq unless ``seq``) and send it now when the edge is online."""
        with self._lock:
            if seq is None:
                seq = self._next_seq
            self._next_seq = max(self._next_seq, seq + 1)
            self.commands[seq] = command
        ws = self._ws
        if ws is not None:
            self.io.call(self._send(ws, seq))
        return seq

    def drop(self) -> None:
        """Close the edge's connection abruptly (no closing handshake), as a dying router would."""
        ws = self._ws
        if ws is not None:
            self._ws = None

            async def abort() -> None:
                ws.transport.abort()
            self.io.call(abort())

    def statuses(self, cid: str) -> list[str]:
        with self._lock:
            return list(self.acks.get(cid, []))

    def error(self, cid: str) -> str | None:
        with self._lock:
            errors = [e for e in self.errors.get(cid, []) if e]
        return errors[-1] if errors else None

    def wait_final(self, cid: str, timeout: float = 10.0) -> list[str]:
        """The ack statuses of ``cid`` once a final one has arrived, a status repeated at once counted once
        (after a reconnect the edge sends the latest ack of every seq still pending again: whether it is
        still ``accepted`` or already ``executed`` then depends on which comes first, which is not fixed)."""
        def final() -> list[str] | None:
            raw = self.statuses(cid)
            statuses = [s for i, s in enumerate(raw) if i == 0 or s != raw[i - 1]]
            return statuses if any(s in FINAL_ACKS for s in statuses) else None
        return wait_until(final, timeout, f"a final ack for {cid} (got {self.statuses(cid)})")

    def of_type(self, kind: type, session: int | None = None) -> list[Any]:
        with self._lock:
            return [f for s, f in self.frames if isinstance(f, kind) and (session is None or s == session)]

    def wait_session(self, n: int, timeout: float = 10.0) -> None:
        """Until the ``n``-th session is online (its welcome sent)."""
        wait_until(lambda: self.sessions >= n and self.online, timeout, f"session {n}")


def command(cid: str, channel: str = "SetActivePower", value: Any = 10_000, device: str | None = "bat-1",
            ctype: str = "setpoint", **extra: Any) -> dict[str, Any]:
    body = {"command_id": cid, "command_type": ctype, "target": {"edge_id": EDGE, "device_id": device,
                                                                    "channel": channel},
            "value": value, "unit": "W" if ctype == "setpoint" else None, "expiry_sec": 300, "source": "user_456",
            "timestamp": "2026-02-15T14:30:00Z"}
    body.update(extra)
    return {k: v for k, v in body.items() if v is not None or k == "value"}


def options(router: FakeRouter, **kw: Any) -> EdgeLinkOptions:
    defaults: dict[str, Any] = dict(url=router.url, edge_id=EDGE, credential=SECRET, reconnect_min_s=0.02,
                                    reconnect_max_s=0.2, telemetry_interval_s=0, state_interval_s=0, seed=7)
    defaults.update(kw)
    return EdgeLinkOptions(**defaults)


def make_site(router: FakeRouter, journal_dir: Any, clock: Any = None, assets: Any = None, **kw: Any) -> Site:
    assets = assets or [BatterySpec("bat-1", max_charge_kw=50, max_discharge_kw=50),
                        ChargerSpec("ev-1", max_kw=22)]
    return Site(assets, clock=clock or VirtualClock(T0), journal_dir=journal_dir, cloud=options(router, **kw))


def edge_state(site: Site) -> dict[str, Any]:
    state = site.cloud_status()
    assert state is not None
    return state


# ---- online delivery -----------------------------------------------------------------------------

def test_the_seeds_command_is_executed_on_the_device_and_acked_delivered_accepted_executed(tmp_path):
    with FakeRouter() as router, make_site(router, tmp_path) as site:
        router.wait_session(1)
        hello = router.hellos[0]
        assert hello.edge_id == EDGE and hello.last_seq == 0
        devices = {d.device_id: d for d in hello.capabilities.devices}
        assert set(devices) == {"bat-1", "ev-1", "site"}
        power = {c.name: c for c in devices["bat-1"].channels}["SetActivePower"]
        assert (power.min, power.max, power.unit, power.writable) == (-50_000, 50_000, "W", True)
        assert hello.capabilities.controllers.keys() == {"schedule", "grid_limit"}

        router.send(command("cmd_12345", value=20_000))
        assert router.wait_final("cmd_12345") == ["delivered", "accepted", "executed"]
        applied = site.device("bat-1").applied
        assert [(a.command_type, a.value) for a in applied] == [("SET_DISCHARGE_RATE", 20.0)]
        assert site.command("cloud:cmd_12345").status is S.COMPLETED
        ack = [f for f in router.of_type(AckFrame) if f.status == "executed"][0]
        assert ack.seq == 1 and ack.executed_at is not None and ack.error is None


def test_settle_waits_for_the_cloud_link_too(tmp_path):
    """The second command for a device waits at the edge until the first is final; once both are delivered,
    settle() returns only after the edge has handed the second one on and the site has run it (the
    in-memory battery answers at once)."""
    with FakeRouter() as router, make_site(router, tmp_path) as site:
        router.wait_session(1)
        for n in range(10):
            first, second = f"p{n}", f"q{n}"
            router.send(command(first, value=1_000 * (n + 1)))
            router.send(command(second, channel="SetSocTarget", value=50 + n, unit="%"))
            wait_until(lambda: "delivered" in router.statuses(second), what=f"{second} delivered")
            assert site.settle()
            done = site.command(f"cloud:{second}")
            assert done is not None and done.status is S.COMPLETED, f"{second}: settle() returned early ({done})"


def test_a_confirm_from_the_router_lets_a_final_command_go_without_a_reconnect(tmp_path):
    """Only the confirmed command is forgotten once the dedupe window has passed; the unconfirmed one stays
    (it waits for the router), however old."""
    with FakeRouter() as router, make_site(router, tmp_path, dedupe_window_s=60) as site:
        router.wait_session(1)
        for cid in ("a", "b"):
            router.send(command(cid, value=1_000))
            router.wait_final(cid)
        router.send_frame(Confirm(command_ids=["a", "unknown-id"]))   # an id it does not know: ignored
        site.settle()
        site.advance(80)            # beyond the window (60 s) and the prune interval (a quarter of it, 15 s)
        router.send(command("c", value=2_000))
        router.wait_final("c")
        site.settle()
        assert edge_state(site)["log_entries"] == 2                  # b (unconfirmed) and c; a is gone
        assert router.sessions == 1


# ---- validation ------------------------------------------------------------------------------------

@pytest.mark.parametrize("body, code", [
    (command("c1", device="bms_main"), "unknown_device"),
    (command("c1", channel="Soc", value=50, unit="%"), "not_writable"),
    (command("c1", channel="SetCurrent"), "unknown_channel"),
    (command("c1", value=60_000), "out_of_range"),
    (command("c1", value=-51, unit="kW"), "out_of_range"),
    (command("c1", value=10, unit="A"), "invalid_unit"),
    (command("c1", channel="SetSocTarget", value=80, unit="W"), "invalid_unit"),
    (command("c1", value="lots"), "invalid_value"),
    (command("c1", channel="MinSoc", value=20, unit="%"), "wrong_command_type"),
    (command("c1", channel="MinSoc", value=20, ctype="config_override"), "missing_duration"),
    (command("c1", channel="MinSoc", value=120, ctype="config_override", duration_sec=60), "out_of_range"),
    (command("c1", channel="schedule", value="maybe", device=None, ctype="mode_change"), "invalid_value"),
    (command("c1", channel="peak_shaving", value=True, device=None, ctype="mode_change"), "unknown_channel"),
    (command("c1", channel="reboot", device=None, ctype="system"), "unknown_channel"),
    (command("c1", target={"edge_id": "other-edge", "device_id": "bat-1", "channel": "SetActivePower"}),
     "wrong_edge"),
])
def test_a_command_that_does_not_fit_the_capabilities_is_rejected_with_the_reason(tmp_path, body, code):
    with FakeRouter() as router, make_site(router, tmp_path) as site:
        router.wait_session(1)
        router.send(body)
        assert router.wait_final("c1") == ["delivered", "rejected"]
        assert router.error("c1").startswith(f"{code}: ")
        assert site.device("bat-1").applied == [] and site.command("cloud:c1") is None


def test_the_reasons_name_the_device_the_channel_and_the_limit(tmp_path):
    with FakeRouter() as router, make_site(router, tmp_path):
        router.wait_session(1)
        router.send(command("far", value=60_000))
        router.send(command("who", device="bms_main"))
        router.wait_final("who")
        assert router.error("far") == "out_of_range: bat-1.SetActivePower: 60000.0 W is outside -50000..50000 W"
        assert router.error("who") == ("unknown_device: bms_main.SetActivePower: device 'bms_main' is not on this "
                                       "edge (devices: bat-1, ev-1)")


def test_the_device_refusing_a_setpoint_is_a_rejected_ack_with_its_reason(tmp_path):
    with FakeRouter() as router, make_site(router, tmp_path) as site:
        router.wait_session(1)
        site.device("bat-1").reject("ILLEGAL_DATA_VALUE")
        router.send(command("no"))
        assert router.wait_final("no") == ["delivered", "accepted", "rejected"]
        assert "ILLEGAL_DATA_VALUE" in router.error("no")


# ---- the queue, emergencies, expiry ------------------------------------------------------------------

def test_a_full_queue_rejects_edge_busy_and_the_queued_commands_still_run(tmp_path):
    with FakeRouter() as router, make_site(router, tmp_path, queue_size=1) as site:
        router.wait_session(1)
        bat = site.device("bat-1")
        bat.set_silent(True)
        router.send(command("first", value=1_000))
        wait_until(lambda: router.statuses("first") == ["delivered", "accepted"])
        router.send(command("second", value=2_000, supersede=False))   # waits for the device
        router.send(command("third", value=3_000, supersede=False))    # no room
        assert router.wait_final("third") == ["delivered", "rejected"]
        assert router.error("third").startswith("edge_busy: ")
        assert router.statuses("second") == ["delivered"]
        bat.set_silent(False)
        assert router.wait_final("second") == ["delivered", "accepted", "executed"]
        assert router.wait_final("first") == ["delivered", "accepted", "executed"]
        assert [a.value for a in bat.applied] == [1.0, 2.0]


def test_a_newer_setpoint_supersedes_the_one_waiting_on_the_same_channel(tmp_path):
    with FakeRouter() as router, make_site(router, tmp_path) as site:
        router.wait_session(1)
        bat = site.device("bat-1")
        bat.set_silent(True)
        router.send(command("busy", value=1_000))
        wait_until(lambda: router.statuses("busy") == ["delivered", "accepted"])
        router.send(command("old", value=2_000))
        router.send(command("new", value=3_000))
        assert router.wait_final("old") == ["delivered", "superseded"]
        assert router.error("old") == "superseded by command new"
        bat.set_silent(False)
        router.wait_final("new")
        assert [a.value for a in bat.applied] == [1.0, 3.0]


def test_an_emergency_goes_first_and_supersedes_what_waits_on_its_channel(tmp_path):
    with FakeRouter() as router, make_site(router, tmp_path) as site:
        router.wait_session(1)
        bat = site.device("bat-1")
        bat.set_silent(True)
        router.send(command("a", value=10_000))
        wait_until(lambda: router.statuses("a") == ["delivered", "accepted"])
        router.send(command("d", value=5_000))                          # waits, same channel as the emergency
        router.send(command("b", channel="SetSocTarget", value=80, unit="%"))   # waits
        router.send(command("e", value=-20_000, priority="emergency"))
        wait_until(lambda: router.statuses("e") == ["delivered", "accepted"])
        assert router.statuses("d") == ["delivered", "superseded"]
        assert router.statuses("b") == ["delivered"]
        assert site.command("cloud:e").priority == 100
        bat.set_silent(False)
        for cid in ("a", "e", "b"):
            assert router.wait_final(cid) == ["delivered", "accepted", "executed"]
        assert [(x.command_id, x.value) for x in bat.applied] == [("cloud:a", 10.0), ("cloud:e", 20.0),
                                                                   ("cloud:b", 80.0)]
        order = [(f.command_id, f.status) for f in router.of_type(AckFrame) if f.status == "accepted"]
        assert order == [("a", "accepted"), ("e", "accepted"), ("b", "accepted")]


def test_a_command_that_expires_while_waiting_is_expired_and_never_executed(tmp_path):
    with FakeRouter() as router, make_site(router, tmp_path) as site:
        router.wait_session(1)
        bat = site.device("bat-1")
        bat.set_silent(True)
        router.send(command("slow", value=1_000))
        wait_until(lambda: router.statuses("slow") == ["delivered", "accepted"])
        assert site.command("cloud:slow").expires_at == T0 + timedelta(seconds=300)
        router.send(command("short", channel="SetSocTarget", value=90, unit="%", expiry_sec=5))
        wait_until(lambda: edge_state(site)["queued"] == 1)
        site.advance(4)
        assert router.statuses("short") == ["delivered"]
        site.advance(2)
        assert router.wait_final("short") == ["delivered", "expired"]
        bat.set_silent(False)
        router.wait_final("slow")
        assert [a.command_id for a in bat.applied] == ["cloud:slow"]
        assert site.command("cloud:short") is None


def test_on_a_real_clock_expiry_runs_on_the_monotonic_clock(tmp_path):
    clock = RealClock()
    try:
        with FakeRouter() as router, make_site(router, tmp_path, clock=clock) as site:
            router.wait_session(1)
            site.device("bat-1").set_silent(True)
            router.send(command("slow", value=1_000))
            router.send(command("short", channel="SetSocTarget", value=90, unit="%", expiry_sec=0.2))
            assert router.wait_final("short") == ["delivered", "expired"]
            site.device("bat-1").set_silent(False)
            assert router.wait_final("slow")[-1] == "executed"
            assert [a.command_id for a in site.device("bat-1").applied] == ["cloud:slow"]
    finally:
        clock.stop()


def test_the_time_left_counts_from_arrival_on_the_edge_not_from_the_commands_timestamp(tmp_path):
    with FakeRouter() as router, make_site(router, tmp_path) as site:
        router.wait_session(1)
        # a wall-clock timestamp far in the past does not make a command with time left stale
        router.send(command("fresh", expiry_sec=30, timestamp="2020-01-01T00:00:00Z"))
        assert router.wait_final("fresh")[-1] == "executed"
        assert site.command("cloud:fresh").expires_at == T0 + timedelta(seconds=30)


def test_a_waiting_command_can_be_cancelled(tmp_path):
    with FakeRouter() as router, make_site(router, tmp_path) as site:
        router.wait_session(1)
        site.device("bat-1").set_silent(True)
        router.send(command("busy"))
        router.send(command("later", channel="SetSocTarget", value=70, unit="%"))
        wait_until(lambda: edge_state(site)["queued"] == 1)
        router.io.call(router._ws.send(encode(Cancel(command_id="later"))))
        assert router.wait_final("later") == ["delivered", "cancelled"]
        site.device("bat-1").set_silent(False)
        router.wait_final("busy")


# ---- dedupe ---------------------------------------------------------------------------------------------

def test_a_command_id_seen_before_is_not_executed_again_and_its_ack_is_sent_again(tmp_path):
    with FakeRouter() as router, make_site(router, tmp_path) as site:
        router.wait_session(1)
        body = command("once", value=7_000)
        seq = router.send(body)
        router.wait_final("once")
        router.send(body, seq=seq)          # the same frame again
        router.send(body)                   # and under a new seq
        wait_until(lambda: len(router.statuses("once")) == 5)
        assert router.statuses("once") == ["delivered", "accepted", "executed", "executed", "executed"]
        assert [f.seq for f in router.of_type(AckFrame) if f.command_id == "once"][-2:] == [seq, seq + 1]
        assert [a.command_id for a in site.device("bat-1").applied] == ["cloud:once"]


# ---- controllers, overrides, system commands ----------------------------------------------------------

def test_mode_change_switches_schedule_following_off_and_scheduler_control_on_again(tmp_path):
    with FakeRouter() as router, make_site(router, tmp_path) as site:
        router.wait_session(1)
        router.send(command("off", channel="schedule", value="off", device=None, ctype="mode_change"))
        assert router.wait_final("off") == ["delivered", "accepted", "executed"]
        assert site.controllers()["schedule"] is False
        wait_until(lambda: any(f.controllers.get("schedule") is False for f in router.of_type(SiteState)))
        df = pd.DataFrame({"ev_1_kw": [7.0]},
                          index=pd.date_range(T0 + timedelta(seconds=60), periods=1, freq="5min"))
        batch = site.submit_schedule(df, asset_map={"ev_1": "ev-1"})
        site.advance(120)
        assert site.command(batch.command_id(0)).status is S.PENDING   # due, not followed
        router.send(command("on", channel="schedule", value=True, device="site", ctype="scheduler_control"))
        assert router.wait_final("on") == ["delivered", "accepted", "executed"]
        site.wait_for(batch.command_id(0))
        assert site.command(batch.command_id(0)).status is S.COMPLETED
        assert site.controllers()["schedule"] is True


def test_a_min_soc_override_holds_for_its_duration_and_reverts_by_itself(tmp_path):
    with FakeRouter() as router, make_site(router, tmp_path) as site:
        router.wait_session(1)
        bat = site.device("bat-1")
        bat.report_telemetry(soc_pct=20.0)
        wait_until(lambda: any(t.values.get("Soc") == 20.0 for t in router.of_type(Telemetry)))
        router.send(command("keep30", channel="MinSoc", value=30, unit="%", ctype="config_override",
                            duration_sec=3600))
        assert router.wait_final("keep30") == ["delivered", "accepted", "executed"]
        state = wait_until(lambda: [s for s in router.of_type(SiteState) if s.overrides])[-1]
        assert state.overrides[0]["device_id"] == "bat-1" and state.overrides[0]["channel"] == "MinSoc"
        assert state.overrides[0]["value"] == 30 and state.overrides[0]["seconds_left"] == 3600
        router.send(command("drain", value=5_000))
        assert router.wait_final("drain") == ["delivered", "accepted", "rejected"]
        assert "below its MinSoc 30 %" in router.error("drain")
        site.advance(3599)
        assert router.statuses("keep30")[-1] == "executed" and edge_state(site)["leases"]
        site.advance(1)
        wait_until(lambda: not edge_state(site)["leases"] and not router.of_type(SiteState)[-1].overrides)
        site.settle()
        router.send(command("drain2", value=5_000))
        assert router.wait_final("drain2") == ["delivered", "accepted", "executed"]


def test_system_commands_sync_config_report_status_and_restart_link(tmp_path):
    with FakeRouter() as router, make_site(router, tmp_path) as site:
        router.wait_session(1)
        router.send(command("sync", channel="sync_config", device=None, ctype="system"))
        assert router.wait_final("sync") == ["delivered", "accepted", "executed"]
        assert len(router.of_type(Capabilities)) == 1
        router.send(command("status", channel="report_status", device=None, ctype="system"))
        router.wait_final("status")
        report = router.of_type(SiteState)[-1]
        assert report.controllers == {"schedule": True, "grid_limit": True}
        assert report.devices == {"bat-1": "IDLE", "ev-1": "AVAILABLE"}
        router.send(command("bounce", channel="restart_link", device=None, ctype="system"))
        assert router.wait_final("bounce") == ["delivered", "accepted", "executed"]
        router.wait_session(2)
        assert router.hellos[1].last_seq == 3
        assert edge_state(site)["sessions"] == 2


def test_telemetry_is_sent_down_sampled_per_device_with_the_latest_values(tmp_path):
    with FakeRouter() as router, make_site(router, tmp_path, telemetry_interval_s=3600) as site:
        router.wait_session(1)
        bat = site.device("bat-1")
        bat.report_telemetry(soc_pct=55.0, power_kw=-3.0)
        first = wait_until(lambda: router.of_type(Telemetry))[0]
        assert first.device_id == "bat-1" and first.values == {"Soc": 55.0, "ActivePower": 3000.0}
        for soc in (56.0, 57.0, 58.0):
            bat.report_telemetry(soc_pct=soc)
        site.device("ev-1").report_telemetry(power_kw=7.0)
        site.settle()    # every event has reached the edge link's inbox, ahead of what follows
        router.send(command("status", channel="report_status", device=None, ctype="system"))
        router.wait_final("status")
        sent = [(t.device_id, t.values) for t in router.of_type(Telemetry)]
        assert sent == [("bat-1", {"Soc": 55.0, "ActivePower": 3000.0}), ("ev-1", {"ActivePower": 7000.0})]


def test_a_wrong_credential_is_refused_and_the_edge_keeps_trying(tmp_path):
    with FakeRouter(credential="not-it") as router, make_site(router, tmp_path) as site:
        wait_until(lambda: router.refused >= 3, what="three refused handshakes")
        assert router.sessions == 0 and not edge_state(site)["connected"]
        site.submit(Command("local", "ev-1", T.SET_CHARGE_RATE, 7.0, T0))   # the site works without the cloud
        assert site.wait_for("local").status is S.COMPLETED


def test_a_dead_edge_link_fails_the_site_with_the_reason_and_an_event(tmp_path, monkeypatch, caplog):
    with FakeRouter() as router:
        with make_site(router, tmp_path) as site:
            router.wait_session(1)
            failed: list[Any] = []
            site.events.subscribe(EventType.SITE_FAILED, failed.append)

            def disk_full(self, seq, command, now):
                raise OSError(28, "No space left on device")
            monkeypatch.setattr(CloudLog, "receive", disk_full)
            router.send(command("doomed"))                        # journaling it fails in the edge actor
            wait_until(lambda: site.state == "failed", what="the site to notice its edge link died")
            assert "edge link failed: OSError" in site.failure and "No space left" in site.failure
            wait_until(lambda: failed, what="SITE_FAILED")
            assert failed[0].payload["actor"] == "edge link"
            assert "site failed: the edge link actor died" in caplog.text
            with pytest.raises(SiteFailed):
                site.cloud_status()
            assert site.device("bat-1").applied == []               # never journaled: never executed
            monkeypatch.undo()
        assert site.state == "stopped"
