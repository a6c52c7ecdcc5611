"""The ``coordinator`` command: one module per subcommand.

    coordinator demo                      a simulated site dispatching a schedule (virtual clock)
    coordinator scenario FILE [--json]    run a scenario file (TOML + CSV schedule) and report
    coordinator bench [--quick]           print performance figures
    coordinator sim ocpp --count N --url ws://127.0.0.1:9000[/path]
    coordinator sim battery --port 5020 [--count N]

Each subcommand module (:mod:`.demo`, :mod:`.scenario`, :mod:`.bench`, :mod:`.sim_ocpp`,
:mod:`.sim_battery`) has ``add_arguments(parser)`` and ``run(args) -> int`` (the exit code: 0 done,
1 a check or run failed, 2 bad input). Modules are imported only when their subcommand runs.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from typing import Sequence

__all__ = ["main", "build_parser"]

#: subcommand -> (module, help); "sim" has kinds of its own.
_COMMANDS = {
    "demo": ("demo", "run a simulated site dispatching a schedule, printing each command's lifecycle"),
    "scenario": ("scenario", "run a scenario file (simulated site, virtual clock) and report"),
    "bench": ("bench", "measure and print performance figures"),
}
_SIM_KINDS = {
    "ocpp": ("sim_ocpp", "OCPP charge point simulators (client side)"),
    "battery": ("sim_battery", "Modbus TCP battery simulators (server side)"),
}


def _module(name: str):  # type: ignore[no-untyped-def]
    return importlib.import_module(f"{__name__}.{name}")


def build_parser() -> argparse.ArgumentParser:
    """The whole ``coordinator`` argument parser."""
    parser = argparse.ArgumentParser(prog="coordinator", description=__doc__.split("\n\n")[0].strip(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    for name, (module, help_text) in _COMMANDS.items():
        _module(module).add_arguments(sub.add_parser(name, help=help_text))
    sim = sub.add_parser("sim", help="run device simulators as a separate process")
    sim_sub = sim.add_subparsers(dest="sim", required=True, metavar="KIND")
    for name, (module, help_text) in _SIM_KINDS.items():
        _module(module).add_arguments(sim_sub.add_parser(name, help=help_text))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    try:
        return _main(argv)
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    module = _SIM_KINDS[args.sim][0] if args.cmd == "sim" else _COMMANDS[args.cmd][0]
    return int(_module(module).run(args))
