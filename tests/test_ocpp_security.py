"""OCPP security profiles 1-3 against the real CentralSystem on 127.0.0.1, with certificates made at test time.

A test PKI (``trustme``: a CA, the central system's certificate for 127.0.0.1, one certificate per charger
named by its id; ``cryptography`` for a self-signed one) is written to the test's tmp_path. Every refusal
must happen before any OCPP frame (the central system never hears of the charge point) and leave a log
line that says why (checked with caplog). Also here: the rule for a second connection of a connected
id, the warning of an unauthenticated central system, and the site file's ``[ocpp]`` security keys and
``[ocpp.authorize]`` table.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import re
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from protocols.base import DeviceContext, LinkUp, Outcome
from protocols.ocpp import CentralSystem, OcppChargerLink
from protocols.ocpp.central_system import is_loopback, resolve_security_profile
from protocols.ocpp.notifications import ChargerOnline
from protocols.ocpp.security import check_client_certificate, client_context, server_context
from protocols.sim.chargepoint import ChargePointSim
from runtime.cli import main
from runtime.config import load_site_config
from runtime.config.build import ocpp_options
from runtime.core.clock import RealClock
from runtime.core.commands import Command, CommandType
from runtime.core.errors import ConfigFileError, ConfigurationError

from .asyncsupport import run, settle

VERSIONS = ["1.6", "2.0.1"]
CS_LOG = "protocols.ocpp.central_system"
pytestmark = [pytest.mark.timeout(30), pytest.mark.usefixtures("no_leaks")]  # no_leaks: tests/conftest.py
# What a client sees when the server ends the TLS handshake or the HTTP upgrade (it varies with TLS 1.2 / 1.3).
REFUSED = (InvalidHandshake, ConnectionClosed, OSError)


# ---- a test PKI ---------------------------------------------------------------------------------------

@dataclass
class Pki:
    dir: Path
    ca: trustme.CA
    ca_cert: Path
    server_cert: Path
    server_key: Path

    def charger(self, name: str, *, ca: trustme.CA | None = None, expired: bool = False,
                common_name: str | None = None) -> tuple[Path, Path]:
        """(certificate, key) files of a charger certificate for ``name`` (its CN and a DNS SAN)."""
        kw: dict[str, Any] = {}
        if expired:
            kw = {"not_before": dt.datetime(2020, 1, 1), "not_after": dt.datetime(2021, 1, 1)}
        leaf = (ca or self.ca).issue_cert(name, common_name=common_name or name, **kw)
        cert, key = self.dir / f"{name}-{id(leaf)}.pem", self.dir / f"{name}-{id(leaf)}.key"
        leaf.cert_chain_pems[0].write_to_path(str(cert))
        leaf.private_key_pem.write_to_path(str(key))
        return cert, key

    def self_signed(self, name: str) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = dt.datetime.now(dt.timezone.utc)
        cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
                .not_valid_after(now + dt.timedelta(days=30)).sign(key, hashes.SHA256()))
        cert_path, key_path = self.dir / f"{name}-self.pem", self.dir / f"{name}-self.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        return cert_path, key_path


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    paths = tmp_path / "ca.pem", tmp_path / "server.pem", tmp_path / "server.key"
    ca.cert_pem.write_to_path(str(paths[0]))
    server.cert_chain_pems[0].write_to_path(str(paths[1]))
    server.private_key_pem.write_to_path(str(paths[2]))
    return Pki(tmp_path, ca, *paths)


def refusals(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == CS_LOG and "refusing" in r.getMessage()]


async def refused_with(caplog: pytest.LogCaptureFixture, text: str) -> None:
    """A refusal naming ``text`` was logged (the server may log just after the client saw the refusal)."""
    await settle(lambda: any(text in m for m in refusals(caplog)), what=f"a refusal saying {text!r}")


class Bench:
    """A started CentralSystem (the profile's arguments) and the simulators of one test."""

    def __init__(self, **cs_kw: Any) -> None:
        self.cs = CentralSystem("127.0.0.1", 0, response_timeout=2.0, **cs_kw)
        self.sims: list[ChargePointSim] = []

    async def __aenter__(self) -> "Bench":
        await self.cs.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        for sim in self.sims:
            await sim.stop()
        await self.cs.stop()

    def sim(self, cp_id: str, version: str = "1.6", **kw: Any) -> ChargePointSim:
        sim = ChargePointSim(cp_id, self.cs.url, version, meter_interval=0, response_timeout=2.0, open_timeout=3,
                             **kw)
        self.sims.append(sim)
        return sim

    async def online(self, cp_id: str, version: str = "1.6", **kw: Any) -> ChargePointSim:
        events: list[Any] = []
        self.cs.register_listener(cp_id, events.append)
        sim = self.sim(cp_id, version, **kw)
        await sim.start()
        await settle(lambda: [e for e in events if isinstance(e, ChargerOnline)], what=f"{cp_id} online")
        return sim


# ---- profile 1: HTTP Basic auth -----------------------------------------------------------------------

def test_profile_1_refusals_say_why(caplog: pytest.LogCaptureFixture) -> None:
    async def body() -> None:
        async with Bench(basic_auth={"CPA": "s3cret-password-16"}) as b:
            assert b.cs.security_profile == 1 and b.cs.url.startswith("ws://")
            await b.online("CPA", password="s3cret-password-16")
            cases = [("CPA", "wrong", "wrong password"), ("CPA", None, "no HTTP Basic credentials"),
                     ("CPX", "s3cret-password-16", "no password configured for this id")]
            with caplog.at_level(logging.WARNING, logger=CS_LOG):
                for cp_id, password, why in cases:
                    with pytest.raises(InvalidStatus) as err:
                        await b.sim(cp_id, password=password).start()
                    assert err.value.response.status_code == 401
                    await refused_with(caplog, why)
                    assert b.cs.charge_point("CPX") is None
    run(body)


# ---- profile 2: TLS + Basic auth ----------------------------------------------------------------------

@pytest.mark.parametrize("version", VERSIONS)
def test_profile_2_tls_with_the_right_password(pki: Pki, version: str) -> None:
    """A charger that trusts the CA and sends its password charges over wss:// (TLS 1.2 or later)."""
    async def body() -> None:
        async with Bench(security_profile=2, tls_cert=pki.server_cert, tls_key=pki.server_key,
                         basic_auth={"CP1": "right-password-1234"}) as b:
            assert b.cs.url.startswith("wss://127.0.0.1:")
            sim = await b.online("CP1", version, password="right-password-1234", ca_cert=pki.ca_cert)
            assert sim.boot_status == "Accepted"
            conn = b.cs.charge_point("CP1").connection._connection
            assert conn.transport.get_extra_info("ssl_object").version() in ("TLSv1.2", "TLSv1.3")
    run(body)


def test_profile_2_wrong_password_and_plain_ws_are_refused(pki: Pki, caplog: pytest.LogCaptureFixture) -> None:
    async def body() -> None:
        async with Bench(security_profile=2, tls_cert=pki.server_cert, tls_key=pki.server_key,
                         basic_auth={"CP1": "right-password-1234"}) as b:
            with caplog.at_level(logging.WARNING, logger=CS_LOG):
                with pytest.raises(InvalidStatus) as err:
                    await b.sim("CP1", password="wrong-password-1234", ca_cert=pki.ca_cert).start()
                assert err.value.response.status_code == 401
                await refused_with(caplog, "wrong password")
                plain = f"ws://127.0.0.1:{b.cs.port}/CP1"  # TLS is required: plain ws never reaches the HTTP layer
                with pytest.raises(REFUSED):
                    async with connect(plain, subprotocols=["ocpp1.6"], open_timeout=3):  # type: ignore[list-item]
                        pass
                await refused_with(caplog, "plain HTTP (ws://) request on the TLS port")
            assert b.cs.charge_point("CP1") is None
    run(body)


def test_tls_server_context_requires_tls_1_2_and_offers_the_ocpp_cipher_suites(pki: Pki) -> None:
    """TLS 1.2 minimum (both specifications); the suites OCTT TC_086_CSMS / TC_A_04_CSMS list are offered."""
    ctx = server_context(pki.server_cert, pki.server_key)
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2 and ctx.verify_mode == ssl.CERT_NONE
    names = {c["name"] for c in ctx.get_ciphers()}
    assert {"ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384", "AES128-GCM-SHA256",
            "AES256-GCM-SHA384"} <= names
    assert server_context(pki.server_cert, pki.server_key, pki.ca_cert).verify_mode == ssl.CERT_REQUIRED
    assert client_context(pki.ca_cert).minimum_version == ssl.TLSVersion.TLSv1_2


# ---- profile 3: client certificates -------------------------------------------------------------------

def files_of(pair: tuple[Path, Path]) -> dict[str, Path]:
    return {"client_cert": pair[0], "client_key": pair[1]}


def profile_3(pki: Pki) -> dict[str, Any]:
    return {"security_profile": 3, "tls_cert": pki.server_cert, "tls_key": pki.server_key, "ca_cert": pki.ca_cert}


@pytest.mark.parametrize("version", VERSIONS)
def test_profile_3_the_right_certificate_charges_and_takes_commands(pki: Pki, version: str) -> None:
    """The charger's own certificate (CN = its id) connects; a command goes through as on plain ws: the
    simulator, and so scenarios and benchmarks, can run secured."""
    async def body() -> None:
        cert, key = pki.charger("CP1")
        cs = CentralSystem("127.0.0.1", 0, response_timeout=2.0, **profile_3(pki))
        clock, events = RealClock(), []
        link = OcppChargerLink("CP1", call_timeout=2.0)
        await cs.start()
        await link.start(DeviceContext(asyncio.get_running_loop(), clock, {"ocpp": cs}), events.append)
        sim = ChargePointSim("CP1", cs.url, version, meter_interval=0, ca_cert=pki.ca_cert, client_cert=cert,
                             client_key=key)
        try:
            await sim.start()
            await settle(lambda: [e for e in events if isinstance(e, LinkUp)], what="LinkUp")
            command = Command("c-1", "ev1", CommandType.SET_CHARGE_RATE, 7.0, dt.datetime.now(dt.timezone.utc))
            assert (await link.execute(command)).outcome is Outcome.COMPLETED
            assert sim.limit_w == 7000.0
        finally:
            await sim.stop()
            await link.stop()
            await cs.stop()
            clock.stop()
    run(body)


@pytest.mark.parametrize("case, why", [
    ("another charger's certificate", "names 'CP2', 'cp2', not the charge point id 'CP1'"),
    ("a self-signed certificate", "client certificate refused: self-signed certificate"),
    ("no certificate", "the client sent no certificate"),
    ("an expired certificate", "client certificate refused: certificate has expired"),
    ("a certificate of another CA", "client certificate refused: unable to get local issuer certificate"),
])
def test_profile_3_refuses_before_any_ocpp_frame(pki: Pki, case: str, why: str,
                                                caplog: pytest.LogCaptureFixture) -> None:
    async def body() -> None:
        files: dict[str, Any] = {
            "another charger's certificate": files_of(pki.charger("CP2")),
            "a self-signed certificate": files_of(pki.self_signed("CP1")),
            "no certificate": {},
            "an expired certificate": files_of(pki.charger("CP1", expired=True)),
            "a certificate of another CA": files_of(pki.charger("CP1", ca=trustme.CA())),
        }[case]
        async with Bench(**profile_3(pki)) as b:
            with caplog.at_level(logging.WARNING, logger=CS_LOG):
                with pytest.raises(REFUSED) as err:
                    await b.sim("CP1", ca_cert=pki.ca_cert, **files).start()
                if case == "another charger's certificate":  # a valid certificate: refused in the HTTP upgrade
                    assert isinstance(err.value, InvalidStatus) and err.value.response.status_code == 403
                await refused_with(caplog, why)
            assert b.cs.charge_point("CP1") is None  # no OCPP session, not even a record
    run(body)


def test_check_client_certificate_names() -> None:
    cert = {"subject": ((("organizationName", "CPO"),), (("commonName", "CP-7"),)),
            "subjectAltName": (("DNS", "cp-8"), ("URI", "urn:cp:9"))}
    assert check_client_certificate(cert, "CP-7") is None
    assert check_client_certificate(cert, "CP-8") is None        # DNS names are case-insensitive
    assert check_client_certificate(cert, "urn:cp:9") is None
    assert "not the charge point id 'cp-7'" in check_client_certificate(cert, "cp-7")  # the CN is exact
    assert "no client certificate" in check_client_certificate(None, "CP-7")


# ---- a second connection of a connected id ------------------------------------------------------------

def test_second_connection_without_auth_is_logged_loudly_naming_both_peers(
        caplog: pytest.LogCaptureFixture) -> None:
    async def body() -> None:
        async with Bench() as b:
            first = await b.online("CP1")
            first_peer = "127.0.0.1:%d" % first._conn.ws.local_address[1]  # what the server sees as its peer
            with caplog.at_level(logging.INFO, logger=CS_LOG):
                second = await b.online("CP1")
            second_peer = "127.0.0.1:%d" % second._conn.ws.local_address[1]
            warnings = [r.getMessage() for r in caplog.records
                        if r.levelno == logging.WARNING and "posing as CP1" in r.getMessage()]
            assert len(warnings) == 1 and first_peer in warnings[0] and second_peer in warnings[0]
            await settle(lambda: not first.connected, what="the old connection closed")
            assert second.connected
    run(body)


def test_second_authenticated_connection_replaces_the_old_one(caplog: pytest.LogCaptureFixture) -> None:
    async def body() -> None:
        async with Bench(basic_auth={"CP1": "password-0123456789"}) as b:
            first = await b.online("CP1", password="password-0123456789")
            with caplog.at_level(logging.INFO, logger=CS_LOG):
                await b.online("CP1", password="password-0123456789")
            assert any("new authenticated connection" in r.getMessage() and r.levelno == logging.INFO
                       for r in caplog.records)
            assert not any("posing as" in r.getMessage() for r in caplog.records)
            await settle(lambda: not first.connected, what="the old connection closed")
    run(body)


# ---- the warning of an unauthenticated central system -------------------------------------------------

@pytest.mark.parametrize("host, kw, warned", [
    ("0.0.0.0", {}, True),
    ("127.0.0.1", {}, False),
    ("0.0.0.0", {"basic_auth": {"CP1": "password-0123456789"}}, False),
])
def test_start_up_warns_when_listening_beyond_loopback_without_auth(host: str, kw: dict[str, Any], warned: bool,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    async def body() -> None:
        with caplog.at_level(logging.INFO, logger=CS_LOG):
            async with CentralSystem(host, 0, **kw):
                pass
    run(body)
    assert any("authenticates nobody" in r.getMessage() and r.levelno == logging.WARNING
               for r in caplog.records) is warned
    assert any("security profile" in r.getMessage() and "listening" in r.getMessage() for r in caplog.records)


def test_is_loopback() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("") and not is_loopback("site.example")


@pytest.mark.parametrize("profile, given, error", [
    (1, {}, "needs a Basic auth password"),
    (2, {"basic_auth": True}, "needs tls_cert and tls_key"),
    (3, {"tls_cert": True, "tls_key": True}, "needs ca_cert"),
    (3, {"tls_cert": True, "tls_key": True, "ca_cert": True, "basic_auth": True}, "does not use HTTP Basic"),
    (0, {"basic_auth": True}, "does not use HTTP Basic"),
    (1, {"basic_auth": True, "tls_cert": True}, "is plain ws"),
    (2, {"basic_auth": True, "tls_cert": True, "tls_key": True, "ca_cert": True}, "ca_cert belongs to profile 3"),
    (4, {}, "must be 0, 1, 2 or 3"),
])
def test_security_profile_must_match_what_is_given(profile: int, given: dict[str, bool], error: str) -> None:
    flags = {"basic_auth": False, "tls_cert": False, "tls_key": False, "ca_cert": False, **given}
    with pytest.raises(ConfigurationError, match=error):
        resolve_security_profile(profile, **flags)


def test_security_profile_is_inferred_when_not_given() -> None:
    flags = {"basic_auth": False, "tls_cert": False, "tls_key": False, "ca_cert": False}
    assert resolve_security_profile(None, **flags) == 0
    assert resolve_security_profile(None, **{**flags, "basic_auth": True}) == 1
    assert resolve_security_profile(None, **{**flags, "basic_auth": True, "tls_cert": True, "tls_key": True}) == 2
    assert resolve_security_profile(None, **{**flags, "tls_cert": True, "tls_key": True, "ca_cert": True}) == 3


# ---- the site file --------------------------------------------------------------------------------------

SITE = """
[site]
name = "secure"

[[assets]]
id = "ev-1"
kind = "charger"
ocpp = {{ charge_point_id = "CP1"{password} }}

[ocpp]
host = "{host}"
port = 0
{ocpp}
"""


def site(tmp_path: Path, *, ocpp: str = "", password: str = "", host: str = "127.0.0.1") -> Path:
    path = tmp_path / "site.toml"
    path.write_text(SITE.format(ocpp=ocpp, password=f', password = "{password}"' if password else "", host=host))
    return path


def test_site_file_profile_3_builds_a_tls_central_system(pki: Pki, tmp_path: Path) -> None:
    path = site(tmp_path, ocpp=f'security_profile = 3\ntls_cert = "{pki.server_cert}"\n'
                               f'tls_key = "{pki.server_key}"\nca_cert = "{pki.ca_cert}"\n')
    options = ocpp_options(load_site_config(path))
    assert options is not None and options["security_profile"] == 3 and "basic_auth" not in options
    assert CentralSystem(**options).security_profile == 3


@pytest.mark.parametrize("ocpp, password, problem", [
    ("security_profile = 2", "pw", "ocpp: security_profile 2 needs tls_cert and tls_key"),
    ('tls_cert = "x.pem"', "", "ocpp: tls_cert, tls_key and ca_cert need security_profile = 2 or 3"),
    ('security_profile = 1\ntls_cert = "x.pem"', "pw", "tls_cert: not used by security_profile 1 (plain ws)"),
    ("security_profile = 5", "", "ocpp.security_profile"),
    ('security_profile = 3\ntls_cert = "nope.pem"\ntls_key = "nope.key"\nca_cert = "nope-ca.pem"', "",
     "tls_cert: no such file 'nope.pem'; tls_key: no such file 'nope.key'; ca_cert: no such file 'nope-ca.pem' "
     "(a relative path is relative to the current directory"),
])
def test_site_file_security_keys_are_checked(tmp_path: Path, ocpp: str, password: str, problem: str) -> None:
    with pytest.raises(ConfigFileError, match=re.escape(problem)):
        load_site_config(site(tmp_path, ocpp=ocpp, password=password))


@pytest.mark.parametrize("ocpp, password, problem", [
    ("security_profile = 1", "", "needs a Basic auth password for every charge point"),
    ("security_profile = 0", "pw", "does not use HTTP Basic auth passwords"),
])
def test_site_file_profile_and_passwords_must_agree(tmp_path: Path, ocpp: str, password: str,
                                                    problem: str) -> None:
    with pytest.raises(ConfigurationError, match=problem):
        ocpp_options(load_site_config(site(tmp_path, ocpp=ocpp, password=password)))


def test_site_file_tls_files_that_are_not_pem_are_reported(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate\n")
    path = site(tmp_path, password="pw", ocpp=f'security_profile = 2\ntls_cert = "{bad}"\ntls_key = "{bad}"\n')
    with pytest.raises(ConfigurationError, match="cannot be loaded"):
        ocpp_options(load_site_config(path))


def test_site_file_authorize_table(tmp_path: Path) -> None:
    path = site(tmp_path, ocpp='[ocpp.authorize]\nmode = "local_list"\ntags = [\n'
                               '  { id_tag = "AA11", status = "Accepted", expiry = "2027-01-01T00:00:00Z" },\n'
                               '  { id_tag = "BB22", status = "Blocked" },\n'
                               '  { id_tag = "CC33", expiry = 2026-06-01T00:00:00+02:00 },\n]\n')
    config = load_site_config(path)
    policy = CentralSystem(**ocpp_options(config)).authorization  # type: ignore[arg-type]
    assert policy.mode == "local_list"
    assert policy.decide("aa11", dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)).status == "Accepted"
    assert policy.decide("AA11", dt.datetime(2027, 1, 2, tzinfo=dt.timezone.utc)).status == "Expired"
    assert policy.decide("BB22").status == "Blocked" and policy.decide("ZZ").status == "Unknown"


@pytest.mark.parametrize("table, problem", [
    ('mode = "everyone"', "ocpp.authorize.mode"),
    ('mode = "allow_list"', "allow_list' needs the tags to accept"),
    ('mode = "local_list"\ntags = [{ id_tag = "A", status = "Maybe" }]', "ocpp.authorize.tags[0].status"),
    ('mode = "local_list"\ntags = [{ id_tag = "A", expiry = "2027-01-01T00:00:00" }]', "timezone"),
    ('mode = "local_list"\ntags = [{ id_tag = "A", colour = "red" }]',
     "ocpp.authorize.tags[0].colour: unknown key"),
    ('mode = "accept_all"\nallow = ["A"]', "allow is used with mode = 'allow_list' only"),
    ('mode = "allow_list"\nallow = ["A", "a"]', "listed twice"),
])
def test_site_file_authorize_table_is_strict(tmp_path: Path, table: str, problem: str) -> None:
    with pytest.raises(ConfigFileError, match=re.escape(problem)):
        load_site_config(site(tmp_path, ocpp=f"[ocpp.authorize]\n{table}\n"))


def test_check_warns_about_an_unauthenticated_central_system_beyond_loopback(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["check", str(site(tmp_path, host="0.0.0.0"))]) == 0
    out = capsys.readouterr().out
    assert "WARNING: the OCPP central system listens on 0.0.0.0:0 and authenticates nobody" in out
    assert main(["check", str(site(tmp_path, host="0.0.0.0", password="pw"))]) == 0
    assert "WARNING" not in capsys.readouterr().out
    assert main(["check", str(site(tmp_path, host="127.0.0.1"))]) == 0
    assert "WARNING" not in capsys.readouterr().out
