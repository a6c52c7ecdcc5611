"""``coordinator bench --only cloud``: the cloud command router under load, on loopback.

The router runs as ``coordinator router`` in a process of its own (so its CPU is its own; on a 2-core machine
it gets one core, the load the other); this process runs the fake edges and the operator clients
(:mod:`runtime.router.testkit`) on one asyncio loop. A command's latency is from the moment its submit frame
is written to the moment the operator reads its EXECUTED status: operator -> router -> edge -> ack -> router
-> operator, with the SENT row and every audit row committed on the way. The fake edges answer
``executed`` at once.

* :func:`bench_router` one router (SQLite queue and audit), 100 edges connected: commands/s with a window of
  commands in flight (saturation), then p50/p99 latency at a paced 2,000 commands/s; the router's CPU.
* the same through two routers over one redis-server (edges on B, operators on A: every command crosses
  Redis: stream, owner key, a poke, and the statuses back on pub/sub).
* :func:`bench_reconnect` 500 edges that lose the router at once (it restarts) and reconnect at once, each
  with a command queued for it meanwhile: the time until every one is resumed (welcome, and its command
  EXECUTED), how many handshakes were refused with 429, and the most handshakes accepted in any one second
  against the router's handshake limit. The edges back off as the real edge link does: full jitter, capped,
  and never sooner than the Retry-After the router sent.

Figures are printed with :func:`runtime.bench.report.print_figures`; nothing is tuned to pass.
"""

from __future__ import annotations

import asyncio
import os
import queue
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, TextIO

from .report import ms, percentile, print_figures

__all__ = ["bench_router", "bench_reconnect", "run_cloud_bench_part", "TARGETS", "RouterProc", "router_config",
           "free_port", "user_token", "proc_rss_mb", "proc_cpu_s", "SECRET", "AUDIENCE"]

TARGETS = {"commands_per_s": 2000.0, "p99_ms": 50.0, "reconnect_s": 15.0}
ROOT = Path(__file__).resolve().parents[2]
SECRET = "bench-router-hs256-secret-0123456789abcdef"
AUDIENCE = "bench"


def free_port() -> int:
    """A loopback TCP port that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_rss_mb(pid: int | str = "self") -> float:
    """Resident set size of process ``pid`` in MB (Linux /proc); 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _edge_secret(i: int) -> str:
    return f"bench-edge-secret-{i:05d}-0123456789"


def router_config(folder: Path, edges: dict[str, str], *, instance: str, port: int = 0,
                  redis_url: str | None = None, prefix: str = "bench", handshake: str = "100000/second",
                  retention_s: float | None = None, extra: tuple[str, ...] = ()) -> Path:
    """A router.toml in ``folder`` for the benchmarks: loopback, HS256 (:data:`SECRET`, :data:`AUDIENCE`), no
    rate limits to speak of, ``edges`` (id -> secret); ``retention_s``: ``[store] retention_s``; ``extra``: more
    TOML lines (whole tables)."""
    lines = [f'instance_id = "{instance}"', "ack_timeout_s = 10.0",
             "[listen]", 'host = "127.0.0.1"', f"port = {port}",
             "[auth]", f'audience = "{AUDIENCE}"', f'hs256_secret = "{SECRET}"',
             "[store]", f'sqlite = "{folder / (instance + ".sqlite")}"',
             *([f"retention_s = {retention_s}"] if retention_s is not None else []),
             "[limits]", 'user = "1000000/second"', 'edge = "1000000/second"', f'handshake = "{handshake}"']
    if redis_url:
        lines += ["[redis]", f'url = "{redis_url}"', f'prefix = "{prefix}"']
    lines += list(extra)
    lines.append("[edges]")
    lines += [f'{edge} = "{secret}"' for edge, secret in edges.items()]
    path = folder / f"{instance}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _config(folder: Path, n_edges: int, **kw: Any) -> Path:
    return router_config(folder, {f"b{i:05d}": _edge_secret(i) for i in range(n_edges)}, **kw)


class RouterProc:
    """``coordinator router`` in its own process; ``url`` once it listens. :meth:`stop` ends it (SIGTERM, then
    SIGKILL) and releases its pipe and reader thread."""

    def __init__(self, config: Path) -> None:
        self.config = config
        self.proc = subprocess.Popen([sys.executable, "-m", "runtime.cli", "router", "--config", str(config)],
                                     cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        self._lines: queue.Queue[str] = queue.Queue()
        self.tail: list[str] = []
        self._reader = threading.Thread(target=self._read, name="bench-router-stderr", daemon=True)
        self._reader.start()
        deadline = time.monotonic() + 60
        while True:
            try:
                line = self._lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                self.stop()
                raise RuntimeError(f"the router did not start: {''.join(self.tail[-20:])}") from None
            if " listening on " in line:
                self.url = line.rsplit(" listening on ", 1)[1].strip().replace("http://", "ws://")
                return

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.tail = (self.tail + [line])[-50:]
            if self._lines.qsize() < 1000:   # only the start-up wait reads them
                self._lines.put(line)

    def cpu_s(self) -> float:
        return proc_cpu_s(self.proc.pid)

    def rss_mb(self) -> float:
        return proc_rss_mb(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._reader.join(timeout=5)
        if self.proc.stderr is not None and not self._reader.is_alive():
            self.proc.stderr.close()


class RedisProc:
    def __init__(self, folder: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise FileNotFoundError("redis-server is not installed (bash tests/setup.sh installs it)")
        self.port = free_port()
        self.proc = subprocess.Popen([binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", str(folder)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.02)
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def user_token(sub: str) -> str:
    """A user token for the benchmark routers: may control every edge, valid for an hour."""
    from runtime.router.auth import mint, user_claims
    return mint(user_claims(sub, AUDIENCE, control="*", ttl_s=3600), SECRET)


async def _load(edge_url: str, client_url: str, n_edges: int, total: int, window: int, paced_rate: float,
                paced_s: float, n_clients: int, router: RouterProc, extra: RouterProc | None) -> dict[str, Any]:
    """Connect the edges and clients, run the saturation and the paced phase; the figures."""
    from runtime.router.testkit import FakeEdge, Operator, battery_caps, setpoint
    caps = battery_caps("bms_main")
    edges = [FakeEdge(edge_url, f"b{i:05d}", _edge_secret(i), caps=caps, auto=("executed",))
             for i in range(n_edges)]
    for start in range(0, n_edges, 50):
        await asyncio.gather(*(e.connect(timeout=30) for e in edges[start:start + 50]))
    sent_at: dict[str, float] = {}
    latencies: list[float] = []
    done = asyncio.Event()
    state = {"left": 0, "free": asyncio.Semaphore(window)}

    def on_status(status: Any) -> None:
        if status.status == "EXECUTED":
            t0 = sent_at.pop(status.command_id, None)
            if t0 is not None:
                latencies.append(time.perf_counter() - t0)
                state["free"].release()
                state["left"] -= 1
                if state["left"] <= 0:
                    done.set()
    clients = [Operator(client_url, user_token(f"bench{i}"), on_status=on_status) for i in range(n_clients)]
    for c in clients:
        await c.connect(timeout=30)
    counter = iter(range(10 ** 9))

    async def submit_one(client: Operator) -> None:
        n = next(counter)
        cid = f"c{n}"
        edge = edges[n % n_edges]
        command = setpoint(cid, edge.edge_id, float(n % 1000), supersede=False)
        sent_at[cid] = time.perf_counter()
        await client.submit(command)

    async def drain(timeout: float) -> None:
        try:
            await asyncio.wait_for(done.wait(), timeout)
        except TimeoutError:
            pass   # reported: fewer completed than sent

    async def closed_loop(count: int) -> tuple[float, int]:
        """``count`` commands with at most ``window`` in flight: (seconds, how many completed)."""
        latencies.clear()
        done.clear()
        state["left"] = count
        state["free"] = asyncio.Semaphore(window)
        t0 = time.perf_counter()
        for i in range(count):
            try:
                await asyncio.wait_for(state["free"].acquire(), 60)
            except TimeoutError:
                break
            await submit_one(clients[i % n_clients])
        await drain(60)
        return time.perf_counter() - t0, len(latencies)

    async def paced(rate: float, seconds: float, drain_s: float) -> tuple[float, int, int]:
        """``rate`` commands/s offered for ``seconds`` whatever comes back: (seconds until the last
        completed, offered, completed)."""
        latencies.clear()
        done.clear()
        count = max(1, int(rate * seconds))
        state["left"] = count
        state["free"] = asyncio.Semaphore(10 ** 9)
        t0 = time.perf_counter()
        for i in range(count):
            delay = t0 + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)   # pacing the offered load
            await submit_one(clients[i % n_clients])
        await drain(drain_s)
        return time.perf_counter() - t0, count, len(latencies)

    await closed_loop(min(1000, total))   # warm-up
    cpu0 = router.cpu_s() + (extra.cpu_s() if extra else 0.0)
    load0 = time.process_time()
    elapsed, completed = await closed_loop(total)
    cpu1 = router.cpu_s() + (extra.cpu_s() if extra else 0.0)
    load_cpu = time.process_time() - load0
    saturated = sorted(latencies)
    rate = completed / elapsed
    figures: dict[str, Any] = {
        "edges": n_edges, "commands": total, "in_flight": window, "commands_per_s": round(rate),
        "sat_p50_ms": ms(percentile(saturated, 0.5)), "sat_p99_ms": ms(percentile(saturated, 0.99)),
        "router_cpu_ms_per_1k": round((cpu1 - cpu0) / max(1, completed) * 1_000_000, 1),
        "router_cpu_pct": round((cpu1 - cpu0) / elapsed * 100), "load_cpu_pct": round(load_cpu / elapsed * 100)}
    complete = completed == total
    for name, offered in (("at_target", paced_rate), ("at_half", max(10.0, rate / 2))):
        took, count, got = await paced(offered, paced_s, 30 + paced_s * offered / max(rate, 10.0) * 3)
        at = sorted(latencies)
        complete = complete and got == count
        figures.update({f"{name}_offered_per_s": round(offered), f"{name}_per_s": round(got / took),
                        f"{name}_p50_ms": ms(percentile(at, 0.5)), f"{name}_p99_ms": ms(percentile(at, 0.99))})
    figures["router_rss_mb"] = round(router.rss_mb() + (extra.rss_mb() if extra else 0.0), 1)
    figures["executed_once"] = complete and all(n == 1 for e in edges for n in e.received.values())
    for c in clients:
        await c.close()
    for start in range(0, n_edges, 100):
        await asyncio.gather(*(e.close() for e in edges[start:start + 100]))
    return figures


def bench_router(n_edges: int = 100, total: int = 20_000, window: int = 200, paced_rate: float = 2000.0,
                 paced_s: float = 5.0, n_clients: int = 4, fleet: bool = False) -> dict[str, Any]:
    """One router (or, with ``fleet``, two over one Redis: edges on B, clients on A); see the module docstring."""
    folder = Path(tempfile.mkdtemp(prefix="bench-cloud-"))
    procs: list[Any] = []
    try:
        if fleet:
            redis = RedisProc(folder)
            procs.append(redis)
            a = RouterProc(_config(folder, n_edges, instance="A", redis_url=redis.url))
            procs.append(a)
            b = RouterProc(_config(folder, n_edges, instance="B", redis_url=redis.url))
            procs.append(b)
            return asyncio.run(_load(b.url, a.url, n_edges, total, window, paced_rate, paced_s, n_clients, a, b))
        router = RouterProc(_config(folder, n_edges, instance="R"))
        procs.append(router)
        return asyncio.run(_load(router.url, router.url, n_edges, total, window, paced_rate, paced_s, n_clients,
                                 router, None))
    finally:
        for proc in reversed(procs):
            proc.stop()
        shutil.rmtree(folder, ignore_errors=True)


async def _reconnect(config: Path, n_edges: int, limit_per_s: float) -> dict[str, Any]:
    from websockets.exceptions import InvalidStatus, WebSocketException

    from runtime.router.testkit import FakeEdge, Operator, battery_caps, setpoint
    router = RouterProc(config)
    caps = battery_caps("bms_main")
    edges = [FakeEdge(router.url, f"b{i:05d}", _edge_secret(i), caps=caps, auto=("executed",))
             for i in range(n_edges)]
    refused = 0
    welcomes: list[float] = []

    async def connect_with_backoff(edge: Any, t0: float) -> float:
        nonlocal refused
        attempt = 0
        while True:
            try:
                await edge.connect_to(router.url, timeout=30)
                welcomes.append(time.perf_counter())
                return time.perf_counter() - t0
            except InvalidStatus as exc:
                refused += 1
                retry_after = float(exc.response.headers.get("Retry-After", "1"))
                delay = max(retry_after, random.uniform(0, min(10.0, 0.5 * 2 ** attempt)))
            except (OSError, TimeoutError, WebSocketException, PermissionError):
                await edge.close()
                delay = random.uniform(0, min(10.0, 0.5 * 2 ** attempt))
            attempt += 1
            await asyncio.sleep(delay)   # the edge's reconnect backoff

    try:
        t = time.perf_counter()
        await asyncio.gather(*(connect_with_backoff(e, t) for e in edges))
        welcomes.clear()
        refused = 0
        router.stop()                     # every edge loses the router at once
        for e in edges:
            await e.close()
        router = RouterProc(config)       # it comes back (on another port: a fleet's other instance, say)
        op = await Operator(router.url, user_token("bench")).connect(timeout=30)
        for i, e in enumerate(edges):    # one command queued for each edge while it is away
            await op.submit(setpoint(f"r{i}", e.edge_id, 1.0))
        await op.wait(lambda: all(op.statuses.get(f"r{i}") for i in range(n_edges)), 60, "every command queued")
        t0 = time.perf_counter()
        times = await asyncio.gather(*(connect_with_backoff(e, t0) for e in edges))
        await op.wait(lambda: all("EXECUTED" in op.statuses[f"r{i}"] for i in range(n_edges)), 120,
                      "every queued command executed")
        all_done = time.perf_counter() - t0
        # the most edges the router took in any one second, on its own clock (its audit's CONNECTED rows)
        rows = await asyncio.to_thread(_connected_times, router.url.replace("ws://", "http://"), n_edges)
        figures = {"edges": n_edges, "handshake_limit_per_s": limit_per_s, "resumed_s": round(max(times), 2),
                   "all_executed_s": round(all_done, 2), "refused_429": refused,
                   "peak_handshakes_per_s": _peak(rows), "peak_at_edges_per_s": _peak(sorted(welcomes)),
                   "delivered_once": all(e.received == {f"r{i}": 1} for i, e in enumerate(edges))}
        await op.close()
        for e in edges:
            await e.close()
        return figures
    finally:
        router.stop()


def _peak(times: list[float]) -> int:
    """The most of ``times`` (sorted) in any window of one second."""
    peak, j = 0, 0
    for i, t in enumerate(times):
        while times[j] <= t - 1.0:
            j += 1
        peak = max(peak, i - j + 1)
    return peak


def _connected_times(url: str, n: int) -> list[float]:
    import json
    import urllib.request

    from runtime.router.audit import parse_time
    request = urllib.request.Request(f"{url}/api/v1/audit?kind=edge&status=CONNECTED&limit={n}",
                                     headers={"Authorization": f"Bearer {user_token('bench')}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        rows = json.loads(response.read())["rows"]
    return sorted(parse_time(r["at"], 0.0) for r in rows)


def bench_reconnect(n_edges: int = 500, handshake: str = "200/second") -> dict[str, Any]:
    """500 edges reconnecting at once (see the module docstring)."""
    from limits import parse
    item = parse(handshake)
    folder = Path(tempfile.mkdtemp(prefix="bench-cloud-"))
    try:
        config = _config(folder, n_edges, instance="R", handshake=handshake)
        return asyncio.run(_reconnect(config, n_edges, item.amount / item.get_expiry()))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _verdicts(r: dict[str, Any]) -> list[tuple[str, bool]]:
    target = TARGETS["commands_per_s"]
    kept_up = r["at_target_per_s"] >= 0.95 * r["at_target_offered_per_s"]
    return [(f">= {target:g} commands/s", r["commands_per_s"] >= target),
            (f"p99 <= {TARGETS['p99_ms']:g} ms at {target:g} commands/s offered",
             kept_up and (r["at_target_p99_ms"] or 1e9) <= TARGETS["p99_ms"]),
            ("every command executed, once", r["executed_once"])]


def run_cloud_bench_part(out: TextIO, quick: bool = False) -> None:
    """The ``cloud`` part of ``coordinator bench``: print each figure line with its verdicts."""
    total = 4000 if quick else 20_000
    paced_s = 2.0 if quick else 5.0
    r = bench_router(total=total, paced_s=paced_s)
    print_figures(out, "cloud", r, _verdicts(r))
    out.flush()
    try:
        r = bench_router(total=total, paced_s=paced_s, fleet=True)
    except FileNotFoundError as exc:
        print(f"{'cloud fleet':<11} not run: {exc}", file=out)
    else:
        print_figures(out, "cloud fleet", r, _verdicts(r))
    out.flush()
    r = bench_reconnect(n_edges=100 if quick else 500)
    print_figures(out, "cloud storm", r, [
        (f"all resumed <= {TARGETS['reconnect_s']:g} s", r["all_executed_s"] <= TARGETS["reconnect_s"]),
        ("never above the handshake limit", r["peak_handshakes_per_s"] <= r["handshake_limit_per_s"]),
        ("each queued command delivered once", r["delivered_once"])])
