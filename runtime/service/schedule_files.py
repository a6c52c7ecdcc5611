"""Schedule files (CSV and Parquet) read into a schedule DataFrame, or into every problem they have.

:func:`read_schedule_file` is pure and blocking (file I/O and parsing): the watched folder runs it in
the loop's executor, never on the loop. It never raises for a bad file: it returns the problems, one
line each, each naming where it is (a CSV's line number and column, a Parquet file's row and column)
and the value, so that the ``.error`` file beside a refused schedule says everything at once.

CSV: the first line is the header; the first column holds the timestamps (ISO 8601: ``2026-01-01T08:00:00Z``,
``2026-01-01 08:00+01:00``), the others are kW (or SOC percent) columns named as for
:func:`~runtime.core.schedule.schedule_to_commands` (``ev_001_kw``, ``battery_charge_kw``, ...). Comma
separated, UTF-8 (a BOM is fine); blank lines are skipped. Parquet: a DatetimeIndex, or a first column
of timestamps, then the value columns. Timestamps without a zone are refused unless the folder has a
``timezone`` (then they are local times there; one that does not exist or is ambiguous at a daylight
saving change is refused). Every cell must be a finite number >= 0 (SOC targets at most 100); the
timestamps must be strictly increasing; every column must name an asset the site has (after
``asset_map``).
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import pandas as pd

from runtime.core.commands import CommandType
from runtime.core.schedule import parse_column

__all__ = ["ParsedSchedule", "read_schedule_file", "SCHEDULE_SUFFIXES", "MAX_PROBLEMS"]

#: The file name endings the folder takes (lower case).
SCHEDULE_SUFFIXES = (".csv", ".parquet")
#: At most this many problems are listed; the last line then says how many more there were.
MAX_PROBLEMS = 50

_EXPECTED = ("ev_{id}_kw, ev_{id}_power_limit_kw, battery[_{id}]_charge_kw, battery[_{id}]_discharge_kw, "
             "battery[_{id}]_power_limit_kw or battery[_{id}]_soc_target_pct")


@dataclass
class ParsedSchedule:
    """The schedule (``frame``: tz-aware UTC DatetimeIndex, float columns) or, when ``problems`` is not
    empty, None."""

    frame: pd.DataFrame | None
    problems: list[str] = field(default_factory=list)


_WHERE = re.compile(r"^(?:line|row) (\d+)")


class _Problems:
    """Collects problem lines; :meth:`result` lists them in file order (by the line or row they name;
    problems of the whole file first), at most MAX_PROBLEMS, and says how many more there were."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.more = 0

    def add(self, line: str) -> None:
        if len(self.lines) < 20 * MAX_PROBLEMS:  # bounded memory for a file that is wrong everywhere
            self.lines.append(line)
        else:
            self.more += 1

    def __bool__(self) -> bool:
        return bool(self.lines)

    def result(self) -> list[str]:
        def key(line: str) -> int:
            m = _WHERE.match(line)
            return int(m.group(1)) if m else 0
        ordered = sorted(self.lines, key=key)
        more = self.more + max(0, len(ordered) - MAX_PROBLEMS)
        return ordered[:MAX_PROBLEMS] + ([f"... and {more} more problem(s)"] if more else [])


def read_schedule_file(path: str | Path, *, timezone_name: str | None = None,
                       asset_map: Mapping[str, str] | None = None,
                       asset_ids: Collection[str] | None = None) -> ParsedSchedule:
    """Read a ``.csv`` or ``.parquet`` schedule (see the module docstring). ``asset_ids``: the site's
    assets (None: not checked)."""
    path = Path(path)
    problems = _Problems()
    tz: ZoneInfo | None = None
    if timezone_name is not None:
        try:
            tz = ZoneInfo(timezone_name)
        except (ZoneInfoNotFoundError, ValueError):
            return ParsedSchedule(None, [f"timezone: unknown time zone {timezone_name!r} in [sources.folder]"])
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            names, times, values, where = _read_csv(path, tz, problems)
        elif suffix == ".parquet":
            names, times, values, where = _read_parquet(path, tz, problems)
        else:
            expected = " or ".join(SCHEDULE_SUFFIXES)
            return ParsedSchedule(None, [f"{path.name}: not a schedule file (expected {expected})"])
    except UnicodeDecodeError as exc:
        return ParsedSchedule(None, [f"{path.name}: not UTF-8 text ({exc.reason} at byte {exc.start})"])
    except OSError:
        raise
    except Exception as exc:  # a damaged file the reader cannot make sense of
        return ParsedSchedule(None, [f"{path.name}: cannot be read as {suffix[1:]}: {type(exc).__name__}: {exc}"])
    if names is None:
        return ParsedSchedule(None, problems.result())
    _check_columns(names, asset_map or {}, asset_ids, problems,
                   header_where="line 1" if suffix == ".csv" else None)
    if times is not None:
        _check_order(times, where, problems)
        if values is not None:
            _check_values(names, values, where, problems)
    if problems or times is None or values is None:
        return ParsedSchedule(None, problems.result() or [f"{path.name}: no schedule rows"])
    index = pd.DatetimeIndex(times.astype("datetime64[ns]")).tz_localize("UTC")
    return ParsedSchedule(pd.DataFrame(values, index=index, columns=names))


# ---- CSV ---------------------------------------------------------------------------------------------

#: What a reader returns: column names, UTC nanoseconds per row, the value matrix, and where row i is
#: ("line 7" in a CSV, "row 7" in a Parquet file). None for what could not be read (the problems say why).
_Read = tuple[list[str] | None, np.ndarray | None, np.ndarray | None, Callable[[int], str]]


def _row_where(i: int) -> str:
    return f"row {i + 1}"


def _read_csv(path: Path, tz: ZoneInfo | None, problems: _Problems) -> _Read:
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        while header is not None and not any(cell.strip() for cell in header):
            header = next(reader, None)  # leading blank lines
        if header is None:
            problems.add("line 1: the file is empty; expected a header: a timestamp column, then the schedule "
                         "columns")
            return None, None, None, _row_where
        header_line = reader.line_num
        header = [h.strip() for h in header]
        if len(header) < 2:
            problems.add(f"line {header_line}: expected a timestamp column and at least one schedule column, "
                         f"got {header!r}")
            return None, None, None, _row_where
        time_name, names = header[0] or "(first column)", header[1:]
        lines: list[int] = []
        raw_times: list[str] = []
        rows: list[list[str]] = []
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue  # a blank line
            if len(row) != len(header):
                problems.add(f"line {reader.line_num}: {len(row)} fields, expected {len(header)} "
                             f"({', '.join(header)})")
                continue
            lines.append(reader.line_num)
            raw_times.append(row[0].strip())
            rows.append(row[1:])
    if not rows:
        if not problems:
            problems.add(f"{path.name}: no schedule rows after the header")
        return names, None, None, _row_where

    def where(i: int) -> str:
        return f"line {lines[i]}"
    times = _parse_times(raw_times, lambda i: f"{where(i)}, column {time_name!r}", tz, problems)
    values = np.full((len(rows), len(names)), np.nan)
    bad = np.zeros(values.shape, dtype=bool)
    for i, row in enumerate(rows):
        for j, cell in enumerate(row):
            text = cell.strip()
            if not text:
                problems.add(f"line {lines[i]}, column {names[j]!r}: empty cell (every cell must say what the "
                             f"asset should do; write 0 to stop it)")
                bad[i, j] = True
                continue
            try:
                values[i, j] = float(text)
            except ValueError:
                problems.add(f"line {lines[i]}, column {names[j]!r}: {text!r} is not a number")
                bad[i, j] = True
    values[bad] = 0.0  # reported already: the value checks below skip them
    return names, times, values, where


# ---- Parquet -----------------------------------------------------------------------------------------

def _read_parquet(path: Path, tz: ZoneInfo | None, problems: _Problems) -> _Read:
    frame = pd.read_parquet(path)
    if isinstance(frame.index, pd.DatetimeIndex):
        stamps, data, time_name = frame.index, frame, "index"
    elif frame.shape[1] >= 1 and _looks_like_times(frame.iloc[:, 0]):
        stamps, data, time_name = frame.iloc[:, 0], frame.iloc[:, 1:], str(frame.columns[0])
    else:
        first = f"first column {frame.columns[0]!r} ({frame.dtypes.iloc[0]})" if frame.shape[1] else "no columns"
        problems.add(f"{path.name}: needs a DatetimeIndex or a first column of timestamps; got a "
                     f"{type(frame.index).__name__} and {first}")
        return None, None, None, _row_where
    names = [str(c) for c in data.columns]
    if not names:
        problems.add(f"{path.name}: no schedule columns beside the timestamps")
        return None, None, None, _row_where
    if len(data) == 0:
        problems.add(f"{path.name}: no schedule rows")
        return names, None, None, _row_where
    times = _parse_times(list(stamps), lambda i: f"row {i + 1}, column {time_name!r}", tz, problems)
    values = np.full(data.shape, np.nan)
    for j, name in enumerate(names):
        column = data.iloc[:, j]
        if column.dtype.kind in "fiu":
            values[:, j] = column.to_numpy(dtype=np.float64, na_value=np.nan)
            continue
        for i, cell in enumerate(column.tolist()):
            if isinstance(cell, (int, float, np.integer, np.floating)) and not isinstance(cell, (bool, np.bool_)):
                values[i, j] = float(cell)
            elif cell is None:
                values[i, j] = np.nan
            else:
                problems.add(f"row {i + 1}, column {name!r}: {cell!r} is not a number "
                             f"(column type {column.dtype})")
                values[i, j] = 0.0
    return names, times, values, _row_where


def _looks_like_times(column: pd.Series) -> bool:
    if column.dtype.kind == "M" or isinstance(column.dtype, pd.DatetimeTZDtype):
        return True
    textual = column.dtype == object or pd.api.types.is_string_dtype(column.dtype)
    return textual and all(isinstance(v, (str, datetime)) for v in column.head(5))


# ---- shared checks -----------------------------------------------------------------------------------

def _parse_times(raw: list[Any], where: Callable[[int], str], tz: ZoneInfo | None,
                 problems: _Problems) -> np.ndarray | None:
    """UTC nanoseconds per row (int64), or None when a timestamp is bad (each bad one is a problem)."""
    out = np.zeros(len(raw), dtype=np.int64)
    naive_rows: list[int] = []
    naive_values: list[datetime] = []
    ok = True
    for i, value in enumerate(raw):
        if value is None or value is pd.NaT or value == "":
            problems.add(f"{where(i)}: the timestamp is missing")
            ok = False
            continue
        try:
            stamp = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
        except ValueError:
            problems.add(f"{where(i)}: {value!r} is not an ISO 8601 timestamp (e.g. 2026-01-01T08:00:00Z)")
            ok = False
            continue
        if stamp.tzinfo is None:
            naive_rows.append(i)
            naive_values.append(stamp)
            continue
        out[i] = pd.Timestamp(stamp).tz_convert("UTC").value
    if naive_rows and tz is None:
        first = naive_rows[0]
        others = f" (and {len(naive_rows) - 1} more like it)" if len(naive_rows) > 1 else ""
        problems.add(f"{where(first)}: {str(raw[first])!r} has no time zone{others}; write the zone "
                     f"(2026-01-01T08:00:00+01:00 or ...Z), or set timezone in [sources.folder]")
        return None
    if naive_rows:
        local = pd.DatetimeIndex(naive_values).tz_localize(tz, ambiguous="NaT", nonexistent="NaT")
        for i, stamp, original in zip(naive_rows, local, naive_values):
            if stamp is pd.NaT:
                problems.add(f"{where(i)}: {str(raw[i])!r} does not exist or is ambiguous in {tz.key} "
                             f"(a daylight saving change); write its UTC offset")
                ok = False
            else:
                out[i] = stamp.tz_convert("UTC").value
    return out if ok else None


def _check_order(times: np.ndarray, where: Callable[[int], str], problems: _Problems) -> None:
    for i in np.flatnonzero(np.diff(times) <= 0).tolist():
        later = pd.Timestamp(int(times[i + 1]), tz="UTC").isoformat()
        if times[i + 1] == times[i]:
            problems.add(f"{where(i + 1)}: duplicate timestamp {later} (also on {where(i)})")
        else:
            problems.add(f"{where(i + 1)}: timestamp {later} comes before the one on {where(i)}; sort the rows")


def _check_columns(names: list[str], asset_map: Mapping[str, str], asset_ids: Collection[str] | None,
                   problems: _Problems, header_where: str | None) -> None:
    prefix = f"{header_where}, " if header_where else ""
    seen: set[str] = set()
    unknown: dict[str, list[str]] = {}
    for name in names:
        if name in seen:
            problems.add(f"{prefix}column {name!r}: occurs more than once")
        seen.add(name)
        parsed = parse_column(name)
        if parsed is None:
            problems.add(f"{prefix}column {name!r}: unknown column; expected {_EXPECTED}")
            continue
        asset = asset_map.get(parsed[0], parsed[0])
        if asset_ids is not None and asset not in asset_ids:
            unknown.setdefault(asset, []).append(name)
    for asset, columns in unknown.items():
        known = ", ".join(map(repr, sorted(asset_ids or ())))
        problems.add(f"{prefix}column {columns[0]!r}: unknown asset {asset!r}; this site has {known} "
                     f"(map schedule keys to asset ids with asset_map in [sources.folder])")


def _check_values(names: list[str], values: np.ndarray, where: Callable[[int], str], problems: _Problems) -> None:
    soc = np.array([(parse_column(n) or ("", None))[1] is CommandType.SET_SOC_TARGET for n in names], dtype=bool)
    checks = ((np.isnan(values), "is missing (NaN); every cell must say what the asset should do"),
              (np.isinf(values), "is not finite"),
              (values < 0, "is negative (direction is in the column name: charge or discharge)"),
              (np.zeros(values.shape, dtype=bool) if not soc.any() else (values > 100) & soc[None, :],
               "is above 100 % (SOC target)"))
    for mask, problem in checks:
        for i, j in np.argwhere(mask).tolist():
            shown = values[i, j]
            problems.add(f"{where(i)}, column {names[j]!r}: value {_number(shown)} {problem}")


def _number(value: float) -> str:
    return repr(float(value)) if math.isfinite(value) else str(value)
