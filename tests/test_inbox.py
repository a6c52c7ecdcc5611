"""WatchedInbox: what a look at an actor's inbox says, from another thread, without waking the actor."""

from __future__ import annotations

import threading
from typing import Any

import pykka
import pytest

from actors.inbox import WatchedInbox

from .asyncsupport import wait_until

pytestmark = [pytest.mark.timeout(30), pytest.mark.usefixtures("no_leaks")]


class _Gated(pykka.ThreadingActor):
    """Starts and handles each message only once the test opens its gate."""

    _create_actor_inbox = staticmethod(WatchedInbox)

    def __init__(self, gate: threading.Event, entered: threading.Event) -> None:
        super().__init__()
        self.gate, self.entered = gate, entered

    def on_start(self) -> None:
        self.entered.set()
        assert self.gate.wait(10)

    def on_receive(self, message: Any) -> Any:
        self.entered.set()
        assert self.gate.wait(10)
        return message


def _start() -> tuple[pykka.ActorRef[Any], WatchedInbox, threading.Event, threading.Event]:
    gate, entered = threading.Event(), threading.Event()
    ref = _Gated.start(gate, entered)
    assert isinstance(ref.actor_inbox, WatchedInbox)
    return ref, ref.actor_inbox, gate, entered


def test_an_actor_is_busy_while_it_starts_and_idle_once_its_loop_waits_for_a_message():
    ref, inbox, gate, entered = _start()
    try:
        assert entered.wait(5)
        assert inbox.look() == (0, False)          # on_start runs: nothing taken, but not idle
        gate.set()
        wait_until(lambda: inbox.look() == (0, True), timeout=5, what="idle after on_start")
    finally:
        gate.set()
        ref.stop()


def test_a_message_being_handled_or_waiting_is_work_and_each_one_taken_is_counted():
    ref, inbox, gate, entered = _start()
    try:
        gate.set()
        wait_until(lambda: inbox.look()[1], timeout=5, what="idle after on_start")
        gate.clear()
        entered.clear()
        first = ref.ask("a", block=False)
        assert entered.wait(5)
        assert inbox.look() == (1, False)          # handling "a"
        ref.tell("b")
        assert inbox.look() == (1, False)          # "b" waits behind it
        gate.set()
        assert first.get(timeout=5) == "a"
        wait_until(lambda: inbox.look() == (2, True), timeout=5, what="both handled")
    finally:
        gate.set()
        ref.stop()
