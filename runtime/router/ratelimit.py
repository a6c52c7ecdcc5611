"""Rate limits (the ``limits`` library): commands per user and per edge, sign-in attempts per user name and per
client address, websocket handshakes per instance.

User, edge and login limits are counted in memory on one router and in Redis in a fleet (``limits``' asyncio
Redis storage over our own redis-py connection pool, so every router counts against the same windows). The
handshake limit is always this instance's own (memory): it protects this process from a reconnect storm,
whatever the others do. Over a limit, :meth:`RateLimits.submit` / :meth:`RateLimits.handshake` return the
seconds until a slot frees (``retry_after``); within it they return None. Runs on the router's loop.

Memory counting uses ``limits``' synchronous memory storage (a hit is a few list operations under an
uncontended lock), not the asyncio one, whose expiry pass hands every key to a worker thread on every hit
and took a fifth of the router's CPU under load. The synchronous one starts a timer thread for its expiry
pass after every hit instead; :class:`_SweptMemoryStorage` leaves that pass to :meth:`RateLimits.expire`,
which the hub's housekeeping calls every few seconds.
"""

from __future__ import annotations

import inspect
import time
from typing import Any

from limits import RateLimitItem, parse_many, storage as sync_storage, strategies as sync_strategies
from limits.aio import storage as aio_storage, strategies as aio_strategies

from .config import LimitsConfig

__all__ = ["RateLimits"]

_NAMES = {"moving-window": "MovingWindowRateLimiter", "fixed-window": "FixedWindowRateLimiter",
          "sliding-window-counter": "SlidingWindowCounterRateLimiter"}


class _SweptMemoryStorage(sync_storage.MemoryStorage):
    """limits' memory storage without a timer thread per hit: :meth:`expire` runs its expiry pass."""

    def _MemoryStorage__schedule_expiry(self) -> None:  # noqa: N802 (the base class's private hook)
        pass

    def expire(self) -> None:
        getattr(self, "_MemoryStorage__expire_events")()


def _memory() -> sync_storage.MemoryStorage:
    storage = _SweptMemoryStorage()
    if not hasattr(storage, "_MemoryStorage__expire_events"):  # another limits: keep its own expiry
        return sync_storage.MemoryStorage()
    return storage


class RateLimits:
    """The router's limits (see the module docstring)."""

    def __init__(self, config: LimitsConfig, *, redis_url: str | None = None, redis_pool: Any = None,
                 prefix: str = "rt") -> None:
        name = _NAMES[config.strategy]
        self._shared: Any
        if redis_pool is not None:
            assert redis_url is not None
            self._shared = getattr(aio_strategies, name)(aio_storage.RedisStorage(
                "async+" + redis_url, implementation="redispy", connection_pool=redis_pool,
                key_prefix=f"{prefix}:limits"))
        else:
            self._shared = getattr(sync_strategies, name)(_memory())
        self._local = getattr(sync_strategies, name)(_memory())
        self._user = parse_many(config.user)
        self._edge = parse_many(config.edge)
        self._handshake = parse_many(config.handshake)
        self._login = parse_many(config.login)
        self._login_address = parse_many(config.login_address)

    async def _over(self, limiter: Any, items: list[RateLimitItem], *key: str) -> float | None:
        for item in items:
            ok = limiter.hit(item, *key)
            if not (await ok if inspect.isawaitable(ok) else ok):
                stats = limiter.get_window_stats(item, *key)
                stats = await stats if inspect.isawaitable(stats) else stats
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

    async def login(self, user: str, remote: str) -> tuple[str, float] | None:
        """None if one more sign-in attempt for ``user`` from ``remote`` is within the login limits (``login`` per
        user name, ``login_address`` per address; shared by a fleet); else (``"user"`` or ``"address"``,
        retry_after)."""
        wait = await self._over(self._shared, self._login, "login-user", user)
        if wait is not None:
            return "user", wait
        wait = await self._over(self._shared, self._login_address, "login-address", remote)
        if wait is not None:
            return "address", wait
        return None

    def expire(self) -> None:
        """Drop the memory windows' expired entries (the hub's housekeeping, on the loop)."""
        for limiter in (self._shared, self._local):
            storage = getattr(limiter, "storage", None)
            if isinstance(storage, _SweptMemoryStorage):
                storage.expire()

    async def handshake(self) -> float | None:
        """None if one more websocket handshake is within this instance's limit; else retry_after."""
        return await self._over(self._local, self._handshake, "handshake")
