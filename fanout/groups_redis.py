"""The Redis side of consumer groups: one object per (collection, group) holding its keys and
the few commands and scripts the worker needs.

Every key used here is the collection's stream or its group registry, which share the
collection's hash tag, so each script runs in one Redis Cluster slot. Steps that must not race
with another node (moving a departed member's entries, deleting a consumer, destroying an idle
group) are Lua scripts: ``XGROUP DELCONSUMER`` destroys the consumer's pending entries, so it
only ever runs in the same atomic step that saw the consumer had none.

Times compared across nodes (group last use) come from Redis ``TIME``, never from node clocks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis

from common.keys import CollectionKeys

# KEYS: stream, registry. ARGV: group, start id, stream ttl ms, registry ttl ms.
# Creates the group if missing (MKSTREAM); a stream made here has no events and no TTL yet, so
# it gets the retention TTL ingest would give it. (Ingest deletes the stream when it starts a
# collection's first epoch, taking any group made before the first event with it: the registry
# entry is how the group's backlog survives that.) Returns {Redis time in ms, 1 if created}.
_ENSURE = """
local start = ARGV[2]
if start == '$' and redis.call('ZSCORE', KEYS[2], ARGV[1]) then
  -- registered but missing: its stream was reset or expired since it was last used, so no
  -- event now in the stream was ever seen by it
  start = '0'
end
local ok = redis.pcall('XGROUP', 'CREATE', KEYS[1], ARGV[1], start, 'MKSTREAM')
local created = 1
if type(ok) == 'table' and ok.err then
  if not string.find(ok.err, 'BUSYGROUP') then
    return redis.error_reply(ok.err)
  end
  created = 0
end
if redis.call('PTTL', KEYS[1]) == -1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[2], now, ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return {now, created}
"""

# KEYS: stream, registry. ARGV: group, registry ttl ms. Records that the group is in use.
_TOUCH = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[2], now, ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return now
"""

# KEYS: stream. ARGV: group, consumer, target consumer, idle ms, batch.
# Moves up to `batch` pending entries of `consumer` to `target` (with their idle time set to
# `idle`, so any node's next reclaim pass takes them at once), and deletes `consumer` once it
# holds nothing. Returns the number of entries moved.
_RELEASE = """
local p = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', tonumber(ARGV[5]), ARGV[2])
if #p > 0 then
  local args = {'XCLAIM', KEYS[1], ARGV[1], ARGV[3], '0'}
  for _, e in ipairs(p) do args[#args + 1] = e[1] end
  args[#args + 1] = 'IDLE'
  args[#args + 1] = ARGV[4]
  args[#args + 1] = 'JUSTID'
  redis.call(unpack(args))
end
if #p < tonumber(ARGV[5]) then
  redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
end
return #p
"""

# KEYS: stream. ARGV: group, min idle ms, consumers to keep...
# Deletes consumers that hold no pending entry and were idle at least `min idle` (members of a
# crashed node, after their entries were reclaimed). Returns how many were deleted.
_PRUNE = """
local keep = {}
for i = 3, #ARGV do keep[ARGV[i]] = true end
local list = redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])
local n = 0
for _, c in ipairs(list) do
  local f = {}
  for i = 1, #c, 2 do f[c[i]] = c[i + 1] end
  if not keep[f['name']] and tonumber(f['pending']) == 0
     and tonumber(f['idle']) >= tonumber(ARGV[2]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], f['name'])
    n = n + 1
  end
end
return n
"""

# KEYS: stream, registry. ARGV: idle ms, registry ttl ms.
# Destroys the collection's groups unused for longer than `idle` (by the registry's last-use
# times); a group found in the stream but not in the registry is registered now, so it is
# destroyed later unless someone uses it. Returns {destroyed group names, groups remaining}.
_CLEANUP = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local idle = tonumber(ARGV[1])
local destroyed = {}
if redis.call('EXISTS', KEYS[1]) == 1 then
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
    local name = g[2]
    local score = redis.call('ZSCORE', KEYS[2], name)
    if not score then
      redis.call('ZADD', KEYS[2], now, name)
    elseif now - tonumber(score) > idle then
      redis.call('XGROUP', 'DESTROY', KEYS[1], name)
      redis.call('ZREM', KEYS[2], name)
      destroyed[#destroyed + 1] = name
    end
  end
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. (now - idle))
local remaining = redis.call('ZCARD', KEYS[2])
if remaining > 0 then
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
end
return {destroyed, remaining}
"""

Entry = tuple[str, bytes]  # (stream id, data json)


def is_nogroup(exc: BaseException) -> bool:
    """The stream or the group is gone (expired with retention, reset by a new epoch, or
    destroyed as idle): the caller recreates the group."""
    return isinstance(exc, redis.ResponseError) and str(exc).startswith("NOGROUP")


def _entries(raw: Any) -> list[Entry]:
    out: list[Entry] = []
    for sid, fields in raw or ():
        if fields is None:
            continue  # deleted (trimmed) entry
        data = fields.get(b"d")
        if data is None:
            continue
        out.append((sid.decode() if isinstance(sid, bytes) else str(sid), data))
    return out


def _ids(raw: Any) -> list[str]:
    return [i.decode() if isinstance(i, bytes) else str(i) for i in raw or ()]


@dataclass(frozen=True)
class AutoClaim:
    next_start: str
    entries: list[Entry]
    deleted: list[str]


class GroupRedis:
    """Commands for one (collection, group) on the primary (group reads are writes)."""

    def __init__(self, client: Any, keys: CollectionKeys, group: str, retention_ms: int) -> None:
        self.client = client
        self.keys = keys
        self.group = group
        self.retention_ms = retention_ms
        self.registry_ttl_ms = retention_ms * 2
        self._ensure = client.register_script(_ENSURE)
        self._touch = client.register_script(_TOUCH)
        self._release = client.register_script(_RELEASE)
        self._prune = client.register_script(_PRUNE)
        self._cleanup = client.register_script(_CLEANUP)

    @property
    def _both(self) -> list[str]:
        return [self.keys.stream, self.keys.group_registry()]

    async def ensure(self, start: str) -> tuple[int, bool]:
        """Create the group at ``start`` unless it exists: (Redis time in ms, created)."""
        args = [self.group, start, self.retention_ms, self.registry_ttl_ms]
        now, created = await self._ensure(keys=self._both, args=args)
        return int(now), bool(int(created))

    async def touch(self) -> int:
        return int(await self._touch(keys=self._both, args=[self.group, self.registry_ttl_ms]))

    async def epoch(self) -> str | None:
        raw = await self.client.hget(self.keys.meta, "e")
        return raw.decode() if raw is not None else None

    async def last_id(self) -> str:
        """The collection's newest event id, for SUBSCRIBED (``"0"`` when it has none)."""
        epoch, seq, ms = await self.client.hmget(self.keys.meta, "e", "q", "ms")
        if epoch is None or not seq or int(seq) == 0:
            return "0"
        return f"{int(ms or 0)}-{int(seq)}@{epoch.decode()}"

    async def read_new(self, consumer: str, count: int) -> list[Entry]:
        reply = await self.client.xreadgroup(
            self.group, consumer, {self.keys.stream: ">"}, count=count
        )
        if not reply:
            return []
        if isinstance(reply, dict):  # RESP3
            return [e for entries in reply.values() for e in _entries(entries[0])]
        return [e for _stream, entries in reply for e in _entries(entries)]

    async def claim(self, consumer: str, ids: list[str]) -> list[Entry]:
        """Take ``ids`` (whoever holds them) for ``consumer``; deleted ones are dropped."""
        if not ids:
            return []
        raw = await self.client.xclaim(self.keys.stream, self.group, consumer, 0, ids)
        return _entries(raw)

    async def autoclaim(self, consumer: str, min_idle_ms: int, start: str, count: int) -> AutoClaim:
        raw = await self.client.xautoclaim(
            self.keys.stream, self.group, consumer, min_idle_ms, start, count=count
        )
        nxt = raw[0].decode() if isinstance(raw[0], bytes) else str(raw[0])
        deleted = _ids(raw[2]) if len(raw) > 2 else []
        return AutoClaim(nxt, _entries(raw[1]), deleted)

    async def ack(self, ids: list[str]) -> int:
        if not ids:
            return 0
        return int(await self.client.xack(self.keys.stream, self.group, *ids))

    async def pending_of(self, consumer: str, count: int) -> list[str]:
        rows = await self.client.xpending_range(
            self.keys.stream, self.group, "-", "+", count, consumername=consumer
        )
        return [
            r["message_id"].decode() if isinstance(r["message_id"], bytes) else r["message_id"]
            for r in rows
        ]

    async def pending_count(self) -> int:
        info = await self.client.xpending(self.keys.stream, self.group)
        return int(info.get("pending", 0)) if isinstance(info, dict) else int(info[0])

    async def release(self, consumer: str, target: str, idle_ms: int, batch: int = 500) -> int:
        """Move all of ``consumer``'s pending entries to ``target`` marked idle, then delete it."""
        moved_total = 0
        while True:
            moved = int(
                await self._release(
                    keys=[self.keys.stream], args=[self.group, consumer, target, idle_ms, batch]
                )
            )
            moved_total += moved
            if moved < batch:
                return moved_total

    async def prune(self, min_idle_ms: int, keep: list[str]) -> int:
        return int(
            await self._prune(keys=[self.keys.stream], args=[self.group, min_idle_ms, *keep])
        )

    async def cleanup(self) -> tuple[list[str], int]:
        """Destroy this collection's groups idle longer than retention: (destroyed, remaining)."""
        raw = await self._cleanup(keys=self._both, args=[self.retention_ms, self.registry_ttl_ms])
        return _ids(raw[0]), int(raw[1])
