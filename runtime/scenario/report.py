"""The report folder of a run (``coordinator scenario FILE --report [DIR]``)::

    DIR/journal/commands.jnl, events.jnl   the site's own journal of the run
    DIR/setpoints.csv                      per schedule step and asset: time, asset, setpoint_kw, actual_kw,
                                           site_total_kw
    DIR/plot.png                           setpoints and actual power per asset; the site total against the
                                           grid limit; fault events marked (:mod:`.plot`)
    DIR/summary.json                       the JSON report (as ``--json`` prints it)

``setpoint_kw`` is the applied setpoint at that moment (> 0 drawn from the grid, < 0 fed in),
``actual_kw`` the power the device last reported, else the setpoint, and ``site_total_kw`` the sum of
the applied setpoints of every asset at that moment (see :mod:`.timeline`).
"""

from __future__ import annotations

import csv
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

from .model import Scenario
from .result import ScenarioResult
from .timeline import Timeline

__all__ = ["write_report", "write_setpoints", "SETPOINT_COLUMNS"]

SETPOINT_COLUMNS = ("time", "asset", "setpoint_kw", "actual_kw", "site_total_kw")


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=timezone.utc).isoformat()


def write_setpoints(path: Path, timeline: Timeline, steps_s: Sequence[float]) -> int:
    """Write ``setpoints.csv`` (one row per step and asset); returns the number of rows."""
    rows = 0
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(SETPOINT_COLUMNS)
        for step in steps_s:
            t = timeline.start + step
            total = round(timeline.site_total(t), 6)
            for asset in timeline.kinds:
                writer.writerow([_iso(t), asset, round(timeline.setpoint(asset, t), 6),
                                 round(timeline.actual(asset, t), 6), total])
                rows += 1
    return rows


def write_report(folder: Path, scenario: Scenario, timeline: Timeline, steps_s: Sequence[float],
                 result: ScenarioResult) -> None:
    """Write the report files into ``folder`` (the journal is already there: the site wrote it)."""
    folder.mkdir(parents=True, exist_ok=True)
    write_setpoints(folder / "setpoints.csv", timeline, steps_s)
    from .plot import plot_run
    plot_run(folder / "plot.png", scenario, timeline, steps_s)
    with (folder / "summary.json").open("w", encoding="utf-8") as f:
        json.dump(result.to_json(), f, indent=2)
        f.write("\n")
