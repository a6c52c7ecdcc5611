"""Several router instances over one Redis: who holds which edge, and telling that instance.

* Owner keys: ``<p>:owner:<edge_id>`` = the instance holding the edge's connection, with a TTL
  (``[redis] owner_ttl_s``) the instance refreshes every third of it. An instance that dies stops refreshing,
  its keys expire, its edges reconnect to another instance, which claims them and replays their queue
  (the stream holds the durable copy; nothing was only in the dead instance's memory).
* A pub/sub channel per instance, ``<p>:inst:<id>``: ``poke`` (a command was queued for one of your edges:
  send it), ``kick`` (the edge has connected to another instance: drop your connection to it) and
  ``cancel``. A poke can be lost (pub/sub is fire and forget); each instance also polls its edges' queues
  every ``[redis] poll_s``, so a lost poke delays a command, never loses it.
* Status frames: a state change made on B for a command submitted on A goes to A's channel (its submitter
  is there). While some other instance has clients subscribed to edges, every state change also goes to the
  broadcast channel ``<p>:status`` instead, which every instance reads and delivers to its own clients; each
  instance says on that channel how many subscribed clients it has when the number changes (and keeps it
  in ``<p>:instances``, read at start), so nobody broadcasts for nobody.

:class:`LocalFleet` is the same face for one router without Redis. Both run on the router's loop; publishing
never waits (a task sends what was published in pipelined batches).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any, Protocol

from redis.asyncio import Redis

from protocols.edge.wire import Status

from .store_redis import RedisKeys
from .tasks import stop_tasks

__all__ = ["FleetEvents", "Fleet", "LocalFleet", "RedisFleet"]

log = logging.getLogger(__name__)


class FleetEvents(Protocol):
    """What the hub does with what the fleet tells it."""

    def local_edges(self) -> list[str]: ...

    def on_poke(self, edge_id: str) -> None: ...

    def on_kick(self, edge_id: str, by: str) -> None: ...

    def on_cancel(self, edge_id: str, command_id: str) -> None: ...

    def on_status(self, status: dict[str, Any]) -> None: ...


class Fleet:
    """One router alone (the base): it owns the edges connected to it, and there is nobody to tell."""

    shared = False

    def __init__(self, instance: str) -> None:
        self.instance = instance
        self.events: FleetEvents | None = None

    async def start(self, events: FleetEvents) -> None:
        self.events = events

    async def stop(self) -> None:
        pass

    async def claim(self, edge_id: str) -> None:
        """This instance now holds the edge's connection."""

    async def release(self, edge_id: str) -> None:
        """This instance no longer holds it."""

    async def owner(self, edge_id: str) -> str | None:
        """The instance holding the edge's connection, or None (offline)."""
        return self.instance if self.events is not None and edge_id in self.events.local_edges() else None

    async def owners(self, edge_ids: list[str]) -> dict[str, str | None]:
        return {e: await self.owner(e) for e in edge_ids}

    def poke(self, owner: str, edge_id: str) -> None:
        """Tell ``owner`` that the edge has commands queued."""

    def cancel(self, owner: str, edge_id: str, command_id: str) -> None:
        """Tell ``owner`` to send a cancel for ``command_id`` to the edge."""

    def publish_status(self, status: dict[str, Any], origin: str | None = None) -> None:
        """Let the other instances' clients see ``status`` (a status frame's dict) of a command submitted on
        ``origin``."""

    def subscribers(self, count: int) -> None:
        """This instance now has ``count`` clients subscribed to edges."""


LocalFleet = Fleet


def _status(data: dict[str, Any]) -> dict[str, Any]:
    """A status frame from another instance, validated before it goes to clients."""
    return Status.model_validate(data).model_dump(mode="json", exclude_none=True)

_CLAIM = """
local old = redis.call('GET', KEYS[1])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return old
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_REFRESH = """
local cur = redis.call('GET', KEYS[1])
if cur == false or cur == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return ARGV[1]
end
return cur
"""


class RedisFleet(Fleet):
    """The fleet over Redis (see the module docstring)."""

    shared = True

    def __init__(self, instance: str, redis: Redis, prefix: str, owner_ttl_s: float) -> None:
        super().__init__(instance)
        self.r = redis
        self.k = RedisKeys(prefix)
        self.ttl_ms = int(owner_ttl_s * 1000)
        self._claim = redis.register_script(_CLAIM)
        self._release = redis.register_script(_RELEASE)
        self._refresh = redis.register_script(_REFRESH)
        self._outgoing: list[tuple[str, str]] = []
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._pubsub: Any = None
        self._channel = self.k.instance_channel(instance)
        #: other instance -> how many subscribed clients it said it has
        self._remote_subs: dict[str, int] = {}
        self._subs = 0

    async def start(self, events: FleetEvents) -> None:
        await super().start(events)
        self._pubsub = self.r.pubsub(ignore_subscribe_messages=True)
        await self._pubsub.subscribe(self._channel, self.k.status_channel)
        for name, raw in (await self.r.hgetall(f"{self.k.p}:instances")).items():
            if name != self.instance:
                info = json.loads(raw)
                if time.time() - info.get("at", 0) < 3 * self.ttl_ms / 1000:
                    self._remote_subs[name] = int(info.get("subs", 0))
        await self._announce()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._listen(), name="fleet-listen"),
                       loop.create_task(self._publisher(), name="fleet-publish"),
                       loop.create_task(self._refresher(), name="fleet-refresh")]

    async def stop(self) -> None:
        await stop_tasks(self._tasks)
        self._tasks = []
        if self._subs:
            self._publish(self.k.status_channel, {"from": self.instance, "subs": 0})
        if self._outgoing:
            await self._send_batch()
        await self.r.hdel(f"{self.k.p}:instances", self.instance)
        if self._pubsub is not None:
            await self._pubsub.aclose()
            self._pubsub = None

    async def claim(self, edge_id: str) -> None:
        old = await self._claim(keys=[self.k.owner(edge_id)], args=[self.instance, self.ttl_ms])
        if old and old != self.instance:
            self._publish(self.k.instance_channel(old), {"k": "kick", "e": edge_id, "by": self.instance})

    async def release(self, edge_id: str) -> None:
        await self._release(keys=[self.k.owner(edge_id)], args=[self.instance])

    async def owner(self, edge_id: str) -> str | None:
        return await self.r.get(self.k.owner(edge_id))

    async def owners(self, edge_ids: list[str]) -> dict[str, str | None]:
        if not edge_ids:
            return {}
        values = await self.r.mget([self.k.owner(e) for e in edge_ids])
        return dict(zip(edge_ids, values))

    def poke(self, owner: str, edge_id: str) -> None:
        self._publish(self.k.instance_channel(owner), {"k": "poke", "e": edge_id})

    def cancel(self, owner: str, edge_id: str, command_id: str) -> None:
        self._publish(self.k.instance_channel(owner), {"k": "cancel", "e": edge_id, "c": command_id})

    def publish_status(self, status: dict[str, Any], origin: str | None = None) -> None:
        if any(self._remote_subs.values()):
            self._publish(self.k.status_channel, {"from": self.instance, "s": status})
        elif origin and origin != self.instance:
            self._publish(self.k.instance_channel(origin), {"k": "status", "s": status})

    def subscribers(self, count: int) -> None:
        if count != self._subs:
            self._subs = count
            self._publish(self.k.status_channel, {"from": self.instance, "subs": count})

    def _publish(self, channel: str, message: dict[str, Any]) -> None:
        self._outgoing.append((channel, json.dumps(message, separators=(",", ":"))))
        self._wake.set()

    async def _send_batch(self) -> None:
        batch, self._outgoing = list(dict.fromkeys(self._outgoing)), []   # the same poke twice is one poke
        async with self.r.pipeline(transaction=False) as pipe:
            for channel, data in batch:
                pipe.publish(channel, data)
            await pipe.execute()

    async def _publisher(self) -> None:
        """Sends what was published, in pipelined batches (one round trip for many messages)."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._outgoing:
                try:
                    await self._send_batch()
                except Exception as exc:
                    log.error("fleet: publish failed: %r", exc)

    async def _listen(self) -> None:
        """Reads this instance's channel and the status channel, and hands each message to the hub."""
        assert self._pubsub is not None and self.events is not None
        while True:
            try:
                msg = await self._pubsub.get_message(timeout=1.0)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.error("fleet: pub/sub read failed: %r", exc)
                await asyncio.sleep(0.5)  # a retry backoff
                continue
            if msg is None or msg.get("type") != "message":
                continue
            try:
                data = json.loads(msg["data"])
                if msg["channel"] == self.k.status_channel:
                    if data.get("from") == self.instance:
                        continue
                    if "subs" in data:
                        self._remote_subs[data["from"]] = int(data["subs"])
                    else:
                        self.events.on_status(_status(data["s"]))
                elif data["k"] == "status":
                    self.events.on_status(_status(data["s"]))
                elif data["k"] == "poke":
                    self.events.on_poke(data["e"])
                elif data["k"] == "kick":
                    self.events.on_kick(data["e"], data["by"])
                elif data["k"] == "cancel":
                    self.events.on_cancel(data["e"], data["c"])
            except Exception:
                log.exception("fleet: bad message on %s: %r", msg.get("channel"), msg.get("data"))

    async def _announce(self) -> None:
        await self.r.hset(f"{self.k.p}:instances", self.instance,
                          json.dumps({"subs": self._subs, "at": time.time()}))

    async def _refresher(self) -> None:
        """Refreshes the owner keys of this instance's edges every third of their TTL; an edge whose key names
        another instance has connected there: the hub drops its connection here."""
        assert self.events is not None
        while True:
            await asyncio.sleep(self.ttl_ms / 3000.0)  # the refresh period itself
            try:
                await self._announce()
            except Exception as exc:
                log.error("fleet: announcing this instance failed: %r", exc)
            edges = self.events.local_edges()
            if not edges:
                continue
            try:
                async with self.r.pipeline(transaction=False) as pipe:
                    for edge in edges:
                        await self._refresh(keys=[self.k.owner(edge)], args=[self.instance, self.ttl_ms],
                                            client=pipe)
                    results = await pipe.execute()
            except Exception as exc:
                log.error("fleet: refreshing owner keys failed: %r", exc)
                continue
            for edge, holder in zip(edges, results):
                if holder != self.instance:
                    self.events.on_kick(edge, holder)
