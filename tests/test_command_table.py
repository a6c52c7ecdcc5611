"""Specification of RetryPolicy and CommandTable: the pure core of command dispatch.

Times are epoch seconds relative to T (2026-01-01T08:00Z). Unless a test says otherwise the table
retries up to 3 attempts with delays 1 s, 2 s (no jitter), ack timeout 10 s, completion 60 s.
"""

from __future__ import annotations

import random
from datetime import datetime, timezone

import numpy as np
import pytest

from runtime.core.batch import CommandBatch
from runtime.core.clock import to_datetime
from runtime.core.command_table import Change, CommandTable
from runtime.core.commands import (ALLOWED_TRANSITIONS, Command, CommandStatus, CommandType,
                                   InvalidCommandTransition)
from runtime.core.events import EventType
from runtime.core.retry import RetryPolicy

S = CommandStatus
E = EventType
T = datetime(2026, 1, 1, 8, 0, tzinfo=timezone.utc).timestamp()
NO_JITTER = RetryPolicy(max_attempts=3, base_delay_s=1.0, factor=2.0, max_delay_s=60.0, jitter=0.0)


def cmd(cid: str, at: float = 0.0, asset: str = "a1", ctype: CommandType = CommandType.SET_CHARGE_RATE,
        value: float = 5.0, priority: int = 0, expires: float | None = None) -> Command:
    return Command(cid, asset, ctype, value, to_datetime(T + at), priority=priority,
                   expires_at=None if expires is None else to_datetime(T + expires))


def table(retry: RetryPolicy = NO_JITTER, **kw: object) -> CommandTable:
    return CommandTable(retry=retry, rng_seed=7, **kw)  # type: ignore[arg-type]


def edges(changes: list[Change]) -> list[tuple[str, S | None, S, E | None]]:
    return [(c.command.command_id, c.previous, c.command.status, c.event) for c in changes]


def status(t: CommandTable, cid: str) -> S:
    c = t.get(cid)
    assert c is not None
    return c.status


def make_batch(batch_id: str, times: list[float], assets: list[str], codes: list[int],
               ctype: CommandType = CommandType.SET_CHARGE_RATE, values: list[float] | None = None,
               expires: list[float] | None = None, priority: int = 0) -> CommandBatch:
    n = len(times)
    return CommandBatch(batch_id, np.asarray(times, dtype=float) + T, np.asarray(codes), assets,
                        np.full(n, CommandBatch.type_code(ctype)),
                        np.asarray(values if values is not None else [float(i) for i in range(n)]),
                        None if expires is None else np.asarray(expires, dtype=float) + T, priority=priority)


def dispatched(t: CommandTable, c: Command, now: float = 0.0) -> Command:
    """Add ``c`` and send it at ``now`` (it must be due then)."""
    t.add([c], T + now)
    t.sweep(T + now)
    return t.mark_dispatched(c.command_id, T + now).command


# ------------------------------------------------------------------------------------ RetryPolicy

class TestRetryPolicy:
    def test_exact_exponential_delays_without_jitter_capped_at_max(self) -> None:
        p = RetryPolicy(max_attempts=10, base_delay_s=1.0, factor=2.0, max_delay_s=10.0, jitter=0.0)
        rng = random.Random(0)
        assert [p.delay(a, rng) for a in range(1, 7)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]

    def test_jitter_stays_within_bounds_and_is_reproducible_with_a_seed(self) -> None:
        p = RetryPolicy(base_delay_s=2.0, factor=3.0, max_delay_s=100.0, jitter=0.25)
        a = [p.delay(k, random.Random(42)) for k in (1, 2, 3)]
        assert a == [p.delay(k, random.Random(42)) for k in (1, 2, 3)]
        rng = random.Random(1)
        for attempt, nominal in ((1, 2.0), (2, 6.0), (3, 18.0), (9, 100.0)):
            for _ in range(200):
                d = p.delay(attempt, rng)
                assert nominal * 0.75 <= d <= nominal * 1.25

    def test_never_negative_and_huge_attempts_are_capped(self) -> None:
        p = RetryPolicy(max_attempts=5, base_delay_s=1.0, factor=10.0, max_delay_s=30.0, jitter=1.0)
        rng = random.Random(3)
        assert all(p.delay(a, rng) >= 0.0 for a in range(1, 50))
        assert RetryPolicy(jitter=0.0).delay(10_000, rng) == 60.0

    @pytest.mark.parametrize("field, value", [
        ("max_attempts", 0), ("max_attempts", 1.5), ("max_attempts", True), ("base_delay_s", -1.0),
        ("factor", 0.5), ("max_delay_s", float("nan")), ("jitter", 1.5), ("jitter", -0.1),
        ("base_delay_s", "1"),
    ])
    def test_invalid_fields_name_field_and_value(self, field: str, value: object) -> None:
        with pytest.raises(ValueError, match=rf"{field}: .*{value!r}".replace("(", r"\(").replace(")", r"\)")):
            RetryPolicy(**{field: value})  # type: ignore[arg-type]

    def test_max_delay_below_base_and_bad_attempt_are_rejected(self) -> None:
        with pytest.raises(ValueError, match="max_delay_s: must be >= base_delay_s"):
            RetryPolicy(base_delay_s=5.0, max_delay_s=1.0)
        with pytest.raises(ValueError, match="attempt: must be an integer >= 1, got 0"):
            RetryPolicy().delay(0, random.Random())


# ------------------------------------------------------------------------------------ lifecycle edges

def _pending_dispatched(t: CommandTable) -> Change:
    t.add([cmd("c1")], T)
    t.sweep(T)
    return t.mark_dispatched("c1", T)


def _pending_held(t: CommandTable) -> Change:
    t.add([cmd("c1")], T)
    t.sweep(T)
    return t.set_available("a1", False, T)[0]


def _pending_expired(t: CommandTable) -> Change:
    t.add([cmd("c1", expires=5)], T)
    return t.sweep(T + 5)[-1]


def _pending_superseded(t: CommandTable) -> Change:
    t.add([cmd("c1", at=0), cmd("c2", at=1)], T)
    t.sweep(T)
    return t.sweep(T + 1)[0]


def _pending_rejected(t: CommandTable) -> Change:
    t.add([cmd("c1")], T)
    return t.reject("c1", "not supported", T)[0]


def _held(t: CommandTable, expires: float | None = None) -> None:
    t.add([cmd("c1", expires=expires)], T)
    t.set_available("a1", False, T)
    t.sweep(T)
    assert status(t, "c1") is S.HELD


def _held_pending(t: CommandTable) -> Change:
    _held(t)
    return t.set_available("a1", True, T + 1)[0]


def _held_expired(t: CommandTable) -> Change:
    _held(t, expires=30)
    return t.sweep(T + 30)[0]


def _held_superseded(t: CommandTable) -> Change:
    _held(t)
    t.add([cmd("c2", at=1)], T)
    return t.sweep(T + 1)[0]


def _held_rejected(t: CommandTable) -> Change:
    _held(t)
    return t.reject("c1", "invalid", T)[0]


def _dispatched(t: CommandTable, expires: float | None = None) -> None:
    dispatched(t, cmd("c1", expires=expires))


def _acked(t: CommandTable, expires: float | None = None) -> None:
    dispatched(t, cmd("c1", expires=expires))
    t.acknowledge("c1", T + 1)


def _in_flight_superseded(t: CommandTable) -> Change:
    t.add([cmd("c2", at=5)], T)
    return t.sweep(T + 5)[-1]


def _expired_on_failure(t: CommandTable) -> Change:
    return t.fail("c1", "device error", T + 20)[0]


def _one_attempt() -> CommandTable:
    return table(RetryPolicy(max_attempts=1, jitter=0.0))


EDGE_SCENARIOS = {
    (S.PENDING, S.DISPATCHED, E.COMMAND_DISPATCHED): (table, _pending_dispatched),
    (S.PENDING, S.HELD, E.COMMAND_HELD): (table, _pending_held),
    (S.PENDING, S.EXPIRED, E.COMMAND_EXPIRED): (table, _pending_expired),
    (S.PENDING, S.SUPERSEDED, E.COMMAND_SUPERSEDED): (table, _pending_superseded),
    (S.PENDING, S.REJECTED, E.COMMAND_REJECTED): (table, _pending_rejected),
    (S.HELD, S.PENDING, None): (table, _held_pending),
    (S.HELD, S.EXPIRED, E.COMMAND_EXPIRED): (table, _held_expired),
    (S.HELD, S.SUPERSEDED, E.COMMAND_SUPERSEDED): (table, _held_superseded),
    (S.HELD, S.REJECTED, E.COMMAND_REJECTED): (table, _held_rejected),
    (S.DISPATCHED, S.ACKNOWLEDGED, E.COMMAND_ACKNOWLEDGED):
        (table, lambda t: (_dispatched(t), t.acknowledge("c1", T + 1)[0])[1]),
    (S.DISPATCHED, S.COMPLETED, E.COMMAND_COMPLETED):
        (table, lambda t: (_dispatched(t), t.complete("c1", T + 1)[0])[1]),
    (S.DISPATCHED, S.FAILED, E.COMMAND_FAILED):
        (table, lambda t: (_dispatched(t), t.fail("c1", "bad", T + 1, retryable=False)[0])[1]),
    (S.DISPATCHED, S.TIMED_OUT, E.COMMAND_TIMED_OUT):
        (_one_attempt, lambda t: (_dispatched(t), t.sweep(T + 10)[0])[1]),
    (S.DISPATCHED, S.REJECTED, E.COMMAND_REJECTED):
        (table, lambda t: (_dispatched(t), t.reject("c1", "out of range", T + 1)[0])[1]),
    (S.DISPATCHED, S.SUPERSEDED, E.COMMAND_SUPERSEDED):
        (table, lambda t: (_dispatched(t), _in_flight_superseded(t))[1]),
    (S.DISPATCHED, S.PENDING, E.COMMAND_RETRY_SCHEDULED):
        (table, lambda t: (_dispatched(t), t.fail("c1", "busy", T + 1)[0])[1]),
    (S.DISPATCHED, S.HELD, E.COMMAND_HELD):
        (table, lambda t: (_dispatched(t), t.hold_in_flight("a1", "actor died", T + 1)[0])[1]),
    (S.DISPATCHED, S.EXPIRED, E.COMMAND_EXPIRED):
        (table, lambda t: (_dispatched(t, expires=20), _expired_on_failure(t))[1]),
    (S.ACKNOWLEDGED, S.COMPLETED, E.COMMAND_COMPLETED):
        (table, lambda t: (_acked(t), t.complete("c1", T + 2)[0])[1]),
    (S.ACKNOWLEDGED, S.FAILED, E.COMMAND_FAILED):
        (_one_attempt, lambda t: (_acked(t), t.fail("c1", "tripped", T + 2)[0])[1]),
    (S.ACKNOWLEDGED, S.TIMED_OUT, E.COMMAND_TIMED_OUT):
        (_one_attempt, lambda t: (_acked(t), t.sweep(T + 61)[0])[1]),
    (S.ACKNOWLEDGED, S.REJECTED, E.COMMAND_REJECTED):
        (table, lambda t: (_acked(t), t.reject("c1", "refused", T + 2)[0])[1]),
    (S.ACKNOWLEDGED, S.SUPERSEDED, E.COMMAND_SUPERSEDED):
        (table, lambda t: (_acked(t), _in_flight_superseded(t))[1]),
    (S.ACKNOWLEDGED, S.PENDING, E.COMMAND_RETRY_SCHEDULED):
        (table, lambda t: (_acked(t), t.time_out("c1", T + 2)[0])[1]),
    (S.ACKNOWLEDGED, S.HELD, E.COMMAND_HELD):
        (table, lambda t: (_acked(t), t.hold_in_flight("a1", "actor died", T + 2)[0])[1]),
    (S.ACKNOWLEDGED, S.EXPIRED, E.COMMAND_EXPIRED):
        (table, lambda t: (_acked(t, expires=20), _expired_on_failure(t))[1]),
}


def test_the_scenarios_cover_every_edge_of_the_lifecycle() -> None:
    allowed = {(src, dst) for src, dsts in ALLOWED_TRANSITIONS.items() for dst in dsts}
    assert {(src, dst) for src, dst, _ in EDGE_SCENARIOS} == allowed


@pytest.mark.parametrize("edge", list(EDGE_SCENARIOS), ids=lambda e: f"{e[0].value}->{e[1].value}")
def test_every_lifecycle_edge(edge: tuple[S, S, E | None]) -> None:
    factory, scenario = EDGE_SCENARIOS[edge]
    t = factory()
    change = scenario(t)
    assert (change.command.command_id, change.previous, change.command.status, change.event) == ("c1", *edge)
    assert t.get("c1") == change.command


# ------------------------------------------------------------------------------------ add, due, answers

def test_add_creates_once_per_id_and_fills_created_at() -> None:
    t = table()
    changes = t.add([cmd("c1"), cmd("c2"), cmd("c1")], T)
    assert edges(changes) == [("c1", None, S.PENDING, E.COMMAND_CREATED), ("c2", None, S.PENDING, E.COMMAND_CREATED)]
    assert changes[0].command.created_at == to_datetime(T)
    assert t.add([cmd("c1", value=99.0)], T + 1) == []
    assert t.get("c1").value == 5.0 and len(t) == 2


def test_add_rejects_non_pending_commands_naming_the_id_and_adds_nothing() -> None:
    t = table()
    with pytest.raises(ValueError, match="command bad: only PENDING .* got COMPLETED"):
        t.add([cmd("ok"), cmd("bad").evolve(S.DISPATCHED).evolve(S.COMPLETED)], T)
    assert len(t) == 0


def test_due_orders_by_priority_then_time_then_creation_and_does_not_mutate() -> None:
    t = table()
    t.add([cmd("late", at=2, asset="a1"), cmd("early", at=1, asset="a2"), cmd("vip", at=2, asset="a3", priority=5),
           cmd("same", at=1, asset="a4"), cmd("future", at=100, asset="a5")], T)
    t.sweep(T + 2)
    before = t.counts()
    assert [c.command_id for c in t.due(T + 2)] == ["vip", "early", "same", "late"]
    assert [c.command_id for c in t.due(T + 2)] == ["vip", "early", "same", "late"]
    assert t.counts() == before
    assert [c.command_id for c in t.due(T + 1.5)] == ["early", "same"]


@pytest.mark.parametrize("method, args", [
    ("acknowledge", ()), ("complete", ()), ("fail", ("x",)), ("reject", ("x",)), ("time_out", ()),
    ("mark_dispatched", ()),
])
def test_unknown_ids_raise_key_error(method: str, args: tuple[str, ...]) -> None:
    with pytest.raises(KeyError, match="unknown command 'nope'"):
        getattr(table(), method)("nope", *args, T)


def test_late_or_misplaced_answers_are_ignored() -> None:
    t = table()
    dispatched(t, cmd("c1"))
    assert t.acknowledge("c1", T + 1) and t.acknowledge("c1", T + 1) == []   # duplicate ack
    assert t.complete("c1", T + 2)
    for answer in (lambda: t.acknowledge("c1", T + 3), lambda: t.complete("c1", T + 3),
                   lambda: t.fail("c1", "late", T + 3), lambda: t.time_out("c1", T + 3),
                   lambda: t.reject("c1", "late", T + 3)):
        assert answer() == []
    assert status(t, "c1") is S.COMPLETED
    t.add([cmd("p")], T)
    assert t.acknowledge("p", T) == [] and t.complete("p", T) == [] and t.fail("p", "x", T) == []
    assert status(t, "p") is S.PENDING


def test_only_pending_commands_can_be_dispatched() -> None:
    t = table()
    _held(t)
    with pytest.raises(InvalidCommandTransition, match="c1: only a PENDING command .* HELD"):
        t.mark_dispatched("c1", T)
    assert status(t, "c1") is S.HELD and t.get("c1").attempts == 0


# ------------------------------------------------------------------------------------ retries

def test_retries_with_exact_backoff_then_final_failure() -> None:
    t = table()
    dispatched(t, cmd("c1"))
    ch = t.fail("c1", "busy", T + 1)[0]
    assert (ch.command.status, ch.event, ch.retry_at, ch.command.last_error) == \
        (S.PENDING, E.COMMAND_RETRY_SCHEDULED, T + 2.0, "busy")
    assert t.next_deadline() == T + 2.0
    t.sweep(T + 1.5)
    assert t.due(T + 1.5) == []
    t.sweep(T + 2)
    assert [c.command_id for c in t.due(T + 2)] == ["c1"]
    assert t.mark_dispatched("c1", T + 2).command.attempts == 2
    assert t.fail("c1", "busy again", T + 3)[0].retry_at == T + 3 + 2.0   # 1 s * 2 ** 1
    t.sweep(T + 5)
    t.mark_dispatched("c1", T + 5)
    final = t.fail("c1", "dead", T + 6)[0]
    assert (final.command.status, final.event, final.command.attempts, final.command.last_error, final.retry_at) == \
        (S.FAILED, E.COMMAND_FAILED, 3, "dead", None)


def test_non_retryable_failure_is_final_at_once() -> None:
    t = table()
    dispatched(t, cmd("c1"))
    assert edges(t.fail("c1", "invalid profile", T + 1, retryable=False)) == \
        [("c1", S.DISPATCHED, S.FAILED, E.COMMAND_FAILED)]


def test_retry_delay_uses_seeded_jitter_within_bounds() -> None:
    policy = RetryPolicy(max_attempts=5, base_delay_s=10.0, factor=2.0, jitter=0.2)

    def retry_times(seed: int) -> list[float]:
        t = CommandTable(retry=policy, rng_seed=seed)
        t.add([cmd("c1")], T)
        out, now = [], T
        for _ in range(3):
            t.sweep(now)
            t.mark_dispatched("c1", now)
            retry_at = t.fail("c1", "busy", now)[0].retry_at
            assert retry_at is not None
            out.append(retry_at - now)
            now = retry_at
        return out

    delays = retry_times(11)
    assert delays == retry_times(11)
    for d, nominal in zip(delays, (10.0, 20.0, 40.0)):
        assert nominal * 0.8 <= d <= nominal * 1.2


# ------------------------------------------------------------------------------------ timeouts

def test_ack_timeout_retries_then_times_out_for_good() -> None:
    t = table(RetryPolicy(max_attempts=2, base_delay_s=1.0, jitter=0.0))
    dispatched(t, cmd("c1"))
    assert t.next_deadline() == T + 10
    assert t.sweep(T + 9.9) == []
    ch = t.sweep(T + 10)[0]
    assert (ch.command.status, ch.event, ch.retry_at) == (S.PENDING, E.COMMAND_RETRY_SCHEDULED, T + 11)
    assert "no acknowledgement after 10 s (attempt 1)" in (ch.command.last_error or "")
    t.sweep(T + 11)
    t.mark_dispatched("c1", T + 11)
    assert edges(t.sweep(T + 21)) == [("c1", S.DISPATCHED, S.TIMED_OUT, E.COMMAND_TIMED_OUT)]
    assert t.next_deadline() is None


def test_per_asset_ack_timeout_override() -> None:
    t = table()
    t.set_ack_timeout("slow", 30.0)
    assert t.ack_timeout("slow") == 30.0 and t.ack_timeout("a1") == 10.0
    dispatched(t, cmd("c1", asset="slow"))
    assert t.next_deadline() == T + 30
    assert t.sweep(T + 29) == [] and t.sweep(T + 30)[0].event is E.COMMAND_RETRY_SCHEDULED
    with pytest.raises(ValueError, match="seconds: .* got 0"):
        t.set_ack_timeout("slow", 0)


def test_acknowledgement_replaces_the_ack_deadline_by_the_completion_deadline() -> None:
    t = table(completion_timeout_s=60.0)
    dispatched(t, cmd("c1"))
    t.acknowledge("c1", T + 5)
    assert t.next_deadline() == T + 65
    assert t.sweep(T + 10) == [] and t.sweep(T + 64.9) == []
    ch = t.sweep(T + 65)[0]
    assert (ch.previous, ch.command.status, ch.event) == (S.ACKNOWLEDGED, S.PENDING, E.COMMAND_RETRY_SCHEDULED)
    assert "not completed 60 s after acknowledgement" in (ch.command.last_error or "")


def test_completion_ends_all_deadlines() -> None:
    t = table()
    dispatched(t, cmd("c1"))
    t.acknowledge("c1", T + 1)
    t.complete("c1", T + 2)
    assert t.next_deadline() is None and t.sweep(T + 1000) == []


# ------------------------------------------------------------------------------------ HELD / release

def test_unavailable_asset_holds_due_commands_and_release_restores_them() -> None:
    t = table()
    t.add([cmd("now"), cmd("later", at=50, ctype=CommandType.SET_POWER_LIMIT), cmd("other", asset="a2")], T)
    t.sweep(T)
    assert edges(t.set_available("a1", False, T)) == [("now", S.PENDING, S.HELD, E.COMMAND_HELD)]
    assert not t.is_available("a1")
    assert [c.command_id for c in t.due(T)] == ["other"]
    assert edges(t.sweep(T + 50)) == [("later", S.PENDING, S.HELD, E.COMMAND_HELD)]   # falls due while held
    assert [c.command_id for c in t.due(T + 50)] == ["other"]
    released = t.set_available("a1", True, T + 60)
    assert edges(released) == [("now", S.HELD, S.PENDING, None), ("later", S.HELD, S.PENDING, None)]
    assert {c.command_id for c in t.due(T + 60)} == {"now", "later", "other"}


def test_hold_in_flight_holds_sent_commands_and_marks_the_asset_unavailable() -> None:
    t = table()
    dispatched(t, cmd("sent"))
    t.add([cmd("queued", ctype=CommandType.SET_POWER_LIMIT)], T)
    t.sweep(T)
    changes = t.hold_in_flight("a1", "actor crashed", T + 1)
    assert edges(changes) == [("sent", S.DISPATCHED, S.HELD, E.COMMAND_HELD),
                              ("queued", S.PENDING, S.HELD, E.COMMAND_HELD)]
    assert changes[0].command.last_error == "actor crashed"
    assert t.sweep(T + 100) == []     # no ack timeout for a held command
    t.set_available("a1", True, T + 100)
    assert [c.command_id for c in t.due(T + 100)] == ["sent", "queued"]
    assert t.mark_dispatched("sent", T + 100).command.attempts == 2


def test_a_retry_for_an_unavailable_asset_is_held_and_keeps_its_retry_time() -> None:
    t = table()
    dispatched(t, cmd("c1"))
    t.set_available("a1", False, T)
    ch = t.fail("c1", "busy", T + 1)[0]
    assert (ch.command.status, ch.event, ch.retry_at) == (S.HELD, E.COMMAND_HELD, T + 2)
    t.set_available("a1", True, T + 1.5)
    assert t.due(T + 1.5) == [] and t.next_deadline() == T + 2
    assert [c.command_id for c in t.due(T + 2)] == ["c1"]


# ------------------------------------------------------------------------------------ supersession

def test_newer_setpoint_supersedes_older_pending_and_names_the_winner() -> None:
    t = table()
    t.add([cmd("old", at=0), cmd("new", at=5)], T)
    t.sweep(T)
    ch = t.sweep(T + 5)
    assert edges(ch) == [("old", S.PENDING, S.SUPERSEDED, E.COMMAND_SUPERSEDED)]
    assert ch[0].command.last_error == "superseded by new"
    assert [c.command_id for c in t.due(T + 5)] == ["new"]


def test_a_late_older_command_is_itself_superseded() -> None:
    t = table()
    t.add([cmd("new", at=5)], T)
    t.sweep(T + 5)
    t.add([cmd("stale", at=1)], T + 6)
    assert edges(t.sweep(T + 6)) == [("stale", S.PENDING, S.SUPERSEDED, E.COMMAND_SUPERSEDED)]


def test_priority_then_creation_break_ties_at_equal_time() -> None:
    t = table()
    t.add([cmd("high", priority=2), cmd("low", priority=1), cmd("second_high", priority=2)], T)
    changes = t.sweep(T)
    assert sorted(c.command.command_id for c in changes) == ["high", "low"]
    assert [c.command_id for c in t.due(T)] == ["second_high"]


def test_in_flight_command_is_superseded_and_its_late_answers_are_ignored() -> None:
    t = table()
    dispatched(t, cmd("old"))
    t.add([cmd("new", at=5)], T)
    assert edges(t.sweep(T + 5)) == [("old", S.DISPATCHED, S.SUPERSEDED, E.COMMAND_SUPERSEDED)]
    assert t.acknowledge("old", T + 6) == [] and t.complete("old", T + 6) == []
    assert t.fail("old", "x", T + 6) == [] and t.time_out("old", T + 6) == []
    assert status(t, "old") is S.SUPERSEDED
    assert t.sweep(T + 100) == []   # its ack deadline is gone too


def test_retry_pending_command_is_superseded_by_a_newer_one() -> None:
    t = table()
    dispatched(t, cmd("old"))
    t.fail("old", "busy", T + 1)
    t.add([cmd("new", at=1.5)], T)
    assert edges(t.sweep(T + 1.5)) == [("old", S.PENDING, S.SUPERSEDED, E.COMMAND_SUPERSEDED)]


def test_supersession_is_per_channel_and_only_for_setpoints() -> None:
    t = table()
    t.add([cmd("rate1"), cmd("limit", ctype=CommandType.SET_POWER_LIMIT), cmd("other_asset", asset="a2"),
           cmd("start1", ctype=CommandType.START_CHARGING), cmd("start2", at=1, ctype=CommandType.START_CHARGING),
           cmd("rate2", at=1)], T)
    t.sweep(T)
    assert edges(t.sweep(T + 1)) == [("rate1", S.PENDING, S.SUPERSEDED, E.COMMAND_SUPERSEDED)]
    assert {c.command_id for c in t.due(T + 1)} == {"limit", "other_asset", "start1", "start2", "rate2"}


def test_a_completed_command_does_not_block_the_next_one() -> None:
    t = table()
    dispatched(t, cmd("first"))
    t.complete("first", T + 1)
    t.add([cmd("second", at=2)], T)
    assert t.sweep(T + 2) == [] and [c.command_id for c in t.due(T + 2)] == ["second"]


def test_supersede_future_replaces_waiting_commands_from_a_time_on() -> None:
    t = table()
    t.add([cmd("in_flight", at=10, ctype=CommandType.SET_POWER_LIMIT), cmd("before", at=5),
           cmd("held", at=10, ctype=CommandType.SET_SOC_TARGET), cmd("pending", at=20),
           cmd("other", asset="a2", at=20)], T)
    t.sweep(T + 10)
    t.mark_dispatched("in_flight", T + 10)
    t.set_available("a1", False, T + 10)
    assert (status(t, "before"), status(t, "held")) == (S.HELD, S.HELD)
    changes = t.supersede_future(["a1"], T + 10, T + 11)
    assert edges(changes) == [("held", S.HELD, S.SUPERSEDED, E.COMMAND_SUPERSEDED),
                              ("pending", S.PENDING, S.SUPERSEDED, E.COMMAND_SUPERSEDED)]
    assert (status(t, "in_flight"), status(t, "before"), status(t, "other")) == (S.DISPATCHED, S.HELD, S.PENDING)


def test_supersede_future_masks_lazy_batch_rows_without_materializing() -> None:
    t = table()
    b = make_batch("b", [0, 0, 10, 10, 20, 20], ["a1", "a2"], [0, 1, 0, 1, 0, 1])
    t.add_batch(b, T)
    t.sweep(T)
    assert len(t.commands()) == 2
    changes = t.supersede_future(["a1"], T + 10, T + 1)
    assert edges(changes) == [("b-2", S.PENDING, S.SUPERSEDED, E.COMMAND_SUPERSEDED),
                              ("b-4", S.PENDING, S.SUPERSEDED, E.COMMAND_SUPERSEDED)]
    assert changes[0].command.scheduled_time == to_datetime(T + 10)
    assert len(t.commands()) == 2 and len(t) == 6
    assert status(t, "b-4") is S.SUPERSEDED and status(t, "b-5") is S.PENDING
    assert t.counts()["SUPERSEDED"] == 2 and t.counts()["PENDING"] == 4
    assert t.supersede_future(["a1"], T + 10, T + 2) == []     # idempotent
    created = t.sweep(T + 20)
    assert [c.command.command_id for c in created if c.event is E.COMMAND_CREATED] == ["b-3", "b-5"]
    assert t.reject("b-2", "x", T + 20) == [] and t.acknowledge("b-2", T + 20) == []


def test_supersede_future_can_mask_batch_rows_silently() -> None:
    t = table()
    t.add_batch(make_batch("b", [0, 10, 20], ["a1"], [0, 0, 0]), T)
    t.sweep(T)
    changes = t.supersede_future(["a1"], T, T + 1, row_changes=False)
    assert edges(changes) == [("b-0", S.PENDING, S.SUPERSEDED, E.COMMAND_SUPERSEDED)]   # materialized only
    assert status(t, "b-1") is S.SUPERSEDED and t.counts()["SUPERSEDED"] == 3 and t.next_deadline() is None


# ------------------------------------------------------------------------------------ expiry

def test_expiry_at_expires_at_and_next_deadline_knows_it() -> None:
    t = table()
    t.add([cmd("c1", at=100, expires=50)], T)
    assert t.next_deadline() == T + 50
    assert t.sweep(T + 49) == []
    assert edges(t.sweep(T + 50)) == [("c1", S.PENDING, S.EXPIRED, E.COMMAND_EXPIRED)]
    assert t.next_deadline() is None


def test_in_flight_command_does_not_expire_but_is_not_retried_once_expired() -> None:
    t = table()
    dispatched(t, cmd("c1", expires=5))
    assert t.sweep(T + 6) == []
    ch = t.time_out("c1", T + 7)[0]
    assert (ch.command.status, ch.event) == (S.EXPIRED, E.COMMAND_EXPIRED)
    assert "no acknowledgement" in (ch.command.last_error or "")


def test_a_retry_pending_command_expires_while_waiting() -> None:
    t = table(RetryPolicy(max_attempts=3, base_delay_s=10.0, jitter=0.0))
    dispatched(t, cmd("c1", expires=5))
    t.fail("c1", "busy", T + 1)
    assert t.next_deadline() == T + 5
    assert edges(t.sweep(T + 5)) == [("c1", S.PENDING, S.EXPIRED, E.COMMAND_EXPIRED)]


# ------------------------------------------------------------------------------------ lazy batches

def test_large_batch_is_lazy_and_only_due_rows_are_materialized() -> None:
    n_assets, n_steps, step = 1000, 288, 300.0
    times = np.repeat(np.arange(n_steps) * step, n_assets)
    codes = np.tile(np.arange(n_assets), n_steps)
    assets = [f"ev{i}" for i in range(n_assets)]
    b = CommandBatch("day", times + T, codes, assets, np.zeros(times.size, dtype=np.int8),
                     np.arange(times.size, dtype=float), presorted=True)
    t = table()
    assert t.add_batch(b, T) == []
    assert len(t) == 288_000 and t.commands() == [] and t.next_deadline() == T
    assert t.get("day-287999").status is S.PENDING and t.commands() == []
    created = t.sweep(T)
    assert len(created) == 1000 and {c.event for c in created} == {E.COMMAND_CREATED}
    assert len(t.commands()) == 1000 and len(t.due(T)) == 1000
    assert t.next_deadline() == T + step
    assert t.add_batch(b, T) == [] and len(t) == 288_000       # same batch id: ignored
    changes = t.sweep(T + step)
    assert len(t.commands()) == 2000
    assert sum(c.event is E.COMMAND_SUPERSEDED for c in changes) == 1000
    assert t.counts()["PENDING"] == 288_000 - 1000 and t.counts()["SUPERSEDED"] == 1000
    assert t.add([cmd("day-5")], T) == []                        # a batch row id is known


def test_batch_rows_expire_and_get_created_at_due_time() -> None:
    t = table()
    t.add_batch(make_batch("b", [0, 10], ["a1"], [0, 0], expires=[10, 20]), T)
    assert t.sweep(T + 9) and t.counts()["PENDING"] == 2
    changes = t.sweep(T + 10)
    assert edges(changes) == [("b-1", None, S.PENDING, E.COMMAND_CREATED),
                              ("b-0", S.PENDING, S.EXPIRED, E.COMMAND_EXPIRED)]


def test_a_batch_row_can_be_dispatched_or_rejected_before_it_is_due_and_is_not_pulled_twice() -> None:
    t = table()
    t.add_batch(make_batch("b", [0, 10, 20], ["a1", "a2", "a3"], [0, 1, 2]), T)
    assert t.mark_dispatched("b-1", T).command.status is S.DISPATCHED
    assert t.reject("b-2", "invalid", T)[0].previous is S.PENDING
    assert t.next_deadline() == T       # b-0; b-1 and b-2 are no batch deadlines any more
    assert [c.command.command_id for c in t.sweep(T) if c.event is E.COMMAND_CREATED] == ["b-0"]
    assert t.next_deadline() == T + 10  # b-1's ack deadline
    assert t.sweep(T + 20)[0].event is E.COMMAND_RETRY_SCHEDULED
    assert len(t.commands()) == 3 and len(t) == 3


# ------------------------------------------------------------------------------------ next_deadline

def test_next_deadline_tracks_the_earliest_thing_that_changes() -> None:
    t = table()
    assert t.next_deadline() is None
    t.add([cmd("c1", at=30)], T)
    t.add_batch(make_batch("b", [20, 40], ["a2"], [0, 0]), T)
    assert t.next_deadline() == T + 20
    t.sweep(T + 20)
    assert t.next_deadline() == T + 30
    t.sweep(T + 30)
    assert t.next_deadline() == T + 40          # due commands not sent change nothing by themselves
    t.mark_dispatched("c1", T + 31)
    assert t.next_deadline() == T + 40
    t.sweep(T + 40)
    assert t.next_deadline() == T + 41         # c1's ack deadline
    t.acknowledge("c1", T + 40)
    assert t.next_deadline() == T + 100
    t.add([cmd("past", at=-5, asset="a9")], T + 41)
    assert t.next_deadline() == T - 5          # "sweep now"


def test_stale_deadlines_are_compacted() -> None:
    t = table()
    t.add([cmd(f"c{i}", asset=f"a{i}", expires=10_000) for i in range(300)], T)
    t.sweep(T)
    for round_ in range(6):   # each hold/release re-arms the expiry: stale entries pile up
        for i in range(300):
            t.set_available(f"a{i}", False, T + round_)
            t.set_available(f"a{i}", True, T + round_)
    assert len(t._heap) < 4 * 300 + 1024
    assert t.next_deadline() == T + 10_000


# ------------------------------------------------------------------------------------ prune, restore, queries

def test_prune_forgets_old_final_commands_but_keeps_ids_idempotent() -> None:
    t = table()
    dispatched(t, cmd("done"))
    t.complete("done", T + 1)
    t.add([cmd("waiting", at=100, asset="a2")], T)
    assert t.prune(T + 1) == 0
    assert t.prune(T + 2) == 1
    assert t.get("done") is None and len(t) == 1
    assert t.add([cmd("done")], T + 3) == [] and t.complete("done", T + 3) == []
    assert t.counts()["COMPLETED"] == 0 and t.counts()["PENDING"] == 1


def test_prune_drops_an_exhausted_batch_but_its_ids_stay_known() -> None:
    t = table()
    t.add_batch(make_batch("b", [0, 10, 10], ["a1", "a2"], [0, 0, 1]), T)
    t.sweep(T)
    t.supersede_future(["a1"], T + 10, T + 1)
    t.sweep(T + 10)
    t.reject("b-0", "x", T + 10)
    t.reject("b-2", "x", T + 10)
    assert t.prune(T + 11) == 3 and len(t) == 0
    assert t.get("b-1") is None and t.add([cmd("b-1")], T + 12) == []
    assert t.add_batch(make_batch("b", [50], ["a1"], [0]), T + 12) == [] and len(t) == 0


def test_restore_requeues_in_flight_keeps_final_and_stays_idempotent() -> None:
    snapshots = [cmd("sent").evolve(S.DISPATCHED, attempts=1), cmd("acked", asset="a2").evolve(S.DISPATCHED)
                 .evolve(S.ACKNOWLEDGED), cmd("done", asset="a3").evolve(S.DISPATCHED).evolve(S.COMPLETED),
                 cmd("waiting", at=50, asset="a4")]
    t = table()
    changes = t.restore(snapshots, T + 5)
    assert edges(changes) == [("sent", S.DISPATCHED, S.PENDING, None), ("acked", S.ACKNOWLEDGED, S.PENDING, None)]
    assert t.get("sent").attempts == 1 and status(t, "done") is S.COMPLETED
    assert t.restore(snapshots, T + 6) == [] and t.add([cmd("done"), cmd("sent")], T + 6) == []
    t.sweep(T + 5)
    assert [c.command_id for c in t.due(T + 5)] == ["sent", "acked"]
    assert t.mark_dispatched("sent", T + 5).command.attempts == 2
    assert t.next_deadline() == T + 15


def test_restore_of_batch_rows_keeps_them_lazy_unless_they_changed() -> None:
    b = make_batch("b", [0, 10, 20, 30], ["a1", "a2", "a3", "a4"], [0, 1, 2, 3])
    t = table()
    t.add_batch(b, T)
    t.restore([b.command(0), b.command(1, S.SUPERSEDED), b.command(2).evolve(S.DISPATCHED, attempts=1)], T)
    assert t.commands() == [t.get("b-2")] and status(t, "b-2") is S.PENDING
    assert status(t, "b-1") is S.SUPERSEDED and t.counts()["SUPERSEDED"] == 1
    created = [c.command.command_id for c in t.sweep(T + 30) if c.event is E.COMMAND_CREATED]
    assert created == ["b-0", "b-3"] and len(t) == 4


def test_restore_overrides_a_replayed_lazy_supersession() -> None:
    b = make_batch("b", [0, 10], ["a1"], [0, 0])
    t = table()
    t.add_batch(b, T)
    t.supersede_future(["a1"], T, T + 10)
    t.restore([b.command(1).evolve(S.DISPATCHED, attempts=1)], T + 10)
    assert status(t, "b-1") is S.PENDING and status(t, "b-0") is S.SUPERSEDED
    assert t.counts()["SUPERSEDED"] == 1 and t.counts()["PENDING"] == 1 and len(t) == 2


def test_restored_held_command_is_released_by_sweep_when_its_asset_is_available() -> None:
    held = [cmd("h1").evolve(S.HELD), cmd("h2", asset="a2").evolve(S.HELD)]
    t = table()
    t.restore(held, T)
    t.set_available("a2", False, T)
    assert edges(t.sweep(T)) == [("h1", S.HELD, S.PENDING, None)]
    assert status(t, "h2") is S.HELD


def test_queries_counts_and_non_final() -> None:
    t = table()
    t.add_batch(make_batch("b", [0, 100], ["a1", "a2"], [0, 1]), T)
    dispatched(t, cmd("c1", asset="a3"))
    t.complete("c1", T + 1)
    assert [c.command_id for c in t.commands()] == ["c1", "b-0"]   # materialization order
    assert [c.command_id for c in t.commands(S.COMPLETED)] == ["c1"]
    assert [c.command_id for c in t.non_final()] == ["b-0", "b-1"]
    counts = t.counts()
    assert set(counts) == {s.value for s in S}
    assert (counts["PENDING"], counts["COMPLETED"], sum(counts.values()), len(t)) == (2, 1, 3, 3)
    assert t.get("b-7") is None and t.get("nope") is None and t.get("b-01") is None


@pytest.mark.parametrize("kwargs, message", [
    ({"ack_timeout_s": 0}, "ack_timeout_s: .* got 0"),
    ({"completion_timeout_s": float("inf")}, "completion_timeout_s: .* got inf"),
])
def test_constructor_validation(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CommandTable(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="retry: must be a RetryPolicy"):
        CommandTable(retry=3)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------ invariants

def _check_invariants(t: CommandTable, batches: list[CommandBatch], ids: set[str], swept_at: float | None) -> None:
    counts = t.counts()
    assert sum(counts.values()) == len(t)
    seen: dict[str, int] = dict.fromkeys(counts, 0)
    all_ids = ids | {b.command_id(i) for b in batches for i in range(len(b))}
    for cid in all_ids:
        c = t.get(cid)
        if c is not None:
            seen[c.status.value] += 1
    assert seen == counts
    for c in t.commands():
        assert t.get(c.command_id) == c
    if swept_at is None:
        return
    channels: dict[tuple[str, CommandType], int] = {}
    for c in t.commands():
        if not c.is_final and c.scheduled_time.timestamp() <= swept_at and c.command_type.is_setpoint:
            channels[c.channel] = channels.get(c.channel, 0) + 1
        if c.status is S.PENDING and c.scheduled_time.timestamp() <= swept_at:
            assert t.is_available(c.asset_id), c
    assert all(n == 1 for n in channels.values()), channels
    deadline = t.next_deadline()
    assert deadline is None or deadline > swept_at


def test_random_operations_keep_the_table_consistent() -> None:
    """Seeded random operations; after each one the invariants hold, and a table restored from the
    journal of all changes (plus the batches) has the same non-final commands."""
    rng = random.Random(2026)
    t = CommandTable(retry=RetryPolicy(max_attempts=3, base_delay_s=2.0, jitter=0.5), ack_timeout_s=5.0,
                     completion_timeout_s=8.0, rng_seed=1)
    assets = ["a1", "a2", "a3"]
    types_ = [CommandType.SET_CHARGE_RATE, CommandType.SET_POWER_LIMIT, CommandType.START_CHARGING]
    ids: set[str] = set()
    batches: list[CommandBatch] = []
    journal: dict[str, Command] = {}
    now = 0.0
    for step in range(1500):
        op = rng.random()
        swept_at = None
        changes: list[Change] = []
        if op < 0.15:
            cid = f"c{rng.randrange(400)}"
            ids.add(cid)
            changes = t.add([cmd(cid, at=now + rng.uniform(-5, 20), asset=rng.choice(assets),
                                 ctype=rng.choice(types_), priority=rng.randrange(2),
                                 expires=now + rng.uniform(0, 60) if rng.random() < 0.3 else None)], T + now)
        elif op < 0.2:
            n = rng.randrange(1, 12)
            b = make_batch(f"b{step}", sorted(now + rng.uniform(-3, 40) for _ in range(n)), assets,
                           [rng.randrange(3) for _ in range(n)], ctype=rng.choice(types_[:2]),
                           expires=[now + 100.0] * n)
            batches.append(b)
            t.add_batch(b, T + now)
        elif op < 0.5:
            now += rng.uniform(0, 3)
            changes = t.sweep(T + now)
            swept_at = T + now
            changes += [t.mark_dispatched(c.command_id, T + now) for c in t.due(T + now) if rng.random() < 0.8]
        elif op < 0.75:
            live = [c.command_id for c in t.commands() if c.status in (S.DISPATCHED, S.ACKNOWLEDGED)]
            if live:
                cid = rng.choice(live)
                answer = rng.choice(["ack", "ack", "complete", "fail", "time_out", "reject"])
                if answer == "ack":
                    changes = t.acknowledge(cid, T + now)
                elif answer == "complete":
                    changes = t.complete(cid, T + now)
                elif answer == "fail":
                    changes = t.fail(cid, "boom", T + now, retryable=rng.random() < 0.8)
                elif answer == "time_out":
                    changes = t.time_out(cid, T + now)
                else:
                    changes = t.reject(cid, "no", T + now)
        elif op < 0.85:
            changes = t.set_available(rng.choice(assets), rng.random() < 0.6, T + now)
        elif op < 0.9:
            changes = t.hold_in_flight(rng.choice(assets), "died", T + now)
        elif op < 0.95:
            changes = t.supersede_future([rng.choice(assets)], T + now + rng.uniform(-5, 10), T + now)
        else:
            t.prune(T + now - 30)
        journal.update((ch.command.command_id, ch.command) for ch in changes)
        _check_invariants(t, batches, ids, swept_at)

    fresh = CommandTable()
    for b in batches:
        fresh.add_batch(b, T + now)
    fresh.restore(journal.values(), T + now)
    assert {c.command_id for c in fresh.non_final()} == {c.command_id for c in t.non_final()}
    assert fresh.restore(journal.values(), T + now) == []


def test_waiting_for_an_unreachable_device_is_not_an_attempt():
    t = table(RetryPolicy(max_attempts=2, base_delay_s=1.0, jitter=0.0))
    dispatched(t, cmd("c1"))
    held = t.hold("c1", "device not connected", T + 1)             # the link was down: it never left
    assert [ch.command.status for ch in held] == [S.HELD, S.PENDING] and held[0].command.attempts == 0
    assert [c.command_id for c in t.due(T + 2)] == ["c1"]
    assert t.mark_dispatched("c1", T + 2).command.attempts == 1     # the first real attempt
    (retry,) = t.fail("c1", "device error", T + 3)                  # a real failure is retried as usual
    assert retry.command.status is S.PENDING and retry.event is E.COMMAND_RETRY_SCHEDULED
    t.sweep(T + 4)
    assert [c.command_id for c in t.due(T + 4)] == ["c1"]
    assert t.mark_dispatched("c1", T + 4).command.attempts == 2
    (final,) = t.fail("c1", "device error", T + 5)
    assert final.command.status is S.FAILED                          # and the limit still holds


# ------------------------------------------------------- gaps found by mutation testing (tests/tools/mutate.py)

def test_without_a_seed_retry_jitter_differs_between_tables() -> None:
    policy = RetryPolicy(max_attempts=3, base_delay_s=10.0, factor=2.0, max_delay_s=60.0, jitter=0.5)
    retry_at = []
    for _ in range(2):  # two sites restarted together must not retry in lockstep
        t = CommandTable(retry=policy)
        dispatched(t, cmd("c1"))
        retry_at.append(t.fail("c1", "busy", T)[0].retry_at)
    assert retry_at[0] != retry_at[1]


def test_a_command_added_after_a_batch_is_newer_than_its_rows_at_the_same_time_and_priority() -> None:
    t = table()
    t.add_batch(make_batch("b", [0], ["a1"], [0]), T)
    t.add([cmd("later", at=0)], T)
    t.sweep(T)
    assert status(t, "later") is S.PENDING and status(t, "b-0") is S.SUPERSEDED
    assert t.get("b-0").last_error == "superseded by later"


def test_a_batch_row_dispatched_before_it_is_due_keeps_its_place_in_creation_order() -> None:
    t = table()
    t.add([cmd("other", asset="a9"), cmd("older", at=0)], T)               # creation sequence 0, 1
    t.add_batch(make_batch("b", [0, 0, 0], ["a2", "a3", "a1"], [0, 1, 2]), T)  # rows 2, 3, 4
    t.mark_dispatched("b-2", T)  # materialized out of order, before the sweep
    t.sweep(T)
    assert status(t, "older") is S.SUPERSEDED and t.get("older").last_error == "superseded by b-2"
    assert status(t, "b-2") is S.DISPATCHED


def test_restored_batch_rows_keep_their_creation_order_whatever_order_restore_sees_them_in() -> None:
    b = make_batch("b", [0], ["a1"], [0])
    later = cmd("later", at=0)  # created after the batch: newer than its rows
    t = table()
    t.add_batch(b, T)
    t.restore([later, b.command(0).evolve(S.DISPATCHED, attempts=1)], T)
    t.sweep(T)
    assert status(t, "b-0") is S.SUPERSEDED and t.get("b-0").last_error == "superseded by later"
    assert [c.command_id for c in t.due(T)] == ["later"]


def test_restore_skips_pruned_batch_rows_and_rows_of_a_pruned_batch() -> None:
    b = make_batch("b", [0, 10], ["a1", "a2"], [0, 1])
    t = table()
    t.add_batch(b, T)
    t.sweep(T)
    t.reject("b-0", "x", T)
    assert t.prune(T + 1) == 1  # b-0 is forgotten; the batch still holds the lazy b-1
    assert t.restore([b.command(0).evolve(S.REJECTED, last_error="x")], T + 1) == []
    assert t.get("b-0") is None and len(t) == 1 and t.counts()["PENDING"] == 1
    t.sweep(T + 10)
    t.reject("b-1", "x", T + 10)
    assert t.prune(T + 11) == 1 and len(t) == 0  # the whole batch is dropped now
    assert t.restore([b.command(1), b.command(1).evolve(S.REJECTED)], T + 11) == []
    assert t.get("b-1") is None and len(t) == 0 and t.commands() == []


def test_final_commands_restored_from_the_journal_can_be_pruned() -> None:
    b = make_batch("b", [0], ["a2"], [0])
    t = table()
    t.add_batch(b, T)
    t.restore([cmd("done").evolve(S.DISPATCHED).evolve(S.COMPLETED),
               b.command(0).evolve(S.REJECTED, last_error="x")], T)
    assert t.prune(T) == 0  # final since T: not older than T
    assert t.prune(T + 1) == 2 and len(t) == 0 and t.counts()["COMPLETED"] == 0
    assert t.get("done") is None and t.add([cmd("done")], T + 2) == [] and t.add_batch(b, T + 2) == []


def test_a_sweep_after_prune_skips_the_deadlines_of_what_was_pruned() -> None:
    t = table(dedupe_window_s=None)  # no dedupe-window expiry: only the deadlines the test sets
    t.add([cmd("c1", expires=100), cmd("c2", asset="a2", at=50)], T)
    t.add_batch(make_batch("b", [10], ["a3"], [0], expires=[100]), T)
    t.sweep(T)
    t.reject("c1", "x", T)
    t.sweep(T + 10)
    t.reject("b-0", "x", T + 10)
    assert t.prune(T + 11) == 2
    assert t.next_deadline() == T + 50  # the pruned commands' expiries are not reported
    assert edges(t.sweep(T + 100)) == []  # c2 falls due quietly and nothing expires
    assert status(t, "c2") is S.PENDING and len(t) == 1 and t.next_deadline() is None


def test_compaction_keeps_the_live_deadlines_when_only_part_of_the_commands_are_re_armed() -> None:
    t = table()
    t.add([cmd(f"c{i}", asset=f"a{i}", expires=10_000 + i) for i in range(300)], T)
    t.sweep(T)
    for round_ in range(8):  # only the even assets are held and released: their stale expiries pile up
        for i in range(0, 300, 2):
            t.set_available(f"a{i}", False, T + round_)
            t.set_available(f"a{i}", True, T + round_)
    assert len(t._heap) < 4 * 300 + 1024
    assert t.next_deadline() == T + 10_000
    changes = t.sweep(T + 10_300)
    assert sorted(c.command.command_id for c in changes) == sorted(f"c{i}" for i in range(300))  # each once
    assert {c.event for c in changes} == {E.COMMAND_EXPIRED}


def test_sweeping_often_between_batch_rows_does_not_pile_up_deadlines() -> None:
    t = table()
    t.add_batch(make_batch("b", [0, 3600], ["a1"], [0, 0]), T)
    for s in range(0, 3600, 2):
        t.sweep(T + s)
    assert len(t._heap) <= 2 and t.next_deadline() == T + 3600


def test_supersede_future_leaves_batch_rows_materialized_out_of_order_to_their_own_state() -> None:
    t = table()
    t.add_batch(make_batch("b", [0, 10, 20, 30], ["a1", "a2"], [0, 0, 0, 1]), T)
    t.mark_dispatched("b-2", T)  # b-2 is sent before it is due: materialized out of order
    changes = t.supersede_future(["a1"], T + 20, T)
    assert edges(changes) == []  # in flight: not a not-yet-dispatched command
    assert status(t, "b-2") is S.DISPATCHED and t.counts()["SUPERSEDED"] == 0
    t.fail("b-2", "busy", T + 1)  # now retry-pending (PENDING): superseded once, as a materialized command
    changes = t.supersede_future(["a1"], T + 20, T + 2)
    assert edges(changes) == [("b-2", S.PENDING, S.SUPERSEDED, E.COMMAND_SUPERSEDED)]
    assert t.counts()["SUPERSEDED"] == 1 and t.counts()["PENDING"] == 3 and len(t) == 4
    assert [c.command_id for c in t.non_final()] == ["b-0", "b-1", "b-3"]


def test_non_final_lists_a_batch_row_materialized_out_of_order_once() -> None:
    t = table()
    t.add_batch(make_batch("b", [0, 10, 20], ["a1", "a2", "a3"], [0, 1, 2]), T)
    t.mark_dispatched("b-2", T)
    assert [c.command_id for c in t.non_final()] == ["b-2", "b-0", "b-1"]


def test_a_lazily_superseded_batch_row_cannot_be_dispatched() -> None:
    t = table()
    t.add_batch(make_batch("b", [0, 10], ["a1"], [0, 0]), T)
    t.supersede_future(["a1"], T + 10, T)
    with pytest.raises(InvalidCommandTransition, match=r"b-1: only a PENDING command can be dispatched, it is "
                                                         r"final \(superseded or pruned\)"):
        t.mark_dispatched("b-1", T + 10)


def test_an_id_that_merely_looks_like_a_batch_row_is_a_plain_command() -> None:
    t = table()
    assert [c.command.command_id for c in t.add([cmd("evening-0")], T)] == ["evening-0"]
    assert status(t, "evening-0") is S.PENDING and len(t) == 1


def test_hold_of_an_in_flight_command_releases_it_at_once_when_its_asset_is_healthy() -> None:
    t = table()
    dispatched(t, cmd("c1"))
    assert edges(t.hold("c1", "link down", T + 1)) == [("c1", S.DISPATCHED, S.HELD, E.COMMAND_HELD),
                                                       ("c1", S.HELD, S.PENDING, None)]
    assert [c.command_id for c in t.due(T + 1)] == ["c1"]  # sent again
    assert t.hold("c1", "again", T + 1) == [] and t.hold("nope", "x", T + 1) == []  # not in flight


def test_hold_of_an_in_flight_command_of_an_unavailable_asset_keeps_it_held() -> None:
    t = table()
    dispatched(t, cmd("c1"))
    t.set_available("a1", False, T)
    assert edges(t.hold("c1", "link down", T + 1)) == [("c1", S.DISPATCHED, S.HELD, E.COMMAND_HELD)]
    assert t.get("c1").last_error == "link down" and t.due(T + 1) == []


def test_a_retry_released_at_its_retry_time_is_due_at_once_and_leaves_no_deadline_behind() -> None:
    t = table(dedupe_window_s=None)  # no dedupe-window expiry: only the retry deadline
    dispatched(t, cmd("c1"))
    t.set_available("a1", False, T + 1)
    [change] = t.fail("c1", "busy", T + 1)
    assert change.command.status is S.HELD and change.retry_at == T + 2
    t.set_available("a1", True, T + 2)  # released exactly at its retry time
    assert [c.command_id for c in t.due(T + 2)] == ["c1"]
    assert t.next_deadline() is None


def test_add_refuses_anything_but_commands_naming_it_and_adds_nothing() -> None:
    t = table()
    with pytest.raises(TypeError, match=r"add: expected Command objects, got \('c2', 'a1'\)"):
        t.add([cmd("c1"), ("c2", "a1")], T)  # type: ignore[list-item]
    assert len(t) == 0 and t.get("c1") is None


# ----------------------------------------------------------------------- restore from a compacted journal

def test_restored_final_rows_are_known_without_a_snapshot_and_out_of_range_or_masked_rows_are_ignored() -> None:
    b = make_batch("b", [0, 10, 20, 30], ["a1", "a2"], [0, 1, 0, 1])
    t = table()
    t.add_batch(b, T)
    t.restore_mask("b", [1], T)
    t.restore_final_rows("b", [0, 1, 4, 9, -1])  # b-1 is masked (SUPERSEDED), 4, 9 and -1 are no rows
    assert t.get("b-0") is None and status(t, "b-1") is S.SUPERSEDED
    assert t.counts()["PENDING"] == 2 and t.counts()["SUPERSEDED"] == 1 and len(t) == 3
    assert t.add([cmd("b-0")], T) == []  # still known: never applied again
    with pytest.raises(InvalidCommandTransition):
        t.mark_dispatched("b-0", T)
    created = [c.command.command_id for c in t.sweep(T + 30) if c.event is E.COMMAND_CREATED]
    assert created == ["b-2", "b-3"]


def test_restored_final_rows_at_the_head_of_a_batch_move_its_next_deadline_to_the_first_row_to_come() -> None:
    t = table()
    t.add_batch(make_batch("b", [0, 10, 20, 30], ["a1"], [0, 0, 0, 0]), T)
    t.restore_final_rows("b", [0, 1])
    assert t.next_deadline() == T + 20
    t.restore_final_rows("b", [3, 2])  # now every row has ended: nothing left to wait for
    assert t.next_deadline() is None and len(t) == 0
    assert t.prune(T) == 0 and t.has_batch("b") and t.known_ids() == 1  # dropped, its id still known


def test_a_send_with_a_granted_value_counts_an_attempt_like_any_send_and_records_what_was_granted() -> None:
    t = table()
    t.add([cmd("c1", value=11.0)], T)
    t.sweep(T)
    sent = t.mark_dispatched("c1", T, granted=7.4).command
    assert sent.attempts == 1 and sent.granted == 7.4 and sent.value == 11.0
    t.fail("c1", "busy", T + 1)
    assert t.mark_dispatched("c1", T + 2, granted=6.0).command.attempts == 2


def test_a_hold_of_a_retried_command_is_no_retry_and_carries_no_retry_time() -> None:
    t = table()
    dispatched(t, cmd("c1"))
    assert t.fail("c1", "busy", T + 1)[0].retry_at == T + 2  # the first attempt failed: retried at T + 2
    t.mark_dispatched("c1", T + 2)
    held, released = t.hold("c1", "link down", T + 3)
    assert held.command.status is S.HELD and held.retry_at is None and released.retry_at is None
    t.mark_dispatched("c1", T + 3)
    [held] = t.hold_in_flight("a1", "actor died", T + 4)
    assert held.command.status is S.HELD and held.retry_at is None


def test_an_id_one_past_the_last_row_of_a_stored_batch_is_a_plain_command() -> None:
    t = table()
    t.add_batch(make_batch("b", [0, 10], ["a1"], [0, 0]), T)
    assert [c.command.command_id for c in t.add([cmd("b-2", asset="a2")], T)] == ["b-2"]
    assert status(t, "b-2") is S.PENDING and t.get("b-2").asset_id == "a2" and len(t) == 3


def test_rows_of_a_dropped_batch_can_be_neither_sent_nor_rejected() -> None:
    t = table()
    t.add_batch(make_batch("b", [0], ["a1"], [0]), T)
    t.sweep(T)
    t.reject("b-0", "x", T)
    assert t.prune(T + 1) == 1 and t.has_batch("b") and len(t) == 0  # the batch is dropped, its ids known
    with pytest.raises(InvalidCommandTransition, match="final"):
        t.mark_dispatched("b-0", T + 1)
    assert t.reject("b-0", "again", T + 1) == [] and t.get("b-0") is None


def test_releasing_or_holding_a_retry_pending_command_is_no_new_retry_and_carries_no_retry_time() -> None:
    t = table()
    dispatched(t, cmd("c1"))
    t.set_available("a1", False, T)
    assert t.fail("c1", "busy", T + 1)[0].retry_at == T + 2  # retried, and held while its asset is away
    [released] = t.set_available("a1", True, T + 1.5)
    assert released.command.status is S.PENDING and released.retry_at is None
    [held] = t.set_available("a1", False, T + 1.6)
    assert held.command.status is S.HELD and held.retry_at is None
    t.set_available("a1", True, T + 2)
    sent = t.mark_dispatched("c1", T + 2)
    assert sent.retry_at is None and t.acknowledge("c1", T + 3)[0].retry_at is None
    assert t.complete("c1", T + 4)[0].retry_at is None


def test_any_positive_number_of_seconds_is_a_valid_timeout_fractions_included() -> None:
    t = table(ack_timeout_s=0.5, completion_timeout_s=1, dedupe_window_s=0.25)
    t.set_ack_timeout("a2", 0.1)
    assert (t.ack_timeout("a1"), t.ack_timeout("a2"), t.completion_timeout_s, t.dedupe_window_s) == \
        (0.5, 0.1, 1.0, 0.25)
    dispatched(t, cmd("c1"))
    assert t.next_deadline() == T + 0.5
