"""Consumer groups on a real Redis Cluster: two ``vski-fanout`` nodes with REDIS_CLUSTER=true,
gunicorn ingest, SDK-like clients. Every group key shares the collection's hash tag, so group
commands and scripts route to the slot's master; collections on different masters work alike.
"""

from __future__ import annotations

import pytest

from common.layout import collection_keys
from tests.support.groups import FAST, LIMIT, Ledger, client, nodes_started, publish, until
from tests.support.procs import Proc, fanout_proc, ingest_proc
from tests.support.redis_cluster import RedisClusterFixture

pytestmark = pytest.mark.timeout(120)


def on_two_masters(cluster: RedisClusterFixture) -> list[str]:
    """Two collection names whose streams live on different masters."""
    owners: dict[int, str] = {}
    i = 0
    while len(owners) < 2:
        name = f"gjobs{i}"
        i += 1
        owners.setdefault(cluster.owner_of(collection_keys("postgres", name).stream).port, name)
    return list(owners.values())


async def share_and_redeliver(a: Proc, b: Proc, ingest: Proc, coll: str) -> None:
    ledger = Ledger()
    async with (
        client(a, "a1", ledger) as a1,
        client(b, "b1", ledger) as b1,
        client(a, "silent", ledger, ack=False) as silent,
    ):
        await silent.subscribe(coll, "g")
        await publish(ingest, coll, LIMIT)
        assert await until(lambda: len(silent.received) == LIMIT, 10)
        await a1.subscribe(coll, "g")
        await b1.subscribe(coll, "g")
        await publish(ingest, coll, 30, start=100)
        assert await until(lambda: len(ledger.acks) == 30, 20), len(ledger.acks)
        held = list(silent.received)
        await silent.close()  # its events are handed on
        assert await until(lambda: len(ledger.acks) == 30 + LIMIT, 15)
        assert set(held) <= set(ledger.acks)
        assert set(ledger.acks.values()) == {1}
        assert ledger.overlaps == []
        assert a1.received and b1.received


async def test_groups_share_and_redeliver_on_redis_cluster(
    redis_cluster_session: RedisClusterFixture,
) -> None:
    cluster = redis_cluster_session
    cluster.wait_ok()
    env = {"REDIS_CLUSTER": "true"}
    ingest = ingest_proc(cluster.url, workers=2, **env).start()
    procs = [fanout_proc(cluster.url, **{**FAST, **env}) for _ in range(2)]
    try:
        a, b = await nodes_started(procs)
        for coll in on_two_masters(cluster):
            await share_and_redeliver(a, b, ingest, coll)
    finally:
        for p in procs:
            p.stop()
        ingest.stop()
