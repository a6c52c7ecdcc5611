"""The edge link's pure parts: its journal (CloudLog: dedupe, resume, retention, compaction), its queue, the
reconnect backoff, and its options from the site file."""

from __future__ import annotations

import random

import pytest

from actors.edge_link import EdgeLinkOptions
from actors.edge_queue import EdgeQueue, Waiting
from actors.edge_socket import Backoff
from runtime.config.models import CloudConfig
from runtime.core.cloud_log import CloudLog
from runtime.core.errors import ConfigurationError
from runtime.core.journal import Journal

DAY = 24 * 3600.0


def _cmd(cid: str) -> dict:
    return {"command_id": cid, "command_type": "setpoint",
            "target": {"edge_id": "e", "device_id": "bat-1", "channel": "SetActivePower"}, "value": 1.0}


def test_the_log_records_commands_and_acks_and_reads_them_back_in_order(tmp_path):
    path = tmp_path / "cloud.jnl"
    log = CloudLog(path, now=0.0)
    log.receive(1, _cmd("a"), 1.0)
    log.receive(2, _cmd("b"), 2.0)
    log.ack("b", "accepted", 3.0)
    log.ack("a", "executed", 4.0, executed_at="x")
    assert log.ack("a", "failed", 5.0) is None          # nothing after a final ack
    log.duplicate("a", 7, 6.0)
    log.close()
    again = CloudLog(path, now=10.0)
    assert again.last_seq == 7
    assert [x["status"] for x in again.get("a").acks] == ["delivered", "executed"]
    assert again.get("a").seqs == [1, 7] and again.get("a").seq == 7
    assert [e.command_id for e in again.open_entries()] == ["b"]
    # the latest ack of each pending seq, in the order the acks were made
    assert [(e.command_id, ack["status"]) for e, ack in again.pending_acks([7, 2, 99])] == [("b", "accepted"),
                                                                                            ("a", "executed")]
    again.close()


def test_retention_keeps_the_unconfirmed_however_old_and_the_confirmed_for_the_dedupe_window(tmp_path):
    path = tmp_path / "cloud.jnl"
    log = CloudLog(path, now=0.0)
    for seq, cid in enumerate(["confirmed", "unconfirmed", "open"], start=1):
        log.receive(seq, _cmd(cid), 0.0)
    log.ack("confirmed", "executed", 1.0)
    log.ack("unconfirmed", "executed", 1.0)
    assert log.confirm([2, 3], 2.0) == ["confirmed"]       # the router still lacks seq 2's final ack
    log.lease("old-lease", "bat-1", "min_soc", 30.0, ends_at=10 * DAY, now=0.0)
    log.controller("schedule", False, "c", 0.0)
    log.close()
    inside = CloudLog(path, now=DAY - 10)
    assert inside.get("confirmed") is not None               # still inside the window: a replay is a duplicate
    inside.close()
    after = CloudLog(path, now=3 * DAY)
    assert after.get("confirmed") is None
    assert after.get("unconfirmed").final and after.get("open") is not None
    assert after.last_seq == 3 and after.controllers == {"schedule": False}
    assert [lease.command_id for lease in after.leases()] == ["old-lease"]
    after.close()
    kinds = [r["k"] for r in Journal.read(path)]
    assert kinds.count("cmd") == 2 and "meta" in kinds       # compacted at open


def test_the_log_compacts_itself_while_running_once_it_has_doubled(tmp_path):
    log = CloudLog(tmp_path / "cloud.jnl", now=0.0, dedupe_window_s=10, compact_min_records=20)
    for i in range(30):
        log.receive(i + 1, _cmd(f"c{i}"), float(i))
        log.ack(f"c{i}", "executed", float(i))
    log.confirm([], 100.0)
    assert log.prune(100.0) == 30
    assert log.records < 10 and log.last_seq == 30
    log.close()


def test_the_queue_is_bounded_supersedes_per_channel_and_takes_one_per_free_device():
    q = EdgeQueue(2)
    w = lambda cid, dev="bat-1", ch="SetActivePower", dl=None, sup=True: Waiting(cid, dev, ch, dl, sup, None)
    assert q.offer(w("a")) == (True, [])
    ok, gone = q.offer(w("b"))
    assert ok and [x.command_id for x in gone] == ["a"]
    assert q.offer(w("c", sup=False))[0] and len(q) == 2
    assert q.offer(w("d", ch="SetSocTarget")) == (False, [])   # full
    assert q.offer(w("e", dev="ev-1", ch="SetChargePowerLimit", dl=5.0)) == (False, [])
    taken = q.take(lambda dev: False)
    assert [x.command_id for x in taken] == ["b"]              # one per device, in arrival order
    q.offer(w("f", dev="ev-1", dl=5.0))
    assert q.next_deadline() == 5.0
    assert [x.command_id for x in q.expire(5.0)] == ["f"]
    assert [x.command_id for x in q.take(lambda dev: dev == "bat-1")] == []
    assert [x.command_id for x in q.supersede("bat-1", "SetActivePower")] == ["c"] and len(q) == 0


def test_backoff_is_full_jitter_up_to_a_capped_exponential():
    backoff = Backoff(0.5, 8.0, random.Random(1))
    assert [backoff.ceiling(n) for n in range(7)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    delays = [backoff.delay(n) for n in range(200) for _ in range(5)]
    assert all(0 <= d <= 8.0 for d in delays)
    assert min(delays) < 0.5 < max(delays)                     # spread over the whole range, not a fixed step
    assert Backoff(0.5, 8.0, random.Random(1)).delay(3) == Backoff(0.5, 8.0, random.Random(1)).delay(3)
    with pytest.raises(ValueError):
        Backoff(0, 1)


def test_the_site_files_cloud_section_makes_the_edge_link_options():
    config = CloudConfig(url="wss://router.example/edge", edge_id="site1_edge_prod", credential="t0ken",
                         queue_size=5, reconnect_min_s=0.5, reconnect_max_s=30.0, telemetry_interval_s=5.0)
    options = EdgeLinkOptions.of(config)
    assert (options.url, options.edge_id, options.queue_size, options.reconnect_max_s) == (
        "wss://router.example/edge", "site1_edge_prod", 5, 30.0)
    assert options.dedupe_window_s == DAY
    with pytest.raises(ValueError, match="reconnect_max_s"):
        CloudConfig(url="ws://r", edge_id="e", credential="c", reconnect_min_s=5.0, reconnect_max_s=1.0)
    with pytest.raises(ConfigurationError, match="cloud.url"):
        EdgeLinkOptions.of({"url": "http://r", "edge_id": "e", "credential": "c"})
    with pytest.raises(ConfigurationError, match="unknown option"):
        EdgeLinkOptions.of({"url": "ws://r", "edge_id": "e", "credential": "c", "queue": 3})
