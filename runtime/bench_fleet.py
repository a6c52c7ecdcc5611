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

from .bench import _line

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
    """(charger kW, battery kW) of a step: a new value every step."""
    return 6.0 + step, 10.0 + 5.0 * step


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


def _run_ours(n_chargers: int, battery_ports: list[int], version: str, steps: int, concurrency: int,
              connect_timeout: float, step_timeout: float, journal: bool) -> dict[str, Any]:
    from protocols.modbus.link import ModbusBatteryLink
    from protocols.ocpp.link import OcppChargerLink
    from protocols.sim.chargepoint import fleet_ids

    from .assets import BatterySpec, ChargerSpec
    from .commands import Command, CommandType
    from .events import EventType
    from .site import Site

    cp_ids = fleet_ids(n_chargers, _ID_PREFIX)
    chargers = [f"ev-{cp}" for cp in cp_ids]
    batteries = [f"bat-{i:03d}" for i in range(len(battery_ports))]
    specs = ([ChargerSpec(aid, max_kw=22.0, device=OcppChargerLink(cp)) for aid, cp in zip(chargers, cp_ids)]
             + [BatterySpec(aid, max_charge_kw=50.0, max_discharge_kw=50.0,
                            device=ModbusBatteryLink("127.0.0.1", port, name=aid))
                for aid, port in zip(batteries, battery_ports)])
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp:
        site = Site(specs, ocpp={"port": 0}, journal_dir=tmp if journal else None, fsync="batch")
        chargers_sim: _SimProcess | None = None
        try:
            t_start = time.perf_counter()
            site.start()
            out["site_start_s"] = round(time.perf_counter() - t_start, 2)
            rec = _Recorder()
            for et in (EventType.COMMAND_COMPLETED, EventType.COMMAND_FAILED, EventType.COMMAND_TIMED_OUT,
                       EventType.COMMAND_REJECTED, EventType.COMMAND_EXPIRED, EventType.COMMAND_SUPERSEDED,
                       EventType.COMMAND_HELD):
                site.events.subscribe(et, rec.on_event)
            site.settle(timeout=30)  # every link started (its charge point id is known to the central system)
            cs = site.service("ocpp")
            links = [site.device(aid) for aid in batteries]
            charger_set = set(chargers)
            online: set[str] = set()
            online_lock = threading.Lock()

            def on_connected(event: Any) -> None:  # no charger can connect before its simulator starts
                aid = event.payload.get("asset_id")
                if aid in charger_set:
                    with online_lock:
                        online.add(aid)
            site.events.subscribe(EventType.ASSET_CONNECTED, on_connected)

            t_launch = time.perf_counter()
            chargers_sim = _SimProcess("ocpp", _charger_args(f"ws://127.0.0.1:{cs.port}", n_chargers, version,
                                                             concurrency))
            deadline = time.monotonic() + connect_timeout
            n_online = up = 0
            while True:
                with online_lock:
                    n_online = len(online)
                up = sum(1 for link in links if link.connected)
                if n_online == n_chargers and up == len(links):
                    break
                chargers_sim.check_alive()
                if time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            out["connect_s"] = round(time.perf_counter() - t_launch, 2)
            out["connected"] = n_online + up
            site.settle(timeout=30)  # every asset actor has seen its LinkUp

            timings: list[list[float]] = []
            statuses: dict[str, int] = {}
            held = 0
            submit_ms: list[float] = []
            cpu_ms: list[float] = []
            for k in range(steps):
                kw_ev, kw_bat = _values(k)
                now = datetime.now(timezone.utc)
                cmds = ([Command(f"s{k}-{aid}", aid, CommandType.SET_CHARGE_RATE, kw_ev, now) for aid in chargers]
                        + [Command(f"s{k}-{aid}", aid, CommandType.SET_CHARGE_RATE, kw_bat, now) for aid in batteries])
                rec.expect([c.command_id for c in cmds])
                c0 = time.process_time()
                t0 = time.perf_counter()
                site.submit_many(cmds)
                submit_ms.append((time.perf_counter() - t0) * 1000.0)
                rec.done.wait(step_timeout)
                cpu_ms.append((time.process_time() - c0) * 1000.0)
                final = dict(rec.final)
                held += len(rec.held)
                for cid in (c.command_id for c in cmds):
                    status = final.get(cid, ("NOT_FINAL", 0.0))[0]
                    statuses[status] = statuses.get(status, 0) + 1
                timings.append([t - t0 for status, t in final.values() if status == "COMPLETED"])
            total = steps * (n_chargers + len(batteries))
            completed = statuses.get("COMPLETED", 0)
            out.update(commands=total, completed=completed, all_completed=completed == total, **_summary(timings),
                       submit_ms=_mean(submit_ms), cpu_ms=_mean(cpu_ms))
            if completed != total:
                out["statuses"] = {s: n for s, n in statuses.items() if s != "COMPLETED"}
            if held:
                out["held"] = held
        finally:
            try:
                if chargers_sim is not None:
                    chargers_sim.stop()
            finally:
                site.stop()
    return out


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


async def _bare_main(n_chargers: int, battery_ports: list[int], version: str, steps: int, concurrency: int,
                     connect_timeout: float, step_timeout: float) -> dict[str, Any]:
    from pymodbus.client import AsyncModbusTcpClient
    from websockets.asyncio.server import serve
    from websockets.exceptions import ConnectionClosed

    loop = asyncio.get_running_loop()
    classes = _bare_charge_point_classes()
    cls = classes[version]
    registry: dict[str, Any] = {}
    ready: set[str] = set()
    all_ready = asyncio.Event()

    def on_ready(cp_id: str) -> None:
        ready.add(cp_id)
        if len(ready) >= n_chargers:
            all_ready.set()

    cls.ready = staticmethod(on_ready)

    async def handler(ws: Any) -> None:
        cp_id = ws.request.path.rstrip("/").rsplit("/", 1)[-1]
        cp = cls(cp_id, ws)
        registry[cp_id] = cp
        try:
            await cp.start()
        except ConnectionClosed:
            pass
        finally:
            if registry.get(cp_id) is cp:
                del registry[cp_id]
                ready.discard(cp_id)

    out: dict[str, Any] = {}
    subprotocol = {"1.6": "ocpp1.6", "2.0.1": "ocpp2.0.1"}[version]
    server = await serve(handler, "127.0.0.1", 0, subprotocols=[subprotocol], compression=None)
    port = server.sockets[0].getsockname()[1]
    clients = [AsyncModbusTcpClient("127.0.0.1", port=p, timeout=1, retries=0, reconnect_delay=0.5,
                                    reconnect_delay_max=10) for p in battery_ports]
    sim: _SimProcess | None = None
    try:
        connected = await asyncio.gather(*(c.connect() for c in clients))
        if not all(connected):
            raise RuntimeError(f"bare: {connected.count(False)} of {len(clients)} battery simulators refused a connection")
        t_launch = time.perf_counter()
        sim = await asyncio.to_thread(_SimProcess, "ocpp", _charger_args(f"ws://127.0.0.1:{port}", n_chargers,
                                                                          version, concurrency))
        deadline = loop.time() + connect_timeout
        while not all_ready.is_set() and loop.time() < deadline:
            sim.check_alive()
            try:
                await asyncio.wait_for(all_ready.wait(), 0.25)
            except asyncio.TimeoutError:
                pass
        out["connect_s"] = round(time.perf_counter() - t_launch, 2)
        out["connected"] = len(ready) + len(clients)

        async def charger(cp: Any, payload: Any, t0: float) -> tuple[bool, float]:
            try:
                res = await asyncio.wait_for(cp.call(payload, suppress=False), step_timeout)
                return str(res.status) == "Accepted", time.perf_counter() - t0
            except Exception:
                return False, time.perf_counter() - t0

        async def battery(client: Any, kw: float, t0: float) -> tuple[bool, float]:
            words = [round(kw * 10), 0]  # the default map: 40001 charge rate x10, 40002 discharge rate = 0
            try:
                rr = await client.write_registers(40000, words, device_id=1)
                if rr.isError():
                    return False, time.perf_counter() - t0
                rb = await client.read_holding_registers(40000, count=2, device_id=1)
                return (not rb.isError() and list(rb.registers) == words), time.perf_counter() - t0
            except Exception:
                return False, time.perf_counter() - t0

        timings: list[list[float]] = []
        completed = 0
        cps = [registry[cp] for cp in sorted(ready)]
        cpu_ms: list[float] = []
        for k in range(steps):
            kw_ev, kw_bat = _values(k)
            c0 = time.process_time()
            t0 = time.perf_counter()
            payload = _bare_profile(version, kw_ev)
            results = await asyncio.gather(*([charger(cp, payload, t0) for cp in cps]
                                             + [battery(c, kw_bat, t0) for c in clients]))
            cpu_ms.append((time.process_time() - c0) * 1000.0)
            timings.append([t for ok, t in results if ok])
            completed += sum(1 for ok, _ in results if ok)
        total = steps * (n_chargers + len(clients))
        out.update(commands=total, completed=completed, all_completed=completed == total, **_summary(timings),
                   cpu_ms=_mean(cpu_ms))
    finally:
        try:
            if sim is not None:
                await asyncio.to_thread(sim.stop)  # the loop keeps serving the closing handshakes meanwhile
        finally:
            for c in clients:
                c.close()
            server.close()
            await server.wait_closed()
    return out


# ------------------------------------------------------------------------------------------ entry

def run_fleet_bench(n_chargers: int = 500, n_batteries: int = 50, version: str = "1.6", steps: int = 5,
                    concurrency: int = 50, journal: bool = True, step_timeout: float = 60.0,
                    connect_timeout: float | None = None) -> dict[str, Any]:
    """Run both measurements (see the module docstring) and return their figures.

    ``connect_timeout`` bounds the wait for the whole fleet to connect (default 30 s + 0.15 s per
    charger); ``step_timeout`` bounds each step. Every simulator process is stopped before this returns,
    also on errors."""
    if version not in ("1.6", "2.0.1"):
        raise ValueError(f"version: must be '1.6' or '2.0.1', got {version!r}")
    if connect_timeout is None:
        connect_timeout = 30.0 + 0.15 * n_chargers
    batteries, ports = _start_batteries(n_batteries)
    try:
        ours = _run_ours(n_chargers, ports, version, steps, concurrency, connect_timeout, step_timeout, journal)
        batteries.check_alive()
        bare = asyncio.run(_bare_main(n_chargers, ports, version, steps, concurrency, connect_timeout, step_timeout))
    finally:
        batteries.stop()

    def ratio(key: str) -> float | None:
        a, b = ours.get(key), bare.get(key)
        return round(a / b, 2) if a is not None and b else None

    return {"chargers": n_chargers, "batteries": n_batteries, "ocpp": version, "steps": steps,
            "journal": "batch" if journal else "off", "ours": ours, "bare": bare,
            "ratio_p50": ratio("p50_ms"), "ratio_p99": ratio("p99_ms")}


def run_fleet_bench_part(out: TextIO, quick: bool) -> None:
    """The ``fleet`` part of ``coordinator bench`` (quick: 50 chargers + 5 batteries)."""
    n_chargers, n_batteries = (50, 5) if quick else (500, 50)
    try:
        r = run_fleet_bench(n_chargers=n_chargers, n_batteries=n_batteries)
    except Exception as exc:
        _line(out, "fleet", {"chargers": n_chargers, "batteries": n_batteries, "error": f"{type(exc).__name__}: {exc}"},
              [("ran to the end", False)])
        return
    ours, bare = r["ours"], r["bare"]
    shown = ("commands", "completed", "p50_ms", "p99_ms", "max_ms", "first_p50_ms", "first_p99_ms", "cpu_ms")
    _line(out, "fleet", {"chargers": r["chargers"], "batteries": r["batteries"], "ocpp": r["ocpp"], "steps": r["steps"],
                         "journal": r["journal"], "connect_s": ours.get("connect_s"),
                         **{k: ours.get(k) for k in shown if k in ours}, "submit_ms": ours.get("submit_ms"),
                         **({"statuses": ours["statuses"]} if "statuses" in ours else {})},
          [("every command COMPLETED", bool(ours.get("all_completed"))),
           (f"p99 <= {TARGETS['p99_ms']:g} ms", ours.get("p99_ms") is not None and ours["p99_ms"] <= TARGETS["p99_ms"])])
    _line(out, "fleet bare", {"connect_s": bare.get("connect_s"), **{k: bare.get(k) for k in shown if k in bare},
                              "ratio_p50": r["ratio_p50"], "ratio_p99": r["ratio_p99"]},
          [("bare: every command answered", bool(bare.get("all_completed"))),
           (f"ours <= {TARGETS['ratio_p99']:g}x bare (p99)",
            r["ratio_p99"] is not None and r["ratio_p99"] <= TARGETS["ratio_p99"])])
