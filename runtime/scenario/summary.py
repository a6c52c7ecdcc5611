"""What a person sees of a run: the progress bar while it runs, the summary tables after (rich).

The summary has four tables: commands by final state, energy per asset (from the applied setpoints),
faults and recoveries (from the events), and each expectation, met or not. Each unmet expectation is
also printed as one plain ``EXPECTATION FAILED: expected ..., got ...`` line, for scripts that grep.
Written to a file or a pipe, the tables are plain text (no colour codes).
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Callable, Iterator, TextIO

from rich.console import Console
from rich.table import Table

from .result import ScenarioResult
from .timeline import FAULT_COLUMNS

__all__ = ["print_summary", "summary_tables", "progress_bar"]


@contextmanager
def progress_bar(total_s: float, name: str, stream: TextIO | None = None) -> Iterator[Callable[[float], None]]:
    """A progress bar over ``total_s`` seconds of scenario time on ``stream`` (default stderr); yields the
    function that sets how far the run is (seconds from the start). It disappears when the run ends."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    console = Console(file=stream or sys.stderr)
    columns = (TextColumn("[bold]{task.description}"), BarColumn(),
               TextColumn("{task.completed:,.0f} / {task.total:,.0f} s scenario time"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(f"scenario {name}", total=max(total_s, 1e-9))
        yield lambda done: progress.update(task, completed=done)


_MIN_WIDTH = 56


def _kwh(value: float) -> str:
    return f"{value:,.2f}"


def summary_tables(result: ScenarioResult) -> list[Table]:
    """The four summary tables of ``result``."""
    commands = Table(title="Commands by final state", min_width=_MIN_WIDTH)
    commands.add_column("state")
    commands.add_column("commands", justify="right")
    for status, n in sorted(result.counts.items(), key=lambda kv: (-kv[1], kv[0])):
        commands.add_row(status, str(n))
    commands.add_row("total", str(sum(result.counts.values())), style="bold")

    energy = Table(title="Energy per asset (kWh)", caption="from the applied setpoints; > 0 drawn, < 0 fed in",
                   min_width=_MIN_WIDTH)
    for heading in ("asset", "drawn", "fed", "net"):
        energy.add_column(heading, justify="left" if heading == "asset" else "right")
    totals = [0.0, 0.0, 0.0]
    for asset, net in result.energy_kwh.items():
        drawn, fed = result.energy_split_kwh.get(asset, (max(net, 0.0), max(-net, 0.0)))
        energy.add_row(asset, _kwh(drawn), _kwh(fed), _kwh(net))
        totals = [totals[0] + drawn, totals[1] + fed, totals[2] + net]
    energy.add_row("site", *(_kwh(v) for v in totals), style="bold")

    faults = Table(title="Faults and recoveries", caption="from the site's events", min_width=_MIN_WIDTH)
    used = [(k, h) for k, h in FAULT_COLUMNS if any(v.get(k) for v in result.faults.values())]
    faults.add_column("asset")
    for _, heading in used:
        faults.add_column(heading, justify="right")
    for asset, counts in result.faults.items():
        faults.add_row(asset, *(str(counts.get(k, 0)) for k, _ in used))
    if not result.faults:
        faults.add_row("(none)")

    expectations = Table(title="Expectations", min_width=_MIN_WIDTH)
    for heading in ("", "expected", "got"):
        expectations.add_column(heading)
    for e in result.expectations:
        expectations.add_row("[green]met[/green]" if e.met else "[red]NOT MET[/red]", e.text, e.actual)
    if not result.expectations:
        expectations.add_row("", "(none in the scenario file)", "")
    return [commands, energy, faults, expectations]


def print_summary(result: ScenarioResult, out: TextIO) -> None:
    """Print the summary of ``result`` to ``out``."""
    console = Console(file=out, highlight=False, width=None if out.isatty() else 110)
    console.print(f"scenario [bold]{result.name}[/bold]: {len(result.commands)} commands over "
                  f"{result.simulated_s:,.0f} s of scenario time in {result.wall_s:.1f} s "
                  f"({result.devices} devices, seed {result.seed})")
    for table in summary_tables(result):
        console.print(table)
    for failure in result.failures:
        console.print(f"EXPECTATION FAILED: {failure}", markup=False)
    met = sum(1 for e in result.expectations if e.met)
    console.print(f"{met} of {len(result.expectations)} expectations met"
                  + (f"; report in {result.report_dir}" if result.report_dir is not None else ""), markup=False)
