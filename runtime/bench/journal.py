"""``coordinator bench --only journal``: a site that runs for a month, on a virtual clock.

50 chargers (in-memory devices), one day-ahead schedule a day (5-minute intervals, a value that changes
at about two intervals in three: ~9,600 commands a day), every command dispatched and completed, and
one meter value per charger every 5 minutes into the event journal; journal on (``fsync="never"``:
sizes and restart times do not depend on it, and 30 days of fsyncs would measure the disk). Figures:

* ``mb_per_day``: the journal directory's size (commands + events) at the end of each day, MB, and
  ``commands_mb_per_day`` the command journal's part (events grow until their retention, 7 days, is reached);
* ``commands_mb_max`` / ``events_mb_max``: the largest size of each stream over days 2..N;
* ``restart_s``: ``Site.start()`` (recovery included) at days 1, 7 and 30 (quick: 1, 2, 3), and
  ``recovery_s``, the part of it spent reading the command journal back;
* ``bytes_per_command``: bytes appended to the command journal per schedule command, over the run;
  ``v1_bytes_per_command``: the same day-1 schedule journaled the way the version-1 writer did (a full
  snapshot per change, :class:`_Version1Records`), in the same run, for the ratio.

Targets (the issue's): the command journal flat after the first day, the whole journal under 50 MB
every day, restart under 1 s at the last day, bytes per command at least 4x smaller than version 1.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from runtime.core.assets import ChargerSpec
from runtime.core.clock import VirtualClock
from runtime.core.command_table import Change
from runtime.site import Site

__all__ = ["bench_journal", "TARGETS"]

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
TARGETS = {"max_mb": 50.0, "restart_s": 1.0, "ratio": 4.0}
MB = 1024 * 1024


def _schedule(day: int, n: int, rng: np.random.Generator) -> pd.DataFrame:
    index = pd.date_range(T0 + timedelta(days=day), periods=288, freq="5min")
    levels = np.round(rng.uniform(0.0, 22.0, size=(288, n)), 1)
    change = rng.random((288, n)) < 2 / 3
    change[0] = True
    segment = np.maximum.accumulate(np.where(change, np.arange(288)[:, None], 0), axis=0)
    values = np.take_along_axis(levels, segment, axis=0)
    return pd.DataFrame(values, index=index, columns=[f"ev_{i:03d}_kw" for i in range(n)])


class _Version1Records:
    """What the version-1 writer journaled: the full snapshot of a command after every change."""

    def seed(self, commands: Iterable[Any], batches: Iterable[Any]) -> None:
        pass

    def note_batch(self, batch_id: str, n: int) -> None:
        pass

    def forget_batches(self, keep: Iterable[str]) -> None:
        pass

    def encode(self, changes: Iterable[Change], now: float) -> list[dict[str, Any]]:
        return [{"k": "cmd", "c": ch.command.to_record()} for ch in changes]


def _day(site: Site, day: int, n: int, rng: np.random.Generator, clock: VirtualClock) -> int:
    """One day: the schedule, 288 steps of 5 minutes with a meter value per charger; returns its commands."""
    batch = site.submit_schedule(_schedule(day, n, rng))
    for _ in range(288):
        for i in range(n):
            site.device(f"ev_{i:03d}").report_telemetry(power_kw=float(i % 22))
        site.advance(300)
    return len(batch)


def _start(specs: list[ChargerSpec], clock: VirtualClock, directory: Path) -> tuple[Site, float]:
    site = Site(specs, clock=clock, journal_dir=directory, fsync="never")
    t0 = time.perf_counter()
    site.start()
    return site, time.perf_counter() - t0


def _v1_bytes_per_command(n: int) -> float:
    """Day 1 of the same site, its command journal written as version 1 wrote it."""
    directory = Path(tempfile.mkdtemp(prefix="bench-journal-v1-"))
    try:
        clock = VirtualClock(T0)
        site, _ = _start([ChargerSpec(f"ev_{i:03d}", max_kw=22.0) for i in range(n)], clock, directory)
        try:
            assert site._command_log is not None
            site._command_log._encoder = _Version1Records()  # type: ignore[assignment]
            commands = _day(site, 0, n, np.random.default_rng(0), clock)
            appended = site.journal_stats().commands.appended_bytes  # type: ignore[union-attr]
        finally:
            site.stop()
        return appended / commands
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def bench_journal(days: int = 30, n_chargers: int = 50,
                  restart_days: tuple[int, ...] = (1, 7, 30)) -> dict[str, Any]:
    """Run the month (see the module docstring) and return its figures."""
    directory = Path(tempfile.mkdtemp(prefix="bench-journal-"))
    specs = [ChargerSpec(f"ev_{i:03d}", max_kw=22.0) for i in range(n_chargers)]
    rng = np.random.default_rng(0)
    clock = VirtualClock(T0)
    sizes: list[float] = []
    commands_mb: list[float] = []
    events_mb: list[float] = []
    restarts: dict[int, float] = {}
    recoveries: dict[int, float] = {}
    appended = 0
    commands = 0
    wall = time.perf_counter()
    site, _ = _start(specs, clock, directory)
    try:
        for day in range(days):
            commands += _day(site, day, n_chargers, rng, clock)
            stats = site.journal_stats()
            assert stats is not None
            sizes.append(round(stats.bytes / MB, 2))
            commands_mb.append(stats.commands.bytes / MB)
            events_mb.append(stats.events.bytes / MB)
            if day + 1 in restart_days:
                appended += stats.commands.appended_bytes
                site.stop()
                site, restarts[day + 1] = _start(specs, clock, directory)
                after = site.journal_stats()
                assert after is not None
                recoveries[day + 1] = after.commands.recovery_s or 0.0
        stats = site.journal_stats()
        assert stats is not None
        if days not in restart_days:
            appended += stats.commands.appended_bytes
    finally:
        site.stop()
        shutil.rmtree(directory, ignore_errors=True)
    run_s = time.perf_counter() - wall
    v1 = _v1_bytes_per_command(n_chargers)
    later = slice(1, None) if days > 1 else slice(0, None)
    return {"days": days, "chargers": n_chargers, "commands": commands, "mb_per_day": sizes,
            "commands_mb_per_day": [round(x, 2) for x in commands_mb],
            "commands_mb_max": round(max(commands_mb[later]), 2), "events_mb_max": round(max(events_mb[later]), 2),
            "restart_s": {d: round(s, 3) for d, s in restarts.items()},
            "recovery_s": {d: round(s, 3) for d, s in recoveries.items()},
            "bytes_per_command": round(appended / commands, 1), "v1_bytes_per_command": round(v1, 1),
            "ratio": round(v1 / (appended / commands), 1), "run_s": round(run_s, 1)}
