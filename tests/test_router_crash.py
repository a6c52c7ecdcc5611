"""``coordinator router`` as a process of its own: killed with kill -9 in the middle of a flow and started again
on the same SQLite file, nothing it had confirmed is lost and nothing the edge journaled is delivered twice;
SIGTERM stops it cleanly (exit 0); a bad file exits 2 with every problem; tokens from ``coordinator token``
are accepted by it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from runtime.router.testkit import FakeEdge, Operator, setpoint

from tests.asyncsupport import run
from tests.servers import (AUDIENCE, EDGE_SECRETS, ROOT, SECRET, RouterProcess, http, router_table, token,
                           write_toml)

pytestmark = pytest.mark.usefixtures("no_leaks")
ADMIN = token("admin", control="*", view="*")


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "runtime.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)


def test_kill_9_loses_nothing_confirmed_and_delivers_nothing_twice(tmp_path: Path):
    config = write_toml(tmp_path / "router.toml", router_table(tmp_path, ack_timeout_s=60.0))
    edge = FakeEdge("ws://unused", "e1", EDGE_SECRETS["e1"])
    ids = [f"k{i}" for i in range(1, 11)]
    first = RouterProcess(config)
    try:
        async def before():
            await edge.connect_to(first.ws_url)
            op = await Operator(first.ws_url, token()).connect()
            for cid in ids[:5]:
                await op.submit(setpoint(cid, "e1", 100, supersede=False))
            await op.wait(lambda: all("EXECUTED" in op.statuses[c] for c in ids[:5]), what="k1..k5 executed")
            edge.auto = ("delivered",)           # k6..k8 reach the edge; their result comes after the crash
            for cid in ids[5:8]:
                await op.submit(setpoint(cid, "e1", 100, supersede=False))
            await op.wait(lambda: all("DELIVERED" in op.statuses[c] for c in ids[5:8]), what="k6..k8 delivered")
            await edge.close()                   # the edge goes offline: k9, k10 wait in the queue
            for cid in ids[8:]:
                await op.submit(setpoint(cid, "e1", 100, supersede=False))
            await op.wait(lambda: all(op.statuses[c] == ["QUEUED"] for c in ids[8:]), what="k9, k10 queued")
            await op.close()
        run(before, 30)
    finally:
        assert first.kill() == -9
    second = RouterProcess(config)
    try:
        async def after():
            edge.auto = ("delivered", "accepted", "executed")
            welcome = await edge.connect_to(second.ws_url)
            assert welcome.resume_after == 8 and welcome.pending == [6, 7, 8]
            for cid in ids[5:8]:                  # the edge's core cycle finishes what it had
                await edge.ack(cid, "executed")

            def states():
                got = {c: http("GET", f"{second.url}/api/v1/commands/{c}", ADMIN)[2]["state"] for c in ids}
                return got if set(got.values()) == {"EXECUTED"} else None
            await edge.wait(states, 20, "every command EXECUTED after the restart")
            assert edge.received == {cid: 1 for cid in ids}
            rows = http("GET", f"{second.url}/api/v1/audit?edge_id=e1&limit=10000", ADMIN)[2]["rows"]
            for cid in ids:
                mine = [(r["kind"], r["status"]) for r in rows if r["command_id"] == cid]
                assert mine.count(("submit", "QUEUED")) == 1 and mine.count(("state", "SENT")) == 1, mine
                assert mine.count(("state", "EXECUTED")) == 1, mine
            await edge.close()
        run(after, 40)
    finally:
        assert second.terminate() == 0


def test_sigterm_stops_the_router_cleanly_and_tokens_from_the_cli_work(tmp_path: Path):
    config = write_toml(tmp_path / "router.toml", router_table(tmp_path))
    minted = cli("token", "user", "--sub", "carla", "--control", "e2", "--config", str(config))
    assert minted.returncode == 0, minted.stderr
    edge_token = cli("token", "edge", "--edge", "e2", "--config", str(config)).stdout.strip()
    proc = RouterProcess(config, verbose=True)
    try:
        async def body():
            edge = FakeEdge(proc.ws_url, "e2", edge_token)   # an edge JWT instead of the edge's secret
            await edge.connect()
            op = await Operator(proc.ws_url, minted.stdout.strip()).connect()
            await op.submit(setpoint("t1", "e2", 10))
            await op.wait_status("t1", "EXECUTED")
            await op.close()
            await edge.close()
        run(body, 20)
    finally:
        assert proc.terminate() == 0
    assert "listening on http://127.0.0.1:" in "".join(proc.output)
    assert "objects frozen out of the garbage collector" in "".join(proc.output)   # a process of its own


def test_a_bad_router_file_exits_2_with_every_problem(tmp_path: Path):
    table = router_table(tmp_path, ack_timeout_s=-1, limits={"user": "lots"})
    table["auth"] = {"audience": AUDIENCE, "hs256_secret": SECRET, "algorithm": "none"}
    result = cli("router", "--config", str(write_toml(tmp_path / "router.toml", table)))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert any("ack_timeout_s: got -1, expected a value > 0" in line for line in lines), lines
    assert any("limits.user: not a rate limit" in line for line in lines), lines
    assert any("auth.algorithm: unknown key" in line for line in lines), lines
    missing = cli("router", "--config", str(tmp_path / "nope.toml"))
    assert missing.returncode == 2 and "no such file" in missing.stderr


def test_coordinator_token_signs_with_eddsa_and_rs256_keys(tmp_path: Path):
    import jwt
    for alg in ("EdDSA", "RS256"):
        made = cli("token", "keys", "--alg", alg, "--out", str(tmp_path))
        assert made.returncode == 0, made.stderr
        private, public = made.stdout.split()
        minted = cli("token", "user", "--sub", "svc", "--control", "*", "--key", private, "--audience", "aud")
        assert minted.returncode == 0, minted.stderr
        claims = jwt.decode(minted.stdout.strip(), Path(public).read_text(), algorithms=[alg], audience="aud")
        assert claims["sub"] == "svc" and claims["can_control"] == "*"
    secret = cli("token", "secret", "--edge", "site9")
    assert secret.returncode == 0 and 'site9 = "sha256:' in secret.stderr
    bad = cli("token", "user", "--sub", "x")
    assert bad.returncode == 2 and "give --audience" in bad.stderr
