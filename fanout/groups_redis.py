"""The Redis side of consumer groups: one object per (collection, group) holding its keys and
the few commands and scripts the worker needs.

Every key used here is the collection's stream or its group registry, which share the
collection's hash tag, so each script runs in one Redis Cluster slot. Steps that must not race
with another node (moving a departed member's entries, deleting a consumer, destroying an idle
group) are Lua scripts: ``XGROUP DELCONSUMER`` destroys the consumer's pending entries, so it
only ever runs in the same atomic step that saw the consumer had none.

Times compared across nodes (group last use) come from Redis ``TIME``, never from node clocks.
The scripts are the ``fanout/lua/group_*.lua`` files; each says what its KEYS and ARGV are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis

from common.layout import DATA_FIELD, META_EPOCH, META_FIELDS, CollectionKeys, event_id
from common.scripts import load_lua

_SCRIPTS = {
    name: load_lua("fanout", f"lua/group_{name}").text
    for name in ("ensure", "touch", "release", "prune", "cleanup")
}

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
        data = fields.get(DATA_FIELD)
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
        self._ensure = client.register_script(_SCRIPTS["ensure"])
        self._touch = client.register_script(_SCRIPTS["touch"])
        self._release = client.register_script(_SCRIPTS["release"])
        self._prune = client.register_script(_SCRIPTS["prune"])
        self._cleanup = client.register_script(_SCRIPTS["cleanup"])

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
        raw = await self.client.hget(self.keys.meta, META_EPOCH)
        return raw.decode() if raw is not None else None

    async def last_id(self) -> str:
        """The collection's newest event id, for SUBSCRIBED (``"0"`` when it has none)."""
        epoch, seq, ms = await self.client.hmget(self.keys.meta, *META_FIELDS)
        if epoch is None or not seq or int(seq) == 0:
            return "0"
        return event_id(int(ms or 0), int(seq), epoch.decode())

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
