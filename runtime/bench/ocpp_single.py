"""``coordinator bench --only ocpp``: one SetChargingProfile at a time, ours against a bare call, same process.

Both sides talk to a :class:`~protocols.sim.chargepoint.ChargePointSim` (OCPP 1.6, one per side, on an I/O
thread of its own, as a device elsewhere would be) over a real websocket on 127.0.0.1:

``ours``  a :class:`~runtime.site.Site` with one charger on an :class:`~protocols.ocpp.link.OcppChargerLink`;
          a command is ``SET_CHARGE_RATE`` through ``submit_many``, and its latency runs from that call to a
          subscriber seeing COMMAND_COMPLETED (dispatcher, journal with fsync "never", asset actor, link,
          the charger's answer, the event actor).
``bare``  the ``ocpp`` library's own central-system ``ChargePoint`` (the fleet benchmark's bare class) on a
          loop thread; a call is the same SetChargingProfile (the same builder), timed from the caller's
          thread to its answer.

The two alternate in blocks of ``block`` calls, so whatever else loads the machine weighs on both alike.
Target: ours at most 1.5x bare at p50 and p99.
"""

from __future__ import annotations

import asyncio
import tempfile
import threading
import time
from typing import Any

from .report import percentile

__all__ = ["bench_ocpp_single", "TARGET_RATIO"]

TARGET_RATIO = 1.5


def _ms(values: list[float], q: float) -> float:
    return round(1000 * (percentile(values, q) or 0.0), 3)


def bench_ocpp_single(samples: int = 300, warmup: int = 20, block: int = 25) -> dict[str, Any]:
    """See the module docstring. Every simulator, loop and the site are stopped before it returns."""
    from protocols.ocpp.link import OcppChargerLink
    from protocols.sim.chargepoint import ChargePointSim
    from protocols.sim.fleet import stop_on
    from runtime.core.assets import ChargerSpec
    from runtime.core.commands import Command, CommandType
    from runtime.core.events import Event, EventType
    from runtime.core.iothread import IOThread
    from runtime.site import Site

    from .fleet_bare import bare_charge_point_classes, bare_profile

    sims = IOThread(name="bench-ocpp-sims").start()
    bare_loop = asyncio.new_event_loop()
    bare_thread = threading.Thread(target=bare_loop.run_forever, name="bench-ocpp-bare", daemon=True)
    bare_thread.start()
    done = threading.Event()
    wanted = [""]

    def on_completed(event: Event) -> None:
        if event.payload.get("command_id") == wanted[0]:
            done.set()

    registry: dict[str, Any] = {}
    ready = threading.Event()
    server: Any = None
    started: list[Any] = []
    ours: list[float] = []
    bare: list[float] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            site = Site([ChargerSpec("ev-1", max_kw=22.0, device=OcppChargerLink("CP1"))], ocpp={"port": 0},
                        journal_dir=tmp, fsync="never")
            with site:
                site.events.subscribe(EventType.COMMAND_COMPLETED, on_completed)
                ours_sim = ChargePointSim("CP1", site.service("ocpp").url, "1.6", max_kw=22.0, meter_interval=0)
                sims.call(ours_sim.start(), timeout=20)
                started.append(ours_sim)

                cls = bare_charge_point_classes()["1.6"]
                cls.ready = staticmethod(lambda cp_id: ready.set())

                async def handler(ws: Any) -> None:
                    cp = cls(ws.request.path.rstrip("/").rsplit("/", 1)[-1], ws)
                    registry["cp"] = cp
                    try:
                        await cp.start()
                    except Exception:  # the simulator went away at the end
                        pass

                async def serve() -> Any:
                    from websockets.asyncio.server import serve as ws_serve
                    return await ws_serve(handler, "127.0.0.1", 0,
                                          subprotocols=["ocpp1.6"])  # type: ignore[list-item]

                server = asyncio.run_coroutine_threadsafe(serve(), bare_loop).result(10)
                port = server.sockets[0].getsockname()[1]
                bare_sim = ChargePointSim("CP2", f"ws://127.0.0.1:{port}", "1.6", max_kw=22.0, meter_interval=0)
                sims.call(bare_sim.start(), timeout=20)
                started.append(bare_sim)
                deadline = time.monotonic() + 30
                while not (site.asset_status("ev-1").link == "up" and ready.is_set()):
                    if time.monotonic() > deadline:
                        raise RuntimeError("bench ocpp: the simulated chargers did not connect within 30 s")
                    time.sleep(0.02)

                def one_ours(j: int) -> float | None:
                    command = Command(f"ocpp-{j}", "ev-1", CommandType.SET_CHARGE_RATE, float(6 + j % 16),
                                      site.clock.now())
                    wanted[0] = command.command_id
                    done.clear()
                    t0 = time.perf_counter()
                    site.submit_many((command,))
                    return time.perf_counter() - t0 if done.wait(10) else None

                def one_bare(j: int) -> float | None:
                    cp = registry["cp"]
                    t0 = time.perf_counter()
                    asyncio.run_coroutine_threadsafe(cp.call(bare_profile("1.6", float(6 + j % 16))),
                                                     bare_loop).result(10)
                    return time.perf_counter() - t0

                j = 0
                while len(ours) < samples or len(bare) < samples:
                    for fn, into in ((one_ours, ours), (one_bare, bare)):
                        for _ in range(block):
                            got = fn(j)
                            j += 1
                            if got is not None and j > warmup:
                                into.append(got)
    finally:
        stop_on(sims, started)
        if server is not None:
            server.close()
            asyncio.run_coroutine_threadsafe(server.wait_closed(), bare_loop).result(10)
        bare_loop.call_soon_threadsafe(bare_loop.stop)
        bare_thread.join(10)
        bare_loop.close()
    r = {"samples": min(len(ours), len(bare)), "ours_p50_ms": _ms(ours, 0.5), "ours_p99_ms": _ms(ours, 0.99),
         "bare_p50_ms": _ms(bare, 0.5), "bare_p99_ms": _ms(bare, 0.99)}
    r["ratio_p50"] = round(r["ours_p50_ms"] / r["bare_p50_ms"], 2) if r["bare_p50_ms"] else None
    r["ratio_p99"] = round(r["ours_p99_ms"] / r["bare_p99_ms"], 2) if r["bare_p99_ms"] else None
    return r
