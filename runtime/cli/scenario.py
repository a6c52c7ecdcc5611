"""``coordinator scenario FILE [--json]``: run a scenario file and report (:mod:`runtime.scenario`).

Exit codes: 0 every expectation met, 1 one was not, 2 the file cannot be run (one line on stderr).
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``coordinator scenario``."""
    parser.add_argument("path", help="scenario TOML file, e.g. scenarios/evening_peak.toml")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args: argparse.Namespace) -> int:
    from runtime.core.errors import ScenarioError
    from runtime.scenario import load_scenario, run_scenario
    try:
        return run_scenario(load_scenario(args.path), as_json=args.json)
    except ScenarioError as exc:
        print(f"coordinator scenario: {exc}", file=sys.stderr)
        return 2
    except (OSError, UnicodeDecodeError) as exc:  # a directory, an unreadable or a binary file
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        print(f"coordinator scenario: {args.path}: cannot read it ({why})", file=sys.stderr)
        return 2
