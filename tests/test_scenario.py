"""The scenario runner: shipped scenarios meet their expectations; bad files say what is wrong."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from runtime.cli import main
from runtime.core.errors import ScenarioError
from runtime.scenario import load_scenario, run_scenario

SCENARIOS = sorted((Path(__file__).resolve().parent.parent / "scenarios").glob("*.toml"))
pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("no_leaks")]


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.stem)
def test_shipped_scenario_meets_its_expectations(path):
    out = io.StringIO()
    assert run_scenario(load_scenario(path), out=out, as_json=True) == 0, out.getvalue()
    report = json.loads(out.getvalue())
    assert report["expectations_failed"] == []


def test_evening_peak_holds_the_faulted_chargers_command_and_retries_the_battery():
    out = io.StringIO()
    run_scenario(load_scenario(SCENARIOS[0]), out=out, as_json=True)
    rows = json.loads(out.getvalue())["rows"]
    retried = [r for r in rows if r["asset_id"] == "bat-1" and r["attempts"] == 2]
    assert len(retried) == 2 and all(r["status"] == "COMPLETED" for r in retried)
    assert any(r["status"] == "REJECTED" and "exceeds the device limit" in r["error"] for r in rows)


def _write(tmp_path: Path, toml: str, csv: str = "t,ev_1_kw\n2026-01-01T00:00:00Z,1.0\n") -> Path:
    (tmp_path / "s.csv").write_text(csv)
    path = tmp_path / "s.toml"
    path.write_text(toml)
    return path


BASE = 'start = "2026-01-01T00:00:00+00:00"\n[[assets]]\nid = "ev-1"\nkind = "charger"\n' \
       '[schedule]\ncsv = "s.csv"\nasset_map = { ev_1 = "ev-1" }\n'


@pytest.mark.parametrize("toml,message", [
    (BASE.replace('kind = "charger"', 'kind = "toaster"'), "assets[0].kind: must be 'charger' or 'battery', got 'toaster'"),
    (BASE.replace('start = "2026-01-01T00:00:00+00:00"', 'start = "2026-01-01T00:00:00"'), "start: give a time zone"),
    (BASE.replace('csv = "s.csv"', 'csv = "missing.csv"'), "schedule.csv: no such file"),
    (BASE + '[[events]]\nat_s = 1\nasset = "ev-9"\naction = "reboot"\n', "events[0].asset: unknown asset 'ev-9'"),
    (BASE + '[[events]]\nat_s = 1\nasset = "ev-1"\naction = "explode"\n', "events[0].action: unknown action 'explode'"),
    ("start = [", "not valid TOML"),
])
def test_bad_scenario_files_name_the_field_and_value(tmp_path, toml, message):
    with pytest.raises(ScenarioError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_scenario(_write(tmp_path, toml))


def test_unmet_expectation_exits_1_and_says_which(tmp_path, capsys):
    path = _write(tmp_path, BASE + '[expect]\ncounts = { COMPLETED = 5 }\n')
    assert main(["scenario", str(path)]) == 1
    assert "EXPECTATION FAILED: expected 5 COMPLETED, got 1" in capsys.readouterr().out


def test_cli_reports_a_bad_file_with_exit_2(tmp_path, capsys):
    assert main(["scenario", str(tmp_path / "nope.toml")]) == 2
    assert "no such scenario file" in capsys.readouterr().err
