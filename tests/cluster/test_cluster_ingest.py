"""Ingest on a real Redis Cluster (3 masters + 3 replicas), unchanged code, REDIS_CLUSTER=true.

Proves: the append script's keys share one slot (it runs on a cluster, where a cross-slot script
is refused); collections spread over all masters; ids, dedupe, retention and the sharded
notification behave as on a standalone Redis; INGEST_WAIT_REPLICAS makes the event readable on
the replica before 200 and is sent to the collection's own master; a resharded slot (MOVED, and the
migration window) is followed without a restart; no plain PUBLISH anywhere.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from common.layout import collection_keys, parse_notification
from tests.support.procs import Proc, ingest_proc, wait_until
from tests.support.redis_cluster import (
    RedisClusterFixture,
    key_slot,
    post_webhook,
    webhook_body,
)
from tests.support.tokens import make_token

pytestmark = pytest.mark.timeout(120)

TOKEN = make_token(ttl=None)


def _ingest(cluster: RedisClusterFixture, **extra: str) -> Proc:
    return ingest_proc(cluster.url, workers=2, REDIS_CLUSTER="true", **extra)


@pytest.fixture(scope="module", params=[0, 1], ids=["wait0", "wait1"])
def ingest(
    request: pytest.FixtureRequest, redis_cluster_session: RedisClusterFixture
) -> Iterator[Proc]:
    """Ingest on the cluster, without and with INGEST_WAIT_REPLICAS=1."""
    proc = _ingest(
        redis_cluster_session,
        INGEST_WAIT_REPLICAS=str(request.param),
        INGEST_WAIT_TIMEOUT_MS="1000",
    ).start()
    yield proc
    proc.stop()


@pytest.fixture
def cluster(redis_cluster_session: RedisClusterFixture) -> RedisClusterFixture:
    redis_cluster_session.wait_ok()
    return redis_cluster_session


def _name() -> str:
    return "c" + uuid.uuid4().hex[:10]


def _post(proc: Proc, db: str, coll: str, n: int) -> dict[str, Any]:
    status, answer = post_webhook(proc.url, webhook_body(db, coll, n), TOKEN)
    assert status == 200, (status, answer, proc.log()[-2000:])
    return answer


def _seq(event_id: str) -> int:
    return int(event_id.split("@")[0].split("-")[1])


def test_fixture_is_three_masters_with_one_replica_each(cluster: RedisClusterFixture) -> None:
    masters = cluster.masters()
    assert len(masters) == 3
    assert len(cluster.replicas()) == 3
    assert sum(len(cluster.slots_of(m)) for m in masters) == 16384
    assert {cluster.replica_of(m).port for m in masters} == {r.port for r in cluster.replicas()}


def test_ids_dense_and_events_stored_on_the_owning_master(
    ingest: Proc, cluster: RedisClusterFixture
) -> None:
    db, coll = "app", _name()
    ids = [_post(ingest, db, coll, n)["id"] for n in range(1, 21)]
    assert [_seq(i) for i in ids] == list(range(1, 21))
    assert len({i.split("@")[1] for i in ids}) == 1  # one epoch
    keys = collection_keys(db, coll)
    owner = cluster.owner_of(keys.stream)
    # read straight from the owner with a plain client: the data is there and only there
    entries = owner.client().xrange(keys.stream)
    assert [eid for eid, _ in entries] == [i.split("@")[0] for i in ids]
    assert json.loads(entries[0][1]["d"]) == {"action": "create", "record": {"id": "r1", "n": 1}}
    in_slot = set(
        owner.client().execute_command("CLUSTER", "GETKEYSINSLOT", key_slot(keys.stream), 100)
    )
    assert {keys.stream, keys.meta} <= in_slot
    assert any(k.startswith(keys.dedupe("")) for k in in_slot)
    for other in cluster.masters():
        if other.port != owner.port:
            assert (
                other.client().execute_command("CLUSTER", "COUNTKEYSINSLOT", key_slot(keys.stream))
                == 0
            )


def test_retry_of_a_webhook_gets_the_first_id(ingest: Proc, cluster: RedisClusterFixture) -> None:
    db, coll = "app", _name()
    first = _post(ingest, db, coll, 7)["id"]
    again = [_post(ingest, db, coll, 7)["id"] for _ in range(3)]
    assert again == [first] * 3
    assert cluster.client().xlen(collection_keys(db, coll).stream) == 1


def test_sharded_notification_reaches_ssubscribe_on_owner_and_its_replica(
    ingest: Proc, cluster: RedisClusterFixture
) -> None:
    db, coll = "app", _name()
    keys = collection_keys(db, coll)
    owner = cluster.owner_of(keys.channel)
    replica = cluster.replica_of(owner)
    subs = []
    for node in (owner, replica):
        ps = node.client().pubsub()
        ps.ssubscribe(keys.channel)
        assert wait_until(
            lambda ps=ps: (
                (m := ps.get_message(timeout=0.1)) is not None and m["type"] == "ssubscribe"
            ),
            5,
        )
        subs.append(ps)
    # a node that does not own the slot refuses the subscription: the channel is sharded
    other = next(m for m in cluster.masters() if m.port != owner.port)
    with pytest.raises(redis.exceptions.MovedError, match=f":{owner.port}$"):
        bad = other.client().pubsub()
        bad.ssubscribe(keys.channel)
        bad.get_message(timeout=1)
    answer = _post(ingest, db, coll, 1)
    for ps in subs:
        got = None
        deadline = time.monotonic() + 5
        while got is None and time.monotonic() < deadline:
            m = ps.get_message(timeout=0.2)
            if m and m["type"] == "smessage":
                got = m
        assert got is not None, "no smessage"
        note = parse_notification(got["data"].encode())
        assert note.event_id == answer["id"]
        assert note.data.startswith(b'{"action":"create"')
        ps.close()


def test_collections_spread_over_all_three_masters(
    ingest: Proc, cluster: RedisClusterFixture
) -> None:
    db = "spread" + uuid.uuid4().hex[:6]
    colls = [f"coll{i}" for i in range(45)]
    for c in colls:
        _post(ingest, db, c, 1)
    per_master = {}
    for m in cluster.masters():
        # SCAN on one node lists only the keys that node holds
        per_master[m.port] = len(list(m.client().scan_iter(match=f"vski:{{{db}/*}}:s")))
    assert sum(per_master.values()) == len(colls)
    assert len(per_master) == 3 and all(v >= 5 for v in per_master.values()), per_master


def _wait_calls(node: Any) -> int:
    stats = node.client().info("commandstats")
    return int(stats.get("cmdstat_wait", {}).get("calls", 0))


def test_wait_replicas_event_is_on_the_replica_when_answered(
    ingest: Proc, cluster: RedisClusterFixture, request: pytest.FixtureRequest
) -> None:
    if "wait1" not in request.node.callspec.id:
        pytest.skip("only with INGEST_WAIT_REPLICAS=1")
    db, coll = "app", _name()
    keys = collection_keys(db, coll)
    owner = cluster.owner_of(keys.stream)
    replica = cluster.replica_of(owner)
    rc = replica.client()
    rc.execute_command("READONLY")
    waits_before = {m.port: _wait_calls(m) for m in cluster.masters()}
    for n in range(1, 31):
        eid = _post(ingest, db, coll, n)["id"].split("@")[0]
        # WAIT returned before the 200: the replica already has it, no polling
        assert [e for e, _ in rc.xrange(keys.stream, eid, eid)] == [eid]
    waits = {m.port: _wait_calls(m) - waits_before[m.port] for m in cluster.masters()}
    assert waits[owner.port] >= 30  # WAIT went to the collection's own master ...
    assert all(v == 0 for p, v in waits.items() if p != owner.port), waits  # ... and only there


def test_waiting_for_more_replicas_than_exist_is_503_and_retry_is_deduped(
    cluster: RedisClusterFixture,
) -> None:
    proc = _ingest(cluster, INGEST_WAIT_REPLICAS="2", INGEST_WAIT_TIMEOUT_MS="50").start()
    try:
        db, coll = "app", _name()
        body = webhook_body(db, coll, 1)
        status, answer = post_webhook(proc.url, body, TOKEN)
        assert status == 503 and answer["error"] == "replication_timeout", answer
        status, _ = post_webhook(proc.url, body, TOKEN)
        assert status == 503
        # stored once on the primary (and on its one replica): the retry found it
        assert cluster.client().xlen(collection_keys(db, coll).stream) == 1
    finally:
        proc.stop()


def test_retention_trims_and_expires_on_the_cluster(cluster: RedisClusterFixture) -> None:
    proc = _ingest(cluster, RETENTION_MAX_EVENTS="10", RETENTION_SECONDS="60").start()
    try:
        db, coll = "app", _name()
        for n in range(1, 401):
            _post(proc, db, coll, n)
        c = cluster.client()
        stream = collection_keys(db, coll).stream
        assert c.xlen(stream) < 250  # MAXLEN ~ trims whole radix nodes, not exactly to 10
        assert 0 < c.pttl(stream) <= 60_000
        last = c.xrevrange(stream, count=1)[0][0]
        assert last.endswith("-400")
    finally:
        proc.stop()


def test_ingest_follows_a_resharded_collection(ingest: Proc, cluster: RedisClusterFixture) -> None:
    """MOVED after the slot moved; during the migration window the append is either refused
    (503: TRYAGAIN, its new dedupe key is on neither side yet) or stored, never lost."""
    db, coll = "app", _name()
    keys = collection_keys(db, coll)
    slot = key_slot(keys.stream)
    ids = {_post(ingest, db, coll, n)["id"] for n in range(1, 6)}
    src = cluster.owner_of(keys.stream)
    dst = next(m for m in cluster.masters() if m.port != src.port)
    cluster.begin_migration(slot, dst)
    statuses = []
    try:
        for step in ("migrating", "keys moved"):
            if step == "keys moved":
                cluster.move_keys(slot, src, dst)
                # a single-key read in the window follows ASK to the importing node
                assert len(cluster.client().xrange(keys.stream)) >= 5
            status, answer = post_webhook(ingest.url, webhook_body(db, coll, 6), TOKEN)
            assert status in (200, 503), (step, status, answer)
            statuses.append(status)
            if status == 200:
                ids.add(answer["id"])
    finally:
        cluster.finish_migration(slot, src, dst)
    assert cluster.owner_of(keys.stream).port == dst.port
    ids |= {_post(ingest, db, coll, n)["id"] for n in range(6, 12)}  # MOVED -> new owner
    assert len(ids) == 11  # n=6 stored once, whether in the window or after it
    stored = {e for e, _ in dst.client().xrange(keys.stream)}
    assert {i.split("@")[0] for i in ids} == stored
    assert sorted(_seq(i) for i in ids) == list(range(1, 12))  # the sequence moved with the slot
    assert src.client().execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) == 0


def test_no_plain_publish_on_the_wire(ingest: Proc, cluster: RedisClusterFixture) -> None:
    """A PSUBSCRIBE * on every node sees every plain PUBLISH in the cluster: it must see none."""
    watchers = []
    for node in cluster.live():
        ps = node.client().pubsub()
        ps.psubscribe("*")
        watchers.append(ps)
    for ps in watchers:
        assert wait_until(
            lambda ps=ps: (
                (m := ps.get_message(timeout=0.1)) is not None and m["type"] == "psubscribe"
            ),
            5,
        )
    db = "app"
    for i in range(10):
        _post(ingest, db, _name(), i)
    time.sleep(0.3)
    seen = [m for ps in watchers for m in iter(lambda ps=ps: ps.get_message(timeout=0.05), None)]
    for ps in watchers:
        ps.close()
    assert seen == []
