"""The strict scenario loader: every kind of mistake is one line naming the key path (or the CSV line and
column) and the value, all of them at once, and ``coordinator scenario`` exits 2 without a traceback."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from runtime.cli import main
from runtime.core.errors import ConfigFileError, ScenarioError
from runtime.scenario import load_scenario

pytestmark = [pytest.mark.timeout(30)]

CSV = ("timestamp,ev_1_kw,battery_charge_kw\n"
       "2026-01-01T00:00:00Z,11.0,20.0\n"
       "2026-01-01T00:15:00Z,7.4,20.0\n"
       "2026-01-01T00:30:00Z,0.0,0.0\n")          # three 15-minute rows: the run lasts 2700 s
TOML = '''start = "2026-01-01T00:00:00+00:00"
assets = [
    { id = "ev-1", kind = "charger", max_kw = 22 },
    { id = "bat-1", kind = "battery", max_charge_kw = 50 },
]
[schedule]
csv = "s.csv"
asset_map = { ev_1 = "ev-1", battery = "bat-1" }
'''
EVENT = '[[events]]\nat_s = {at}\nasset = "{asset}"\naction = "{action}"\n{value}'


def event(at: object = 60, asset: str = "ev-1", action: str = "status", value: str = 'value = "FAULTED"\n') -> str:
    return EVENT.format(at=at, asset=asset, action=action, value=value)


def write(tmp_path: Path, toml: str = TOML, csv: str = CSV) -> Path:
    (tmp_path / "s.csv").write_text(csv)
    path = tmp_path / "s.toml"
    path.write_text(toml)
    return path


# (toml, csv, the exact problem line) -- one case per kind of mistake
CASES = {
    "misspelled key": (TOML.replace("max_kw = 22", "max_kws = 22"), CSV,
                       "assets[0].max_kws: unknown key (value 22); did you mean 'max_kw'?"),
    "misspelled section": (TOML + "[expects]\ncounts = { COMPLETED = 3 }\n", CSV,
                           "expects: unknown key (value {'counts': {'COMPLETED': 3}}); did you mean 'expect'?"),
    "wrong type of a time": (TOML + event(at='"40min"'), CSV, "events[0].at_s: got '40min', expected a number"),
    "wrong type of a limit": (TOML.replace("max_kw = 22", 'max_kw = "eleven"'), CSV,
                              "assets[0].max_kw: got 'eleven', expected a number"),
    "negative asset limit": (TOML.replace("max_charge_kw = 50", "max_charge_kw = -5"), CSV,
                             "assets[1].max_charge_kw: got -5, expected a value >= 0.0"),
    "negative grid limit": (TOML + "[grid]\nimport_limit_kw = -100\n", CSV,
                            "grid.import_limit_kw: got -100, expected a value >= 0.0"),
    "event before the start": (TOML + event(at=-60), CSV,
                               "events[0].at_s: got -60, which is before the start of the run "
                               "(2026-01-01T00:00:00+00:00); at_s counts seconds from the start"),
    "event after the end": (TOML + event(at=3000), CSV,
                            "events[0].at_s: got 3000, which is after the end of the run (2700 s; set duration_s "
                            "to run longer)"),
    "unknown charger state": (TOML + event(value='value = "FAULTY"\n'), CSV,
                              "events[0].value: unknown charger state 'FAULTY'; choose from AVAILABLE, PREPARING, "
                              "CHARGING, SUSPENDED, FINISHING, FAULTED, UNAVAILABLE"),
    "state of the other kind": (TOML + event(asset="bat-1", value='value = "AVAILABLE"\n'), CSV,
                                "events[0].value: unknown battery state 'AVAILABLE'; choose from IDLE, CHARGING, "
                                "DISCHARGING, STANDBY, FAULTED"),
    "duplicate asset id": (TOML.replace('    { id = "bat-1"', '    { id = "ev-1", kind = "charger" },\n'
                                                                 '    { id = "bat-1"'),
                           CSV, "assets[1].id: duplicate asset id 'ev-1'"),
    "bad CSV cell": (TOML, CSV.replace("7.4,20.0", "7.4,twenty"),
                     "schedule.csv line 3, column 'battery_charge_kw': got 'twenty', expected a number"),
    "naive CSV timestamps": (TOML, CSV.replace("Z,", ","),
                             "schedule.csv line 2, column 'timestamp': timestamp has no time zone (3 such "
                             "rows); write it with an offset (e.g. +00:00) or state the file's zone: [schedule] "
                             "timezone = \"Europe/Berlin\""),
    "a connection on a scenario asset": (
        TOML.replace("max_kw = 22", 'ocpp = { charge_point_id = "CP1" }'), CSV,
        "assets[0].ocpp: a scenario's assets have no ocpp connection: the scenario brings its own devices "
        "(devices = \"memory\" or \"sim\"); remove it"),
    "an action the simulator cannot do": ('devices = "sim"\n' + TOML
        + event(action="fail_next", value="value = 2\n"), CSV,
        "events[0].action: 'fail_next' cannot be done with devices = \"sim\" on a charger: the OCPP charge point "
        "simulator cannot fail a counted number of commands (use reject or silent)"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_mistake_is_one_line_naming_the_key_and_the_value(tmp_path, capsys, case):
    toml, csv, line = CASES[case]
    path = write(tmp_path, toml, csv)
    with pytest.raises(ScenarioError) as caught:
        load_scenario(path)
    assert isinstance(caught.value, ConfigFileError)
    assert caught.value.problems == [line]
    assert main(["scenario", str(path)]) == 2
    captured = capsys.readouterr()
    assert f"coordinator scenario: {path}: {line}" in captured.err.splitlines()
    assert "Traceback" not in captured.err + captured.out


def test_a_folder_given_as_the_file(tmp_path, capsys):
    with pytest.raises(ScenarioError, match="is a folder, not a file"):
        load_scenario(tmp_path)
    assert main(["scenario", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err == f"coordinator scenario: {tmp_path}: is a folder, not a file\n"


def test_every_problem_is_reported_at_once(tmp_path, capsys):
    toml = (TOML.replace("max_kw = 22", 'max_kws = 22').replace("max_charge_kw = 50", "max_charge_kw = -1")
            + event(at=-5) + event(at=100, value='value = "FAULTY"\n'))
    path = write(tmp_path, toml, CSV.replace("7.4,20.0", "x,20.0"))
    with pytest.raises(ScenarioError) as caught:
        load_scenario(path)
    assert [p.split(":")[0] for p in caught.value.problems] == [
        "assets[0].max_kws", "assets[1].max_charge_kw", "schedule.csv line 3, column 'ev_1_kw'", "events[0].at_s",
        "events[1].value"]
    assert main(["scenario", str(path)]) == 2
    assert len(capsys.readouterr().err.splitlines()) == 5


def test_naive_timestamps_are_read_in_the_zone_the_file_states(tmp_path):
    toml = TOML.replace('asset_map', 'timezone = "Europe/Berlin"\nasset_map')
    toml = toml.replace("00:00:00+00:00", "00:00:00+01:00")
    scenario = load_scenario(write(tmp_path, toml, CSV.replace("Z,", ",")))
    assert list(scenario.schedule.index) == [pd.Timestamp("2025-12-31T23:00Z"), pd.Timestamp("2025-12-31T23:15Z"),
                                             pd.Timestamp("2025-12-31T23:30Z")]
    assert scenario.end_s == 2700


def test_a_local_time_that_does_not_exist_is_refused(tmp_path):
    csv = "timestamp,ev_1_kw\n2026-03-29 01:30,1.0\n2026-03-29 02:30,1.0\n"   # Berlin skips 02:00-03:00
    toml = TOML.replace('asset_map', 'timezone = "Europe/Berlin"\nasset_map').replace(', battery = "bat-1"', "")
    with pytest.raises(ScenarioError) as caught:
        load_scenario(write(tmp_path, toml, csv))
    assert caught.value.problems == ["schedule.csv line 3, column 'timestamp': local time '2026-03-29 02:30' does "
                                     "not exist in Europe/Berlin (a daylight saving change): give its offset"]


def test_todays_evening_peak_file_loads_unchanged():
    scenario = load_scenario(Path(__file__).resolve().parent.parent / "scenarios" / "evening_peak.toml")
    assert (scenario.name, scenario.seed, scenario.devices) == ("evening peak", 0, "memory")
    assert scenario.end_s == 7200.0
    assert [a.id for a in scenario.assets] == ["ev-1", "ev-2", "bat-1"]
    assert [(e.at_s, e.asset, e.action, e.value) for e in scenario.events] == [
        (1200, "ev-2", "status", "FAULTED"), (2400, "ev-2", "status", "AVAILABLE"),
        (3500, "bat-1", "fail_next", 2)]
