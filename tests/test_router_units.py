"""The router's parts without sockets: the config file, token verification (HS256, RS256, EdDSA, a JWKS URL,
and what is refused), the state rules, the capability check, and the hub's deadlines on a clock the test
moves (expiry, ack timeout, a restart's grace, a TIMED_OUT command leaving the pending list)."""

from __future__ import annotations

import asyncio
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from protocols.edge.wire import EdgeCommand, WireError
from runtime.core.errors import ConfigFileError
from runtime.router.audit import AuditQuery
from runtime.router.audit_sqlite import SqliteAudit
from runtime.router.auth import ALL, Authenticator, AuthError, edge_claims, mint, secret_digest, user_claims
from runtime.router.config import load_router_config, parse_router_config
from runtime.router.fleet import Fleet
from runtime.router.hub import Hub
from runtime.router.ratelimit import RateLimits
from runtime.router.sqlite_db import SqliteDb
from runtime.router.states import next_state
from runtime.router.store_sqlite import SqliteStore
from runtime.router.testkit import battery_caps, setpoint
from runtime.router.validate import check_command

from tests.servers import AUDIENCE, SECRET

BASE = {"auth": {"audience": AUDIENCE, "hs256_secret": SECRET}}


def config(tmp_path: Path, **extra):
    return parse_router_config({**BASE, **extra}, str(tmp_path / "router.toml"))


def pem_public(key) -> str:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo).decode()


# ---- the file

def test_the_config_refuses_unknown_keys_and_reports_every_problem(tmp_path: Path):
    path = tmp_path / "router.toml"
    path.write_text('ack_timeout = 5\n[auth]\naudience = "a"\n[listen]\nport = 70000\n[limits]\nedge = "often"\n')
    with pytest.raises(ConfigFileError) as exc:
        load_router_config(path)
    problems = exc.value.problems
    assert "ack_timeout: unknown key (value 5); did you mean 'ack_timeout_s'?" in problems
    assert any(p.startswith("auth: give at least one of hs256_secret") for p in problems), problems
    assert "listen.port: got 70000, expected a value <= 65535" in problems
    assert any(p.startswith("limits.edge: not a rate limit") for p in problems), problems
    path.write_text('[auth]\naudience = "a"\n[[auth.public_keys]]\nalg = "EdDSA"\npath = "nope.pub"\n')
    with pytest.raises(ConfigFileError, match="auth.public_keys\\[0\\].path: no such file"):
        load_router_config(path)


# ---- tokens

def hs256_with(claims: dict, secret: str) -> str:
    """An HS256 token signed with any bytes (PyJWT itself refuses a PEM key as an HMAC secret)."""
    import base64
    import hashlib
    import hmac

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
    signing = b64(b'{"alg":"HS256","typ":"JWT"}') + "." + b64(json.dumps(claims).encode())
    return signing + "." + b64(hmac.new(secret.encode(), signing.encode(), hashlib.sha256).digest())


def test_hs256_tokens_are_checked_for_signature_expiry_not_before_and_audience(tmp_path: Path):
    auth = Authenticator(config(tmp_path))

    async def check(tok: str) -> str:
        try:
            who = await auth.user(f"Bearer {tok}")
        except AuthError as exc:
            return exc.message
        return f"ok {who.subject} {sorted(who.control) if who.control != ALL else ALL}"

    async def body():
        two = mint(user_claims("ann", AUDIENCE, control=["e1", "e2"]), SECRET)
        assert await check(two) == "ok ann ['e1', 'e2']"
        assert await check(mint(user_claims("ann", AUDIENCE, control="*"), SECRET)) == "ok ann *"
        assert await check(mint(user_claims("ann", AUDIENCE), "x" * 40)) == "bad signature"
        assert await check(mint(user_claims("ann", AUDIENCE, ttl_s=-1), SECRET)) == "token expired"
        assert "nbf" in await check(mint(user_claims("ann", AUDIENCE, not_before_s=300), SECRET))
        assert "wrong audience" in await check(mint(user_claims("ann", "elsewhere"), SECRET))
        assert "lacks the 'exp' claim" in await check(jwt.encode({"sub": "ann", "aud": AUDIENCE}, SECRET))
        assert "'none' is not accepted" in await check(jwt.encode({"sub": "ann"}, None, algorithm="none"))
        assert "malformed token" in await check("not.a.token")
        with pytest.raises(AuthError, match="no token"):
            await auth.user(None)
    asyncio.run(body())


def test_rs256_and_eddsa_tokens_verify_against_configured_public_keys_only_with_their_algorithm(tmp_path: Path):
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ed_key = ed25519.Ed25519PrivateKey.generate()
    (tmp_path / "ed.pub").write_text(pem_public(ed_key))
    auth = Authenticator(config(tmp_path, auth={"audience": AUDIENCE, "public_keys": [
        {"alg": "RS256", "kid": "r1", "pem": pem_public(rsa_key)}, {"alg": "EdDSA", "path": "ed.pub"}]}))

    async def body():
        who = await auth.user("Bearer " + mint(user_claims("svc", AUDIENCE, view="*"), rsa_key, "RS256", "r1"))
        assert who.subject == "svc" and who.views_all and not who.may_control("e1")
        who = await auth.user("Bearer " + mint(user_claims("op", AUDIENCE, control=["e1"]), ed_key, "EdDSA"))
        assert who.may_control("e1") and who.may_view("e1") and not who.may_view("e2")
        with pytest.raises(AuthError, match="no RS256 key configured with kid 'r2'"):
            await auth.user("Bearer " + mint(user_claims("svc", AUDIENCE), rsa_key, "RS256", "r2"))
        with pytest.raises(AuthError, match="HS256 tokens are not accepted"):   # no secret: no HS256 at all,
            await auth.user("Bearer " + hs256_with(user_claims("svc", AUDIENCE), pem_public(rsa_key)))
            # so an RS256 public key is never taken for an HS256 secret (the algorithm confusion attack)
        edge = await auth.edge("Bearer " + mint(edge_claims("e7", AUDIENCE), ed_key, "EdDSA"))
        assert edge.edge_id == "e7" and not edge.may_control("e7")
    asyncio.run(body())


def test_a_jwks_url_provides_the_keys(tmp_path: Path):
    key = ed25519.Ed25519PrivateKey.generate()
    jwk = json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(key.public_key()))
    jwks = json.dumps({"keys": [{**jwk, "kid": "k1", "use": "sig", "alg": "EdDSA"}]}).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(jwks)

        def log_message(self, *args):
            pass
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, name="jwks", daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/jwks.json"
        auth = Authenticator(config(tmp_path, auth={"audience": AUDIENCE, "jwks_url": url}))
        who = asyncio.run(auth.user("Bearer " + mint(user_claims("idp-user", AUDIENCE, control=["e1"]), key,
                                                     "EdDSA", "k1")))
        assert who.subject == "idp-user"
        with pytest.raises(AuthError, match="no JWKS key"):
            asyncio.run(auth.user("Bearer " + mint(user_claims("x", AUDIENCE), key, "EdDSA", "k9")))
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_edge_secrets_in_clear_or_as_digest_name_one_edge(tmp_path: Path):
    edges = {"a": "secret-of-edge-a-123456", "b": secret_digest("secret-b-987654321")}
    auth = Authenticator(config(tmp_path, edges=edges))

    async def body():
        assert (await auth.edge("Bearer secret-of-edge-a-123456")).edge_id == "a"
        assert (await auth.edge("Bearer secret-b-987654321")).edge_id == "b"
        with pytest.raises(AuthError, match="unknown edge credential"):
            await auth.edge("Bearer secret-of-edge-c-000000")
        with pytest.raises(AuthError, match="not an edge credential"):
            await auth.edge("Bearer " + mint(user_claims("ann", AUDIENCE, control="*"), SECRET))
    asyncio.run(body())


# ---- states and checks

def test_acks_move_commands_forward_only_and_late_acks_become_late_states():
    assert next_state("SENT", "delivered") == "DELIVERED"
    assert next_state("SENT", "executed") == "EXECUTED"          # an edge may skip states
    assert next_state("ACCEPTED", "delivered") is None           # never back
    assert next_state("DELIVERED", "rejected") == "REJECTED"
    assert next_state("EXECUTED", "failed") is None              # final stays final
    assert next_state("TIMED_OUT", "executed") == "EXECUTED_LATE"
    assert next_state("TIMED_OUT", "failed") == "FAILED_LATE"
    assert next_state("TIMED_OUT", "rejected") == "REJECTED_LATE"
    assert next_state("TIMED_OUT", "delivered") is None
    assert next_state("EXECUTED_LATE", "executed") is None


def test_the_capability_check_covers_controllers_system_commands_and_units():
    caps = battery_caps("bat")

    def refused(**fields) -> str:
        try:
            check_command(EdgeCommand.model_validate({"command_id": "c", "target": {"edge_id": "e1", **fields.pop(
                "target")}, **fields}), caps)
        except WireError as exc:
            return exc.code
        return "ok"
    assert refused(command_type="scheduler_control", target={"channel": "schedule"}, value=False) == "ok"
    assert refused(command_type="mode_change", target={"device_id": "site", "channel": "grid_limit"},
                   value="on") == "ok"
    assert refused(command_type="mode_change", target={"channel": "peak_shaving"}, value=True) == "unknown_channel"
    assert refused(command_type="mode_change", target={"device_id": "bat", "channel": "schedule"},
                   value=True) == "unknown_device"
    assert refused(command_type="scheduler_control", target={"channel": "schedule"}, value=7) == "invalid_value"
    assert refused(command_type="system", target={"channel": "sync_config"}) == "ok"
    assert refused(command_type="config_override", target={"device_id": "bat", "channel": "MinSoc"}, value=15,
                   unit="%", duration_sec=3600) == "ok"
    assert refused(command_type="setpoint", target={"device_id": "bat", "channel": "MinSoc"}, value=15,
                   unit="%") == "wrong_command_type"
    assert refused(command_type="setpoint", target={"device_id": "bat", "channel": "SetSocTarget"}, value=101,
                   unit="%") == "out_of_range"
    assert refused(command_type="setpoint", target={"device_id": "bat", "channel": "SetSocTarget"}, value=50,
                   unit="W") == "invalid_unit"
    assert refused(command_type="setpoint", target={"device_id": "bat", "channel": "SetActivePower"},
                   value=-100, unit="kW") == "ok"
    check_command(setpoint("x", "e1", 10 ** 9), None)   # nothing published yet: the edge checks alone


# ---- the hub's deadlines, on a clock the test moves

class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_the_store_keeps_only_the_last_closed_commands_in_memory_and_reads_older_ones_from_the_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import runtime.router.store_sqlite as store_sqlite
    monkeypatch.setattr(store_sqlite, "_RECENT", 2)

    async def body():
        db = SqliteDb(tmp_path / "router.sqlite")
        store = SqliteStore(db)
        await store.open()

        async def run_one(cid: str, value: float) -> None:
            await store.put(setpoint(cid, "e1", value, supersede=False), user="ann", origin="r1", now=value,
                            expires_at=value + 60, digest="d")
            await store.transition(cid, "SENT", allowed=frozenset({"QUEUED"}), now=value, deadline=value + 10,
                                   sent=True)
            await store.transition(cid, "EXECUTED", allowed=frozenset({"SENT"}), now=value + 0.5, deadline=None)
        for i in range(5):
            await run_one(f"c{i}", float(i))
        assert list(store._recent) == ["c0", "c1", "c2", "c3", "c4"]   # none written yet: all kept
        await store.flush()
        await store.put(setpoint("c5", "e1", 5.0, supersede=False), user="ann", origin="r1", now=5.0,
                        expires_at=65.0, digest="d")
        (await store.get("c5")).extra["wire"] = {"cached": "frame"}   # as the hub caches a command's frame
        await store.transition("c5", "EXPIRED", allowed=frozenset({"QUEUED"}), now=6.0, deadline=None)
        assert list(store._recent) == ["c4", "c5"]                    # written ones beyond the last 2: forgotten
        assert "wire" not in (await store.get("c5")).extra          # a closed command sends no frame
        old = await store.get("c0")                                   # read back from the file
        assert (old.state, old.seq, old.sends, old.command.value, old.updated_at) == ("EXECUTED", 1, 1, 0.0, 0.5)
        rec, changed = await store.transition("c1", "FAILED", allowed=frozenset({"EXECUTED"}), now=9.0,
                                              deadline=None, error="late")
        assert changed and rec.state == "FAILED"                      # an old one still changes, and is written
        await store.flush()
        await store.close()
        again = SqliteStore(SqliteDb(tmp_path / "router.sqlite"))
        await again.open()
        states = [(await again.get(f"c{i}")).state for i in range(6)]
        assert states == ["EXECUTED", "FAILED", "EXECUTED", "EXECUTED", "EXECUTED", "EXPIRED"]
        await again.close()
    asyncio.run(body())


def test_deadlines_expire_time_out_get_a_restart_grace_and_leave_the_pending_list(tmp_path: Path):
    cfg = config(tmp_path, ack_timeout_s=10, restart_grace_s=30, limits={"user": "1000/second"})
    clock = Clock()

    async def hub_on(db: SqliteDb) -> Hub:
        store, audit = SqliteStore(db), SqliteAudit(db)
        await store.open()
        await audit.open()
        return Hub(cfg, store=store, audit=audit, limits=RateLimits(cfg.limits), fleet=Fleet("r1"), clock=clock)

    async def body():
        from runtime.router.auth import Principal
        db = SqliteDb(tmp_path / "router.sqlite")
        hub = await hub_on(db)
        who = Principal("ann", control=ALL)
        await hub.submit(who, setpoint("q", "e1", 1, expiry_sec=60, supersede=False))
        await hub.submit(who, setpoint("s", "e1", 2, expiry_sec=600, supersede=False))
        await hub.submit(who, setpoint("d", "e1", 3, expiry_sec=100, supersede=False))
        for cid in ("s", "d"):   # as the pump would: sent
            rec = await hub.store.get(cid)
            await hub._move(cid, "SENT", frozenset({"QUEUED"}), rec, sent=True)
        await hub._move("d", "DELIVERED", frozenset({"SENT"}), await hub.store.get("d"))
        clock.now += 11
        assert await hub.sweep() == 1 and (await hub.store.get("s")).state == "TIMED_OUT"
        assert (await hub.store.get("d")).state == "DELIVERED"   # delivered: waits for its result until expiry
        assert (await hub.store.resume("e1", 3))[0] == [2, 3]    # TIMED_OUT stays pending: a late ack may come
        clock.now += 50
        assert await hub.sweep() == 1 and (await hub.store.get("q")).state == "EXPIRED"
        clock.now += 50                                            # past d's expiry + the ack timeout
        assert await hub.sweep() == 1 and (await hub.store.get("d")).state == "TIMED_OUT"
        await hub.submit(who, setpoint("r", "e1", 4, expiry_sec=3600, supersede=False))
        await hub._move("r", "SENT", frozenset({"QUEUED"}), await hub.store.get("r"), sent=True)
        await hub.store.flush()
        db.release()
        db.release()
        clock.now += 500                                           # s expired: off the pending list
        db = SqliteDb(tmp_path / "router.sqlite")                  # a restart, long after r was sent
        hub = await hub_on(db)
        assert await hub.store.extend_in_flight(clock() + 10 + 30) == 1
        assert await hub.sweep() == 0                              # s leaves the pending list, r does not time out
        assert (await hub.store.get("r")).state == "SENT"
        pending, send = await hub.store.resume("e1", 4)
        assert pending == [4] and send == []
        rows = await hub.audit.query(AuditQuery(kind="state"))
        assert [(r.command_id, r.status) for r in rows if r.status in ("TIMED_OUT", "EXPIRED")] == [
            ("s", "TIMED_OUT"), ("q", "EXPIRED"), ("d", "TIMED_OUT")]
        await hub.store.close()
        await hub.audit.close()
    asyncio.run(body())


def test_stopping_tasks_cancels_again_a_task_that_swallowed_the_first_cancellation():
    from runtime.router.tasks import stop_tasks

    rounds = []

    async def stubborn():   # as a library that loses one CancelledError: goes round its loop again
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                rounds.append(len(rounds))
                if len(rounds) == 1:
                    continue
                raise

    async def failing():
        raise ValueError("failed earlier")

    async def main():
        tasks = [asyncio.create_task(stubborn(), name="stubborn"), asyncio.create_task(failing())]
        await asyncio.sleep(0)
        await asyncio.wait_for(stop_tasks(tasks, timeout=5.0, retry_s=0.01), 10)
        return tasks

    tasks = asyncio.run(main())
    assert rounds == [0, 1] and tasks[0].cancelled() and isinstance(tasks[1].exception(), ValueError)


def test_stopping_tasks_gives_up_after_its_timeout_and_names_the_task(caplog):
    from runtime.router.tasks import stop_tasks

    released = []

    async def immortal():   # ignores every cancellation until the test lets it go
        while not released:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                pass

    async def main():
        task = asyncio.create_task(immortal(), name="immortal")
        await asyncio.sleep(0)
        await stop_tasks([task], timeout=0.1, retry_s=0.02)
        alive = not task.done()
        released.append(True)
        task.cancel()
        await asyncio.wait([task], timeout=5)
        return alive and task.done()

    assert asyncio.run(main())
    assert "did not stop within 0.1 s" in caplog.text and "immortal" in caplog.text


def test_purge_forgets_in_memory_what_it_deletes_so_memory_follows_the_retention(tmp_path: Path):
    async def body():
        db = SqliteDb(tmp_path / "router.sqlite")
        store = SqliteStore(db)
        await store.open()
        for k, now in enumerate((100.0, 200.0)):
            cid = f"c{k}"
            await store.put(setpoint(cid, "e1", 1.0 + k, supersede=False), user="ann", origin="r1", now=now,
                            expires_at=now + 60, digest=f"d{k}")
            await store.transition(cid, "EXECUTED", allowed=frozenset({"QUEUED"}), now=now, deadline=None)
        await store.flush()   # written and committed: both may go from memory now
        assert (await store.get("c0")).state == (await store.get("c1")).state == "EXECUTED"
        assert await store.purge(150.0) == 1
        assert await store.get("c0") is None            # deleted in the file, and not kept in memory either
        assert (await store.get("c1")).state == "EXECUTED"
        assert list(store._recent) == ["c1"]
        await store.close()
        db.release()
    asyncio.run(body())


def test_a_command_timed_out_past_its_expiry_lets_go_of_its_submitter_so_a_long_connection_does_not_grow(
        tmp_path: Path):
    """A command DELIVERED or ACCEPTED whose result never comes is TIMED_OUT at expiry + ack_timeout and closed
    at once (its expiry has passed: no sweep comes back for it). Its submitter hears the TIMED_OUT, then the hub
    forgets who submitted it, as when the sweep closes a TIMED_OUT command; before, every such command stayed in
    the client hub for as long as its submitter's connection lasted (a soak's operator: the whole run)."""
    from runtime.router.auth import Principal
    from runtime.router.clients import ClientConn
    cfg = config(tmp_path, ack_timeout_s=10, limits={"user": "1000/second"})
    clock = Clock()

    class Outbox:
        def __init__(self) -> None:
            self.frames: list = []

        def put(self, frame) -> bool:
            self.frames.append(frame)
            return True

    async def body():
        db = SqliteDb(tmp_path / "router.sqlite")
        store, audit = SqliteStore(db), SqliteAudit(db)
        await store.open()
        await audit.open()
        hub = Hub(cfg, store=store, audit=audit, limits=RateLimits(cfg.limits), fleet=Fleet("r1"), clock=clock)
        who = Principal("ann", control=ALL)
        conn = ClientConn(who, None, Outbox(), "test")   # type: ignore[arg-type]
        hub.clients.add(conn)
        for cid in ("d", "s"):
            await hub.submit(who, setpoint(cid, "e1", 1, expiry_sec=60, supersede=False), client=conn)
            await hub._move(cid, "SENT", frozenset({"QUEUED"}), await hub.store.get(cid), sent=True)
        await hub._move("d", "DELIVERED", frozenset({"SENT"}), await hub.store.get("d"))
        clock.now += 11                                   # s: no ack in time; TIMED_OUT, open until its expiry
        assert await hub.sweep() == 1 and set(hub.clients._origin) == {"d", "s"}
        clock.now += 60                                   # past d's expiry + the ack timeout
        assert await hub.sweep() == 1 and (await hub.store.get("d")).state == "TIMED_OUT"
        assert [f.frame["status"] for f in conn.outbox.frames if f.frame["command_id"] == "d"][-1] == "TIMED_OUT"
        assert hub.clients._origin == {}                  # d closed at once, s closed by this sweep: both gone
        await store.close()
        await audit.close()
    asyncio.run(body())
