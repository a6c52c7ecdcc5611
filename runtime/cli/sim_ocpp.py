"""``coordinator sim ocpp``: simulated OCPP charge points as a process, until SIGINT or SIGTERM.

    coordinator sim ocpp --count 200 --url ws://127.0.0.1:9000 --version 1.6

The charge points are :class:`~protocols.sim.chargepoint.ChargePointSim` objects run as a fleet
(:func:`protocols.sim.fleet.run_fleet` with ``retry=True``): a charge point that cannot connect (no
central system yet, a refused handshake) is retried with exponential backoff and full jitter,
``--retry-base`` seconds doubling to ``--retry-cap``, until it connects, so the fleet may start before
its central system; one that connected and lost its connection reconnects on its own. ``--control`` takes
fault-injection commands on stdin (:mod:`protocols.sim.control`). A malformed
``--url`` is refused at once. Exit codes: 0 clean stop, 1 stopped before any charge point connected,
2 bad options (argparse's usage error, or one line on stderr naming the URL and what is wrong with it).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path
from typing import Any

from protocols.sim.control import ocpp_commands, serve_control
from protocols.sim.fleet import check_url, fleet_ids, run_fleet

from .argtypes import integer, log_level, number

log = logging.getLogger("protocols.sim.chargepoint")

_UNITS = ["W", "A", "A,W"]


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Options of ``coordinator sim ocpp``."""
    parser.add_argument("--count", type=integer(1), default=1, help="number of charge points (default 1)")
    parser.add_argument("--url", default="ws://127.0.0.1:9000",
                        help="central system URL, ws:// or wss://; each charge point connects to <url>/<id> "
                             "(default ws://127.0.0.1:9000)")
    parser.add_argument("--version", choices=["1.6", "2.0.1"], default="1.6", help="OCPP version (default 1.6)")
    parser.add_argument("--id-prefix", default="CP", help="charge point ids are <prefix>0001.. (default CP)")
    parser.add_argument("--max-kw", type=number(0), default=22.0, help="power of each charger in kW (default 22)")
    parser.add_argument("--accepted-unit", choices=_UNITS, default="W", metavar="UNIT",
                        help="charging rate unit the chargers accept in profiles: W, A, or A,W for both "
                             "(default W)")
    parser.add_argument("--password", default=None, help="HTTP Basic password (security profiles 1 and 2)")
    parser.add_argument("--ca-cert", default=None, metavar="FILE",
                        help="PEM CA certificate(s) the central system's certificate must chain to (wss:// urls; "
                             "default: the system's trust store)")
    parser.add_argument("--client-cert", default=None, metavar="PATTERN",
                        help="each charge point's own PEM certificate (security profile 3); {id} in the path is "
                             "replaced by its id, e.g. certs/{id}.pem")
    parser.add_argument("--client-key", default=None, metavar="PATTERN",
                        help="the private key of each --client-cert (default: in the certificate file)")
    parser.add_argument("--meter-interval", type=number(0), default=60.0,
                        help="seconds between periodic MeterValues, 0 = only on change (default 60)")
    parser.add_argument("--plug-in", action="store_true", help="plug an EV into every charger after boot")
    parser.add_argument("--start-transactions", action="store_true", help="start a transaction on every charger")
    parser.add_argument("--concurrency", type=integer(1), default=50,
                        help="simultaneous connection handshakes (default 50)")
    parser.add_argument("--no-validation", action="store_true", help="skip JSON-schema validation (faster)")
    parser.add_argument("--delay", type=number(0), default=0.0,
                        help="answer every call after this many seconds (default 0)")
    parser.add_argument("--retry-base", type=number(0, above=True), default=0.5, metavar="SECONDS",
                        help="a charger that could not connect retries within this many seconds, the window "
                             "doubling per failed attempt (random wait in it: full jitter; default 0.5)")
    parser.add_argument("--retry-cap", type=number(0, above=True), default=30.0, metavar="SECONDS",
                        help="the longest retry window in seconds (default 30)")
    parser.add_argument("--control", action="store_true",
                        help="take fault-injection commands on stdin, one a line (outage ID SECONDS, fault ID, "
                             "clear ID, reboot ID); answers on stdout")
    parser.add_argument("--log-level", type=log_level, default=None, metavar="LEVEL",
                        help="DEBUG, INFO, WARNING or ERROR (default: WARNING, INFO with coordinator -v)")
    return parser


def _tls_files(args: argparse.Namespace, cp_id: str) -> dict[str, str]:
    """The TLS keyword arguments of charge point ``cp_id``: the CA, and its own certificate and key."""
    files = {"ca_cert": args.ca_cert, "client_cert": args.client_cert, "client_key": args.client_key}
    return {key: value.replace("{id}", cp_id) for key, value in files.items() if value is not None}


def _tls_problem(args: argparse.Namespace) -> str | None:
    """Why the TLS options cannot work (checked for the first charge point), or None."""
    if not (args.ca_cert or args.client_cert or args.client_key):
        return None
    if not args.url.startswith("wss://"):
        return f"--ca-cert / --client-cert need a wss:// --url, got {args.url!r}"
    if args.client_key and not args.client_cert:
        return "--client-key: give --client-cert too"
    first = fleet_ids(args.count, args.id_prefix)[0]
    for option, path in _tls_files(args, first).items():
        if not Path(path).is_file():
            return f"--{option.replace('_', '-')} {path!r} (for charge point {first}): no such file"
    return None


def run(args: argparse.Namespace) -> int:
    """Run the fleet described by ``args`` until SIGINT/SIGTERM; 0 on a clean stop, 1 if none connected,
    2 (one line on stderr) for a malformed URL or retry window."""
    try:
        check_url(args.url)
    except ValueError as exc:
        print(f"coordinator sim ocpp: --url {args.url!r} is malformed: {exc}", file=sys.stderr)
        return 2
    problem = _tls_problem(args)
    if problem:
        print(f"coordinator sim ocpp: {problem}", file=sys.stderr)
        return 2
    if args.retry_cap < args.retry_base:
        print(f"coordinator sim ocpp: --retry-cap ({args.retry_cap:g} s) must be >= --retry-base "
              f"({args.retry_base:g} s)", file=sys.stderr)
        return 2
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=args.log_level or logging.INFO,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    elif args.log_level is not None:
        root.setLevel(args.log_level)
    logging.getLogger("protocols.sim.wire").setLevel(logging.WARNING)  # one line per OCPP frame otherwise

    async def go() -> int:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, stop.set)
            except (NotImplementedError, RuntimeError):  # pragma: no cover - non-main thread / Windows
                pass
        sims: list[Any] = []
        control = (loop.create_task(serve_control(lambda timed: ocpp_commands(lambda: sims, timed)),
                                    name="sim-control") if args.control else None)
        try:
            fleet = await run_fleet(
                args.url, args.count, args.version, args.id_prefix, stop=stop, retry=True,
                retry_base=args.retry_base, retry_cap=args.retry_cap, max_kw=args.max_kw,
                accepted_unit=args.accepted_unit, password=args.password, meter_interval=args.meter_interval,
                plug_in=args.plug_in, start_transactions=args.start_transactions, concurrency=args.concurrency,
                validate=not args.no_validation, delay=args.delay, auto_reconnect=True,
                per_charge_point=lambda cp_id: _tls_files(args, cp_id), on_fleet=lambda f: sims.extend(f.order))
        finally:
            if control is not None:
                control.cancel()
                await asyncio.gather(control, return_exceptions=True)
            for sig in (signal.SIGINT, signal.SIGTERM):
                try:
                    loop.remove_signal_handler(sig)
                except (NotImplementedError, RuntimeError):  # pragma: no cover
                    pass
        # "connected" is what each simulator did, not the start round's bookkeeping: a stop that comes while
        # the round is still being counted (the central system already has them online) is a clean stop
        connected = sum(1 for sim in fleet.order if sim.connects)
        log.info("OCPP fleet stopped (%d of %d charge points had connected)", connected, len(fleet.order))
        return 0 if connected else 1

    return asyncio.run(go())
