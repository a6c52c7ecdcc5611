"""``coordinator router --config router.toml [--host H] [--port P]``: the cloud command router, until
SIGTERM/SIGINT.

Prints ``router <instance> listening on http://<host>:<port>`` on stderr once it accepts connections (the port
is the bound one when 0 was asked). Exit codes: 0 stopped by SIGTERM/SIGINT, 1 it could not start (port
taken, Redis or PostgreSQL unreachable), 2 bad configuration (each problem on its own line).
"""

from __future__ import annotations

import argparse
import sys

from .argtypes import integer


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, metavar="FILE", help="router configuration file (TOML)")
    parser.add_argument("--host", default=None, help="listen address (default: [listen] host)")
    parser.add_argument("--port", type=integer(0, 65535), default=None,
                        help="listen port (default: [listen] port; 0: any free port)")


def run(args: argparse.Namespace) -> int:
    from runtime.core.errors import ConfigFileError, ConfigurationError
    from runtime.router.config import load_router_config

    try:
        config = load_router_config(args.config)
    except ConfigFileError as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.port is not None or args.host is not None:
        listen = config.listen.model_copy(update={k: v for k, v in (("port", args.port), ("host", args.host))
                                                  if v is not None})
        config = config.model_copy(update={"listen": listen})
    from runtime.router.server import RouterServer
    try:
        server = RouterServer(config, on_started=lambda s: print(
            f"router {s.config.instance()} listening on {s.url}", file=sys.stderr, flush=True))
    except ConfigurationError as exc:
        print(f"{args.config}: {exc}", file=sys.stderr)
        return 2
    return server.run()
