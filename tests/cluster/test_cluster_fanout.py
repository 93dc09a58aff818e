"""Fanout on a real Redis Cluster: two ``vski-fanout`` nodes with REDIS_CLUSTER=true, gunicorn
ingest with INGEST_WAIT_REPLICAS=1, WebSocket clients like the SDK.

Proves: collections owned by all three masters are delivered to subscribers on both nodes, with
one sharded pub/sub connection per (fanout node, master) — not one per collection; a collection
whose slot is migrated to another master while events flow keeps flowing (the old owner pushes
``sunsubscribe``, the node resubscribes on the new owner and catches up from its cursor); a master
killed under load is followed after its replica's promotion, and no client misses an event that
ingest answered 200 for.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator

import pytest

from common.layout import collection_keys
from tests.support.backends import ClusterBackend
from tests.support.redis_cluster import ClusterNode, RedisClusterFixture, WebhookLoad, key_slot
from tests.support.stack import Stack, stack_on
from tests.support.tokens import make_token
from tests.support.ws_client import Client, settle

pytestmark = pytest.mark.timeout(180)


# the stack of this module: its Redis is the session's cluster (``cstack.redis.cluster``)
ClusterStack = Stack[ClusterBackend]


@pytest.fixture(scope="module")
def cstack(redis_cluster_session: RedisClusterFixture) -> Iterator[ClusterStack]:
    """Ingest waiting for one replica per write, and two fanout nodes, on the cluster."""
    redis_cluster_session.wait_ok()
    ingest_env = {
        "INGEST_WAIT_REPLICAS": "1",
        "INGEST_WAIT_TIMEOUT_MS": "500",
        "REDIS_TIMEOUT": "1",
    }
    with stack_on(ClusterBackend(redis_cluster_session), ingest_env=ingest_env) as s:
        yield s


def shard_subscribers(node: ClusterNode, channel: str) -> int:
    reply = node.client().execute_command("PUBSUB", "SHARDNUMSUB", channel)
    return int(reply[1])


def pubsub_conns(node: ClusterNode) -> int:
    """Connections holding sharded subscriptions on this Redis node."""
    return sum(1 for c in node.client().client_list() if int(c.get("ssub", 0)) > 0)


def in_order_subset(expected: list[str], got: list[str]) -> tuple[int, int]:
    """(missing, duplicated): expected ids absent from ``got`` or out of order, and repeats."""
    dup = len(got) - len(set(got))
    pos = {eid: i for i, eid in enumerate(got)}
    missing, last = 0, -1
    for eid in expected:
        i = pos.get(eid)
        if i is None or i < last:
            missing += 1
        else:
            last = i
    return missing, dup


async def test_every_master_delivers_to_both_nodes_over_one_connection_per_master(
    cstack: ClusterStack,
) -> None:
    db = "spread"
    colls = cstack.redis.cluster.collections_per_master(db, 2, "c")
    names = [c for v in colls.values() for c in v]
    clients = {(n.port, c): await Client(n, db, c).open() for n in cstack.nodes for c in names}
    load = WebhookLoad(cstack.ingest.url, make_token(ttl=None), db, names, rate=50)
    load.start()
    await asyncio.sleep(1.5)
    await asyncio.to_thread(load.stop)
    for (_, coll), client in clients.items():
        expected = list(load.stats[coll].ok.values())
        assert expected
        await client.wait_ids(len(expected))
    await asyncio.sleep(0.3)
    for (_, coll), client in clients.items():
        assert client.ids == list(load.stats[coll].ok.values()), coll
    for master in cstack.redis.cluster.masters():
        for coll in colls[master.port]:
            assert shard_subscribers(master, collection_keys(db, coll).channel) == 2
        # two fanout nodes: two pub/sub connections on this master, however many collections
        assert pubsub_conns(master) == 2
    for client in clients.values():
        await client.close()


async def test_pubsub_connections_killed_listeners_resubscribe_many_slots(
    cstack: ClusterStack,
) -> None:
    """A listener that reconnects holding channels of many slots must resubscribe them all (one
    SSUBSCRIBE may only name channels of one slot on a cluster: CROSSSLOT otherwise)."""
    cluster = cstack.redis.cluster
    db = "rekill"
    colls = cluster.collections_per_master(db, 8, "c")
    names = [c for v in colls.values() for c in v]
    node = cstack.nodes[0]
    clients = [await Client(node, db, c).open() for c in names]
    for master in cluster.masters():
        master.client().execute_command("CLIENT", "KILL", "TYPE", "pubsub")
    for master in cluster.masters():
        chans = [collection_keys(db, c).channel for c in colls[master.port]]
        await settle(lambda m=master, ch=chans: all(shard_subscribers(m, x) == 1 for x in ch), 15)
        assert all(shard_subscribers(master, x) == 1 for x in chans), master.name
    load = WebhookLoad(cstack.ingest.url, make_token(ttl=None), db, names, rate=20)
    load.start()
    await asyncio.sleep(1.0)
    await asyncio.to_thread(load.stop)
    for client in clients:
        expected = list(load.stats[client.coll].ok.values())
        assert expected and await client.wait_ids(len(expected)) == expected
        await client.close()


def test_redis_pushes_sunsubscribe_when_a_slot_moves(cstack: ClusterStack) -> None:
    """What the fanout relies on (Redis 7): subscribers of a sharded channel, on the owner and on
    its replica, are told with an unsolicited ``sunsubscribe`` when the slot leaves them."""
    cluster = cstack.redis.cluster
    channel = collection_keys("probe", f"p{int(time.time() * 1000) % 10**7}").channel
    src = cluster.owner_of(channel)
    dst = next(m for m in cluster.masters() if m.port != src.port)
    subs = []
    for node in (src, cluster.replica_of(src)):
        ps = node.client().pubsub()
        ps.ssubscribe(channel)
        assert ps.get_message(timeout=2)["type"] == "ssubscribe"
        subs.append(ps)
    cluster.migrate_slot(key_slot(channel), dst)
    for ps in subs:
        msg = ps.get_message(timeout=5)
        assert msg is not None and msg["type"] == "sunsubscribe" and msg["channel"] == channel
        ps.close()


async def test_resharding_a_subscribed_collection_while_events_flow(cstack: ClusterStack) -> None:
    cluster = cstack.redis.cluster
    db, coll = "reshard", f"moving{int(time.time()) % 100000}"
    keys = collection_keys(db, coll)
    clients = [await Client(n, db, coll).open() for n in cstack.nodes]
    load = WebhookLoad(cstack.ingest.url, make_token(ttl=None), db, [coll], rate=60)
    load.start()
    await settle(lambda: all(len(c.ids) >= 20 for c in clients), 20)
    src = cluster.owner_of(keys.stream)
    dst = next(m for m in cluster.masters() if m.port != src.port)
    assert shard_subscribers(src, keys.channel) == 2
    await asyncio.to_thread(cluster.migrate_slot, key_slot(keys.stream), dst)
    # both nodes moved their subscription to the new owner (not just caught up by the sweep)
    await settle(lambda: shard_subscribers(dst, keys.channel) == 2, 15)
    assert shard_subscribers(dst, keys.channel) == 2
    before = len(load.stats[coll].ok)
    await settle(lambda: len(load.stats[coll].ok) >= before + 60, 20)
    await asyncio.to_thread(load.stop)
    expected = list(load.stats[coll].ok.values())
    assert len(expected) >= before + 60
    for c in clients:
        await c.wait_ids(len(expected))
    await asyncio.sleep(0.3)
    for c in clients:
        assert c.ids == expected  # no gap, no duplicate across the move
        await c.close()
    for node in cstack.nodes:  # followed by the push, not by the periodic sweep
        assert "channel_rerouted" in node.log_path.read_text(errors="replace")


async def test_master_failover_under_fanout_load_clients_get_every_acknowledged_event(
    cstack: ClusterStack, record_property: Callable[[str, object], None]
) -> None:
    cluster = cstack.redis.cluster
    db = "failover"
    colls = cluster.collections_per_master(db, 2, "c")
    names = [c for v in colls.values() for c in v]
    clients = {(n.port, c): await Client(n, db, c).open() for n in cstack.nodes for c in names}
    victim = cluster.masters()[0]
    load = WebhookLoad(cstack.ingest.url, make_token(ttl=None), db, names, rate=25)
    load.start()
    try:
        await asyncio.sleep(1.5)
        ok_before_kill = sum(len(load.stats[c].ok) for c in colls[victim.port])
        killed = time.monotonic()
        await asyncio.to_thread(cluster.kill_master, victim)
        promoted = time.monotonic() - killed
        await asyncio.to_thread(cluster.restart, victim)  # back as a replica: WAIT=1 works again
        await asyncio.sleep(2.5)
    finally:
        await asyncio.to_thread(load.stop)
        await asyncio.to_thread(cluster.heal)
    expected = {c: list(load.stats[c].ok.values()) for c in names}
    total = sum(len(v) for v in expected.values())
    await settle(lambda: all(len(cl.ids) >= len(expected[c]) for (_, c), cl in clients.items()), 30)
    await asyncio.sleep(0.5)
    missing = dup = extra = 0
    for (_, coll), client in clients.items():
        m, d = in_order_subset(expected[coll], client.ids)
        missing += m
        dup += d
        extra += len(set(client.ids) - set(expected[coll]))
    victim_ok_after = sum(len(load.stats[c].ok) for c in colls[victim.port]) - ok_before_kill
    counts = {
        "answered_200": total,
        "deliveries_expected": total * len(cstack.nodes),
        "missing": missing,
        "duplicated": dup,
        "delivered_not_answered_200": extra,  # stored+announced, then lost with the old master
        "retried": sum(s.retries for s in load.stats.values()),
        "promotion_ms": int(promoted * 1000),
    }
    for k, v in counts.items():
        record_property(k, v)
    print(f"\nfanout failover on cluster: {counts}")
    assert not any(s.gave_up for s in load.stats.values())
    assert victim_ok_after > 0 and total > 200
    assert missing == 0 and dup == 0, counts
    for client in clients.values():
        await client.close()
