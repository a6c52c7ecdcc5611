"""Idempotence over months: how long a command id stays known, and what a stale duplicate becomes."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest

from runtime.core.batch import CommandBatch
from runtime.core.command_table import DEFAULT_DEDUPE_WINDOW_S, CommandTable
from runtime.core.commands import Command, CommandStatus as S, CommandType as T
from runtime.core.errors import ConfigurationError

from .conftest import T0

DAY = 86400.0
NOW = T0.timestamp()


def cmd(cid: str, at_s: float = 0.0, expires_s: float | None = None) -> Command:
    when = T0 + timedelta(seconds=at_s)
    return Command(cid, "ev-1", T.SET_CHARGE_RATE, 7.0, when,
                   expires_at=when + timedelta(seconds=expires_s) if expires_s is not None else None)


def run(table: CommandTable, now: float) -> list[str]:
    """One dispatcher step: sweep, send what is due and let it complete; returns the ids sent."""
    table.sweep(now)
    sent = [c.command_id for c in table.due(now)]
    for cid in sent:
        table.mark_dispatched(cid, now)
        table.complete(cid, now)
    return sent


def test_the_default_window_is_seven_days_and_must_be_positive():
    assert DEFAULT_DEDUPE_WINDOW_S == 7 * DAY and CommandTable().dedupe_window_s == 7 * DAY
    with pytest.raises(ConfigurationError, match="dedupe_window_s"):
        CommandTable(dedupe_window_s=0)


def test_a_duplicate_within_the_window_is_a_no_op_even_after_its_snapshot_was_pruned():
    table = CommandTable(dedupe_window_s=7 * DAY)
    table.add([cmd("c1")], NOW)
    assert run(table, NOW) == ["c1"]
    table.prune(NOW + 3600)                             # snapshot forgotten after the retention...
    assert table.get("c1") is None
    later = NOW + 6 * DAY
    assert table.add([cmd("c1")], later) == []          # ...the id is not
    assert run(table, later) == []


def test_a_duplicate_beyond_the_window_is_expired_at_once_never_applied_as_new():
    table = CommandTable(dedupe_window_s=7 * DAY)
    table.add([cmd("c1")], NOW)
    run(table, NOW)
    later = NOW + 8 * DAY
    table.prune(later)                                  # the id is forgotten now
    assert table.known_ids() == 0
    [created] = table.add([cmd("c1")], later)
    assert created.command.command_id == "c1"
    changes = table.sweep(later)
    assert [(c.command.command_id, c.command.status) for c in changes] == [("c1", S.EXPIRED)]
    assert "dedupe window" in table.get("c1").last_error
    assert table.due(later) == []


def test_an_id_stays_known_until_its_own_expiry_when_that_is_later_than_the_window():
    table = CommandTable(dedupe_window_s=1 * DAY)
    table.add([cmd("c1", expires_s=10 * DAY)], NOW)     # a source that lets it be applied for 10 days
    run(table, NOW)
    table.prune(NOW + 5 * DAY)
    assert table.add([cmd("c1", expires_s=10 * DAY)], NOW + 5 * DAY) == []   # still known
    table.prune(NOW + 11 * DAY)
    assert table.known_ids() == 0                       # forgotten once its expiry passed too


def test_a_command_without_an_expiry_expires_the_window_after_its_time():
    table = CommandTable(dedupe_window_s=2 * DAY)
    table.set_available("ev-1", False, NOW)
    table.add([cmd("held")], NOW)
    table.sweep(NOW)
    assert table.get("held").status is S.HELD
    table.sweep(NOW + 2 * DAY + 1)                       # a setpoint held for longer than the window
    assert table.get("held").status is S.EXPIRED


def test_a_stale_schedule_resubmitted_under_a_forgotten_batch_id_runs_nothing():
    table = CommandTable(dedupe_window_s=7 * DAY)
    n = 3
    batch = CommandBatch("plan", times=NOW + 300.0 * np.arange(n), asset_codes=np.zeros(n, dtype=int),
                         assets=("ev-1",), type_codes=np.full(n, CommandBatch.type_code(T.SET_CHARGE_RATE)),
                         values=np.arange(n, dtype=float), created_at=NOW)
    table.add_batch(batch, NOW)
    assert run(table, NOW + 900) == ["plan-2"]           # the newest setpoint wins, the others are superseded
    table.prune(NOW + 3600)                              # as the dispatcher does, every minute or so
    later = NOW + 9 * DAY
    table.prune(later)
    assert not table.has_batch("plan")
    table.add_batch(batch, later)                        # the same file sent again, long after
    assert run(table, later) == []
    assert {table.get(batch.command_id(i)).status for i in range(n)} <= {S.EXPIRED, S.SUPERSEDED}


def test_known_ids_stay_bounded_by_what_ended_within_the_window():
    table = CommandTable(dedupe_window_s=1 * DAY)
    for day in range(10):
        now = NOW + day * DAY
        table.add([cmd(f"d{day}-{i}", at_s=day * DAY) for i in range(100)], now)
        run(table, now)
        table.prune(now - 3600)
    assert table.known_ids() <= 300


def test_a_batch_dropped_before_its_rows_were_due_stays_known_until_the_window_after_its_last_row():
    table = CommandTable(dedupe_window_s=1 * DAY)
    n = 2
    batch = CommandBatch("plan", times=NOW + 5 * DAY + 300.0 * np.arange(n), asset_codes=np.zeros(n, dtype=int),
                         assets=("ev-1",), type_codes=np.full(n, CommandBatch.type_code(T.SET_CHARGE_RATE)),
                         values=np.arange(n, dtype=float), created_at=NOW)
    table.add_batch(batch, NOW)
    table.supersede_future(["ev-1"], NOW, NOW)          # replaced long before its rows were due
    assert table.prune(NOW + 1) == n and table.known_ids() == 1
    later = NOW + 5 * DAY + 600                          # the window since it was dropped has passed, not
    table.prune(later)                                   # the window after its rows' times
    assert table.known_ids() == 1
    assert table.add_batch(batch, later) == [] and run(table, later) == []   # the same file again: a no-op
    table.prune(NOW + 6 * DAY + 301)                     # every row's implicit expiry has passed now
    assert table.known_ids() == 0
