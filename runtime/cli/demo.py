"""``coordinator demo``: the built-in demo (:mod:`runtime.demo`)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """No options."""


def run(args: argparse.Namespace) -> int:
    from runtime.demo import run_demo
    return run_demo()
