"""The router on one instance (SQLite queue and audit), under uvicorn on a free port, with fake edges and
operators speaking the wire format over real websockets: online delivery, the offline queue, expiry,
supersession, the ack timeout and late acks, duplicates, resume after a reconnect, capability checks,
refusals (each audited), rate limits, the handshake limit, half-open links, and the REST API."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from protocols.edge.wire import SiteState, Telemetry
from runtime.router.auth import edge_claims, mint, user_claims
from runtime.router.testkit import FakeEdge, Operator, setpoint

from tests.asyncsupport import run
from tests.servers import AUDIENCE, EDGE_SECRETS, SECRET, http, running_router, token

pytestmark = pytest.mark.usefixtures("no_leaks")

SEED = {"command_id": "cmd_12345", "command_type": "setpoint",
        "target": {"edge_id": "site1_edge_prod", "device_id": "bms_main", "channel": "SetActivePower"},
        "value": 50000, "unit": "W", "expiry_sec": 300, "source": "user_456", "timestamp": "2026-02-15T14:30:00Z"}


def edge(server, edge_id: str = "e1", **kw) -> FakeEdge:
    return FakeEdge(server.ws_url, edge_id, EDGE_SECRETS[edge_id], **kw)


async def audit(server, tok: str, **params) -> list[dict]:
    from urllib.parse import urlencode
    query = urlencode([(k, v) for k, vs in params.items() for v in (vs if isinstance(vs, list) else [vs])])
    status, _, body = await asyncio.to_thread(http, "GET", f"{server.url}/api/v1/audit?{query}", tok)
    assert status == 200, body
    return body["rows"]


async def post(server, tok: str, body: dict) -> tuple[int, dict, dict]:
    return await asyncio.to_thread(http, "POST", f"{server.url}/api/v1/commands", tok, body)


ADMIN = token("admin", control="*", view="*")


def test_seed_command_online_is_executed_and_every_transition_audited(tmp_path: Path):
    with running_router(tmp_path) as server:
        async def body():
            e = edge(server, "site1_edge_prod")
            await e.connect()
            op = await Operator(server.ws_url, token("user_456", control=["site1_edge_prod"]), text=True).connect()
            await op.submit(dict(SEED))  # the seed's JSON, verbatim, as a text frame
            done = await op.wait_status("cmd_12345", "EXECUTED")
            assert op.statuses["cmd_12345"] == ["QUEUED", "SENT", "DELIVERED", "ACCEPTED", "EXECUTED"]
            assert done.executed_at and done.source == "user_456"
            assert e.received == {"cmd_12345": 1}
            sent = e.journal[1]
            assert sent.value == 50000 and 0 < sent.expiry_sec <= 300   # the time left, not the original
            rows = await audit(server, ADMIN, command_id="cmd_12345")
            assert [(r["kind"], r["status"]) for r in rows] == [
                ("submit", "QUEUED"), ("state", "SENT"), ("state", "DELIVERED"), ("state", "ACCEPTED"),
                ("state", "EXECUTED")]
            assert rows[0]["user_id"] == "user_456" and rows[0]["payload"]["value"] == 50000
            # the final ack is stored: the edge may let the command go without waiting for a reconnect
            await e.wait(lambda: e.confirmed == ["cmd_12345"], what="the final ack confirmed to the edge")
            await op.close()
            await e.close()
        run(body, 20)


def test_offline_commands_are_queued_and_delivered_in_order_on_reconnect(tmp_path: Path):
    with running_router(tmp_path) as server:
        async def body():
            e = edge(server)
            await e.connect()   # publishes its capabilities once
            await e.close()
            op = await Operator(server.ws_url, token()).connect()
            ids = [f"q{i}" for i in range(5)]
            for i, cid in enumerate(ids):
                await op.submit(setpoint(cid, "e1", 1000.0 * i, supersede=False))
            await op.wait(lambda: all(op.statuses[c] == ["QUEUED"] for c in ids), what="all QUEUED")
            await e.connect()
            await op.wait(lambda: all("EXECUTED" in op.statuses[c] for c in ids), what="all EXECUTED")
            assert [e.journal[s].command_id for s in sorted(e.journal)] == ids   # seq order = submit order
            assert all(n == 1 for n in e.received.values())
            await op.close()
            await e.close()
        run(body, 20)


def test_a_command_that_expires_in_the_queue_is_reported_expired_and_never_sent(tmp_path: Path):
    with running_router(tmp_path) as server:
        async def body():
            op = await Operator(server.ws_url, token()).connect()
            await op.submit(setpoint("soon", "e1", 500, expiry_sec=0.2))
            expired = await op.wait_status("soon", "EXPIRED")
            assert "expired in the queue" in expired.error
            e = edge(server)
            welcome = await e.connect()
            await op.submit(setpoint("later", "e1", 600))
            await op.wait_status("later", "EXECUTED")
            assert "soon" not in e.received and welcome.pending == []
            await op.close()
            await e.close()
        run(body, 20)


def test_a_newer_setpoint_supersedes_the_queued_one_unless_it_opts_out(tmp_path: Path):
    with running_router(tmp_path) as server:
        async def body():
            op = await Operator(server.ws_url, token()).connect()
            await op.submit(setpoint("old", "e1", 1000))
            await op.submit(setpoint("new", "e1", 2000))
            superseded = await op.wait_status("old", "SUPERSEDED")
            assert "superseded by new" in superseded.error
            await op.submit(setpoint("extra", "e1", 3000, supersede=False))   # keeps "new" queued
            await op.submit(setpoint("soc", "e1", 80, channel="SetSocTarget", unit="%"))  # another channel
            e = edge(server)
            await e.connect()
            await op.wait(lambda: all("EXECUTED" in op.statuses[c] for c in ("new", "extra", "soc")))
            assert [e.journal[s].command_id for s in sorted(e.journal)] == ["new", "extra", "soc"]
            assert "old" not in e.received
            await op.close()
            await e.close()
        run(body, 20)


def test_no_ack_times_out_and_a_late_ack_is_recorded_never_reexecuted(tmp_path: Path):
    with running_router(tmp_path, ack_timeout_s=0.4) as server:
        async def body():
            e = edge(server, auto=())    # acks by hand
            await e.connect()
            op = await Operator(server.ws_url, token()).connect()
            await op.submit(setpoint("slow", "e1", 1000))
            timed_out = await op.wait_status("slow", "TIMED_OUT")
            assert "no ack within 0.4 s" in timed_out.error
            await e.ack("slow", "delivered")   # late, and not final: recorded, state unchanged
            await op.wait(lambda: op.statuses["slow"].count("TIMED_OUT") == 2, what="the late delivered reported")
            assert "late ack 'delivered'" in op.last["slow"].error
            await e.ack("slow", "executed")
            await op.wait_status("slow", "EXECUTED_LATE")
            await e.ack("slow", "executed")    # again: nothing changes, still recorded
            rows = await audit(server, ADMIN, command_id="slow")
            await op.wait(lambda: True)
            assert [r["status"] for r in rows if r["kind"] == "state"] == ["SENT", "TIMED_OUT", "EXECUTED_LATE"]
            acks = [r["detail"] for r in rows if r["kind"] == "ack"]
            assert any("late ack 'delivered'" in a for a in acks)
            assert e.received == {"slow": 1}   # never sent again
            await op.close()
            await e.close()
        run(body, 20)


def test_refusals_say_why_and_are_audited(tmp_path: Path):
    with running_router(tmp_path) as server:
        async def refused_client(tok: str) -> str:
            op = Operator(server.ws_url, tok)
            await op.connect()
            err = await op.wait_error("unauthorized")
            await op.wait(lambda: op.closed_code is not None, what="the close")
            assert op.closed_code == 1008
            await op.close()
            return err.message

        async def body():
            other = mint(user_claims("mallory", AUDIENCE, control="*"), "another-secret-of-32-bytes-or-more!!")
            assert await refused_client(other) == "bad signature"
            expired = mint(user_claims("alice", AUDIENCE, control=["e1"], ttl_s=-60), SECRET)
            assert await refused_client(expired) == "token expired"
            wrong_aud = mint(user_claims("alice", "some-other-service", control=["e1"]), SECRET)
            assert "wrong audience" in await refused_client(wrong_aud)
            early = mint(user_claims("alice", AUDIENCE, control=["e1"], not_before_s=600), SECRET)
            assert "nbf" in await refused_client(early)
            # an edge credential for e1 cannot be e2: not in hello, not in the path
            with pytest.raises(PermissionError, match="wrong_edge"):
                await FakeEdge(server.ws_url, "e2", EDGE_SECRETS["e1"]).connect()
            with pytest.raises(PermissionError, match="wrong_edge"):
                await FakeEdge(server.ws_url, "e1", EDGE_SECRETS["e1"]).connect(path_edge="e2")
            with pytest.raises(PermissionError, match="unknown edge credential"):
                await FakeEdge(server.ws_url, "e1", "not-a-secret-anyone-has").connect()
            with pytest.raises(PermissionError, match="not an edge credential"):
                await FakeEdge(server.ws_url, "e1", token("alice")).connect()   # a user token is not one
            as_user = await Operator(server.ws_url, mint(edge_claims("e1", AUDIENCE), SECRET)).connect()
            assert "an edge credential cannot act as a user" in (await as_user.wait_error("forbidden")).message
            await as_user.close()
            # a view-only user, and a user without the edge
            viewer = await Operator(server.ws_url, token("vera", control=[], view=["e1"])).connect()
            await viewer.submit(setpoint("v1", "e1", 100))
            assert "vera may only view edge 'e1'" in (await viewer.wait_error("forbidden")).message
            await viewer.subscribe("e2")
            await viewer.wait(lambda: len(viewer.errors) == 2, what="the refused subscribe")
            await viewer.close()
            status, headers, answer = await post(server, expired, setpoint("v2", "e1", 1).model_dump(mode="json"))
            assert status == 401 and answer["message"] == "token expired"
            assert headers["www-authenticate"] == "Bearer"
            rows = await audit(server, ADMIN, kind="refused")
            details = [r["detail"] for r in rows]
            for expected in ("bad signature", "token expired", "wrong audience", "nbf",
                             "wrong_edge: the credential is for edge 'e1'; hello says 'e2'",
                             "wrong_edge: the credential is for edge 'e1', not 'e2'", "unknown edge credential",
                             "not an edge credential", "cannot act as a user", "may only view edge 'e1'",
                             "may not view edge 'e2'"):
                assert any(expected in d for d in details), (expected, details)
            assert all(r["status"] == "REFUSED" for r in rows)
            assert "v1" not in [r["command_id"] for r in await audit(server, ADMIN, kind="submit")]
        run(body, 30)


def test_rate_limits_answer_retry_after_on_the_socket_and_429_on_rest(tmp_path: Path):
    with running_router(tmp_path, limits={"user": "3/minute", "edge": "100/minute"}) as server:
        async def body():
            op = await Operator(server.ws_url, token()).connect()
            for i in range(3):
                await op.submit(setpoint(f"r{i}", "e1", i, supersede=False))
            await op.submit(setpoint("r3", "e1", 3, supersede=False))
            err = await op.wait_error("rate_limited")
            assert err.command_id == "r3" and 0 < err.retry_after <= 60 and "user alice" in err.message
            status, headers, answer = await post(server, token(), setpoint("r4", "e1", 4).model_dump(mode="json"))
            assert status == 429 and int(headers["retry-after"]) >= 1 and answer["code"] == "rate_limited"
            bob = await Operator(server.ws_url, token("bob")).connect()   # another user has his own window
            await bob.submit(setpoint("b1", "e1", 1, supersede=False))
            await bob.wait_status("b1", "QUEUED")
            rows = await audit(server, ADMIN, kind="refused")
            assert [r["command_id"] for r in rows] == ["r3", "r4"]
            await op.close()
            await bob.close()
        run(body, 20)


def test_the_same_command_id_is_executed_once_and_a_different_payload_is_refused(tmp_path: Path):
    with running_router(tmp_path) as server:
        async def body():
            e = edge(server)
            await e.connect()
            op = await Operator(server.ws_url, token()).connect()
            await op.submit(setpoint("dup", "e1", 1000))
            await op.wait_status("dup", "EXECUTED")
            await op.submit(setpoint("dup", "e1", 1000, expiry_sec=99))   # same payload (send-time fields aside)
            await op.wait(lambda: op.statuses["dup"].count("EXECUTED") == 2, what="the duplicate answered")
            await op.submit(setpoint("dup", "e1", 2000))
            err = await op.wait_error("duplicate_id")
            assert "already used for a different command" in err.message
            assert e.received == {"dup": 1}
            status, _, answer = await post(server, token(), setpoint("dup", "e1", 1000).model_dump(mode="json"))
            assert status == 200 and answer["duplicate"] is True and answer["state"] == "EXECUTED"
            kinds = [r["kind"] for r in await audit(server, ADMIN, command_id="dup")]
            assert kinds.count("submit") == 1 and kinds.count("duplicate") == 2
            await op.close()
            await e.close()
        run(body, 20)


def test_a_reconnecting_edge_resumes_after_its_last_seq_and_resends_its_pending_acks(tmp_path: Path):
    with running_router(tmp_path) as server:
        async def body():
            e = edge(server, auto=("delivered",))
            await e.connect()
            op = await Operator(server.ws_url, token()).connect()
            await op.submit(setpoint("a", "e1", 1, supersede=False))
            await op.submit(setpoint("b", "e1", 2, supersede=False))
            await op.wait(lambda: "DELIVERED" in op.statuses["b"] and "DELIVERED" in op.statuses["a"])
            await e.close()
            await e.ack("a", "executed")   # executed while the link was down: kept, sent on the welcome
            await op.submit(setpoint("c", "e1", 3, supersede=False))
            await op.wait_status("c", "QUEUED")
            e.auto = ("delivered", "accepted", "executed")
            welcome = await e.connect()
            assert welcome.resume_after == 2 and welcome.pending == [1, 2]
            await op.wait_status("a", "EXECUTED")
            await op.wait_status("c", "EXECUTED")
            assert op.statuses["b"][-1] == "DELIVERED"   # its latest ack, re-sent, changes nothing
            assert e.received == {"a": 1, "b": 1, "c": 1}   # nothing the edge journaled came again
            await e.ack("b", "executed")
            await op.wait_status("b", "EXECUTED")
            await op.close()
            await e.close()
        run(body, 20)


def test_a_new_connection_of_an_edge_replaces_the_old_one(tmp_path: Path):
    with running_router(tmp_path) as server:
        async def body():
            first = edge(server)
            await first.connect()
            second = edge(server)
            await second.connect()
            await first.wait(lambda: first.closed_code is not None, what="the old connection closed")
            assert first.closed_code == 4000
            op = await Operator(server.ws_url, token()).connect()
            await op.submit(setpoint("x", "e1", 1))
            await op.wait_status("x", "EXECUTED")
            assert "x" in second.received and "x" not in first.received
            await op.close()
            await first.close()
            await second.close()
        run(body, 20)


def test_commands_that_do_not_fit_the_published_capabilities_are_refused_with_the_reason(tmp_path: Path):
    with running_router(tmp_path) as server:
        async def body():
            e = edge(server)
            await e.connect()
            op = await Operator(server.ws_url, token()).connect()
            cases = {
                "range": (setpoint("range", "e1", 150_000), "out_of_range",
                          "150000 W is outside -100000..100000 W"),
                "kw": (setpoint("kw", "e1", 150, unit="kW"), "out_of_range", "150 kW is outside"),
                "device": (setpoint("device", "e1", 1, device_id="nope"), "unknown_device", "'nope' is not on"),
                "ro": (setpoint("ro", "e1", 1, channel="Soc"), "not_writable", "read only"),
                "unit": (setpoint("unit", "e1", 1, unit="A"), "invalid_unit", "cannot be converted to kW"),
                "chan": (setpoint("chan", "e1", 1, channel="Flux"), "unknown_channel", "no channel 'Flux'"),
            }
            for command, _, _ in cases.values():
                await op.submit(command)
            await op.wait(lambda: len(op.errors) == len(cases), what="every refusal")
            for err in op.errors:
                _, code, text = cases[err.command_id]
                assert err.code == code and text in err.message, err
            await op.submit(setpoint("fits", "e1", 50, unit="kW"))
            await op.wait_status("fits", "EXECUTED")
            assert list(e.received) == ["fits"]
            await op.close()
            await e.close()
        run(body, 20)


def test_rest_commands_edges_audit_and_openapi(tmp_path: Path):
    with running_router(tmp_path) as server:
        async def body():
            e = edge(server)
            await e.connect()
            await e.send(Telemetry(device_id="bms_main", values={"Soc": 55.0, "ActivePower": 1200.0}))
            await e.send(SiteState(controllers={"schedule": True}))
            tok = token("svc", control=["e1"])
            status, _, answer = await post(server, tok, {**SEED, "command_id": "rest1",
                                                         "target": {**SEED["target"], "edge_id": "e1"}})
            assert status == 202 and answer["command_id"] == "rest1" and answer["seq"] == 1
            assert answer["state"] in ("QUEUED", "SENT")

            def executed():
                got = http("GET", f"{server.url}/api/v1/commands/rest1", tok)[2]
                return got if got["state"] == "EXECUTED" else None
            got = await e.wait(lambda: executed(), what="rest1 EXECUTED")
            assert [h["status"] for h in got["history"]] == ["QUEUED", "SENT", "DELIVERED", "ACCEPTED", "EXECUTED"]

            def with_telemetry():
                edges = http("GET", f"{server.url}/api/v1/edges", tok)[2]["edges"]
                return edges if edges and edges[0].get("site_state") and edges[0].get("telemetry") else None
            edges = await e.wait(with_telemetry, what="telemetry and site state on /api/v1/edges")
            assert edges[0]["edge_id"] == "e1" and edges[0]["online"] is True and edges[0]["instance"] == "r1"
            assert edges[0]["telemetry"]["bms_main"]["values"]["Soc"] == 55.0
            assert edges[0]["site_state"]["controllers"] == {"schedule": True}
            assert {d["device_id"] for d in edges[0]["capabilities"]["devices"]} == {"bms_main", "site"}
            status, _, nobody = await asyncio.to_thread(http, "GET", f"{server.url}/api/v1/commands/rest1",
                                                        token("eve", control=["e9"]))
            assert status == 403
            status, headers, csv_text = await asyncio.to_thread(
                http, "GET", f"{server.url}/api/v1/audit?command_id=rest1&format=csv", tok)
            assert status == 200 and csv_text.splitlines()[0].startswith("at,kind,command_id")
            lines = csv_text.splitlines()
            assert len(lines) == 7 and ",refused,rest1,e1,eve,REFUSED,forbidden: eve may not view" in lines[-1]
            status, _, spec = await asyncio.to_thread(http, "GET", f"{server.url}/openapi.json")
            assert {"/api/v1/commands", "/api/v1/commands/{command_id}", "/api/v1/edges", "/api/v1/audit"} \
                <= set(spec["paths"])
            await e.close()
        run(body, 20)


def test_handshakes_beyond_the_limit_get_429_with_retry_after(tmp_path: Path):
    with running_router(tmp_path, limits={"handshake": "2/minute"}) as server:
        async def body():
            a, b = edge(server, "e1"), edge(server, "e2")
            await a.connect()
            await b.connect()
            with pytest.raises(InvalidStatus) as refused:
                async with connect(server.ws_url + "/ws/edge", additional_headers={
                        "Authorization": f"Bearer {EDGE_SECRETS['e3']}"}):
                    pass
            assert refused.value.response.status_code == 429
            assert int(refused.value.response.headers["Retry-After"]) >= 1
            await a.close()
            await b.close()
        run(body, 20)


def test_a_half_open_edge_is_noticed_by_the_ping_and_its_commands_wait_in_the_queue(tmp_path: Path):
    with running_router(tmp_path, listen={"ping_interval_s": 0.2, "ping_timeout_s": 0.3}) as server:
        async def body():
            e = edge(server)
            await e.connect()
            e.ws.transport.pause_reading()   # the link looks alive to the OS but nothing answers the pings
            tok = token()

            def offline():
                edges = http("GET", f"{server.url}/api/v1/edges", tok)[2]["edges"]
                return edges and edges[0]["online"] is False
            await e.wait(offline, what="the router to drop the silent edge")
            op = await Operator(server.ws_url, tok).connect()
            await op.submit(setpoint("held", "e1", 1))
            await op.wait_status("held", "QUEUED")
            await e.drop()
            await e.connect()
            await op.wait_status("held", "EXECUTED")
            await op.close()
            await e.close()
        run(body, 20)


def test_cancel_before_sending_is_final_and_after_sending_is_the_edges_call(tmp_path: Path):
    with running_router(tmp_path) as server:
        async def body():
            op = await Operator(server.ws_url, token()).connect()
            await op.submit(setpoint("later", "e1", 1, supersede=False))
            await op.wait_status("later", "QUEUED")
            status, _, answer = await asyncio.to_thread(http, "DELETE", f"{server.url}/api/v1/commands/later",
                                                        token())
            assert status == 200 and answer["state"] == "CANCELLED"
            assert "cancelled by alice before it was sent" in (await op.wait_status("later", "CANCELLED")).error
            e = edge(server, auto=("delivered",))
            await e.connect()
            await op.submit(setpoint("running", "e1", 2, supersede=False))
            await op.wait_status("running", "DELIVERED")
            await op.cancel("running")                       # over the socket this time
            await e.wait(lambda: e.cancels == ["running"], what="the cancel frame at the edge")
            await e.ack("running", "cancelled")
            await op.wait_status("running", "CANCELLED")
            await op.cancel("running")
            assert "already CANCELLED" in (await op.wait_error("already_final")).message
            assert "later" not in e.received
            await op.close()
            await e.close()
        run(body, 20)
