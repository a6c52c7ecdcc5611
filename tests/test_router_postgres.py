"""The audit log in a real PostgreSQL 15 shared by two router instances (over one redis-server): every transition
of a command, from whichever instance made it, and every refusal, queryable over HTTP and with
``coordinator audit`` (table, JSON, CSV)."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import uuid
from contextlib import ExitStack
from pathlib import Path

import pytest

from runtime.router.testkit import FakeEdge, Operator, setpoint

from tests.asyncsupport import run
from tests.servers import (EDGE_SECRETS, ROOT, PostgresServer, RedisServer, http, postgres_server,  # noqa: F401
                           redis_server, router_table, running_router, token, write_toml)

pytestmark = pytest.mark.usefixtures("no_leaks")


def audit_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "runtime.cli", "audit", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)


def test_two_instances_write_one_audit_log_in_postgres(tmp_path: Path, redis_server: RedisServer,
                                                       postgres_server: PostgresServer):
    dsn = postgres_server.create_database()
    p = f"t{uuid.uuid4().hex[:8]}"
    common = {"redis": {"url": redis_server.url, "prefix": p, "owner_ttl_s": 3.0, "poll_s": 0.5},
              "postgres": {"dsn": dsn}}
    with ExitStack() as stack:
        a = stack.enter_context(running_router(tmp_path / "A", instance_id="A", **common))
        b = stack.enter_context(running_router(tmp_path / "B", instance_id="B", **common))

        async def body():
            edge = FakeEdge(b.ws_url, "e1", EDGE_SECRETS["e1"])
            await edge.connect()
            op = await Operator(a.ws_url, token("olga")).connect()
            await op.submit(setpoint("pg1", "e1", 4200))
            await op.wait_status("pg1", "EXECUTED")
            viewer = await Operator(b.ws_url, token("vic", control=[], view=["e1"])).connect()
            await viewer.submit(setpoint("pg2", "e1", 1))
            await viewer.wait_error("forbidden")

            def rows():
                got = http("GET", f"{a.url}/api/v1/audit?edge_id=e1", token("admin", control="*", view="*"))[2]
                return got["rows"] if len(got["rows"]) >= 7 else None
            found = await op.wait(rows, what="the audit rows of both instances")
            flow = [(r["instance"], r["kind"], r["status"]) for r in found if r["command_id"] == "pg1"]
            assert flow == [("A", "submit", "QUEUED"), ("B", "state", "SENT"), ("B", "state", "DELIVERED"),
                            ("B", "state", "ACCEPTED"), ("B", "state", "EXECUTED")]
            assert [r for r in found if r["command_id"] == "pg1"][0]["payload"]["value"] == 4200
            refused = [r for r in found if r["kind"] == "refused"]
            assert refused[0]["user_id"] == "vic" and "may only view" in refused[0]["detail"]
            await op.close()
            await viewer.close()
            await edge.close()
        run(body, 30)
    # the CLI reads the same log from the config file, no router running
    config = write_toml(tmp_path / "router.toml", router_table(tmp_path, **common))
    result = audit_cli("--config", str(config), "--edge", "e1", "--user", "olga", "--format", "json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [r["status"] for r in rows] == ["QUEUED", "SENT", "DELIVERED", "ACCEPTED", "EXECUTED"]
    result = audit_cli("--config", str(config), "--status", "REFUSED", "--since", "1h", "--format", "csv")
    assert result.returncode == 0, result.stderr
    table = list(csv.DictReader(io.StringIO(result.stdout)))
    assert len(table) == 1 and table[0]["user_id"] == "vic" and table[0]["command_id"] == "pg2"
    result = audit_cli("--config", str(config), "--command", "pg1")
    assert result.returncode == 0 and "EXECUTED" in result.stdout and "5 row(s)" in result.stdout
