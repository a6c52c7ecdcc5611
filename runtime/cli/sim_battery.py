"""``coordinator sim battery``: simulated Modbus TCP batteries as a process, until SIGINT or SIGTERM.

    coordinator sim battery --port 5020 --count 10 --map sunspec

Battery i listens on port+i (``--port 0``: any free port; each battery prints the line
``battery simulator <name> listening on <host>:<port> unit <id> (...)``). Exit codes: 0 clean stop,
1 the simulators could not start, 2 bad options (one line on stderr; the simulators check the
battery values: capacity and powers > 0, state of charge in 0..100). ``--control`` takes fault-injection
commands on stdin (:mod:`protocols.sim.control`).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from protocols.modbus.register_map import RegisterMap, sunspec_map
from protocols.sim.battery import BatterySim
from protocols.sim.control import battery_commands, serve_control
from runtime.core.errors import RegisterMapError

from .argtypes import integer


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Options of ``coordinator sim battery``."""
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=integer(0, 65535), default=5020,
                        help="TCP port of the first battery; battery i listens on port+i (0 = any free port; "
                             "default 5020)")
    parser.add_argument("--count", type=integer(1), default=1, help="number of batteries (default 1)")
    parser.add_argument("--map", dest="map", choices=("default", "sunspec"), default="default",
                        help="register map: the default seed map or the SunSpec profile (default: default)")
    parser.add_argument("--sunspec-control", choices=("storage", "der"), default="storage",
                        help="SunSpec: which model the link drives (the simulator serves both; default storage)")
    parser.add_argument("--device-id", type=integer(0, 254), default=1,
                        help="Modbus unit id every battery answers as, 0..254 (default 1)")
    parser.add_argument("--capacity-kwh", type=float, default=100.0,
                        help="usable energy capacity of each battery in kWh (default 100)")
    parser.add_argument("--max-charge-kw", type=float, default=50.0,
                        help="largest charging power of each battery in kW (default 50)")
    parser.add_argument("--max-discharge-kw", type=float, default=50.0,
                        help="largest discharging power of each battery in kW (default 50)")
    parser.add_argument("--soc", type=float, default=50.0,
                        help="initial state of charge in %% (0..100, default 50)")
    parser.add_argument("--control", action="store_true",
                        help="take fault-injection commands on stdin, one a line (offline N SECONDS, "
                             "silent N SECONDS); answers on stdout")
    return parser


def run(args: argparse.Namespace) -> int:
    """Run ``args.count`` simulators until SIGINT/SIGTERM; 0 on a clean stop, 1 when they cannot start."""
    if args.port != 0 and args.port + args.count - 1 > 65535:
        last = args.port + args.count - 1
        print(f"coordinator sim battery: ports {args.port}..{last} are not all valid TCP ports (at most 65535)",
              file=sys.stderr)
        return 2
    try:
        register_map = (sunspec_map(control=args.sunspec_control) if args.map == "sunspec"
                        else RegisterMap.default())
        sims = [BatterySim(args.capacity_kwh, args.max_charge_kw, args.max_discharge_kw, args.soc,
                           register_map=register_map, host=args.host,
                           port=0 if args.port == 0 else args.port + i, device_id=args.device_id,
                           name=f"battery-{i}") for i in range(args.count)]
    except (ValueError, RegisterMapError) as e:
        print(f"coordinator sim battery: {e}", file=sys.stderr)
        return 2
    return asyncio.run(_serve(sims, args.control))


async def _serve(sims: list[BatterySim], control: bool = False) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
        except (NotImplementedError, RuntimeError):  # pragma: no cover - not the main thread / Windows
            pass
    started: list[BatterySim] = []
    try:
        for sim in sims:
            await sim.start()
            started.append(sim)
            print(f"battery simulator {sim.name} listening on {sim.host}:{sim.port} unit {sim.device_id} "
                  f"({sim.register_map.describe()})", flush=True)
        print(f"{len(started)} battery simulator(s) running; Ctrl-C or SIGTERM stops them", flush=True)
        if control:
            task = loop.create_task(serve_control(lambda timed: battery_commands(sims, timed)), name="sim-control")
            try:
                await stop.wait()
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        else:
            await stop.wait()
        return 0
    except OSError as e:
        print(f"coordinator sim battery: {e}", file=sys.stderr, flush=True)
        return 1
    finally:
        for sim in started:
            await sim.stop()
        for sig in installed:
            loop.remove_signal_handler(sig)
        if started:
            print(f"stopped {len(started)} battery simulator(s)", flush=True)
