"""Clocks and the synchronous event bus."""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timezone

import pytest

from runtime.core.clock import RealClock, VirtualClock, to_epoch
from runtime.core.events import Event, EventBus, EventType

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def test_virtual_clock_fires_timers_in_deadline_order_at_their_deadline():
    clock = VirtualClock(T0)
    fired = []
    clock.call_later(30, lambda: fired.append(("b", clock.time() - T0.timestamp())))
    clock.call_later(10, lambda: fired.append(("a", clock.time() - T0.timestamp())))
    clock.call_later(100, lambda: fired.append(("c", clock.time())))
    clock.advance(60)
    assert fired == [("a", 10.0), ("b", 30.0)]
    assert clock.time() == T0.timestamp() + 60


def test_virtual_clock_timer_set_by_a_timer_fires_in_the_same_advance():
    clock = VirtualClock(T0)
    fired = []
    clock.call_later(5, lambda: clock.call_later(5, lambda: fired.append(clock.time() - T0.timestamp())))
    clock.advance(20)
    assert fired == [10.0]


def test_cancelled_timer_never_fires():
    clock = VirtualClock(T0)
    fired = []
    h = clock.call_later(1, lambda: fired.append(1))
    h.cancel()
    clock.advance(5)
    assert fired == [] and clock.next_deadline() is None


def test_virtual_clock_refuses_to_go_back():
    with pytest.raises(ValueError, match="seconds must be >= 0"):
        VirtualClock(T0).advance(-1)


def test_naive_datetimes_are_refused():
    with pytest.raises(ValueError, match="naive datetime"):
        to_epoch(datetime(2026, 1, 1))


def test_raising_timer_callback_does_not_stop_the_clock(caplog):
    clock = VirtualClock(T0)
    fired = []
    clock.call_later(1, lambda: 1 / 0)
    clock.call_later(2, lambda: fired.append(2))
    with caplog.at_level(logging.ERROR):
        clock.advance(3)
    assert fired == [2] and "timer callback" in caplog.text


def test_real_clock_fires_and_its_thread_stops():
    clock = RealClock()
    done = threading.Event()
    clock.call_later(0.01, done.set)
    assert done.wait(2)
    clock.stop()
    assert not any(t.name == "clock-timers" and t.is_alive() for t in threading.enumerate())


def test_bus_delivers_by_type_and_to_catch_all_subscribers():
    bus = EventBus(clock=lambda: T0)
    typed, every = [], []
    bus.subscribe(EventType.COMMAND_CREATED, typed.append)
    bus.subscribe(None, every.append)
    bus.emit(EventType.COMMAND_CREATED, {"command_id": "c1"})
    bus.emit(EventType.STATE_CHANGED, {"asset_id": "a"})
    assert [e.payload for e in typed] == [{"command_id": "c1"}]
    assert [e.type for e in every] == [EventType.COMMAND_CREATED, EventType.STATE_CHANGED]
    assert every[0].timestamp == T0


def test_raising_subscriber_is_logged_and_others_still_receive(caplog):
    bus = EventBus()
    got = []
    bus.subscribe(EventType.COMMAND_FAILED, lambda e: 1 / 0)
    bus.subscribe(EventType.COMMAND_FAILED, got.append)
    with caplog.at_level(logging.ERROR):
        bus.emit(EventType.COMMAND_FAILED, {"command_id": "x"})
    assert len(got) == 1 and "raised on COMMAND_FAILED" in caplog.text


def test_unsubscribe_stops_delivery():
    bus = EventBus()
    got = []
    unsubscribe = bus.subscribe(EventType.TELEMETRY, got.append)
    unsubscribe()
    bus.emit(EventType.TELEMETRY, {})
    assert got == []


def test_subscribe_refuses_a_non_event_type():
    with pytest.raises(TypeError, match="EventType"):
        EventBus().subscribe("COMMAND_CREATED", print)  # type: ignore[arg-type]


def test_event_record_reads_back_from_the_journal_as_plain_data(tmp_path):
    from runtime.core.journal import Journal
    e = Event(EventType.STATE_CHANGED, T0, {"asset_id": "a", "when": T0, "kind": EventType.TELEMETRY,
                                            "pair": ("x", 1)})
    with Journal(tmp_path / "ev.jnl") as j:
        j.append({"k": "ev", "e": e.to_record()})
    [rec] = list(Journal.read(tmp_path / "ev.jnl"))
    assert rec["e"] == {"type": "STATE_CHANGED", "ts": T0.timestamp(),
                        "payload": {"asset_id": "a", "when": T0.isoformat(), "kind": "TELEMETRY",
                                    "pair": ["x", 1]}}
