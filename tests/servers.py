"""Real servers for the router's tests: redis-server and PostgreSQL 15 on free loopback ports, and the router
itself (on a thread of the test process, or as a ``coordinator router`` process), with its configuration and
tokens.

The binaries come from apt (``bash tests/setup.sh`` installs them); if one is missing the fixture fails
with that instruction instead of skipping. PostgreSQL refuses to run as root: when the tests run as root,
initdb and pg_ctl run as the ``postgres`` user (``runuser``) in a temp folder that user owns. Every server is
stopped when its fixture ends.
"""

from __future__ import annotations

import os
import pwd
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pytest

from runtime.router.auth import mint, user_claims
from runtime.router.config import parse_router_config
from runtime.router.server import RouterServer

ROOT = Path(__file__).resolve().parents[1]
SECRET = "router-tests-hs256-secret-0123456789abcdef"
AUDIENCE = "qubit-router-tests"
EDGE_SECRETS = {**{f"e{i}": f"edge-secret-of-e{i}-0123456789" for i in range(1, 6)},
                "site1_edge_prod": "edge-secret-of-site1-0123456789"}
PG_BIN = Path("/usr/lib/postgresql/15/bin")
SETUP = "run bash tests/setup.sh"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, timeout: float, what: str, proc: subprocess.Popen[Any] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            pass
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not listen on port {port} within {timeout:g} s")
        time.sleep(0.02)  # polling a port that is not open yet


# ---- redis-server

class RedisServer:
    """redis-server on a free port, no persistence, in its own temp folder."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail(f"redis-server is not installed: {SETUP}")
        self.port = free_port()
        self.workdir = workdir
        self.proc = subprocess.Popen([binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", str(workdir), "--loglevel", "warning"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _wait_port(self.port, 10, "redis-server", self.proc)
        except RuntimeError:
            self.stop()
            raise

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> Any:
        import redis
        return redis.Redis(host="127.0.0.1", port=self.port, decode_responses=True)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


# ---- PostgreSQL

class PostgresServer:
    """A PostgreSQL 15 cluster of its own (trust auth on loopback), as the ``postgres`` user when we are root."""

    def __init__(self) -> None:
        for tool in ("initdb", "pg_ctl", "postgres"):
            if not (PG_BIN / tool).exists():
                pytest.fail(f"PostgreSQL 15 is not installed ({PG_BIN / tool} is missing): {SETUP}")
        self.root_user = os.geteuid() == 0
        if self.root_user and shutil.which("runuser") is None:
            pytest.fail(f"runuser is missing (needed to run PostgreSQL as the postgres user): {SETUP}")
        self.dir = Path(tempfile.mkdtemp(prefix="router-pg-"))
        if self.root_user:
            pw = pwd.getpwnam("postgres")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        self.port = free_port()
        self.data = self.dir / "data"
        self._run([str(PG_BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8",
                   "--no-sync"])
        options = (f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off")
        try:
            self._run([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(self.dir / "log"),
                       "-w", "-t", "30", "start"])
        except RuntimeError:
            log = (self.dir / "log").read_text(errors="replace") if (self.dir / "log").exists() else ""
            shutil.rmtree(self.dir, ignore_errors=True)
            raise RuntimeError(f"PostgreSQL did not start: {log[-2000:]}") from None

    def _run(self, argv: list[str]) -> None:
        if self.root_user:
            argv = ["runuser", "-u", "postgres", "--"] + argv
        result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed: {result.stdout}{result.stderr}")

    def dsn(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def create_database(self) -> str:
        import psycopg
        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.dsn(name)

    def stop(self) -> None:
        try:
            self._run([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "-t", "30", "stop"])
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    server = PostgresServer()
    yield server
    server.stop()


# ---- the router

def token(sub: str = "alice", control: Any = ("e1",), view: Any = (), **kw: Any) -> str:
    """An operator token for the test routers (HS256)."""
    return mint(user_claims(sub, kw.pop("audience", AUDIENCE), control=control if isinstance(control, str)
                            else list(control), view=view if isinstance(view, str) else list(view), **kw), SECRET)


def router_table(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    """A router.toml table for tests (HS256, edges e1..e5, SQLite in ``tmp_path``), updated by ``overrides``
    (a dict value updates that section)."""
    table: dict[str, Any] = {
        "instance_id": "r1", "ack_timeout_s": 10.0,
        "listen": {"host": "127.0.0.1", "port": 0, "ping_interval_s": 5.0, "ping_timeout_s": 5.0},
        "auth": {"audience": AUDIENCE, "hs256_secret": SECRET},
        "edges": dict(EDGE_SECRETS),
        "store": {"sqlite": str(tmp_path / "router.sqlite")},
        "limits": {"user": "1000/second", "edge": "1000/second", "handshake": "1000/second"},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(table.get(key), dict):
            table[key] = {**table[key], **value}
        elif value is None:
            table.pop(key, None)
        else:
            table[key] = value
    return table


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(value)


def write_toml(path: Path, table: dict[str, Any]) -> Path:
    """Write a (flat sections only) TOML table."""
    lines = [f"{k} = {_toml_value(v)}" for k, v in table.items() if not isinstance(v, dict)]
    for section, values in table.items():
        if isinstance(values, dict):
            lines.append(f"\n[{section}]")
            lines += [f'"{k}" = {_toml_value(v)}' for k, v in values.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@contextmanager
def running_router(tmp_path: Path, **overrides: Any) -> Iterator[RouterServer]:
    """A router on a thread of this process, on a free port; stopped (and joined) at the end."""
    config = parse_router_config(router_table(tmp_path, **overrides), str(tmp_path / "router.toml"))
    server = RouterServer(config).start()
    try:
        yield server
    finally:
        server.stop()


class RouterProcess:
    """``coordinator router --config FILE`` as a process of its own (for SIGTERM and kill -9)."""

    def __init__(self, config_path: Path, port: int | None = None, verbose: bool = False) -> None:
        argv = [sys.executable, "-m", "runtime.cli", *(["--verbose"] if verbose else []), "router", "--config",
                str(config_path)]
        if port is not None:
            argv += ["--port", str(port)]
        self.proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        self._reader = threading.Thread(target=self._read, name="router-process-stderr", daemon=True)
        self._reader.start()
        self.url = self._wait_listening(30)

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.output.append(line)
            self.lines.put(line)

    def _wait_listening(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                self.kill()
                raise RuntimeError(f"the router did not start within {timeout:g} s: {''.join(self.output)}")
            if " listening on " in line:
                return line.rsplit(" listening on ", 1)[1].strip()

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://")

    def terminate(self, timeout: float = 20) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self._finish(timeout)

    def kill(self) -> int:
        self.proc.kill()
        return self._finish(20)

    def _finish(self, timeout: float) -> int:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(10)
        self._reader.join(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        return code


def http(method: str, url: str, token_: str | None = None, body: Any = None,
         timeout: float = 10.0) -> tuple[int, dict[str, str], Any]:
    """One HTTP request (urllib): (status, headers with lower-case names, JSON body or text)."""
    import json
    import urllib.error
    import urllib.request
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"} if data is not None else {}
    if token_:
        headers["Authorization"] = f"Bearer {token_}"
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw, hdrs = response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        status, raw, hdrs = exc.code, exc.read(), dict(exc.headers)
    hdrs = {k.lower(): v for k, v in hdrs.items()}
    text = raw.decode()
    try:
        return status, hdrs, json.loads(text)
    except ValueError:
        return status, hdrs, text
