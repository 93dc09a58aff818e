"""Direct cluster routing (ingest/direct.py) on a real Redis Cluster: the append goes straight to
the slot's primary on a plain connection, and follows the cluster when it changes.

Proves: the local slot function agrees with the server's; each append lands on its owner and
nowhere else; a stale table is corrected by MOVED with one refresh per interval, not one per
error; an owner that cannot be reached opens its own breaker only, and a background refresh
sends the slot to the live owner; an ASK in a migration window is followed (ASKING on the same
connection); a live resharding of a collection's slot while webhooks flow stores every webhook
answered 200 exactly once.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from common.config import RetentionSettings
from common.layout import collection_keys
from common.messages import decode_webhook
from devstack.ports import free_port
from ingest.slot_map import SLOTS, SlotRange, slot_of
from ingest.store import EventStore
from tests.support.procs import Proc, ingest_proc, wait_until
from tests.support.redis_cluster import (
    ClusterNode,
    RedisClusterFixture,
    WebhookLoad,
    webhook_body,
)
from tests.support.tokens import make_token

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def cluster(redis_cluster_session: RedisClusterFixture) -> Iterator[RedisClusterFixture]:
    redis_cluster_session.wait_ok()
    yield redis_cluster_session
    redis_cluster_session.heal()


def _store(cluster: RedisClusterFixture, **kw: Any) -> EventStore:
    seed = cluster.live()[0]
    client = redis.RedisCluster(host=seed.host, port=seed.port, socket_timeout=2)
    return EventStore(client, RetentionSettings(), **kw)


def _hook(db: str, coll: str, n: int) -> Any:
    return decode_webhook(webhook_body(db, coll, n))


def _calls(node: ClusterNode, command: str) -> int:
    stats = node.client().info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


def _name() -> str:
    return "d" + uuid.uuid4().hex[:10]


def test_local_slot_is_the_servers_keyslot(cluster: RedisClusterFixture) -> None:
    node = cluster.live()[0].client()
    for coll in ("posts", "a.b-c_d", "x" * 64, _name()):
        keys = collection_keys("app", coll)
        for key in (keys.stream, keys.meta, keys.channel, keys.dedupe("00ff")):
            assert slot_of(key) == node.execute_command("CLUSTER", "KEYSLOT", key)


def test_each_append_runs_on_its_owner_only(cluster: RedisClusterFixture) -> None:
    db = "own" + uuid.uuid4().hex[:6]
    per_master = cluster.collections_per_master(db, 3, "c")
    store = _store(cluster)
    before = {m.port: _calls(m, "evalsha") for m in cluster.masters()}
    for colls in per_master.values():
        for n, coll in enumerate(colls):
            assert not store.append(_hook(db, coll, n)).duplicate
    after = {m.port: _calls(m, "evalsha") for m in cluster.masters()}
    # the first append of a process may meet NOSCRIPT on a master that never saw the script
    assert all(3 <= after[p] - before[p] <= 4 for p in before), (before, after)
    for port, colls in per_master.items():
        for coll in colls:
            assert cluster.by_port(port).client().xlen(collection_keys(db, coll).stream) == 1


def test_stale_table_is_fixed_by_moved_with_one_refresh(cluster: RedisClusterFixture) -> None:
    """Every slot points at one wrong master: each append is MOVED once (and still stored
    once), the slot is patched, and the storm asks CLUSTER SLOTS once per refresh interval."""
    store = _store(cluster, slot_refresh_interval=60)
    router = store._router
    assert router is not None
    db = "mv" + uuid.uuid4().hex[:6]
    store.append(_hook(db, "warm", 0))  # the table is learned
    wrong = cluster.masters()[0]
    router.map.replace([SlotRange(0, SLOTS - 1, wrong.name)])
    router.gate.claim()  # as if a refresh had just run: MOVED alone must route
    refreshes = sum(_calls(n, "cluster|slots") for n in cluster.live())
    colls = [f"c{i}" for i in range(30)]
    for n, coll in enumerate(colls):
        assert not store.append(_hook(db, coll, n)).duplicate
    assert sum(_calls(n, "cluster|slots") for n in cluster.live()) == refreshes
    for coll in colls:
        keys = collection_keys(db, coll)
        owner = cluster.owner_of(keys.stream)
        assert router.map.owner(slot_of(keys.stream)) == owner.name
        assert owner.client().xlen(keys.stream) == 1


def test_unreachable_owner_opens_its_breaker_and_a_refresh_reroutes(
    cluster: RedisClusterFixture,
) -> None:
    """The table names a node that is gone (a master that died, as a failover leaves it): the
    append fails (503), only that node's breaker opens, the background refresh maps the slot
    to its live owner and the next append is stored; the gone node's breaker heals because it
    owns no slot any more."""
    store = _store(cluster, slot_refresh_interval=0.05, probe_interval=0.2)
    router = store._router
    assert router is not None
    db, coll = "gone" + uuid.uuid4().hex[:6], "c"
    store.append(_hook(db, "warm", 0))
    slot = slot_of(collection_keys(db, coll).stream)
    dead = f"127.0.0.1:{free_port()}"
    router.map.moved(slot, dead)
    time.sleep(0.06)  # past the refresh interval
    with pytest.raises(redis.ConnectionError):
        store.append(_hook(db, coll, 1))
    assert store.open_circuit() is router.breakers[dead]
    assert wait_until(lambda: router.map.owner(slot) != dead, 5)
    assert not store.append(_hook(db, coll, 1)).duplicate  # stored, on the live owner
    assert wait_until(lambda: store.open_circuit() is None, 5)
    owner = cluster.owner_of(collection_keys(db, coll).stream)
    assert owner.client().xlen(collection_keys(db, coll).stream) == 1


def test_ask_in_a_migration_window_is_followed(cluster: RedisClusterFixture) -> None:
    """Slot MIGRATING/IMPORTING. The script's channel is one of its keys and never a stored
    key, so some key is always missing: while the collection's keys are still on the old owner
    it answers TRYAGAIN itself; once they are moved it answers ASK, and ingest sends ASKING +
    the script on one connection to the importing node, which answers TRYAGAIN (several keys,
    one missing). Either way a 503 that VSKI retries, nothing stored twice, the table not
    moved. Once the slot is assigned, MOVED routes the retry to the new owner, which has the
    moved events with their ids and sequence."""
    store = _store(cluster)
    router = store._router
    assert router is not None
    db, coll = "ask" + uuid.uuid4().hex[:6], "c"
    keys = collection_keys(db, coll)
    slot = slot_of(keys.stream)
    first = store.append(_hook(db, coll, 1))
    src = cluster.owner_of(keys.stream)
    dst = next(m for m in cluster.masters() if m.port != src.port)
    asking = _calls(dst, "asking")
    cluster.begin_migration(slot, dst)
    try:
        for step in ("keys on the source", "keys moved"):
            if step == "keys moved":
                cluster.move_keys(slot, src, dst)
            for n in (1, 2):  # a redelivery and a new webhook
                with pytest.raises(redis.exceptions.TryAgainError):
                    store.append(_hook(db, coll, n))
            assert router.map.owner(slot) == src.name, step  # ASK does not move the slot
            if step == "keys on the source":
                assert _calls(dst, "asking") == asking
        assert _calls(dst, "asking") == asking + 2  # the two appends after the keys moved
    finally:
        cluster.finish_migration(slot, src, dst)
    again, second = store.append(_hook(db, coll, 1)), store.append(_hook(db, coll, 2))
    assert again.id == first.id and again.duplicate and not second.duplicate
    assert router.map.owner(slot) == dst.name  # patched by MOVED
    assert [e for e, _ in dst.client().xrange(keys.stream)] == [
        i.split("@")[0] for i in (first.id, second.id)
    ]


@pytest.fixture
def ingest(cluster: RedisClusterFixture) -> Iterator[Proc]:
    proc = ingest_proc(
        cluster.url, workers=2, REDIS_CLUSTER="true", INGEST_SLOT_REFRESH_SECONDS="0.2"
    ).start()
    yield proc
    proc.stop()


def test_live_resharding_while_webhooks_flow_stores_each_200_once(
    cluster: RedisClusterFixture, ingest: Proc
) -> None:
    """Senders post to six collections (one of them is moved) and retry every 503 with the same
    body, like VSKI; meanwhile the moved collection's slot goes MIGRATING/IMPORTING, its keys
    are MIGRATEd and it is assigned to the new owner. Every webhook answered 200 is in the
    stream exactly once, with the id it was answered with, and nothing is given up."""
    db = "rs" + uuid.uuid4().hex[:6]
    colls = [f"c{i}" for i in range(6)]
    moved = colls[0]
    keys = collection_keys(db, moved)
    slot = slot_of(keys.stream)
    load = WebhookLoad(ingest.url, make_token(ttl=None), db, colls, rate=40, retry_delay=0.05)
    load.start()
    try:
        time.sleep(1.0)
        src = cluster.owner_of(keys.stream)
        dst = next(m for m in cluster.masters() if m.port != src.port)
        cluster.begin_migration(slot, dst)
        time.sleep(0.5)  # new dedupe keys: ASK from the source, TRYAGAIN: 503, retried
        cluster.move_keys(slot, src, dst)
        time.sleep(0.5)
        cluster.finish_migration(slot, src, dst)
        time.sleep(1.5)  # MOVED, then the patched table
    finally:
        load.stop()
    assert cluster.owner_of(keys.stream).port == dst.port
    st = load.stats[moved]
    print(f"\nresharded collection: answers {st.statuses}, retries {st.retries}")  # with -s
    assert st.gave_up == [] and len(st.ok) > 50, (st.statuses, ingest.log()[-2000:])
    for coll in colls:
        k = collection_keys(db, coll)
        entries = cluster.owner_of(k.stream).client().xrange(k.stream)
        seen = Counter(json.loads(fields["d"])["record"]["n"] for _, fields in entries)
        answered = load.stats[coll].ok
        assert all(seen[n] == 1 for n in answered), (coll, [n for n in answered if seen[n] != 1])
        assert set(seen) == set(answered), coll  # nothing stored that was not answered 200
        by_id = {eid: json.loads(f["d"])["record"]["n"] for eid, f in entries}
        assert all(by_id[i.split("@")[0]] == n for n, i in answered.items()), coll
    assert src.client().execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) == 0
