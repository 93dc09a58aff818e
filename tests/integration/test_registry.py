"""The operations view's Redis side on a real standalone Redis and a real Redis Cluster: the
node registry (one ``{nodes}`` slot, per-field expiry emulated by scores), the activity
windows ingest workers flush, and the bounded reads of the admin API (scripts pipelined over
collections in many slots, a SCAN over every master, history pages).

In-process code on real Redis; the tiers as processes are in tests/e2e/test_ops_api.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from common.layout import ActivityKeys, EventId, RegistryKeys, collection_keys
from common.registry import SCRIPT, beat_args, leave_args, load_registry
from fanout.registry import NodeRegistry
from fanout.settings import load_fanout
from ingest import activity as activity_mod
from ingest import ops_read
from ingest.activity import Activity, window_index
from tests.support.backends import RedisTarget
from tests.support.tokens import SECRET

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module")
def prefix(redis_backend: RedisTarget) -> str:
    """A key prefix per backend run: the cluster is shared by the whole test session."""
    return f"reg{int(time.time() * 1000) % 10**8}{redis_backend.kind[0]}"


@pytest.fixture
def rc(redis_backend: RedisTarget) -> Iterator[Any]:
    c = redis_backend.client()
    try:
        yield c
    finally:
        c.close()


def beat(rc: Any, prefix: str, node_id: str, heartbeat: float, **record: Any) -> Any:
    keys = RegistryKeys(prefix)
    settings = load_registry({"REGISTRY_HEARTBEAT_SECONDS": str(heartbeat)})
    script = rc.register_script(SCRIPT.text)
    return script(keys=[keys.beats, keys.expiry], args=beat_args(node_id, record, settings))


def ids(rc: Any, prefix: str) -> list[str]:
    return [n["id"] for n in ops_read.read_nodes(rc, prefix, 100).nodes]


def test_heartbeats_are_listed_with_their_fields_and_a_clean_exit_leaves_at_once(
    rc: Any, prefix: str
) -> None:
    beat(rc, prefix, "n1", 5, role="fanout", connections=7, address="0.0.0.0:8080")
    beat(rc, prefix, "ingest-1", 5, role="ingest", webhooks_per_s=3.5)
    listing = ops_read.read_nodes(rc, prefix, 100)
    assert [n["id"] for n in listing.nodes] == ["n1", "ingest-1"]
    assert listing.nodes[0]["connections"] == 7 and listing.nodes[1]["webhooks_per_s"] == 3.5
    assert abs(listing.now_ms / 1000 - time.time()) < 60  # Redis time
    keys = RegistryKeys(prefix)
    script = rc.register_script(SCRIPT.text)
    assert script(keys=[keys.beats, keys.expiry], args=leave_args("n1")) == 1
    assert ids(rc, prefix) == ["ingest-1"]
    assert 0 < rc.pttl(keys.beats) <= 15_000 and 0 < rc.pttl(keys.expiry) <= 15_000


def test_a_node_that_stops_writing_disappears_within_one_ttl(rc: Any, prefix: str) -> None:
    beat(rc, prefix, "short", 0.1, role="fanout")  # ttl 300 ms
    beat(rc, prefix, "long", 5, role="fanout")
    assert set(ids(rc, prefix)) >= {"short", "long"}
    time.sleep(0.45)
    assert "short" not in ids(rc, prefix)
    beat(rc, prefix, "long", 5, role="fanout")  # any write drops the dead node's field too
    assert rc.hget(RegistryKeys(prefix).beats, "short") is None
    assert rc.zscore(RegistryKeys(prefix).expiry, "short") is None


def test_the_registry_expires_when_every_node_is_gone(redis_backend: RedisTarget) -> None:
    rc = redis_backend.client()
    prefix = f"gone{int(time.time() * 1000) % 10**8}"
    beat(rc, prefix, "only", 0.1, role="fanout")
    keys = RegistryKeys(prefix)
    assert rc.exists(keys.beats) == 1
    time.sleep(0.5)
    assert rc.exists(keys.beats) == 0 and rc.exists(keys.expiry) == 0
    rc.close()


def test_activity_windows_count_per_collection_and_per_database_and_stay_bounded(
    rc: Any, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(activity_mod, "MAX_MEMBERS", 3)
    act = Activity(rc, prefix)
    now = time.time()
    for i in range(5):
        for _ in range(i + 1):
            act._counts[("shop", f"c{i}")] = act._counts.get(("shop", f"c{i}"), 0) + 1
    act._counts[("blog", "posts")] = 2
    assert act.flush(now) == 6
    keys = ActivityKeys(prefix)
    everywhere = rc.zrevrange(keys.window(window_index(now)), 0, -1, withscores=True)
    assert everywhere == [(b"shop/c4", 5.0), (b"shop/c3", 4.0), (b"shop/c2", 3.0)]
    assert rc.zscore(keys.window(window_index(now), "blog"), "posts") == 2.0
    ttl = rc.pttl(keys.window(window_index(now)))
    assert 0 < ttl <= activity_mod.WINDOW_SECONDS * activity_mod.KEEP_WINDOWS * 1000
    picks = ops_read.busiest(rc, prefix, "shop", 2)
    assert [c.collection for c in picks] == ["c4", "c3"]
    assert picks[0].events_per_s is not None and picks[0].events_per_s > 0


def fill(rc: Any, prefix: str, db: str, coll: str, n: int) -> list[str]:
    keys = collection_keys(db, coll, prefix)
    ms = int(time.time() * 1000) - n
    out = []
    for i in range(1, n + 1):
        rc.xadd(
            keys.stream, {"d": b'{"action":"create","record":{"n":%d}}' % i}, id=f"{ms + i}-{i}"
        )
        out.append(f"{ms + i}-{i}@ep{coll}")
    rc.hset(keys.meta, mapping={"e": f"ep{coll}", "q": n, "ms": ms + n})
    return out


def test_collections_are_described_in_one_pipeline_across_slots(rc: Any, prefix: str) -> None:
    names = [f"col{i}" for i in range(12)]  # spread over the cluster's masters
    for i, name in enumerate(names):
        fill(rc, prefix, "shop", name, i + 1)
    picks = [ops_read.Candidate("shop", n, None, "scan") for n in [*names, "missing"]]
    rows = ops_read.describe_collections(rc, prefix, picks)
    by = {r["collection"]: r for r in rows}
    assert by["col11"]["retained"] == 12 and by["col11"]["last_id"].endswith("-12@epcol11")
    assert by["col0"]["first_id"] == by["col0"]["last_id"]
    assert by["col3"]["memory_bytes"] > 0 and by["col3"]["newest_age_ms"] >= 0
    assert by["missing"]["retained"] == 0 and by["missing"]["last_id"] is None
    found = ops_read.scan_recent(rc, prefix, "shop")
    assert {c for _, c, _ in found.found} == set(names) and found.complete


def test_groups_of_a_collection_with_their_consumers_and_oldest_pending(
    rc: Any, prefix: str
) -> None:
    ids_ = fill(rc, prefix, "shop", "jobs", 4)
    keys = collection_keys("shop", "jobs", prefix)
    rc.xgroup_create(keys.stream, "work~abc123", id="0")
    rc.xgroup_create(keys.stream, "mail", id="$")
    rc.xreadgroup("work~abc123", "n0de:1", {keys.stream: ">"}, count=3)
    rows, left_out = ops_read.describe_groups(rc, prefix, [("shop", "jobs")], 10, 1)
    by = {r["redis_group"]: r for r in rows}
    work = by["work~abc123"]
    assert (work["group"], work["pending"], work["consumers"]) == ("work", 3, 1)
    assert work["oldest_pending_id"] == ids_[0] and work["oldest_pending_deliveries"] == 1
    assert work["members"] == [
        {
            "consumer": "n0de:1",
            "node": "n0de",
            "pending": 3,
            "idle_ms": work["members"][0]["idle_ms"],
        }
    ]
    assert work["stuck"] and not by["mail"]["stuck"] and by["mail"]["pending"] == 0
    assert left_out == 0
    rows, left_out = ops_read.describe_groups(rc, prefix, [("shop", "jobs")], 1, 1)
    assert len(rows) == 1 and left_out == 1


def test_history_pages_forward_and_backward_with_client_ids(rc: Any, prefix: str) -> None:
    ids_ = fill(rc, prefix, "shop", "hist", 7)
    keys = collection_keys("shop", "hist", prefix)
    page = ops_read.read_history(rc, keys, None, 3, newest_first=False)
    assert [e["id"] for e in page.events] == ids_[:3] and page.next_id == ids_[2]
    page = ops_read.read_history(rc, keys, EventId.parse(page.next_id), 10, newest_first=False)
    assert [e["id"] for e in page.events] == ids_[3:] and page.next_id is None
    page = ops_read.read_history(rc, keys, None, 2, newest_first=True)
    assert [e["id"] for e in page.events] == ids_[::-1][:2]
    stale = EventId.parse(ids_[2].replace("@ephist", "@older"))
    page = ops_read.read_history(rc, keys, stale, 2, newest_first=False)
    assert page.epoch_changed and page.events[0]["id"] == ids_[0]


async def test_a_fanout_node_registers_marks_draining_and_leaves(
    redis_backend: RedisTarget, prefix: str
) -> None:
    env = {
        "JWT_SECRET": SECRET,
        "REDIS_URL": redis_backend.url,
        "REDIS_KEY_PREFIX": prefix,
        "FANOUT_BIND": "127.0.0.1:9999",
        "REGISTRY_HEARTBEAT_SECONDS": "0.2",
        **redis_backend.tier_env,
    }
    settings = load_fanout(env)
    fake = SimpleNamespace(
        server=SimpleNamespace(sessions={1, 2, 3}, draining=False),
        hub=SimpleNamespace(streams={"a": 1}, readiness=lambda: (True, "ok")),
        groups=SimpleNamespace(node_id="feed1234", workers={("shop", "jobs", "g"): 1}, swept=set()),
    )
    node = NodeRegistry(settings, settings.registry, fake.server, fake.hub, fake.groups)  # type: ignore[arg-type]
    rc = redis_backend.client()
    try:
        await node.start()
        first = {n["id"]: n for n in ops_read.read_nodes(rc, prefix, 10).nodes}["feed1234"]
        assert (first["address"], first["connections"], first["draining"]) == (
            "127.0.0.1:9999",
            3,
            False,
        )
        assert first["group_collections"] == ["shop/jobs"] and first["ready"] is True
        await node.mark_draining()
        mark = {n["id"]: n for n in ops_read.read_nodes(rc, prefix, 10).nodes}["feed1234"]
        assert mark["draining"] is True and mark["ready"] is False
        await asyncio.sleep(0.5)  # the loop keeps beating while draining
        assert "feed1234" in ids(rc, prefix)
        await node.stop()
        assert "feed1234" not in ids(rc, prefix)
    finally:
        rc.close()
