"""Two router instances over one real redis-server: a command sent to instance A reaches the edge connected to
B (and its statuses come back to the operator on A), the Redis queue (order, supersession, expiry, ack timeout
and a late ack), duplicates and rate limits across instances, an edge moving between instances, and an
instance killed with kill -9 whose edge reconnects to the other one and gets everything queued for it."""

from __future__ import annotations

import asyncio
import uuid
from contextlib import ExitStack
from pathlib import Path

import pytest

from runtime.router.testkit import FakeEdge, Operator, setpoint

from tests.asyncsupport import run
from tests.servers import (EDGE_SECRETS, RedisServer, RouterProcess, http, redis_server,  # noqa: F401
                           router_table, running_router, token, write_toml)

pytestmark = pytest.mark.usefixtures("no_leaks")


def fleet(redis: RedisServer, tmp_path: Path, name: str, prefix: str, **overrides):
    return running_router(tmp_path / name, instance_id=name,
                          redis={"url": redis.url, "prefix": prefix, "owner_ttl_s": 3.0, "poll_s": 0.5},
                          store={"sqlite": str(tmp_path / f"{name}-audit.sqlite")}, **overrides)


def prefix() -> str:
    return f"t{uuid.uuid4().hex[:8]}"


def test_a_command_sent_to_one_instance_reaches_the_edge_on_the_other(tmp_path: Path, redis_server: RedisServer):
    p = prefix()
    with ExitStack() as stack:
        a = stack.enter_context(fleet(redis_server, tmp_path, "A", p, limits={"user": "4/minute"}))
        b = stack.enter_context(fleet(redis_server, tmp_path, "B", p, limits={"user": "4/minute"}))

        async def body():
            edge = FakeEdge(b.ws_url, "e1", EDGE_SECRETS["e1"])
            await edge.connect()
            op = await Operator(a.ws_url, token()).connect()
            await op.submit(setpoint("f1", "e1", 1000))
            await op.wait_status("f1", "EXECUTED")
            assert op.statuses["f1"] == ["QUEUED", "SENT", "DELIVERED", "ACCEPTED", "EXECUTED"]
            assert edge.received == {"f1": 1}
            # the same id on the other instance: known there too, not sent again; another payload is refused
            op_b = await Operator(b.ws_url, token()).connect()
            await op_b.submit(setpoint("f1", "e1", 1000))
            await op_b.wait_status("f1", "EXECUTED")
            await op_b.submit(setpoint("f1", "e1", 999))
            await op_b.wait_error("duplicate_id")
            # the user's rate limit is counted across instances (3 used above, 1 left)
            await op.submit(setpoint("f2", "e1", 2000))
            await op.wait_status("f2", "EXECUTED")
            await op_b.submit(setpoint("f3", "e1", 3000))
            assert (await op_b.wait_error("rate_limited")).command_id == "f3"
            assert edge.received == {"f1": 1, "f2": 1}
            status, _, body_ = await asyncio.to_thread(http, "GET", f"{a.url}/api/v1/edges", token())
            assert status == 200 and body_["edges"][0]["online"] and body_["edges"][0]["instance"] == "B"
            # a client on A subscribed to e1 sees the commands another client sends through B
            watcher = await Operator(a.ws_url, token("wendy", control=[], view=["e1"])).connect()
            await watcher.subscribe("e1")
            for i in range(50):   # until B has heard that A has a subscriber (its announcement is on pub/sub)
                # a user per try: each has its own 4/minute, so the tries never make "seen" rate-limited
                op_w = await Operator(b.ws_url, token(f"carl-{i}", control=["e1"])).connect()
                await op_w.submit(setpoint(f"w{i}", "e1", i))
                await op_w.wait_status(f"w{i}", "EXECUTED")
                await op_w.close()
                if "EXECUTED" in watcher.statuses.get(f"w{i}", []):
                    break
            op_c = await Operator(b.ws_url, token("carl", control=["e1"])).connect()
            await op_c.submit(setpoint("seen", "e1", 77))
            await watcher.wait(lambda: "EXECUTED" in watcher.statuses["seen"], what="the subscriber on A")
            assert watcher.statuses["seen"] == ["QUEUED", "SENT", "DELIVERED", "ACCEPTED", "EXECUTED"]
            assert not [s for s in watcher.statuses if s.startswith("f")]   # subscribed after those
            await watcher.close()
            await op_c.close()
            await op.close()
            await op_b.close()
            await edge.close()
        run(body, 30)


def test_the_redis_queue_keeps_order_supersedes_expires_and_times_out(tmp_path: Path, redis_server: RedisServer):
    p = prefix()
    with ExitStack() as stack:
        a = stack.enter_context(fleet(redis_server, tmp_path, "A", p, ack_timeout_s=0.5))
        b = stack.enter_context(fleet(redis_server, tmp_path, "B", p, ack_timeout_s=0.5))

        async def body():
            op = await Operator(a.ws_url, token()).connect()
            await op.submit(setpoint("old", "e1", 100))
            await op.submit(setpoint("new", "e1", 200))
            await op.submit(setpoint("soc", "e1", 50, channel="SetSocTarget", unit="%"))
            await op.submit(setpoint("brief", "e1", 10, channel="MinSoc", unit="%", expiry_sec=0.2))
            await op.wait_status("old", "SUPERSEDED")
            expired = await op.wait_status("brief", "EXPIRED")
            assert "expired in the queue" in expired.error
            edge = FakeEdge(b.ws_url, "e1", EDGE_SECRETS["e1"], auto=("delivered", "accepted", "executed"))
            await edge.connect()
            await op.wait(lambda: "EXECUTED" in op.statuses["new"] and "EXECUTED" in op.statuses["soc"])
            assert [edge.journal[s].command_id for s in sorted(edge.journal)] == ["new", "soc"]
            edge.auto = ()
            await op.submit(setpoint("silent", "e1", 300))
            timed_out = await op.wait_status("silent", "TIMED_OUT")
            assert "no ack within 0.5 s" in timed_out.error
            await edge.ack("silent", "executed")
            await op.wait_status("silent", "EXECUTED_LATE")
            assert edge.received == {"new": 1, "soc": 1, "silent": 1}
            await op.close()
            await edge.close()
        run(body, 30)


def test_an_edge_moving_to_another_instance_is_dropped_by_the_first(tmp_path: Path, redis_server: RedisServer):
    p = prefix()
    with ExitStack() as stack:
        a = stack.enter_context(fleet(redis_server, tmp_path, "A", p))
        b = stack.enter_context(fleet(redis_server, tmp_path, "B", p))

        async def body():
            first = FakeEdge(a.ws_url, "e1", EDGE_SECRETS["e1"], auto=("delivered",))
            await first.connect()
            op = await Operator(a.ws_url, token()).connect()
            await op.submit(setpoint("m1", "e1", 1))
            await op.wait_status("m1", "DELIVERED")
            second = FakeEdge(b.ws_url, "e1", EDGE_SECRETS["e1"])
            second.journal, second.seq_of, second.acks = first.journal, first.seq_of, first.acks   # the same box
            welcome = await second.connect()
            assert welcome.resume_after == 1 and welcome.pending == [1]
            await first.wait(lambda: first.closed_code is not None, what="A dropping the old connection")
            assert first.closed_code == 4001
            await second.ack("m1", "executed")
            await op.wait_status("m1", "EXECUTED")
            await op.submit(setpoint("m2", "e1", 2))
            await op.wait_status("m2", "EXECUTED")
            assert "m2" in second.received and "m2" not in first.received
            await op.close()
            await first.close()
            await second.close()
        run(body, 30)


def test_when_an_instance_dies_its_edge_gets_everything_queued_from_another(tmp_path: Path,
                                                                           redis_server: RedisServer):
    p = prefix()
    procs = []
    try:
        for name in ("A", "B"):
            table = router_table(tmp_path / name, instance_id=name,
                                 redis={"url": redis_server.url, "prefix": p, "owner_ttl_s": 2.0, "poll_s": 0.5},
                                 store={"sqlite": str(tmp_path / f"{name}-audit.sqlite")})
            (tmp_path / name).mkdir()
            procs.append(RouterProcess(write_toml(tmp_path / name / "router.toml", table), port=0))
        a, b = procs

        async def body():
            edge = FakeEdge(b.ws_url, "e1", EDGE_SECRETS["e1"])
            await edge.connect()
            op_b = await Operator(b.ws_url, token()).connect()
            await op_b.submit(setpoint("d1", "e1", 1, supersede=False))
            await op_b.wait_status("d1", "EXECUTED")
            await edge.close()
            await op_b.submit(setpoint("d2", "e1", 2, supersede=False))   # queued on B's watch
            await op_b.wait_status("d2", "QUEUED")
            await op_b.close()
            assert b.kill() == -9
            op_a = await Operator(a.ws_url, token()).connect()
            await op_a.submit(setpoint("d3", "e1", 3, supersede=False))
            await op_a.wait_status("d3", "QUEUED")
            await edge.connect_to(a.ws_url)
            await op_a.wait(lambda: "EXECUTED" in op_a.statuses["d3"], what="d3 executed through A")
            assert [edge.journal[s].command_id for s in sorted(edge.journal)] == ["d1", "d2", "d3"]
            assert edge.received == {"d1": 1, "d2": 1, "d3": 1}
            status, _, got = await asyncio.to_thread(http, "GET", f"{a.url}/api/v1/commands/d2", token())
            assert got["state"] == "EXECUTED"
            await op_a.close()
            await edge.close()
        run(body, 60)
    finally:
        for proc in procs:
            if proc.proc.poll() is None:
                proc.terminate()
