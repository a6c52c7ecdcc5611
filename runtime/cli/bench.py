"""``coordinator bench [--quick] [--only PART]``: print performance figures (:mod:`runtime.bench`)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``coordinator bench``."""
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument("--only", action="append", default=None,
                        help="run only these parts (schedule, dispatcher, throughput, latency, startup, fleet, site, "
                             "journal, cloud); repeatable")


def run(args: argparse.Namespace) -> int:
    from runtime.bench import run_bench
    return run_bench(quick=args.quick, only=args.only)
