"""Retry policy: bounded attempts with exponential backoff and jitter.

The delay before retry number ``attempt`` (1 = the retry after the first failed attempt) is::

    min(max_delay_s, base_delay_s * factor ** (attempt - 1)) * (1 + uniform(-jitter, +jitter))

so with the defaults (1 s, x2, 60 s cap, 10 % jitter) retries wait about 1 s, 2 s, 4 s, ... 60 s.
Jitter spreads retries of many commands that failed together (a device that dropped off) so they
do not all come back in the same instant. The random source is passed in, so tests and the
virtual clock stay deterministic with a seeded :class:`random.Random`.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from .errors import ConfigurationError

__all__ = ["RetryPolicy"]


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how soon a failed or timed-out command is sent again.

    ``max_attempts`` counts every send, the first one included: 3 means one send and up to two
    retries; 1 means never retry. ``jitter`` is a fraction in [0, 1]: 0.1 means +-10 %.
    """

    max_attempts: int = 3
    base_delay_s: float = 1.0
    factor: float = 2.0
    max_delay_s: float = 60.0
    jitter: float = 0.1

    def __post_init__(self) -> None:
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            raise ConfigurationError(f"max_attempts: must be an integer >= 1, got {self.max_attempts!r}")
        _check_number("base_delay_s", self.base_delay_s, low=0.0)
        _check_number("factor", self.factor, low=1.0)
        _check_number("max_delay_s", self.max_delay_s, low=0.0)
        _check_number("jitter", self.jitter, low=0.0, high=1.0)
        if self.max_delay_s < self.base_delay_s:
            raise ConfigurationError(f"max_delay_s: must be >= base_delay_s ({self.base_delay_s!r}), "
                             f"got {self.max_delay_s!r}")

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait before retrying after failed attempt number ``attempt`` (>= 1).

        Never negative. ``rng`` is only drawn from when ``jitter`` > 0.
        """
        if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 1:
            raise ConfigurationError(f"attempt: must be an integer >= 1, got {attempt!r}")
        try:
            raw = self.base_delay_s * self.factor ** (attempt - 1)
        except OverflowError:  # factor ** attempt beyond float range: the cap applies anyway
            raw = math.inf
        capped = min(self.max_delay_s, raw)
        if self.jitter > 0:
            capped *= 1.0 + rng.uniform(-self.jitter, self.jitter)
        return max(0.0, capped)


def _check_number(name: str, value: object, *, low: float, high: float = math.inf) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not low <= value <= high:
        bounds = f">= {low}" if high == math.inf else f"in [{low}, {high}]"
        raise ConfigurationError(f"{name}: must be a finite number {bounds}, got {value!r}")
