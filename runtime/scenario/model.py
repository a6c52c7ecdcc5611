"""The scenario file as pydantic models (strict, unknown keys refused), and the loaded :class:`Scenario`.

The asset, grid, retry and timeout sections are the site configuration's own models
(:mod:`runtime.config.models`), so a scenario is exactly as strict as a site file: ``max_kws`` is an
unknown key, ``max_kw = "eleven"`` a wrong type, ``max_kw = -5`` a negative limit, each reported with
its key path. What a scenario adds (the schedule, the fault events, the expectations) is modelled
here. Checks that need more than one section at a time (an event's asset and its kind, an event time
against the end of the run, a state name against the asset's kind) are made by the loader
(:mod:`.loader`), on the raw table, so that they are reported together with everything else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal, Union
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pandas as pd
from pydantic import Field, field_validator, model_validator

from runtime.config.models import (BatteryConfig, ChargerConfig, GridConfig, NonNegative, Positive, RetryConfig,
                                   Strict, TimeoutsConfig, check_unique_ids)
from runtime.core.commands import CommandStatus
from runtime.core.events import EventType
from runtime.core.statemachine import BatteryState, EVChargerState

__all__ = [
    "ACTIONS", "STATES", "ScenarioCharger", "ScenarioBattery", "ScheduleSection", "EventConfig", "ExpectAt",
    "ExpectConfig", "ScenarioConfig", "FaultEvent", "Scenario",
]

#: Fault actions, in the order the docs list them.
ACTIONS = ("status", "reject", "fail_next", "silent", "connected", "reboot", "crash")
#: State names per asset kind (what ``status`` events and ``[expect] states`` may name).
STATES: dict[str, tuple[str, ...]] = {"charger": tuple(s.name for s in EVChargerState),
                                      "battery": tuple(s.name for s in BatteryState)}
#: The asset states an ``[expect] states`` entry may also name: the site's own verdict on an asset
#: whose link is down or whose actor is not running (``Site.asset_state``).
SITE_STATES = ("UNAVAILABLE",)

_NO_CONNECTION = ("a scenario's assets have no {key} connection: the scenario brings its own devices "
                  "(devices = \"memory\" or \"sim\"); remove it")
NonNegativeInt = Annotated[int, Field(ge=0)]


class ScenarioCharger(ChargerConfig):
    """A charger of a scenario: the site model's charger, without a connection (the scenario makes the device)."""

    @field_validator("ocpp", mode="before")
    @classmethod
    def _no_ocpp(cls, value: Any) -> Any:
        if value is not None:
            raise ValueError(_NO_CONNECTION.format(key="ocpp"))
        return value


class ScenarioBattery(BatteryConfig):
    """A battery of a scenario: the site model's battery, without a connection."""

    @field_validator("modbus", mode="before")
    @classmethod
    def _no_modbus(cls, value: Any) -> Any:
        if value is not None:
            raise ValueError(_NO_CONNECTION.format(key="modbus"))
        return value


ScenarioAsset = Annotated[Union[ScenarioCharger, ScenarioBattery], Field(discriminator="kind")]


class ScheduleSection(Strict):
    """``[schedule]``: the CSV file (relative to the scenario file), how its column keys map to asset ids,
    and the time zone of naive timestamps (none: naive timestamps are refused, as for DataFrames)."""

    csv: Annotated[str, Field(min_length=1)]
    asset_map: dict[str, str] = {}
    timezone: str | None = None

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                ZoneInfo(value)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(f"unknown time zone {value!r} (an IANA name such as 'Europe/Berlin' or 'UTC')") \
                    from None
        return value


class EventConfig(Strict):
    """``[[events]]``: at ``at_s`` seconds after the start, do ``action`` to ``asset``'s device.

    ``value`` by action: status: a state name of the asset's kind; reject: the reason ("" stops
    rejecting); fail_next: how many of the next commands fail; silent / connected: true or false;
    reboot, crash: none."""

    at_s: float
    asset: Annotated[str, Field(min_length=1)]
    action: str
    value: Any = None

    @field_validator("action")
    @classmethod
    def _known_action(cls, value: str) -> str:
        if value not in ACTIONS:
            raise ValueError(f"unknown action {value!r}; choose from {', '.join(ACTIONS)}")
        return value

    @model_validator(mode="after")
    def _value_fits_action(self) -> "EventConfig":
        v, action = self.value, self.action
        if action == "status" and not isinstance(v, str):
            raise ValueError(f"value: got {v!r}, expected a state name (text) for action 'status'")
        if action == "reject" and not isinstance(v, str):
            raise ValueError(f"value: got {v!r}, expected the reason as text (\"\" stops rejecting) for action "
                             f"'reject'")
        if action == "fail_next" and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ValueError(f"value: got {v!r}, expected a whole number >= 1 (how many commands fail) for action "
                             f"'fail_next'")
        if action in ("silent", "connected") and not isinstance(v, bool):
            raise ValueError(f"value: got {v!r}, expected true or false for action {action!r}")
        if action in ("reboot", "crash") and v is not None:
            raise ValueError(f"value: action {action!r} takes no value, got {v!r}")
        return self


class ExpectAt(Strict):
    """``[[expect.at]]``: asset states at a moment of the run (``at_s`` seconds after the start), as they are
    once the schedule's commands due then and the events at that moment have been handled."""

    at_s: float
    states: Annotated[dict[str, str], Field(min_length=1)]


def _names(keys: dict[str, Any], allowed: Any, what: str) -> dict[str, Any]:
    names = {m.value for m in allowed}
    for key in keys:
        if key not in names:
            raise ValueError(f"{key}: unknown {what} {key!r}; choose from {', '.join(sorted(names))}")
    return keys


class ExpectConfig(Strict):
    """``[expect]``: what must hold at the end of the run (each entry is one expectation, met or not).

    ``counts``: exact number of the schedule's commands per status; ``min_counts``: at least;
    ``states``: each asset's final state; ``events`` / ``min_events``: exact / least number of events
    of a type; ``min_limited``: at least this many commands were granted less than requested (the grid
    limit); ``max_import_kw``: the site's total applied setpoint never exceeded this; ``energy_kwh``:
    an asset's net energy (kWh, > 0 drawn) within ``[min, max]``; ``[[expect.at]]``: states at a time."""

    counts: dict[str, NonNegativeInt] = {}
    min_counts: dict[str, NonNegativeInt] = {}
    states: dict[str, str] = {}
    events: dict[str, NonNegativeInt] = {}
    min_events: dict[str, NonNegativeInt] = {}
    min_limited: NonNegativeInt | None = None
    max_import_kw: NonNegative | None = None
    energy_kwh: dict[str, Annotated[list[float], Field(min_length=2, max_length=2)]] = {}
    at: list[ExpectAt] = []

    @field_validator("counts", "min_counts")
    @classmethod
    def _statuses(cls, value: dict[str, int]) -> dict[str, int]:
        return _names(value, CommandStatus, "command status")

    @field_validator("events", "min_events")
    @classmethod
    def _event_types(cls, value: dict[str, int]) -> dict[str, int]:
        return _names(value, EventType, "event type")

    @field_validator("energy_kwh")
    @classmethod
    def _ranges(cls, value: dict[str, list[float]]) -> dict[str, list[float]]:
        for asset, (lo, hi) in value.items():
            if lo > hi:
                raise ValueError(f"{asset}: the range [{lo}, {hi}] is empty (give [min, max])")
        return value


class ScenarioConfig(Strict):
    """A whole scenario file (see :mod:`runtime.scenario`)."""

    name: Annotated[str, Field(min_length=1)] | None = None
    start: datetime
    duration_s: Positive | None = None
    seed: NonNegativeInt = 0
    devices: Literal["memory", "sim"] = "memory"
    #: OCPP security profile of the simulated chargers (``devices = "sim"``; memory devices have no link)
    security_profile: Literal[0, 1, 2, 3] = 0
    assets: Annotated[list[ScenarioAsset], Field(min_length=1)]
    schedule: ScheduleSection
    events: list[EventConfig] = []
    expect: ExpectConfig = ExpectConfig()
    grid: GridConfig = GridConfig()
    retry: RetryConfig = RetryConfig()
    timeouts: TimeoutsConfig = TimeoutsConfig()

    @field_validator("start", mode="before")
    @classmethod
    def _iso_time(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                return datetime.fromisoformat(value)
            except ValueError:
                raise ValueError(f"got {value!r}, expected an ISO time with a zone, e.g. 2026-01-15T17:00:00Z") \
                    from None
        return value

    @field_validator("start")
    @classmethod
    def _aware_time(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError(f"give a time zone, e.g. {value.isoformat()}Z or {value.isoformat()}+01:00")
        return value

    @field_validator("assets")
    @classmethod
    def _unique_ids(cls, assets: list[Any]) -> list[Any]:
        return check_unique_ids(assets)


# ---- the loaded scenario ---------------------------------------------------------------------------

@dataclass(frozen=True)
class FaultEvent:
    """One fault event, checked: at ``at_s`` seconds after the start, ``action`` (with ``value``) on ``asset``."""

    at_s: float
    asset: str
    action: str
    value: Any = None


@dataclass(frozen=True)
class Scenario:
    """A checked scenario, ready to run (:func:`runtime.scenario.run_scenario`).

    ``assets`` are the validated asset models; ``schedule`` the tz-aware schedule DataFrame;
    ``slug`` names the report folder and the schedule batch (``scenario-<slug>``), so that command
    ids are the same on every run."""

    name: str
    start: datetime
    assets: tuple[ChargerConfig | BatteryConfig, ...]
    schedule: pd.DataFrame
    asset_map: dict[str, str]
    events: tuple[FaultEvent, ...] = ()
    duration_s: float | None = None
    expect: ExpectConfig = field(default_factory=ExpectConfig)
    seed: int = 0
    devices: str = "memory"
    security_profile: int = 0
    grid: GridConfig = field(default_factory=GridConfig)
    retry: RetryConfig = field(default_factory=RetryConfig)
    timeouts: TimeoutsConfig = field(default_factory=TimeoutsConfig)
    slug: str = "scenario"
    source: Path | None = None

    @property
    def interval_s(self) -> float:
        """The schedule's step (its last interval), or the whole run for a one-row schedule."""
        index = self.schedule.index
        if len(index) > 1:
            return float((index[-1] - index[-2]).total_seconds())
        return self.duration_s or 0.0

    @property
    def end_s(self) -> float:
        """Seconds from the start to the end of the run: ``duration_s``, else the schedule's span plus one
        interval."""
        if self.duration_s is not None:
            return float(self.duration_s)
        index = self.schedule.index
        span = (index[-1] - pd.Timestamp(self.start)).total_seconds() if len(index) else 0.0
        return max(0.0, float(span) + self.interval_s)

    def kind(self, asset_id: str) -> str | None:
        for a in self.assets:
            if a.id == asset_id:
                return a.kind
        return None
