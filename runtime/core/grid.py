"""The site's grid connection: how much the assets together may be told to draw from it or feed into it.

:class:`GridLimit` is the configuration (``import_kw``, ``export_kw``, ``policy``); the dispatcher's
policy stage (:mod:`runtime.core.policy`) enforces it on every setpoint before it is sent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from .errors import ConfigurationError

__all__ = ["GridLimit", "GridPolicy"]

GridPolicy = Literal["proportional", "priority"]


@dataclass(frozen=True)
class GridLimit:
    """``import_kw`` caps the sum of what the assets are told to draw (chargers, charging batteries),
    ``export_kw`` the sum of what they are told to feed in (discharging batteries); None: no cap. When
    the sources ask for more, ``policy`` decides who gives way: "proportional" scales every asset by the
    same factor, "priority" serves assets by their priority (highest first, then by asset id)."""

    import_kw: float | None = None
    export_kw: float | None = None
    policy: GridPolicy = "proportional"

    def __post_init__(self) -> None:
        for name in ("import_kw", "export_kw"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
                                  or v < 0):
                raise ConfigurationError(f"{name}: must be a finite number >= 0 or None, got {v!r}")
        if self.policy not in ("proportional", "priority"):
            raise ConfigurationError(f"policy: must be 'proportional' or 'priority', got {self.policy!r}")

    @property
    def active(self) -> bool:
        return self.import_kw is not None or self.export_kw is not None
