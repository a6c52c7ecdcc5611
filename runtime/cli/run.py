"""``coordinator run site.toml [--simulate] [--log-format text|json]``: the site as a long-running process.

Exit codes: 0 stopped by SIGTERM/SIGINT, 1 the site failed on its own, 2 bad configuration.
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="site configuration file (TOML), e.g. scenarios/site.toml")
    parser.add_argument("--simulate", action="store_true",
                        help="start every configured device as a simulator in this process (OCPP charge points "
                             "over real websockets, Modbus batteries over real TCP) instead of real hardware")
    parser.add_argument("--log-format", choices=("text", "json"), default=None,
                        help="log lines as text or as JSON objects (default: [logging] format of the file)")
    parser.add_argument("--log-level", choices=("DEBUG", "INFO", "WARNING", "ERROR"), default=None,
                        help="default: [logging] level of the file (INFO)")
    parser.add_argument("--no-tune", action="store_true",
                        help="leave the interpreter's GIL switch interval and garbage collector as they are "
                             "(by default the process raises the switch interval and freezes its start-up "
                             "objects out of the collector; see runtime.service.process)")


def run(args: argparse.Namespace) -> int:
    from runtime.config import load_site_config
    from runtime.core.errors import ConfigFileError, ConfigurationError
    from runtime.service.logs import configure_logging
    from runtime.service.process import EXIT_BAD_CONFIG, SiteProcess

    try:
        config = load_site_config(args.config)
    except ConfigFileError as exc:
        print(exc, file=sys.stderr)
        return EXIT_BAD_CONFIG
    configure_logging(args.log_format or config.logging.format, args.log_level or config.logging.level)
    try:
        process = SiteProcess(config, simulate=args.simulate, tune=not args.no_tune)
        return process.run()
    except ConfigurationError as exc:
        print(f"{args.config}: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG
