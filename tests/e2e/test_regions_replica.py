"""Two regions: ingest writes to the primary Redis; fanout A reads the primary, fanout B reads a
replica of it (``REDIS_READ_URL``), as a second region would read its local read-only Redis.

Proves: B serves live events from the replica (its stream reads and its sharded subscription are
on the replica, not on the primary: sharded pub/sub messages, including those published by the
append script, are replicated); a client that moves from A to B mid-stream with its lastId gets
exactly what it missed (replicas keep the same stream ids); when B's replica lags behind the
client's lastId, B waits for it instead of replaying the collection again; consumer groups on B
write to the primary.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.support.groups import Ledger, client
from tests.support.ingest_http import BackgroundPoster, Poster
from tests.support.procs import Proc, fanout_proc, ingest_proc
from tests.support.redis_server import RedisServer, primary_with_replica
from tests.support.stack import NODE_ENV
from tests.support.ws_client import Client, settle

pytestmark = pytest.mark.timeout(120)

PAUSE_MS = 3000  # replication held back on the replica: less than the hub's replica_wait (5 s)


@dataclass
class Regions:
    primary: RedisServer
    replica: RedisServer
    ingest: Proc
    a: Proc  # region A: reads the primary
    b: Proc  # region B: reads the replica


@pytest.fixture(scope="module")
def regions() -> Iterator[Regions]:
    with primary_with_replica() as (primary, replica):
        ingest = ingest_proc(primary.url, workers=2).start()
        a = fanout_proc(primary.url, **NODE_ENV).start()
        b = fanout_proc(primary.url, REDIS_READ_URL=replica.url, **NODE_ENV).start()
        try:
            yield Regions(primary, replica, ingest, a, b)
        finally:
            for p in (a, b, ingest):
                p.stop()


def sharded_conns(server: RedisServer) -> int:
    return sum(1 for c in server.client().client_list() if int(c.get("ssub", 0)) > 0)


async def test_region_b_reads_the_replica_and_a_client_moves_without_a_gap(
    regions: Regions,
) -> None:
    db, coll = "regions", "moving"
    reference_b = await Client(regions.b, db, coll).open()
    moving = await Client(regions.a, db, coll).open()
    # A subscribes on the primary, B on the replica: one sharded connection each
    assert sharded_conns(regions.primary) == 1
    assert sharded_conns(regions.replica) == 1
    poster = BackgroundPoster(Poster(regions.ingest), db, coll, 150, pace=0.01)
    poster.start()
    await settle(lambda: len(moving.ids) >= 40)
    await moving.close()  # region A goes away mid-stream
    before = list(moving.ids)
    assert before
    await asyncio.sleep(0.2)
    resumed = await Client(regions.b, db, coll).open(last_id=before[-1])
    assert resumed.subscribed[0]["recovered"] is True
    await asyncio.to_thread(poster.join, 60)
    assert poster.error is None, poster.error
    await resumed.wait_ids(len(poster.ids) - len(before))
    await reference_b.wait_ids(len(poster.ids))
    await asyncio.sleep(0.3)
    assert reference_b.ids == poster.ids  # live from the replica, all of them, in order
    assert before + resumed.ids == poster.ids  # no gap, no duplicate at the hand-over
    for c in (reference_b, resumed):
        await c.close()


async def test_moving_to_a_lagging_region_waits_for_the_replica(regions: Regions) -> None:
    db, coll = "regions", f"lag{int(time.time() * 1000) % 10**7}"
    poster = Poster(regions.ingest)
    first = await asyncio.to_thread(poster.many, db, coll, 5)
    on_a = await Client(regions.a, db, coll).open(last_id=first[-1])
    on_b = await Client(regions.b, db, coll).open(last_id=first[-1])  # B tracks it already
    # the replica stops applying the replication stream for a while: region B lags behind A
    regions.replica.client().execute_command("CLIENT", "PAUSE", PAUSE_MS, "WRITE")
    paused_at = time.monotonic()
    more = await asyncio.to_thread(poster.many, db, coll, 10, 100)
    assert await on_a.wait_ids(len(more)) == more
    replica_len = regions.replica.client().xlen(f"vski:{{{db}/{coll}}}:s")
    await on_a.close()
    # the client moves to B with a lastId that B's Redis has not seen yet
    assert time.monotonic() - paused_at < PAUSE_MS / 1000 - 0.5, "too slow to test the lag"
    moved = await Client(regions.b, db, coll).open(last_id=on_a.ids[4])
    assert replica_len == 5  # the replica really was behind when the client arrived
    rest = await asyncio.to_thread(poster.many, db, coll, 5, 200)
    expected_after = more[5:] + rest
    await moved.wait_ids(len(expected_after), timeout=20)
    await on_b.wait_ids(len(more + rest), timeout=20)
    await asyncio.sleep(0.3)
    assert moved.subscribed[0]["recovered"] is True
    assert moved.ids == expected_after  # nothing replayed twice, nothing skipped
    assert on_b.ids == more + rest
    for c in (moved, on_b):
        await c.close()


async def test_consumer_group_on_the_replica_region_writes_to_the_primary(
    regions: Regions,
) -> None:
    """Groups write (XREADGROUP, XACK): on region B they go to REDIS_URL, the primary, while B's
    live path reads the replica. Two members on B share the events, each acknowledged once."""
    db, coll = "postgres", f"jobs{int(time.time() * 1000) % 10**7}"
    ledger = Ledger()
    async with client(regions.b, "m1", ledger) as m1, client(regions.b, "m2", ledger) as m2:
        await m1.subscribe(coll, "mailers")
        await m2.subscribe(coll, "mailers")
        ids = await asyncio.to_thread(Poster(regions.ingest).many, db, coll, 30)
        await settle(lambda: len(ledger.acks) >= len(ids), 20)
        assert sorted(ledger.acks) == sorted(ids) and set(ledger.acks.values()) == {1}
        assert not ledger.overlaps
        assert m1.received and m2.received  # both members got a share
    key = f"vski:{{{db}/{coll}}}:s"
    groups = regions.primary.client().xinfo_groups(key)
    assert [g["name"] for g in groups] == [b"mailers"]
    await settle(lambda: regions.primary.client().xpending(key, "mailers")["pending"] == 0, 10)
    assert regions.primary.client().xpending(key, "mailers")["pending"] == 0
