"""The dispatcher actor's step and commit rules, driven message by message (no actor thread).

A DispatcherActor object is fed messages through ``on_receive`` directly, with fakes of our own
interfaces for the event actor, the journal and the asset actors: the tests read the order of what it
journals, publishes and sends.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import numpy as np
import pytest

from actors.dispatcher import MAX_BURST_STEPS, DispatcherActor
from actors.messages import (AssetHealth, AssetUp, CommandReport, CommandReports, Execute, Publish, SubmitBatch,
                             SubmitCommands, Tick)
from runtime.core.assets import BatterySpec, ChargerSpec
from runtime.core.batch import CommandBatch
from runtime.core.clock import VirtualClock
from runtime.core.command_table import CommandTable
from runtime.core.commands import Command, CommandStatus, CommandType
from runtime.core.events import EventType
from runtime.core.policy import DispatchPolicy

from .conftest import T0


class Log:
    """What the dispatcher did, in order: ("journal", records) / ("sync",) / ("publish", types) / ("send", ids)."""

    def __init__(self) -> None:
        self.entries: list[tuple[Any, ...]] = []


class FakeJournal:
    def __init__(self, log: Log) -> None:
        self.log = log

    def commit(self, records: list[dict[str, Any]], changes: list[Any]) -> None:  # one write, then a sync
        self.log.entries.append(("journal", [r["k"] for r in records] + ["change"] * len(changes)))
        self.log.entries.append(("sync",))

    def close(self) -> None:
        pass


class FakeRef:
    """Stands in for the event actor and the asset actors: records what they are told."""

    def __init__(self, log: Log) -> None:
        self.log = log

    def tell(self, message: Any) -> None:
        if isinstance(message, Publish):
            self.log.entries.append(("publish", [e.type for e in message.events]))
        elif isinstance(message, Execute):
            self.log.entries.append(("send", [c.command_id for c in message.commands]))


def dispatcher(log: Log, clock: VirtualClock, **kw: Any) -> DispatcherActor:
    specs = {"ev-1": ChargerSpec("ev-1", max_kw=22.0), "bat-1": BatterySpec("bat-1")}
    actor = DispatcherActor(CommandTable(), clock=clock, events=FakeRef(log), journal=FakeJournal(log),
                            policy=DispatchPolicy(specs), **kw)
    for asset in specs:
        actor.on_receive(AssetUp(asset, FakeRef(log)))  # type: ignore[arg-type]
        actor.on_receive(AssetHealth(asset, True, "AVAILABLE"))
    log.entries.clear()
    return actor


def test_schedule_received_is_published_only_after_its_batch_is_journaled():
    log, clock = Log(), VirtualClock(T0)
    actor = dispatcher(log, clock)
    batch = CommandBatch("plan", np.array([T0.timestamp() + 300.0]), np.array([0]), ["ev-1"],
                         np.array([CommandBatch.type_code(CommandType.SET_CHARGE_RATE)]), np.array([7.0]))
    actor.on_receive(SubmitBatch(batch))
    kinds = [e[0] for e in log.entries]
    assert kinds.index("sync") < kinds.index("publish"), log.entries
    journal = next(e for e in log.entries if e[0] == "journal")
    assert "batch" in journal[1]
    assert ("publish", [EventType.SCHEDULE_RECEIVED]) in log.entries


def test_a_steady_stream_of_messages_cannot_starve_the_sends():
    log, clock = Log(), VirtualClock(T0)
    actor = dispatcher(log, clock)
    actor.actor_inbox.put("another message waiting")       # the inbox never runs dry from here on
    actor.on_receive(SubmitCommands((Command("later", "ev-1", CommandType.SET_CHARGE_RATE, 7.0,
                                             T0 + timedelta(seconds=10)),)))
    clock.advance(10)                                        # it falls due while messages keep coming
    for step in range(MAX_BURST_STEPS):
        actor.on_receive(Tick())
        if ("send", ["later"]) in log.entries:
            break
    assert ("send", ["later"]) in log.entries, "a due command stayed unsent while the inbox was never empty"
    assert actor._table.get("later").status is CommandStatus.DISPATCHED
    sends, syncs = log.entries.index(("send", ["later"])), [i for i, e in enumerate(log.entries) if e == ("sync",)]
    assert any(i < sends for i in syncs)                     # journaled before it was sent


def test_a_command_beyond_the_device_limit_is_rejected_at_submission_and_never_sent():
    log, clock = Log(), VirtualClock(T0)
    actor = dispatcher(log, clock)
    actor.on_receive(SubmitCommands((Command("over", "bat-1", CommandType.SET_CHARGE_RATE, 75.0,
                                             T0 + timedelta(seconds=3600)),)))
    over = actor._table.get("over")
    assert over.status is CommandStatus.REJECTED and "exceeds the device limit 50.0 kW" in over.last_error
    assert not any(e[0] == "send" for e in log.entries)


def test_ready_is_set_once_every_asset_has_an_actor_and_has_reported_its_health():
    import pykka
    log, clock = Log(), VirtualClock(T0)
    ready: pykka.Future[None] = pykka.ThreadingFuture()
    actor = DispatcherActor(CommandTable(), clock=clock, events=FakeRef(log), expected_assets=("ev-1", "bat-1"),
                            ready=ready)
    actor.on_receive(AssetUp("ev-1", FakeRef(log)))  # type: ignore[arg-type]
    actor.on_receive(AssetHealth("bat-1", False, "AVAILABLE", "device link is down"))  # health before AssetUp
    actor.on_receive(AssetUp("bat-1", FakeRef(log)))  # type: ignore[arg-type]
    with pytest.raises(pykka.Timeout):
        ready.get(timeout=0)                          # ev-1 has not reported yet
    actor.on_receive(AssetHealth("ev-1", True, "AVAILABLE"))
    assert ready.get(timeout=0) is None               # a link that is down still counts as reported


def test_the_answer_to_an_earlier_attempt_does_not_settle_the_attempt_in_flight():
    """A device that went silent and speaks again answers the old attempt too: only the answer to the
    attempt in flight moves the command (else whether the new attempt is sent at all depends on timing)."""
    log, clock = Log(), VirtualClock(T0)
    actor = dispatcher(log, clock)
    actor.on_receive(SubmitCommands((Command("c", "ev-1", CommandType.SET_CHARGE_RATE, 7.0, T0),)))
    assert actor._table.get("c").attempts == 1
    actor.on_receive(CommandReports("ev-1", (CommandReport("c", CommandStatus.FAILED, "no answer", attempt=1),)))
    assert actor._table.get("c").status is CommandStatus.PENDING
    clock.advance(600)
    actor.on_receive(Tick())
    assert actor._table.get("c").status is CommandStatus.DISPATCHED and actor._table.get("c").attempts == 2
    late = (CommandReport("c", CommandStatus.ACKNOWLEDGED, attempt=1), CommandReport("c", CommandStatus.COMPLETED,
                                                                                    attempt=1))
    actor.on_receive(CommandReports("ev-1", late))
    assert actor._table.get("c").status is CommandStatus.DISPATCHED       # attempt 2 is still awaited
    actor.on_receive(CommandReports("ev-1", (CommandReport("c", CommandStatus.ACKNOWLEDGED, attempt=2),
                                             CommandReport("c", CommandStatus.COMPLETED, attempt=2))))
    assert actor._table.get("c").status is CommandStatus.COMPLETED
