"""``plot.png`` of a run: matplotlib, drawn off-screen (the Agg canvas; no display, no global backend change).

Top: each asset's applied setpoint (solid steps) and, where the device reported its power, the actual
power (dashed). Bottom: the site total of the applied setpoints against the grid's import limit (and
the export limit, below zero) when the scenario has one, with the total the schedule requested. Fault
events (a FAULTED state, a lost link, an actor crash) are vertical lines on both.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .model import Scenario
from .timeline import Timeline

__all__ = ["plot_run"]

#: Above this many assets the per-asset legend is left out (it would hide the plot).
LEGEND_MAX_ASSETS = 12
_MARK_COLOURS = {"fault": "tab:red", "link lost": "tab:orange", "crash": "tab:purple"}


def _steps(times: Sequence[float], value_at, start: float, end: float) -> tuple[list[float], list[float]]:
    """x (hours from the start) and y of a step plot through every change in ``times``."""
    xs = [start] + [t for t in times if start < t < end] + [end]
    return [(x - start) / 3600.0 for x in xs], [value_at(x) for x in xs]


def plot_run(path: Path, scenario: Scenario, timeline: Timeline, steps_s: Sequence[float]) -> None:
    """Draw the run's plot into ``path`` (PNG)."""
    start, end = timeline.start, timeline.end
    fig = Figure(figsize=(11, 7.5), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True)
    assets = list(timeline.kinds)
    for asset in assets:
        xs, ys = _steps(timeline.change_times(asset), lambda t, a=asset: timeline.setpoint(a, t), start, end)
        (line,) = top.step(xs, ys, where="post", linewidth=1.2, label=f"{asset} setpoint")
        reported = timeline.telemetry_times(asset)
        if reported:
            times = sorted(set(reported) | set(timeline.change_times(asset)))
            xs, ys = _steps(times, lambda t, a=asset: timeline.actual(a, t), start, end)
            top.step(xs, ys, where="post", linewidth=1.0, linestyle="--", color=line.get_color(),
                     label=f"{asset} actual")
    top.axhline(0, color="grey", linewidth=0.6)
    top.set_ylabel("kW (> 0 drawn)")
    top.set_title(f"{scenario.name}: setpoints and actual power per asset ({len(assets)} assets)")
    if len(assets) <= LEGEND_MAX_ASSETS:
        top.legend(loc="upper right", fontsize="small", ncols=2)

    every = sorted({t for a in assets for t in timeline.change_times(a)})
    xs, ys = _steps(every, timeline.site_total, start, end)
    bottom.step(xs, ys, where="post", color="black", linewidth=1.4, label="site total (applied setpoints)")
    if scenario.grid.import_limit_kw is not None or scenario.grid.export_limit_kw is not None:
        xs, ys = _steps(every, timeline.requested_total, start, end)
        bottom.step(xs, ys, where="post", color="grey", linewidth=1.0, linestyle="--",
                    label="site total requested")
    if scenario.grid.import_limit_kw is not None:
        bottom.axhline(scenario.grid.import_limit_kw, color="tab:red", linestyle="--",
                       label=f"import limit {scenario.grid.import_limit_kw:g} kW")
    if scenario.grid.export_limit_kw is not None:
        bottom.axhline(-scenario.grid.export_limit_kw, color="tab:blue", linestyle="--",
                       label=f"export limit {scenario.grid.export_limit_kw:g} kW")
    bottom.axhline(0, color="grey", linewidth=0.6)
    bottom.set_ylabel("site kW (> 0 imported)")
    zone = scenario.start.tzinfo or timezone.utc
    when = datetime.fromtimestamp(start, tz=zone).isoformat(sep=" ", timespec="minutes")
    bottom.set_xlabel(f"hours from the start ({when})")

    labelled: set[str] = set()
    for t, asset, what in timeline.fault_marks():
        x = (t - start) / 3600.0
        for ax in (top, bottom):
            ax.axvline(x, color=_MARK_COLOURS.get(what, "tab:grey"), linestyle=":", linewidth=1.0,
                       label=what if ax is bottom and what not in labelled else None)
        labelled.add(what)
    bottom.legend(loc="upper right", fontsize="small")
    fig.savefig(path, format="png")
