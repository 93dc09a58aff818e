"""Redis Cluster partition: one master's link goes down (it keeps running, isolated), not a kill.

The cluster fails it over to its replica after ``cluster-node-timeout``; the tiers must follow
by themselves. With ``INGEST_WAIT_REPLICAS=1`` every webhook answered 200 must be readable after
the failover and reach every client once. Without WAIT, a write acknowledged by the old master
just before the partition may never have reached the replica: the row measures how many.

The partition is healed once the failover is done (the old master rejoins as a replica), so
that with WAIT the failed-over shard, which had no replica meanwhile, accepts writes again.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import redis

from tests.support.chaos import (
    delivery,
    faulty,
    open_clients,
    reported,
    seq_order,
    settle_delivery,
    stop_all,
    sum_delivery,
    wait_for,
)
from tests.support.net_load import TimedSenders
from tests.support.netns import net_namespace, unavailable
from tests.support.netns_cluster import PartitionableCluster, partitionable_cluster
from tests.support.procs import fanout_proc, ingest_proc

pytestmark = [
    pytest.mark.skipif(unavailable() is not None, reason=str(unavailable())),
    pytest.mark.timeout(180),
]

DB = "netcluster"


def stream_ids(client: Any, coll: str) -> list[str]:
    epoch = client.hget(f"vski:{{{DB}/{coll}}}:m", "e")
    if epoch is None:
        return []
    entries = client.xrange(f"vski:{{{DB}/{coll}}}:s")
    return [f"{sid}@{epoch}" for sid, _ in entries]


def failed_over(cluster: PartitionableCluster, slot: int) -> bool:
    try:
        owner = cluster.owner_of_slot(slot, via=cluster.outside[0])
    except (redis.RedisError, OSError, LookupError):
        return False
    return owner.port != cluster.isolated.port


@pytest.mark.parametrize("wait", [1, 0], ids=["wait1", "nowait"])
async def test_cluster_master_partitioned(wait: int) -> None:
    label = "INGEST_WAIT_REPLICAS=1" if wait else "no WAIT"
    with (
        reported("network", f"Redis Cluster: one master partitioned, {label}") as row,
        net_namespace("cluster") as ns,
        partitionable_cluster(ns) as cluster,
    ):
        env = cluster.tier_env()
        url = env.pop("REDIS_URL")
        ingest = ingest_proc(
            url,
            workers=2,
            INGEST_WAIT_REPLICAS=str(wait),
            INGEST_WAIT_TIMEOUT_MS="300",
            REDIS_TIMEOUT="1",
            REDIS_CONNECT_TIMEOUT="1",
            INGEST_BREAKER_PROBE_SECONDS="0.5",
            **env,
        ).start()
        nodes = [
            fanout_proc(url, REDIS_TIMEOUT="1", FANOUT_REDIS_PING_INTERVAL="1", **env).start()
            for _ in range(2)
        ]
        try:
            by_master = cluster.collections_per_master(DB, 2, "pc")
            colls = [c for names in by_master.values() for c in names]
            isolated_colls = by_master[cluster.isolated.port]
            slot = cluster.slots_of(cluster.isolated)[0]
            clients = await open_clients([n.port for n in nodes], DB, 10, colls)
            senders = TimedSenders(ingest.port, DB, colls, rate=20, threads=4).start()
            await asyncio.sleep(3.0)
            ns.blackhole()
            down_at = time.monotonic()
            over = await wait_for(lambda: failed_over(cluster, slot), 30)
            failover_s = time.monotonic() - down_at
            await asyncio.sleep(2.0)
            ns.heal()
            await asyncio.to_thread(cluster.wait_ok, 40)
            healed_s = time.monotonic() - down_at
            await asyncio.sleep(3.0)
            await asyncio.to_thread(senders.stop, 60)
            await settle_delivery(clients, senders.ids_by_coll, 45)
            reader = redis.RedisCluster(
                host=cluster.outside[0].host, port=cluster.outside[0].port, decode_responses=True
            )
            stored = {c: set(stream_ids(reader, c)) for c in colls}
            reader.close()
        finally:
            for n in nodes:
                n.stop()
            ingest.stop()
        answered = senders.ids_by_coll
        unreadable = {c: [i for i in answered[c] if i not in stored[c]] for c in colls}
        missing = sum(len(v) for v in unreadable.values())
        # what clients must have: every event answered 200 that Redis still holds
        results = [
            delivery(seq_order([i for i in answered[c] if i in stored[c]]), cl.ids[c])
            for cl in clients
            for c in colls
        ]
        lost, dup, _ = sum_delivery(results)
        during = senders.statuses(down_at, down_at + healed_s)
        codes = sorted({a.code for a in senders.attempts if a.status == 503})
        events = sum(len(v) for v in answered.values())
        row.update(
            tried=f"1 of 3 masters' link down until failover + 2 s, 20 webhooks/s over 6 "
            f"collections ({len(isolated_colls)} on the isolated master) retried until 200, "
            f"10 clients on 2 nodes, {label}",
            events=events,
            clients=len(clients),
            lost=lost,
            duplicated=dup,
            notes=f"failover {failover_s:.1f} s after the link went down, cluster ok again "
            f"{healed_s:.1f} s; answers meanwhile {dict(during)} ({', '.join(codes)}); "
            f"answered 200 but not readable after the failover: {missing} of {events}",
        )
        await stop_all(clients)
        assert over, "the cluster did not fail the isolated master over"
        assert senders.sent == len({*senders.stored}), "a webhook was never answered 200"
        assert (lost, dup) == (0, 0), faulty(results)
        if wait:
            assert missing == 0, unreadable
