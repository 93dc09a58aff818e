"""The Redis side of consumer groups (fanout/groups_redis.py) against real Redis: standalone
and a real Redis Cluster (every key of a group shares the collection's hash tag).

These pin the steps that must be atomic or that nobody would notice breaking in a quick run:
moving a departed member's entries, pruning dead consumers without dropping pending entries,
destroying groups idle past retention, and a group surviving ingest's first-epoch reset.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio

from common.layout import collection_keys
from fanout.groups_redis import GroupRedis, is_nogroup
from tests.support.redis_cluster import RedisClusterFixture
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.timeout(60)

RETENTION_MS = 3_600_000


@pytest.fixture
async def client(redis_srv: RedisServer) -> AsyncIterator[Any]:
    c = redis.asyncio.Redis(port=redis_srv.port, socket_timeout=5)
    try:
        yield c
    finally:
        await c.aclose()


async def append(c: Any, stream: str, count: int, seq0: int = 1) -> list[str]:
    """Entries shaped like ingest's (``<ms>-<seq>``, field ``d``)."""
    ids = []
    ms = int(time.time() * 1000)
    for i in range(count):
        sid = f"{ms}-{seq0 + i}"
        await c.xadd(stream, {"d": b'{"action":"create","record":{"n":%d}}' % i}, id=sid)
        ids.append(sid)
    return ids


def group(c: Any, coll: str = "c", name: str = "g") -> GroupRedis:
    return GroupRedis(c, collection_keys("db", coll), name, RETENTION_MS)


async def test_ensure_creates_at_end_once_with_retention_ttl(client: Any) -> None:
    g = group(client)
    await append(client, g.keys.stream, 2)
    await client.persist(g.keys.stream)
    now, created = await g.ensure("$")
    assert created and abs(now / 1000 - time.time()) < 60
    assert (await g.ensure("$"))[1] is False
    assert await g.read_new("n:1", 10) == [], "a new group starts after the existing events"
    ttl = await client.pttl(g.keys.stream)
    assert 0 < ttl <= RETENTION_MS
    new = await append(client, g.keys.stream, 1, seq0=3)
    assert [sid for sid, _ in await g.read_new("n:1", 10)] == new


async def test_group_made_before_first_event_survives_the_epoch_reset(client: Any) -> None:
    """Ingest DELs the stream when it starts a collection's first epoch: the registry makes
    the recreated group start at 0, so its backlog is not lost."""
    g = group(client)
    await g.ensure("$")
    await client.delete(g.keys.stream)  # what append.lua does for a new epoch
    ids = await append(client, g.keys.stream, 3)
    with pytest.raises(redis.ResponseError) as err:
        await g.read_new("n:1", 10)
    assert is_nogroup(err.value)
    assert (await g.ensure("$"))[1] is True
    assert [sid for sid, _ in await g.read_new("n:1", 10)] == ids


async def test_release_moves_entries_marked_idle_and_deletes_the_consumer(client: Any) -> None:
    g = group(client)
    await g.ensure("0")
    ids = await append(client, g.keys.stream, 5)
    assert len(await g.read_new("n:gone", 3)) == 3
    assert await g.release("n:gone", "orphaned", 30_000, batch=2) == 3
    names = [c["name"] for c in await client.xinfo_consumers(g.keys.stream, "g")]
    assert b"n:gone" not in names
    # marked idle: any node's reclaim (min idle = visibility) takes them at once
    got = await g.autoclaim("n:live", 30_000, "0-0", 10)
    assert [sid for sid, _ in got.entries] == ids[:3]
    assert await g.pending_of("n:live", 10) == ids[:3]


async def test_autoclaim_reports_trimmed_entries(client: Any) -> None:
    g = group(client)
    await g.ensure("0")
    ids = await append(client, g.keys.stream, 3)
    await g.read_new("n:1", 3)
    await client.xdel(g.keys.stream, ids[0])  # trimmed by retention while pending
    got = await g.autoclaim("n:2", 0, "0-0", 10)
    assert got.deleted == [ids[0]]
    assert [sid for sid, _ in got.entries] == ids[1:]


async def test_prune_deletes_only_idle_consumers_without_pending(client: Any) -> None:
    g = group(client)
    await g.ensure("0")
    await append(client, g.keys.stream, 2)
    await g.read_new("holder", 1)
    await client.xgroup_createconsumer(g.keys.stream, "g", "empty")  # holds nothing
    await client.xgroup_createconsumer(g.keys.stream, "g", "kept")
    assert await g.prune(0, ["kept"]) == 1
    names = {c["name"] for c in await client.xinfo_consumers(g.keys.stream, "g")}
    assert names == {b"holder", b"kept"}, "a consumer with pending entries is never deleted"
    assert await g.pending_count() == 1


async def test_cleanup_destroys_groups_idle_past_retention(client: Any) -> None:
    keys = collection_keys("db", "c")
    old, used = group(client, name="old"), group(client, name="used")
    await old.ensure("$")
    await used.ensure("$")
    await client.xgroup_create(keys.stream, "unregistered", "$")
    await client.zadd(keys.group_registry(), {"old": 1})  # last used long ago
    assert await used.cleanup() == (["old"], 2)
    names = {g["name"] for g in await client.xinfo_groups(keys.stream)}
    assert names == {b"used", b"unregistered"}
    # a group nobody registered is registered now, so it is destroyed later if unused
    assert await client.zscore(keys.group_registry(), "unregistered") is not None
    assert await client.pttl(keys.group_registry()) > 0
    await used.touch()
    assert await client.zscore(keys.group_registry(), "used") is not None


async def test_group_commands_route_on_redis_cluster(
    redis_cluster_session: RedisClusterFixture,
) -> None:
    c = redis.asyncio.RedisCluster.from_url(redis_cluster_session.url, socket_timeout=5)
    try:
        g = group(c, coll=f"cl{time.time_ns()}")
        await g.ensure("0")
        ids = await append(c, g.keys.stream, 4)
        assert [sid for sid, _ in await g.read_new("n:1", 2)] == ids[:2]
        assert await g.release("n:1", "orphaned", 10_000) == 2
        got = await g.autoclaim("n:2", 10_000, "0-0", 10)
        assert [sid for sid, _ in got.entries] == ids[:2]
        assert await g.ack(ids[:2]) == 2
        assert [sid for sid, _ in await g.claim("n:3", ids[:1])] == []
        assert await g.prune(0, ["n:2"]) >= 1
        await g.touch()
        assert await g.cleanup() == ([], 1)
        assert await g.pending_count() == 0
    finally:
        await c.aclose()
