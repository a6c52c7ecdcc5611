"""The scenario runner: shipped scenarios meet their expectations; the summary, the report folder, the same
journal for the same seed, the simulators over real sockets, the Python API. (Loader mistakes, one by one:
tests/test_scenario_loader.py.)"""

from __future__ import annotations

import csv
import io
import json
import logging
import time
import tomllib
from pathlib import Path

import pytest

from runtime.cli import main
from runtime.core.errors import ScenarioError
from runtime.core.journal import Journal
from runtime.scenario import ScenarioResult, load_scenario, run_scenario

HERE = Path(__file__).resolve().parent.parent / "scenarios"
#: the scenario files of scenarios/ (it holds site files too: those have no [schedule])
SCENARIOS = sorted(p for p in HERE.glob("*.toml") if "schedule" in tomllib.loads(p.read_text()))
EVENING, STORM = HERE / "evening_peak.toml", HERE / "fault_storm.toml"
pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("no_leaks")]


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.stem)
def test_shipped_scenario_meets_its_expectations(path):
    out = io.StringIO()
    assert run_scenario(load_scenario(path), out=out, as_json=True).exit_code == 0, out.getvalue()
    report = json.loads(out.getvalue())
    assert report["expectations_failed"] == []


def test_evening_peak_holds_the_faulted_chargers_command_and_retries_the_battery():
    out = io.StringIO()
    run_scenario(load_scenario(EVENING), out=out, as_json=True)
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
    (BASE.replace('kind = "charger"', 'kind = "toaster"'),
     "assets[0].kind: got 'toaster', expected one of 'charger', 'battery'"),
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
    assert capsys.readouterr().err == f"coordinator scenario: {tmp_path / 'nope.toml'}: no such file\n"


# ---- what a person sees ---------------------------------------------------------------------------

def test_summary_tables_show_states_energy_faults_and_expectations(capsys):
    assert main(["scenario", str(EVENING)]) == 0
    captured = capsys.readouterr()
    out = captured.out
    for title in ("Commands by final state", "Energy per asset (kWh)", "Faults and recoveries", "Expectations"):
        assert title in out
    lines = out.splitlines()

    def row(*cells: str) -> bool:
        return any(all(c in line for c in cells) for line in lines)
    assert row("COMPLETED", "16") and row("REJECTED", "1") and row("total", "17")
    # ev-1: 11 kW 17:00-17:30, 7.4 to 18:00, 22 to 18:30, 11 to 18:45: 5.5 + 3.7 + 11 + 2.75 kWh
    assert row("ev-1", "22.95", "0.00", "22.95")
    assert row("ev-2", "1", "1", "1", "1")              # faulted once, recovered, one command held and released
    assert row("met", "16 COMPLETED", "16") and row("met", "ev-2 in AVAILABLE", "AVAILABLE")
    assert lines[-1] == "5 of 5 expectations met"
    assert "\x1b[" not in out                           # plain text when not a terminal
    assert captured.err == ""                           # no progress bar when stderr is not a terminal


def test_report_folder_has_the_journal_the_setpoints_and_a_plot(tmp_path):
    from matplotlib.image import imread
    result = run_scenario(EVENING, report_dir=tmp_path / "rep", out=io.StringIO())
    rep = tmp_path / "rep"
    assert result.report_dir == rep and result.exit_code == 0
    assert (rep / "journal" / "commands.jnl").stat().st_size > 0 and (rep / "journal" / "events.jnl").exists()
    with (rep / "setpoints.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["time", "asset", "setpoint_kw", "actual_kw", "site_total_kw"]
    assert len(rows) == 8 * 3                           # 8 fifteen-minute steps x 3 assets
    first = {r["asset"]: r for r in rows[:3]}
    assert rows[0]["time"] == "2026-01-15T17:00:00+00:00"
    assert (float(first["ev-1"]["setpoint_kw"]), float(first["bat-1"]["setpoint_kw"])) == (11.0, -20.0)
    assert float(first["bat-1"]["actual_kw"]) == -20.0  # the battery reports its power (> 0 charging)
    assert float(rows[0]["site_total_kw"]) == pytest.approx(11.0 + 7.4 - 20.0)
    png = (rep / "plot.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    height, width, _ = imread(rep / "plot.png").shape
    assert width > 600 and height > 400
    summary = json.loads((rep / "summary.json").read_text())
    assert summary["counts"] == {"COMPLETED": 16, "REJECTED": 1} and summary["report_dir"] == str(rep)


def test_cli_report_defaults_to_reports_name_in_the_current_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["scenario", str(EVENING), "--report", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["report_dir"] == str(Path("reports") / "evening_peak")
    assert sorted(p.name for p in (tmp_path / "reports" / "evening_peak").iterdir()) == [
        "journal", "plot.png", "setpoints.csv", "summary.json"]
    # a second run starts from an empty journal (an old one would be recovered, not replaced)
    assert main(["scenario", str(EVENING), "--report", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["counts"] == {"COMPLETED": 16, "REJECTED": 1}


# ---- the same seed, the same journal --------------------------------------------------------------

def journal_by_command(path: Path) -> tuple[dict[str, list[dict]], list[dict]]:
    """Each command's records in journal order, and the other records (batches), in order.

    Two asset actors that answer at the same virtual instant may reach the dispatcher in either order, so
    the interleaving of different commands' records within one instant is not fixed; each command's own
    history, every record and the set of records are."""
    by_command: dict[str, list[dict]] = {}
    other: list[dict] = []
    for record in Journal.read(path):
        if record.get("k") in ("n", "t"):  # a new command in full, or a later change of one
            by_command.setdefault(record["i"], []).append(record)
        else:
            other.append(record)
    return by_command, other


def events_by_moment(path: Path) -> dict[float, list[bytes]]:
    """The event journal's records by their (virtual) time, each moment's records in a fixed order."""
    import msgpack
    moments: dict[float, list[bytes]] = {}
    for record in Journal.read(path):
        moments.setdefault(record["e"]["ts"], []).append(msgpack.packb(record))
    return {ts: sorted(records) for ts, records in moments.items()}


def test_the_same_scenario_and_seed_give_the_same_journal(tmp_path):
    runs = [run_scenario(STORM, report_dir=tmp_path / f"run{i}", out=io.StringIO()) for i in range(2)]
    first, second = (journal_by_command(tmp_path / f"run{i}" / "journal" / "commands.jnl") for i in range(2))
    assert first == second
    assert set(first[0]) == {f"scenario-fault_storm-{i}" for i in range(sum(runs[0].counts.values()))}
    assert runs[0].commands == runs[1].commands and runs[0].energy_kwh == runs[1].energy_kwh
    events = [events_by_moment(tmp_path / f"run{i}" / "journal" / "events.jnl") for i in range(2)]
    assert events[0] == events[1]
    # the seed is what makes it repeat: another seed jitters the retries differently (the journal holds no
    # retry times, the energy does: a retried setpoint lands a little earlier or later)
    other = run_scenario(STORM, seed=8, out=io.StringIO())
    assert other.counts == runs[0].counts and other.energy_kwh["bat-b"] != runs[0].energy_kwh["bat-b"]


# ---- the simulators over real sockets, and the wall clock -----------------------------------------

SIM_CSV = ("timestamp,ev_1_kw,ev_2_kw,battery_charge_kw,battery_discharge_kw\n"
           "2026-01-15T17:00:00Z,11.0,7.4,0.0,20.0\n"
           "2026-01-15T17:15:00Z,7.4,11.0,10.0,0.0\n"
           "2026-01-15T17:30:00Z,0.0,0.0,0.0,0.0\n")
SIM_TOML = '''name = "two chargers and a battery over sockets"
start = "2026-01-15T17:00:00Z"
devices = "sim"
assets = [
    { id = "ev-1", kind = "charger", max_kw = 22 },
    { id = "ev-2", kind = "charger", max_kw = 11 },
    { id = "bat-1", kind = "battery", max_charge_kw = 50, max_discharge_kw = 50 },
]
events = [
    { at_s = 300, asset = "ev-2", action = "status", value = "FAULTED" },
    { at_s = 1200, asset = "ev-2", action = "status", value = "AVAILABLE" },
    { at_s = 600, asset = "bat-1", action = "connected", value = false },
    { at_s = 1000, asset = "bat-1", action = "connected", value = true },
    { at_s = 1500, asset = "ev-1", action = "crash" },
]
[timeouts]
ack_timeout_s = 2
[schedule]
csv = "s.csv"
asset_map = { ev_1 = "ev-1", ev_2 = "ev-2", battery = "bat-1" }
[expect]
counts = { COMPLETED = 11 }
states = { bat-1 = "IDLE" }
events = { ASSET_RESTARTED = 1 }
'''


def test_simulated_devices_over_real_sockets(tmp_path):
    """2 OCPP charge points against the site's central system and a Modbus battery server, each fault mapped
    onto the simulator's own injection, on the virtual clock."""
    path = _write(tmp_path, SIM_TOML, SIM_CSV)
    began = time.monotonic()
    result = run_scenario(path, out=io.StringIO(), report_dir=tmp_path / "rep")
    assert result.failures == [] and result.devices == "sim"
    assert time.monotonic() - began < 20
    # ev-2 faulted 17:05-17:20: its 17:15 setpoint was held and applied at 17:20 (7.4 kW 20 min + 11 kW 10 min)
    assert result.energy_kwh["ev-2"] == pytest.approx(7.4 / 3 + 11 / 6)
    # the battery was off the network 17:10-17:16:40: its 17:15 setpoints landed when it came back
    assert result.energy_kwh["bat-1"] == pytest.approx(-20 * 1000 / 3600 + 10 * 800 / 3600)
    assert result.faults["ev-2"]["faults"] == 1 and result.faults["ev-2"]["recoveries"] == 1
    assert result.faults["bat-1"]["link_lost"] == 1 and result.faults["bat-1"]["link_back"] == 1
    # the chargers report their power (MeterValues): a faulted charger draws nothing whatever its setpoint
    with (tmp_path / "rep" / "setpoints.csv").open() as f:
        at_1715 = {r["asset"]: r for r in csv.DictReader(f) if r["time"] == "2026-01-15T17:15:00+00:00"}
    assert (float(at_1715["ev-2"]["setpoint_kw"]), float(at_1715["ev-2"]["actual_kw"])) == (7.4, 0.0)
    assert float(at_1715["ev-1"]["actual_kw"]) == 7.4


def test_simulators_refuse_what_they_cannot_do(tmp_path, capsys):
    extra = '    { at_s = 60, asset = "bat-1", action = "fail_next", value = 1 }'
    path = _write(tmp_path, SIM_TOML.replace('value = "AVAILABLE" }', 'value = "AVAILABLE" },\n' + extra), SIM_CSV)
    assert main(["scenario", str(path)]) == 2
    err = capsys.readouterr().err
    assert "events[2].action: 'fail_next' cannot be done with devices = \"sim\" on a battery" in err
    # --devices overrides the file: then the run refuses what the file asks of the simulators
    assert main(["scenario", str(EVENING), "--devices", "sim"]) == 2
    assert ("events[2] (bat-1 at 3500 s).action: 'fail_next' cannot be done with devices = \"sim\" on a battery"
            in capsys.readouterr().err)


def test_realtime_runs_on_the_wall_clock(tmp_path):
    csv_text = "timestamp,ev_1_kw\n2026-01-01T00:00:00Z,11.0\n2026-01-01T00:00:01Z,7.4\n"
    path = _write(tmp_path, "duration_s = 2\n" + BASE +
                  '[expect]\ncounts = { COMPLETED = 2 }\n', csv_text)
    began = time.monotonic()
    result = run_scenario(path, realtime=True, out=io.StringIO())
    assert 2.0 <= time.monotonic() - began < 20      # it waited for the wall clock (and did not hang)
    # both setpoints applied (the expectation), for 2 s of wall time in all: each lands a little late, by how
    # much depends on the machine's load, so the energy is bounded rather than matched
    assert result.exit_code == 0 and 0 < result.energy_kwh["ev-1"] <= 11.0 * 2 / 3600


# ---- the Python API ---------------------------------------------------------------------------------

def test_run_scenario_takes_a_path_and_returns_a_frozen_result():
    result = run_scenario(EVENING, out=io.StringIO(), seed=0)
    assert isinstance(result, ScenarioResult) and result.ok and result.exit_code == 0
    assert result.counts == {"COMPLETED": 16, "REJECTED": 1}
    assert result.energy_kwh["ev-2"] == pytest.approx(13.2)
    assert [(e.text, e.met) for e in result.expectations][:2] == [("16 COMPLETED", True), ("1 REJECTED", True)]
    with pytest.raises(AttributeError):
        result.exit_code = 1  # type: ignore[misc]


def test_simulators_reject_go_silent_and_reboot(tmp_path, caplog):
    """reject -> the charge point answers Rejected, the battery an exception code; silent; reboot (the clock
    moves on only once the site has seen each rebooted device connect again)."""
    events = '''events = [
    { at_s = 300, asset = "ev-1", action = "reboot" },
    { at_s = 600, asset = "ev-2", action = "reject", value = "no" },
    { at_s = 1000, asset = "ev-2", action = "reject", value = "" },
    { at_s = 600, asset = "bat-1", action = "reject", value = "x" },
    { at_s = 1000, asset = "bat-1", action = "reject", value = "" },
    { at_s = 1100, asset = "bat-1", action = "silent", value = true },
    { at_s = 1700, asset = "bat-1", action = "silent", value = false },
    { at_s = 1750, asset = "bat-1", action = "reboot" },
]
'''
    toml = SIM_TOML[:SIM_TOML.index("events = [")] + events + SIM_TOML[SIM_TOML.index("[timeouts]"):]
    toml = toml[:toml.index("[expect]")]
    caplog.set_level(logging.WARNING, logger="runtime.scenario.devices")
    result = run_scenario(_write(tmp_path, toml, SIM_CSV), out=io.StringIO())
    assert [r.getMessage() for r in caplog.records if r.name == "runtime.scenario.devices"] == []
    assert result.counts == {"COMPLETED": 8, "REJECTED": 3}
    errors = {(r["asset_id"], r["type"]): r["error"] for r in result.commands if r["status"] == "REJECTED"}
    assert errors[("ev-2", "SET_CHARGE_RATE")] == "SetChargingProfile: charger answered Rejected"
    assert "ILLEGAL_DATA_VALUE (3)" in errors[("bat-1", "SET_DISCHARGE_RATE")]
    # the battery's 17:15 stop was refused: its applied setpoint stays a 20 kW discharge to the end
    assert result.energy_kwh["bat-1"] == pytest.approx(-20 * 0.75)
    assert result.faults["ev-1"]["link_lost"] == 1 and result.faults["ev-1"]["link_back"] == 1
