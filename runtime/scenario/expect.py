"""Checking a run against the scenario's ``[expect]`` section: one :class:`ExpectationResult` per entry."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from .model import ExpectConfig
from .result import ExpectationResult

__all__ = ["Outcome", "check_expectations"]


@dataclass(frozen=True)
class Outcome:
    """The facts of a run that expectations look at."""

    counts: Mapping[str, int]
    states: Mapping[str, str]
    events: Mapping[str, int]
    limited: int
    peak_import_kw: float
    energy_kwh: Mapping[str, float]
    #: states at each ``[[expect.at]]`` moment, by its index
    states_at: Mapping[int, Mapping[str, str]]


def _kw(value: float) -> str:
    return f"{value:.6g}"


def check_expectations(expect: ExpectConfig, run: Outcome) -> list[ExpectationResult]:
    """Every expectation of ``expect``, in the file's order (by kind), each met or not."""
    results: list[ExpectationResult] = []
    for status, n in expect.counts.items():
        got = run.counts.get(status, 0)
        results.append(ExpectationResult(f"{n} {status}", got == n, str(got)))
    for status, n in expect.min_counts.items():
        got = run.counts.get(status, 0)
        results.append(ExpectationResult(f"at least {n} {status}", got >= n, str(got)))
    for asset, state in expect.states.items():
        got = run.states.get(asset)
        results.append(ExpectationResult(f"{asset} in {state}", got == state, str(got)))
    for event_type, n in expect.events.items():
        got = run.events.get(event_type, 0)
        results.append(ExpectationResult(f"{n} {event_type} events", got == n, str(got)))
    for event_type, n in expect.min_events.items():
        got = run.events.get(event_type, 0)
        results.append(ExpectationResult(f"at least {n} {event_type} events", got >= n, str(got)))
    if expect.min_limited is not None:
        results.append(ExpectationResult(f"at least {expect.min_limited} commands granted less than requested",
                                         run.limited >= expect.min_limited, str(run.limited)))
    if expect.max_import_kw is not None:
        results.append(ExpectationResult(f"site import never above {_kw(expect.max_import_kw)} kW",
                                         run.peak_import_kw <= expect.max_import_kw + 1e-6,
                                         f"a peak of {_kw(run.peak_import_kw)} kW"))
    for asset, (lo, hi) in expect.energy_kwh.items():
        got = run.energy_kwh.get(asset, 0.0)
        results.append(ExpectationResult(f"{asset} energy within [{_kw(lo)}, {_kw(hi)}] kWh",
                                         lo - 1e-6 <= got <= hi + 1e-6, f"{got:.3f} kWh"))
    for i, at in enumerate(expect.at):
        seen = run.states_at.get(i, {})
        for asset, state in at.states.items():
            got = seen.get(asset)
            results.append(ExpectationResult(f"{asset} in {state} at {at.at_s:g} s", got == state, str(got)))
    return results
