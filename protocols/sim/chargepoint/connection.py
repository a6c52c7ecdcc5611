"""What the simulator's two per-version connection classes share: handlers hand their work to the
:class:`~protocols.sim.chargepoint.simulator.ChargePointSim`, and anything that must happen after the
answer (a StartTransaction after RemoteStart, MeterValues after a new profile) runs in ``@after``, as a
simulator task, never inside the ``@on`` handler (which would deadlock the receive loop).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:  # pragma: no cover
    from .simulator import ChargePointSim

#: Every OCPP frame the simulators send or receive, at INFO.
WIRE_LOG = logging.getLogger("protocols.sim.wire")

__all__ = ["SimConnection", "WIRE_LOG"]


class SimConnection:
    """Mixin for the simulator's per-connection ``ocpp`` ChargePoint classes: handlers delegate to the
    simulator, and what a handler wants done after its answer went out runs as a simulator task."""

    sim: "ChargePointSim"

    def _init_sim(self, sim: "ChargePointSim") -> None:
        self.sim = sim
        self._after_fn: Callable[[], Any] | None = None
        if not sim.validate:
            for handlers in self.route_map.values():  # type: ignore[attr-defined]
                handlers["_skip_schema_validation"] = True

    def _then(self, fn: Callable[[], Any] | None) -> None:
        """Run ``fn`` (a coroutine function) as a simulator task after the answer went out."""
        self._after_fn = fn

    def _run_after(self) -> None:
        fn, self._after_fn = self._after_fn, None
        if fn is not None:
            self.sim._spawn(fn(), "after")
