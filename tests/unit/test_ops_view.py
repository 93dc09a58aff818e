"""The operations view's pure parts: heartbeat numbers, registry listings, the shaping of the
admin API's answers, parameter checks, the key check before any Redis read, the terminal
tables and the dev banner. No Redis, no process: the Redis side is in
tests/integration/test_registry.py and the whole view in tests/e2e/test_ops_*.py."""

from __future__ import annotations

import json
from typing import Any

import falcon.testing
import msgspec
import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram

from common.config import ConfigError
from common.layout import (
    ActivityKeys,
    RegistryKeys,
    collection_keys,
    parse_channel,
    parse_meta_key,
)
from common.node_stats import (
    RATE_WINDOW,
    HistogramState,
    LatencyMeter,
    RateMeter,
    histogram_state,
    sample_total,
)
from common.registry import beat_args, list_args, load_registry, parse_listing
from common.scripts import load_lua
from devstack.banner import render as banner
from devstack.status import render as status_tables
from ingest.activity import WINDOW_SECONDS
from ingest.app import create_app
from ingest.ops_read import Candidate, client_id, collection_row, group_rows, recent_rates, totals
from ingest.settings import load_ingest

KEY = "the-admin-key-of-these-tests"


# ---------------------------------------------------------------- heartbeat numbers


def test_rate_meter_reports_the_rate_over_the_last_window_and_survives_a_reset() -> None:
    m = RateMeter()
    assert m.update(100, 0.0) == 0.0  # first reading: nothing to compare with
    assert m.update(120, 2.0) == pytest.approx(10.0)
    for t in range(4, 30, 2):  # 5 events/s from now on
        rate = m.update(120 + (t - 2) * 5, float(t))
    assert rate == pytest.approx(5.0)
    assert m.update(3, 30.0) == 0.0  # the counter went back (a restart): start over
    assert m.update(13, 32.0) == pytest.approx(5.0)


def test_latency_meter_takes_the_mean_and_p99_of_recent_observations_only() -> None:
    reg = CollectorRegistry()
    h = Histogram("lag_seconds", "x", buckets=(0.001, 0.01, 0.1, 1.0), registry=reg)
    meter = LatencyMeter()
    for _ in range(100):
        h.observe(0.5)  # old, slow observations
    meter.update(histogram_state(reg.collect(), "lag_seconds"), 0.0)
    for _ in range(99):
        h.observe(0.004)
    h.observe(0.05)
    lat = meter.update(histogram_state(reg.collect(), "lag_seconds"), RATE_WINDOW + 1)
    assert lat.mean_ms == pytest.approx((99 * 4 + 50) / 100, rel=1e-3)
    assert lat.p99_ms == 10.0  # 99 of 100 observations are within the 10 ms bucket
    assert meter.update(histogram_state(reg.collect(), "lag_seconds"), 2 * RATE_WINDOW + 5) == (
        type(lat)()
    )  # nothing observed since: no number, rather than an old one


def test_sample_total_sums_a_counter_over_label_sets_and_filters_by_label() -> None:
    reg = CollectorRegistry()
    c = Counter("vski_test_webhooks_total", "x", ["outcome"], registry=reg)
    c.labels("stored").inc(5)
    c.labels("redis_unavailable").inc(2)
    families = list(reg.collect())
    assert sample_total(families, "vski_test_webhooks_total") == 7
    assert sample_total(families, "vski_test_webhooks_total", outcome="stored") == 5
    assert histogram_state([], "x") == HistogramState()


# ---------------------------------------------------------------- the registry


def test_registry_settings_default_off_and_bounds() -> None:
    s = load_registry({})
    assert (s.heartbeat, s.ttl_ms, s.enabled) == (2.0, 6000, True)
    assert not load_registry({"REGISTRY_HEARTBEAT_SECONDS": "0"}).enabled
    for bad in ("0.01", "-1", "x", "301"):
        with pytest.raises(ConfigError, match="REGISTRY_HEARTBEAT_SECONDS"):
            load_registry({"REGISTRY_HEARTBEAT_SECONDS": bad})


def test_registry_keys_share_one_slot_and_activity_another() -> None:
    r = RegistryKeys("vski")
    assert r.beats == "vski:{nodes}:h" and r.expiry == "vski:{nodes}:x"
    a = ActivityKeys("vski")
    assert a.window(7) == "vski:{activity}:w:7"
    assert a.window(7, "shop") == "vski:{activity}:w:7:shop"
    with pytest.raises(ValueError):
        a.window(7, "bad name")
    k = collection_keys("shop", "orders", "vski")
    assert parse_meta_key(k.meta) == ("shop", "orders")
    assert parse_meta_key(k.stream) is None and parse_channel(k.channel) == ("shop", "orders")


def _listing(now: int, *nodes: tuple[str, int, Any]) -> list[Any]:
    raw: list[Any] = [now, len(nodes)]
    for node_id, expires, body in nodes:
        raw += [node_id.encode(), str(expires).encode(), body]
    return raw


def test_listing_marks_a_heartbeat_missed_as_stale_and_skips_unreadable_ones() -> None:
    settings = load_registry({"REGISTRY_HEARTBEAT_SECONDS": "2"})
    _, _, fresh, ttl = beat_args("a", {"role": "fanout", "connections": 3}, settings)
    _, _, late, _ = beat_args("i", {"role": "ingest"}, settings)
    now = 1_000_000
    raw = _listing(
        now,
        ("i", now + 2500, late),  # written 3.5 s ago: one heartbeat missed
        ("a", now + ttl - 100, fresh),  # written 0.1 s ago
        ("bad", now + 1000, b"not json"),
    )
    listing = parse_listing(raw)
    assert [n["id"] for n in listing.nodes] == ["a", "i"]  # fanout first, then ingest
    a, i = listing.nodes
    assert (a["age_ms"], a["stale"], a["connections"], a["heartbeat_s"]) == (100, False, 3, 2.0)
    assert (i["age_ms"], i["stale"], i["expires_in_ms"]) == (3500, True, 2500)
    assert listing.unreadable == 1 and listing.registered == 3
    assert list_args(10**6) == ["list", 1000]


# ---------------------------------------------------------------- shaping the API's answers


def test_busiest_collections_weigh_the_previous_window_by_what_is_left_of_it() -> None:
    now = 1000 * WINDOW_SECONDS + WINDOW_SECONDS / 4  # a quarter into the current window
    current = [(b"shop/orders", 30.0), (b"shop/carts", 3.0)]
    previous = [(b"shop/carts", 120.0), (b"blog/posts", 8.0)]
    picks = recent_rates(current, previous, now, None)
    assert [(c.database, c.collection) for c in picks] == [
        ("shop", "carts"),
        ("shop", "orders"),
        ("blog", "posts"),
    ]
    assert picks[0].events_per_s == pytest.approx((3 + 120 * 0.75) / WINDOW_SECONDS, rel=1e-3)
    one_db = recent_rates([(b"orders", 6.0)], [], now, "shop")
    assert (one_db[0].database, one_db[0].collection) == ("shop", "orders")


def test_collection_row_gives_ids_as_clients_see_them() -> None:
    reply = [
        2_000_000,
        b"ab12cd34",
        b"42",
        b"1999000",
        10,
        b"1990000-33",
        b"1999000-42",
        2,
        4096,
        42,
    ]
    row = collection_row(Candidate("shop", "orders", 1.5, "activity"), reply)
    assert row["first_id"] == "1990000-33@ab12cd34" and row["last_id"] == "1999000-42@ab12cd34"
    assert (row["retained"], row["newest_age_ms"], row["memory_bytes"], row["groups"]) == (
        10,
        1000,
        4096,
        2,
    )
    empty = collection_row(
        Candidate("shop", "gone", None, "scan"), [5, b"", b"", b"", 0, b"", b"", 0, -1, 0]
    )
    assert (empty["first_id"], empty["newest_age_ms"], empty["memory_bytes"]) == (None, None, None)
    assert client_id("", "e") is None


def test_group_rows_name_the_client_group_its_redis_group_and_each_members_node() -> None:
    now = 10_000_000
    stuck = [b"jobs~a1b2c3d4e5f6", 2, 5, b"9990000-7", 0, b"9950000-3", 40_000, 3,
             [b"n0de1:4", 5, 40_000, b"orphaned", 0, 100]]  # fmt: skip
    fine = [b"mail", 1, 1, b"9999000-8", 0, b"9999000-8", 100, 1, [b"n0de2:1", 1, 100]]
    idle = [b"idle", 0, 0, b"0-0", -1, b"", 0, 0, []]
    rows = group_rows("shop", "orders", [now, b"ep0ch", 3, stuck, fine, idle], visibility_ms=30_000)
    s, f, i = rows
    assert (s["group"], s["redis_group"], s["view"], s["stuck"]) == (
        "jobs",
        "jobs~a1b2c3d4e5f6",
        "a1b2c3d4e5f6",
        True,
    )
    assert s["oldest_pending_id"] == "9950000-3@ep0ch" and s["oldest_pending_age_ms"] == 50_000
    assert [m["node"] for m in s["members"]] == ["n0de1", None]
    assert (f["group"], f["redis_group"], f["view"], f["stuck"]) == ("mail", "mail", None, False)
    assert (i["pending"], i["oldest_pending_id"], i["last_delivered_id"], i["lag"]) == (
        0,
        None,
        None,
        None,
    )


def test_totals_add_up_the_nodes_and_keep_the_worst_lag() -> None:
    nodes = [
        {
            "role": "fanout",
            "connections": 3,
            "events_per_s": 10.5,
            "read_lag_ms": 2.0,
            "stale": True,
        },
        {"role": "fanout", "connections": 4, "events_per_s": 1.5, "read_lag_ms": 7.5},
        {"role": "ingest", "webhooks_per_s": 12.0, "read_lag_ms": None, "draining": True},
    ]
    t = totals(nodes)
    assert (t["fanout"], t["ingest"], t["connections"], t["events_per_s"]) == (2, 1, 7, 12.0)
    assert (t["read_lag_ms"], t["webhooks_per_s"], t["stale"], t["draining"]) == (7.5, 12.0, 1, 1)


# ---------------------------------------------------------------- the API: key first, then params


class RedisMustNotBeTouched:
    """A Redis client that fails any read: a refused request must not reach Redis."""

    def register_script(self, text: str) -> Any:
        return lambda **kw: None

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"Redis was used ({name}) before the key was checked")


class _Store:
    client = RedisMustNotBeTouched()


def _client(key: str | None) -> falcon.testing.TestClient:
    env = {"JWT_SECRET": "x" * 32, **({"REALTIME_ADMIN_KEY": key} if key else {})}
    app = create_app(load_ingest(env), _Store(), None)  # type: ignore[arg-type]
    return falcon.testing.TestClient(app)


ENDPOINTS = [
    "/admin/status",
    "/admin/collections?database=postgres",
    "/admin/groups?database=postgres&collection=posts",
    "/admin/history?database=postgres&collection=posts&after=0&limit=10",
]


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize("header", [None, "Bearer wrong-key", f"Basic {KEY}", "Bearer"])
def test_every_admin_endpoint_refuses_a_request_without_the_key(
    path: str, header: str | None
) -> None:
    headers = {"Authorization": header} if header else {}
    resp = _client(KEY).simulate_get(path, headers=headers)
    assert resp.status_code == 401
    assert resp.json["error"] == "unauthorized"
    assert set(resp.json) == {"error", "message"}


@pytest.mark.parametrize("path", [*ENDPOINTS, "/admin/", "/admin/assets/ops.js"])
def test_without_an_admin_key_configured_the_operations_view_does_not_exist(path: str) -> None:
    resp = _client(None).simulate_get(path, headers={"Authorization": f"Bearer {KEY}"})
    assert resp.status_code == 404 and resp.json["error"] == "not_found"


@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("/admin/status?limit=0", "invalid_parameter"),
        ("/admin/collections?limit=101", "invalid_parameter"),
        ("/admin/collections?database=bad%20name", "invalid_name"),
        ("/admin/groups?limit=x", "invalid_parameter"),
        ("/admin/history?database=postgres", "invalid_parameter"),
        ("/admin/history?collection=posts&after=12-3", "invalid_id"),
        ("/admin/history?collection=posts&limit=501", "invalid_parameter"),
        ("/admin/history?collection=posts&after=1-2@ab&before=1-3@ab", "invalid_parameter"),
    ],
)
def test_a_bad_parameter_is_a_422_that_names_it(path: str, code: str) -> None:
    resp = _client(KEY).simulate_get(path, headers={"Authorization": f"Bearer {KEY}"})
    assert resp.status_code == 422, resp.text
    assert resp.json["error"] == code


def test_the_page_is_served_without_the_key_with_a_strict_content_security_policy() -> None:
    c = _client(KEY)
    page = c.simulate_get("/admin/")
    assert page.status_code == 200 and "vski-realtime operations" in page.text
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp
    for asset in ("ops.js", "ops.css", "uPlot.iife.min.js", "uPlot.min.css"):
        assert asset in page.text
        resp = c.simulate_get(f"/admin/assets/{asset}")
        assert resp.status_code == 200 and len(resp.content) > 500, asset
    assert c.simulate_get("/admin/assets/..%2Fapp.py").status_code == 404
    assert c.simulate_get("/admin/assets/LICENSE").status_code == 404


def test_the_page_stores_the_key_in_session_storage_only() -> None:
    js = _client(KEY).simulate_get("/admin/assets/ops.js").text
    assert "sessionStorage" in js and "localStorage" not in js and "document.cookie" not in js
    assert "innerHTML" not in js  # record data is inserted as text only


def test_the_stream_script_reads_the_meta_fields_ingest_writes() -> None:
    text = load_lua("ingest", "ops_stream").text
    assert "HMGET', KEYS[2], 'e', 'q', 'ms'" in text
    assert "MEMORY', 'USAGE', KEYS[1], 'SAMPLES'" in text


# ---------------------------------------------------------------- terminal tables and banner


def _status_answers() -> dict[str, Any]:
    nodes = [
        {"id": "a1", "role": "fanout", "address": "0.0.0.0:8080", "version": "0.1.0",
         "started_at": 900.0, "connections": 12, "subscriptions": 30, "events_per_s": 5.0,
         "read_lag_ms": 1.25, "rss_bytes": 50 * 2**20, "draining": True, "stale": False,
         "age_ms": 300},
        {"id": "b2", "role": "fanout", "address": "0.0.0.0:8080", "version": "0.1.0",
         "started_at": 950.0, "connections": 1, "subscriptions": 1, "events_per_s": 0.0,
         "read_lag_ms": None, "rss_bytes": 40 * 2**20, "draining": False, "stale": True,
         "age_ms": 3500},
        {"id": "ingest-c3", "role": "ingest", "address": "0.0.0.0:8000", "version": "0.1.0",
         "started_at": 800.0, "webhooks_per_s": 42.0, "rss_bytes": 90 * 2**20, "age_ms": 10},
    ]  # fmt: skip
    return {
        "status": {"now": 1000.0, "nodes": nodes, "totals": totals(nodes), "registered": 3},
        "collections": {
            "window_s": 60,
            "collections": [
                {
                    "database": "shop",
                    "collection": "orders",
                    "events_per_s": 3.5,
                    "retained": 99,
                    "last_id": "5-9@ep",
                    "newest_age_ms": 1200,
                    "memory_bytes": 8192,
                    "groups": 1,
                }
            ],
        },
        "groups": {
            "visibility_seconds": 30.0,
            "groups": [
                {
                    "database": "shop",
                    "collection": "orders",
                    "group": "jobs",
                    "redis_group": "jobs~abc",
                    "consumers": 0,
                    "pending": 4,
                    "stuck": True,
                    "oldest_pending_age_ms": 95_000,
                    "oldest_pending_idle_ms": 95_000,
                }
            ],
        },
    }


def test_status_tables_mark_draining_and_stale_nodes_and_stuck_groups() -> None:
    out = status_tables(_status_answers(), "http://ingest:8000")
    lines = out.splitlines()
    assert "2 fanout, 1 ingest" in lines[1] and "13 connections" in lines[1]
    row = {
        line.split()[1]: line for line in lines if line.startswith("  ") and len(line.split()) > 4
    }
    assert row["a1"].split()[0] == "DRAINING" and row["b2"].split()[0] == "STALE"
    assert row["ingest-c3"].split()[0] == "ok" and "42.0" in row["ingest-c3"]
    assert any(line.split()[:4] == ["STUCK", "shop", "orders", "jobs"] for line in lines)
    assert "jobs~abc" in out and "95.0 s" in out


def test_the_dev_banner_prints_the_operations_url_with_its_key() -> None:
    text = banner(
        redis="redis://x",
        ingest_url="http://127.0.0.1:8000",
        fanout_urls=["ws://127.0.0.1:8080"],
        console_url=None,
        token="t",
        webhook_token="w",
        secret_source="s",
        ops_url="http://127.0.0.1:8000/admin/#key=k3y",
        admin_key_source="/x/.vski/admin_key",
        db="postgres",
        collection="posts",
        state="/x/.vski",
    )
    assert "  ops       http://127.0.0.1:8000/admin/#key=k3y" in text.splitlines()
    assert "vski-realtime status" in text


def test_history_events_embed_the_stored_json_as_it_is() -> None:
    body = msgspec.json.encode(
        {"events": [{"id": "1-1@e", "data": msgspec.Raw(b'{"action":"create","record":{"a":1}}')}]}
    )
    assert json.loads(body)["events"][0]["data"]["record"] == {"a": 1}


def test_the_ingest_masters_heartbeat_runs_under_the_fork_lock() -> None:
    """gunicorn forks workers while the heartbeat thread runs: a worker forked halfway through
    a heartbeat (an import, a log line) could inherit a held lock and hang. A fork takes
    ``_FORK_LOCK`` (os.register_at_fork), so no fork may happen while a heartbeat writes."""
    import threading
    from types import SimpleNamespace

    from ingest import registry as ingest_registry

    seen: list[bool] = []

    def script(**_: Any) -> None:
        free = threading.Thread(
            target=lambda: seen.append(ingest_registry._FORK_LOCK.acquire(timeout=0.05))
        )
        free.start()
        free.join()

    class Client:
        def register_script(self, text: str) -> Any:
            return script

    settings = load_ingest({"JWT_SECRET": "x" * 32})
    beat = ingest_registry.MasterHeartbeat(settings, SimpleNamespace(WORKERS={}), Client())
    assert beat.beat() is True
    assert seen == [False], "another thread (a fork) could take the lock during a heartbeat"
    assert ingest_registry._FORK_LOCK.acquire(timeout=0.05)  # and it is free again after
    ingest_registry._FORK_LOCK.release()
