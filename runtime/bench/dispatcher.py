"""``coordinator bench --only dispatcher``: the dispatcher's own bookkeeping per command, on one thread.

The real :class:`~actors.dispatcher.DispatcherActor` and :class:`~actors.event_actor.EventActor` classes,
with the site's command table and both journals (fsync "never"), are driven by direct calls in this
thread: no actor is started, so no thread hand-off, queue or GIL switch is counted. The asset side is a
no-op: each ``Execute`` is answered with the ``CommandReports`` an asset actor sends for a device that
completes at once (ACKNOWLEDGED, COMPLETED), built before the clock starts. A step is one submission of
``n_assets x channels`` commands, then the answers, delivered as one burst (the inbox looks non-empty
until the last one, as when many assets answer together). One subscriber listens to COMMAND_COMPLETED
(as in the throughput part); ``subscribe_all`` makes it listen to every event instead.

The figure, ``us_per_command``, is the CPU time of this thread per command (``time.thread_time``: on a
machine shared with other work, wall time counts the time other processes had the core too; it is
printed as ``wall_us_per_command``): every cost the dispatcher and the event actor have for a command from
submission to COMPLETED: table, policy, journal records and writes (fsync "never"), timer, events.
``events_us`` is the part spent in the event actor's calls.
"""

from __future__ import annotations

import tempfile
import time
from collections import defaultdict
from typing import Any

from actors.dispatcher import DispatcherActor
from actors.event_actor import EventActor
from actors.messages import AssetHealth, AssetUp, CommandReport, CommandReports, Execute, SubmitCommands
from runtime.core.assets import BatterySpec
from runtime.core.clock import VirtualClock
from runtime.core.command_log import CommandLog
from runtime.core.command_table import CommandTable
from runtime.core.commands import Command, CommandStatus, CommandType
from runtime.core.event_log import EventLog
from runtime.core.events import EventType
from runtime.core.policy import DispatchPolicy

__all__ = ["bench_dispatcher"]

_CHANNELS = (CommandType.SET_CHARGE_RATE, CommandType.SET_DISCHARGE_RATE, CommandType.SET_POWER_LIMIT,
             CommandType.SET_SOC_TARGET)


class _Inbox:
    """Stands in for an actor's inbox: ``empty()`` says what the driver sets."""

    def __init__(self) -> None:
        self.is_empty = True

    def empty(self) -> bool:
        return self.is_empty


class _Collect:
    """Stands in for an actor ref: keeps what it is told."""

    def __init__(self) -> None:
        self.told: list[Any] = []

    def tell(self, message: Any) -> None:
        self.told.append(message)


class _Inline:
    """Stands in for the event actor's ref: handles each message at once in this thread, and times it."""

    def __init__(self, actor: EventActor) -> None:
        self.actor = actor
        self.seconds = 0.0

    def tell(self, message: Any) -> None:
        t0 = time.thread_time()
        self.actor.on_receive(message)
        self.seconds += time.thread_time() - t0


def bench_dispatcher(n_assets: int = 1000, waves: int = 20, channels: int = 1, journal: bool = True,
                     subscribe_all: bool = False) -> dict[str, Any]:
    """See the module docstring."""
    clock = VirtualClock()
    specs = {f"bat-{i}": BatterySpec(f"bat-{i}", max_charge_kw=50.0, max_discharge_kw=50.0) for i in range(n_assets)}
    with tempfile.TemporaryDirectory() as tmp:
        table = CommandTable(ack_timeout_s=20.0)
        cmd_log = CommandLog(tmp, table, clock, fsync="never") if journal else None
        event_log = EventLog(tmp, clock, fsync="never") if journal else None
        events = EventActor(event_log)
        events.actor_inbox = _Inbox()  # type: ignore[assignment]  # every Publish is the end of its burst
        delivered = _Collect()
        events._subs[1] = (None if subscribe_all else EventType.COMMAND_COMPLETED, delivered)  # type: ignore
        if hasattr(events, "_follow_subscriptions"):
            events._follow_subscriptions()
        inline = _Inline(events)
        dispatcher = DispatcherActor(table, clock=clock, events=inline, journal=cmd_log,  # type: ignore[arg-type]
                                     policy=DispatchPolicy(specs, None, {}), expected_assets=tuple(specs))
        inbox = _Inbox()
        dispatcher.actor_inbox = inbox  # type: ignore[assignment]
        assets = {a: _Collect() for a in specs}
        for a, ref in assets.items():
            dispatcher.on_receive(AssetUp(a, ref))  # type: ignore[arg-type]
            dispatcher.on_receive(AssetHealth(a, True, "IDLE"))
        now = clock.now()
        steps = [tuple(Command(f"w{w}-{i}-{k}", f"bat-{i}", _CHANNELS[k], float(1 + (w + k) % 20), now)
                       for i in range(n_assets) for k in range(channels)) for w in range(waves)]
        answers = []
        for step in steps:
            per_asset: dict[str, list[CommandReport]] = defaultdict(list)
            for c in step:
                per_asset[c.asset_id] += [CommandReport(c.command_id, CommandStatus.ACKNOWLEDGED),
                                          CommandReport(c.command_id, CommandStatus.COMPLETED)]
            answers.append([CommandReports(a, tuple(r)) for a, r in per_asset.items()])
        sent = 0
        inline.seconds = 0.0
        cpu0 = time.thread_time()
        t0 = time.perf_counter()
        for step, reports in zip(steps, answers):
            inbox.is_empty = True
            dispatcher.on_receive(SubmitCommands(step))
            inbox.is_empty = False
            last = len(reports) - 1
            for j, message in enumerate(reports):
                inbox.is_empty = j == last
                dispatcher.on_receive(message)
        elapsed = time.perf_counter() - t0
        cpu = time.thread_time() - cpu0
        for ref in assets.values():
            sent += sum(len(m.commands) for m in ref.told if isinstance(m, Execute))
        completed = sum(1 for m in delivered.told for e in m.events if e.type is EventType.COMMAND_COMPLETED)
        dispatcher.on_stop()
        events._subs.clear()
        events.on_stop()
    total = n_assets * channels * waves
    return {"assets": n_assets, "setpoints_per_asset": channels, "commands": total, "sent": sent,
            "completed": completed, "subscribed": "all" if subscribe_all else "COMMAND_COMPLETED",
            "us_per_command": round(1e6 * cpu / total, 1), "events_us": round(1e6 * inline.seconds / total, 1),
            "wall_us_per_command": round(1e6 * elapsed / total, 1),
            "all_completed": completed == total and sent == total}
