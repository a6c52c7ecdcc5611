"""Specification of DispatchEngine: the synchronous seed API over the command table.

The engine publishes one event per command change on its bus, in order; these tests read the bus.
Schedules are stubbed (a fake ``runtime.core.schedule`` module returning a hand-built CommandBatch) and
adapters are tiny fakes, so only the engine is under test here.
"""

from __future__ import annotations

import sys
import types
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np
import pytest

from runtime.core.batch import CommandBatch
from runtime.core.clock import to_datetime
from runtime.core.commands import Command, CommandStatus, CommandType, InvalidCommandTransition
from runtime.core.events import Event, EventBus, EventType
from runtime.core.retry import RetryPolicy
from runtime.core.statemachine import battery_machine, ev_charger_machine
from runtime.engine.dispatch import DispatchEngine

S = CommandStatus
E = EventType
T0 = datetime(2026, 1, 1, 8, 0, tzinfo=timezone.utc)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


class FakeAdapter:
    """translate() returns a small dict, or raises for values above ``limit``."""

    def __init__(self, limit: float = 100.0) -> None:
        self.limit = limit
        self.seen: list[str] = []

    def translate(self, cmd: Command) -> dict[str, Any]:
        self.seen.append(cmd.command_id)
        if cmd.value > self.limit:
            raise ValueError(f"{cmd.value} kW is above the {self.limit} kW limit")
        return {"action": "SetLimit", "payload": {"limit_w": cmd.value * 1000}}


class FakeRegistry:
    def __init__(self, adapters: dict[str, FakeAdapter]) -> None:
        self.adapters = adapters

    def get(self, asset_id: str) -> FakeAdapter:
        return self.adapters[asset_id]


class Recorder:
    def __init__(self, bus: EventBus) -> None:
        self.events: list[Event] = []
        bus.subscribe(None, self.events.append)

    def types(self, commands_only: bool = True) -> list[EventType]:
        return [e.type for e in self.events if not commands_only or e.type.value.startswith("COMMAND_")]

    def clear(self) -> None:
        self.events.clear()


def cmd(cid: str, seconds: float = 0.0, asset: str = "ev1", value: float = 7.0,
        ctype: CommandType = CommandType.SET_CHARGE_RATE) -> Command:
    return Command(cid, asset, ctype, value, at(seconds))


@pytest.fixture
def bus() -> EventBus:
    return EventBus(clock=lambda: T0)


@pytest.fixture
def rec(bus: EventBus) -> Recorder:
    return Recorder(bus)


def engine_on(bus: EventBus, **kw: Any) -> DispatchEngine:
    kw.setdefault("retry", RetryPolicy(max_attempts=2, base_delay_s=5.0, jitter=0.0))
    return DispatchEngine(event_bus=bus, clock=lambda: T0, **kw)


def test_full_lifecycle_publishes_events_in_order_with_payload(bus: EventBus, rec: Recorder) -> None:
    engine = engine_on(bus)
    adapter = FakeAdapter()
    assert engine.submit(cmd("c1")).status is S.PENDING
    assert [c.command_id for c in engine.get_pending_commands(at(0))] == ["c1"]
    request = engine.dispatch_command(engine.get("c1"), adapter, now=at(1))
    assert request == {"action": "SetLimit", "payload": {"limit_w": 7000.0}}
    assert engine.acknowledge("c1", at(2)).status is S.ACKNOWLEDGED
    assert engine.complete("c1", at(3)).status is S.COMPLETED
    assert rec.types() == [E.COMMAND_CREATED, E.COMMAND_DISPATCHED, E.COMMAND_ACKNOWLEDGED, E.COMMAND_COMPLETED]
    created, sent, acked, done = rec.events
    assert created.payload == {
        "command_id": "c1", "asset_id": "ev1", "command_type": "SET_CHARGE_RATE", "value": 7.0,
        "status": "PENDING", "previous_status": None, "attempts": 0, "error": None,
        "scheduled_time": T0.timestamp(), "priority": 0}
    assert sent.payload["request"] == request and sent.payload["attempts"] == 1 and sent.timestamp == at(1)
    assert (acked.payload["previous_status"], done.payload["status"]) == ("DISPATCHED", "COMPLETED")
    assert engine.commands(S.COMPLETED) == [engine.get("c1")]


def test_duplicate_submit_is_applied_once(bus: EventBus, rec: Recorder) -> None:
    engine = engine_on(bus)
    first = engine.submit(cmd("c1"))
    assert engine.submit(cmd("c1", value=1.0)) == first
    assert rec.types() == [E.COMMAND_CREATED] and len(engine.commands()) == 1


def test_translate_error_rejects_the_command_and_returns_none(bus: EventBus, rec: Recorder) -> None:
    engine = engine_on(bus)
    engine.submit(cmd("big", value=500.0))
    (due,) = engine.get_pending_commands(at(0))
    assert engine.dispatch_command(due, FakeAdapter(limit=50.0)) is None
    assert engine.get("big").status is S.REJECTED
    assert engine.get("big").last_error == "500.0 kW is above the 50.0 kW limit"
    assert rec.types() == [E.COMMAND_CREATED, E.COMMAND_REJECTED]
    assert rec.events[-1].payload["error"] == "500.0 kW is above the 50.0 kW limit"


def test_dispatch_uses_the_registry_and_refuses_commands_that_are_not_pending(bus: EventBus) -> None:
    adapter = FakeAdapter()
    engine = engine_on(bus, adapter_registry=FakeRegistry({"ev1": adapter}))
    engine.submit(cmd("c1"))
    (due,) = engine.get_pending_commands(at(0))
    assert engine.dispatch_command(due) is not None and adapter.seen == ["c1"]
    with pytest.raises(InvalidCommandTransition, match="c1: only a PENDING command .* DISPATCHED"):
        engine.dispatch_command(due)
    with pytest.raises(ValueError, match="no adapter given and no adapter_registry"):
        other = engine_on(EventBus())
        other.submit(cmd("c2"))
        other.dispatch_command(other.get("c2"))


def test_failures_retry_with_backoff_then_fail(bus: EventBus, rec: Recorder) -> None:
    engine = engine_on(bus)
    adapter = FakeAdapter()
    engine.submit(cmd("c1"))
    engine.dispatch_command(engine.get_pending_commands(at(0))[0], adapter, now=at(0))
    retried = engine.fail("c1", "busy", at(1))
    assert (retried.status, retried.last_error) == (S.PENDING, "busy")
    assert rec.events[-1].type is E.COMMAND_RETRY_SCHEDULED and rec.events[-1].payload["retry_at"] == at(6).timestamp()
    assert engine.get_pending_commands(at(5)) == []
    engine.dispatch_command(engine.get_pending_commands(at(6))[0], adapter, now=at(6))
    assert engine.fail("c1", "busy", at(7)).status is S.FAILED
    assert rec.types()[-2:] == [E.COMMAND_DISPATCHED, E.COMMAND_FAILED]


def test_check_timeouts_returns_timed_out_commands(bus: EventBus, rec: Recorder) -> None:
    engine = engine_on(bus, ack_timeout_s=10.0)
    adapter = FakeAdapter()
    engine.submit(cmd("c1"))
    engine.dispatch_command(engine.get_pending_commands(at(0))[0], adapter, now=at(0))
    assert engine.check_timeouts(at(9)) == []
    (retry,) = engine.check_timeouts(at(10))
    assert retry.status is S.PENDING and "no acknowledgement" in (retry.last_error or "")
    engine.dispatch_command(engine.get_pending_commands(at(15))[0], adapter, now=at(15))
    (final,) = engine.check_timeouts(at(25))
    assert final.status is S.TIMED_OUT and final.attempts == 2
    assert rec.types()[-1] is E.COMMAND_TIMED_OUT


def test_state_machine_faults_hold_and_reset_releases(bus: EventBus, rec: Recorder) -> None:
    engine = engine_on(bus)
    charger = ev_charger_machine("ev1", event_bus=bus)
    engine.submit(cmd("c1"))
    engine.get_pending_commands(at(0))
    rec.clear()
    charger.trigger("fault")
    # The engine reacts inside the bus's delivery of STATE_CHANGED, so a subscriber registered
    # for all types may see COMMAND_HELD first: compare without order.
    assert sorted(rec.types(commands_only=False)) == sorted([E.STATE_CHANGED, E.COMMAND_HELD])
    assert engine.get("c1").status is S.HELD and engine.get_pending_commands(at(1)) == []
    engine.submit(cmd("c2", seconds=2, ctype=CommandType.SET_POWER_LIMIT))
    engine.get_pending_commands(at(2))
    assert engine.get("c2").status is S.HELD            # falls due while faulted
    rec.clear()
    charger.trigger("reset")
    assert rec.types(commands_only=False) == [E.STATE_CHANGED]   # a release publishes no command event
    assert [c.command_id for c in engine.get_pending_commands(at(3))] == ["c1", "c2"]


def test_unavailable_battery_and_manual_availability(bus: EventBus) -> None:
    engine = engine_on(bus)
    battery = battery_machine("bat1", event_bus=bus)
    engine.submit(cmd("b1", asset="bat1", ctype=CommandType.SET_DISCHARGE_RATE))
    battery.trigger("fault")
    assert engine.get_pending_commands(at(0)) == []
    battery.trigger("reset")
    assert [c.command_id for c in engine.get_pending_commands(at(0))] == ["b1"]
    engine.set_asset_available("bat1", False, at(0))
    assert engine.get("b1").status is S.HELD
    engine.set_asset_available("bat1", True, at(0))
    assert engine.get("b1").status is S.PENDING
    engine.close()
    battery.trigger("fault")
    assert engine.get("b1").status is S.PENDING         # no longer listening


def test_supersession_and_late_answer_ignored(bus: EventBus, rec: Recorder) -> None:
    engine = engine_on(bus)
    engine.submit(cmd("old"))
    engine.dispatch_command(engine.get_pending_commands(at(0))[0], FakeAdapter(), now=at(0))
    engine.submit(cmd("new", seconds=5, value=3.0))
    assert [c.command_id for c in engine.get_pending_commands(at(5))] == ["new"]
    assert engine.get("old").status is S.SUPERSEDED
    rec.clear()
    assert engine.complete("old", at(6)).status is S.SUPERSEDED and rec.events == []


def test_naive_or_non_datetime_now_is_rejected(bus: EventBus) -> None:
    engine = engine_on(bus)
    with pytest.raises(ValueError, match="now: naive datetime"):
        engine.get_pending_commands(datetime(2026, 1, 1, 8))
    with pytest.raises(ValueError, match="now: naive datetime"):
        engine.submit(cmd("c1"), now=datetime(2026, 1, 1, 8))
    with pytest.raises(TypeError, match="now: must be a tz-aware datetime"):
        engine.check_timeouts(1234.0)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------ schedules

def _batch(batch_id: str, offsets: list[float], codes: list[int], assets: list[str],
           created_at: float | None) -> CommandBatch:
    n = len(offsets)
    return CommandBatch(batch_id, np.asarray(offsets, dtype=float) + T0.timestamp(), np.asarray(codes), assets,
                        np.full(n, CommandBatch.type_code(CommandType.SET_CHARGE_RATE)),
                        np.arange(1.0, n + 1.0), created_at=created_at)


@pytest.fixture
def fake_schedule(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, Any, dict[str, Any]]]:
    """Replace runtime.core.schedule: the 'schedule' argument is a tuple (batch_id, offsets, codes, assets)."""
    calls: list[tuple[Any, Any, dict[str, Any]]] = []

    def schedule_to_commands(df: Any, asset_map: Any = None, **kw: Any) -> CommandBatch:
        calls.append((df, asset_map, kw))
        return _batch(*df, created_at=kw.get("created_at"))

    module = types.ModuleType("runtime.core.schedule")
    module.schedule_to_commands = schedule_to_commands  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "runtime.core.schedule", module)
    return calls


def test_schedule_is_stored_lazily_and_every_command_is_announced_when_the_schedule_arrives(
        bus: EventBus, rec: Recorder, fake_schedule: list[Any]) -> None:
    engine = engine_on(bus)
    batch = engine.schedule_to_commands(("s1", [0, 0, 300], [0, 1, 0], ["ev1", "ev2"]), {"ev_1": "ev1"},
                                        now=at(-60), priority=1)
    assert fake_schedule[0][1:] == ({"ev_1": "ev1"}, {"priority": 1, "created_at": at(-60).timestamp()})
    assert len(batch) == 3 and engine.commands() == []   # stored as columns: nothing materialized yet
    received, *created = rec.events
    assert received.type is E.SCHEDULE_RECEIVED and received.payload == {
        "batch_id": "s1", "commands": 3, "assets": 2, "start": T0.timestamp(), "end": at(300).timestamp()}
    assert [e.type for e in created] == [E.COMMAND_CREATED] * 3      # one per command, as the seed describes
    assert [e.payload["command_id"] for e in created] == ["s1-0", "s1-1", "s1-2"]
    assert created[2].payload == {
        "command_id": "s1-2", "asset_id": "ev1", "command_type": "SET_CHARGE_RATE", "value": 3.0,
        "status": "PENDING", "previous_status": None, "attempts": 0, "error": None,
        "scheduled_time": at(300).timestamp(), "priority": 0}
    assert engine.get("s1-2").status is S.PENDING and engine.get("s1-2").created_at == at(-60)
    rec.clear()
    assert [c.command_id for c in engine.get_pending_commands(at(0))] == ["s1-0", "s1-1"]
    assert rec.types() == []                           # falling due does not announce them a second time
    assert len(engine.commands()) == 2


def test_nobody_listening_to_command_created_costs_no_event_per_row(fake_schedule: list[Any]) -> None:
    bus = EventBus(clock=lambda: T0)
    received: list[Event] = []
    bus.subscribe(E.SCHEDULE_RECEIVED, received.append)
    published: list[Event] = []
    real_publish = bus.publish
    bus.publish = lambda event: (published.append(event), real_publish(event))  # type: ignore[method-assign]
    engine = engine_on(bus)
    engine.schedule_to_commands(("s1", [0, 0, 300], [0, 1, 0], ["ev1", "ev2"]), now=at(0))
    assert [e.type for e in published] == [E.SCHEDULE_RECEIVED] and len(received) == 1


def test_a_resubmitted_batch_id_changes_nothing(bus: EventBus, rec: Recorder, fake_schedule: list[Any]) -> None:
    engine = engine_on(bus)
    engine.schedule_to_commands(("s1", [0, 300], [0, 0], ["ev1"]), now=at(0))
    rec.clear()
    engine.schedule_to_commands(("s1", [0, 300], [0, 0], ["ev1"]), now=at(10))   # the same batch, retried
    assert rec.events == [] and engine.get("s1-1").status is S.PENDING


def test_the_command_the_caller_holds_shows_its_current_state(bus: EventBus, fake_schedule: list[Any]) -> None:
    engine = engine_on(bus)
    batch = engine.schedule_to_commands(("s1", [0], [0], ["ev1"]), now=at(0))
    held_from_schedule = batch[0]
    (cmd_,) = engine.get_pending_commands(at(0))
    assert cmd_.status is S.PENDING and cmd_ == engine.get("s1-0")
    engine.dispatch_command(cmd_, FakeAdapter(), now=at(1))
    assert cmd_.status is S.DISPATCHED and cmd_.attempts == 1       # the seed's loop sees its own progress
    assert held_from_schedule.status is S.DISPATCHED
    engine.complete("s1-0", at(2))
    assert cmd_.status is S.COMPLETED and isinstance(cmd_.snapshot, Command)
    submitted = engine.submit(cmd("c1"), now=at(3))
    assert submitted is not None and submitted.status is S.PENDING
    engine.reject("c1", "no", at(4))
    assert submitted.status is S.REJECTED and submitted.last_error == "no"
    with pytest.raises(AttributeError):
        submitted.status = S.PENDING  # type: ignore[misc]  # a view cannot be changed behind the engine's back


def test_a_new_schedule_replaces_the_future_of_the_old_one(
        bus: EventBus, rec: Recorder, fake_schedule: list[Any]) -> None:
    engine = engine_on(bus)
    engine.schedule_to_commands(("old", [0, 300, 600], [0, 0, 0], ["ev1"]), now=at(0))
    engine.get_pending_commands(at(0))
    rec.clear()
    engine.schedule_to_commands(("new", [300], [0], ["ev1"]), now=at(100))
    assert rec.types(commands_only=False) == [E.SCHEDULE_RECEIVED, E.COMMAND_SUPERSEDED, E.COMMAND_SUPERSEDED,
                                              E.COMMAND_CREATED]
    assert [e.payload["command_id"] for e in rec.events[1:]] == ["old-1", "old-2", "new-0"]
    assert engine.get("old-0").status is S.PENDING
    assert [c.command_id for c in engine.get_pending_commands(at(600))] == ["new-0"]
    assert engine.get("old-0").status is S.SUPERSEDED


def test_replace_false_keeps_the_old_schedule(bus: EventBus, rec: Recorder, fake_schedule: list[Any]) -> None:
    engine = engine_on(bus)
    engine.schedule_to_commands(("old", [300], [0], ["ev1"]), now=at(0))
    engine.schedule_to_commands(("extra", [600], [0], ["ev1"]), now=at(0), replace=False)
    assert engine.get("old-0").status is S.PENDING and E.COMMAND_SUPERSEDED not in rec.types()
    assert to_datetime(float(engine.table.next_deadline() or 0)) == at(300)


def test_omitted_now_follows_the_callers_time_line_not_the_wall_clock(bus: EventBus) -> None:
    class Fake:
        def translate(self, c: Command) -> dict[str, Any]:
            return {"ok": c.command_id}
    # the engine's clock says T0 + 1 day; the caller replays a schedule at T0
    engine = DispatchEngine(event_bus=bus, clock=lambda: at(86_400), ack_timeout_s=10.0,
                            retry=RetryPolicy(max_attempts=1, jitter=0.0))
    engine.submit(cmd("c1"), now=at(0))
    [due] = engine.get_pending_commands(at(0))
    engine.dispatch_command(due, Fake())          # no now: dispatched at the caller's T0, not T0 + 1 day
    assert engine.check_timeouts(at(5)) == []
    [timed_out] = engine.check_timeouts(at(10))
    assert timed_out.command_id == "c1" and timed_out.status is CommandStatus.TIMED_OUT
