"""A site's journals over time: bounded by compaction, visible through journal_stats(), idempotent across
restarts within the dedupe window, and safe when the process is killed at any moment (kill -9)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest

from runtime import ChargerSpec, Command, CommandStatus as S, CommandType as T, Site, VirtualClock
from runtime.core.command_table import CommandTable
from runtime.core.journal_stats import JournalStats
from runtime.core.recovery import recover_files, restore_table
from runtime.core.retention import CompactionPolicy, EventRetention
from runtime.core.segments import StreamDir

from .asyncsupport import wait_until
from .conftest import T0

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("no_leaks")]
ROOT = Path(__file__).resolve().parents[1]
DAY = 86400.0
#: compacts every ~20 kB; in a thread (the default child process costs a Python start-up, ~0.2 s, per
#: compaction, and on a virtual clock each one is waited for; the child itself: tests/test_journal_streams.py)
EAGER = CompactionPolicy(max_log_bytes=20_000, interval_s=3600, min_bytes=0, isolation="thread")


def site(directory: Path, clock: VirtualClock, **kw) -> Site:
    return Site([ChargerSpec(f"ev-{i}", max_kw=22.0) for i in range(3)], clock=clock, journal_dir=directory,
                fsync="never", retention_s=600, **kw)


def day_schedule(start, periods: int = 288) -> pd.DataFrame:
    index = pd.date_range(start, periods=periods, freq="5min")
    return pd.DataFrame({f"ev_{i}_kw": [float((k * (i + 3)) % 11) for k in range(periods)] for i in range(3)},
                        index=index)


def run_days(s: Site, days: int, first_day: int = 0) -> None:
    for day in range(first_day, first_day + days):
        s.submit_schedule(day_schedule(T0 + timedelta(days=day)), asset_map={f"ev_{i}": f"ev-{i}" for i in range(3)})
        s.submit(Command(f"op-{day}", "ev-0", T.SET_POWER_LIMIT, 11.0, T0 + timedelta(days=day, hours=1)))
        for _ in range(24):
            s.advance(3600)
        wait_until(lambda: not s.journal_stats().commands.compacting, what="the compaction to finish")


def test_the_journal_stays_bounded_and_its_figures_are_visible(tmp_path):
    clock = VirtualClock(T0)
    sizes = []
    with site(tmp_path, clock, compaction=EAGER) as s:
        for day in range(6):
            run_days(s, 1, day)
            sizes.append(s.journal_stats().commands.bytes)
        stats = s.journal_stats()
    assert isinstance(stats, JournalStats) and stats.directory == str(tmp_path)
    c = stats.commands
    assert c.compactions > 6 and c.last_compaction_at is not None and c.last_compaction_s is not None
    assert c.last_bytes_before is not None and c.last_bytes_after is not None and c.last_error is None
    assert c.appended_bytes > 4 * c.bytes and c.files <= 3
    assert max(sizes[1:]) < 2 * min(sizes[1:])          # flat after the first day, not growing with uptime
    assert stats.bytes == c.bytes + stats.events.bytes and stats.as_dict()["commands"]["name"] == "commands"
    assert site(tmp_path, clock).journal_stats() is None     # not started


def test_a_restart_after_compaction_knows_every_final_id_and_runs_what_was_pending(tmp_path):
    clock = VirtualClock(T0)
    with site(tmp_path, clock, compaction=EAGER) as s:
        run_days(s, 2)
        s.submit(Command("later", "ev-1", T.SET_CHARGE_RATE, 5.0, T0 + timedelta(days=2, hours=1)))
    with site(tmp_path, clock, compaction=EAGER) as s:
        assert s.recovered >= 1 and s.command("later").status is S.PENDING
        assert s.submit_many([Command("op-0", "ev-0", T.SET_POWER_LIMIT, 11.0, T0 + timedelta(hours=1))]) == ()
        s.advance(3600 + 60)
        assert s.command("later").status is S.COMPLETED
        assert [a.command_id for a in s.device("ev-0").applied if a.command_id.startswith("op-")] == []


def test_a_duplicate_beyond_the_dedupe_window_is_expired_at_once_after_restarts(tmp_path):
    clock = VirtualClock(T0)
    cmd = Command("once", "ev-1", T.SET_CHARGE_RATE, 6.0, T0)
    with site(tmp_path, clock, compaction=EAGER, dedupe_window_s=DAY) as s:
        s.submit(cmd)
        s.settle()
        assert s.command("once").status is S.COMPLETED
        for _ in range(3):
            s.advance(DAY)
            s.submit(Command(f"tick-{clock.time()}", "ev-2", T.SET_CHARGE_RATE, 1.0, clock.now()))  # journal moves
    with site(tmp_path, clock, compaction=EAGER, dedupe_window_s=DAY) as s:
        got = s.submit(cmd)                         # forgotten by now: never applied as new
        assert got.status is S.EXPIRED and "dedupe window" in got.last_error
        assert s.device("ev-1").applied == []


def test_event_retention_keeps_the_event_journal_bounded(tmp_path):
    clock = VirtualClock(T0)
    retention = EventRetention(max_age_s=DAY, segment_s=DAY / 2)
    with site(tmp_path, clock, event_retention=retention) as s:
        for hour in range(24 * 6):
            s.device(f"ev-{hour % 3}").report_telemetry(power_kw=float(hour % 7))
            s.advance(3600)
        stats = s.journal_stats().events
    assert stats.compactions >= 6 and stats.bytes < stats.appended_bytes / 2
    sealed = [seg for seg in StreamDir(tmp_path, "events").scan()[0] if seg.kind == "log"]
    assert len(sealed) <= 5


# ---- kill -9 at random moments, compaction running all the time -----------------------------------

CHILD = r"""
import sys, threading
from datetime import datetime, timedelta, timezone
from runtime import ChargerSpec, Command, CommandType, EventType, Site, VirtualClock
from runtime.core.retention import CompactionPolicy
import pandas as pd
directory, start, rnd = sys.argv[1], float(sys.argv[2]), sys.argv[3]
clock = VirtualClock(datetime.fromtimestamp(start, timezone.utc))
lock = threading.Lock()
log = open(f"{directory}/../events-{rnd}.log", "a", buffering=1)
def on_event(event):
    p = event.payload
    with lock:
        if event.type is EventType.COMMAND_DISPATCHED:
            log.write(f"sent {p['command_id']}\n")
        elif event.type is EventType.COMMAND_COMPLETED:
            log.write(f"done {p['command_id']}\n")
site = Site([ChargerSpec(f"ev-{i}", max_kw=22.0) for i in range(3)], clock=clock, journal_dir=directory,
            fsync="never", retention_s=120, compaction=CompactionPolicy(max_log_bytes=3000, min_bytes=0))
site.start()
site.events.subscribe(None, on_event)
k = 0
while True:
    now = clock.now()
    index = pd.date_range(now, periods=4, freq="2min")
    df = pd.DataFrame({f"ev_{i}_kw": [float((k + j + i) % 9) for j in range(4)] for i in range(3)}, index=index)
    batch_id = f"{rnd}-b{k}"
    site.submit_schedule(df, asset_map={f"ev_{i}": f"ev-{i}" for i in range(3)}, batch_id=batch_id)
    cid = f"{rnd}-c{k}"
    site.submit_many([Command(cid, f"ev-{k % 3}", CommandType.SET_POWER_LIMIT, 7.0, now + timedelta(seconds=30)),
                      Command(f"{rnd}-c{max(0, k - 1)}", f"ev-{k % 3}", CommandType.SET_POWER_LIMIT, 7.0, now)])
    print("accepted", batch_id, len(df) * 3, cid, clock.time(), flush=True)
    site.advance(120)
    k += 1
"""


def test_kill_9_at_random_moments_loses_no_command_and_applies_nothing_twice(tmp_path):
    directory = tmp_path / "journal"
    directory.mkdir()
    rng = random.Random(os.getpid())
    accepted_batches: dict[str, int] = {}
    accepted: set[str] = set()
    start = T0.timestamp()
    for rnd in range(3):
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(directory), str(start), f"r{rnd}"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        try:
            kill_after = rng.randint(4, 25)
            for n, line in enumerate(child.stdout, 1):   # bounded: the child prints a line per step
                _, batch_id, rows, cid, t = line.split()
                accepted_batches[batch_id] = int(rows)
                accepted.add(cid)
                start = float(t) + 120
                if n >= kill_after:
                    break
            child.send_signal(signal.SIGKILL)             # wherever it is: a commit, a seal, a compaction
            child.wait(30)
        finally:
            if child.poll() is None:
                child.kill()
            child.communicate()
        assert child.returncode == -signal.SIGKILL, child.stderr

    # nothing lost: every accepted command and schedule row is known to the journal
    live, _, _ = StreamDir(directory, "commands").scan()
    assert len(accepted) >= 12 and any(seg.kind == "snap" for seg in live)   # it ran, and compacted
    table = CommandTable()
    restore_table(table, recover_files([s.path for s in live]), start)
    rows = {f"{b}-{i}" for b, n in accepted_batches.items() for i in range(n)}
    unknown = {cid for cid in accepted | rows if not table._known(cid)}
    assert not unknown, sorted(unknown)[:10]

    # nothing applied twice: once completed (journaled before the event was written), never sent again
    def lines(rnd: str) -> list[tuple[str, str]]:
        path = tmp_path / f"events-{rnd}.log"
        return [tuple(line.split()) for line in path.read_text().splitlines()] if path.exists() else []
    completed: set[str] = set()
    for rnd in ("r0", "r1", "r2"):
        for kind, cid in lines(rnd):
            if kind == "sent":
                assert cid not in completed, f"{cid} sent again in {rnd} after it completed"
        completed |= {cid for kind, cid in lines(rnd) if kind == "done"}
    clock = VirtualClock(pd.Timestamp(start, unit="s", tz="UTC").to_pydatetime())
    resent = []
    with site(directory, clock) as s:
        s.events.subscribe(None, lambda e: resent.append(e.payload.get("command_id"))
                           if e.type.value == "COMMAND_DISPATCHED" else None)
        s.advance(600)
        s.settle()
        finals = {cid: s.command(cid) for cid in list(accepted)[:20]}
    assert not set(resent) & completed
    assert all(c is None or c.is_final for c in finals.values()), finals   # None: ended, pruned, still known


def test_the_site_file_sets_the_windows_and_the_compaction(tmp_path):
    from runtime.config import load_site_config
    from runtime.config.build import site_options
    path = tmp_path / "site.toml"
    path.write_text('[[assets]]\nid = "ev-1"\nkind = "charger"\nmax_kw = 22\n\n'
                    '[journal]\ndir = "j"\ndedupe_window_s = 172800\ncompact_interval_s = 3600\n'
                    'events_max_age_s = 86400\n')
    options = site_options(load_site_config(path))
    assert options["dedupe_window_s"] == 172800 and options["compaction"].interval_s == 3600
    assert options["event_retention"].max_age_s == 86400 and options["journal_dir"] == str(tmp_path / "j")
    Site([ChargerSpec("ev-1")], clock=VirtualClock(T0), **{**options, "ocpp": None})  # accepted as they are
