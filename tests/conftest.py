"""Shared fixtures: leak checks (threads and sockets) and a virtual-clock start time."""

from __future__ import annotations

import os
import sys
import threading
import time
import traceback
from datetime import datetime, timezone

import pytest
from hypothesis import settings

#: The suite's property tests (hypothesis) run a fixed sequence of examples: the same everywhere, so CI
#: never goes red by chance. ``HYPOTHESIS_PROFILE=explore`` draws fresh random examples (and keeps failures
#: in ``.hypothesis/``) to look for new counterexamples; ``COMPACTION_EXAMPLES`` / ``GRID_EXAMPLES`` ask for
#: more of them. A counterexample found that way becomes a plain regression test.
settings.register_profile("suite", derandomize=True, database=None)
settings.register_profile("explore")
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "suite"))

T0 = datetime(2026, 1, 1, 8, 0, tzinfo=timezone.utc)


def open_sockets() -> set[str]:
    """Socket inodes this process holds open (Linux /proc)."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:"):
            found.add(target)
    return found


def live_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.is_alive()}


def stacks(threads: set[threading.Thread]) -> str:
    """Where each of ``threads`` is now (so a leak in CI says what the thread was waiting on)."""
    frames = sys._current_frames()
    return "\n".join(f"--- {t.name}:\n" + "".join(traceback.format_stack(frames[t.ident]))
                     for t in sorted(threads, key=lambda t: t.name) if t.ident in frames)


@pytest.fixture
def no_leaks():
    """Fails the test if it leaves threads or sockets behind (checked after a short grace period)."""
    threads, sockets = live_threads(), open_sockets()
    yield
    deadline = time.monotonic() + 3
    while True:
        extra_threads = live_threads() - threads
        extra_sockets = open_sockets() - sockets
        if not extra_threads and not extra_sockets:
            return
        if time.monotonic() > deadline:
            break
        time.sleep(0.02)  # grace period for threads that are already exiting (not waiting on logic)
    assert not extra_threads, f"leaked threads: {sorted(t.name for t in extra_threads)}\n{stacks(extra_threads)}"
    assert not extra_sockets, f"leaked sockets: {extra_sockets}"
