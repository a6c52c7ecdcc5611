"""The whole cloud path with every part real and in its own process: an operator's REST command goes to a
``coordinator router`` process, over its edge websocket to a ``coordinator run --simulate`` site process,
through the site's dispatcher to a simulated battery (Modbus TCP) or charger (OCPP), and its final state
comes back to the router. Then each process is killed (-9) in turn: nothing confirmed is lost and nothing is
executed twice.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest

from protocols.edge.wire import FINAL_CLOUD_STATUSES as FINAL

from tests.asyncsupport import wait_until
from tests.servers import EDGE_SECRETS, RouterProcess, free_port, http, router_table, token, write_toml
from tests.test_service_run import SiteProcess, site_file

pytestmark = [pytest.mark.timeout(150), pytest.mark.usefixtures("no_leaks")]



def cloud_site_file(tmp_path: Path, router_port: int) -> Path:
    """The site of the service tests (a charger, a battery; --simulate gives each a simulator) with a [cloud]
    section that connects it to the router as edge e1."""
    path = site_file(tmp_path, free_port(), battery_port=502)
    with path.open("a") as f:
        f.write(f"""
[cloud]
url = "ws://127.0.0.1:{router_port}/ws/edge"
edge_id = "e1"
credential = "{EDGE_SECRETS['e1']}"
reconnect_min_s = 0.1
reconnect_max_s = 0.5
""")
    return path


class Cloud:
    """The router process (on a fixed port, so that it can be restarted where the edge looks for it)."""

    def __init__(self, tmp_path: Path) -> None:
        self.port = free_port()
        self.config = write_toml(tmp_path / "router.toml", router_table(tmp_path, restart_grace_s=5.0))
        self.admin = token("alice", control=("e1",))
        self.router: RouterProcess | None = None

    def start(self) -> "Cloud":
        self.router = RouterProcess(self.config, port=self.port)
        return self

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.router is not None
        router, self.router = self.router, None
        return router.kill() if sig == signal.SIGKILL else router.terminate()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def submit(self, cid: str, device: str, channel: str, value: float, unit: str | None = "W") -> None:
        body: dict[str, Any] = {"command_id": cid, "command_type": "setpoint", "value": value, "expiry_sec": 300,
                                "target": {"edge_id": "e1", "device_id": device, "channel": channel}}
        if unit is not None:
            body["unit"] = unit
        status, _, answer = http("POST", f"{self.url}/api/v1/commands", self.admin, body)
        assert status == 202, answer

    def command(self, cid: str) -> dict[str, Any]:
        status, _, answer = http("GET", f"{self.url}/api/v1/commands/{cid}", self.admin)
        assert status == 200, answer
        return dict(answer)

    def wait_final(self, cid: str, timeout: float = 40) -> dict[str, Any]:
        return wait_until(lambda: (lambda c: c if c["state"] in FINAL else None)(self.command(cid)), timeout,
                          f"{cid} final at the router")

    def edge_online(self) -> bool:
        status, _, answer = http("GET", f"{self.url}/api/v1/edges/e1", self.admin)
        return status == 200 and bool(answer.get("online"))


def states(record: dict[str, Any]) -> list[str]:
    return [row["status"] for row in record["history"] if row["kind"] == "state"]


@pytest.fixture
def cloud(tmp_path: Path) -> Any:
    c = Cloud(tmp_path).start()
    try:
        yield c
    finally:
        if c.router is not None:
            c.stop()


def start_site(path: Path) -> SiteProcess:
    site = SiteProcess(path, "--simulate")
    site.wait_ready()
    wait_until(lambda: all(a["link"] == "up" for a in site.get("/api/v1/assets")["assets"]), 30,
               "every simulated device connected")
    return site


def test_a_setpoint_for_a_battery_and_one_for_a_charger_are_executed_by_the_devices(tmp_path, cloud):
    site = start_site(cloud_site_file(tmp_path, cloud.port))
    try:
        wait_until(cloud.edge_online, 30, "the edge online at the router")
        link = wait_until(lambda: (lambda s: s if s["ready"] else None)(site.get("/api/v1/cloud")), 10,
                          "the site's cloud link ready")
        assert link["connected"] and link["edge_id"] == "e1" and link["url"].endswith(f":{cloud.port}/ws/edge")
        assert link["sessions"] == 1 and link["queued"] == 0
        cloud.submit("bat-a", "bat-1", "SetActivePower", -20_000)
        cloud.submit("ev-a", "ev-1", "SetChargePowerLimit", 11_000)
        for cid in ("bat-a", "ev-a"):
            done = cloud.wait_final(cid)
            assert done["state"] == "EXECUTED", done
            assert states(done)[-1] == "EXECUTED" and "DELIVERED" in states(done)
        bat = site.get("/api/v1/commands/cloud:bat-a")
        assert bat["status"] == "COMPLETED" and bat["asset_id"] == "bat-1", bat
        assert (bat["command_type"], bat["value"]) == ("SET_CHARGE_RATE", 20.0)     # -20 000 W: charging 20 kW
        ev = site.get("/api/v1/commands/cloud:ev-a")
        assert ev["status"] == "COMPLETED" and ev["asset_id"] == "ev-1", ev
        assert (ev["command_type"], ev["value"]) == ("SET_CHARGE_RATE", 11.0)
    finally:
        assert site.close() == 0, site.log()


def test_commands_sent_while_the_site_process_is_dead_are_executed_in_order_when_it_is_back(tmp_path, cloud):
    path = cloud_site_file(tmp_path, cloud.port)
    site = start_site(path)
    try:
        wait_until(cloud.edge_online, 30, "the edge online at the router")
        cloud.submit("first", "bat-1", "SetActivePower", 10_000)
        assert cloud.wait_final("first")["state"] == "EXECUTED"
    finally:
        site.close(signal.SIGKILL)
    wait_until(lambda: not cloud.edge_online(), 30, "the router to see the edge gone")
    cloud.submit("while-down-1", "bat-1", "SetActivePower", 5_000)
    cloud.submit("while-down-2", "ev-1", "SetChargePowerLimit", 7_000)
    assert cloud.command("while-down-1")["state"] == "QUEUED"
    site = start_site(path)
    try:
        one, two = cloud.wait_final("while-down-1"), cloud.wait_final("while-down-2")
        assert one["state"] == two["state"] == "EXECUTED", (one, two)
        assert one["seq"] < two["seq"]
        assert site.get("/api/v1/commands/cloud:while-down-1")["status"] == "COMPLETED"
        assert site.get("/api/v1/commands/cloud:first")["status"] == "COMPLETED"    # recovered, not redone
        assert site.get("/api/v1/commands/cloud:first")["attempts"] == 1
    finally:
        assert site.close() == 0, site.log()


def test_a_router_killed_after_accepting_a_command_delivers_it_once_when_it_is_back(tmp_path, cloud):
    site = start_site(cloud_site_file(tmp_path, cloud.port))
    try:
        wait_until(cloud.edge_online, 30, "the edge online at the router")
        cloud.stop()                          # a clean stop, then a command queued before a crash:
        wait_until(lambda: not site.get("/api/v1/cloud")["connected"], 20, "the site to see the router gone")
        cloud.start()
        wait_until(cloud.edge_online, 30, "the edge back online")
        cloud.submit("across-crash", "bat-1", "SetActivePower", 15_000)
        cloud.stop(signal.SIGKILL)            # right after the 202: the command is durable at the router
        cloud.start()
        done = cloud.wait_final("across-crash")
        assert done["state"] == "EXECUTED", done
        assert states(done).count("EXECUTED") == 1
        on_site = site.get("/api/v1/commands/cloud:across-crash")
        assert on_site["status"] == "COMPLETED" and on_site["attempts"] == 1, on_site
    finally:
        assert site.close() == 0, site.log()
