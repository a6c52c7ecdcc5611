"""``coordinator bench soak --minutes N``: the whole system for a long time, with faults; is it flat?

What runs, every part talking its real protocol over loopback:

* device simulators in processes of their own, taking fault-injection lines on stdin
  (:mod:`protocols.sim.control`): ``coordinator sim ocpp --count N --control`` (OCPP 1.6 chargers) and
  ``coordinator sim battery --count M --control`` (Modbus TCP batteries), as in the fleet benchmark
  (:mod:`.fleet_sims`, :func:`.fleet.connect_fleet`);
* a :class:`~runtime.site.Site` in this process: N OCPP chargers, M Modbus batteries, the journal on
  (fsync "batch"), and its edge link (:mod:`actors.edge_link`) connected to
* the cloud command router, ``coordinator router`` in a process of its own (:class:`.cloud.RouterProc`, SQLite
  store) on a free loopback port that it keeps across its restarts;
* a cloud client in this process, on an I/O thread of its own: an operator on the router's ``/ws/client``
  (:class:`runtime.router.testkit.Operator`) sending setpoints at a steady rate (``cloud_rate``, 10/s), half
  to batteries (``SetActivePower``), half to chargers (``SetChargePowerLimit``).

**Time.** The site runs on the real clock: its devices are real sockets, and their timeouts are real
time. Virtual time is the schedule's: it runs :data:`SPEEDUP` (30) times faster than the wall clock, so a
schedule interval of 5 virtual minutes comes every 10 s. At each, the site gets one setpoint per asset
(``submit_many``, due now, expiring when the next interval starts), as a day-ahead schedule's rows fall
due: 30 minutes of wall time are 15 virtual hours, 180 intervals. The windows that bound memory by design
are scaled the same way, so that they fill within the warm-up and what grows after it is what is not bounded:
the site keeps final commands :data:`WINDOWS_S` ``["retention_s"]`` (60 s) and their ids (dedupe window) 240
s, the edge link its dedupe window 240 s, the router its final commands 240 s and telemetry 60 s (their
defaults: 1 h, 7 days, 24 h, 7 days and 1 h).

**Faults**, one every ``fault_every_s`` (20 s; an eighth of a shorter run), drawn with a seeded RNG (``seed``)
among assets not in a fault already: a charger's network outage of 1-5 s (its connection aborted, then it
reconnects), a charger Faulted for 15-45 s (StatusNotification; its commands are HELD), a charger reboot, a
battery offline for 2-8 s (the server stops listening), a battery silent for 2-6 s (requests unanswered:
timeouts and retries).
And the router is restarted (SIGTERM, then started again on the same port and SQLite file) every
``router_restart_s`` (10 min; never in a run shorter than 3 of them, nor with None): the edge link and the client
reconnect.

**Figures**, a progress line per ``report_every_s`` (60 s; a quarter of a run shorter than 4 min) with that
interval's, and at the end the whole run's with their verdicts:

* commands/s: site commands COMPLETED per second, cloud commands EXECUTED per second (whole run, wall time);
* p50/p99 latency: site, from the ``submit_many`` call to the command's COMMAND_COMPLETED event; cloud, from
  the submit frame written to its EXECUTED status frame read (operator -> router -> edge link -> site ->
  device -> acks back). Percentiles from a :class:`~runtime.bench.report.LogHistogram` (within 2 %), so a
  long run keeps no list of samples; the other final states are counted (``*_statuses``);
* RSS growth per hour after the warm-up (:func:`warmup_s`: 5 min, a third of a shorter run): the
  least-squares slope of this process's RSS (sampled every ``sample_s``), as % of its RSS at the end of the
  warm-up per hour (target: under 5 %/h); the router's likewise (since its last restart); and, to tell a
  growing Python heap from a growing C allocator, the same slope of the memory blocks the interpreter has
  allocated (``sys.getallocatedblocks()``: every object and buffer it holds, whatever its size;
  ``py_blocks_*``). RSS can grow while that count is flat: the C allocator's heap grows in steps as freed
  buffers of many sizes leave gaps that a larger request does not fit (fragmentation). The soak fixes glibc's
  mmap threshold before the site starts, as ``coordinator run`` does (``mmap_threshold_fixed``; see
  :mod:`runtime.service.allocator`); ``fix_allocator=False`` (``--embedded-allocator``) leaves it as an
  embedded Site finds it;
* leaks: threads, asyncio tasks not done, file descriptors, sockets and child processes left after
  everything stopped, against the same counted before anything started (target 0; 5 s grace for threads
  that are exiting).

Everything started is stopped before :func:`run_soak` returns, also on errors and on Ctrl-C
(KeyboardInterrupt: the run ends early, reported as ``interrupted``).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
import tracemalloc
import urllib.request
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, TextIO

from actors.edge_link import EdgeLinkOptions
from runtime.core.commands import Command, CommandType
from runtime.core.events import EventType
from runtime.core.iothread import IOThread
from runtime.service.allocator import fix_mmap_threshold
from runtime.site import Site

from .cloud import RouterProc, free_port, proc_rss_mb, router_config, user_token
from .fleet import connect_fleet, fleet_specs
from .fleet_sims import SimProcess, start_batteries
from .fleet_step import step_values
from .report import LogHistogram, ms, print_figures, print_line

__all__ = ["SoakOptions", "run_soak", "print_soak", "warmup_s", "leak_snapshot", "TARGETS", "SPEEDUP"]

TARGETS = {"rss_pct_per_h": 5.0}
#: Virtual seconds per wall second: the schedule's 5-minute intervals come every 300 / SPEEDUP s.
SPEEDUP = 30.0
STEP_VIRTUAL_S = 300.0
#: Windows that bound memory by design, scaled to the soak's time (seconds, wall time).
WINDOWS_S = {"retention_s": 60.0, "dedupe_window_s": 240.0, "edge_dedupe_s": 240.0, "router_retention_s": 240.0,
             "telemetry_window_s": 60.0}
EDGE_ID = "soak_edge"
EDGE_SECRET = "soak-edge-secret-0123456789abcdef"
_SITE_FINAL = (EventType.COMMAND_COMPLETED, EventType.COMMAND_FAILED, EventType.COMMAND_TIMED_OUT,
               EventType.COMMAND_REJECTED, EventType.COMMAND_EXPIRED, EventType.COMMAND_SUPERSEDED)
_CLOUD_FINAL = frozenset({"EXECUTED", "REJECTED", "FAILED", "EXPIRED", "SUPERSEDED", "CANCELLED", "TIMED_OUT"})
#: A command with no final state this long after it was sent is counted NO_FINAL and forgotten.
_FORGET_S = 120.0


@dataclass
class SoakOptions:
    """What :func:`run_soak` runs (see the module docstring)."""

    minutes: float
    chargers: int = 500
    batteries: int = 50
    cloud_rate: float = 10.0
    fault_every_s: float = 20.0
    router_restart_s: float | None = 600.0   # None: the router runs for the whole soak
    report_every_s: float | None = None
    sample_s: float = 5.0
    seed: int = 1
    concurrency: int = 50
    #: Trace this process's allocations from the end of the warm-up (tracemalloc; it slows the process down)
    #: and print where the memory still held at the end was allocated: what grew, by place.
    trace_memory: bool = False
    #: Fix glibc's mmap threshold before the site starts, as ``coordinator run`` does
    #: (:func:`runtime.service.allocator.fix_mmap_threshold`; process-wide, for good); False: the allocator as an
    #: embedded Site finds it.
    fix_allocator: bool = True

    def check(self) -> None:
        """ValueError naming the option that is out of range."""
        if not self.minutes > 0:
            raise ValueError(f"minutes: must be > 0, got {self.minutes:g}")
        if not 1 <= self.chargers <= 9999:
            raise ValueError(f"chargers: must be in 1..9999, got {self.chargers}")
        if not 1 <= self.batteries <= 500:
            raise ValueError(f"batteries: must be in 1..500, got {self.batteries}")
        for name in ("cloud_rate", "fault_every_s", "router_restart_s", "sample_s"):
            if name == "router_restart_s" and self.router_restart_s is None:
                continue
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}: must be > 0, got {getattr(self, name):g}")


def warmup_s(duration_s: float) -> float:
    """The warm-up excluded from the RSS growth: 5 minutes, or a third of a shorter run."""
    return min(300.0, duration_s / 3.0)


# ---- leaks ---------------------------------------------------------------------------------------------
def leak_snapshot() -> dict[str, Any]:
    """What this process holds: live threads, asyncio tasks not done, open fds (fd -> target) and its child
    processes (Linux /proc)."""
    gc.collect()
    fds: dict[int, str] = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            fds[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue   # the fd listdir itself used, already closed
    tasks = [o for o in gc.get_objects() if isinstance(o, asyncio.Task) and not o.done()]
    return {"threads": {t for t in threading.enumerate() if t.is_alive()}, "tasks": {id(t): t for t in tasks},
            "fds": fds, "children": set(_children())}


def _children() -> Iterator[int]:
    me = os.getpid()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == me:
            yield int(name)


def leaks(before: dict[str, Any], grace_s: float = 5.0) -> dict[str, Any]:
    """What is held now and was not ``before`` (waiting up to ``grace_s`` for it to go): counts, and the
    first few by name."""
    deadline = time.monotonic() + grace_s
    while True:
        now = leak_snapshot()
        threads = sorted(t.name for t in now["threads"] - before["threads"])
        tasks = [t.get_name() for k, t in now["tasks"].items() if k not in before["tasks"]]
        fds = {fd: target for fd, target in now["fds"].items() if before["fds"].get(fd) != target}
        children = sorted(now["children"] - before["children"])
        if not (threads or tasks or fds or children) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    sockets = [t for t in fds.values() if t.startswith("socket:")]
    out: dict[str, Any] = {"leaked_threads": len(threads), "leaked_tasks": len(tasks), "leaked_fds": len(fds),
                           "leaked_sockets": len(sockets), "leaked_children": len(children)}
    if threads:
        out["leaked_thread_names"] = threads[:5]
    if tasks:
        out["leaked_task_names"] = tasks[:5]
    if fds:
        out["leaked_fd_targets"] = sorted(set(fds.values()))[:5]
    return out


# ---- accounting ----------------------------------------------------------------------------------------
class _Path:
    """One command path's accounting (thread-safe): ids in flight with their send time, final states, and
    latency histograms of the successful ones (whole run and current interval)."""

    def __init__(self, ok: str) -> None:
        self.ok = ok
        self._lock = threading.Lock()
        self._sent: dict[str, float] = {}
        self.total, self._window = LogHistogram(), LogHistogram()
        self.statuses: Counter[str] = Counter()
        self.submitted = 0

    def sent(self, ids: list[str], t: float) -> None:
        with self._lock:
            for cid in ids:
                self._sent[cid] = t
            self.submitted += len(ids)

    def final(self, cid: str, status: str, t: float) -> None:
        with self._lock:
            t0 = self._sent.pop(cid, None)
            if t0 is None:
                return
            self.statuses[status] += 1
            if status == self.ok:
                self.total.add(t - t0)
                self._window.add(t - t0)

    def forget(self, older_than: float) -> None:
        """Count what has no final state since before ``older_than`` (perf_counter) as NO_FINAL."""
        with self._lock:
            old = [cid for cid, t in self._sent.items() if t < older_than]
            for cid in old:
                del self._sent[cid]
            if old:
                self.statuses["NO_FINAL"] += len(old)

    def in_flight(self) -> int:
        with self._lock:
            return len(self._sent)

    def interval(self) -> LogHistogram:
        with self._lock:
            window, self._window = self._window, LogHistogram()
        return window

    def figures(self, prefix: str, wall_s: float) -> dict[str, Any]:
        with self._lock:
            other = {k: v for k, v in sorted(self.statuses.items()) if k != self.ok}
            return {f"{prefix}_sent": self.submitted, f"{prefix}_{self.ok.lower()}": self.statuses[self.ok],
                    f"{prefix}_per_s": round(self.statuses[self.ok] / wall_s, 1) if wall_s > 0 else None,
                    f"{prefix}_p50_ms": ms(self.total.percentile(0.5)),
                    f"{prefix}_p99_ms": ms(self.total.percentile(0.99)),
                    f"{prefix}_max_ms": ms(self.total.max if self.total.count else None),
                    f"{prefix}_statuses": other or None, f"{prefix}_unfinished": len(self._sent) or None}


def _growth_pct_per_h(samples: list[tuple[float, float]], since: float) -> float | None:
    """Least-squares slope of (t, value) for t >= since, as % per hour of the first such value."""
    pts = [(t, v) for t, v in samples if t >= since]
    if len(pts) < 3 or pts[-1][0] - pts[0][0] < 1.0:
        return None
    n = len(pts)
    mt = sum(t for t, _ in pts) / n
    mv = sum(v for _, v in pts) / n
    den = sum((t - mt) ** 2 for t, _ in pts)
    slope = sum((t - mt) * (v - mv) for t, v in pts) / den
    return round(slope * 3600.0 / pts[0][1] * 100.0, 2) if pts[0][1] else None


def _first_after(samples: list[tuple[float, float]], since: float) -> int | None:
    """The first sampled value at or after ``since`` (None if none)."""
    return next((int(v) for t, v in samples if t >= since), None)


# ---- the cloud client ----------------------------------------------------------------------------------
class _CloudClient:
    """An operator submitting setpoints at ``rate`` per second through the router's client websocket, on an
    I/O thread of its own; reconnects (and resubscribes to the edge, so statuses of commands sent on an earlier
    connection still arrive) when the router restarts."""

    def __init__(self, url: Callable[[], str], targets: list[tuple[str, str, float, float]], rate: float,
                 path: _Path, seed: int) -> None:
        self.url, self.targets, self.rate, self.path = url, targets, rate, path
        self.rng = random.Random(seed)
        self.io = IOThread("soak-cloud-client")
        self.connects = 0
        self.errors: Counter[str] = Counter()
        self._stop: asyncio.Event | None = None
        self._done: Any = None
        self._prefix = f"soak{os.getpid()}-{int(time.time())}"

    def start(self) -> None:
        self.io.start()

        async def make() -> asyncio.Event:
            return asyncio.Event()
        self._stop = self.io.call(make())
        self._done = self.io.submit(self._run(self._stop))

    def stop(self) -> None:
        if self._stop is not None:
            stop = self._stop
            self.io.loop.call_soon_threadsafe(stop.set)
            with contextlib.suppress(Exception):
                self._done.result(timeout=15)
            self._stop = None
        self.io.stop()

    def _on_status(self, op: Any, frame: Any) -> None:
        op.statuses.pop(frame.command_id, None)   # the operator keeps every status; a soak cannot
        op.last.pop(frame.command_id, None)
        if frame.status in _CLOUD_FINAL:
            self.path.final(frame.command_id, frame.status, time.perf_counter())
        elif frame.status.endswith("_LATE"):
            self.errors["late"] += 1

    async def _run(self, stop: asyncio.Event) -> None:
        from websockets.exceptions import ConnectionClosed, WebSocketException

        from runtime.router.testkit import Operator, setpoint
        n = 0
        delay = 0.2
        while not stop.is_set():
            op = Operator(self.url(), user_token("soak"))
            op.on_status = lambda frame, op=op: self._on_status(op, frame)
            try:
                await op.connect(timeout=10)
                await op.subscribe(EDGE_ID)
            except (OSError, TimeoutError, WebSocketException) as exc:
                self.errors[f"connect: {type(exc).__name__}"] += 1
                await op.close()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                delay = min(5.0, delay * 2)
                continue
            self.connects += 1
            delay = 0.2
            t0, k = time.perf_counter(), 0
            try:
                while not stop.is_set() and op.closed_code is None:
                    k += 1
                    wait = t0 + k / self.rate - time.perf_counter()
                    if wait > 0:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(stop.wait(), wait)   # pacing the offered load
                        if stop.is_set():
                            break
                    n += 1
                    device, channel, lo, hi = self.targets[n % len(self.targets)]
                    cid = f"{self._prefix}-{n}"
                    command = setpoint(cid, EDGE_ID, round(self.rng.uniform(lo, hi)), device_id=device,
                                       channel=channel, expiry_sec=60)
                    self.path.sent([cid], time.perf_counter())
                    await op.submit(command)
            except ConnectionClosed:
                pass   # the router went away: the command may or may not have arrived (NO_FINAL if not)
            finally:
                await op.close()


# ---- the run -------------------------------------------------------------------------------------------
def _get_json(url: str, timeout: float = 5.0) -> Any:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {user_token('soak')}"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def _wait_edge_online(http_url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = "never asked"
    while time.monotonic() < deadline:
        try:
            info = _get_json(f"{http_url}/api/v1/edges/{EDGE_ID}")
            if info.get("online") and info.get("capabilities"):
                return
            last = f"online={info.get('online')}"
        except OSError as exc:   # urllib's HTTPError (404: never connected yet) is an OSError
            last = str(exc)
        time.sleep(0.2)
    raise RuntimeError(f"the site's edge link did not come online at the router within {timeout:g} s ({last})")


def _dir_mb(path: Path, pattern: str = "*") -> float:
    return round(sum(f.stat().st_size for f in path.rglob(pattern) if f.is_file()) / 1e6, 2)


class _Faults:
    """Draws and injects the faults (see the module docstring); counts them by kind."""

    def __init__(self, rng: random.Random, chargers: SimProcess, batteries: SimProcess, cp_ids: list[str],
                 n_batteries: int) -> None:
        self.rng, self.chargers, self.batteries = rng, chargers, batteries
        self.cp_ids, self.n_batteries = cp_ids, n_batteries
        self.busy: dict[str, float] = {}   # target -> until (monotonic)
        self.clears: list[tuple[float, str]] = []
        self.counts: Counter[str] = Counter()

    def _free(self, targets: list[str]) -> str | None:
        now = time.monotonic()
        for _ in range(20):
            t = self.rng.choice(targets)
            if self.busy.get(t, 0.0) <= now:
                return t
        return None

    def inject(self) -> None:
        kind = self.rng.choice(("outage", "fault", "reboot", "offline", "silent"))
        now = time.monotonic()
        if kind in ("outage", "fault", "reboot"):
            cp = self._free(self.cp_ids)
            if cp is None:
                return
            if kind == "outage":
                seconds = round(self.rng.uniform(1, 5), 1)
                ok = self.chargers.send(f"outage {cp} {seconds}")
                self.busy[cp] = now + seconds + 10
            elif kind == "fault":
                seconds = self.rng.uniform(15, 45)
                ok = self.chargers.send(f"fault {cp}")
                self.clears.append((now + seconds, cp))
                self.busy[cp] = now + seconds + 10
            else:
                ok = self.chargers.send(f"reboot {cp}")
                self.busy[cp] = now + 15
        else:
            i = self._free([str(i) for i in range(self.n_batteries)])
            if i is None:
                return
            seconds = round(self.rng.uniform(2, 8) if kind == "offline" else self.rng.uniform(2, 6), 1)
            ok = self.batteries.send(f"{kind} {i} {seconds}")
            self.busy[i] = now + seconds + 15
        self.counts[kind if ok else f"{kind}_not_sent"] += 1

    def due(self) -> None:
        """Clear the charger faults whose time has come."""
        now = time.monotonic()
        for when, cp in [c for c in self.clears if c[0] <= now]:
            self.clears.remove((when, cp))
            self.chargers.send(f"clear {cp}")

    def clear_all(self) -> None:
        for _, cp in self.clears:
            self.chargers.send(f"clear {cp}")
        self.clears.clear()


class _Control:
    """Counts the control answers of a simulator process (its output lines)."""

    def __init__(self) -> None:
        self.ok = self.errors = 0
        self.last_error = ""

    def __call__(self, line: str) -> None:
        if line.startswith("control ok"):
            self.ok += 1
        elif line.startswith("control error"):
            self.errors += 1
            self.last_error = line


def run_soak(opts: SoakOptions, out: TextIO) -> dict[str, Any]:
    """Run the soak (see the module docstring), printing a progress line per report interval; returns the
    whole run's figures (``error`` set when it could not run to the end, ``interrupted`` after Ctrl-C).
    Everything it started is stopped before it returns."""
    opts.check()
    duration = opts.minutes * 60.0
    warmup = warmup_s(duration)
    report_every = opts.report_every_s or (60.0 if duration >= 240 else max(2.0, duration / 4))
    restart_every = opts.router_restart_s
    if restart_every is not None and duration < 3 * restart_every:
        restart_every = None
    fault_every = min(opts.fault_every_s, duration / 8)   # a short run gets its faults too
    step_s = STEP_VIRTUAL_S / SPEEDUP
    fixed = fix_mmap_threshold() if opts.fix_allocator else False
    before = leak_snapshot()
    load0 = os.getloadavg()
    rng = random.Random(opts.seed)
    site_path, cloud_path = _Path("COMPLETED"), _Path("EXECUTED")
    figures: dict[str, Any] = {"chargers": opts.chargers, "batteries": opts.batteries, "minutes": opts.minutes,
                               "speedup": SPEEDUP, "step_s": step_s, "cloud_rate": opts.cloud_rate,
                               "mmap_threshold_fixed": fixed}
    rss: list[tuple[float, float]] = []
    router_rss: list[tuple[float, float]] = []
    blocks: list[tuple[float, float]] = []
    events: Counter[str] = Counter()
    restarts = 0
    steps = 0
    t_start = time.perf_counter()
    cpu0 = time.process_time()
    folder = Path(tempfile.mkdtemp(prefix="bench-soak-"))
    chargers_ctl, batteries_ctl = _Control(), _Control()
    router_holder: list[RouterProc] = []
    interrupted = False
    stop_s: float | None = None
    try:
        with contextlib.ExitStack() as stack:
            battery_sim, ports = start_batteries(opts.batteries, control=True, on_line=batteries_ctl)
            stack.callback(battery_sim.stop)
            port = free_port()
            config = router_config(folder, {EDGE_ID: EDGE_SECRET}, instance="soak", port=port,
                                   retention_s=WINDOWS_S["router_retention_s"],
                                   extra=("[ui]", f"telemetry_window_s = {WINDOWS_S['telemetry_window_s']}",
                                          "telemetry_bucket_s = 5"))
            router_holder.append(RouterProc(config))
            stack.callback(lambda: router_holder[-1].stop())
            http_url = f"http://127.0.0.1:{port}"
            chargers, batteries, specs = fleet_specs(opts.chargers, ports)
            cloud = EdgeLinkOptions(url=f"ws://127.0.0.1:{port}/ws/edge", edge_id=EDGE_ID, credential=EDGE_SECRET,
                                    reconnect_min_s=0.5, reconnect_max_s=5.0,
                                    dedupe_window_s=WINDOWS_S["edge_dedupe_s"])
            site = Site(specs, ocpp={"port": 0}, journal_dir=folder / "journal", fsync="batch", cloud=cloud,
                        retention_s=WINDOWS_S["retention_s"], dedupe_window_s=WINDOWS_S["dedupe_window_s"])
            site_stop: list[float] = []

            def stop_site() -> None:
                t0 = time.perf_counter()
                site.stop()
                site_stop.append(time.perf_counter() - t0)
            site.start()
            stack.callback(stop_site)

            def on_final(event: Any) -> None:
                cid = event.payload.get("command_id", "")
                if cid.startswith("s"):
                    site_path.final(cid, event.payload.get("status", "?"), time.perf_counter())
            for et in _SITE_FINAL:
                site.events.subscribe(et, on_final)
            events_lock = threading.Lock()

            def count(event: Any) -> None:
                with events_lock:
                    events[event.type.value] += 1
            for et in (EventType.ASSET_DISCONNECTED, EventType.ASSET_CONNECTED, EventType.COMMAND_HELD):
                site.events.subscribe(et, count)
            charger_sim, connect_s = connect_fleet(site, chargers, batteries, "1.6", opts.concurrency,
                                                   30.0 + 0.15 * opts.chargers, control=True, on_line=chargers_ctl)
            stack.callback(charger_sim.stop)
            figures["connect_s"] = connect_s
            _wait_edge_online(http_url, 60.0)
            with events_lock:
                events.clear()   # from here on: the faults' doing
            targets = ([(b, "SetActivePower", -40000.0, 40000.0) for b in batteries]
                       + [(c, "SetChargePowerLimit", 0.0, 22000.0) for c in chargers[:len(batteries)]])
            rng.shuffle(targets)
            client = _CloudClient(lambda: router_holder[-1].url, targets, opts.cloud_rate, cloud_path, opts.seed)
            client.start()
            stack.callback(client.stop)
            faults = _Faults(rng, charger_sim, battery_sim, [c[3:] for c in chargers], opts.batteries)
            stack.callback(faults.clear_all)

            t0 = time.perf_counter()
            end = t0 + duration
            next_step = next_sample = t0
            next_fault = t0 + fault_every
            next_report = t0 + report_every + min(step_s / 2, report_every / 4)   # not on a step's instant
            next_restart = t0 + restart_every if restart_every else float("inf")
            last_report = t0
            try:
                while True:
                    now = time.perf_counter()
                    if now >= end:
                        break
                    if now >= next_step:
                        kw_ev, kw_bat = step_values(steps)
                        due = datetime.now(timezone.utc)
                        expires = due + timedelta(seconds=step_s)
                        cmds = ([Command(f"s{steps}-{a}", a, CommandType.SET_CHARGE_RATE, kw_ev, due,
                                         expires_at=expires) for a in chargers]
                                + [Command(f"s{steps}-{a}", a, CommandType.SET_CHARGE_RATE, kw_bat, due,
                                           expires_at=expires) for a in batteries])
                        site_path.sent([c.command_id for c in cmds], time.perf_counter())
                        site.submit_many(cmds)
                        steps += 1
                        next_step += step_s
                    if now >= next_fault:
                        faults.inject()
                        next_fault += fault_every
                    faults.due()
                    if now >= next_sample:
                        rss.append((now - t0, proc_rss_mb()))
                        router_rss.append((now - t0, router_holder[-1].rss_mb()))
                        blocks.append((now - t0, float(sys.getallocatedblocks())))
                        next_sample += opts.sample_s
                    if now >= next_restart:
                        router_holder[-1].stop()
                        router_holder.append(RouterProc(config))   # same port, same SQLite file
                        restarts += 1
                        router_rss.clear()
                        next_restart += restart_every or float("inf")
                    if opts.trace_memory and not tracemalloc.is_tracing() and now - t0 >= warmup:
                        tracemalloc.start(8)
                    if now >= next_report:
                        forget = time.perf_counter() - _FORGET_S
                        site_path.forget(forget)
                        cloud_path.forget(forget)
                        took = now - last_report
                        sh, ch = site_path.interval(), cloud_path.interval()
                        print_line(out, "soak", {
                            "t_min": round((now - t0) / 60.0, 2), "site_per_s": round(sh.count / took, 1),
                            "site_p99_ms": ms(sh.percentile(0.99)), "cloud_per_s": round(ch.count / took, 1),
                            "cloud_p99_ms": ms(ch.percentile(0.99)), "rss_mb": round(proc_rss_mb(), 1),
                            "py_blocks": sys.getallocatedblocks(),
                            "router_rss_mb": round(router_holder[-1].rss_mb(), 1),
                            "in_flight": site_path.in_flight() + cloud_path.in_flight(),
                            "edge_log": (site.cloud_status() or {}).get("log_entries"),
                            "faults": sum(faults.counts.values()), "router_restarts": restarts,
                            "load": round(os.getloadavg()[0], 2)})
                        out.flush()
                        last_report = now
                        next_report += report_every
                        charger_sim.check_alive()
                        battery_sim.check_alive()
                    time.sleep(max(0.0, min(next_step, next_fault, next_sample, next_report, next_restart, end,
                                            now + 0.5) - time.perf_counter()))
            except KeyboardInterrupt:
                interrupted = True
            wall = time.perf_counter() - t0
            cpu = time.process_time() - cpu0
            edge_state = site.cloud_status() or {}
            if tracemalloc.is_tracing():
                _print_growth(out, tracemalloc.take_snapshot())
                tracemalloc.stop()
            with _no_interrupts():
                client.stop()
                settle = time.monotonic() + 5.0   # let what is in flight finish (bounded), then count it
                while site_path.in_flight() + cloud_path.in_flight() and time.monotonic() < settle:
                    time.sleep(0.1)
                figures.update({"wall_s": round(wall, 1), "steps": steps})
                figures.update(site_path.figures("site", wall))
                figures.update(cloud_path.figures("cloud", wall))
                figures.update({"cloud_connects": client.connects, "cloud_errors": dict(client.errors) or None,
                                "router_restarts": restarts, "faults": dict(faults.counts),
                                "control_errors": chargers_ctl.errors + batteries_ctl.errors,
                                "asset_events": dict(sorted(events.items())),
                                "warmup_min": round(warmup / 60.0, 1),
                                "rss_mb_start": round(rss[0][1], 1) if rss else None,
                                "rss_mb_end": round(proc_rss_mb(), 1),
                                "rss_pct_per_h": _growth_pct_per_h(rss, warmup),
                                "py_blocks_warmup": _first_after(blocks, warmup),
                                "py_blocks_end": sys.getallocatedblocks(),
                                "py_blocks_pct_per_h": _growth_pct_per_h(blocks, warmup),
                                "router_rss_mb": round(router_holder[-1].rss_mb(), 1),
                                "router_rss_pct_per_h": _growth_pct_per_h(router_rss, warmup),
                                "journal_mb": _dir_mb(folder / "journal"),
                                "cloud_jnl_mb": _dir_mb(folder / "journal", "cloud.jnl*"),
                                "edge_log_entries": edge_state.get("log_entries"),
                                "edge_sessions": edge_state.get("sessions"),
                                "cpu_pct": round(cpu / max(wall, 1e-9) * 100.0, 1)})
                if chargers_ctl.last_error or batteries_ctl.last_error:
                    figures["control_last_error"] = chargers_ctl.last_error or batteries_ctl.last_error
                stack.close()
            stop_s = site_stop[0] if site_stop else None
    except KeyboardInterrupt:
        interrupted = True
        figures.setdefault("error", "interrupted while starting or stopping")
    except Exception as exc:  # reported as a figure: the bench prints, it does not raise
        figures["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        with _no_interrupts():
            for proc in router_holder:
                proc.stop()
            shutil.rmtree(folder, ignore_errors=True)
            figures["site_stop_s"] = round(stop_s, 2) if stop_s is not None else None
            figures.update(leaks(before))
            figures["load_before"] = " ".join(f"{x:.2f}" for x in load0)
            figures["load_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
            figures["interrupted"] = interrupted
            figures["total_s"] = round(time.perf_counter() - t_start, 1)
    return figures


def _print_growth(out: TextIO, snapshot: Any, top: int = 12) -> None:
    """What is still held of what was allocated since tracing started, by place (the innermost frames of this
    project, else the innermost), largest first."""
    snapshot = snapshot.filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
    here = str(Path(__file__).resolve().parents[2])
    by_place: Counter[str] = Counter()
    blocks: Counter[str] = Counter()
    for stat in snapshot.statistics("traceback"):
        frames = list(stat.traceback)   # the oldest frame first, the innermost last
        f = ([fr for fr in frames if fr.filename.startswith(here)] or frames)[-1]
        inner = frames[-1]
        where = f"{Path(f.filename).name}:{f.lineno}"
        if inner is not f:
            where += f"->{Path(inner.filename).name}:{inner.lineno}"
        by_place[where] += stat.size
        blocks[where] += stat.count
    total = sum(by_place.values())
    print_line(out, "soak memory", {"held_since_warmup_mb": round(total / 1e6, 2)})
    for where, size in by_place.most_common(top):
        print_line(out, "soak memory", {"mb": round(size / 1e6, 2), "blocks": blocks[where], "at": where})


@contextlib.contextmanager
def _no_interrupts() -> Iterator[None]:
    """While everything is being stopped, a second Ctrl-C (or SIGTERM) waits instead of cutting the stop short
    (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _verdicts(r: dict[str, Any]) -> list[tuple[str, bool]]:
    growth = r.get("rss_pct_per_h")
    leaked = [k for k in ("leaked_threads", "leaked_tasks", "leaked_fds", "leaked_sockets", "leaked_children")
              if r.get(k)]
    return [("ran to the end", not r.get("error") and not r.get("interrupted")),
            ("site commands COMPLETED", (r.get("site_completed") or 0) > 0),
            ("cloud commands EXECUTED", (r.get("cloud_executed") or 0) > 0),
            (f"rss growth after warm-up < {TARGETS['rss_pct_per_h']:g} %/h",
             growth is not None and growth < TARGETS["rss_pct_per_h"]),
            ("nothing leaked" if not leaked else f"nothing leaked ({', '.join(leaked)})", not leaked)]


def print_soak(out: TextIO, r: dict[str, Any]) -> bool:
    """Print the whole run's figures and verdicts; True when every verdict is ok."""
    verdicts = _verdicts(r)
    print_figures(out, "soak total", {k: v for k, v in r.items() if v is not None}, verdicts)
    out.flush()
    return all(ok for _, ok in verdicts)
