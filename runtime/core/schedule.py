"""Schedule -> commands: turn a kW schedule (a DataFrame) into a :class:`~runtime.core.batch.CommandBatch`.

A schedule is a pandas DataFrame with a tz-aware :class:`pandas.DatetimeIndex` (one row per interval,
strictly increasing) and one column per asset channel. Recognised column names (``{id}`` is any
name that starts with a letter or digit and may contain letters, digits, ``_`` and ``-``):

=================================  ===================  ==================  ====================
column                             command type         asset_map key       unit
=================================  ===================  ==================  ====================
``ev_{id}_kw``                     SET_CHARGE_RATE      ``ev_{id}``         kW
``ev_{id}_power_limit_kw``         SET_POWER_LIMIT      ``ev_{id}``         kW
``battery_charge_kw``              SET_CHARGE_RATE      ``battery``         kW
``battery_discharge_kw``           SET_DISCHARGE_RATE   ``battery``         kW
``battery_power_limit_kw``         SET_POWER_LIMIT      ``battery``         kW
``battery_soc_target_pct``         SET_SOC_TARGET       ``battery``         percent (0..100)
``battery_{id}_charge_kw``         SET_CHARGE_RATE      ``battery_{id}``    kW
``battery_{id}_discharge_kw``      SET_DISCHARGE_RATE   ``battery_{id}``    kW
``battery_{id}_power_limit_kw``    SET_POWER_LIMIT      ``battery_{id}``    kW
``battery_{id}_soc_target_pct``    SET_SOC_TARGET       ``battery_{id}``    percent (0..100)
=================================  ===================  ==================  ====================

The asset id is ``asset_map[key]``; a key missing from the map is its own asset id (``ev_7`` drives
asset ``ev_7``). The ``_power_limit_kw`` suffix is matched before the plain ``_kw`` one, so
``ev_7_power_limit_kw`` is the power limit of ``ev_7``, never the charge rate of an ``ev_7_power_limit``.

Every value is rounded to 1e-6 (kW or percent) before anything else; a value that rounds to zero
(e.g. ``-1e-12`` solver noise) is zero. Everything else that a schedule could get wrong is a
:class:`ScheduleError` naming the column and the row (timestamp) and the offending value; nothing is
skipped or repaired silently:

* the index is not a DatetimeIndex, is timezone-naive, contains NaT, has a duplicate timestamp, or
  is not increasing;
* the frame has no rows or no columns; a column name is not one of the above or occurs twice;
* two columns drive the same asset with the same command type (e.g. two ``ev_*`` keys mapped to
  one asset);
* a column is not numeric (strings, booleans, datetimes, complex numbers);
* a value is NaN (missing: the schedule must say what the asset should do, so fill it, e.g.
  ``df.ffill()``, before submitting), infinite, negative, or a SOC target above 100 %;
* one asset is asked to charge and discharge (both > 0) in the same row.

Emission rule: for each (asset, command type) a command is emitted on the first row and on every row
where the (rounded) value differs from the previous row. Commands are ordered by time, then by column
order within a row; command ``i`` of the batch has id ``f"{batch_id}-{i}"``.

The implementation is vectorized: the only Python loop runs over the *columns* (to parse names);
all validation and change detection are numpy operations on the whole value matrix.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import NoReturn

import numpy as np
import pandas as pd

from .batch import CommandBatch, new_batch_id
from .commands import CommandType
from .errors import ScheduleError

__all__ = ["ScheduleError", "schedule_to_commands", "parse_column", "ROUND_DECIMALS"]

#: Values are rounded to this many decimals (1e-6 kW) before validation and change detection.
ROUND_DECIMALS = 6

_ID = r"[A-Za-z0-9][A-Za-z0-9_\-]*?"
_EV_LIMIT = re.compile(rf"^ev_(?P<id>{_ID})_power_limit_kw$")
_EV_RATE = re.compile(rf"^ev_(?P<id>{_ID})_kw$")
_BATTERY = re.compile(
    rf"^battery(?:_(?P<id>{_ID}))?_(?:(?P<ch>charge|discharge|power_limit)_kw|(?P<soc>soc_target)_pct)$")
_BATTERY_TYPES = {"charge": CommandType.SET_CHARGE_RATE, "discharge": CommandType.SET_DISCHARGE_RATE,
                  "power_limit": CommandType.SET_POWER_LIMIT}
_EXPECTED = ("ev_{id}_kw, ev_{id}_power_limit_kw, battery[_{id}]_charge_kw, battery[_{id}]_discharge_kw, "
             "battery[_{id}]_power_limit_kw or battery[_{id}]_soc_target_pct")
_EXPIRY_MODES = ("next_change", "none")



def parse_column(name: object) -> tuple[str, CommandType] | None:
    """The (asset_map key, command type) a schedule column drives, or None if the name is not recognised.

    >>> parse_column("ev_001_kw")
    ('ev_001', <CommandType.SET_CHARGE_RATE: 'SET_CHARGE_RATE'>)
    >>> parse_column("battery_2_discharge_kw")[0]
    'battery_2'
    """
    if not isinstance(name, str):
        return None
    m = _EV_LIMIT.match(name)
    if m:
        return f"ev_{m['id']}", CommandType.SET_POWER_LIMIT
    m = _EV_RATE.match(name)
    if m:
        return f"ev_{m['id']}", CommandType.SET_CHARGE_RATE
    m = _BATTERY.match(name)
    if m:
        key = "battery" if m["id"] is None else f"battery_{m['id']}"
        return key, (CommandType.SET_SOC_TARGET if m["soc"] else _BATTERY_TYPES[m["ch"]])
    return None


def schedule_to_commands(schedule: pd.DataFrame, asset_map: Mapping[str, str] | None = None, *,
                         batch_id: str | None = None, created_at: float | None = None, priority: int = 0,
                         source: str = "schedule", expiry: str = "next_change") -> CommandBatch:
    """Validate ``schedule`` and return the commands it implies, as a :class:`CommandBatch`.

    See the module docstring for the column names, the validation rules and the emission rule.

    :param schedule: tz-aware DatetimeIndex, strictly increasing; numeric columns (kW, or percent
        for ``*_soc_target_pct``).
    :param asset_map: asset_map key (``ev_{id}``, ``battery``, ``battery_{id}``) -> asset id; a key
        not in the map is used as the asset id. Keys that no column uses are ignored.
    :param batch_id: id of the batch (command ids are ``f"{batch_id}-{i}"``); default :func:`new_batch_id`.
    :param created_at: epoch seconds stamped on every command, or None.
    :param priority: priority of every command.
    :param source: source label of every command.
    :param expiry: ``"next_change"`` (default): a command expires when the next command for the same
        asset and type is scheduled; the last one of each (asset, type) expires one interval after the
        last row, the interval being the last one of the index (``t[-1] - t[-2]``); with a single-row
        schedule the interval is unknown and the command never expires. ``"none"``: no command expires.
    :raises ScheduleError: the schedule is invalid (the message names column, row and value).
    :raises ValueError: an argument other than the schedule is invalid (``expiry``, ``asset_map``).
    """
    if expiry not in _EXPIRY_MODES:
        raise ValueError(f"expiry: must be one of {_EXPIRY_MODES}, got {expiry!r}")
    if not isinstance(schedule, pd.DataFrame):
        raise ScheduleError(f"schedule must be a pandas DataFrame, got {type(schedule).__name__}")
    asset_map = {} if asset_map is None else asset_map
    index = schedule.index
    times = _validate_index(index)
    if schedule.shape[1] == 0:
        raise ScheduleError("schedule is empty: it has no columns")

    columns = list(schedule.columns)
    assets, col_asset, col_type = _parse_columns(columns, asset_map)
    values = _numeric_values(schedule, columns)
    _validate_values(values, columns, index, col_type)
    _check_charge_discharge(values, columns, index, col_asset, col_type)

    changed = np.empty(values.shape, dtype=bool)
    changed[0] = True
    np.not_equal(values[1:], values[:-1], out=changed[1:])
    # Row-major nonzero: sorted by row (time, strictly increasing), then column order.
    rows, cols = np.nonzero(changed)

    if expiry == "none":
        expires = None
    else:
        n_rows = len(times)
        end = times[-1] + (times[-1] - times[-2]) if n_rows > 1 else np.nan
        times_ext = np.append(times, end)
        # The same emissions in column-major order: the next one in a column is the next change of
        # that (asset, type); the last one of a column points at n_rows (times_ext[n_rows] = end).
        by_col, by_col_row = np.nonzero(changed.T)
        next_row = np.empty_like(by_col_row)
        next_row[:-1] = by_col_row[1:]
        next_row[-1] = n_rows
        next_row[:-1][by_col[1:] != by_col[:-1]] = n_rows
        next_at = np.empty(values.shape, dtype=np.intp)
        next_at[by_col_row, by_col] = next_row
        expires = times_ext[next_at[rows, cols]]

    return CommandBatch(
        batch_id if batch_id is not None else new_batch_id(), times[rows], col_asset[cols], assets,
        col_type[cols], values[rows, cols], expires, priority=priority, created_at=created_at, source=source,
        presorted=True)


def _validate_index(index: pd.Index) -> np.ndarray:
    """Check the index rules; return the timestamps as float epoch seconds."""
    if not isinstance(index, pd.DatetimeIndex):
        raise ScheduleError(f"index must be a pandas DatetimeIndex, got {type(index).__name__}")
    if index.tz is None:
        raise ScheduleError("index is timezone-naive; localize it, e.g. df.tz_localize('UTC')")
    if len(index) == 0:
        raise ScheduleError("schedule is empty: it has no rows")
    nat = np.flatnonzero(index.isna())
    if len(nat):
        raise ScheduleError(f"index row {nat[0]}: timestamp is missing (NaT)")
    ns = index.as_unit("ns").asi8
    if len(ns) > 1:
        step = np.diff(ns)
        dup = np.flatnonzero(step == 0)
        if len(dup):
            raise ScheduleError(f"index row {index[dup[0] + 1]}: duplicate timestamp")
        back = np.flatnonzero(step < 0)
        if len(back):
            i = back[0] + 1
            raise ScheduleError(f"index row {index[i]}: timestamps are not sorted "
                                f"(it comes after {index[i - 1]}); sort it, e.g. df.sort_index()")
    return (ns // 1_000_000_000).astype(np.float64) + (ns % 1_000_000_000) / 1e9


def _parse_columns(columns: list[object], asset_map: Mapping[str, str]
                   ) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Map every column to an asset code and a command type code (the one loop over columns)."""
    assets: dict[str, int] = {}
    channels: dict[tuple[str, CommandType], object] = {}
    col_asset = np.empty(len(columns), dtype=np.int32)
    col_type = np.empty(len(columns), dtype=np.int8)
    seen: set[object] = set()
    for j, name in enumerate(columns):
        if name in seen:
            raise ScheduleError(f"column {name!r}: occurs more than once")
        seen.add(name)
        parsed = parse_column(name)
        if parsed is None:
            raise ScheduleError(f"column {name!r}: unknown column; expected {_EXPECTED}")
        key, ctype = parsed
        asset = asset_map.get(key, key)
        if not isinstance(asset, str) or not asset:
            raise ValueError(f"asset_map[{key!r}]: must be a non-empty string, got {asset!r}")
        other = channels.setdefault((asset, ctype), name)
        if other != name:
            raise ScheduleError(f"column {name!r}: asset {asset!r} already gets {ctype.value} from column "
                                f"{other!r}; two columns cannot drive the same asset and command type")
        col_asset[j] = assets.setdefault(asset, len(assets))
        col_type[j] = CommandBatch.type_code(ctype)
    return list(assets), col_asset, col_type


def _numeric_values(schedule: pd.DataFrame, columns: list[object]) -> np.ndarray:
    """The values as a C-ordered float64 matrix rounded to ``ROUND_DECIMALS``; non-numeric columns raise."""
    kinds = {dtype.kind for dtype in set(schedule.dtypes)}
    if not kinds <= {"f", "i", "u"}:
        for j, dtype in enumerate(schedule.dtypes):
            if dtype.kind not in "fiu":
                _raise_non_numeric(schedule.iloc[:, j], columns[j], dtype)
    values = schedule.to_numpy(dtype=np.float64, na_value=np.nan)
    values = np.round(values, ROUND_DECIMALS)
    values += 0.0  # -0.0 (a tiny negative rounded away) becomes 0.0
    return np.ascontiguousarray(values)


def _raise_non_numeric(col: pd.Series, name: object, dtype: object) -> NoReturn:
    """Raise a ScheduleError naming the first non-numeric value of ``col`` (error path only)."""
    def is_number(v: object) -> bool:
        return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))

    bad = next(((ts, v) for ts, v in col.items() if not is_number(v)), None)
    where = f" row {bad[0]}: value {bad[1]!r} is not a number;" if bad is not None else ""
    raise ScheduleError(f"column {name!r}:{where} dtype {dtype} is not numeric (values must be int or float)")


def _validate_values(values: np.ndarray, columns: list[object], index: pd.DatetimeIndex,
                     col_type: np.ndarray) -> None:
    """NaN, infinities, negatives and SOC targets above 100 %, each named by column, row and value."""
    def fail(mask: np.ndarray, problem: str) -> NoReturn:
        r, c = np.argwhere(mask)[0]
        raise ScheduleError(f"column {columns[c]!r} row {index[r]}: value {float(values[r, c])!r} {problem}")

    finite = np.isfinite(values)
    if not finite.all():
        missing = np.isnan(values)
        if missing.any():
            fail(missing, "is missing (NaN); fill it (e.g. df.ffill()) or drop the column: "
                          "every cell must say what the asset should do")
        fail(~finite, "is not finite")
    negative = values < 0
    if negative.any():
        fail(negative, "is negative")
    soc = col_type == CommandBatch.type_code(CommandType.SET_SOC_TARGET)
    if soc.any():
        over = np.zeros(values.shape, dtype=bool)
        over[:, soc] = values[:, soc] > 100.0
        if over.any():
            fail(over, "is above 100 % (SOC target)")


def _check_charge_discharge(values: np.ndarray, columns: list[object], index: pd.DatetimeIndex,
                            col_asset: np.ndarray, col_type: np.ndarray) -> None:
    """An asset must not be asked to charge and discharge in the same row."""
    charge = np.flatnonzero(col_type == CommandBatch.type_code(CommandType.SET_CHARGE_RATE))
    discharge = np.flatnonzero(col_type == CommandBatch.type_code(CommandType.SET_DISCHARGE_RATE))
    if not len(discharge):
        return
    by_asset = dict(zip(col_asset[charge].tolist(), charge.tolist()))
    pairs = [(by_asset[a], d) for a, d in zip(col_asset[discharge].tolist(), discharge.tolist()) if a in by_asset]
    if not pairs:
        return
    ci, di = (np.array(p) for p in zip(*pairs))
    both = (values[:, ci] > 0) & (values[:, di] > 0)
    if both.any():
        r, k = np.argwhere(both)[0]
        c, d = ci[k], di[k]
        raise ScheduleError(f"row {index[r]}: columns {columns[c]!r} ({float(values[r, c])!r}) and "
                            f"{columns[d]!r} ({float(values[r, d])!r}) ask one asset to charge and discharge at the same time")
