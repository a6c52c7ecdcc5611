"""The ``coordinator`` command: one module per subcommand.

    coordinator demo                      a simulated site dispatching a schedule (virtual clock)
    coordinator scenario FILE [--json]    run a scenario file (TOML + CSV schedule) and report
    coordinator bench [--quick]           print performance figures
    coordinator run site.toml [--simulate]   the site as a process, until SIGTERM/SIGINT
    coordinator check site.toml [--connect]  validate a site file (and probe its devices)
    coordinator sim ocpp --count N --url ws://127.0.0.1:9000[/path]
    coordinator sim battery --port 5020 [--count N]
    coordinator --version                 coordinator <version of the installed package>

Each subcommand module (:mod:`.demo`, :mod:`.scenario`, :mod:`.bench`, :mod:`.run`, :mod:`.check`,
:mod:`.sim_ocpp`, :mod:`.sim_battery`) has ``add_arguments(parser)`` and ``run(args) -> int`` (the exit code: 0 done,
1 a check or run failed, 2 bad input: argparse's usage error or one line on stderr, never a traceback);
option value types they share are in :mod:`.argtypes`. Modules are imported only when their subcommand
runs. The ``--help`` texts are plain (``DESCRIPTION``, ``EPILOG`` and each command's help), not this
docstring: reST markup does not belong in a terminal.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import logging
import os
import sys
from pathlib import Path
from typing import Any, Sequence

__all__ = ["main", "build_parser", "version"]

#: The ``--help`` texts: plain text, no markup.
DESCRIPTION = ("Site coordination runtime: turns energy schedules and operator commands into OCPP and\n"
               "Modbus device commands, tracked to a final state.")
EPILOG = """examples:
  coordinator demo                      a simulated site dispatching a schedule (virtual clock)
  coordinator scenario FILE [--json]    run a scenario file (TOML + CSV schedule) and report
  coordinator bench [--quick]           print performance figures
  coordinator run scenarios/site.toml --simulate    a live site with simulated devices
  coordinator check site.toml --connect              validate a site file and probe its devices
  coordinator sim ocpp --count 10 --url ws://127.0.0.1:9000
  coordinator sim battery --port 5020 --count 2

exit codes: 0 done, 1 a check or run failed, 2 bad input."""
#: The installed distribution whose version ``--version`` prints.
DISTRIBUTION = "qubit-energy-coordinator"

#: subcommand -> (module, help); "sim" has kinds of its own.
_COMMANDS = {
    "demo": ("demo", "run a simulated site dispatching a schedule, printing each command's lifecycle"),
    "scenario": ("scenario", "run a scenario file (simulated site, virtual clock) and report"),
    "bench": ("bench", "measure and print performance figures"),
    "run": ("run", "run a configured site as a long-running process (until SIGTERM/SIGINT)"),
    "check": ("check", "validate a site configuration file; --connect also probes each device"),
    "router": ("router", "run the cloud command router (edges' and operators' websockets, REST, audit)"),
    "token": ("token", "mint tokens and edge credentials for the router (development and tests)"),
    "audit": ("audit", "query the router's audit log (table, JSON or CSV)"),
}
_SIM_KINDS = {
    "ocpp": ("sim_ocpp", "OCPP charge point simulators (client side)"),
    "battery": ("sim_battery", "Modbus TCP battery simulators (server side)"),
}


def _module(name: str):  # type: ignore[no-untyped-def]
    return importlib.import_module(f"{__name__}.{name}")


def version() -> str:
    """The version of the installed distribution (``importlib.metadata``); run from a source tree that is not
    installed, the version in its ``pyproject.toml`` marked ``(not installed)``; else ``unknown``."""
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        pass
    try:
        import tomllib
        pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
        project = tomllib.loads(pyproject.read_text(encoding="utf-8")).get("project", {})
        if project.get("name") == DISTRIBUTION and project.get("version"):
            return f"{project['version']} (not installed)"
    except (OSError, ValueError):
        pass
    return "unknown"


class _VersionAction(argparse.Action):
    """``--version``: print ``coordinator <version>`` and exit 0; the metadata is read only when asked."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, **kw: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kw)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        print(f"{parser.prog} {version()}")
        parser.exit(0)


def build_parser() -> argparse.ArgumentParser:
    """The whole ``coordinator`` argument parser."""
    parser = argparse.ArgumentParser(prog="coordinator", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action=_VersionAction, help="print the version and exit")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    for name, (module, help_text) in _COMMANDS.items():
        _module(module).add_arguments(sub.add_parser(name, help=help_text, description=_sentence(help_text)))
    sim_help = "run device simulators as a separate process"
    sim = sub.add_parser("sim", help=sim_help, description=_sentence(sim_help))
    sim_sub = sim.add_subparsers(dest="sim", required=True, metavar="KIND")
    for name, (module, help_text) in _SIM_KINDS.items():
        _module(module).add_arguments(sim_sub.add_parser(name, help=help_text, description=_sentence(help_text)))
    return parser


def _sentence(text: str) -> str:
    """A command's one-line help as the description atop its own ``--help``: capitalized, with a full stop."""
    return f"{text[:1].upper()}{text[1:]}."


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
