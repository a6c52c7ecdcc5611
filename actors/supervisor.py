"""SupervisorActor: starts the asset actors, restarts the ones that crash, gives up on the hopeless.

OTP-style restart intensity: an asset actor that crashes is restarted after a backoff
(``base_backoff_s * 2**(n-1)``, capped) unless it has crashed ``max_restarts`` times within
``window_s`` seconds of clock time; then the supervisor stops restarting it, tells the dispatcher the
asset is permanently down (its commands stay HELD, never dropped) and publishes ASSET_UNAVAILABLE with
the reason. Backoff timers run on the site clock, so restarts are deterministic under a virtual clock.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from typing import Any

import pykka

from protocols.base import DeviceLink
from runtime.core.assets import AssetSpec
from runtime.core.clock import Clock
from runtime.core.errors import ConfigurationError
from runtime.core.events import Event, EventType
from runtime.core.iothread import IOThread

from .asset import AssetActor
from .handlers import HandlerTable, handles
from .messages import (AssetDown, AssetMemory, AssetUp, Crashed, GetAssetRef, GetStatus, Ping, Pong, Publish,
                       Restart, SetParameter)

log = logging.getLogger(__name__)

__all__ = ["SupervisorActor", "RestartPolicy"]


@dataclass(frozen=True)
class RestartPolicy:
    """``max_restarts`` crashes within ``window_s`` -> give up. Backoff doubles from ``base_backoff_s``."""

    max_restarts: int = 3
    window_s: float = 60.0
    base_backoff_s: float = 0.5
    max_backoff_s: float = 30.0

    def __post_init__(self) -> None:
        if self.max_restarts < 0:
            raise ConfigurationError(f"max_restarts: must be >= 0, got {self.max_restarts}")
        if self.window_s <= 0 or self.base_backoff_s < 0 or self.max_backoff_s < self.base_backoff_s:
            raise ConfigurationError(f"RestartPolicy: invalid window/backoff {self}")

    def backoff(self, crashes: int) -> float:
        return min(self.max_backoff_s, self.base_backoff_s * 2 ** max(0, crashes - 1))


class SupervisorActor(HandlerTable, pykka.ThreadingActor):
    """Owns every asset actor's lifetime."""

    def __init__(self, specs: list[AssetSpec], links: dict[str, DeviceLink], *, io: IOThread, clock: Clock,
                 dispatcher: pykka.ActorRef[Any], events: pykka.ActorRef[Any],
                 policy: RestartPolicy = RestartPolicy(), services: dict[str, Any] | None = None,
                 ack_timeout_s: float = 10.0, grid_channels: dict[str, frozenset[Any]] | None = None) -> None:
        super().__init__()
        self._specs = {s.asset_id: s for s in specs}
        self._links = links
        self._io, self._clock = io, clock
        self._dispatcher, self._events = dispatcher, events
        self._policy = policy
        self._services = services or {}
        self._ack_timeout_s = ack_timeout_s
        self._grid_channels = grid_channels or {}
        self._parameters: dict[str, dict[str, float]] = {}   # asset -> parameters, for restarted actors too
        self._refs: dict[str, pykka.ActorRef[Any]] = {}
        self._crashes: dict[str, deque[float]] = {}
        self._restarts: dict[str, int] = {}
        self._status: dict[str, str] = {}
        self._timers: dict[str, Any] = {}
        self._memory: dict[str, AssetMemory] = {}  # what a crashed actor knew, for its successor
        self._handled = 0

    def on_start(self) -> None:
        for asset_id in self._specs:
            self._start_asset(asset_id)
        # then every AssetUp at once: the dispatcher takes them in one burst instead of waking for each
        # (no message of this actor is handled before on_start ends, so no AssetDown can come first)
        for asset_id in self._refs:
            self._announce(asset_id)

    def _start_asset(self, asset_id: str) -> None:
        """Start the asset's actor; :meth:`_announce` tells the dispatcher."""
        ref = AssetActor.start(self._specs[asset_id], self._links[asset_id], io=self._io, clock=self._clock,
                               dispatcher=self._dispatcher, events=self._events, supervisor=self.actor_ref,
                               services=self._services, memory=self._memory.pop(asset_id, None),
                               ack_timeout_s=self._ack_timeout_s,
                               grid_channels=self._grid_channels.get(asset_id, frozenset()),
                               parameters=self._parameters.get(asset_id))
        self._refs[asset_id] = ref
        self._status[asset_id] = "running"

    def _announce(self, asset_id: str) -> None:
        self._dispatcher.tell(AssetUp(asset_id, self._refs[asset_id], self._restarts.get(asset_id, 0)))

    def receive(self, message: Any) -> Any:
        if type(message) not in (Ping, GetAssetRef, GetStatus):  # queries do not count towards quiescence
            self._handled += 1
        return self.handle(message)

    @handles(Ping)
    def _ping(self, message: Ping) -> Pong:
        return Pong(self._handled, {"assets": list(self._refs.values())})

    @handles(GetAssetRef)
    def _get_asset_ref(self, message: GetAssetRef) -> "pykka.ActorRef[Any] | None":
        return self._refs.get(message.asset_id)

    @handles(GetStatus)
    def _get_status(self, message: GetStatus) -> dict[str, str]:
        return dict(self._status)

    @handles(SetParameter)
    def _set_parameter(self, message: SetParameter) -> None:
        params = self._parameters.setdefault(message.asset_id, {})
        if message.value is None:
            params.pop(message.name, None)
        else:
            params[message.name] = float(message.value)
        ref = self._refs.get(message.asset_id)
        if ref is not None:
            try:
                ref.tell(message)
            except pykka.ActorDeadError:
                pass  # its successor gets the parameters when it starts

    @handles(Restart)
    def _restart(self, message: Restart) -> None:
        self._timers.pop(message.asset_id, None)
        if self._status.get(message.asset_id) == "restarting":
            self._restarts[message.asset_id] = self._restarts.get(message.asset_id, 0) + 1
            self._start_asset(message.asset_id)
            self._announce(message.asset_id)
            self._publish(EventType.ASSET_RESTARTED, {"asset_id": message.asset_id,
                                                      "restarts": self._restarts[message.asset_id]})

    @handles(Crashed)
    def _crashed(self, message: Crashed) -> None:
        asset_id, now = message.asset_id, self._clock.time()
        self._refs.pop(asset_id, None)
        if message.memory is not None:
            self._memory[asset_id] = message.memory
        history = self._crashes.setdefault(asset_id, deque())
        history.append(now)
        while history and history[0] < now - self._policy.window_s:
            history.popleft()
        if len(history) > self._policy.max_restarts:
            self._status[asset_id] = "unavailable"
            reason = (f"asset {asset_id} crashed {len(history)} times within {self._policy.window_s:g} s "
                      f"(limit {self._policy.max_restarts}); last: {message.reason}")
            log.error(reason)
            self._dispatcher.tell(AssetDown(asset_id, reason, permanent=True))
            self._publish(EventType.ASSET_UNAVAILABLE, {"asset_id": asset_id, "reason": reason,
                                                        "crashes": len(history)})
            return
        delay = self._policy.backoff(len(history))
        self._status[asset_id] = "restarting"
        log.warning("asset %s crashed (%s); restarting in %.2f s", asset_id, message.reason, delay)
        self._dispatcher.tell(AssetDown(asset_id, message.reason, permanent=False))
        me = self.actor_ref

        def fire() -> None:
            try:
                me.tell(Restart(asset_id))
            except pykka.ActorDeadError:
                pass
        self._timers[asset_id] = self._clock.call_later(delay, fire)

    def _publish(self, event_type: EventType, payload: dict[str, Any]) -> None:
        try:
            self._events.tell(Publish((Event(event_type, self._clock.now(), payload),)))
        except pykka.ActorDeadError:
            pass

    def on_stop(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        stopping = [(asset_id, ref.stop(block=False)) for asset_id, ref in self._refs.items()]
        for asset_id, fut in stopping:  # all stop in parallel; each gets a bounded wait
            try:
                fut.get(timeout=10)
            except pykka.Timeout:
                log.error("asset actor %s did not stop within 10 s", asset_id)
            except pykka.ActorDeadError:
                pass
        self._refs.clear()
