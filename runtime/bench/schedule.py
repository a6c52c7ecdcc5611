"""Benchmark of :func:`runtime.core.schedule.schedule_to_commands` against a straightforward row-by-row reference.

Run it with ``coordinator bench --only schedule``. The figures (milliseconds of wall time, measured with
``time.perf_counter`` in one process run):

* ``ours_ms``: best of 5 runs of ``schedule_to_commands`` (validation included, commands stay columnar);
* ``reference_ms``: one run of :func:`reference_row_by_row` (``df.iterrows()``, one Command per change);
* ``speedup``: ``reference_ms / ours_ms``;
* ``materialize_ms``: one ``list(batch)``, i.e. building every Command object from the batch;
* ``commands``: number of commands (both implementations produce the same (asset, type, time, value) set,
  which the benchmark checks).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from runtime.core.commands import Command, CommandType, new_command_id
from runtime.core.schedule import ROUND_DECIMALS, parse_column, schedule_to_commands

__all__ = ["make_bench_schedule", "reference_row_by_row", "run_schedule_bench"]


def make_bench_schedule(n_assets: int = 1000, n_intervals: int = 288, seed: int = 0) -> pd.DataFrame:
    """A realistic EV schedule: columns ``ev_{i:04d}_kw``, five-minute UTC rows from 2026-01-01.

    Values are piecewise constant in 0..22 kW (0.1 kW steps); each cell starts a new segment with
    probability 1/6, so a value holds for about 6 intervals on average.
    """
    rng = np.random.default_rng(seed)
    levels = np.round(rng.uniform(0.0, 22.0, size=(n_intervals, n_assets)), 1)
    starts = rng.random((n_intervals, n_assets)) < 1 / 6
    starts[0] = True
    segment_start = np.maximum.accumulate(np.where(starts, np.arange(n_intervals)[:, None], 0), axis=0)
    values = np.take_along_axis(levels, segment_start, axis=0)
    index = pd.date_range("2026-01-01", periods=n_intervals, freq="5min", tz="UTC")
    return pd.DataFrame(values, index=index, columns=[f"ev_{i:04d}_kw" for i in range(n_assets)])


def reference_row_by_row(df: pd.DataFrame, asset_map: Mapping[str, str] | None = None) -> list[Command]:
    """The straightforward implementation: iterate rows, compare each column with its previous value.

    Column names are parsed with :func:`runtime.core.schedule.parse_column`; values are rounded the same way.
    There is no validation and no expiry: it is a speed and result reference, not a replacement.
    """
    asset_map = {} if asset_map is None else asset_map
    channels: dict[str, tuple[str, CommandType]] = {}
    for name in df.columns:
        parsed = parse_column(name)
        if parsed is None:
            raise ValueError(f"column {name!r}: unknown column")
        key, ctype = parsed
        channels[name] = (asset_map.get(key, key), ctype)
    previous: dict[str, float] = {}
    commands: list[Command] = []
    for ts, row in df.iterrows():
        when = ts.to_pydatetime()
        for name, (asset, ctype) in channels.items():
            value = round(float(row[name]), ROUND_DECIMALS) + 0.0
            if name not in previous or previous[name] != value:
                commands.append(Command(new_command_id(), asset, ctype, value, when, source="schedule"))
                previous[name] = value
    return commands


def _key_set(commands: list[Command]) -> set[tuple[str, CommandType, datetime, float]]:
    return {(c.asset_id, c.command_type, c.scheduled_time, c.value) for c in commands}


def run_schedule_bench(n_assets: int = 1000, n_intervals: int = 288, seed: int = 0) -> dict[str, Any]:
    """Time both implementations on :func:`make_bench_schedule` and check they agree.

    :returns: ``{"assets", "intervals", "commands", "ours_ms", "reference_ms", "speedup", "materialize_ms"}``
    :raises AssertionError: the two implementations produce different commands.
    """
    df = make_bench_schedule(n_assets, n_intervals, seed)
    ours_ms = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        batch = schedule_to_commands(df)
        ours_ms = min(ours_ms, (time.perf_counter() - t0) * 1e3)

    t0 = time.perf_counter()
    materialized = list(batch)
    materialize_ms = (time.perf_counter() - t0) * 1e3

    t0 = time.perf_counter()
    reference = reference_row_by_row(df)
    reference_ms = (time.perf_counter() - t0) * 1e3

    if len(reference) != len(materialized) or _key_set(reference) != _key_set(materialized):
        raise AssertionError(f"schedule_to_commands gave {len(materialized)} commands, the row-by-row "
                             f"reference {len(reference)}, and the (asset, type, time, value) sets differ")
    return {"assets": n_assets, "intervals": n_intervals, "commands": len(batch),
            "ours_ms": round(ours_ms, 2), "reference_ms": round(reference_ms, 1),
            "speedup": round(reference_ms / ours_ms, 1), "materialize_ms": round(materialize_ms, 1)}

