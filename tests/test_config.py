"""The site configuration file: what a valid one builds, and every mistake named with its key and value.

Each bad file is a table row: a small edit of a valid file and the line the loader must report. All
problems of a file are reported at once, and ``coordinator check`` exits 2 with those lines and no
traceback.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from protocols.modbus.link import ModbusBatteryLink
from protocols.ocpp.link import OcppChargerLink
from runtime.cli import main
from runtime.config import load_site_config
from runtime.config.build import asset_specs, ocpp_options, site_options
from runtime.core.errors import ConfigFileError, ConfigurationError

ROOT = Path(__file__).resolve().parents[1]

VALID = """
[site]
name = "t"

[[assets]]
id = "ev-1"
kind = "charger"
max_kw = 11
ocpp = { charge_point_id = "CP1" }

[[assets]]
id = "bat-1"
kind = "battery"
modbus = { host = "127.0.0.1", port = 5020, register_map = "sunspec" }

[grid]
import_limit_kw = 30
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "site.toml"
    path.write_text(text)
    return path


def test_a_valid_file_builds_assets_links_and_site_options(tmp_path):
    config = load_site_config(write(tmp_path, VALID))
    specs = asset_specs(config)
    assert [(s.asset_id, s.kind, s.max_charge_kw) for s in specs] == [("ev-1", "charger", 11.0),
                                                                       ("bat-1", "battery", 50.0)]
    assert isinstance(specs[0].device, OcppChargerLink) and specs[0].device.charge_point_id == "CP1"
    assert isinstance(specs[1].device, ModbusBatteryLink) and specs[1].device.port == 5020
    options = site_options(config)
    assert options["journal_dir"] == str(tmp_path / "journal")       # relative to the file
    assert options["ocpp"]["allow_ids"] == ["CP1"]                   # strangers cannot connect
    assert config.grid.import_limit_kw == 30.0


def test_the_shipped_example_is_valid():
    config = load_site_config(ROOT / "scenarios" / "site.toml")
    assert len(config.assets) == 3 and config.grid.import_limit_kw == 60.0


@pytest.mark.parametrize("edit, line", [
    (("max_kw = 11", "max_kws = 11"), "assets[0].max_kws: unknown key (value 11); did you mean 'max_kw'?"),
    (("max_kw = 11", 'max_kw = "eleven"'), "assets[0].max_kw: got 'eleven', expected a number"),
    (("max_kw = 11", "max_kw = -11"), "assets[0].max_kw: got -11, expected a value >= 0.0"),
    (('kind = "charger"', 'kind = "toaster"'), "assets[0].kind: got 'toaster', expected one of 'charger', 'battery'"),
    (('id = "bat-1"', 'id = "ev-1"'), "assets[1].id: duplicate asset id 'ev-1'"),
    (("port = 5020", "port = 70000"), "assets[1].modbus.port: got 70000, expected a value <= 65535"),
    (('register_map = "sunspec"', 'register_map = "vendorx"'), "assets[1].modbus.register_map: got 'vendorx'"),
    (("import_limit_kw = 30", 'import_limit_kw = "30kW"'), "grid.import_limit_kw: got '30kW', expected a number"),
    (("[grid]", "[grids]"), "grids: unknown key"),
    (('name = "t"', 'name = "t"\ncolour = "red"'), "site.colour: unknown key (value 'red')"),
])
def test_each_mistake_is_named_with_its_key_path_and_value(tmp_path, edit, line):
    with pytest.raises(ConfigFileError) as info:
        load_site_config(write(tmp_path, VALID.replace(*edit, 1)))
    assert any(p.startswith(line) for p in info.value.problems), info.value.problems


def test_every_problem_is_reported_at_once(tmp_path):
    text = VALID.replace("max_kw = 11", 'max_kw = "eleven"').replace("port = 5020", "port = 0") \
        .replace('id = "bat-1"', 'id = "ev-1"') + '\n[http]\nlisten = "0.0.0.0:8080"\n'
    with pytest.raises(ConfigFileError) as info:
        load_site_config(write(tmp_path, text))
    problems = info.value.problems
    assert len(problems) == 4, problems
    assert any("http.listen: '0.0.0.0:8080' is not a loopback address" in p for p in problems)
    assert str(info.value).count(str(tmp_path / "site.toml")) == 4    # each line names the file


@pytest.mark.parametrize("make, line", [
    (lambda p: p, "no such file"),
    (lambda p: (p.mkdir(), p)[1], "is a folder, not a file"),
    (lambda p: (p.write_text("assets = ["), p)[1], "not valid TOML"),
    (lambda p: (p.write_text("[site]\n"), p)[1], "assets: missing; it is required"),
])
def test_the_file_itself_is_checked(tmp_path, make, line):
    with pytest.raises(ConfigFileError, match=line):
        load_site_config(make(tmp_path / "site.toml"))


def test_basic_auth_is_all_or_nothing(tmp_path):
    text = VALID + '\n[[assets]]\nid = "ev-2"\nkind = "charger"\nocpp = { charge_point_id = "CP2", password = "s" }\n'
    with pytest.raises(ConfigurationError, match="ocpp.password is set for some chargers but not for ev-1"):
        ocpp_options(load_site_config(write(tmp_path, text)))


def test_check_exits_2_with_every_problem_and_no_traceback(tmp_path, capsys):
    path = write(tmp_path, VALID.replace("max_kw = 11", "max_kws = 11").replace("[grid]", "[grids]"))
    assert main(["check", str(path)]) == 2
    err = capsys.readouterr().err
    assert "assets[0].max_kws: unknown key" in err and "grids: unknown key" in err and "Traceback" not in err


def test_check_describes_a_valid_site(tmp_path, capsys):
    assert main(["check", str(write(tmp_path, VALID))]) == 0
    out = capsys.readouterr().out
    assert "ev-1         charger  11 kW, 3 phase(s), OCPP CP1" in out and "valid" in out
    assert "grid limit: import 30.0 kW" in out


@pytest.mark.timeout(60)
def test_check_connect_probes_each_device_and_prints_a_table(tmp_path):
    import asyncio
    import socket
    import subprocess
    import sys

    from protocols.sim.battery import BatterySim
    from protocols.sim.fleet import run_fleet
    from runtime.core.iothread import IOThread

    with socket.socket() as s:       # a free port for the central system the check starts
        s.bind(("127.0.0.1", 0))
        ocpp_port = s.getsockname()[1]
    io = IOThread(name="test-sims").start()
    battery = BatterySim(host="127.0.0.1", port=0, name="bat-1")
    io.call(battery.start())
    stop = asyncio.Event()
    fleet = io.submit(run_fleet(f"ws://127.0.0.1:{ocpp_port}", 1, "1.6", "CP", stop=stop, retry=True, retry_base=0.05,
                                retry_cap=0.2, meter_interval=0))
    text = (VALID.replace('charge_point_id = "CP1"', 'charge_point_id = "CP0001"')
            .replace('port = 5020, register_map = "sunspec"', f'port = {battery.port}')
            + f'\n[ocpp]\nhost = "127.0.0.1"\nport = {ocpp_port}\n')
    path = write(tmp_path, text)
    try:
        result = subprocess.run([sys.executable, "-m", "runtime.cli", "check", str(path), "--connect", "--wait", "20"],
                                capture_output=True, text=True, timeout=45, cwd=ROOT)
    finally:
        io.loop.call_soon_threadsafe(stop.set)
        fleet.result(timeout=20)
        io.call(battery.stop())
        io.stop()
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [line for line in result.stdout.splitlines() if "│" in line]   # the table's rows
    assert any("ev-1" in r and "yes" in r and "connected (OCPP 1.6" in r for r in rows), result.stdout
    assert any("bat-1" in r and "yes" in r and "answered" in r for r in rows), result.stdout


def test_check_connect_says_which_device_did_not_answer(tmp_path):
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]     # nothing listens here once the socket is closed
    text = VALID.replace('ocpp = { charge_point_id = "CP1" }', "").replace(
        'port = 5020, register_map = "sunspec"', f"port = {dead}, timeout_s = 0.2")
    import subprocess
    import sys
    result = subprocess.run([sys.executable, "-m", "runtime.cli", "check", str(write(tmp_path, text)), "--connect"],
                            capture_output=True, text=True, timeout=45, cwd=ROOT)
    assert result.returncode == 1, result.stdout + result.stderr
    row = [line for line in result.stdout.splitlines() if "bat-1" in line][-1]   # the table's row
    assert "NO" in row and "cannot connect" in row, result.stdout
