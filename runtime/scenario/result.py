"""What a scenario run returns: :class:`ScenarioResult` and its :class:`ExpectationResult` entries."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

__all__ = ["ExpectationResult", "ScenarioResult"]


@dataclass(frozen=True)
class ExpectationResult:
    """One expectation of the scenario file: ``text`` says what was expected (``16 COMPLETED``), ``actual``
    what the run gave, ``met`` whether they agree."""

    text: str
    met: bool
    actual: str

    @property
    def message(self) -> str:
        """``expected 16 COMPLETED, got 15`` (the line printed for an unmet expectation)."""
        return f"expected {self.text}, got {self.actual}"


@dataclass(frozen=True)
class ScenarioResult:
    """The outcome of :func:`runtime.scenario.run_scenario`.

    ``counts``: the schedule's commands per final status; ``states``: each asset's state at the end;
    ``energy_kwh``: each asset's net energy from its applied setpoints (kWh, > 0 drawn from the grid);
    ``faults``: per asset, the fault and recovery counts seen in the events
    (:data:`~runtime.scenario.timeline.FAULT_COLUMNS`); ``expectations``: every expectation, met or not;
    ``report_dir``: the report folder, if one was written; ``exit_code``: 0 all met, 1 one was not."""

    name: str
    counts: Mapping[str, int]
    states: Mapping[str, str]
    energy_kwh: Mapping[str, float]
    expectations: tuple[ExpectationResult, ...]
    exit_code: int
    report_dir: Path | None = None
    faults: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    simulated_s: float = 0.0
    wall_s: float = 0.0
    seed: int = 0
    devices: str = "memory"
    peak_import_kw: float = 0.0
    limited: int = 0
    commands: tuple[Mapping[str, Any], ...] = ()
    #: per asset (drawn, fed) kWh: the positive and the negative part of its energy, both >= 0
    energy_split_kwh: Mapping[str, tuple[float, float]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when every expectation was met."""
        return self.exit_code == 0

    @property
    def failures(self) -> list[str]:
        """The message of each unmet expectation."""
        return [e.message for e in self.expectations if not e.met]

    def to_json(self) -> dict[str, Any]:
        """The machine-readable report (``coordinator scenario --json``)."""
        return {
            "scenario": self.name, "commands": len(self.commands), "counts": dict(self.counts),
            "states": dict(self.states), "simulated_s": self.simulated_s, "wall_s": round(self.wall_s, 3),
            "seed": self.seed, "devices": self.devices,
            "energy_kwh": {a: round(v, 6) for a, v in self.energy_kwh.items()},
            "peak_import_kw": round(self.peak_import_kw, 6), "limited": self.limited,
            "faults": {a: dict(v) for a, v in self.faults.items()},
            "expectations": [{"text": e.text, "met": e.met, "actual": e.actual} for e in self.expectations],
            "expectations_failed": self.failures, "exit_code": self.exit_code,
            "report_dir": str(self.report_dir) if self.report_dir is not None else None,
            "rows": [dict(r) for r in self.commands],
        }
