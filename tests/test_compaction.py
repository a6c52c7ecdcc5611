"""Compaction of the command journal keeps exactly what recovery needs, and survives a crash at any point."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from runtime.core.command_table import CommandTable
from runtime.core.commands import CommandStatus
from runtime.core.compaction import STEPS, compact_state, compact_stream
from runtime.core.journal import Journal
from runtime.core.records import COMMAND_KINDS
from runtime.core.recovery import RecoveredState, recover_files, recover_records
from runtime.core.segments import StreamDir

from .journal_history import ASSETS, RETENTION, WINDOW, History, future, restored, universe

ROOT = Path(__file__).resolve().parents[1]

# ---- the property: random histories, compacted at random points --------------------------------

OPS = ["cmd", "cmd", "batch", "tick", "tick", "tick", "answer", "answer", "answer", "avail", "prune", "compact"]
AT = [-2 * WINDOW, -WINDOW / 2, 0.0, 30.0, 300.0, 2000.0]
TICKS = [0.0, 1.0, 30.0, 300.0, 900.0, 3600.0, 1.5 * WINDOW]
ANSWERS = ["ack", "complete", "complete", "fail", "fatal", "reject", "timeout", "hold"]


def play(data: st.DataObject, history: History, steps: int) -> tuple[list[dict], list[dict], list[float]]:
    """Run ``steps`` random operations; returns (newest snapshot records, records after it, compaction times)."""
    snapshot: list[dict] = []
    tail: list[dict] = []
    compacted_at: list[float] = []
    draw = data.draw
    for _ in range(steps):
        op = draw(st.sampled_from(OPS))
        if op == "cmd":
            cmds = [history.command(f"c{draw(st.integers(0, 15))}", draw(st.sampled_from(ASSETS)),
                                    draw(st.sampled_from(AT)), value=float(draw(st.integers(0, 9))),
                                    setpoint=draw(st.booleans()),
                                    expires_s=draw(st.sampled_from([None, None, 60.0, 5000.0])),
                                    priority=draw(st.integers(0, 1)))
                    for _ in range(draw(st.integers(1, 3)))]
            tail += history.submit(cmds)
        elif op == "batch":
            n = draw(st.integers(1, 6))
            times = [-1.2 * WINDOW, -60.0, 0.0, 60.0, 300.0, 900.0, 1800.0]
            offsets = sorted(draw(st.lists(st.sampled_from(times), min_size=n, max_size=n)))
            assets = draw(st.lists(st.integers(0, len(ASSETS) - 1), min_size=n, max_size=n))
            values = [float(v) for v in draw(st.lists(st.integers(0, 9), min_size=n, max_size=n))]
            batch = history.batch(f"b{draw(st.integers(0, 6))}", offsets, assets, values)
            tail += history.submit_batch(batch, replace=draw(st.booleans()))
        elif op == "tick":
            tail += history.tick(draw(st.sampled_from(TICKS)))
        elif op == "answer":
            tail += history.answer(draw(st.integers(0, 5)), draw(st.sampled_from(ANSWERS)))
        elif op == "avail":
            tail += history.availability(draw(st.sampled_from(ASSETS)), draw(st.booleans()))
        elif op == "prune":
            history.prune()
        else:
            state = recover_records(snapshot + tail)
            snapshot, _ = compact_state(state, history.now, RETENTION, WINDOW)
            tail = []
            compacted_at.append(history.now)
    return snapshot, tail, compacted_at


def assert_same_recovery(history: History, full: RecoveredState, compacted: RecoveredState,
                         compacted_at: list[float]) -> None:
    """Recovering the compacted journal gives the table recovering the whole journal gives: the same
    commands that are not final (and the same future), and every final one either as it was, or known
    by id, or so old that a duplicate of it is EXPIRED at once."""
    now = history.now
    a, b = restored(full, now), restored(compacted, now)
    assert {c.command_id: c for c in a.non_final()} == {c.command_id: c for c in b.non_final()}
    non_final = [s.value for s in CommandStatus if not s.is_final]
    assert {s: a.counts()[s] for s in non_final} == {s: b.counts()[s] for s in non_final}
    for cid in universe(history):
        was, now_is = a.get(cid), b.get(cid)
        if was is None or not was.is_final:
            assert now_is == was, cid
        else:
            assert now_is is None or now_is == was, cid
    # every final command the compacted journal still holds in full ended within the retention
    if compacted_at:
        for cid, ended in compacted.final_at.items():
            assert ended >= compacted_at[-1] - RETENTION - 1, cid
    assert future(a, now) == future(b, now)
    assert_duplicates_are_never_applied(history, compacted, now)


def assert_duplicates_are_never_applied(history: History, state: RecoveredState, now: float) -> None:
    """Submitting again every command and every batch that ended: each is a no-op, or EXPIRED at once."""
    table = restored(state, now)
    final = {c.command_id for c in restored(recover_records(history.records), now).commands() if c.is_final}
    dups = [history.commands[cid] for cid in history.commands if cid in final]
    dup_ids = {c.command_id for c in dups}
    changes = table.add(dups, now)
    for batch in history.batches.values():
        rows = {batch.command_id(i) for i in range(len(batch))}
        if rows <= final and not table.has_batch(batch.batch_id):
            changes += table.add_batch(batch, now)
            dup_ids |= rows
    changes += table.sweep(now)
    for cid in {c.command.command_id for c in changes if c.previous is None} & dup_ids:
        assert table.get(cid).status is CommandStatus.EXPIRED, cid   # known again only if it was forgotten
    sent = {c.command_id for c in table.due(now)}
    assert not sent & dup_ids, sent & dup_ids


@settings(max_examples=int(os.environ.get("COMPACTION_EXAMPLES", "150")), deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_compaction_keeps_exactly_the_recoverable_state(data):
    history = History()
    snapshot, tail, compacted_at = play(data, history, data.draw(st.integers(3, 40)))
    full = recover_records(history.records)
    compacted = recover_records(snapshot + tail)
    assert_same_recovery(history, full, compacted, compacted_at)
    # compacting once more, at the end, changes nothing either
    again, _ = compact_state(compacted, history.now, RETENTION, WINDOW)
    assert_same_recovery(history, full, recover_records(again), compacted_at + [history.now])


def test_a_long_quiet_history_compacts_to_what_is_live():
    """Days of commands that all completed compact to a handful of known ids, whatever the length."""
    sizes = []
    for days in (2, 8):
        history = History()
        for i in range(days * 24):
            history.submit([history.command(f"c{i}", ASSETS[i % 3], 0.0)])
            history.answer(0, "complete")
            history.tick(3600.0)
        history.submit([history.command("live", "ev-1", 7200.0)])
        records, summary = compact_state(recover_records(history.records), history.now, RETENTION, WINDOW)
        assert summary.live_commands == 1 and summary.known_ids <= WINDOW / 3600 + 1
        sizes.append(len(records))
    assert sizes[0] == sizes[1]


# ---- the procedure on disk: a crash at each step ---------------------------------------------------

CRASH = r"""
import os, sys
from runtime.core.compaction import compact_stream
from runtime.core.segments import StreamDir
directory, upto, now, crash_at = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
seen = []
def step(name):
    seen.append(name)
    if name == crash_at and seen.count(name) == 1:
        os._exit(137)            # as kill -9 would: no cleanup, no flush of anything
compact_stream(StreamDir(directory, "commands"), upto, now, retention_s=600.0, dedupe_window_s=3000.0,
               step=step)
print("finished", flush=True)
"""


def write_history(directory: Path) -> tuple[History, int]:
    """A history written as the site writes it (sealed logs, then an active log); returns it and the last
    sealed seq."""
    from runtime.core.segments import SegmentedJournal
    history = History()
    journal = SegmentedJournal(directory, "commands", "never", kinds=COMMAND_KINDS, now=history.now)
    seq = 0
    for i in range(12):
        journal.append_many(history.submit([history.command(f"c{i}", ASSETS[i % 3], 60.0 * (i % 4))]))
        journal.append_many(history.submit_batch(history.batch(f"b{i % 4}", [0.0, 300.0, 1200.0], [0, 1, 2],
                                                               [1.0, 2.0, 3.0])))
        journal.append_many(history.answer(i, "complete"))
        journal.append_many(history.tick(700.0))
        if i % 4 == 3:
            seq = journal.rotate(history.now)
    journal.append_many(history.submit([history.command("last", "ev-1", 900.0)]))
    journal.close()
    return history, seq


@pytest.mark.parametrize("crash_at", STEPS)
def test_a_crash_at_any_step_of_a_compaction_loses_nothing_and_applies_nothing_twice(tmp_path, crash_at):
    history, seq = write_history(tmp_path)
    first = subprocess.run([sys.executable, "-c", CRASH, str(tmp_path), str(seq), str(history.now), crash_at],
                           cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert first.returncode == 137 and "finished" not in first.stdout, first.stderr
    stream = StreamDir(tmp_path, "commands")
    live, _, _ = stream.scan()
    after_crash = recover_files([s.path for s in live])
    full = recover_records(history.records)
    assert_same_recovery(history, full, after_crash, [])   # the old files, or the new snapshot: either is right
    # the next compaction (the site runs one at start-up) cleans up and gives the same state again
    compact_stream(stream, seq, history.now, retention_s=RETENTION, dedupe_window_s=WINDOW)
    live, covered, temps = stream.scan()
    assert not covered and not temps
    assert [s.kind for s in live] == ["snap", "active"]
    assert_same_recovery(history, full, recover_files([s.path for s in live]), [history.now])


def test_compaction_of_an_unchanged_journal_is_idempotent_on_disk(tmp_path):
    history, seq = write_history(tmp_path)
    stream = StreamDir(tmp_path, "commands")
    compact_stream(stream, seq, history.now, retention_s=RETENTION, dedupe_window_s=WINDOW)
    once = Path(stream.path(seq, "snap")).read_bytes()
    compact_stream(stream, seq, history.now, retention_s=RETENTION, dedupe_window_s=WINDOW)
    assert Path(stream.path(seq, "snap")).read_bytes() == once
    assert Journal.read_header(stream.path(seq, "snap")).meta["snap"] == seq


def test_a_failing_compaction_leaves_the_journal_as_it_was(tmp_path, monkeypatch):
    history, seq = write_history(tmp_path)
    before = sorted(os.listdir(tmp_path))

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(Journal, "compact", disk_full)
    with pytest.raises(OSError):
        compact_stream(StreamDir(tmp_path, "commands"), seq, history.now, retention_s=RETENTION,
                       dedupe_window_s=WINDOW)
    assert sorted(os.listdir(tmp_path)) == before


def test_tables_restored_from_either_journal_accept_the_same_new_commands(tmp_path):
    """After a compaction, new commands, duplicates within the window and new batches behave the same."""
    history, seq = write_history(tmp_path)
    stream = StreamDir(tmp_path, "commands")
    compact_stream(stream, seq, history.now, retention_s=RETENTION, dedupe_window_s=WINDOW)
    live, _, _ = stream.scan()
    tables: list[CommandTable] = [restored(recover_records(history.records), history.now),
                                  restored(recover_files([s.path for s in live]), history.now)]
    outcomes = []
    for table in tables:
        fresh = history.command("new", "bat-1", 0.0)
        dup = history.commands["c11"]
        created = [c.command.command_id for c in table.add([fresh, dup], history.now)]
        table.add_batch(history.batch("b-new", [0.0, 60.0], [0, 1], [1.0, 2.0]), history.now)
        table.sweep(history.now + 60)
        outcomes.append((created, [c.command_id for c in table.due(history.now + 60)]))
    assert outcomes[0] == outcomes[1] and outcomes[0][0] == ["new"]
    assert {"b-new-0", "b-new-1", "new"} <= set(outcomes[0][1])


def test_a_batch_reusing_a_forgotten_id_with_replace_supersedes_after_recovery_as_it_did_live():
    """Found by the property test: a batch id forgotten past the window and reused by a replacing batch.
    Recovery of the whole journal dropped the new batch's supersession with the old batch's, so a row it
    had superseded came back PENDING (the compacted journal was right)."""
    h = History()
    h.submit_batch(h.batch("b1", [0.0], [0], [1.0]), replace=False)   # ev-1 at once: sent and completed
    h.answer(0, "complete")
    h.tick(1.5 * WINDOW)
    h.prune()
    h.tick(1.5 * WINDOW)
    h.prune()
    assert not h.table.has_batch("b1")                          # forgotten: the id may be reused
    h.submit_batch(h.batch("b2", [900.0], [0], [2.0]), replace=False)   # ev-1, later: PENDING
    h.submit_batch(h.batch("b1", [0.0, 600.0], [0, 0], [3.0, 3.0]), replace=True)  # a new b1 replaces it
    assert h.table.get("b2-0").status is CommandStatus.SUPERSEDED
    recovered = restored(recover_records(h.records), h.now)
    assert recovered.get("b2-0").status is CommandStatus.SUPERSEDED
    assert recovered.get("b1-1").status is CommandStatus.PENDING
