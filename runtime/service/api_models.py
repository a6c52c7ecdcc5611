"""The JSON shapes of the local HTTP API (:mod:`runtime.service.http_api`): pydantic request models,
and plain dicts for the answers (a command's snapshot, an asset's status).

Requests are strict where a loose type would hide a mistake: numbers must be JSON numbers (``"7"`` is
refused, as are ``true`` and NaN), times must be ISO 8601 strings with a zone (``2026-01-01T08:00:00Z``
or ``+01:00``: a naive time is refused, never guessed), unknown keys are refused. Pure data: nothing
here touches the site, so these run wherever they are called (the loop, or the executor for a large
schedule).
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timezone
from enum import Enum
from typing import Annotated, Any

import pandas as pd
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from runtime.core.assets import AssetStatus
from runtime.core.commands import Command, CommandType

__all__ = ["CommandIn", "ScheduleIn", "command_json", "asset_json", "schedule_frame"]

Number = Annotated[float, Field(strict=True, allow_inf_nan=False)]
Integer = Annotated[int, Field(strict=True)]
Id = Annotated[str, Field(min_length=1, max_length=200)]


class CommandIn(BaseModel):
    """``POST /api/v1/commands``: one command. ``command_id`` defaults to a new unique id; a known id
    is a no-op (the answer says ``new: false``). ``scheduled_time`` defaults to now (the site clock)."""

    model_config = ConfigDict(extra="forbid")

    command_id: Id | None = None
    asset_id: Id
    command_type: CommandType
    value: Number
    scheduled_time: AwareDatetime | None = None
    expires_at: AwareDatetime | None = None
    priority: Integer = 0


class ScheduleIn(BaseModel):
    """``POST /api/v1/schedules``: a schedule as columns. ``index`` holds the row times; each entry of
    ``columns`` is one schedule column (named as for :func:`~runtime.core.schedule.schedule_to_commands`,
    e.g. ``ev_001_kw``) with one value per row. ``batch_id`` names the batch (a known one is a no-op);
    ``replace`` supersedes the assets' pending commands from the first row on."""

    model_config = ConfigDict(extra="forbid")

    index: Annotated[list[AwareDatetime], Field(min_length=1)]
    columns: Annotated[dict[str, list[Number]], Field(min_length=1)]
    asset_map: dict[str, Id] = {}
    batch_id: Id | None = None
    replace: Annotated[bool, Field(strict=True)] = True
    priority: Integer = 0

    @model_validator(mode="after")
    def _lengths(self) -> "ScheduleIn":
        rows = len(self.index)
        for name, values in self.columns.items():
            if len(values) != rows:
                raise ValueError(f"columns.{name}: {len(values)} values, but index has {rows} rows")
        return self


def schedule_frame(body: ScheduleIn) -> pd.DataFrame:
    """The schedule as a DataFrame with a UTC DatetimeIndex (mixed offsets in ``index`` are fine)."""
    index = pd.DatetimeIndex([t.astimezone(timezone.utc) for t in body.index])
    return pd.DataFrame({name: pd.Series(values, index=index, dtype="float64")
                         for name, values in body.columns.items()}, index=index)


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    return value


def command_json(command: Command) -> dict[str, Any]:
    """Every field of a command's snapshot (times as ISO 8601 strings, enums as their names), plus
    ``setpoint`` (what the device is told: ``granted`` when the grid limit scaled it, else ``value``)."""
    out = {name: _plain(getattr(command, name)) for name in command._fields}
    setpoint = getattr(command, "setpoint", None)
    if setpoint is not None:
        out["setpoint"] = setpoint
    return out


def asset_json(status: AssetStatus, kind: str | None = None) -> dict[str, Any]:
    """An asset's :class:`~runtime.core.assets.AssetStatus` fields, plus its ``kind``."""
    out = dataclasses.asdict(status)
    if kind is not None:
        out["kind"] = kind
    return out
