"""Running a scenario: the site, its devices, the clock, the fault events; then the result and the report.

:func:`run_scenario` builds a :class:`~runtime.site.Site` from the scenario (assets, grid limit and
priorities, retry and timeouts, ``rng_seed`` = the seed), submits the schedule as one batch with a
fixed id (``scenario-<slug>``: command ids are the same on every run), and moves time from stop to stop:
every schedule step, every event time, every ``[[expect.at]]`` moment and the end. At each stop it
applies the events due then (in file order), lets the site settle, and notes the states asked for.
On a virtual clock (default) the run takes as long as the work does; with ``realtime=True`` it runs on
the wall clock (the schedule is moved to start now), so a scenario of N seconds takes N seconds.

Afterwards the site's events and commands make a :class:`~.timeline.Timeline` (applied setpoints, energy,
faults), the expectations are checked, the summary (rich tables) or the JSON report is printed, and
with ``report_dir`` the report folder is written (:mod:`.report`): the site's journal ran in it.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import sys
import threading
import time as _time
from contextlib import contextmanager, nullcontext
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, TextIO

import pandas as pd

from actors.asset import AssetCrash
from runtime.config.models import BatteryConfig, ChargerConfig, RetryConfig
from runtime.core.assets import AssetSpec, BatterySpec, ChargerSpec
from runtime.core.clock import Clock, RealClock, VirtualClock
from runtime.core.commands import Command
from runtime.core.errors import ScenarioError
from runtime.core.grid import GridLimit
from runtime.core.retry import RetryPolicy
from runtime.site import Site

from .devices import make_devices, unsupported
from .expect import Outcome, check_expectations
from .loader import batch_id_of, load_scenario
from .model import Scenario
from .result import ScenarioResult
from .timeline import EventLog, Timeline

__all__ = ["run_scenario", "ScenarioResult", "REPORT_FILES"]

#: What a report folder holds (the journal is a folder of its own).
REPORT_FILES = ("setpoints.csv", "plot.png", "summary.json")
JOURNAL_DIR = "journal"


class _InjectedCrashes(logging.Filter):
    """Drops pykka's traceback of an asset actor crashed on purpose (the ``crash`` action): the crash is the
    scenario's point, and the supervisor's own line (restarting, or giving up) still says what happened."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not (isinstance(exc, AssetCrash) and "injected crash" in str(exc))


@contextmanager
def _quiet_injected_crashes() -> Iterator[None]:
    pykka_log, quiet = logging.getLogger("pykka"), _InjectedCrashes()
    pykka_log.addFilter(quiet)
    try:
        yield
    finally:
        pykka_log.removeFilter(quiet)


def _spec(asset: ChargerConfig | BatteryConfig, link: Any) -> AssetSpec:
    """The asset spec of a scenario asset (as runtime.config.build makes it, without importing every protocol)."""
    if isinstance(asset, ChargerConfig):
        return ChargerSpec(asset.id, max_kw=asset.max_kw, device=link, ack_timeout_s=asset.ack_timeout_s)
    return BatterySpec(asset.id, max_charge_kw=asset.max_charge_kw, max_discharge_kw=asset.max_discharge_kw,
                       capacity_kwh=asset.capacity_kwh, device=link, ack_timeout_s=asset.ack_timeout_s)


def _retry(config: RetryConfig) -> RetryPolicy:
    return RetryPolicy(max_attempts=config.max_attempts, base_delay_s=config.base_delay_s, factor=config.factor,
                       max_delay_s=config.max_delay_s, jitter=config.jitter)


def _check_devices(scenario: Scenario, devices: str) -> None:
    problems = []
    for i, ev in enumerate(scenario.events):
        why = unsupported(ev.action, scenario.kind(ev.asset) or "?", devices, ev.value)
        if why is not None:
            problems.append(f"events[{i}] ({ev.asset} at {ev.at_s:g} s).action: {why}")
    if problems:
        raise ScenarioError(str(scenario.source or scenario.name), problems)


def _prepare_report_dir(path: Path) -> Path:
    """An empty journal folder in ``path`` (a journal left by an earlier run would be recovered, not replaced),
    and no stale report files."""
    if path.exists() and not path.is_dir():
        raise ScenarioError(str(path), ["the report folder is a file"])
    journal = path / JOURNAL_DIR
    if journal.is_dir():
        shutil.rmtree(journal)
    for name in REPORT_FILES:
        (path / name).unlink(missing_ok=True)
    journal.mkdir(parents=True)
    return path


def _stops(scenario: Scenario, end_s: float) -> tuple[list[float], list[float]]:
    """(every moment the run stops at, the schedule steps sampled for the report), in seconds from the start."""
    interval = scenario.interval_s
    steps = [0.0]
    if interval > 0:
        n = math.ceil(end_s / interval - 1e-9)
        steps = [k * interval for k in range(max(1, n))]
    moments = set(steps) | {e.at_s for e in scenario.events} | {a.at_s for a in scenario.expect.at} | {end_s}
    return sorted(m for m in moments if 0 <= m <= end_s), steps


class _Run:
    """One run of a scenario on one site (the runner's state while time moves)."""

    def __init__(self, scenario: Scenario, *, seed: int, realtime: bool, devices: str,
                 journal_dir: Path | None, on_progress: Callable[[float], None]) -> None:
        self.scenario, self.seed, self.realtime = scenario, seed, realtime
        self.on_progress = on_progress
        self.end_s = scenario.end_s
        if realtime:
            self.clock: Clock = RealClock()
            now = self.clock.time()
            self.offset_s = now - scenario.start.timestamp()
            self.start = datetime.fromtimestamp(now, tz=timezone.utc)
        else:
            self.clock = VirtualClock(scenario.start)
            self.offset_s = 0.0
            self.start = scenario.start
        self.devices = make_devices(scenario, devices, self.clock)
        self.journal_dir = journal_dir
        self.log = EventLog()
        self.states_at: dict[int, dict[str, str]] = {}
        self.others: list[Command] = []

    def execute(self) -> tuple[list[Command | None], dict[str, str]]:
        """Run the scenario; returns the final snapshot of each schedule command and each asset's final state."""
        try:
            with _quiet_injected_crashes():
                return self._execute()
        finally:
            self.devices.stop()
            if self.realtime:
                self.clock.stop()

    def _execute(self) -> tuple[list[Command | None], dict[str, str]]:
        s = self.scenario
        links = self.devices.links()
        specs = [_spec(a, links.get(a.id)) for a in s.assets]
        grid = GridLimit(import_kw=s.grid.import_limit_kw, export_kw=s.grid.export_limit_kw, policy=s.grid.policy)
        site = Site(specs, clock=self.clock, journal_dir=self.journal_dir, fsync="never",
                    retention_s=float("inf"),  # the report covers every command
                    retry=_retry(s.retry), ack_timeout_s=s.timeouts.ack_timeout_s,
                    completion_timeout_s=s.timeouts.completion_timeout_s, grid=grid,
                    priorities={a.id: a.priority for a in s.assets}, rng_seed=self.seed,
                    **self.devices.site_options())
        with site:
            site.events.subscribe(None, self.log)
            self.devices.started(site)
            schedule = s.schedule
            if self.offset_s:
                schedule = schedule.set_axis(schedule.index + pd.Timedelta(seconds=self.offset_s))
            batch = site.submit_schedule(schedule, asset_map=s.asset_map, batch_id=batch_id_of(s.slug))
            self._drive(site)
            commands = [site.command(batch.command_id(i)) for i in range(len(batch))]
            # the grid's own commands (regrants: new grants for assets whose share moved) change setpoints too
            self.others = [c for c in site.commands() if c.source != "schedule"]
            states = {a.id: site.asset_state(a.id) for a in s.assets}
        return commands, states

    def _drive(self, site: Site) -> None:
        stops, _ = _stops(self.scenario, self.end_s)
        events = list(self.scenario.events)
        at_moments = {i: a for i, a in enumerate(self.scenario.expect.at)}
        elapsed = 0.0
        for stop in stops:
            self._move_to(site, stop, elapsed)
            elapsed = stop
            due = [e for e in events if e.at_s <= stop]
            events = [e for e in events if e.at_s > stop]
            for ev in due:
                self.devices.apply(site, ev)
                site.settle()
            self.devices.wait_idle(site)
            for i, at in at_moments.items():
                if at.at_s == stop:
                    self.states_at[i] = {a: site.asset_state(a) for a in at.states}
            self.on_progress(stop)

    def _move_to(self, site: Site, stop: float, elapsed: float) -> None:
        if not self.realtime:
            site.advance(stop - elapsed)
            return
        target = self.start.timestamp() + stop
        waiter = threading.Event()
        while (left := target - self.clock.time()) > 0:
            waiter.wait(min(left, 0.25))  # the wall clock is the point here; a quarter second keeps progress live
            self.on_progress(min(stop, self.clock.time() - self.start.timestamp()))


def _progress(enabled: bool, total: float, name: str) -> Any:
    if not enabled:
        return nullcontext(lambda done: None)
    from .summary import progress_bar
    return progress_bar(total, name)


def run_scenario(scenario: Scenario | str | Path, *, report_dir: str | Path | None = None, seed: int | None = None,
                 realtime: bool = False, out: TextIO | None = None, as_json: bool = False,
                 devices: str | None = None, progress: bool | None = None) -> ScenarioResult:
    """Run a scenario (a :class:`~.model.Scenario` or the path of a scenario file) and report on it.

    ``report_dir``: write the report folder there (journal, setpoints.csv, plot.png, summary.json).
    ``seed``: overrides the file's seed (retry jitter). ``realtime``: the wall clock instead of a virtual
    one. ``out``: where the summary (rich tables) or, with ``as_json``, the JSON report goes (default
    stdout). ``devices``: overrides the file's "memory" / "sim". ``progress``: a progress bar on stderr
    (default: when stderr is a terminal and the output is not JSON). Returns the
    :class:`~.result.ScenarioResult`; its ``exit_code`` is 0 when every expectation is met, else 1.
    Raises :class:`~runtime.core.errors.ScenarioError` for a file that cannot be run."""
    if not isinstance(scenario, Scenario):
        scenario = load_scenario(scenario)
    seed = scenario.seed if seed is None else int(seed)
    devices = devices or scenario.devices
    if devices not in ("memory", "sim"):
        raise ScenarioError(str(scenario.source or scenario.name), [f"devices: got {devices!r}, expected 'memory' "
                                                                    f"or 'sim'"])
    _check_devices(scenario, devices)
    report = _prepare_report_dir(Path(report_dir)) if report_dir is not None else None
    out = out or sys.stdout
    if progress is None:
        progress = not as_json and sys.stderr.isatty()
    began = _time.monotonic()
    with _progress(progress, scenario.end_s, scenario.name) as on_progress:
        run = _Run(scenario, seed=seed, realtime=realtime, devices=devices,
                   journal_dir=report / JOURNAL_DIR if report is not None else None, on_progress=on_progress)
        commands, states = run.execute()
    wall_s = _time.monotonic() - began
    start = run.start.timestamp()
    known = {c.command_id: c for c in commands if c is not None}
    every = {**{c.command_id: c for c in run.others}, **known}
    timeline = Timeline(run.log.events, every, {a.id: a.kind for a in scenario.assets}, start, start + run.end_s)
    result = _result(scenario, run, timeline, list(known.values()), states, report, wall_s, seed, devices)
    if report is not None:
        from .report import write_report
        write_report(report, scenario, timeline, _stops(scenario, run.end_s)[1], result)
    if as_json:
        json.dump(result.to_json(), out, indent=2)
        print(file=out)
    else:
        from .summary import print_summary
        print_summary(result, out)
    return result


def _result(scenario: Scenario, run: _Run, timeline: Timeline, commands: list[Command], states: dict[str, str],
            report: Path | None, wall_s: float, seed: int, devices: str) -> ScenarioResult:
    counts: dict[str, int] = {}
    for c in commands:
        counts[c.status.value] = counts.get(c.status.value, 0) + 1
    limited = sum(1 for c in commands if c.granted is not None and c.granted < c.value - 1e-9)
    energy = {a.id: timeline.energy_kwh(a.id) for a in scenario.assets}
    split = {a.id: timeline.energy_split_kwh(a.id) for a in scenario.assets}
    outcome = Outcome(counts=counts, states=states, events=timeline.event_counts(), limited=limited,
                      peak_import_kw=timeline.peak_import_kw(), energy_kwh=energy, states_at=run.states_at)
    expectations = tuple(check_expectations(scenario.expect, outcome))
    rows = tuple({"command_id": c.command_id, "asset_id": c.asset_id, "type": c.command_type.value,
                  "value": c.value, "granted": c.granted, "at": c.scheduled_time.isoformat(),
                  "status": c.status.value, "attempts": c.attempts, "error": c.last_error} for c in commands)
    return ScenarioResult(
        name=scenario.name, counts=counts, states=states, energy_kwh=energy, energy_split_kwh=split,
        expectations=expectations,
        exit_code=0 if all(e.met for e in expectations) else 1, report_dir=report, faults=timeline.faults(),
        simulated_s=run.end_s, wall_s=wall_s, seed=seed, devices=devices, peak_import_kw=outcome.peak_import_kw,
        limited=limited, commands=rows)
