"""Simulated sites run secured: ``coordinator run --simulate`` and scenarios with ``devices = "sim"`` under
OCPP security profiles 0-3, over real (TLS) websockets on 127.0.0.1 (see :mod:`protocols.sim.pki`)."""

from __future__ import annotations

from pathlib import Path

import pytest
import trustme

from protocols.sim.pki import simulated_security
from runtime.config.loader import load_site_config
from runtime.core.commands import Command, CommandStatus, CommandType
from runtime.scenario import run_scenario
from runtime.service.process import SiteProcess

from .asyncsupport import wait_until

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("no_leaks")]


def operator_files(tmp_path: Path) -> dict[str, Path]:
    """Certificates an operator would configure: another CA than the one the simulation makes."""
    ca = trustme.CA()
    leaf = ca.issue_cert("csms.example.com")
    files = {"ca_cert": tmp_path / "op-ca.pem", "tls_cert": tmp_path / "op.pem", "tls_key": tmp_path / "op.key"}
    ca.cert_pem.write_to_path(str(files["ca_cert"]))
    leaf.cert_chain_pems[0].write_to_path(str(files["tls_cert"]))
    leaf.private_key_pem.write_to_path(str(files["tls_key"]))
    return files


def site_file(tmp_path: Path, profile: int) -> Path:
    password = ', password = "secret-of-cp1-0123456789"' if profile in (1, 2) else ""
    files = operator_files(tmp_path)
    tls = "".join(f'{key} = "{files[key]}"\n' for key in
                  {2: ("tls_cert", "tls_key"), 3: ("tls_cert", "tls_key", "ca_cert")}.get(profile, ()))
    path = tmp_path / "site.toml"
    path.write_text(f"""
[[assets]]
id = "ev-1"
kind = "charger"
max_kw = 22
ocpp = {{ charge_point_id = "CP0001"{password} }}

[ocpp]
host = "127.0.0.1"
port = 0
security_profile = {profile}
{tls}
[journal]
dir = "journal"
""")
    return path


@pytest.mark.parametrize("profile", [0, 1, 2, 3])
def test_run_simulate_connects_its_chargers_under_every_security_profile(tmp_path, profile):
    process = SiteProcess(load_site_config(site_file(tmp_path, profile)), simulate=True).start()
    try:
        site = process.site
        central = site.service("ocpp")
        assert central.url.startswith("wss://" if profile >= 2 else "ws://")
        assert central.authenticates is (profile > 0)
        wait_until(lambda: site.asset_status("ev-1").link == "up", 20, "the simulated charger connected")
        site.submit(Command("c1", "ev-1", CommandType.SET_CHARGE_RATE, 11.0, site.clock.now()))
        wait_until(lambda: site.command("c1").status is CommandStatus.COMPLETED, 20, "c1 COMPLETED")
        assert process.simulators.security is not None
        pki = process.simulators.security.directory
        assert (pki is not None) is (profile >= 2)
    finally:
        process.shutdown()
    assert pki is None or not Path(pki).exists()                  # the throwaway certificates are gone


def test_the_throwaway_pki_names_each_charge_point_and_refuses_a_bad_profile(tmp_path):
    secured = simulated_security(3, ["CP0001", "site_1/cp"], tmp_path)
    assert secured.scheme == "wss" and set(secured.server) == {"security_profile", "tls_cert", "tls_key", "ca_cert"}
    for cp_id in ("CP0001", "site_1/cp"):
        kw = secured.charge_point(cp_id)
        assert set(kw) == {"ca_cert", "client_cert", "client_key"} and Path(kw["client_cert"]).is_file()
    from cryptography import x509
    cert = x509.load_pem_x509_certificate(Path(secured.charge_point("site_1/cp")["client_cert"]).read_bytes())
    assert cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == "site_1/cp"
    (tmp_path / "two").mkdir()
    two = simulated_security(2, ["a", "b"], tmp_path / "two", passwords={"a": "given"})
    assert two.charge_point("a")["password"] == "given" and len(two.charge_point("b")["password"]) >= 16
    assert "client_cert" not in two.charge_point("a")
    with pytest.raises(ValueError, match="security_profile: got 4"):
        simulated_security(4, ["a"])
    with pytest.raises(ValueError, match="needs a directory"):
        simulated_security(2, ["a"])


SCENARIO = """
name = "secured"
start = "2026-01-15T17:00:00Z"
devices = "sim"
security_profile = {profile}

[[assets]]
id = "ev-1"
kind = "charger"
max_kw = 22

[schedule]
csv = "s.csv"
asset_map = {{ ev_1 = "ev-1" }}
"""


@pytest.mark.parametrize("profile", [1, 3])
def test_a_scenario_on_simulators_runs_under_a_security_profile(tmp_path, profile):
    path = tmp_path / "s.toml"
    path.write_text(SCENARIO.format(profile=profile))
    (tmp_path / "s.csv").write_text("timestamp,ev_1_kw\n2026-01-15T17:00:00+00:00,11.0\n"
                                   "2026-01-15T17:15:00+00:00,7.0\n")
    from runtime.scenario.loader import load_scenario
    assert load_scenario(path).security_profile == profile
    result = run_scenario(path, report_dir=None)
    assert result.counts.get("COMPLETED", 0) >= 2, result.counts


# ---- coordinator sim ocpp, secured -------------------------------------------------------------------

def test_sim_ocpp_connects_a_fleet_under_profile_3_with_a_certificate_per_charge_point(tmp_path):
    import asyncio
    import shutil
    import signal
    import subprocess
    import sys

    from protocols.ocpp import CentralSystem

    from .asyncsupport import run, settle
    ids = ["CP0001", "CP0002"]
    secured = simulated_security(3, ids, tmp_path)
    for cp_id in ids:                              # the layout the option's {id} pattern reads
        shutil.copy(secured.charge_point(cp_id)["client_cert"], tmp_path / f"{cp_id}.pem")
        shutil.copy(secured.charge_point(cp_id)["client_key"], tmp_path / f"{cp_id}.key")

    async def body() -> None:
        cs = CentralSystem("127.0.0.1", 0, allow_ids=ids, response_timeout=2.0, **secured.server)
        await cs.start()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "runtime.cli", "sim", "ocpp", "--count", "2", "--url", cs.url,
            "--meter-interval", "0", "--ca-cert", secured.server["ca_cert"],
            "--client-cert", str(tmp_path / "{id}.pem"), "--client-key", str(tmp_path / "{id}.key"),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            await settle(lambda: sorted(cs.online_ids()) == ids, timeout=20, what="both charge points online")
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 10) == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            assert proc.stderr is not None
            await proc.stderr.read()
            await cs.stop()
    run(body, timeout=40)


@pytest.mark.parametrize("args, said", [
    (("--url", "ws://127.0.0.1:9000", "--ca-cert", "ca.pem"), "need a wss:// --url"),
    (("--url", "wss://127.0.0.1:9000", "--ca-cert", "nowhere/ca.pem"), "--ca-cert 'nowhere/ca.pem'"),
    (("--url", "wss://127.0.0.1:9000", "--client-cert", "certs/{id}.pem"),
     "'certs/CP0001.pem' (for charge point CP0001)"),
    (("--url", "wss://127.0.0.1:9000", "--client-key", "k.pem"), "--client-key: give --client-cert too"),
])
def test_sim_ocpp_refuses_tls_options_that_cannot_work(tmp_path, args, said):
    import subprocess
    import sys
    res = subprocess.run([sys.executable, "-m", "runtime.cli", "sim", "ocpp", *args], capture_output=True,
                         text=True, timeout=30, cwd=tmp_path, env=None)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert said in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
