"""The ``coordinator`` command.

    coordinator demo                      a simulated site dispatching a schedule (virtual clock)
    coordinator scenario FILE [--json]    run a scenario file (TOML + CSV schedule) and report
    coordinator bench [--quick]           print performance figures (see runtime/bench.py)
    coordinator sim ocpp --count N --url ws://127.0.0.1:9000[/path]
    coordinator sim battery --port 5020 [--count N]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Sequence


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="coordinator", description=__doc__.split("\n\n")[0].strip(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    sub.add_parser("demo", help="run a simulated site dispatching a schedule, printing each command's lifecycle")
    scenario = sub.add_parser("scenario", help="run a scenario file (simulated site, virtual clock) and report")
    scenario.add_argument("path", help="scenario TOML file, e.g. scenarios/evening_peak.toml")
    scenario.add_argument("--json", action="store_true", help="print the report as JSON")
    bench = sub.add_parser("bench", help="measure and print performance figures")
    bench.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    bench.add_argument("--only", action="append", default=None,
                       help="run only these parts (schedule, throughput, startup, fleet); repeatable")
    sim = sub.add_parser("sim", help="run device simulators as a separate process")
    sim_sub = sim.add_subparsers(dest="sim", required=True, metavar="KIND")
    ocpp = sim_sub.add_parser("ocpp", help="OCPP charge point simulators (client side)")
    battery = sim_sub.add_parser("battery", help="Modbus TCP battery simulators (server side)")
    try:
        from protocols.sim.chargepoint import add_sim_ocpp_arguments
        add_sim_ocpp_arguments(ocpp)
    except ImportError:  # pragma: no cover - simulator module missing from a partial install
        pass
    try:
        from protocols.sim.battery import add_sim_battery_arguments
        add_sim_battery_arguments(battery)
    except ImportError:  # pragma: no cover
        pass
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


def _main(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.cmd == "demo":
        from .demo import run_demo
        return run_demo()
    if args.cmd == "scenario":
        from .scenario import ScenarioError, load_scenario, run_scenario
        try:
            return run_scenario(load_scenario(args.path), as_json=args.json)
        except ScenarioError as exc:
            print(f"coordinator scenario: {exc}", file=sys.stderr)
            return 2
    if args.cmd == "bench":
        from .bench import run_bench
        return run_bench(quick=args.quick, only=args.only)
    if args.cmd == "sim":
        if args.sim == "ocpp":
            from protocols.sim.chargepoint import run_sim_ocpp
            return run_sim_ocpp(args)
        from protocols.sim.battery import run_sim_battery
        return run_sim_battery(args)
    return 2  # pragma: no cover - argparse enforces the choices


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
