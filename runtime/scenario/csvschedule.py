"""A scenario's CSV schedule -> a tz-aware schedule DataFrame, every bad cell named by its line and column.

The file has a header line; the first column holds the timestamps, the others kW (or percent) values
named as for :func:`~runtime.core.schedule.schedule_to_commands`. It is read with the :mod:`csv`
module rather than pandas, so that a problem names the cell's own line in the file (blank lines and
quoted line breaks included) and its column by header name:

    schedule.csv line 5, column 'ev_001_kw': got 'eleven', expected a number

Timestamps must say their time zone (``2026-01-15T17:00:00+01:00`` or ``...Z``) unless the scenario
states one (``[schedule] timezone = "Europe/Berlin"``), which naive timestamps are then read in (a local
time that does not exist or is ambiguous at a DST change is refused). Values must be finite numbers
>= 0. What the schedule converter checks on the whole frame (column names, increasing times, charge
and discharge at once, ...) is left to it; the loader reports its message too.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pandas as pd

__all__ = ["read_schedule_csv", "MAX_CELL_PROBLEMS"]

#: Bad cells reported one line each; beyond this, one line says how many more there are.
MAX_CELL_PROBLEMS = 20


def _timestamp(text: str, timezone: str | None) -> tuple[pd.Timestamp | None, str | None, bool]:
    """(timestamp, problem, naive) for one timestamp cell."""
    try:
        ts = pd.Timestamp(text.strip())
    except (ValueError, TypeError, OverflowError):
        return None, f"got {text!r}, expected an ISO timestamp (e.g. 2026-01-15T17:00:00+00:00)", False
    if ts is pd.NaT or pd.isna(ts):
        return None, f"got {text!r}, expected an ISO timestamp (e.g. 2026-01-15T17:00:00+00:00)", False
    if ts.tzinfo is not None:
        return ts.tz_convert("UTC"), None, False
    if timezone is None:
        return None, None, True
    try:
        return ts.tz_localize(timezone, ambiguous="raise", nonexistent="raise").tz_convert("UTC"), None, True
    except (ValueError, TypeError) as exc:  # pytz/zoneinfo: AmbiguousTimeError, NonExistentTimeError
        why = "is ambiguous" if "mbiguous" in type(exc).__name__ + str(exc) else "does not exist"
        return None, f"local time {text!r} {why} in {timezone} (a daylight saving change): give its offset", True


def _number(text: str) -> tuple[float | None, str | None]:
    stripped = text.strip()
    if not stripped:
        return None, "empty, expected a number (every cell needs a value)"
    try:
        value = float(stripped)
    except ValueError:
        return None, f"got {text!r}, expected a number"
    if not math.isfinite(value):
        return None, f"got {text!r}, expected a finite number"
    if value < 0:
        return None, f"got {text!r}, expected a value >= 0 (direction is in the column name)"
    return value, None


def read_schedule_csv(path: Path, where: str,
                      timezone: str | None = None) -> tuple[pd.DataFrame | None, list[str]]:
    """The schedule in ``path`` and the problems found (one line each, prefixed with ``where``, the key the
    user wrote, e.g. ``schedule.csv``); the frame is None when there is any problem."""
    try:
        handle = path.open(newline="", encoding="utf-8")
    except FileNotFoundError:
        return None, [f"{where}: no such file {path}"]
    except IsADirectoryError:
        return None, [f"{where}: {path} is a folder, not a CSV file"]
    except OSError as exc:
        return None, [f"{where}: cannot read {path} ({exc.strerror or exc})"]
    problems: list[str] = []
    cell_problems = 0
    naive_lines: list[int] = []

    def cell(line: int, column: str, text: str) -> None:
        nonlocal cell_problems
        cell_problems += 1
        if cell_problems <= MAX_CELL_PROBLEMS:
            problems.append(f"{where} line {line}, column {column!r}: {text}")

    times: list[pd.Timestamp] = []
    rows: list[list[float]] = []
    previous: tuple[pd.Timestamp, int] | None = None
    with handle:
        reader = csv.reader(handle)
        try:
            header = next(reader, None)
            while header is not None and not any(h.strip() for h in header):
                header = next(reader, None)  # leading blank lines
            if header is None:
                return None, [f"{where}: {path} is empty (expected a header line: timestamp, then kW columns)"]
            names = [h.strip() for h in header]
            if len(names) < 2:
                return None, [f"{where} line {reader.line_num}: expected a timestamp column and at least one "
                              f"value column, got {header!r}"]
            for i, name in enumerate(names):
                if not name:
                    problems.append(f"{where} line {reader.line_num}: column {i + 1} has no name")
            for record in reader:
                line = reader.line_num
                if not any(c.strip() for c in record):
                    continue
                if len(record) != len(names):
                    problems.append(f"{where} line {line}: {len(record)} cells, expected {len(names)} "
                                    f"(as in the header)")
                    continue
                ts, why, naive = _timestamp(record[0], timezone)
                if why is not None:
                    cell(line, names[0], why)
                elif naive and timezone is None:
                    naive_lines.append(line)
                if ts is not None:
                    if previous is not None and ts <= previous[0]:
                        cell(line, names[0], f"{record[0].strip()!r} is not after the previous row's time "
                                             f"(line {previous[1]}): timestamps must increase")
                    previous = (ts, line)
                values: list[float] = []
                for name, text in zip(names[1:], record[1:]):
                    value, why = _number(text)
                    if why is not None:
                        cell(line, name, why)
                    values.append(value if value is not None else math.nan)
                times.append(ts if ts is not None else pd.NaT)
                rows.append(values)
        except csv.Error as exc:
            problems.append(f"{where} line {reader.line_num}: not valid CSV ({exc})")
        except UnicodeDecodeError:
            problems.append(f"{where}: {path} is not UTF-8 text")
    if cell_problems > MAX_CELL_PROBLEMS:
        problems.append(f"{where}: ... and {cell_problems - MAX_CELL_PROBLEMS} more bad cells")
    if naive_lines:
        first = naive_lines[0]
        problems.append(f"{where} line {first}, column {names[0]!r}: timestamp has no time zone "
                        f"({len(naive_lines)} such rows); write it with an offset (e.g. +00:00) or state the "
                        f"file's zone: [schedule] timezone = \"Europe/Berlin\"")
    if not problems and not rows:
        problems.append(f"{where}: {path} has a header but no rows")
    if problems:
        return None, problems
    index = pd.DatetimeIndex(times, name=names[0])
    frame = pd.DataFrame(rows, index=index, columns=names[1:], dtype=float)
    return frame, []
