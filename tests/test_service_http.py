"""The local HTTP API (runtime.service.http_api): real HTTP on 127.0.0.1 against a real Site (in-memory
devices, real clock, a journal), served by uvicorn on the site's own I/O loop."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import socket
import threading
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from starlette.requests import Request

from runtime import BatterySpec, ChargerSpec, RestartPolicy, Site
from runtime.config.models import ChargerConfig, HttpConfig, JournalConfig, SiteConfig
from runtime.core.journal import Journal
from runtime.service.http_api import ApiError, HttpComponent, http_component, is_loopback, loopback_only
from runtime.service.process import SiteProcess

from .asyncsupport import wait_until

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("no_leaks")]


def call(base: str, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """One HTTP request (from the test thread); returns (status, JSON body or text)."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            status, text, ctype = response.status, response.read().decode(), response.headers["content-type"]
    except urllib.error.HTTPError as exc:
        status, text, ctype = exc.code, exc.read().decode(), exc.headers["content-type"]
        exc.close()
    return status, json.loads(text) if ctype.startswith("application/json") else text


class Api:
    """A started site with its HTTP component; ``get``/``post`` talk to it over real HTTP."""

    def __init__(self, site: Site, component: HttpComponent) -> None:
        self.site, self.component = site, component

    def get(self, path: str, **kw: Any) -> tuple[int, Any]:
        return call(self.component.url, "GET", path, **kw)

    def post(self, path: str, body: Any = None, **kw: Any) -> tuple[int, Any]:
        return call(self.component.url, "POST", path, body, **kw)

    def status_of(self, command_id: str) -> str | None:
        status, body = self.get(f"/api/v1/commands/{command_id}")
        return body["status"] if status == 200 else None


def start_api(site: Site, **http: Any) -> Api:
    component = HttpComponent(site, HttpConfig(listen="127.0.0.1:0", **http))
    site.run_coroutine(component.start()).result(10)
    return Api(site, component)


def stop_api(api: Api) -> None:
    if api.site.running or api.site.state == "failed":
        api.site.run_coroutine(api.component.stop()).result(15)
    api.site.stop()


@pytest.fixture
def api(tmp_path):
    site = Site([ChargerSpec("ev-1", max_kw=22.0), BatterySpec("bat-1")], journal_dir=tmp_path / "journal").start()
    api = start_api(site)
    try:
        yield api
    finally:
        stop_api(api)


def soon(seconds: float = 0.0) -> str:
    return (datetime.now(timezone.utc) + timedelta(seconds=seconds)).isoformat()


# ---- commands ------------------------------------------------------------------------------------

def test_a_posted_command_completes_and_its_snapshot_has_every_field(api):
    status, body = api.post("/api/v1/commands", {"command_id": "op-1", "asset_id": "ev-1",
                                                 "command_type": "SET_CHARGE_RATE", "value": 7})
    assert status == 202
    assert body["command_id"] == "op-1" and body["new"] is True
    wait_until(lambda: api.status_of("op-1") == "COMPLETED", what="op-1 COMPLETED")
    status, snapshot = api.get("/api/v1/commands/op-1")
    assert status == 200
    assert snapshot["asset_id"] == "ev-1" and snapshot["command_type"] == "SET_CHARGE_RATE"
    assert snapshot["value"] == 7.0 and snapshot["setpoint"] == 7.0 and snapshot["granted"] is None
    assert snapshot["source"] == "http" and snapshot["attempts"] == 1 and snapshot["expires_at"] is None
    assert datetime.fromisoformat(snapshot["scheduled_time"]).tzinfo is not None
    assert datetime.fromisoformat(snapshot["created_at"]).tzinfo is not None
    assert api.site.device("ev-1").values() == {"SET_CHARGE_RATE": 7.0}
    # the same id again is a no-op
    status, again = api.post("/api/v1/commands", {"command_id": "op-1", "asset_id": "ev-1",
                                                  "command_type": "SET_CHARGE_RATE", "value": 11})
    assert status == 202 and again == {"command_id": "op-1", "status": "COMPLETED", "new": False, "reason": None}
    assert [a.command_id for a in api.site.device("ev-1").applied] == ["op-1"]


def test_a_command_id_is_generated_and_a_future_command_waits_until_it_is_due(api):
    status, body = api.post("/api/v1/commands", {"asset_id": "bat-1", "command_type": "SET_DISCHARGE_RATE",
                                                 "value": 10.5, "scheduled_time": soon(3600), "priority": 2,
                                                 "expires_at": soon(7200)})
    assert status == 202 and body["new"] is True and body["status"] == "PENDING"
    snapshot = api.get(f"/api/v1/commands/{body['command_id']}")[1]
    assert snapshot["priority"] == 2 and snapshot["expires_at"] is not None


def test_a_value_outside_the_device_limits_is_accepted_and_comes_back_rejected_with_the_reason(api):
    status, body = api.post("/api/v1/commands", {"command_id": "too-much", "asset_id": "ev-1",
                                                 "command_type": "SET_CHARGE_RATE", "value": 70})
    assert status == 202 and body["status"] == "REJECTED"
    assert "exceeds the device limit 22.0 kW" in body["reason"]
    assert api.get("/api/v1/commands/too-much")[1]["last_error"] == body["reason"]
    assert api.site.device("ev-1").applied == []


def test_malformed_commands_are_422_naming_the_field_and_the_value(api):
    status, body = api.post("/api/v1/commands", {"asset_id": "ev-1", "command_type": "SET_CHARGE_RATE",
                                                 "value": "7", "scheduled_time": "2026-01-01T08:00:00"})
    assert status == 422
    fields = {p["field"]: p for p in body["problems"]}
    assert fields["value"]["value"] == "7" and "value:" in fields["value"]["message"]
    assert "timezone" in fields["scheduled_time"]["message"] and "2026-01-01T08:00:00" in body["error"]

    status, body = api.post("/api/v1/commands", {"asset_id": "ev-1", "command_type": "FLY", "value": 1})
    assert status == 422 and "command_type" in body["error"] and "'FLY'" in body["error"]

    status, body = api.post("/api/v1/commands", {"command_type": "SET_CHARGE_RATE", "value": 1, "colour": "red"})
    assert status == 422
    assert {p["field"] for p in body["problems"]} == {"asset_id", "colour"}
    assert "asset_id: required" in body["error"]

    status, body = api.post("/api/v1/commands", raw=b'{"asset_id": "ev-1",')
    assert status == 422 and "not valid JSON" in body["error"]

    status, body = api.post("/api/v1/commands", {"asset_id": "ev-9", "command_type": "SET_CHARGE_RATE",
                                                 "value": 1})
    assert status == 422 and "unknown asset(s) 'ev-9'" in body["error"]
    assert body["problems"][0]["field"] == "asset_id"


def test_unknown_commands_and_assets_are_404_naming_them(api):
    status, body = api.get("/api/v1/commands/no-such-command")
    assert status == 404 and "'no-such-command'" in body["error"]
    status, body = api.get("/api/v1/assets/ev-9")
    assert status == 404 and "'ev-9'" in body["error"] and "'ev-1'" in body["error"]
    status, body = api.get("/api/v1/nowhere")
    assert status == 404 and "/api/v1/nowhere" in body["error"]
    status, body = api.get("/api/v1/cloud")
    assert status == 404 and "no cloud link" in body["error"] and "[cloud]" in body["error"]
    assert api.site.cloud_status() is None


# ---- schedules -----------------------------------------------------------------------------------

def test_a_posted_schedule_is_one_batch_and_its_first_row_completes(api):
    schedule = {"index": [soon(), soon(900)], "columns": {"ev_1_kw": [7, 11], "battery_charge_kw": [5, 0]},
                "asset_map": {"ev_1": "ev-1", "battery": "bat-1"}, "batch_id": "plan-1"}
    status, body = api.post("/api/v1/schedules", schedule)
    assert status == 202
    assert body["batch_id"] == "plan-1" and body["commands"] == 4 and sorted(body["assets"]) == ["bat-1", "ev-1"]
    wait_until(lambda: api.status_of("plan-1-0") == "COMPLETED" and api.status_of("plan-1-1") == "COMPLETED",
               what="the first row's commands")
    assert api.site.device("ev-1").values() == {"SET_CHARGE_RATE": 7.0}
    # the same batch id again is a no-op
    assert api.post("/api/v1/schedules", schedule)[0] == 202
    assert [a.command_id for a in api.site.device("ev-1").applied] == ["plan-1-0"]


def test_a_malformed_schedule_is_422_naming_the_field_and_the_value(api):
    status, body = api.post("/api/v1/schedules", {"index": [soon(), soon(900)], "columns": {"ev_1_kw": [7]},
                                                  "asset_map": {"ev_1": "ev-1"}})
    assert status == 422 and "columns.ev_1_kw: 1 values, but index has 2 rows" in body["error"]

    status, body = api.post("/api/v1/schedules", {"index": [soon()], "columns": {"ev_1_kw": ["seven"]}})
    assert status == 422 and body["problems"][0]["field"] == "columns.ev_1_kw.0"
    assert body["problems"][0]["value"] == "seven"

    status, body = api.post("/api/v1/schedules", {"index": [soon()], "columns": {"solar_kw": [7]}})
    assert status == 422 and "column 'solar_kw': unknown column" in body["error"]

    status, body = api.post("/api/v1/schedules", {"index": [soon()], "columns": {"ev_1_kw": [-3]},
                                                  "asset_map": {"ev_1": "ev-1"}})
    assert status == 422 and "column 'ev_1_kw'" in body["error"] and "-3.0 is negative" in body["error"]

    status, body = api.post("/api/v1/schedules", {"index": [soon()], "columns": {"ev_7_kw": [1]}})
    assert status == 422 and "unknown asset(s) 'ev_7'" in body["error"]

    status, body = api.post("/api/v1/schedules", {"index": ["2026-01-01T08:00"], "columns": {"ev_1_kw": [1]}})
    assert status == 422 and body["problems"][0]["field"] == "index.0"


# ---- assets --------------------------------------------------------------------------------------

def test_assets_are_listed_with_their_status_fields(api):
    status, body = api.get("/api/v1/assets")
    assert status == 200
    by_id = {a["asset_id"]: a for a in body["assets"]}
    assert set(by_id) == {"ev-1", "bat-1"}
    assert by_id["ev-1"] == {"asset_id": "ev-1", "kind": "charger", "state": "AVAILABLE",
                             "device_state": "AVAILABLE", "link": "up", "healthy": True, "reason": "",
                             "supervision": "running"}
    api.site.device("bat-1").set_connected(False)
    wait_until(lambda: api.get("/api/v1/assets/bat-1")[1]["link"] == "down", what="bat-1's link down")
    one = api.get("/api/v1/assets/bat-1")[1]
    assert one["kind"] == "battery" and one["healthy"] is False and "link is down" in one["reason"]


# ---- loopback only -------------------------------------------------------------------------------

def _fake_request(app: Any, client: tuple[str, int]) -> Request:
    return Request({"type": "http", "method": "GET", "path": "/healthz", "headers": [], "query_string": b"",
                    "client": client, "app": app})


def test_a_client_that_is_not_on_loopback_is_refused_naming_its_address(api):
    # through a (loopback) proxy that says who the client is: the API sees the remote address
    status, body = api.get("/healthz", headers={"X-Forwarded-For": "192.0.2.7"})
    assert status == 403 and "192.0.2.7" in body["error"] and "allow_remote" in body["error"]
    status, _ = api.post("/api/v1/commands", {"asset_id": "ev-1", "command_type": "SET_CHARGE_RATE",
                                              "value": 1}, headers={"X-Forwarded-For": "192.0.2.7"})
    assert status == 403 and api.site.counts()["PENDING"] == 0
    assert api.get("/healthz")[0] == 200
    # the dependency itself, with a client that connected from another host
    app = api.component.app
    with pytest.raises(ApiError) as refused:
        asyncio.run(loopback_only(_fake_request(app, ("10.1.2.3", 40000))))
    assert refused.value.status == 403 and "client 10.1.2.3 is not a loopback address" in refused.value.message
    asyncio.run(loopback_only(_fake_request(app, ("127.0.0.1", 40000))))
    asyncio.run(loopback_only(_fake_request(app, ("::1", 40000))))


def test_allow_remote_lets_other_clients_in(tmp_path):
    site = Site([ChargerSpec("ev-1")], journal_dir=tmp_path).start()
    api = start_api(site, allow_remote=True)
    try:
        assert api.get("/healthz", headers={"X-Forwarded-For": "192.0.2.7"})[0] == 200
        asyncio.run(loopback_only(_fake_request(api.component.app, ("10.1.2.3", 40000))))
    finally:
        stop_api(api)


def test_loopback_addresses():
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.8.9.10", "::1", "[::1]", "::ffff:127.0.0.1"))
    assert not any(is_loopback(h) for h in ("10.0.0.1", "192.0.2.7", "::ffff:10.0.0.1", "localhost", "", None))


# ---- health --------------------------------------------------------------------------------------

def test_healthz_and_readyz_while_the_site_runs(api):
    assert api.get("/healthz") == (200, {"status": "ok", "site": "running"})
    assert api.get("/readyz") == (200, {"status": "ready", "unhealthy_assets": []})
    api.site.device("ev-1").set_connected(False)   # an unhealthy asset does not make the site unready
    wait_until(lambda: api.get("/readyz")[1].get("unhealthy_assets") == ["ev-1"], what="ev-1 unhealthy")
    assert api.get("/readyz")[0] == 200


def test_readyz_is_503_while_an_asset_has_not_reported_its_health(tmp_path):
    policy = RestartPolicy(max_restarts=3, window_s=60, base_backoff_s=600, max_backoff_s=600)  # after the test
    site = Site([ChargerSpec("ev-1"), BatterySpec("bat-1")], journal_dir=tmp_path, restart_policy=policy).start()
    api = start_api(site)
    try:
        assert api.get("/readyz")[0] == 200
        site.device("ev-1").crash_actor()
        wait_until(lambda: api.get("/readyz")[0] == 503, what="readyz 503")
        _, body = api.get("/readyz")
        assert body["status"] == "not ready" and "asset ev-1 is restarting" in body["reason"]
        assert api.get("/healthz")[0] == 200  # alive, though not ready
    finally:
        stop_api(api)


def test_readyz_is_503_while_the_api_is_not_accepting_work(api):
    api.component.context.accepting = False  # what stop() does first; the server still answers meanwhile
    status, body = api.get("/readyz")
    assert status == 503 and "not accepting work" in body["reason"]
    status, body = api.post("/api/v1/commands", {"asset_id": "ev-1", "command_type": "SET_CHARGE_RATE",
                                                 "value": 1})
    assert status == 503 and "not accepting work" in body["error"]
    api.component.context.accepting = True


def test_healthz_and_readyz_are_503_once_the_site_failed(tmp_path, monkeypatch):
    site = Site([ChargerSpec("ev-1")], journal_dir=tmp_path).start()
    api = start_api(site)
    try:
        real_append = Journal.append_many

        def disk_full(self, records):
            if str(self.path).endswith("commands.jnl"):
                raise OSError(28, "No space left on device")
            return real_append(self, records)
        site.device("ev-1").set_silent(True)
        assert api.post("/api/v1/commands", {"command_id": "c1", "asset_id": "ev-1",
                                             "command_type": "SET_CHARGE_RATE", "value": 7})[0] == 202
        monkeypatch.setattr(Journal, "append_many", disk_full)
        site.device("ev-1").set_silent(False)   # the answer arrives; journaling it kills the dispatcher
        wait_until(lambda: site.state == "failed", what="the site to fail")
        status, body = api.get("/healthz")
        assert status == 503 and body["site"] == "failed" and "No space left" in body["reason"]
        status, body = api.get("/readyz")
        assert status == 503 and "the site is failed" in body["reason"]
        status, body = api.get("/api/v1/commands/c1")
        assert status == 503 and "the site has failed" in body["error"]
    finally:
        monkeypatch.undo()
        stop_api(api)


# ---- the loop is never blocked -------------------------------------------------------------------

def test_a_request_waiting_for_an_actor_does_not_block_the_loop(api, monkeypatch):
    """The dispatcher is stuck in a journal write; a POST waits for it, and meanwhile the loop serves
    other requests and runs other coroutines (a blocking ask on the loop would freeze all of them)."""
    entered, release = threading.Event(), threading.Event()
    real_append = Journal.append_many

    def slow_disk(self, records):
        if str(self.path).endswith("commands.jnl"):
            entered.set()
            release.wait(20)
        return real_append(self, records)
    monkeypatch.setattr(Journal, "append_many", slow_disk)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        posted = pool.submit(api.post, "/api/v1/commands", {"command_id": "slow", "asset_id": "ev-1",
                                                            "command_type": "SET_CHARGE_RATE", "value": 5})
        try:
            assert entered.wait(10), "the dispatcher never journaled the command"
            assert not posted.done()
            assert api.get("/healthz")[0] == 200                   # served while the POST waits
            assert api.get("/api/v1/assets/ev-1")[1]["state"] == "AVAILABLE"   # other actors are asked, too

            async def elsewhere() -> str:
                await asyncio.sleep(0)
                return "ran"
            assert api.site.run_coroutine(elsewhere()).result(5) == "ran"
            assert not posted.done()
        finally:
            release.set()
        status, body = posted.result(10)
    assert status == 202 and body["new"] is True
    wait_until(lambda: api.status_of("slow") == "COMPLETED", what="the slow command")


# ---- the component -------------------------------------------------------------------------------

def test_stop_closes_the_port_and_the_component_is_off_without_http_config(tmp_path):
    site = Site([ChargerSpec("ev-1")], journal_dir=tmp_path).start()
    try:
        config = SiteConfig(assets=[ChargerConfig(id="ev-1", kind="charger")])
        assert http_component(site, config) is None
        component = http_component(site, config.model_copy(update={"http": HttpConfig(listen="127.0.0.1:0")}))
        assert component is not None and component.name == "http"
        site.run_coroutine(component.start()).result(10)
        port = component.port
        assert port and call(component.url, "GET", "/healthz")[0] == 200
        site.run_coroutine(component.stop()).result(15)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
    finally:
        site.stop()


def test_a_port_in_use_is_an_error_naming_the_address(tmp_path):
    site = Site([ChargerSpec("ev-1")], journal_dir=tmp_path).start()
    busy = socket.create_server(("127.0.0.1", 0))
    try:
        port = busy.getsockname()[1]
        component = HttpComponent(site, HttpConfig(listen=f"127.0.0.1:{port}"))
        with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{port}"):
            site.run_coroutine(component.start()).result(10)
        assert site.running  # the loop is fine
    finally:
        busy.close()
        site.stop()


def test_a_site_process_serves_the_api_from_its_configuration(tmp_path):
    config = SiteConfig(assets=[ChargerConfig(id="ev-1", kind="charger")], http=HttpConfig(listen="127.0.0.1:0"),
                        journal=JournalConfig(dir=str(tmp_path / "journal")))
    process = SiteProcess(config, components=[http_component]).start()
    try:
        (component,) = process.components
        assert call(component.url, "GET", "/readyz")[0] == 200
        status, _ = call(component.url, "POST", "/api/v1/commands",
                         {"command_id": "p1", "asset_id": "ev-1", "command_type": "SET_CHARGE_RATE", "value": 3})
        assert status == 202
        wait_until(lambda: call(component.url, "GET", "/api/v1/commands/p1")[1]["status"] == "COMPLETED",
                   what="p1 COMPLETED")
    finally:
        process.shutdown()
    assert process.components == [] and process.site is not None and process.site.state == "stopped"
