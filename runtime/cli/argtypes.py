"""Option value types for the subcommands: bad values are argparse errors (usage, one error line, exit 2)
instead of a traceback or a simulator that starts and then idles on a value that can never work."""

from __future__ import annotations

import argparse
import logging
import math
from typing import Callable

__all__ = ["integer", "number", "log_level"]

_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def integer(lo: int | None = None, hi: int | None = None) -> Callable[[str], int]:
    """An int in ``lo..hi`` (either bound may be open)."""
    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"{value} is not {_range(lo, hi)}")
        return value
    convert.__name__ = "integer"
    return convert


def number(lo: float = 0.0, *, above: bool = False) -> Callable[[str], float]:
    """A finite float ``>= lo`` (``> lo`` with ``above``)."""
    def convert(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value) or value < lo or (above and value == lo):
            raise argparse.ArgumentTypeError(f"{text} is not a finite number {'>' if above else '>='} {lo:g}")
        return value
    convert.__name__ = "number"
    return convert


def log_level(text: str) -> int:
    """A logging level name (any case): DEBUG, INFO, WARNING or ERROR."""
    name = text.strip().upper()
    if name not in _LEVELS:
        raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(_LEVELS)}")
    return int(getattr(logging, name))


def _range(lo: int | None, hi: int | None) -> str:
    if lo is not None and hi is not None:
        return f"in {lo}..{hi}"
    return f">= {lo}" if lo is not None else f"<= {hi}"
