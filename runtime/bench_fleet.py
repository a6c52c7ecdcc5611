"""``coordinator bench --only fleet``: one schedule step fanned out to a fleet of real devices.

The devices are simulators in SEPARATE processes, talking real protocols over loopback sockets:

* ``coordinator sim battery --port 0 --count M`` (one pymodbus server per battery, each on a free port;
  the ports are read from the simulator's output);
* ``coordinator sim ocpp --count N --url ws://127.0.0.1:<port>`` (N OCPP charge points in one asyncio
  process, connecting at most ``--concurrency`` at a time).

Two measurements in the same run, on the same battery simulators and on a fresh charger process each:

``ours``  a :class:`~runtime.site.Site` (actors, dispatcher, journal, OCPP central system, Modbus links)
          with N :class:`~protocols.ocpp.link.OcppChargerLink` chargers and M
          :class:`~protocols.modbus.link.ModbusBatteryLink` batteries. Once every asset is connected, each
          step submits one SET_CHARGE_RATE per asset (``submit_many``, all due now) and waits until every
          command is final. Latency per command: from the ``submit_many`` call to the COMMAND_COMPLETED
          event, timed (``time.perf_counter``) in the event subscriber.
``bare``  a plain asyncio program with no actors: its own OCPP central system (``ocpp`` + ``websockets``,
          handlers for BootNotification, StatusNotification, Heartbeat and MeterValues) and one pymodbus
          ``AsyncModbusTcpClient`` per battery. Each step sends the same SetChargingProfile (same payload
          shape: TxDefaultProfile, W, Absolute) to every charger and the same write + read-back to every
          battery, all at once; latency per command: from the start of the step to the verified answer.

Both sides use the ``ocpp`` library's defaults (JSON-schema validation of every message); the simulators
run with ``--no-validation`` in both phases. Figures: p50 / p99 / max over all steps, the first step
on its own, and the ratio ours / bare. Targets: every command COMPLETED, p99 <= 1 s, ours <= 1.3x bare (p99).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import math
import multiprocessing
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence, TextIO

__all__ = ["run_fleet_bench", "run_fleet_bench_part", "TARGETS"]

TARGETS = {"p99_ms": 1000.0, "ratio_p99": 1.3}

_ROOT = Path(__file__).resolve().parents[1]
_ID_PREFIX = "CP"
_BATTERY_LINE = re.compile(r"battery simulator (\S+) listening on ([\d.]+):(\d+) unit (\d+)")
_FINAL = ("COMPLETED", "FAILED", "TIMED_OUT", "EXPIRED", "SUPERSEDED", "REJECTED")


# ----------------------------------------------------------------------------------------- helpers

def _pct(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..1) of ``values``; None when empty."""
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


def _ms(v: float | None) -> float | None:
    return None if v is None else round(v * 1000.0, 1)


def _mean(values: Sequence[float]) -> float | None:
    return round(sum(values) / len(values), 1) if values else None


def _summary(steps: list[list[float]]) -> dict[str, Any]:
    """p50/p99/max (ms) over all steps, and of the first step alone."""
    every = [t for step in steps for t in step]
    first = steps[0] if steps else []
    return {"p50_ms": _ms(_pct(every, 0.50)), "p99_ms": _ms(_pct(every, 0.99)), "max_ms": _ms(max(every, default=None)),
            "first_p50_ms": _ms(_pct(first, 0.50)), "first_p99_ms": _ms(_pct(first, 0.99)),
            "step_max_ms": [_ms(max(s, default=None)) for s in steps]}


class _SimProcess:
    """A ``coordinator sim ...`` child process; its output is drained by a thread (kept: the last lines)."""

    def __init__(self, name: str, args: Sequence[str], on_line: Callable[[str], None] | None = None) -> None:
        self.name = name
        self.lines: deque[str] = deque(maxlen=200)
        self._on_line = on_line
        self.proc = subprocess.Popen([sys.executable, "-m", "runtime.cli", "sim", *args], cwd=_ROOT,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, bufsize=1)
        self._reader = threading.Thread(target=self._drain, name=f"bench-{name}-output", daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            self.lines.append(line)
            if self._on_line is not None:
                try:
                    self._on_line(line)
                except Exception:  # pragma: no cover - a parser bug must not stop the draining
                    pass

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, n: int = 8) -> str:
        return " | ".join(list(self.lines)[-n:]) or "(no output)"

    def check_alive(self) -> None:
        if not self.alive:
            raise RuntimeError(f"{self.name} simulator process exited with {self.proc.returncode}: {self.tail()}")

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM (the simulators stop cleanly), wait; SIGKILL after ``timeout``. Idempotent."""
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._reader.join(timeout=5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode


def _start_batteries(count: int, timeout: float = 60.0) -> tuple[_SimProcess, list[int]]:
    """The battery simulator process and its ports (battery i listens on ports[i])."""
    ports: dict[int, int] = {}
    ready = threading.Event()

    def on_line(line: str) -> None:
        m = _BATTERY_LINE.search(line)
        if m:
            ports[int(m.group(1).rsplit("-", 1)[-1])] = int(m.group(3))
        elif "battery simulator(s) running" in line:
            ready.set()

    sim = _SimProcess("battery", ["battery", "--port", "0", "--count", str(count)], on_line)
    try:
        deadline = time.monotonic() + timeout
        while not ready.wait(0.1):
            sim.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"battery simulators not up within {timeout:g} s: {sim.tail()}")
        if len(ports) != count:
            raise RuntimeError(f"battery simulators: {len(ports)} ports announced, expected {count}: {sim.tail()}")
        return sim, [ports[i] for i in range(count)]
    except BaseException:
        sim.stop()
        raise


def _charger_args(url: str, count: int, version: str, concurrency: int) -> list[str]:
    return ["ocpp", "--count", str(count), "--url", url, "--version", version, "--id-prefix", _ID_PREFIX,
            "--meter-interval", "0", "--no-validation", "--concurrency", str(concurrency), "--log-level", "WARNING"]


def _values(step: int) -> tuple[float, float]:
    """(charger kW, battery kW) of a step: a new value every step, within the device limits."""
    return 6.0 + step % 12, 10.0 + 5.0 * (step % 7)


# ------------------------------------------------------------------------------------ ours: a Site

class _Recorder:
    """Collects, per command id, the final status and the perf_counter time its event arrived."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._expected: set[str] = set()
        self.final: dict[str, tuple[str, float]] = {}
        self.held: set[str] = set()
        self.done = threading.Event()

    def expect(self, ids: Sequence[str]) -> None:
        with self._lock:
            self._expected = set(ids)
            self.final = {}
            self.held = set()
            self.done.clear()

    def on_event(self, event: Any) -> None:
        t = time.perf_counter()
        cid = event.payload.get("command_id")
        status = event.payload.get("status")
        with self._lock:
            if cid not in self._expected:
                return
            if status == "HELD":
                self.held.add(cid)
                return
            if status in _FINAL and cid not in self.final:
                self.final[cid] = (status, t)
                if len(self.final) == len(self._expected):
                    self.done.set()


class _Step:
    """The outcome of one step: latencies (s) of the commands that succeeded, statuses, the process's CPU
    time (s) and its garbage-collector pauses (s) during the step."""

    def __init__(self, latencies: list[float], statuses: dict[str, int], cpu_s: float, extra: dict[str, float]) -> None:
        self.latencies, self.statuses, self.cpu_s, self.extra = latencies, statuses, cpu_s, extra
        self.gc_s = self.gc_max_s = 0.0

    def to_tuple(self) -> tuple[Any, ...]:
        return self.latencies, self.statuses, self.cpu_s, self.extra, self.gc_s, self.gc_max_s

    @classmethod
    def from_tuple(cls, t: Sequence[Any]) -> "_Step":
        st = cls(list(t[0]), dict(t[1]), float(t[2]), dict(t[3]))
        st.gc_s, st.gc_max_s = float(t[4]), float(t[5])
        return st


class _GcMeter:
    """Sums the garbage collector's pauses in this process while active (gc.callbacks)."""

    def __init__(self) -> None:
        self.total = self.longest = 0.0
        self._t0 = 0.0

    def _cb(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
        else:
            d = time.perf_counter() - self._t0
            self.total += d
            self.longest = max(self.longest, d)

    def __enter__(self) -> "_GcMeter":
        gc.callbacks.append(self._cb)
        return self

    def __exit__(self, *exc: Any) -> None:
        gc.callbacks.remove(self._cb)

    def apply(self, step: _Step) -> _Step:
        step.gc_s, step.gc_max_s = self.total, self.longest
        return step


class _SiteRig:
    """Ours: a Site with N OCPP chargers (simulator process connecting to its central system) and M
    Modbus batteries."""

    def __init__(self, n_chargers: int, battery_ports: list[int], version: str, concurrency: int,
                 journal_dir: str | None) -> None:
        from protocols.modbus.link import ModbusBatteryLink
        from protocols.ocpp.link import OcppChargerLink
        from protocols.sim.chargepoint import fleet_ids

        from .assets import BatterySpec, ChargerSpec
        from .site import Site

        self.n_chargers, self.version, self.concurrency = n_chargers, version, concurrency
        cp_ids = fleet_ids(n_chargers, _ID_PREFIX)
        self.chargers = [f"ev-{cp}" for cp in cp_ids]
        self.batteries = [f"bat-{i:03d}" for i in range(len(battery_ports))]
        specs = ([ChargerSpec(aid, max_kw=22.0, device=OcppChargerLink(cp)) for aid, cp in zip(self.chargers, cp_ids)]
                 + [BatterySpec(aid, max_charge_kw=50.0, max_discharge_kw=50.0,
                                device=ModbusBatteryLink("127.0.0.1", port, name=aid))
                    for aid, port in zip(self.batteries, battery_ports)])
        self.site = Site(specs, ocpp={"port": 0}, journal_dir=journal_dir, fsync="batch")
        self.sim: _SimProcess | None = None
        self.rec = _Recorder()
        self.held = 0

    def start(self, connect_timeout: float) -> dict[str, Any]:
        """Start the site and the charger simulator process; wait until every asset is connected."""
        from .events import EventType

        site = self.site
        site.start()
        for et in (EventType.COMMAND_COMPLETED, EventType.COMMAND_FAILED, EventType.COMMAND_TIMED_OUT,
                   EventType.COMMAND_REJECTED, EventType.COMMAND_EXPIRED, EventType.COMMAND_SUPERSEDED,
                   EventType.COMMAND_HELD):
            site.events.subscribe(et, self.rec.on_event)
        charger_set = set(self.chargers)
        online: set[str] = set()
        lock = threading.Lock()

        def on_connected(event: Any) -> None:  # no charger can connect before its simulator starts
            aid = event.payload.get("asset_id")
            if aid in charger_set:
                with lock:
                    online.add(aid)
        site.events.subscribe(EventType.ASSET_CONNECTED, on_connected)
        site.settle(timeout=30)  # every link started: its charge point id is known to the central system
        links = [site.device(aid) for aid in self.batteries]
        t_launch = time.perf_counter()
        self.sim = _SimProcess("ocpp (site)", _charger_args(f"ws://127.0.0.1:{site.service('ocpp').port}",
                                                            self.n_chargers, self.version, self.concurrency))
        deadline = time.monotonic() + connect_timeout
        while True:
            with lock:
                n_online = len(online)
            up = sum(1 for link in links if link.connected)
            if n_online == self.n_chargers and up == len(links):
                break
            self.sim.check_alive()
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        connect_s = round(time.perf_counter() - t_launch, 2)
        if n_online < self.n_chargers or up < len(links):
            raise RuntimeError(f"site: {n_online} of {self.n_chargers} chargers and {up} of {len(links)} batteries "
                               f"connected within {connect_timeout:g} s; charger simulator: {self.sim.tail(4)}")
        site.settle(timeout=30)  # every asset actor has seen its LinkUp
        return {"connect_s": connect_s}

    def step(self, k: int, timeout: float) -> _Step:
        from .commands import Command, CommandType

        kw_ev, kw_bat = _values(k)
        now = datetime.now(timezone.utc)
        cmds = ([Command(f"s{k}-{aid}", aid, CommandType.SET_CHARGE_RATE, kw_ev, now) for aid in self.chargers]
                + [Command(f"s{k}-{aid}", aid, CommandType.SET_CHARGE_RATE, kw_bat, now) for aid in self.batteries])
        rec = self.rec
        rec.expect([c.command_id for c in cmds])
        with _GcMeter() as gcm:
            c0 = time.process_time()
            t0 = time.perf_counter()
            self.site.submit_many(cmds)
            submit_s = time.perf_counter() - t0
            rec.done.wait(timeout)
            cpu_s = time.process_time() - c0
        final = dict(rec.final)
        self.held += len(rec.held)
        statuses: dict[str, int] = {}
        for c in cmds:
            status = final.get(c.command_id, ("NOT_FINAL", 0.0))[0]
            statuses[status] = statuses.get(status, 0) + 1
        self.site.settle(timeout=10)  # let the site finish its after-work before the other side's step
        return gcm.apply(_Step([t - t0 for status, t in final.values() if status == "COMPLETED"], statuses, cpu_s,
                               {"submit_s": submit_s}))

    def stop(self) -> None:
        try:
            if self.sim is not None:
                self.sim.stop()
        finally:
            self.site.stop()


# -------------------------------------------------------------------------- bare: no actors at all

def _bare_charge_point_classes() -> dict[str, type]:
    from ocpp.routing import after, on
    from ocpp.v16 import ChargePoint as CP16
    from ocpp.v16 import call_result as r16
    from ocpp.v16.enums import Action as A16
    from ocpp.v201 import ChargePoint as CP201
    from ocpp.v201 import call_result as r201
    from ocpp.v201.enums import Action as A201

    def now() -> str:
        return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")

    class Bare16(CP16):
        ready: Callable[[str], None] = staticmethod(lambda cp_id: None)

        @on(A16.boot_notification)
        def on_boot(self, **_: Any) -> Any:
            return r16.BootNotification(current_time=now(), interval=300, status="Accepted")

        @on(A16.status_notification)
        def on_status(self, **_: Any) -> Any:
            return r16.StatusNotification()

        @after(A16.status_notification)
        def after_status(self, **_: Any) -> None:
            self.ready(self.id)

        @on(A16.heartbeat)
        def on_heartbeat(self, **_: Any) -> Any:
            return r16.Heartbeat(current_time=now())

        @on(A16.meter_values)
        def on_meter_values(self, **_: Any) -> Any:
            return r16.MeterValues()

    class Bare201(CP201):
        ready: Callable[[str], None] = staticmethod(lambda cp_id: None)

        @on(A201.boot_notification)
        def on_boot(self, **_: Any) -> Any:
            return r201.BootNotification(current_time=now(), interval=300, status="Accepted")

        @on(A201.status_notification)
        def on_status(self, **_: Any) -> Any:
            return r201.StatusNotification()

        @after(A201.status_notification)
        def after_status(self, **_: Any) -> None:
            self.ready(self.id)

        @on(A201.heartbeat)
        def on_heartbeat(self, **_: Any) -> Any:
            return r201.Heartbeat(current_time=now())

        @on(A201.meter_values)
        def on_meter_values(self, **_: Any) -> Any:
            return r201.MeterValues()

    return {"1.6": Bare16, "2.0.1": Bare201}


def _bare_profile(version: str, kw: float) -> Any:
    """The SetChargingProfile OcppChargerLink sends for SET_CHARGE_RATE on an idle charger."""
    from ocpp.v16 import call as c16
    from ocpp.v201 import call as c201
    start = datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    schedule: dict[str, Any] = {"charging_rate_unit": "W",
                                "charging_schedule_period": [{"start_period": 0, "limit": float(kw * 1000.0)}],
                                "start_schedule": start}
    profile: dict[str, Any] = {"stack_level": 0, "charging_profile_purpose": "TxDefaultProfile",
                               "charging_profile_kind": "Absolute"}
    if version == "2.0.1":
        return c201.SetChargingProfile(evse_id=1, charging_profile={**profile, "id": 1,
                                                                    "charging_schedule": [{"id": 1, **schedule}]})
    return c16.SetChargingProfile(connector_id=1, cs_charging_profiles={**profile, "charging_profile_id": 1,
                                                                        "charging_schedule": schedule})


class _BareRig:
    """Bare: a plain asyncio program with no actors, on its own loop in its own thread (so that steps
    can alternate with the site's): a minimal OCPP central system and one pymodbus client per battery."""

    def __init__(self, n_chargers: int, battery_ports: list[int], version: str, concurrency: int) -> None:
        self.n_chargers, self.battery_ports, self.version, self.concurrency = n_chargers, battery_ports, version, concurrency
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="bench-bare-loop", daemon=True)
        self.registry: dict[str, Any] = {}
        self.ready: set[str] = set()
        self.clients: list[Any] = []
        self.server: Any = None
        self.sim: _SimProcess | None = None
        self.cps: list[Any] = []

    def _run(self, coro: Any, timeout: float) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self, connect_timeout: float) -> dict[str, Any]:
        self.thread.start()
        return self._run(self._start(connect_timeout), connect_timeout + 60)

    async def _start(self, connect_timeout: float) -> dict[str, Any]:
        from pymodbus.client import AsyncModbusTcpClient
        from websockets.asyncio.server import serve
        from websockets.exceptions import ConnectionClosed

        cls = _bare_charge_point_classes()[self.version]
        all_ready = asyncio.Event()

        def on_ready(cp_id: str) -> None:
            self.ready.add(cp_id)
            if len(self.ready) >= self.n_chargers:
                all_ready.set()
        cls.ready = staticmethod(on_ready)

        async def handler(ws: Any) -> None:
            cp_id = ws.request.path.rstrip("/").rsplit("/", 1)[-1]
            cp = cls(cp_id, ws)
            self.registry[cp_id] = cp
            try:
                await cp.start()
            except ConnectionClosed:
                pass
            finally:
                if self.registry.get(cp_id) is cp:
                    del self.registry[cp_id]
                    self.ready.discard(cp_id)

        subprotocol = {"1.6": "ocpp1.6", "2.0.1": "ocpp2.0.1"}[self.version]
        self.server = await serve(handler, "127.0.0.1", 0, subprotocols=[subprotocol], compression=None)
        port = self.server.sockets[0].getsockname()[1]
        self.clients = [AsyncModbusTcpClient("127.0.0.1", port=p, timeout=1, retries=0, reconnect_delay=0.5,
                                             reconnect_delay_max=10) for p in self.battery_ports]
        connected = await asyncio.gather(*(c.connect() for c in self.clients))
        if not all(connected):
            raise RuntimeError(f"bare: {connected.count(False)} of {len(self.clients)} battery simulators "
                               f"refused a connection")
        loop = asyncio.get_running_loop()
        t_launch = time.perf_counter()
        self.sim = await asyncio.to_thread(_SimProcess, "ocpp (bare)", _charger_args(
            f"ws://127.0.0.1:{port}", self.n_chargers, self.version, self.concurrency))
        deadline = loop.time() + connect_timeout
        while not all_ready.is_set() and loop.time() < deadline:
            self.sim.check_alive()
            try:
                await asyncio.wait_for(all_ready.wait(), 0.25)
            except asyncio.TimeoutError:
                pass
        connect_s = round(time.perf_counter() - t_launch, 2)
        if len(self.ready) < self.n_chargers:
            raise RuntimeError(f"{len(self.ready)} of {self.n_chargers} chargers booted within {connect_timeout:g} s; "
                               f"charger simulator: {self.sim.tail(4)}")
        self.cps = [self.registry[cp] for cp in sorted(self.ready)]
        return {"connect_s": connect_s}

    def step(self, k: int, timeout: float) -> _Step:
        with _GcMeter() as gcm:
            return gcm.apply(self._run(self._step(k, timeout), timeout + 30))

    async def _step(self, k: int, timeout: float) -> _Step:
        async def charger(cp: Any, payload: Any, t0: float) -> tuple[str, float]:
            try:
                res = await asyncio.wait_for(cp.call(payload, suppress=False), timeout)
            except asyncio.TimeoutError:
                return "TIMED_OUT", 0.0
            except Exception:
                return "FAILED", 0.0
            return ("COMPLETED" if str(res.status) == "Accepted" else "REJECTED"), time.perf_counter() - t0

        async def battery(client: Any, kw: float, t0: float) -> tuple[str, float]:
            words = [round(kw * 10), 0]  # the default map: 40001 charge rate x10, 40002 discharge rate = 0
            try:
                rr = await client.write_registers(40000, words, device_id=1)
                if rr.isError():
                    return "REJECTED", 0.0
                rb = await client.read_holding_registers(40000, count=2, device_id=1)
            except Exception:
                return "FAILED", 0.0
            ok = not rb.isError() and list(rb.registers) == words
            return ("COMPLETED" if ok else "FAILED"), time.perf_counter() - t0

        kw_ev, kw_bat = _values(k)
        c0 = time.process_time()
        t0 = time.perf_counter()
        payload = _bare_profile(self.version, kw_ev)
        results = await asyncio.gather(*([charger(cp, payload, t0) for cp in self.cps]
                                         + [battery(c, kw_bat, t0) for c in self.clients]))
        cpu_s = time.process_time() - c0
        statuses: dict[str, int] = {}
        for status, _ in results:
            statuses[status] = statuses.get(status, 0) + 1
        return _Step([t for status, t in results if status == "COMPLETED"], statuses, cpu_s, {})

    def stop(self) -> None:
        if not self.thread.is_alive():
            self.loop.close()
            return
        try:
            self._run(self._stop(), 60)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)
            if not self.thread.is_alive():
                self.loop.run_until_complete(self.loop.shutdown_default_executor())
                self.loop.close()

    async def _stop(self) -> None:
        try:
            if self.sim is not None:
                await asyncio.to_thread(self.sim.stop)  # the loop keeps serving the closing handshakes meanwhile
        finally:
            for c in self.clients:
                c.close()
            if self.server is not None:
                self.server.close()
                await self.server.wait_closed()


def _bare_worker(conn: Any, n_chargers: int, battery_ports: list[int], version: str, concurrency: int) -> None:
    """Body of the bare process: runs a :class:`_BareRig` on requests from the parent's pipe."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the parent stops this process in order
    rig = _BareRig(n_chargers, battery_ports, version, concurrency)
    try:
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):  # the parent is gone
                return
            if msg[0] == "stop":
                return
            try:
                if msg[0] == "start":
                    conn.send(("ok", rig.start(msg[1])))
                elif msg[0] == "step":
                    conn.send(("ok", rig.step(msg[1], msg[2]).to_tuple()))
                else:
                    conn.send(("error", f"unknown request {msg[0]!r}"))
            except Exception as exc:
                conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        rig.stop()
        conn.close()


class _BareProcess:
    """The bare program in its own process (its own heap, garbage collector and GIL, like the site's
    process has), driven step by step over a pipe."""

    def __init__(self, n_chargers: int, battery_ports: list[int], version: str, concurrency: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_bare_worker, args=(child, n_chargers, battery_ports, version, concurrency),
                                name="bench-fleet-bare", daemon=True)
        self.proc.start()
        child.close()

    def _ask(self, msg: tuple[Any, ...], timeout: float) -> Any:
        self.conn.send(msg)
        if not self.conn.poll(timeout):
            raise TimeoutError(f"the bare process did not answer {msg[0]!r} within {timeout:g} s")
        status, value = self.conn.recv()
        if status != "ok":
            raise RuntimeError(f"bare process: {value}")
        return value

    def start(self, connect_timeout: float) -> dict[str, Any]:
        return self._ask(("start", connect_timeout), connect_timeout + 120)

    def step(self, k: int, timeout: float) -> _Step:
        return _Step.from_tuple(self._ask(("step", k, timeout), timeout + 60))

    def stop(self) -> None:
        try:
            self.conn.send(("stop",))
        except (OSError, EOFError):
            pass
        self.proc.join(timeout=60)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(timeout=10)
        if self.proc.is_alive():  # pragma: no cover - last resort
            self.proc.kill()
            self.proc.join(timeout=5)
        self.conn.close()


# ------------------------------------------------------------------------------------------ entry

def _figures(steps: list[_Step], total: int) -> dict[str, Any]:
    statuses: dict[str, int] = {}
    for st in steps:
        for status, n in st.statuses.items():
            statuses[status] = statuses.get(status, 0) + n
    completed = statuses.pop("COMPLETED", 0)
    out: dict[str, Any] = {"commands": total, "completed": completed, "all_completed": completed == total,
                           **_summary([st.latencies for st in steps]),
                           "cpu_ms": _mean([st.cpu_s * 1000.0 for st in steps]),
                           "gc_ms": _mean([st.gc_s * 1000.0 for st in steps]),
                           "gc_max_ms": _ms(max((st.gc_max_s for st in steps), default=None))}
    if statuses:
        out["statuses"] = statuses
    return out


def run_fleet_bench(n_chargers: int = 500, n_batteries: int = 50, version: str = "1.6", steps: int = 5,
                    concurrency: int = 50, journal: bool = True, step_timeout: float = 60.0,
                    connect_timeout: float | None = None) -> dict[str, Any]:
    """Run both measurements (see the module docstring) and return their figures.

    Both set-ups are connected at the same time (each to its own simulator processes) and their steps
    alternate (site, bare, bare, site, site, ...), so that whatever else loads the machine weighs on
    both alike. ``connect_timeout`` bounds the wait for each fleet to connect (default 30 s + 0.15 s
    per charger); ``step_timeout`` bounds each step. Every simulator process is stopped and the site is
    stopped before this returns, also on errors."""
    if version not in ("1.6", "2.0.1"):
        raise ValueError(f"version: must be '1.6' or '2.0.1', got {version!r}")
    if n_chargers < 1 or n_batteries < 0 or steps < 1:
        raise ValueError("n_chargers and steps must be >= 1, n_batteries >= 0")
    if connect_timeout is None:
        connect_timeout = 30.0 + 0.15 * n_chargers
    total = steps * (n_chargers + n_batteries)
    with contextlib.ExitStack() as stack:
        ports: dict[str, list[int]] = {"site": [], "bare": []}
        for side in ("site", "bare"):
            if n_batteries:
                sim, ports[side] = _start_batteries(n_batteries)
                stack.callback(sim.stop)
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-fleet-")) if journal else None
        ours = _SiteRig(n_chargers, ports["site"], version, concurrency, tmp)
        stack.callback(ours.stop)
        ours_setup = ours.start(connect_timeout)
        bare = _BareProcess(n_chargers, ports["bare"], version, concurrency)
        stack.callback(bare.stop)
        bare_setup = bare.start(connect_timeout)
        ours_steps: list[_Step] = []
        bare_steps: list[_Step] = []
        for k in range(steps):
            first, second = ((ours, ours_steps), (bare, bare_steps)) if k % 2 == 0 else ((bare, bare_steps),
                                                                                        (ours, ours_steps))
            for rig, results in (first, second):
                results.append(rig.step(k, step_timeout))
        r_ours = {**ours_setup, **_figures(ours_steps, total),
                  "submit_ms": _mean([st.extra["submit_s"] * 1000.0 for st in ours_steps])}
        if ours.held:
            r_ours["held"] = ours.held
        r_bare = {**bare_setup, **_figures(bare_steps, total)}

    def ratio(key: str) -> float | None:
        a, b = r_ours.get(key), r_bare.get(key)
        return round(a / b, 2) if a is not None and b else None

    return {"chargers": n_chargers, "batteries": n_batteries, "ocpp": version, "steps": steps,
            "journal": "batch" if journal else "off", "ours": r_ours, "bare": r_bare,
            "ratio_p50": ratio("p50_ms"), "ratio_p99": ratio("p99_ms")}


def run_fleet_bench_part(out: TextIO, quick: bool) -> None:
    """The ``fleet`` part of ``coordinator bench`` (quick: 50 chargers + 5 batteries)."""
    from .bench import _line  # here, not at the top: the bare process imports this module and must stay lean

    n_chargers, n_batteries = (50, 5) if quick else (500, 50)
    try:
        r = run_fleet_bench(n_chargers=n_chargers, n_batteries=n_batteries)
    except Exception as exc:
        _line(out, "fleet", {"chargers": n_chargers, "batteries": n_batteries, "error": f"{type(exc).__name__}: {exc}"},
              [("ran to the end", False)])
        return
    ours, bare = r["ours"], r["bare"]
    shown = ("connect_s", "commands", "completed", "p50_ms", "p99_ms", "max_ms", "first_p50_ms", "first_p99_ms",
             "cpu_ms", "gc_ms", "gc_max_ms", "statuses")
    _line(out, "fleet", {"chargers": r["chargers"], "batteries": r["batteries"], "ocpp": r["ocpp"], "steps": r["steps"],
                         "journal": r["journal"], **{k: ours[k] for k in shown if k in ours},
                         "submit_ms": ours.get("submit_ms")},
          [("every command COMPLETED", bool(ours.get("all_completed"))),
           (f"p99 <= {TARGETS['p99_ms']:g} ms", ours.get("p99_ms") is not None and ours["p99_ms"] <= TARGETS["p99_ms"])])
    _line(out, "fleet bare", {**{k: bare[k] for k in shown if k in bare},
                              "ratio_p50": r["ratio_p50"], "ratio_p99": r["ratio_p99"]},
          [("bare: every command answered", bool(bare.get("all_completed"))),
           (f"ours <= {TARGETS['ratio_p99']:g}x bare (p99)",
            r["ratio_p99"] is not None and r["ratio_p99"] <= TARGETS["ratio_p99"])])
