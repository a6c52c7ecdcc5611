"""The asset state machines, row by row: every (state, trigger) pair either follows the issue's table or
raises InvalidTransition naming the asset, the state and the trigger."""

from __future__ import annotations

import dataclasses

import pytest

from runtime.core.events import EventBus, EventType
from runtime.core.statemachine import (BATTERY_TRANSITIONS, BatteryState as B, EVChargerState as E, InvalidTransition,
                                       StateMachine, Transition, battery_machine, ev_charger_machine)

# The tables exactly as the issue states them: trigger -> {source: destination}.
EV_TABLE = {
    "plug_in": {E.AVAILABLE: E.PREPARING},
    "start_charge": {E.PREPARING: E.CHARGING},
    "suspend": {E.CHARGING: E.SUSPENDED, E.PREPARING: E.SUSPENDED},
    "resume": {E.SUSPENDED: E.CHARGING},
    "complete": {E.CHARGING: E.FINISHING, E.SUSPENDED: E.FINISHING},
    "unplug": {E.FINISHING: E.AVAILABLE, E.PREPARING: E.AVAILABLE, E.SUSPENDED: E.AVAILABLE},
    "fault": {s: E.FAULTED for s in E if s is not E.UNAVAILABLE},
    "reset": {E.FAULTED: E.AVAILABLE},
    "disable": {E.AVAILABLE: E.UNAVAILABLE, E.FAULTED: E.UNAVAILABLE},
    "enable": {E.UNAVAILABLE: E.AVAILABLE},
}
BATTERY_TABLE = {
    "charge": {B.IDLE: B.CHARGING, B.DISCHARGING: B.CHARGING},
    "discharge": {B.IDLE: B.DISCHARGING, B.CHARGING: B.DISCHARGING},
    "stop": {B.CHARGING: B.IDLE, B.DISCHARGING: B.IDLE},
    "standby": {B.IDLE: B.STANDBY},
    "activate": {B.STANDBY: B.IDLE},
    "fault": {s: B.FAULTED for s in B},
    "reset": {B.FAULTED: B.IDLE},
}


def _force(sm: StateMachine, state) -> None:
    path = sm.path_to(state)
    assert path is not None, f"{state} unreachable"
    for trig in path:
        sm.trigger(trig)
    assert sm.state is state


def _cases(table, states):
    for trig, rows in table.items():
        for s in states:
            yield trig, s, rows.get(s)


@pytest.mark.parametrize("trigger,source,dest", list(_cases(EV_TABLE, E)),
                         ids=lambda v: getattr(v, "name", v))
def test_ev_charger_every_state_and_trigger(trigger, source, dest):
    bus = EventBus()
    seen = []
    sm = ev_charger_machine("ev-1", event_bus=bus)
    _force(sm, source)
    bus.subscribe(EventType.STATE_CHANGED, seen.append)
    if dest is None:
        assert not sm.can(trigger)
        with pytest.raises(InvalidTransition) as err:
            sm.trigger(trigger)
        assert "ev-1" in str(err.value) and source.name in str(err.value) and trigger in str(err.value)
        assert sm.state is source and seen == []
    else:
        assert sm.can(trigger)
        assert sm.trigger(trigger) is dest
        assert sm.state.name == dest.name
        assert [e.payload for e in seen] == [{"asset_id": "ev-1", "from_state": source.name,
                                              "to_state": dest.name, "trigger": trigger}]


@pytest.mark.parametrize("trigger,source,dest", list(_cases(BATTERY_TABLE, B)),
                         ids=lambda v: getattr(v, "name", v))
def test_battery_every_state_and_trigger(trigger, source, dest):
    bus = EventBus()
    seen = []
    sm = battery_machine("bat-1", event_bus=bus)
    _force(sm, source)
    bus.subscribe(EventType.STATE_CHANGED, seen.append)
    if dest is None:
        with pytest.raises(InvalidTransition):
            sm.trigger(trigger)
        assert sm.state is source and seen == []
    else:
        assert sm.trigger(trigger) is dest
        assert seen[0].payload == {"asset_id": "bat-1", "from_state": source.name, "to_state": dest.name,
                                   "trigger": trigger}


def test_initial_states():
    assert ev_charger_machine("a").state is E.AVAILABLE
    assert battery_machine("b").state is B.IDLE


def test_unknown_trigger_is_an_invalid_transition():
    sm = battery_machine("bat-9")
    with pytest.raises(InvalidTransition, match="unknown trigger"):
        sm.trigger("explode")


def test_guard_refusal_keeps_state_and_says_so():
    class S(__import__("enum").Enum):
        A = 1
        B = 2
    allowed = {"ok": False}
    sm = StateMachine("x", S, S.A, [Transition("go", frozenset({S.A}), S.B, guard=lambda m, t: allowed["ok"])])
    assert not sm.can("go")
    with pytest.raises(InvalidTransition, match="guard refused"):
        sm.trigger("go")
    assert sm.state is S.A
    allowed["ok"] = True
    assert sm.trigger("go") is S.B


def test_on_change_hook_sees_each_transition():
    calls = []
    sm = ev_charger_machine("ev", on_change=lambda a, b, t: calls.append((a.name, b.name, t)))
    sm.trigger("plug_in")
    sm.trigger("start_charge")
    assert calls == [("AVAILABLE", "PREPARING", "plug_in"), ("PREPARING", "CHARGING", "start_charge")]


def test_path_to_follows_only_legal_transitions():
    sm = ev_charger_machine("ev")
    _force(sm, E.CHARGING)
    assert sm.path_to(E.CHARGING) == []
    path = sm.path_to(E.AVAILABLE)
    assert path is not None and len(path) == 2  # no single trigger goes CHARGING -> AVAILABLE
    for trig in path:
        sm.trigger(trig)  # raises if the path were not legal
    assert sm.state is E.AVAILABLE


def test_a_table_naming_a_foreign_state_is_refused():
    with pytest.raises(ValueError, match="is not a BatteryState"):
        StateMachine("x", B, B.IDLE, [Transition("bad", frozenset({E.AVAILABLE}), B.IDLE)])


def test_a_table_given_as_a_tuple_is_refused_every_time_and_one_with_unhashable_rows_still_works():
    bad = (Transition("bad", frozenset({E.AVAILABLE}), B.IDLE),)
    for _ in range(2):      # a preset's table is indexed once; a refusal is not remembered as an index
        with pytest.raises(ValueError, match="is not a BatteryState"):
            StateMachine("x", B, B.IDLE, bad)
    listed = (Transition("charge", [B.IDLE], B.CHARGING),)   # type: ignore[arg-type]  # sources as a list
    sm = StateMachine("x", B, B.IDLE, listed)
    assert sm.trigger("charge") is B.CHARGING


def test_a_table_of_another_enum_is_refused_even_when_an_equal_table_was_indexed_before():
    from enum import IntEnum

    class A(IntEnum):
        X = 1
        Y = 2

    class Other(IntEnum):   # its members compare (and hash) equal to A's
        X = 1
        Y = 2
    StateMachine("x", A, A.X, (Transition("go", frozenset({A.X}), A.Y),))
    with pytest.raises(ValueError, match="is not a A"):
        StateMachine("x", A, A.X, (Transition("go", frozenset({Other.X}), Other.Y),))


# ------------------------------------------------------- gaps found by mutation testing (tests/tools/mutate.py)

def test_an_initial_state_that_is_not_one_of_the_states_is_refused():
    with pytest.raises(ValueError, match="initial state <EVChargerState.AVAILABLE: 'AVAILABLE'> is not one of BatteryState"):
        StateMachine("x", B, E.AVAILABLE, BATTERY_TRANSITIONS)


def test_restore_sets_the_state_without_a_transition_hook_or_event():
    bus = EventBus()
    seen, calls = [], []
    bus.subscribe(EventType.STATE_CHANGED, seen.append)
    sm = ev_charger_machine("ev-1", event_bus=bus, on_change=lambda *a: calls.append(a))
    sm.restore(E.CHARGING)  # no trigger leads AVAILABLE -> CHARGING in one step: restore needs none
    assert sm.state is E.CHARGING and seen == [] and calls == []
    assert sm.trigger("complete") is E.FINISHING  # and the machine carries on from there


def test_restore_refuses_a_state_of_another_machine_and_keeps_the_current_one():
    sm = battery_machine("bat-1")
    with pytest.raises(ValueError, match=r"asset bat-1: <EVChargerState.CHARGING: 'CHARGING'> is not a BatteryState"):
        sm.restore(E.CHARGING)
    assert sm.state is B.IDLE


def test_triggers_lists_the_table_triggers_in_table_order():
    assert ev_charger_machine("ev").triggers == tuple(EV_TABLE)
    assert battery_machine("bat").triggers == tuple(BATTERY_TABLE)


def test_transition_rows_are_immutable():
    row = BATTERY_TRANSITIONS[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        row.dest = B.FAULTED  # type: ignore[misc]
    assert hash(row) == hash(Transition(row.trigger, row.sources, row.dest))


def test_path_to_an_unreachable_state_is_none():
    class S(__import__("enum").Enum):
        A = 1
        B = 2
        C = 3
        D = 4
    sm = StateMachine("x", S, S.A, [Transition("go", frozenset({S.A}), S.B), Transition("on", frozenset({S.B}), S.C),
                                    Transition("back", frozenset({S.C}), S.B)])
    assert sm.path_to(S.D) is None  # B and C form a cycle: the search must not go round it for ever
    assert sm.path_to(S.C) == ["go", "on"]


def test_repr_names_the_asset_and_the_state():
    assert repr(battery_machine("bat-1")) == "<StateMachine bat-1 IDLE>"


def test_machines_without_an_event_bus_still_transition_and_call_the_hook():
    calls = []
    ev = ev_charger_machine("ev", on_change=lambda a, b, t: calls.append(t))
    bat = battery_machine("bat", on_change=lambda a, b, t: calls.append(t))
    assert ev.trigger("plug_in") is E.PREPARING and bat.trigger("charge") is B.CHARGING
    assert calls == ["plug_in", "charge"]
