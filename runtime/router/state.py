"""Building one router instance's parts from its configuration, and taking them down again.

:meth:`RouterState.open` picks the store (SQLite, or Redis when ``[redis]`` is set), the audit log (SQLite in
the same file by default, PostgreSQL when ``[postgres]`` is set), the fleet (alone, or over the same Redis),
the rate-limit storage, the authenticator, and starts the hub. It runs in the app's lifespan, on uvicorn's
loop; :meth:`RouterState.close` undoes it in reverse order.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from .audit import AuditLog
from .audit_sqlite import SqliteAudit
from .auth import Authenticator
from .config import RouterConfig
from .fleet import Fleet
from .hub import Hub
from .ratelimit import RateLimits
from .sqlite_db import SqliteDb
from .store import Store
from .store_sqlite import SqliteStore

__all__ = ["RouterState"]

log = logging.getLogger(__name__)


@dataclass
class RouterState:
    """Everything one router instance runs with (``app.state.router``)."""

    config: RouterConfig
    auth: Authenticator
    hub: Hub
    store: Store
    audit: AuditLog
    pools: list[Any] = field(default_factory=list)

    @property
    def instance(self) -> str:
        return self.hub.instance

    @classmethod
    async def open(cls, config: RouterConfig) -> "RouterState":
        instance = config.instance()
        auth = Authenticator(config)
        pools: list[Any] = []
        sqlite_path = config.path(config.store.sqlite)
        db: SqliteDb | None = None
        store: Store
        fleet: Fleet
        if config.redis is not None:
            from redis.asyncio import BlockingConnectionPool, Redis

            from .fleet import RedisFleet
            from .store_redis import RedisStore

            # blocking pools: a burst of requests waits for a connection instead of failing "too many connections"
            pool = BlockingConnectionPool.from_url(config.redis.url, decode_responses=True, max_connections=64,
                                                   timeout=10)
            limits_pool = BlockingConnectionPool.from_url(config.redis.url, max_connections=32, timeout=10)
            pools += [pool, limits_pool]
            redis = Redis(connection_pool=pool)
            await redis.ping()
            store = RedisStore(redis, config.redis.prefix, config.store.retention_s)
            fleet = RedisFleet(instance, redis, config.redis.prefix, config.redis.owner_ttl_s)
            limits = RateLimits(config.limits, redis_url=config.redis.url, redis_pool=limits_pool,
                                prefix=config.redis.prefix)
        else:
            db = SqliteDb(sqlite_path, config.store.commit_interval_s)
            store = SqliteStore(db)
            fleet = Fleet(instance)
            limits = RateLimits(config.limits)
        audit: AuditLog
        if config.postgres is not None:
            from .audit_postgres import PostgresAudit
            audit = PostgresAudit(config.postgres.dsn, config.postgres.table)
        else:
            audit = SqliteAudit(db if db is not None else SqliteDb(sqlite_path, config.store.commit_interval_s))
        await store.open()
        await audit.open()
        hub = Hub(config, store=store, audit=audit, limits=limits, fleet=fleet)
        await hub.start()
        log.info("router %s: store %s, audit %s, %s", instance, type(store).__name__, type(audit).__name__,
                 "fleet over Redis" if fleet.shared else "alone")
        return cls(config=config, auth=auth, hub=hub, store=store, audit=audit, pools=pools)

    async def close(self) -> None:
        await self.hub.stop()
        await self.store.close()
        await self.audit.close()
        for pool in self.pools:
            await pool.aclose()
