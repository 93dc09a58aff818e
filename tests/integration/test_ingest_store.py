"""EventStore + append.lua against a real Redis: retention, expiry, epochs, dense ids, WAIT."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from common.config import RetentionSettings
from common.messages import decode_webhook
from ingest.store import EventStore, ReplicationTimeout
from tests.support.ingest_http import webhook_body
from tests.support.procs import wait_until
from tests.support.redis_server import RedisServer, primary_with_replica, redis_server

NODE = 10  # stream-node-max-entries of the test Redis: approximate trimming is this coarse


@pytest.fixture
def small_nodes() -> Iterator[RedisServer]:
    with redis_server("--stream-node-max-entries", str(NODE)) as server:
        yield server


def client(server: RedisServer) -> redis.Redis:
    return redis.Redis(port=server.port, socket_timeout=5)


def hook(coll: str = "posts", rid: str = "r", ts: str | None = "t0", **kw: Any) -> Any:
    return decode_webhook(webhook_body(collection=coll, record_id=rid, timestamp=ts, **kw))


def test_count_retention_bounds_the_stream(small_nodes: RedisServer) -> None:
    r = client(small_nodes)
    store = EventStore(r, RetentionSettings(max_age_ms=3_600_000, max_len=50))
    last = ""
    for i in range(1000):
        last = store.append(hook(rid=f"r{i}", ts=str(i))).id
    length = r.xlen("vski:{postgres/posts}:s")
    assert 50 <= length <= 50 + NODE
    newest = r.xrevrange("vski:{postgres/posts}:s", count=1)[0][0].decode()
    assert last.startswith(newest + "@")


def test_age_retention_trims_and_expires(small_nodes: RedisServer) -> None:
    r = client(small_nodes)
    ret = RetentionSettings(max_age_ms=1000, max_len=10_000, meta_ttl_ms=60_000)
    store = EventStore(r, ret, dedupe_ttl_ms=1000)
    for i in range(35):
        store.append(hook(rid=f"old{i}", ts=str(i)))
    key = "vski:{postgres/posts}:s"
    assert 0 < r.pttl(key) <= 1000
    assert 59_000 < r.pttl("vski:{postgres/posts}:m") <= 60_000
    markers = r.keys("vski:{postgres/posts}:d:*")
    assert len(markers) == 35 and all(0 < r.pttl(k) <= 1000 for k in markers)
    time.sleep(1.2)
    store.append(hook(rid="new", ts="new"))
    # whole nodes older than the age limit are gone; at most one partly-old node remains
    assert r.xlen(key) <= NODE + 1
    # and with no more appends the stream and markers expire entirely
    assert wait_until(lambda: r.exists(key) == 0 and not r.keys("*:d:*"), timeout=10)
    assert r.hget("vski:{postgres/posts}:m", "q") == b"36"  # the epoch and seq outlive them


def test_many_collections_do_not_grow_memory(redis_srv: RedisServer) -> None:
    r = client(redis_srv)
    ret = RetentionSettings(max_age_ms=1000, max_len=100, meta_ttl_ms=1500)
    store = EventStore(r, ret, dedupe_ttl_ms=1000)
    for i in range(400):
        store.append(hook(coll=f"c{i}", rid="x"))
    assert r.dbsize() == 1200  # stream + meta + one dedupe marker each
    assert all(r.pttl(k) > 0 for k in r.scan_iter(count=1000))  # nothing without an expiry
    assert wait_until(lambda: r.dbsize() == 0, timeout=20, interval=0.2)


def test_dense_ids_and_new_epoch_when_data_lost(redis_srv: RedisServer) -> None:
    r = client(redis_srv)
    store = EventStore(r, RetentionSettings())
    ids = [store.append(hook(rid=f"r{i}", ts=str(i))).id for i in range(5)]
    seqs = [int(i.split("@")[0].split("-")[1]) for i in ids]
    epochs = {i.split("@")[1] for i in ids}
    assert seqs == [1, 2, 3, 4, 5] and len(epochs) == 1
    # Redis restarts without persistence: data and script cache are gone (NOSCRIPT is handled)
    redis_srv.restart()
    r2 = client(redis_srv)
    after = store.append(hook(rid="after", ts="after")).id
    assert after.split("@")[0].endswith("-1")
    assert after.split("@")[1] not in epochs
    assert r2.xlen("vski:{postgres/posts}:s") == 1


def test_lost_metadata_starts_a_new_epoch_and_drops_unknown_entries(redis_srv: RedisServer) -> None:
    r = client(redis_srv)
    store = EventStore(r, RetentionSettings())
    first = store.append(hook(rid="a", ts="1")).id
    store.append(hook(rid="b", ts="2"))
    r.delete("vski:{postgres/posts}:m")  # e.g. expired after EPOCH_TTL_SECONDS
    again = store.append(hook(rid="c", ts="3")).id
    assert again.split("@")[1] != first.split("@")[1]
    assert again.split("@")[0].endswith("-1")
    assert r.xlen("vski:{postgres/posts}:s") == 1


def test_dedupe_rules(redis_srv: RedisServer) -> None:
    store = EventStore(client(redis_srv), RetentionSettings())
    a = store.append(hook(rid="r", ts="t1"))
    assert not a.duplicate
    assert store.append(hook(rid="r", ts="t1")) == type(a)(a.id, True)
    assert store.append(hook(rid="r", ts="t2")).id != a.id
    assert store.append(hook(rid="r", ts="t1", action="update")).id != a.id
    assert store.append(hook(rid="r2", ts="t1")).id != a.id
    # without a timestamp, the record content tells deliveries apart
    n1 = store.append(hook(rid="r", ts=None, record={"v": 1}))
    assert store.append(hook(rid="r", ts=None, record={"v": 1})).id == n1.id
    assert store.append(hook(rid="r", ts=None, record={"v": 2})).id != n1.id


def test_notification_is_published_with_the_event(redis_srv: RedisServer) -> None:
    r = client(redis_srv)
    store = EventStore(r, RetentionSettings())
    pubsub = r.pubsub()
    pubsub.ssubscribe("vski:{postgres/posts}:n")
    assert wait_until(lambda: pubsub.get_message(timeout=0.1) is not None, timeout=5)
    eid = store.append(hook()).id
    msg = None
    deadline = time.monotonic() + 5
    while msg is None and time.monotonic() < deadline:
        msg = pubsub.get_message(timeout=0.5)
    assert msg is not None
    epoch_b, sid_b, data = msg["data"].split(b" ", 2)
    assert f"{sid_b.decode()}@{epoch_b.decode()}" == eid
    assert data.startswith(b'{"action":"create","record":')
    pubsub.close()


# ---------------------------------------------------------------- WAIT


def test_wait_for_replica() -> None:
    with primary_with_replica() as (primary, replica):
        store = EventStore(
            client(primary), RetentionSettings(), wait_replicas=1, wait_timeout_ms=2000
        )
        first = store.append(hook(rid="w1", ts="1"))  # first call: NOSCRIPT in the pipeline
        assert not first.duplicate
        # WAIT returned only after the replica had it
        assert client(replica).xlen("vski:{postgres/posts}:s") == 1

        store.wait_timeout_ms = 300
        assert replica.proc is not None
        os.kill(replica.proc.pid, signal.SIGSTOP)  # a replica that stopped answering
        try:
            started = time.monotonic()
            with pytest.raises(ReplicationTimeout, match="0 of 1 replicas"):
                store.append(hook(rid="w2", ts="2"))
            assert time.monotonic() - started < 2
        finally:
            os.kill(replica.proc.pid, signal.SIGCONT)
        # the sender retries: deduplicated, and now confirmed
        again = store.append(hook(rid="w2", ts="2"))
        assert again.duplicate
        assert client(primary).xlen("vski:{postgres/posts}:s") == 2
