"""The command store in Redis: one stream per edge (its durable queue), a deadline index, commands as hashes.

Keys (``<p>`` is ``[redis] prefix``)::

    <p>:c:<command_id>        hash: the command (JSON), edge, seq, state, times, deadline, error, digest, open
    <p>:seq:<edge_id>         the edge's last seq (INCR)
    <p>:q:<edge_id>           stream: one entry per open command, id ``<seq>-0``; a command leaves it when closed
    <p>:dl                    sorted set: command id -> deadline (epoch seconds)
    <p>:sup:<edge_id>:<dkey>  set: the QUEUED ids on one (device, channel), for supersession
    <p>:edges                 hash: edge id -> what it published (JSON)
    <p>:owner:<edge_id>       which router instance holds the edge's connection (:mod:`.fleet`)

Every change is one Lua script (put, transition), so routers sharing the Redis never both move a command and
seq order is stream order. A final command's hash expires after ``[store] retention_s`` (its id stays
known for idempotency until then). The scripts touch keys they compute from the hash, which a single Redis
(not a Redis Cluster) allows. Runs on the router's loop (redis.asyncio).
"""

from __future__ import annotations

import json
from typing import Any

from redis.asyncio import Redis

from protocols.edge.wire import EdgeCommand

from .states import FINAL, IN_FLIGHT, QUEUED, TIMED_OUT, CommandRecord, supersede_key
from .store import PutResult, Store

__all__ = ["RedisStore", "RedisKeys"]


class RedisKeys:
    """The key names of one fleet (one prefix)."""

    def __init__(self, prefix: str) -> None:
        self.p = prefix

    def command(self, command_id: str) -> str:
        return f"{self.p}:c:{command_id}"

    def seq(self, edge_id: str) -> str:
        return f"{self.p}:seq:{edge_id}"

    def queue(self, edge_id: str) -> str:
        return f"{self.p}:q:{edge_id}"

    def sup(self, edge_id: str, dkey: str) -> str:
        return f"{self.p}:sup:{edge_id}:{dkey}"

    def owner(self, edge_id: str) -> str:
        return f"{self.p}:owner:{edge_id}"

    def instance_channel(self, instance: str) -> str:
        return f"{self.p}:inst:{instance}"

    @property
    def deadlines(self) -> str:
        return f"{self.p}:dl"

    @property
    def edges(self) -> str:
        return f"{self.p}:edges"

    @property
    def status_channel(self) -> str:
        return f"{self.p}:status"


_PUT = """
local cur = redis.call('HGET', KEYS[1], 'key')
if cur then
  local outcome = 'conflict'
  if cur == ARGV[3] then outcome = 'duplicate' end
  return {outcome, redis.call('HGETALL', KEYS[1])}
end
local seq = redis.call('INCR', KEYS[2])
redis.call('XADD', KEYS[3], seq .. '-0', 'id', ARGV[1])
redis.call('HSET', KEYS[1], 'cmd', ARGV[2], 'key', ARGV[3], 'edge', ARGV[4], 'seq', seq, 'state', 'QUEUED',
  'user', ARGV[5], 'origin', ARGV[6], 'dkey', ARGV[7], 'prio', ARGV[8], 'sub', ARGV[10], 'exp', ARGV[11],
  'dl', ARGV[11], 'upd', ARGV[10], 'sends', 0, 'open', 1)
redis.call('ZADD', KEYS[4], ARGV[11], ARGV[1])
local superseded = {}
if ARGV[9] ~= 'system' then
  if ARGV[12] == '1' then
    for _, old in ipairs(redis.call('SMEMBERS', KEYS[5])) do
      local okey = ARGV[13] .. ':c:' .. old
      local st = redis.call('HMGET', okey, 'state', 'prio', 'seq')
      if st[1] == 'QUEUED' and not (st[2] == 'emergency' and ARGV[8] == 'normal') then
        redis.call('HSET', okey, 'state', 'SUPERSEDED', 'dl', '', 'upd', ARGV[10], 'err',
          'superseded by ' .. ARGV[1], 'open', 0)
        redis.call('ZREM', KEYS[4], old)
        redis.call('SREM', KEYS[5], old)
        redis.call('XDEL', KEYS[3], st[3] .. '-0')
        redis.call('PEXPIRE', okey, ARGV[14])
        table.insert(superseded, redis.call('HGETALL', okey))
      end
    end
  end
  redis.call('SADD', KEYS[5], ARGV[1])
end
local owner = redis.call('GET', KEYS[6]) or ''
return {'new', redis.call('HGETALL', KEYS[1]), owner, superseded}
"""

_TRANSITION = """
local h = redis.call('HMGET', KEYS[1], 'state', 'edge', 'dkey', 'seq')
local st = h[1]
if not st then return {'missing'} end
if not string.find(ARGV[2], ',' .. st .. ',', 1, true) then return {'same', redis.call('HGETALL', KEYS[1])} end
if ARGV[10] ~= '' and redis.call('GET', ARGV[12] .. ':owner:' .. h[2]) ~= ARGV[10] then
  return {'not_owner', redis.call('HGETALL', KEYS[1])}
end
redis.call('HSET', KEYS[1], 'state', ARGV[3], 'upd', ARGV[4], 'dl', ARGV[5])
if ARGV[6] ~= '' then redis.call('HSET', KEYS[1], 'err', ARGV[6]) end
if ARGV[7] ~= '' then redis.call('HSET', KEYS[1], 'xat', ARGV[7]) end
if ARGV[8] == '1' then
  redis.call('HSET', KEYS[1], 'sent', ARGV[4])
  redis.call('HINCRBY', KEYS[1], 'sends', 1)
end
if ARGV[5] == '' then redis.call('ZREM', KEYS[2], ARGV[1]) else redis.call('ZADD', KEYS[2], ARGV[5], ARGV[1]) end
if st == 'QUEUED' and ARGV[3] ~= 'QUEUED' then
  redis.call('SREM', ARGV[12] .. ':sup:' .. h[2] .. ':' .. h[3], ARGV[1])
end
if ARGV[9] == '1' then
  redis.call('HSET', KEYS[1], 'open', 0)
  redis.call('XDEL', ARGV[12] .. ':q:' .. h[2], h[4] .. '-0')
  redis.call('PEXPIRE', KEYS[1], ARGV[11])
end
return {'ok', redis.call('HGETALL', KEYS[1])}
"""

# the edge's pump: every QUEUED command after a seq, moved to SENT (or EXPIRED) in one round trip
_CLAIM = """
if ARGV[4] ~= '' and redis.call('GET', KEYS[3]) ~= ARGV[4] then return {'not_owner', ARGV[1]} end
local start = '-'
if ARGV[1] ~= '0' then start = '(' .. ARGV[1] .. '-0' end
local entries = redis.call('XRANGE', KEYS[1], start, '+', 'COUNT', ARGV[7])
local last = ARGV[1]
local out = {}
for _, e in ipairs(entries) do
  local id = e[2][2]
  local key = ARGV[5] .. ':c:' .. id
  local h = redis.call('HMGET', key, 'state', 'exp', 'dkey', 'edge', 'seq')
  last = h[5] or last
  if h[1] == 'QUEUED' then
    redis.call('SREM', ARGV[5] .. ':sup:' .. h[4] .. ':' .. h[3], id)
    if tonumber(h[2]) <= tonumber(ARGV[2]) then
      redis.call('HSET', key, 'state', 'EXPIRED', 'upd', ARGV[2], 'dl', '',
        'err', 'expired before it could be sent', 'open', 0)
      redis.call('ZREM', KEYS[2], id)
      redis.call('XDEL', KEYS[1], e[1])
      redis.call('PEXPIRE', key, ARGV[6])
      table.insert(out, {'expired', redis.call('HGETALL', key)})
    else
      redis.call('HSET', key, 'state', 'SENT', 'upd', ARGV[2], 'dl', ARGV[3], 'sent', ARGV[2])
      redis.call('HINCRBY', key, 'sends', 1)
      redis.call('ZADD', KEYS[2], ARGV[3], id)
      table.insert(out, {'sent', redis.call('HGETALL', key)})
    end
  end
end
return {'ok', last, out}
"""

# an ack: the move for the command's current state (given by the router), applied in one round trip
_ACK = """
local h = redis.call('HMGET', KEYS[1], 'state', 'edge', 'dkey', 'seq', 'exp')
if not h[1] then return {'missing'} end
if h[2] ~= ARGV[2] then return {'foreign', redis.call('HGETALL', KEYS[1])} end
local to = nil
for pair in string.gmatch(ARGV[3], '[^,]+') do
  local s, t = string.match(pair, '([^=]+)=(.+)')
  if s == h[1] then to = t end
end
if not to then return {'same', redis.call('HGETALL', KEYS[1])} end
local dl = ''
if to == 'DELIVERED' or to == 'ACCEPTED' then dl = tostring(tonumber(h[5]) + tonumber(ARGV[5])) end
redis.call('HSET', KEYS[1], 'state', to, 'upd', ARGV[4], 'dl', dl)
if ARGV[6] ~= '' then redis.call('HSET', KEYS[1], 'err', ARGV[6]) end
if ARGV[7] ~= '' then redis.call('HSET', KEYS[1], 'xat', ARGV[7]) end
if dl == '' then redis.call('ZREM', KEYS[2], ARGV[1]) else redis.call('ZADD', KEYS[2], dl, ARGV[1]) end
if h[1] == 'QUEUED' then redis.call('SREM', ARGV[8] .. ':sup:' .. h[2] .. ':' .. h[3], ARGV[1]) end
if dl == '' then
  redis.call('HSET', KEYS[1], 'open', 0)
  redis.call('XDEL', ARGV[8] .. ':q:' .. h[2], h[4] .. '-0')
  redis.call('PEXPIRE', KEYS[1], ARGV[9])
end
return {'ok', redis.call('HGETALL', KEYS[1])}
"""

_BUMP = """
local c = tonumber(redis.call('GET', KEYS[1]) or '0')
if c < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]) end
return c
"""


def _num(value: str | None) -> float | None:
    return float(value) if value not in (None, "") else None


def _flat(flat: list[str]) -> dict[str, str]:
    return dict(zip(flat[::2], flat[1::2]))


def _record(h: dict[str, str]) -> CommandRecord:
    rec = CommandRecord(command=EdgeCommand.model_validate_json(h["cmd"]), seq=int(h["seq"]), state=h["state"],
                        user=h.get("user", ""), submitted_at=float(h["sub"]), expires_at=float(h["exp"]),
                        origin=h.get("origin", ""), sent_at=_num(h.get("sent")), deadline=_num(h.get("dl")),
                        error=h.get("err") or None, executed_at=h.get("xat") or None,
                        updated_at=float(h.get("upd", 0)), sends=int(h.get("sends", 0)), digest=h.get("key", ""))
    rec.extra["open"] = h.get("open") == "1"
    return rec


class RedisStore(Store):
    """The Redis command store (see the module docstring)."""

    shared = True

    def __init__(self, redis: Redis, prefix: str, retention_s: float) -> None:
        self.r = redis
        self.k = RedisKeys(prefix)
        self.retention_ms = int(retention_s * 1000)
        self._put = redis.register_script(_PUT)
        self._transition = redis.register_script(_TRANSITION)
        self._bump = redis.register_script(_BUMP)
        self._claim = redis.register_script(_CLAIM)
        self._ack = redis.register_script(_ACK)

    async def put(self, command: EdgeCommand, *, user: str, origin: str, now: float, expires_at: float,
                  digest: str) -> PutResult:
        edge, dkey = command.target.edge_id, supersede_key(command)
        k = self.k
        out = await self._put(
            keys=[k.command(command.command_id), k.seq(edge), k.queue(edge), k.deadlines, k.sup(edge, dkey),
                  k.owner(edge)],
            args=[command.command_id, command.model_dump_json(exclude_none=True), digest, edge, user, origin, dkey,
                  command.priority, command.command_type, repr(now), repr(expires_at),
                  "1" if command.supersede else "0", k.p, self.retention_ms])
        if out[0] != "new":
            return PutResult(out[0], _record(_flat(out[1])))
        rec = _record(_flat(out[1]))
        rec.extra["owner"] = out[2] or None
        return PutResult("new", rec, [_record(_flat(s)) for s in out[3]])

    async def get(self, command_id: str) -> CommandRecord | None:
        h = await self.r.hgetall(self.k.command(command_id))
        return _record(h) if h else None

    async def transition(self, command_id: str, to: str, *, allowed: frozenset[str], now: float,
                         deadline: float | None, error: str | None = None, executed_at: str | None = None,
                         sent: bool = False, close: bool | None = None,
                         owner: str | None = None) -> tuple[CommandRecord | None, bool]:
        if close is None:
            close = to in FINAL and to != TIMED_OUT
        out = await self._transition(
            keys=[self.k.command(command_id), self.k.deadlines],
            args=[command_id, "," + ",".join(sorted(allowed)) + ",", to, repr(now),
                  "" if deadline is None else repr(deadline), error or "", executed_at or "", "1" if sent else "0",
                  "1" if close else "0", owner or "", self.retention_ms, self.k.p])
        if out[0] == "missing":
            return None, False
        return _record(_flat(out[1])), out[0] == "ok"

    async def _records(self, ids: list[str]) -> list[CommandRecord]:
        if not ids:
            return []
        async with self.r.pipeline(transaction=False) as pipe:
            for cid in ids:
                pipe.hgetall(self.k.command(cid))
            hashes = await pipe.execute()
        return [_record(h) for h in hashes if h]

    async def _open_ids(self, edge_id: str, after_seq: int) -> list[str]:
        ids: list[str] = []
        start = f"({after_seq}-0" if after_seq > 0 else "-"
        while True:
            entries = await self.r.xrange(self.k.queue(edge_id), min=start, max="+", count=1000)
            ids += [fields["id"] for _, fields in entries]
            if len(entries) < 1000:
                return ids
            start = f"({entries[-1][0]}"

    async def queued(self, edge_id: str, after_seq: int) -> list[CommandRecord]:
        recs = await self._records(await self._open_ids(edge_id, after_seq))
        return sorted((r for r in recs if r.state == QUEUED), key=lambda r: r.seq)

    async def claim_queued(self, edge_id: str, after_seq: int, *, now: float, ack_deadline: float,
                           owner: str | None = None,
                           limit: int = 500) -> tuple[list[tuple[CommandRecord, str]], int]:
        out = await self._claim(keys=[self.k.queue(edge_id), self.k.deadlines, self.k.owner(edge_id)],
                                args=[after_seq, repr(now), repr(ack_deadline), owner or "", self.k.p,
                                      self.retention_ms, limit])
        if out[0] != "ok":
            return [], after_seq
        return [(_record(_flat(flat)), tag) for tag, flat in out[2]], int(out[1])

    async def ack(self, command_id: str, edge_id: str, moves: dict[str, str], *, now: float, ack_timeout: float,
                  error: str | None = None, executed_at: str | None = None) -> tuple[str, CommandRecord | None]:
        out = await self._ack(keys=[self.k.command(command_id), self.k.deadlines],
                              args=[command_id, edge_id, ",".join(f"{s}={t}" for s, t in moves.items()),
                                    repr(now), repr(ack_timeout), error or "", executed_at or "", self.k.p,
                                    self.retention_ms])
        if out[0] == "missing":
            return "missing", None
        return out[0], _record(_flat(out[1]))

    async def resume(self, edge_id: str, last_seq: int) -> tuple[list[int], list[CommandRecord]]:
        pending, send = [], []
        for r in sorted(await self._records(await self._open_ids(edge_id, 0)), key=lambda r: r.seq):
            if r.state == QUEUED or (r.state in IN_FLIGHT and r.seq > last_seq):
                send.append(r)
            elif r.seq <= last_seq and (r.state in IN_FLIGHT or r.state == TIMED_OUT):
                pending.append(r.seq)
        return pending, send

    async def bump_seq(self, edge_id: str, at_least: int) -> None:
        await self._bump(keys=[self.k.seq(edge_id)], args=[at_least])

    async def due(self, now: float, limit: int = 500) -> list[CommandRecord]:
        ids = await self.r.zrangebyscore(self.k.deadlines, "-inf", repr(now), start=0, num=limit)
        return await self._records(list(ids))

    async def extend_in_flight(self, until: float) -> int:
        count = 0
        for rec in await self.due(until, limit=100_000):
            if rec.state in IN_FLIGHT and not await self.r.exists(self.k.owner(rec.edge_id)):
                await self.r.zadd(self.k.deadlines, {rec.command_id: until}, xx=True)
                await self.r.hset(self.k.command(rec.command_id), "dl", repr(until))
                count += 1
        return count

    async def save_edge(self, edge_id: str, info: dict[str, Any]) -> None:
        await self.r.hset(self.k.edges, edge_id, json.dumps(info, separators=(",", ":")))

    async def load_edges(self) -> dict[str, dict[str, Any]]:
        return {edge: json.loads(info) for edge, info in (await self.r.hgetall(self.k.edges)).items()}

    async def load_edge_raw(self, edge_id: str) -> str | None:
        return await self.r.hget(self.k.edges, edge_id)

    async def purge(self, before: float) -> int:
        return 0  # final commands expire on their own (PEXPIRE at close)
