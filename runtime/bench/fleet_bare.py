"""The fleet benchmark's reference: a bare ocpp + pymodbus program with no actors, in its own process.

``python -m runtime.bench.fleet_bare '<json config>'`` (started by :mod:`runtime.bench.fleet`): its own
OCPP central system (``ocpp`` + ``websockets``: BootNotification, StatusNotification, Heartbeat,
MeterValues) and one pymodbus ``AsyncModbusTcpClient`` per battery. A step sends every charger the
SetChargingProfile our link sends (the same builder: TxDefaultProfile, W, Absolute, connector 1) and
every battery the link's write + read-back (40001/40002), all at once. It is driven by JSON lines on
stdin and answers on stdout. It imports only the libraries, the profile builder and the step record.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import threading
import time
from datetime import datetime, timezone
from typing import Any, Callable, Sequence

from protocols.ocpp.profiles import charging_limit, set_charging_profile
from protocols.ocpp.timestamps import ocpp_timestamp

from .fleet_sims import SimProcess, charger_args
from .fleet_step import GcMeter, Step, step_values

__all__ = ["BareRig", "bare_worker"]


def bare_charge_point_classes() -> dict[str, type]:
    from ocpp.routing import after, on
    from ocpp.v16 import ChargePoint as CP16, call_result as r16
    from ocpp.v16.enums import Action as A16
    from ocpp.v201 import ChargePoint as CP201, call_result as r201
    from ocpp.v201.enums import Action as A201

    class Bare16(CP16):
        ready: Callable[[str], None] = staticmethod(lambda cp_id: None)

        @on(A16.boot_notification)
        def on_boot(self, **_: Any) -> Any:
            return r16.BootNotification(current_time=ocpp_timestamp(), interval=300, status="Accepted")

        @on(A16.status_notification)
        def on_status(self, **_: Any) -> Any:
            return r16.StatusNotification()

        @after(A16.status_notification)
        def after_status(self, **_: Any) -> None:
            self.ready(self.id)

        @on(A16.heartbeat)
        def on_heartbeat(self, **_: Any) -> Any:
            return r16.Heartbeat(current_time=ocpp_timestamp())

        @on(A16.meter_values)
        def on_meter_values(self, **_: Any) -> Any:
            return r16.MeterValues()

    class Bare201(CP201):
        ready: Callable[[str], None] = staticmethod(lambda cp_id: None)

        @on(A201.boot_notification)
        def on_boot(self, **_: Any) -> Any:
            return r201.BootNotification(current_time=ocpp_timestamp(), interval=300, status="Accepted")

        @on(A201.status_notification)
        def on_status(self, **_: Any) -> Any:
            return r201.StatusNotification()

        @after(A201.status_notification)
        def after_status(self, **_: Any) -> None:
            self.ready(self.id)

        @on(A201.heartbeat)
        def on_heartbeat(self, **_: Any) -> Any:
            return r201.Heartbeat(current_time=ocpp_timestamp())

        @on(A201.meter_values)
        def on_meter_values(self, **_: Any) -> Any:
            return r201.MeterValues()

    return {"1.6": Bare16, "2.0.1": Bare201}


def bare_profile(version: str, kw: float) -> Any:
    """The SetChargingProfile the OCPP charger link sends for SET_CHARGE_RATE on an idle charger,
    from the same builder."""
    return set_charging_profile(version, target=1, profile_id=1, purpose="TxDefaultProfile",
                                limit=charging_limit(kw, "W"), unit="W", kind="Absolute", stack_level=0,
                                start_schedule=datetime.now(timezone.utc))


class BareRig:
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
        self.sim: SimProcess | None = None
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

        cls = bare_charge_point_classes()[self.version]
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
        self.sim = await asyncio.to_thread(SimProcess, "ocpp (bare)", charger_args(
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

    def step(self, k: int, timeout: float) -> Step:
        with GcMeter() as gcm:
            return gcm.apply(self._run(self._step(k, timeout), timeout + 30))

    async def _step(self, k: int, timeout: float) -> Step:
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

        kw_ev, kw_bat = step_values(k)
        c0 = time.process_time()
        t0 = time.perf_counter()
        payload = bare_profile(self.version, kw_ev)
        results = await asyncio.gather(*([charger(cp, payload, t0) for cp in self.cps]
                                         + [battery(c, kw_bat, t0) for c in self.clients]))
        cpu_s = time.process_time() - c0
        statuses: dict[str, int] = {}
        for status, _ in results:
            statuses[status] = statuses.get(status, 0) + 1
        return Step([t for status, t in results if status == "COMPLETED"], statuses, cpu_s, {})

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


def bare_worker(argv: Sequence[str]) -> int:
    """``python -m runtime.bench.fleet_bare '<json config>'``: the bare process. Runs a
    :class:`_BareRig` on JSON-line requests on stdin, answers JSON lines on stdout; stops at "stop"
    or when stdin closes (the parent is gone)."""
    import json

    import ocpp.messages

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the parent stops this process in order
    # the same library setting as our CentralSystem (inline_validation=True): both sides validate every
    # message against the schema, in the same way
    ocpp.messages.ASYNC_VALIDATION = False
    cfg = json.loads(argv[0])
    rig = BareRig(int(cfg["chargers"]), [int(p) for p in cfg["ports"]], str(cfg["version"]), int(cfg["concurrency"]))
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


if __name__ == "__main__":
    if len(sys.argv) == 2:
        sys.exit(bare_worker(sys.argv[1:]))
    print("usage: python -m runtime.bench.fleet_bare '<json config>' (started by the fleet benchmark)",
          file=sys.stderr)
    sys.exit(2)
