"""The journal streams of a site: the command log (recovery, compaction triggers, stats) and the event log
(segments and retention), on disk, with a virtual clock."""

from __future__ import annotations

import logging
import os
import struct
import zlib
from pathlib import Path

import msgpack
import pytest

from runtime.core.clock import VirtualClock
from runtime.core.command_log import CommandLog
from runtime.core.command_table import CommandTable
from runtime.core.commands import CommandStatus
from runtime.core.errors import ConfigurationError
from runtime.core.event_log import EventLog
from runtime.core.journal import MAGIC_V1, Journal
from runtime.core.retention import CompactionPolicy, EventRetention
from runtime.core.segments import StreamDir

from .asyncsupport import wait_until
from .conftest import T0
from .journal_history import History

DAY = 86400.0


def frame(rec: dict) -> bytes:
    payload = msgpack.packb(rec, use_bin_type=True)
    return struct.pack("<II", len(payload), zlib.crc32(payload)) + payload


def open_log(directory: Path, clock: VirtualClock, **policy) -> tuple[CommandLog, CommandTable]:
    table = CommandTable(dedupe_window_s=7 * DAY)
    log = CommandLog(directory, table, clock, fsync="never", policy=CompactionPolicy(**policy), retention_s=600.0)
    return log, table


def drive(log: CommandLog, history: History, clock: VirtualClock, steps: int, prefix: str = "c") -> None:
    """Commands through the log as the dispatcher commits them, the history's table standing in for its own."""
    for i in range(steps):
        history.now = clock.time()
        cmd = history.command(f"{prefix}{i}", "ev-1", 0.0)
        changes = history.table.add([cmd], history.now) + history._pump()
        log.commit([], changes)
        log.commit([], history.table.complete(cmd.command_id, history.now))
        assert log.wait_idle(10)   # one compaction at a time: let a started one finish, as real time would
        clock.advance(60)


def test_the_log_recovers_into_the_table_and_appends_to_commands_jnl(tmp_path):
    clock = VirtualClock(T0)
    log, _ = open_log(tmp_path, clock, at_startup=False)
    history = History()
    history.table = CommandTable(dedupe_window_s=7 * DAY)
    drive(log, history, clock, 3)
    log.close()
    assert sorted(os.listdir(tmp_path)) == ["commands.jnl"]
    log, table = open_log(tmp_path, clock, at_startup=False)
    assert {table.get(f"c{i}").status for i in range(3)} == {CommandStatus.COMPLETED}
    assert log.stats().recovery_s is not None
    log.close()


def test_a_large_enough_journal_is_compacted_at_start_up_in_the_background(tmp_path, caplog):
    clock = VirtualClock(T0)
    log, _ = open_log(tmp_path, clock, at_startup=False)
    history = History()
    history.table = CommandTable(dedupe_window_s=7 * DAY)
    drive(log, history, clock, 50)
    log.close()
    clock.advance(DAY)
    with caplog.at_level(logging.INFO, logger="runtime.core.compaction"):
        log, table = open_log(tmp_path, clock, min_bytes=0)
        log.close()                                    # waits for the compaction
    stats = log.stats()
    assert stats.compactions == 1 and stats.last_compaction_at == clock.time() and stats.last_error is None
    assert stats.last_bytes_after < stats.last_bytes_before and stats.last_compaction_s >= 0
    assert sorted(os.listdir(tmp_path)) == ["commands.00000001.snap", "commands.jnl"]
    assert any("compacted" in r.getMessage() and "bytes" in r.getMessage() for r in caplog.records)
    log, table = open_log(tmp_path, clock, at_startup=False)
    assert table.add([history.command("c7", "ev-1", 0.0)], clock.time()) == []   # still known: no-op
    log.close()


def test_the_log_seals_and_compacts_while_running_when_the_file_grows(tmp_path):
    clock = VirtualClock(T0)
    log, _ = open_log(tmp_path, clock, at_startup=False, max_log_bytes=2000)
    history = History()
    history.table = CommandTable(dedupe_window_s=7 * DAY)
    drive(log, history, clock, 200)
    log.close()
    stats = log.stats()
    assert stats.compactions >= 5 and stats.appended_bytes > 3 * stats.bytes   # the ids stay: 7 days
    live, _, temps = StreamDir(tmp_path, "commands").scan()
    assert not temps and len(live) <= 3
    log, table = open_log(tmp_path, clock, at_startup=False)
    assert all(table.add([history.command(f"c{i}", "ev-1", 0.0)], clock.time()) == [] for i in range(200))
    log.close()


def test_the_log_compacts_on_a_schedule_too(tmp_path):
    clock = VirtualClock(T0)
    log, _ = open_log(tmp_path, clock, at_startup=False, interval_s=3600, min_bytes=0)
    history = History()
    history.table = CommandTable(dedupe_window_s=7 * DAY)
    drive(log, history, clock, 130)     # 130 minutes
    log.close()
    assert log.stats().compactions == 2


def test_a_version_1_commands_jnl_is_sealed_read_and_migrated(tmp_path):
    v1 = {"id": "old", "asset": "ev-1", "type": "SET_CHARGE_RATE", "value": 7.0, "at": T0.timestamp() + 600,
          "status": "PENDING", "attempts": 0, "priority": 0, "exp": None, "created": T0.timestamp(), "err": None,
          "src": "api"}
    (tmp_path / "commands.jnl").write_bytes(MAGIC_V1 + frame({"k": "cmd", "c": v1}))
    clock = VirtualClock(T0)
    log, table = open_log(tmp_path, clock, min_bytes=0)
    log.close()
    assert table.get("old").status is CommandStatus.PENDING
    assert sorted(os.listdir(tmp_path)) == ["commands.00000001.snap", "commands.jnl"]
    assert Journal.read_header(tmp_path / "commands.jnl").version == 2
    log, table = open_log(tmp_path, clock, at_startup=False)
    assert table.get("old").status is CommandStatus.PENDING
    log.close()


def test_a_failed_compaction_is_logged_reported_and_leaves_the_journal_valid(tmp_path, monkeypatch, caplog):
    clock = VirtualClock(T0)
    log, _ = open_log(tmp_path, clock, at_startup=False, isolation="thread")
    history = History()
    history.table = CommandTable(dedupe_window_s=7 * DAY)
    drive(log, history, clock, 5)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(Journal, "compact", disk_full)
    with caplog.at_level(logging.ERROR):
        assert log.compact_now() is None
    log.close()
    assert "No space left" in log.stats().last_error and "compaction failed" in caplog.text
    monkeypatch.undo()
    log, table = open_log(tmp_path, clock, at_startup=False)
    assert table.get("c4").status is CommandStatus.COMPLETED
    log.close()


def _child_hook(folder: Path, monkeypatch, body: str) -> None:
    """Run ``body`` at the start of every Python child (a sitecustomize on the children's PYTHONPATH)."""
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(body)
    monkeypatch.setenv("PYTHONPATH", str(folder))


def test_a_compaction_runs_in_a_child_process_by_default_and_its_failure_is_reported(tmp_path, monkeypatch,
                                                                                       caplog):
    journal = tmp_path / "journal"
    journal.mkdir()
    clock = VirtualClock(T0)
    log, _ = open_log(journal, clock, at_startup=False)
    assert log.policy.isolation == "process"
    history = History()
    history.table = CommandTable(dedupe_window_s=7 * DAY)
    drive(log, history, clock, 5)
    _child_hook(tmp_path / "hook", monkeypatch, "import runtime.core.journal as j\n"
                "def full(*a, **k):\n    raise OSError(28, 'No space left on device')\n"
                "j.Journal.compact = staticmethod(full)\n")
    with caplog.at_level(logging.ERROR):
        assert log.compact_now() is None          # the child failed: its disk was full
    assert "status 1" in log.stats().last_error and "No space left" in log.stats().last_error
    assert "compaction failed" in caplog.text
    monkeypatch.delenv("PYTHONPATH")
    result = log.compact_now()                    # the next one, in a healthy child, succeeds
    assert result is not None and result.summary.recent_final == 5 and log.stats().last_error is None
    log.close()
    assert [n for n in os.listdir(journal) if n.endswith(".snap")]
    log, table = open_log(journal, clock, at_startup=False)
    assert table.get("c4").status is CommandStatus.COMPLETED
    log.close()


def test_a_compaction_child_still_running_at_close_is_killed_and_the_journal_stays_valid(tmp_path, monkeypatch):
    journal = tmp_path / "journal"
    journal.mkdir()
    clock = VirtualClock(T0)
    log, _ = open_log(journal, clock, at_startup=False)
    log._close_wait_s = 0.2
    history = History()
    history.table = CommandTable(dedupe_window_s=7 * DAY)
    drive(log, history, clock, 5)
    started = tmp_path / "child-started"
    _child_hook(tmp_path / "hook", monkeypatch, f"import pathlib, time\npathlib.Path({str(started)!r}).touch()\n"
                "time.sleep(60)\n")
    log.compact_now(wait=False)
    wait_until(started.exists, what="the compaction child to start")
    log.close()                                   # waits 0.2 s, then kills the child
    assert not log.compacting and log.stats().last_error == "abandoned at shutdown"
    assert not [n for n in os.listdir(journal) if n.endswith(".snap")]
    monkeypatch.delenv("PYTHONPATH")
    log, table = open_log(journal, clock, at_startup=False)
    assert table.get("c4").status is CommandStatus.COMPLETED
    log.close()


def test_the_isolation_must_be_process_or_thread():
    with pytest.raises(ConfigurationError, match="isolation: must be 'process' or 'thread', got 'fork'"):
        CompactionPolicy(isolation="fork")


# ---- the event log ------------------------------------------------------------------------------

def events(log: EventLog, n: int, clock: VirtualClock, every_s: float) -> None:
    for i in range(n):
        log.append_many([{"k": "ev", "e": {"type": "TELEMETRY", "ts": clock.time(), "payload": {"kw": float(i)}}}])
        log.sync()
        clock.advance(every_s)


def test_old_event_segments_are_deleted_by_age(tmp_path):
    clock = VirtualClock(T0)
    log = EventLog(tmp_path, clock, fsync="never", retention=EventRetention(max_age_s=3 * DAY, segment_s=DAY))
    events(log, 24 * 10, clock, 3600)          # ten days, one event an hour
    log.close()
    sealed = [s for s in StreamDir(tmp_path, "events").scan()[0] if s.kind == "log"]
    assert 3 <= len(sealed) <= 4
    first = Journal.read(sealed[0].path)
    assert next(iter(first))["e"]["ts"] >= clock.time() - 5 * DAY
    stats = log.stats()
    assert stats.compactions >= 4 and stats.last_bytes_after < stats.last_bytes_before


def test_event_segments_are_deleted_by_size_and_a_pinned_one_is_kept(tmp_path):
    clock = VirtualClock(T0)
    log = EventLog(tmp_path, clock, fsync="never",
                   retention=EventRetention(max_age_s=None, max_bytes=20_000, segment_bytes=4_000))
    events(log, 1000, clock, 1)
    log.close()
    assert StreamDir(tmp_path, "events").total_bytes() <= 20_000 + 4_200
    pinned: list[str] = []
    keep = EventRetention(max_age_s=None, max_bytes=20_000, segment_bytes=4_000,
                          pin=lambda seg: seg.path == pinned[0])
    first = [s for s in StreamDir(tmp_path, "events").scan()[0] if s.kind == "log"][0]
    pinned.append(first.path)
    log = EventLog(tmp_path, clock, fsync="never", retention=keep)
    events(log, 1000, clock, 1)
    log.close()
    assert os.path.exists(first.path)                  # however old and however big the stream got


def test_a_version_1_events_jnl_becomes_the_oldest_segment(tmp_path):
    (tmp_path / "events.jnl").write_bytes(MAGIC_V1 + frame({"k": "ev", "e": {}}))
    clock = VirtualClock(T0)
    log = EventLog(tmp_path, clock, fsync="never", retention=EventRetention(max_age_s=DAY, segment_s=DAY))
    assert os.path.exists(tmp_path / "events.00000001.jnl")
    events(log, 50, clock, 3600)
    log.close()
    assert not os.path.exists(tmp_path / "events.00000001.jnl")


def test_retention_settings_are_checked():
    with pytest.raises(ConfigurationError, match="max_age_s"):
        EventRetention(max_age_s=-1)
    with pytest.raises(ConfigurationError, match="max_log_bytes"):
        CompactionPolicy(max_log_bytes=0)
