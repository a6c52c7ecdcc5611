"""``coordinator sim ocpp``: simulated OCPP charge points as a process, until SIGINT or SIGTERM.

    coordinator sim ocpp --count 200 --url ws://127.0.0.1:9000 --version 1.6

The charge points are :class:`~protocols.sim.chargepoint.ChargePointSim` objects run as a fleet
(:mod:`protocols.sim.fleet`). Exit codes: 0 clean stop, 1 no charge point started, 2 bad options.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal

from protocols.sim.fleet import run_fleet

log = logging.getLogger("protocols.sim.chargepoint")


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Options of ``coordinator sim ocpp``."""
    parser.add_argument("--count", type=int, default=1, help="number of charge points (default 1)")
    parser.add_argument("--url", default="ws://127.0.0.1:9000",
                        help="central system URL; each charge point connects to <url>/<id>")
    parser.add_argument("--version", choices=["1.6", "2.0.1"], default="1.6", help="OCPP version (default 1.6)")
    parser.add_argument("--id-prefix", default="CP", help="charge point ids are <prefix>0001.. (default CP)")
    parser.add_argument("--max-kw", type=float, default=22.0, help="power of each charger (default 22)")
    parser.add_argument("--accepted-unit", choices=["W", "A", "A,W"], default="W",
                        help="charging rate unit the chargers accept (default W)")
    parser.add_argument("--password", default=None, help="HTTP Basic password (security profile 1)")
    parser.add_argument("--meter-interval", type=float, default=60.0,
                        help="seconds between periodic MeterValues, 0 = only on change (default 60)")
    parser.add_argument("--plug-in", action="store_true", help="plug an EV into every charger after boot")
    parser.add_argument("--start-transactions", action="store_true", help="start a transaction on every charger")
    parser.add_argument("--concurrency", type=int, default=50, help="simultaneous connection handshakes (default 50)")
    parser.add_argument("--no-validation", action="store_true", help="skip JSON-schema validation (faster)")
    parser.add_argument("--delay", type=float, default=0.0, help="answer every call after this many seconds")
    parser.add_argument("--log-level", default=None,
                        help="logging level, e.g. INFO or WARNING (default: INFO, or what the caller configured)")
    return parser


def run(args: argparse.Namespace) -> int:
    """Run the fleet described by ``args`` until SIGINT/SIGTERM; 0 on a clean stop, 1 if none started."""
    if args.count < 1:
        print("sim ocpp: --count must be >= 1")
        return 2
    level = getattr(logging, str(args.log_level).upper(), logging.INFO) if args.log_level else None
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=level or logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    elif level is not None:
        root.setLevel(level)
    logging.getLogger("protocols.sim.wire").setLevel(logging.WARNING)  # one line per OCPP frame otherwise

    async def go() -> int:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, stop.set)
            except (NotImplementedError, RuntimeError):  # pragma: no cover - non-main thread / Windows
                pass
        try:
            fleet = await run_fleet(
                args.url, args.count, args.version, args.id_prefix, stop=stop, max_kw=args.max_kw,
                accepted_unit=args.accepted_unit, password=args.password, meter_interval=args.meter_interval,
                plug_in=args.plug_in, start_transactions=args.start_transactions, concurrency=args.concurrency,
                validate=not args.no_validation, delay=args.delay, auto_reconnect=True)
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                try:
                    loop.remove_signal_handler(sig)
                except (NotImplementedError, RuntimeError):  # pragma: no cover
                    pass
        log.info("OCPP fleet stopped (%d charge points)", len(fleet))
        return 0 if len(fleet) else 1

    return asyncio.run(go())
