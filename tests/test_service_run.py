"""``coordinator run site.toml`` as a real process: SIGTERM stops it cleanly, kill -9 loses nothing.

The devices are real simulators in this test process (OCPP charge points over websockets, a Modbus
battery over TCP), so they outlive the site process: after kill -9 and a restart the test can tell what
each device was told, and when.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from collections import deque
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from protocols.sim.battery import BatterySim
from protocols.sim.fleet import run_fleet
from runtime.core.iothread import IOThread

from .asyncsupport import wait_until

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("no_leaks")]
_HTTP = re.compile(r"HTTP API listening on (http://[\d.]+:\d+)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SiteProcess:
    """``coordinator run FILE`` as a child; its log lines are collected; ``url`` is its HTTP API."""

    def __init__(self, path: Path, *args: str) -> None:
        self.lines: deque[str] = deque(maxlen=400)
        self.url: str | None = None
        self.proc = subprocess.Popen([sys.executable, "-m", "runtime.cli", "run", str(path), "--log-level", "INFO",
                                      *args], cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True, bufsize=1)
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip())
            m = _HTTP.search(line)
            if m:
                self.url = m.group(1)

    def log(self) -> str:
        return "\n".join(self.lines)

    def get(self, path: str) -> Any:
        assert self.url is not None
        with urllib.request.urlopen(self.url + path, timeout=10) as r:
            return json.loads(r.read())

    def post(self, path: str, body: dict[str, Any]) -> Any:
        assert self.url is not None
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    def ready(self) -> bool:
        if self.url is None:
            return False
        try:
            return self.get("/readyz").get("status") == "ready"
        except OSError:
            return False

    def wait_ready(self, timeout: float = 30) -> None:
        wait_until(lambda: self.proc.poll() is not None or self.ready(), timeout, "the site process to be ready")
        assert self.proc.poll() is None, self.log()

    def close(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._reader.join(timeout=5)
        return self.proc.returncode


def test_run_simulate_serves_commands_and_stops_cleanly_on_sigterm(tmp_path):
    text = (ROOT / "scenarios" / "site.toml").read_text()
    text = text.replace('listen = "127.0.0.1:8080"', 'listen = "127.0.0.1:0"').replace('path = "inbox"', 'path = "in"')
    path = tmp_path / "site.toml"
    path.write_text(text)
    site = SiteProcess(path, "--simulate")
    try:
        site.wait_ready()
        wait_until(lambda: all(a["link"] == "up" for a in site.get("/api/v1/assets")["assets"]), 30,
                   "every simulated device connected")
        answer = site.post("/api/v1/commands", {"command_id": "c1", "asset_id": "ev-1",
                                                "command_type": "SET_CHARGE_RATE", "value": 11.0})
        assert answer["new"] is True
        wait_until(lambda: site.get("/api/v1/commands/c1")["status"] == "COMPLETED", 30, "c1 COMPLETED")
    finally:
        code = site.close(signal.SIGTERM)
    assert code == 0, site.log()
    assert "stopping (signal 15)" in site.log()


def statuses(site: SiteProcess) -> dict[str, str]:
    """The status of each command of the test's schedule (plan-1-0 .. plan-1-5), from the site's HTTP API."""
    return {f"plan-1-{i}": site.get(f"/api/v1/commands/plan-1-{i}")["status"] for i in range(6)}


def site_file(tmp_path: Path, ocpp_port: int, battery_port: int) -> Path:
    """A site of one OCPP charger (CP0001) and one Modbus battery, journal and HTTP API on."""
    path = tmp_path / "site.toml"
    path.write_text(f"""
[[assets]]
id = "ev-1"
kind = "charger"
max_kw = 22
ocpp = {{ charge_point_id = "CP0001" }}

[[assets]]
id = "bat-1"
kind = "battery"
modbus = {{ host = "127.0.0.1", port = {battery_port}, poll_interval_s = 1.0 }}

[ocpp]
host = "127.0.0.1"
port = {ocpp_port}

[journal]
dir = "journal"

[http]
listen = "127.0.0.1:0"
""")
    return path


def test_after_kill_9_a_restart_completes_every_accepted_command_and_reapplies_no_final_one(tmp_path):
    io = IOThread(name="test-devices").start()
    battery = BatterySim(host="127.0.0.1", port=0, name="bat-1")
    io.call(battery.start())
    ocpp_port = free_port()
    stop = asyncio.Event()
    fleet_future = io.submit(run_fleet(f"ws://127.0.0.1:{ocpp_port}", 1, "1.6", "CP", stop=stop, retry=True,
                                       retry_base=0.05, retry_cap=0.5, meter_interval=0, auto_reconnect=True))
    path = site_file(tmp_path, ocpp_port, battery.port)
    first = SiteProcess(path)
    second: SiteProcess | None = None
    try:
        first.wait_ready()
        wait_until(lambda: all(a["link"] == "up" for a in first.get("/api/v1/assets")["assets"]), 30, "devices up")
        # Row 0 is due at once; a row expires when the next one starts, so the restarted site has 20 s to
        # start and send row 1 (times taken now, not before the first site had started: on a busy machine
        # its start alone took longer than the first row's margin and rows 0 and 1 expired unsent).
        start = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(seconds=1)
        rows = [start + timedelta(seconds=20 * i) for i in range(3)]
        schedule = {"batch_id": "plan-1", "index": [t.isoformat() for t in rows],
                    "columns": {"ev_1_kw": [7.0, 8.0, 9.0], "battery_charge_kw": [10.0, 20.0, 30.0]},
                    "asset_map": {"ev_1": "ev-1", "battery": "bat-1"}}
        assert first.post("/api/v1/schedules", schedule)["commands"] == 6
        try:
            wait_until(lambda: all(first.get(f"/api/v1/commands/plan-1-{i}")["status"] == "COMPLETED"
                                   for i in (0, 1)), 30, "the first row COMPLETED on both assets")
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {statuses(first)}\n{first.log()[-4000:]}") from None
        first.proc.kill()                                 # kill -9: no shutdown of any kind
        first.proc.wait(timeout=10)
        second = SiteProcess(path)
        second.wait_ready()
        try:
            wait_until(lambda: set(statuses(second).values()) == {"COMPLETED"}, 60,
                       "every row COMPLETED after the restart")
        except AssertionError as exc:   # say where each command is, and what the restarted site logged
            raise AssertionError(f"{exc}: {statuses(second)}\n{second.log()[-4000:]}") from None
        assert second.post("/api/v1/schedules", schedule)["commands"] == 6   # a retried submission: a no-op
    finally:
        for p in (first, second):
            if p is not None:
                p.close()
        io.loop.call_soon_threadsafe(stop.set)
        fleet = fleet_future.result(timeout=30)
        charger = fleet.order[0]
        limits = [call.payload["cs_charging_profiles"]["charging_schedule"]["charging_schedule_period"][0]["limit"]
                  for call in charger.calls_of("SetChargingProfile")]
        io.call(battery.stop())
        io.stop()
    assert limits.count(7000.0) == 1, limits   # completed before the kill: never applied again
    assert limits[-1] == 9000.0 and 8000.0 in limits, limits
