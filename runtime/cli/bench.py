"""``coordinator bench [--quick] [--only PART]``: print performance figures (:mod:`runtime.bench`).

``coordinator bench soak --minutes N [--chargers N] [--batteries M]``: the soak (:mod:`runtime.bench.soak`):
the whole system with faults for N minutes, a progress line a minute, the whole run's figures at the end.
Exit codes: 0 it ran to the end (the figures say whether each target was met), 1 it could not run (the
error is in the figures), 2 bad options, 130 stopped early by Ctrl-C or SIGTERM (figures of the run so far).
"""

from __future__ import annotations

import argparse

from .argtypes import integer, number


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``coordinator bench``, and its ``soak`` subcommand."""
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument("--only", action="append", default=None,
                        help="run only these parts (schedule, dispatcher, throughput, latency, ocpp, startup, fleet, "
                             "site, journal, cloud); repeatable")
    sub = parser.add_subparsers(dest="bench", required=False, metavar="soak")
    soak_help = ("run the whole system with faults for a while (OCPP chargers and Modbus batteries on simulators, "
                 "a site with a schedule, the cloud router and a client); report commands/s, p99, RSS growth and "
                 "leaks")
    soak = sub.add_parser("soak", help=soak_help, description=f"{soak_help[:1].upper()}{soak_help[1:]}.")
    soak.add_argument("--minutes", type=number(0, above=True), required=True, help="how long to run (minutes)")
    soak.add_argument("--chargers", type=integer(1, 9999), default=500, help="OCPP chargers (default 500)")
    soak.add_argument("--batteries", type=integer(1, 500), default=50, help="Modbus batteries (default 50)")
    soak.add_argument("--cloud-rate", type=number(0, above=True), default=10.0,
                      help="cloud commands per second through the router (default 10)")
    soak.add_argument("--seed", type=integer(), default=1, help="seed of the faults drawn (default 1)")
    soak.add_argument("--router-restart-min", type=number(0), default=10.0,
                      help="restart the router every N minutes (default 10; 0: never, to see whether its RSS "
                           "levels off)")
    soak.add_argument("--trace-memory", action="store_true",
                      help="trace allocations after the warm-up and print where what is still held at the end "
                           "was allocated (several times slower: use it with a smaller site, e.g. --chargers 100 "
                           "--batteries 10)")
    soak.add_argument("--embedded-allocator", action="store_true",
                      help="leave glibc's mmap threshold as an embedded Site finds it (by default the soak fixes "
                           "it, as coordinator run does)")


def run(args: argparse.Namespace) -> int:
    if getattr(args, "bench", None) == "soak":
        return _soak(args)
    from runtime.bench import run_bench
    return run_bench(quick=args.quick, only=args.only)


def _soak(args: argparse.Namespace) -> int:
    import signal
    import sys

    from runtime.bench.soak import SoakOptions, print_soak, run_soak

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt   # SIGTERM stops the soak as Ctrl-C does: everything stopped, figures printed
    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        figures = run_soak(SoakOptions(minutes=args.minutes, chargers=args.chargers, batteries=args.batteries,
                                       cloud_rate=args.cloud_rate, seed=args.seed,
                                       router_restart_s=60.0 * args.router_restart_min or None,
                                       trace_memory=args.trace_memory,
                                       fix_allocator=not args.embedded_allocator), sys.stdout)
    finally:
        signal.signal(signal.SIGTERM, previous)
    print_soak(sys.stdout, figures)
    if figures.get("interrupted"):
        return 130
    return 1 if figures.get("error") else 0
