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
``bare``  a plain asyncio program with no actors, in a process of its own (``python -m runtime.bench.fleet_bare``,
          see :mod:`runtime.bench.fleet_bare`, so that it has its own heap, garbage collector and GIL as the site has): its own
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

Interpreter settings: by default ours runs as an embedded :class:`~runtime.site.Site` finds the interpreter
(CPython's defaults: 5 ms switch interval, no ``gc.freeze()``), as the bare process does. With ``tuned``, ours
runs as in a ``coordinator run`` site process: :func:`runtime.service.process.tune_interpreter` is applied
once the site has started (longer switch interval, ``gc.freeze()``) and undone at the end; the bare process
is never tuned (a plain script runs with the defaults); ``connect_s`` is measured before the settings apply.
``coordinator bench --only fleet`` prints both runs.

Figures per set-up: p50 / p99 / max latency over all steps and of the first step alone, the process's
CPU time per step (``cpu_ms``) and its garbage-collector pauses per step (``gc_ms``, longest
``gc_max_ms``); for ours also the ``submit_many`` time and the site's stop time. Targets: every command
COMPLETED, p99 <= 1 s, ours <= 1.3x bare (checked for p99 and for p50).
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from typing import Any, Callable, Sequence, TextIO

from protocols.modbus.link import ModbusBatteryLink
from protocols.ocpp.link import OcppChargerLink
from protocols.sim.fleet import fleet_ids
from runtime.core.assets import AssetSpec, BatterySpec, ChargerSpec
from runtime.core.commands import Command, CommandType
from runtime.core.events import EventType
from runtime.site import Site

from .fleet_sims import ID_PREFIX, ROOT, SimProcess, charger_args, start_batteries
from .fleet_step import GcMeter, Step, step_values
from .interpreter import interpreter
from .report import mean, ms, print_figures, summary

__all__ = ["run_fleet_bench", "run_fleet_bench_part", "fleet_specs", "connect_fleet", "TARGETS"]

TARGETS = {"p99_ms": 1000.0, "ratio_p99": 1.3}
_FINAL = ("COMPLETED", "FAILED", "TIMED_OUT", "EXPIRED", "SUPERSEDED", "REJECTED")


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


def fleet_specs(n_chargers: int, battery_ports: Sequence[int]) -> tuple[list[str], list[str], list[AssetSpec]]:
    """(charger ids, battery ids, specs) of a site with ``n_chargers`` OCPP chargers (charge point ids from
    :func:`~protocols.sim.fleet.fleet_ids`, as the charger simulator names them) and a Modbus battery per port."""
    cp_ids = fleet_ids(n_chargers, ID_PREFIX)
    chargers = [f"ev-{cp}" for cp in cp_ids]
    batteries = [f"bat-{i:03d}" for i in range(len(battery_ports))]
    specs: list[AssetSpec] = [ChargerSpec(aid, max_kw=22.0, device=OcppChargerLink(cp))
                              for aid, cp in zip(chargers, cp_ids)]
    specs += [BatterySpec(aid, max_charge_kw=50.0, max_discharge_kw=50.0,
                          device=ModbusBatteryLink("127.0.0.1", port, name=aid))
              for aid, port in zip(batteries, battery_ports)]
    return chargers, batteries, specs


def connect_fleet(site: Site, chargers: Sequence[str], batteries: Sequence[str], version: str, concurrency: int,
                  connect_timeout: float, control: bool = False,
                  on_line: Callable[[str], None] | None = None) -> tuple[SimProcess, float]:
    """Start the charger simulator process against ``site``'s central system and wait until every charger
    and every battery link is connected: (the simulator process, seconds it took). RuntimeError (naming how
    many did) after ``connect_timeout``; the simulator process is stopped then."""
    charger_set = set(chargers)
    online: set[str] = set()
    lock = threading.Lock()

    def on_connected(event: Any) -> None:  # no charger can connect before its simulator starts
        aid = event.payload.get("asset_id")
        if aid in charger_set:
            with lock:
                online.add(aid)
    unsubscribe = site.events.subscribe(EventType.ASSET_CONNECTED, on_connected)
    try:
        site.settle(timeout=30)  # every link started: its charge point id is known to the central system
        links = [site.device(aid) for aid in batteries]
        t_launch = time.perf_counter()
        sim = SimProcess("ocpp (site)", charger_args(f"ws://127.0.0.1:{site.service('ocpp').port}", len(chargers),
                                                     version, concurrency), on_line, control=control)
        try:
            deadline = time.monotonic() + connect_timeout
            while True:
                with lock:
                    n_online = len(online)
                up = sum(1 for link in links if link.connected)
                if n_online == len(chargers) and up == len(links):
                    break
                sim.check_alive()
                if time.monotonic() > deadline:
                    raise RuntimeError(f"site: {n_online} of {len(chargers)} chargers and {up} of {len(links)} "
                                       f"batteries connected within {connect_timeout:g} s; charger simulator: "
                                       f"{sim.tail(4)}")
                time.sleep(0.05)
            connect_s = round(time.perf_counter() - t_launch, 2)
            site.settle(timeout=30)  # every asset actor has seen its LinkUp
        except BaseException:
            sim.stop()
            raise
    finally:
        unsubscribe()
    return sim, connect_s


class _SiteRig:
    """Ours: a Site with N OCPP chargers (simulator process connecting to its central system) and M
    Modbus batteries."""

    def __init__(self, n_chargers: int, battery_ports: list[int], version: str, concurrency: int,
                 journal_dir: str | None) -> None:
        self.n_chargers, self.version, self.concurrency = n_chargers, version, concurrency
        self.chargers, self.batteries, specs = fleet_specs(n_chargers, battery_ports)
        self.site = Site(specs, ocpp={"port": 0}, journal_dir=journal_dir, fsync="batch")
        self.sim: SimProcess | None = None
        self.rec = _Recorder()
        self.held = 0
        self.stuck: list[str] = []
        self.disconnects: list[str] = []  # ASSET_DISCONNECTED events (a charger that dropped its connection)
        self.stopped: float | None = None
        self.lock = threading.Lock()

    def start(self, connect_timeout: float) -> dict[str, Any]:
        """Start the site and the charger simulator process; wait until every asset is connected."""
        site = self.site
        site.start()
        for et in (EventType.COMMAND_COMPLETED, EventType.COMMAND_FAILED, EventType.COMMAND_TIMED_OUT,
                   EventType.COMMAND_REJECTED, EventType.COMMAND_EXPIRED, EventType.COMMAND_SUPERSEDED,
                   EventType.COMMAND_HELD):
            site.events.subscribe(et, self.rec.on_event)

        def on_disconnected(event: Any) -> None:
            with self.lock:
                self.disconnects.append(f"{event.payload.get('asset_id')}: {event.payload.get('reason')}")
        site.events.subscribe(EventType.ASSET_DISCONNECTED, on_disconnected)
        self.sim, connect_s = connect_fleet(site, self.chargers, self.batteries, self.version, self.concurrency,
                                            connect_timeout)
        return {"connect_s": connect_s}

    def step(self, k: int, timeout: float) -> Step:
        kw_ev, kw_bat = step_values(k)
        now = datetime.now(timezone.utc)
        cmds = ([Command(f"s{k}-{aid}", aid, CommandType.SET_CHARGE_RATE, kw_ev, now) for aid in self.chargers]
                + [Command(f"s{k}-{aid}", aid, CommandType.SET_CHARGE_RATE, kw_bat, now) for aid in self.batteries])
        rec = self.rec
        rec.expect([c.command_id for c in cmds])
        with GcMeter() as gcm:
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
        return gcm.apply(Step([t - t0 for status, t in final.values() if status == "COMPLETED"], statuses, cpu_s,
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


class _BareProcess:
    """The bare program in its own process (its own heap, garbage collector and GIL, as the site has
    its process), driven step by step through JSON lines on its stdin/stdout."""

    def __init__(self, n_chargers: int, battery_ports: list[int], version: str, concurrency: int) -> None:
        import json
        import queue

        self._json = json
        cfg = json.dumps({"chargers": n_chargers, "ports": battery_ports, "version": version,
                          "concurrency": concurrency})
        self.proc = subprocess.Popen([sys.executable, "-m", "runtime.bench.fleet_bare", cfg], cwd=ROOT,
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

    def step(self, k: int, timeout: float) -> Step:
        return Step.from_tuple(self._ask({"op": "step", "k": k, "timeout": timeout}, timeout + 60))

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


def _figures(steps: list[Step], total: int) -> dict[str, Any]:
    statuses: dict[str, int] = {}
    for st in steps:
        for status, n in st.statuses.items():
            statuses[status] = statuses.get(status, 0) + n
    completed = statuses.pop("COMPLETED", 0)
    out: dict[str, Any] = {"commands": total, "completed": completed, "all_completed": completed == total,
                           **summary([st.latencies for st in steps]),
                           "cpu_ms": mean([st.cpu_s * 1000.0 for st in steps]),
                           "gc_ms": mean([st.gc_s * 1000.0 for st in steps]),
                           "gc_max_ms": ms(max((st.gc_max_s for st in steps), default=None))}
    if statuses:
        out["statuses"] = statuses
    return out


def run_fleet_bench(n_chargers: int = 500, n_batteries: int = 50, version: str = "1.6", steps: int = 5,
                    concurrency: int = 50, journal: bool = True, step_timeout: float = 45.0,
                    connect_timeout: float | None = None, tuned: bool = False) -> dict[str, Any]:
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
                sim, ports[side] = start_batteries(n_batteries)
                stack.callback(sim.stop)
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-fleet-")) if journal else None
        ours = _SiteRig(n_chargers, ports["site"], version, concurrency, tmp)
        stack.callback(ours.stop)
        ours_setup = ours.start(connect_timeout)
        setting = stack.enter_context(interpreter(tuned))  # after the site started, as the site process does
        bare = _BareProcess(n_chargers, ports["bare"], version, concurrency)
        stack.callback(bare.stop)
        bare_setup = bare.start(connect_timeout)
        ours_steps: list[Step] = []
        bare_steps: list[Step] = []
        for k in range(steps):
            first, second = ((ours, ours_steps), (bare, bare_steps)) if k % 2 == 0 else ((bare, bare_steps),
                                                                                        (ours, ours_steps))
            for rig, results in (first, second):
                results.append(rig.step(k, step_timeout))
        with ours.lock:
            disconnects = list(ours.disconnects)  # during the steps; the stop below disconnects everything
        bare.stop()
        r_ours = {**ours_setup, **_figures(ours_steps, total),
                  "submit_ms": mean([st.extra["submit_s"] * 1000.0 for st in ours_steps]),
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
            "journal": "batch" if journal else "off", "interpreter": setting, "ours": r_ours, "bare": r_bare,
            "ratio_p50": ratio("p50_ms"), "ratio_p99": ratio("p99_ms")}


def run_fleet_bench_part(out: TextIO, quick: bool) -> None:
    """The ``fleet`` part of ``coordinator bench`` (quick: 50 chargers + 5 batteries): a run with ours as an
    embedded Site, then one with ours as in the site process (see the module docstring)."""
    for tuned in (False, True):
        _fleet_run(out, quick, tuned)


def _fleet_run(out: TextIO, quick: bool, tuned: bool) -> None:
    n_chargers, n_batteries = (50, 5) if quick else (500, 50)
    try:
        r = run_fleet_bench(n_chargers=n_chargers, n_batteries=n_batteries, tuned=tuned)
    except Exception as exc:
        print_figures(out, "fleet", {"chargers": n_chargers, "batteries": n_batteries, "tuned": tuned,
                                     "error": f"{type(exc).__name__}: {exc}"}, [("ran to the end", False)])
        return
    ours, bare = r["ours"], r["bare"]
    shown = ("connect_s", "commands", "completed", "p50_ms", "p99_ms", "max_ms", "first_p50_ms", "first_p99_ms",
             "cpu_ms", "gc_ms", "gc_max_ms", "statuses", "held", "not_completed", "disconnects", "disconnected")
    print_figures(out, "fleet", {"chargers": r["chargers"], "batteries": r["batteries"], "ocpp": r["ocpp"], "steps": r["steps"],
                         "journal": r["journal"], "interpreter": r["interpreter"], **{k: ours[k] for k in shown if k in ours},
                         "submit_ms": ours.get("submit_ms"), "stop_s": ours.get("stop_s")},
          [("every command COMPLETED", bool(ours.get("all_completed"))),
           (f"p99 <= {TARGETS['p99_ms']:g} ms", ours.get("p99_ms") is not None and ours["p99_ms"] <= TARGETS["p99_ms"])])
    print_figures(out, "fleet bare", {**{k: bare[k] for k in shown if k in bare},
                              "ratio_p50": r["ratio_p50"], "ratio_p99": r["ratio_p99"]},
          [("bare: every command answered", bool(bare.get("all_completed"))),
           (f"ours <= {TARGETS['ratio_p99']:g}x bare (p99)",
            r["ratio_p99"] is not None and r["ratio_p99"] <= TARGETS["ratio_p99"]),
           (f"ours <= {TARGETS['ratio_p99']:g}x bare (p50)",
            r["ratio_p50"] is not None and r["ratio_p50"] <= TARGETS["ratio_p99"])])
