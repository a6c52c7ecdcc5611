"""``coordinator bench --only fleet``: one schedule step fanned out to a fleet of real devices.

Every device is a simulator in a SEPARATE process, talking the real protocol over loopback sockets:
``coordinator sim battery --port 0 --count M`` (one pymodbus server per battery on a free port; the
ports are read from the simulator's output) and ``coordinator sim ocpp --count N --url ws://...``
(N OCPP charge points in one process, at most ``--concurrency`` handshakes at a time, ``--no-validation``,
MeterValues only on change). Two set-ups are measured in the same run, each with its own simulator
processes:

``ours``  a :class:`~runtime.site.Site` in this process (actors, dispatcher, journal with fsync "batch",
          OCPP central system, Modbus links): N :class:`~protocols.ocpp.link.OcppChargerLink` chargers and M
          :class:`~protocols.modbus.link.ModbusBatteryLink` batteries. A step submits one SET_CHARGE_RATE per
          asset with ``submit_many`` (all due now) and waits until every command is final. Latency of a
          command: from the ``submit_many`` call to its COMMAND_COMPLETED event, timed
          (``time.perf_counter``) in the event subscriber.
``bare``  a plain asyncio program with no actors, in a process of its own (``python -m runtime.bench_fleet
          bare-worker``, so that it has its own heap, garbage collector and GIL as the site has): its own
          OCPP central system (``ocpp`` + ``websockets``; BootNotification, StatusNotification, Heartbeat,
          MeterValues) and one pymodbus ``AsyncModbusTcpClient`` per battery. A step sends every charger the
          SetChargingProfile the link sends (TxDefaultProfile, W, Absolute, connector 1) and every battery
          the link's write + read-back (40001/40002), all at once. Latency: from the start of the step to the
          verified answer.

Both central systems run the ``ocpp`` library with its defaults (JSON-schema validation of every
message). Both fleets are connected before the first step, and the steps alternate (ours, bare, bare,
ours, ours, ...), so that whatever else loads the machine weighs on both alike. The waits are bounded:
the fleet must connect within ``connect_timeout`` (an error names how many did), a step ends after
``step_timeout``. Every child process is stopped (SIGTERM, then SIGKILL) and the site is stopped before
:func:`run_fleet_bench` returns, also on errors.

Figures per set-up: p50 / p99 / max latency over all steps and of the first step alone, the process's
CPU time per step (``cpu_ms``) and its garbage-collector pauses per step (``gc_ms``, longest
``gc_max_ms``); for ours also the ``submit_many`` time and the site's stop time. Targets: every command
COMPLETED, p99 <= 1 s, ours <= 1.3x bare (checked for p99 and for p50).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import math
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
        self.stuck: list[str] = []
        self.disconnects: list[str] = []  # ASSET_DISCONNECTED events (a charger that dropped its connection)
        self.stopped: float | None = None
        self.lock = threading.Lock()

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
        lock = self.lock

        def on_connected(event: Any) -> None:  # no charger can connect before its simulator starts
            aid = event.payload.get("asset_id")
            if aid in charger_set:
                with lock:
                    online.add(aid)
        site.events.subscribe(EventType.ASSET_CONNECTED, on_connected)

        def on_disconnected(event: Any) -> None:
            with lock:
                self.disconnects.append(f"{event.payload.get('asset_id')}: {event.payload.get('reason')}")
        site.events.subscribe(EventType.ASSET_DISCONNECTED, on_disconnected)
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
            if status != "COMPLETED" and len(self.stuck) < 5:  # what the site says about it
                snap = self.site.command(c.command_id)
                self.stuck.append(f"{c.command_id}: {snap.status.value if snap else '?'} attempts="
                                  f"{snap.attempts if snap else '?'} error={snap.last_error if snap else '?'}")
        self.site.settle(timeout=10)  # let the site finish its after-work before the other side's step
        return gcm.apply(_Step([t - t0 for status, t in final.values() if status == "COMPLETED"], statuses, cpu_s,
                               {"submit_s": submit_s}))

    def stop(self) -> float:
        """Stop the charger simulator process, then the site. Idempotent; returns the site's stop time (s)."""
        if self.stopped is not None:
            return self.stopped
        try:
            if self.sim is not None:
                self.sim.stop()
        finally:
            t0 = time.perf_counter()
            self.site.stop()
            self.stopped = time.perf_counter() - t0
        return self.stopped


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


def _bare_worker(argv: Sequence[str]) -> int:
    """``python -m runtime.bench_fleet bare-worker '<json config>'``: the bare process. Runs a
    :class:`_BareRig` on JSON-line requests on stdin, answers JSON lines on stdout; stops at "stop"
    or when stdin closes (the parent is gone)."""
    import json

    import ocpp.messages

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the parent stops this process in order
    # the same library setting as our CentralSystem (inline_validation=True): both sides validate every
    # message against the schema, in the same way
    ocpp.messages.ASYNC_VALIDATION = False
    cfg = json.loads(argv[0])
    rig = _BareRig(int(cfg["chargers"]), [int(p) for p in cfg["ports"]], str(cfg["version"]), int(cfg["concurrency"]))
    out = sys.stdout
    sys.stdout = sys.stderr  # stdout carries the answers only
    try:
        for line in sys.stdin:
            req = json.loads(line)
            if req["op"] == "stop":
                break
            try:
                if req["op"] == "start":
                    value: Any = rig.start(float(req["timeout"]))
                elif req["op"] == "step":
                    value = rig.step(int(req["k"]), float(req["timeout"])).to_tuple()
                else:
                    raise ValueError(f"unknown request {req['op']!r}")
                answer = {"ok": True, "value": value}
            except Exception as exc:
                answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            out.write(json.dumps(answer) + "\n")
            out.flush()
    finally:
        rig.stop()
    return 0


class _BareProcess:
    """The bare program in its own process (its own heap, garbage collector and GIL, as the site has
    its process), driven step by step through JSON lines on its stdin/stdout."""

    def __init__(self, n_chargers: int, battery_ports: list[int], version: str, concurrency: int) -> None:
        import json
        import queue

        self._json = json
        cfg = json.dumps({"chargers": n_chargers, "ports": battery_ports, "version": version,
                          "concurrency": concurrency})
        self.proc = subprocess.Popen([sys.executable, "-m", "runtime.bench_fleet", "bare-worker", cfg], cwd=_ROOT,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        self._answers: "queue.Queue[str | None]" = queue.Queue()
        self._reader = threading.Thread(target=self._read, name="bench-bare-answers", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._answers.put(line)
        self._answers.put(None)

    def _ask(self, req: dict[str, Any], timeout: float) -> Any:
        import queue

        assert self.proc.stdin is not None
        self.proc.stdin.write(self._json.dumps(req) + "\n")
        self.proc.stdin.flush()
        try:
            line = self._answers.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"the bare process did not answer {req['op']!r} within {timeout:g} s") from None
        if line is None:
            raise RuntimeError(f"the bare process exited ({self.proc.poll()}) during {req['op']!r}")
        answer = self._json.loads(line)
        if not answer["ok"]:
            raise RuntimeError(f"bare process: {answer['error']}")
        return answer["value"]

    def start(self, connect_timeout: float) -> dict[str, Any]:
        return self._ask({"op": "start", "timeout": connect_timeout}, connect_timeout + 120)

    def step(self, k: int, timeout: float) -> _Step:
        return _Step.from_tuple(self._ask({"op": "step", "k": k, "timeout": timeout}, timeout + 60))

    def stop(self) -> None:
        """Ask the process to stop (it stops its charger simulators), wait; terminate, kill. Idempotent."""
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write(self._json.dumps({"op": "stop"}) + "\n")
                self.proc.stdin.close()
            except (OSError, ValueError):  # already closed
                pass
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=5)
        self._reader.join(timeout=5)
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None and not f.closed:
                try:
                    f.close()
                except OSError:
                    pass


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
                    concurrency: int = 50, journal: bool = True, step_timeout: float = 45.0,
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
        with ours.lock:
            disconnects = list(ours.disconnects)  # during the steps; the stop below disconnects everything
        bare.stop()
        r_ours = {**ours_setup, **_figures(ours_steps, total),
                  "submit_ms": _mean([st.extra["submit_s"] * 1000.0 for st in ours_steps]),
                  "stop_s": round(ours.stop(), 2)}
        if ours.held:
            r_ours["held"] = ours.held
        if ours.stuck:
            r_ours["not_completed"] = ours.stuck
        if disconnects:
            r_ours["disconnects"] = len(disconnects)
            r_ours["disconnected"] = disconnects[:3]
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
             "cpu_ms", "gc_ms", "gc_max_ms", "statuses", "held", "not_completed", "disconnects", "disconnected")
    _line(out, "fleet", {"chargers": r["chargers"], "batteries": r["batteries"], "ocpp": r["ocpp"], "steps": r["steps"],
                         "journal": r["journal"], **{k: ours[k] for k in shown if k in ours},
                         "submit_ms": ours.get("submit_ms"), "stop_s": ours.get("stop_s")},
          [("every command COMPLETED", bool(ours.get("all_completed"))),
           (f"p99 <= {TARGETS['p99_ms']:g} ms", ours.get("p99_ms") is not None and ours["p99_ms"] <= TARGETS["p99_ms"])])
    _line(out, "fleet bare", {**{k: bare[k] for k in shown if k in bare},
                              "ratio_p50": r["ratio_p50"], "ratio_p99": r["ratio_p99"]},
          [("bare: every command answered", bool(bare.get("all_completed"))),
           (f"ours <= {TARGETS['ratio_p99']:g}x bare (p99)",
            r["ratio_p99"] is not None and r["ratio_p99"] <= TARGETS["ratio_p99"]),
           (f"ours <= {TARGETS['ratio_p99']:g}x bare (p50)",
            r["ratio_p50"] is not None and r["ratio_p50"] <= TARGETS["ratio_p99"])])


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "bare-worker":
        sys.exit(_bare_worker(sys.argv[2:]))
    print("usage: python -m runtime.bench_fleet bare-worker '<json config>' (started by the fleet bench)",
          file=sys.stderr)
    sys.exit(2)
