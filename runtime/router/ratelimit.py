"""Rate limits (the ``limits`` library): commands per user and per edge, websocket handshakes per instance.

User and edge limits are counted in memory on one router and in Redis in a fleet (``limits``' Redis storage
over our own redis-py connection pool, so every router counts against the same windows). The handshake
limit is always this instance's own (memory): it protects this process from a reconnect storm, whatever the
others do. Over a limit, :meth:`RateLimits.submit` / :meth:`RateLimits.handshake` return the seconds until
a slot frees (``retry_after``); within it they return None. Runs on the router's loop.
"""

from __future__ import annotations

import time
from typing import Any

from limits import RateLimitItem, parse_many
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import (FixedWindowRateLimiter, MovingWindowRateLimiter, RateLimiter,
                                   SlidingWindowCounterRateLimiter)

from .config import LimitsConfig

__all__ = ["RateLimits"]

_STRATEGIES: dict[str, type[RateLimiter]] = {"moving-window": MovingWindowRateLimiter,
                                             "fixed-window": FixedWindowRateLimiter,
                                             "sliding-window-counter": SlidingWindowCounterRateLimiter}


class RateLimits:
    """The router's limits (see the module docstring)."""

    def __init__(self, config: LimitsConfig, *, redis_url: str | None = None, redis_pool: Any = None,
                 prefix: str = "rt") -> None:
        strategy = _STRATEGIES[config.strategy]
        shared: Storage
        if redis_pool is not None:
            assert redis_url is not None
            shared = RedisStorage("async+" + redis_url, implementation="redispy", connection_pool=redis_pool,
                                  key_prefix=f"{prefix}:limits")
        else:
            shared = MemoryStorage()
        self._shared = strategy(shared)
        self._local = strategy(MemoryStorage())
        self._user = parse_many(config.user)
        self._edge = parse_many(config.edge)
        self._handshake = parse_many(config.handshake)

    async def _over(self, limiter: RateLimiter, items: list[RateLimitItem], *key: str) -> float | None:
        for item in items:
            if not await limiter.hit(item, *key):
                stats = await limiter.get_window_stats(item, *key)
                return round(max(0.001, stats.reset_time - time.time()), 3)
        return None

    async def submit(self, user: str, edge_id: str) -> tuple[str, float] | None:
        """None if a command from ``user`` to ``edge_id`` is within both limits; else (which, retry_after)."""
        wait = await self._over(self._shared, self._user, "user", user)
        if wait is not None:
            return "user", wait
        wait = await self._over(self._shared, self._edge, "edge", edge_id)
        if wait is not None:
            return "edge", wait
        return None

    async def handshake(self) -> float | None:
        """None if one more websocket handshake is within this instance's limit; else retry_after."""
        return await self._over(self._local, self._handshake, "handshake")
