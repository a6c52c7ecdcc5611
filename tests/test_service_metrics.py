"""Prometheus metrics of a site (runtime.service.metrics), scraped over real HTTP from /metrics and read
with prometheus_client's own parser."""

from __future__ import annotations

import json
import os
import urllib.request
from datetime import datetime, timezone
from typing import Any

import prometheus_client
import pytest
from prometheus_client.parser import text_string_to_metric_families

from runtime import BatterySpec, ChargerSpec, Command, CommandType, RestartPolicy, Site
from runtime.config.models import HttpConfig
from runtime.core.events import Event, EventType
from runtime.core.retention import CompactionPolicy
from runtime.service import metrics as metrics_module
from runtime.service.http_api import HttpComponent
from runtime.service.metrics import METRICS, SiteMetrics, site_metrics

from .asyncsupport import wait_until

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("no_leaks")]


class Scraper:
    """A started site with its HTTP component; :meth:`samples` scrapes /metrics."""

    def __init__(self, site: Site) -> None:
        self.site = site
        self.component = HttpComponent(site, HttpConfig(listen="127.0.0.1:0"))
        site.run_coroutine(self.component.start()).result(10)

    def text(self) -> tuple[str, str]:
        with urllib.request.urlopen(self.component.url + "/metrics", timeout=10) as response:
            return response.headers["content-type"], response.read().decode()

    def samples(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        """{(sample name, labels): value} of one scrape."""
        return {(s.name, frozenset(s.labels.items())): s.value
                for family in text_string_to_metric_families(self.text()[1]) for s in family.samples}

    def value(self, name: str, **labels: str) -> float | None:
        return self.samples().get((name, frozenset(labels.items())))

    def post(self, body: dict[str, Any]) -> dict[str, Any]:
        request = urllib.request.Request(self.component.url + "/api/v1/commands", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def close(self) -> None:
        if self.site.running or self.site.state == "failed":
            self.site.run_coroutine(self.component.stop()).result(15)
        self.site.stop()


@pytest.fixture
def scraper(tmp_path):
    policy = RestartPolicy(max_restarts=3, window_s=60, base_backoff_s=0.05, max_backoff_s=0.05)
    site = Site([ChargerSpec("ev-1"), ChargerSpec("ev-2"), BatterySpec("bat-1")], journal_dir=tmp_path / "journal",
                restart_policy=policy).start()
    s = Scraper(site)
    try:
        yield s
    finally:
        s.close()


def command(cid: str, asset: str, value: float, ctype: str = "SET_CHARGE_RATE") -> dict[str, Any]:
    return {"command_id": cid, "asset_id": asset, "command_type": ctype, "value": value}


def test_commands_are_counted_by_state_and_asset_kind_after_they_complete(scraper):
    scraper.post(command("a", "ev-1", 7))
    scraper.post(command("b", "ev-2", 11))
    scraper.post(command("c", "bat-1", 500, "SET_DISCHARGE_RATE"))   # outside the limits: REJECTED
    for cid in ("a", "b"):
        scraper.site.wait_for(cid)
    wait_until(lambda: scraper.value("coordinator_commands_total", state="COMPLETED", kind="charger") == 2,
               what="2 completed charger commands counted")
    v = scraper.value
    assert v("coordinator_commands_total", state="DISPATCHED", kind="charger") == 2
    assert v("coordinator_commands_total", state="PENDING", kind="charger") == 2
    assert v("coordinator_commands_total", state="REJECTED", kind="battery") == 1
    assert v("coordinator_commands_total", state="COMPLETED", kind="battery") is None
    for state in ("PENDING", "HELD", "DISPATCHED", "ACKNOWLEDGED"):   # nothing is open any more
        assert v("coordinator_commands_open", state=state, kind="charger") == 0
    assert v("coordinator_dispatch_latency_seconds_count", kind="charger") == 2
    assert v("coordinator_dispatch_latency_seconds_bucket", kind="charger", le="+Inf") == 2
    wait_until(lambda: v("coordinator_dispatch_delay_seconds_count", kind="charger") == 2,
               what="both dispatch delays observed")
    assert v("coordinator_events_total", type="COMMAND_COMPLETED") == 2


def test_open_commands_include_those_in_flight_before_the_metrics_started(tmp_path):
    site = Site([ChargerSpec("ev-1")], journal_dir=tmp_path).start()
    try:
        site.device("ev-1").set_silent(True)
        site.submit(Command("early", "ev-1", CommandType.SET_CHARGE_RATE, 5.0, datetime.now(timezone.utc)))
        wait_until(lambda: site.command("early").status.value == "DISPATCHED", what="early DISPATCHED")
        scraper = Scraper(site)
    except BaseException:
        site.stop()
        raise
    try:
        assert scraper.value("coordinator_commands_open", state="DISPATCHED", kind="charger") == 1
        site.device("ev-1").set_silent(False)
        site.wait_for("early")
        wait_until(lambda: scraper.value("coordinator_commands_open", state="DISPATCHED", kind="charger") == 0,
                   what="early no longer open")
        assert scraper.value("coordinator_commands_total", state="COMPLETED", kind="charger") == 1
    finally:
        scraper.close()


def test_link_states_restarts_and_inbox_depths(scraper):
    site = scraper.site
    assert scraper.value("coordinator_device_link_up", asset="ev-1", kind="charger") == 1
    assert scraper.value("coordinator_device_link_up", asset="bat-1", kind="battery") == 1
    site.device("ev-1").set_connected(False)
    wait_until(lambda: scraper.value("coordinator_device_link_up", asset="ev-1", kind="charger") == 0,
               what="ev-1's link down in the metrics")
    site.device("ev-1").set_connected(True)
    wait_until(lambda: scraper.value("coordinator_device_link_up", asset="ev-1", kind="charger") == 1,
               what="ev-1's link up again")

    assert scraper.value("coordinator_actor_restarts_total", asset="ev-2", kind="charger") == 0
    site.device("ev-2").crash_actor()
    wait_until(lambda: scraper.value("coordinator_actor_restarts_total", asset="ev-2", kind="charger") == 1,
               what="ev-2's restart counted")
    # the restarted actor's inbox is found again (the scrape asks the supervisor for the new actor first)
    wait_until(lambda: scraper.value("coordinator_actor_inbox_messages", actor="asset", asset="ev-2") is not None,
               what="ev-2's new actor in the inbox depths")
    for actor in ("dispatcher", "supervisor", "events"):
        assert scraper.value("coordinator_actor_inbox_messages", actor=actor, asset="") is not None
    assert scraper.value("coordinator_site_running") == 1


def test_journal_sizes_are_read_at_scrape_time(scraper, tmp_path):
    scraper.post(command("j1", "ev-1", 3))
    scraper.site.wait_for("j1")
    journal = tmp_path / "journal"
    size = scraper.value("coordinator_journal_bytes", stream="commands")
    on_disk = sum(os.stat(p).st_size for p in journal.glob("commands.*"))
    assert size is not None and 0 < size <= on_disk
    assert scraper.value("coordinator_journal_files", stream="commands") >= 1
    assert scraper.value("coordinator_journal_bytes", stream="events") > 0
    assert scraper.value("coordinator_journal_compactions_total", stream="commands") == 0  # none was due


def test_the_last_compaction_is_in_the_metrics(tmp_path):
    # every commit is due for compaction (one byte is "full"): the first command's commit starts one
    site = Site([ChargerSpec("ev-1")], journal_dir=tmp_path / "journal",
                compaction=CompactionPolicy(max_log_bytes=1)).start()
    scraper = Scraper(site)
    try:
        scraper.post(command("c1", "ev-1", 3))
        site.wait_for("c1")
        # c1 is final and nothing else commits: once no compaction runs, the figures stay put
        wait_until(lambda: site.journal_stats().commands.compactions >= 1
                   and not site.journal_stats().commands.compacting, what="a compaction finished")
        stats = site.journal_stats().commands
        v = scraper.value
        assert v("coordinator_journal_compactions_total", stream="commands") == stats.compactions
        assert v("coordinator_journal_last_compaction_timestamp_seconds", stream="commands") == \
            stats.last_compaction_at
        assert v("coordinator_journal_last_compaction_duration_seconds", stream="commands") == \
            stats.last_compaction_s
        assert v("coordinator_journal_last_compaction_bytes", stream="commands", when="before") == \
            stats.last_bytes_before > 0
        assert v("coordinator_journal_last_compaction_bytes", stream="commands", when="after") == \
            stats.last_bytes_after
    finally:
        scraper.close()


def test_the_scrape_is_the_text_format_and_every_documented_metric_is_there(scraper):
    content_type, text = scraper.text()
    assert content_type.startswith("text/plain; version=0.0.4")
    names = {f.name for f in text_string_to_metric_families(text)}
    for name, kind, _, _ in METRICS:
        family = name.removesuffix("_total") if kind == "counter" else name
        assert family in names, name
    assert all(name.startswith("coordinator_") for name in names)


def test_each_site_has_a_registry_of_its_own_not_the_global_one(scraper):
    assert site_metrics(scraper.site) is scraper.component.context.metrics
    other = SiteMetrics(scraper.site)
    assert other.registry is not scraper.component.context.metrics.registry
    assert not any(m.name.startswith("coordinator_") for m in prometheus_client.REGISTRY.collect())


def test_grid_limit_curtailments_are_counted_by_the_event_name(scraper, monkeypatch):
    """EventType.GRID_LIMITED is looked up by name (it is being added); stand in for it when absent."""
    metrics = scraper.component.context.metrics
    grid_type = getattr(EventType, "GRID_LIMITED", None)
    if grid_type is None:
        grid_type = EventType.TELEMETRY
        monkeypatch.setattr(metrics_module, "_grid_limited", lambda: grid_type)
    event = Event(grid_type, datetime.now(timezone.utc), {"asset_id": "ev-1", "value": 22.0, "granted": 11.0})
    metrics._on_event(event)
    metrics._on_event(Event(grid_type, datetime.now(timezone.utc), {}))
    assert scraper.value("coordinator_grid_curtailments_total", kind="charger") == 1
    assert scraper.value("coordinator_grid_curtailments_total", kind="site") == 1
