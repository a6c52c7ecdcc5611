"""Scenario runner: a simulated site, a schedule and injected faults, on a virtual clock, with a report.

    coordinator scenario scenarios/evening_peak.toml [--json] [--report [DIR]] [--seed N] [--realtime]

A scenario file (TOML) is checked as strictly as a site file (it shares the site configuration's asset
and policy models, :mod:`runtime.config.models`): a misspelled key, a wrong type, a negative limit, an
event outside the run, an unknown state, a bad CSV cell: each is one line naming the key path (or the
CSV line and column) and the value, all of them at once (:class:`~runtime.core.errors.ScenarioError`).

Top level: ``name`` (default: the file name), ``start`` (ISO time with a zone), ``duration_s`` (default:
the schedule's span + one interval), ``seed`` (default 0: seeds retry jitter; the same scenario and seed
give the same journal), ``devices`` ("memory", default: in-memory devices; "sim": the OCPP and Modbus
simulators over real sockets, :mod:`.devices`).

``[[assets]]``: the site file's asset tables without a connection: ``id``, ``kind`` ("charger" |
"battery"), ``max_kw`` / ``phases`` (chargers), ``max_charge_kw``, ``max_discharge_kw``, ``capacity_kwh``
(batteries), ``priority`` (who is served first under the grid limit's "priority" policy), ``ack_timeout_s``.

``[schedule]``: ``csv`` (relative to the scenario file; first column the timestamps, then kW columns
named as for :func:`~runtime.core.schedule.schedule_to_commands`), ``asset_map`` and ``timezone`` (the
zone of naive timestamps; without it naive timestamps are refused).

``[grid]``, ``[retry]``, ``[timeouts]``: as in a site file (``import_limit_kw``, ``export_limit_kw``,
``policy``; ``max_attempts``, ...; ``ack_timeout_s``, ``completion_timeout_s``).

``[[events]]``: at ``at_s`` seconds after the start, on ``asset``: ``action`` is one of status
(``value`` a state name of the asset's kind), reject (``value`` the reason, or "" to stop rejecting),
fail_next (``value`` a count), silent / connected (``value`` true/false), reboot, crash (the asset actor).

``[expect]``: ``counts`` = {STATUS = n} (the schedule's commands per status), ``states`` = {asset =
STATE} (at the end); and, where a scenario needs them, ``min_counts``, ``events`` / ``min_events`` =
{EVENT_TYPE = n}, ``min_limited`` = n (commands granted less than requested), ``max_import_kw`` (the site
total of applied setpoints never above), ``energy_kwh`` = {asset = [min, max]}, and ``[[expect.at]]``
tables with ``at_s`` and ``states`` (states at that moment). The run exits 1 when one is not met.

Modules: :mod:`.model` (the file as pydantic models, the loaded :class:`Scenario`), :mod:`.csvschedule`
and :mod:`.loader` (reading and checking), :mod:`.devices` (memory or simulators, fault actions),
:mod:`.runner` (:func:`run_scenario`), :mod:`.timeline` (setpoints, energy and faults from the events),
:mod:`.expect`, :mod:`.result`, :mod:`.summary` (rich tables, progress), :mod:`.report` and :mod:`.plot`.
"""

from runtime.core.errors import ScenarioError

from .loader import load_scenario
from .model import FaultEvent, Scenario, ScenarioConfig
from .result import ExpectationResult, ScenarioResult
from .runner import run_scenario

__all__ = ["Scenario", "ScenarioConfig", "FaultEvent", "ScenarioError", "ScenarioResult", "ExpectationResult",
           "load_scenario", "run_scenario"]
