"""The router's side of the operator page, without a browser: password hashes and [users] in router.toml,
sign-in (its session token, its refusals, its rate limit), the page's files and headers, the telemetry
history behind the charts (bounded and down-sampled however busy the edge), ``coordinator token password``,
and the page's files in the package data of a non-editable install."""

from __future__ import annotations

import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from protocols.edge.wire import SiteState, Telemetry
from runtime.core.errors import ConfigFileError
from runtime.router.auth import SESSION_CLAIM, mint, user_claims
from runtime.router.config import parse_router_config
from runtime.router.passwords import check_hash, hash_password, verify_password
from runtime.router.telemetry import TelemetryHistory
from runtime.router.testkit import FakeEdge
from runtime.router.ui import FILES

from tests.asyncsupport import run
from tests.servers import AUDIENCE, EDGE_SECRETS, ROOT, SECRET, http, router_table, running_router, token

pytestmark = pytest.mark.usefixtures("no_leaks")

PASSWORD = "correct horse battery"
HASH = hash_password(PASSWORD)
USERS = {"alice": {"password": HASH, "can_control": ["e1"], "can_view": ["*"]},
         "viewer": {"password": HASH, "can_view": ["e1"]}}


def login(server, user: str, password: str = PASSWORD) -> tuple[int, dict, dict]:
    return http("POST", f"{server.url}/api/v1/login", body={"username": user, "password": password})


# ---- passwords and the file ------------------------------------------------------------------------

def test_password_hashes_verify_and_anything_else_is_named_as_not_a_hash():
    assert HASH.startswith("scrypt:16384:8:1:") and HASH != hash_password(PASSWORD)   # salted
    assert verify_password(PASSWORD, HASH) and not verify_password("wrong horse battery", HASH)
    assert not verify_password(PASSWORD, "hunter2")
    assert check_hash(HASH) is None
    assert "not a password hash" in check_hash("correct horse battery")
    assert "out of range" in check_hash("scrypt:1000:8:1:AAAAAAAAAAAAAAAAAAAAAA:" + "A" * 43)
    with pytest.raises(ValueError, match="at least 8 characters"):
        hash_password("short")


def test_the_file_refuses_a_password_in_clear_and_users_without_a_signing_key(tmp_path: Path):
    with pytest.raises(ConfigFileError) as err:
        parse_router_config(router_table(tmp_path, users={"bob": {"password": "hunter22", "can_view": ["*"]},
                                                          "eve": {"password": HASH, "can_fly": True}}))
    text = str(err.value)
    assert "users.bob.password: not a password hash" in text and "never the password itself" in text
    assert "hunter22" not in text                                  # the clear password is not echoed
    assert "users.eve.can_fly: unknown key" in text
    no_secret = router_table(tmp_path, users={"bob": {"password": HASH}})
    no_secret["auth"] = {"audience": AUDIENCE, "jwks_url": "https://idp.example/jwks.json"}
    with pytest.raises(ConfigFileError, match=r"set \[ui\] session_secret .* or \[auth\] hs256_secret"):
        parse_router_config(no_secret)
    own = parse_router_config({**no_secret, "ui": {"session_secret": "s" * 32}})
    assert own.session_secret() == "s" * 32
    with pytest.raises(ConfigFileError, match="ui.session_secret"):
        parse_router_config({**no_secret, "ui": {"session_secret": "short"}})
    with pytest.raises(ConfigFileError, match="2880 points per chart"):
        parse_router_config(router_table(tmp_path, ui={"telemetry_window_s": 86400, "telemetry_bucket_s": 30}))


# ---- sign-in ------------------------------------------------------------------------------------

def test_sign_in_gives_a_session_token_with_the_users_rights_and_every_attempt_is_audited(tmp_path: Path):
    with running_router(tmp_path, users=USERS) as server:
        status, _, body = login(server, "alice")
        assert status == 200, body
        assert body["user"] == "alice" and body["can_control"] == ["e1"] and body["can_view"] == "*"
        assert body["token_type"] == "Bearer" and body["expires_in"] == 3600
        tok = body["token"]
        status, _, me = http("GET", f"{server.url}/api/v1/me", tok)
        assert (status, me) == (200, {"user": "alice", "can_control": ["e1"], "can_view": "*"})
        command = {"command_id": "c1", "command_type": "setpoint", "value": 1000, "unit": "W",
                   "target": {"edge_id": "e1", "device_id": "bms_main", "channel": "SetActivePower"}}
        assert http("POST", f"{server.url}/api/v1/commands", tok, command)[0] == 202
        status, _, body = http("POST", f"{server.url}/api/v1/commands", tok,
                               {**command, "command_id": "c2", "target": {**command["target"], "edge_id": "e2"}})
        assert status == 403 and body["message"] == "alice may only view edge 'e2' (token claim can_control)"
        for user, password in (("alice", "wrong password"), ("mallory", PASSWORD)):
            status, headers, body = login(server, user, password)
            assert (status, body) == (401, {"code": "unauthorized", "message": "wrong user name or password"})
        status, _, body = http("POST", f"{server.url}/api/v1/login", body={"username": "alice"})
        assert status == 422 and "password" in body["message"]
        rows = http("GET", f"{server.url}/api/v1/audit?kind=login", token("admin", "*", "*"))[2]["rows"]
        assert [(r["user_id"], r["status"]) for r in rows] == [("alice", "SIGNED_IN")]
        refused = http("GET", f"{server.url}/api/v1/audit?kind=refused", token("admin", "*", "*"))[2]["rows"]
        details = [r["detail"] for r in refused]
        assert any("user 'mallory'" in d and "wrong user name or password" in d for d in details)
        assert any("user 'alice'" in d for d in details)
        status, _, settings = http("GET", f"{server.url}/api/v1/ui")
        assert status == 200 and settings["password_sign_in"] is True and settings["refresh_s"] == 5


def test_sign_in_attempts_are_rate_limited_per_user_name_before_any_password_is_checked(tmp_path: Path):
    limits = {"login": "3/minute", "login_address": "5/minute"}
    with running_router(tmp_path, users=USERS, limits=limits) as server:
        for _ in range(3):
            assert login(server, "alice", "wrong password")[0] == 401
        status, headers, body = login(server, "alice")                 # the right password, too late
        assert status == 429 and body["code"] == "rate_limited" and int(headers["retry-after"]) >= 1
        assert "too many sign-in attempts for user 'alice' (3/minute)" in body["message"]
        assert login(server, "viewer")[0] == 200                        # another name from the same address
        assert login(server, "viewer")[0] == 200
        status, _, body = login(server, "nobody")                       # the address's 6th attempt
        assert status == 429 and "too many sign-in attempts for address 127.0.0.1 (5/minute)" in body["message"]


def test_a_session_token_is_refused_once_its_user_has_left_the_file(tmp_path: Path):
    gone = mint({**user_claims("carol", AUDIENCE, control="*"), SESSION_CLAIM: 1}, SECRET)
    other = mint(user_claims("carol", AUDIENCE, control="*"), SECRET)   # a token from elsewhere: no ses claim
    with running_router(tmp_path, users=USERS) as server:
        status, _, body = http("GET", f"{server.url}/api/v1/me", gone)
        assert status == 401 and body["message"] == "user 'carol' is no longer in [users]: sign in again"
        assert http("GET", f"{server.url}/api/v1/me", other)[0] == 200


def test_a_ui_session_secret_signs_sessions_without_accepting_other_hs256_tokens(tmp_path: Path):
    from runtime.router.server import RouterServer
    table = router_table(tmp_path, users=USERS, ui={"session_secret": "a-session-secret-of-the-router-0123"})
    table["auth"] = {"audience": AUDIENCE, "jwks_url": "https://idp.example/jwks.json"}   # no hs256_secret
    server = RouterServer(parse_router_config(table, str(tmp_path / "router.toml"))).start()
    try:
        status, _, body = login(server, "viewer")
        assert status == 200
        assert http("GET", f"{server.url}/api/v1/me", body["token"])[0] == 200
        assert http("GET", f"{server.url}/api/v1/me", token("admin", "*"))[0] == 401   # signed with SECRET
    finally:
        server.stop()
    with running_router(tmp_path) as server:                             # no [users]
        status, _, body = login(server, "alice")
        assert status == 404 and body["code"] == "not_available"
        assert http("GET", f"{server.url}/api/v1/ui")[2]["password_sign_in"] is False


# ---- the page's files -----------------------------------------------------------------------------

def test_the_page_is_served_with_a_strict_content_security_policy(tmp_path: Path):
    with running_router(tmp_path) as server:
        status, headers, _ = http("GET", f"{server.url}/", timeout=5)
        assert status == 200                                            # urllib followed the redirect to /ui/
        status, headers, html = http("GET", f"{server.url}/ui/")
        assert status == 200 and headers["content-type"].startswith("text/html")
        assert "<script type=\"module\" src=\"/ui/app.js\">" in html and "<script>" not in html
        csp = headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
        assert headers["cache-control"] == "no-cache" and headers["x-content-type-options"] == "nosniff"
        for name, media in FILES.items():
            status, headers, _ = http("GET", f"{server.url}/ui/{name}")
            assert status == 200 and headers["content-type"].split(";")[0] == media.split(";")[0], name
        assert http("GET", f"{server.url}/ui/../router.toml")[0] == 404
        assert http("GET", f"{server.url}/ui/secret.py")[0] == 404
    with running_router(tmp_path, ui={"enabled": False}) as server:
        assert http("GET", f"{server.url}/ui/")[0] == 404


def test_every_file_of_the_page_is_package_data_and_no_file_is_left_out():
    folder = ROOT / "runtime" / "router" / "ui"
    assert {p.name for p in folder.iterdir()} == set(FILES)
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    from fnmatch import fnmatch
    for name in FILES:
        assert any(fnmatch(f"ui/{name}", p) for p in patterns["runtime.router"]), name


# ---- the charts' history ----------------------------------------------------------------------------

def frame(device: str, at: float, **values: float) -> Telemetry:
    from datetime import datetime, timezone
    return Telemetry(device_id=device, values=values, at=datetime.fromtimestamp(at, timezone.utc).isoformat())


def test_the_history_keeps_one_point_per_bucket_over_the_window_and_a_bounded_number_of_series():
    now = [10_000.0]
    h = TelemetryHistory(window_s=600, bucket_s=60, max_series=3, clock=lambda: now[0])
    for i in range(3000):                          # a busy edge: 5 frames a second for 10 minutes
        h.add("e1", frame("bat", now[0] - 600 + i * 0.2, ActivePower=float(i % 10), Soc=50.0, Voltage=400.0))
    points = h.query("e1")["devices"]["bat"]
    assert set(points) == {"ActivePower", "Soc"}                 # only what the charts draw
    assert len(points["ActivePower"]) <= 11 and len(points["Soc"]) <= 11
    t, mean, lo, hi = points["ActivePower"][-1]
    assert (lo, hi) == (0.0, 9.0) and mean == pytest.approx(4.5) and t % 60 == 0
    h.add("e1", frame("ev", now[0], ActivePower=1.0, Soc=2.0))    # the third series fits, the fourth does not
    assert len(h) == 3 and list(h.query("e1")["devices"]["ev"]) == ["ActivePower"]
    now[0] += 1200
    assert h.sweep() == 3 and len(h) == 0 and h.query("e1")["devices"] == {}
    h.add("e2", frame("bat", now[0] + 3600, ActivePower=7.0))    # an edge clock an hour ahead: arrival time
    assert h.query("e2")["devices"]["bat"]["ActivePower"][0][0] == (now[0] // 60) * 60


def test_the_telemetry_endpoint_serves_down_sampled_charts_to_those_who_may_view_the_edge(tmp_path: Path):
    with running_router(tmp_path, ui={"telemetry_bucket_s": 5}) as server:
        async def body():
            e = FakeEdge(server.ws_url, "e1", EDGE_SECRETS["e1"])
            await e.connect()
            start = time.time() - 3000
            for i in range(600):                   # 50 minutes of a value every 5 s, sent at once
                await e.send(frame("bms_main", start + i * 5, ActivePower=1000.0 * (i % 7), Soc=40 + i / 100))
            await e.send(SiteState(controllers={"schedule": True}, overrides=[
                {"command_id": "o1", "device_id": "bms_main", "channel": "MinSoc", "value": 20, "unit": "%",
                 "seconds_left": 120}]))
            url = f"{server.url}/api/v1/edges/e1/telemetry"

            def charts():
                return http("GET", url, token("bob", (), ["e1"]))[2]
            got = await e.wait(lambda: (c := charts()) and len(c["devices"].get("bms_main", {}).get("Soc", []))
                               >= 600 and c, what="the history")
            assert got["bucket_s"] == 5 and got["window_s"] == 3600 and got["values"] == ["ActivePower", "Soc"]
            assert len(got["devices"]["bms_main"]["ActivePower"]) <= 3600 / 5 + 1
            since = http("GET", url + "?since=10m", token("bob", (), ["e1"]))[2]
            assert 0 < len(since["devices"]["bms_main"]["Soc"]) <= 600 / 5 + 1
            status, _, body = http("GET", url, token("eve", (), ["e2"]))
            assert status == 403 and body["message"] == "eve may not view edge 'e1'"
            status, _, body = http("GET", url + "?since=yesterday", token("bob", (), ["e1"]))
            assert status == 422 and body["message"].startswith("since: not a time: 'yesterday'")
            listing = await e.wait(lambda: (x := http("GET", f"{server.url}/api/v1/edges/e1", token())[2])
                                   .get("site_state") and x, what="the site state")
            assert listing["site_state_at"].endswith("Z") and listing["site_state"]["overrides"][0]["seconds_left"]
            await e.close()
        run(body, 30)


# ---- the CLI --------------------------------------------------------------------------------------

def _cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "runtime.cli", *args], input=stdin, capture_output=True,
                          text=True, cwd=ROOT, timeout=60)


def test_coordinator_token_password_reads_the_password_from_stdin_and_prints_a_hash_the_router_accepts(
        tmp_path: Path):
    done = _cli("token", "password", "--user", "dana", stdin="a long enough password\n")
    assert done.returncode == 0, done.stderr
    digest = done.stdout.strip()
    assert verify_password("a long enough password", digest) and "[users.dana]" in done.stderr
    assert "a long enough password" not in done.stdout + done.stderr
    parse_router_config(router_table(tmp_path, users={"dana": {"password": digest}}))
    for args, stdin, message in ((("--user", "dana"), "short\n", "at least 8 characters, got 5"),
                                 (("--user", "d a"), "a long enough password\n", "--user 'd a': a user name is"),
                                 ((), "", "at least 8 characters, got 0")):
        bad = _cli("token", "password", *args, stdin=stdin)
        assert bad.returncode == 2 and message in bad.stderr and "Traceback" not in bad.stderr, bad.stderr

