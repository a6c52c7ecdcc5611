"""``coordinator check site.toml [--connect] [--wait SECONDS]``: validate a site configuration.

Exit codes: 0 valid (and, with --connect, every device reachable), 1 a device did not answer, 2 the
file has problems (each printed on its own line, all at once).
"""

from __future__ import annotations

import argparse
import sys

from .argtypes import number


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="site configuration file (TOML)")
    parser.add_argument("--connect", action="store_true",
                        help="also probe each device once and print a table: asset, address, reachable, answer")
    parser.add_argument("--wait", type=number(0.0, above=True), default=10.0, metavar="SECONDS",
                        help="with --connect: how long to wait for OCPP chargers to connect (default 10)")


def run(args: argparse.Namespace) -> int:
    import asyncio

    from runtime.config import load_site_config
    from runtime.config.build import ocpp_options, site_options
    from runtime.core.errors import ConfigFileError, ConfigurationError
    from runtime.service.check import describe, print_probes, probe_devices

    try:
        config = load_site_config(args.config)
        site_options(config), ocpp_options(config)  # the checks that need more than one key
    except ConfigFileError as exc:
        print(exc, file=sys.stderr)
        return 2
    except ConfigurationError as exc:
        print(f"{args.config}: {exc}", file=sys.stderr)
        return 2
    describe(config, sys.stdout)
    if not args.connect:
        print(f"{args.config}: valid", file=sys.stdout)
        return 0
    probes = asyncio.run(probe_devices(config, wait_s=args.wait))
    print_probes(probes, sys.stdout)
    return 0 if all(p.reachable for p in probes) else 1
