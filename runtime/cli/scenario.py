"""``coordinator scenario FILE``: run a scenario file and report (:mod:`runtime.scenario`).

A progress bar on stderr while it runs (when stderr is a terminal and the output is not JSON), then the
summary tables (or ``--json``). ``--report [DIR]`` writes the report folder (default ``reports/NAME/``
in the current directory): the journal, setpoints.csv, plot.png, summary.json.

Exit codes: 0 every expectation met, 1 one was not, 2 the file cannot be run (one line per problem on
stderr, never a traceback).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .argtypes import integer

#: ``--report`` without a folder: ``reports/<scenario file name>/`` in the current directory.
DEFAULT_REPORT = object()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``coordinator scenario``."""
    parser.add_argument("path", help="scenario TOML file, e.g. scenarios/evening_peak.toml")
    parser.add_argument("--json", action="store_true", help="print the report as JSON (no progress bar)")
    parser.add_argument("--report", nargs="?", const=DEFAULT_REPORT, default=None, metavar="DIR",
                        help="write a report folder: the journal, setpoints.csv, plot.png, summary.json "
                             "(default DIR: reports/NAME/ in the current directory)")
    parser.add_argument("--seed", type=integer(0), default=None,
                        help="seed of the retry jitter (default: the file's seed, else 0)")
    parser.add_argument("--devices", choices=("memory", "sim"), default=None,
                        help="in-memory devices, or the OCPP/Modbus simulators over real sockets "
                             "(default: the file's devices, else memory)")
    parser.add_argument("--realtime", action="store_true",
                        help="run on the wall clock instead of a virtual one (a scenario of N s takes N s)")


def run(args: argparse.Namespace) -> int:
    from runtime.core.errors import CoordinatorError, ScenarioError
    from runtime.scenario import load_scenario, run_scenario
    try:
        scenario = load_scenario(args.path)
        report = args.report
        if report is DEFAULT_REPORT:
            report = Path("reports") / scenario.slug
        result = run_scenario(scenario, report_dir=report, seed=args.seed, realtime=args.realtime,
                              as_json=args.json, devices=args.devices)
    except ScenarioError as exc:
        print(f"coordinator scenario: {exc}".replace("\n", "\ncoordinator scenario: "), file=sys.stderr)
        return 2
    except CoordinatorError as exc:  # a device or configuration the run could not start with
        print(f"coordinator scenario: {args.path}: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the report folder cannot be written
        print(f"coordinator scenario: {args.path}: {exc.strerror or exc} ({exc.filename or ''})", file=sys.stderr)
        return 2
    return result.exit_code
