"""The admin read API against the real tiers as processes, on standalone Redis and Redis Cluster:
gunicorn ingest (its master's heartbeat) and two ``vski-fanout`` nodes, all with a 0.5 s
heartbeat and a key prefix of their own.

What an operator relies on: every node is listed with the fields outside tools read; rates
move when webhooks and deliveries happen; a killed node disappears within one TTL (marked
stale first); SIGTERM writes ``draining: true`` before the drain (fanout and ingest) and a
clean exit leaves at once; the busiest collections, consumer groups (with the client's and
the Redis name under a policy, stuck ones found without naming the collection) and history
are right; and no endpoint shows anything to a request without the key.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect

from common.layout import EventId
from ingest import ops_read
from tests.support.backends import RedisTarget
from tests.support.ingest_http import post_webhook, slowloris, webhook_body
from tests.support.ops import (
    ADMIN_KEY,
    TTL,
    admin_get,
    admin_json,
    nodes_by_address,
    ops_env,
    unique_prefix,
    wait_for,
)
from tests.support.procs import Proc, fanout_proc, ingest_proc
from tests.support.stack import NODE_ENV, Stack, stack_on
from tests.support.tokens import make_token
from tests.support.ws_client import Client

pytestmark = pytest.mark.timeout(180)

POLICY = """
version = 1
[defaults]
unlisted = "authenticated"
[[collection]]
name = "teamjobs"
subscribe = '@request.auth.team != ""'
filter = 'team = @request.auth.team'
groups = '@request.auth.team != ""'
"""
VISIBILITY = 1.0


@pytest.fixture(scope="module")
def policy_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ops") / "policy.toml"
    path.write_text(POLICY)
    return path


@pytest.fixture(scope="module")
def prefix(redis_backend: RedisTarget) -> str:
    return unique_prefix(f"opsapi{redis_backend.kind[0]}")


@pytest.fixture(scope="module")
def stack(redis_backend: RedisTarget, prefix: str, policy_file: Path) -> Iterator[Stack[Any]]:
    env = {**ops_env(prefix), "REALTIME_POLICY": str(policy_file)}
    with stack_on(
        redis_backend,
        2,
        ingest_env={**env, "REALTIME_ADMIN_KEY": ADMIN_KEY},
        FANOUT_GROUP_VISIBILITY_SECONDS=str(VISIBILITY),
        FANOUT_DRAIN_SECONDS="4",
        **env,
    ) as s:
        yield s


def status(stack: Stack[Any]) -> Any:
    return admin_json(stack.ingest.port, "/admin/status")


def bind(proc: Proc, kind: str) -> str:
    return proc.env[f"{kind}_BIND"]


def all_up(stack: Stack[Any]) -> Any:
    want = {bind(n, "FANOUT") for n in stack.nodes} | {bind(stack.ingest, "INGEST")}
    ingest = bind(stack.ingest, "INGEST")
    return wait_for(
        lambda: status(stack),
        lambda s: set(nodes_by_address(s)) == want and nodes_by_address(s)[ingest]["workers"] == 2,
    )


REQUIRED = {
    "id": str, "role": str, "address": str, "version": str, "started_at": float,
    "connections": int, "subscriptions": int, "events_per_s": float, "rss_bytes": int,
    "draining": bool,
}  # fmt: skip


def test_status_lists_every_node_with_the_fields_outside_tools_read(stack: Stack[Any]) -> None:
    stack.ensure_up()
    body = all_up(stack)
    assert set(body) >= {"nodes", "totals"}
    by = nodes_by_address(body)
    for node in body["nodes"]:
        for field, kind in REQUIRED.items():
            value = node[field]
            assert isinstance(value, (int, float) if kind is float else kind), (field, node)
        assert "read_lag_ms" in node and node["rss_bytes"] > 10_000_000
        assert node["stale"] is False and node["draining"] is False
    ingest = by[bind(stack.ingest, "INGEST")]
    assert ingest["role"] == "ingest" and isinstance(ingest["webhooks_per_s"], (int, float))
    assert ingest["workers"] == 2
    fanout_ids = {by[bind(n, "FANOUT")]["id"] for n in stack.nodes}
    assert len(fanout_ids) == 2 and all(
        by[bind(n, "FANOUT")]["role"] == "fanout" for n in stack.nodes
    )
    t = body["totals"]
    assert (t["fanout"], t["ingest"], t["nodes"]) == (2, 1, 3)


async def test_rates_and_connections_move_with_traffic(stack: Stack[Any]) -> None:
    stack.ensure_up()
    all_up(stack)
    node = stack.nodes[0]
    coll = f"rates{int(time.time())}"
    client = await Client(node, "postgres", coll).open()
    try:
        for i in range(20):
            assert (
                post_webhook(
                    stack.ingest.port, webhook_body(collection=coll, record_id=f"r{i}")
                ).status
                == 200
            )
        await client.wait_ids(20)
        body = await asyncio.to_thread(
            wait_for,
            lambda: status(stack),
            lambda s: (
                nodes_by_address(s)[bind(node, "FANOUT")]["events_per_s"] > 0
                and nodes_by_address(s)[bind(stack.ingest, "INGEST")]["webhooks_per_s"] > 0
            ),
        )
        mine = nodes_by_address(body)[bind(node, "FANOUT")]
        assert mine["connections"] >= 1 and mine["subscriptions"] >= 1
        assert isinstance(mine["read_lag_ms"], (int, float)) and 0 <= mine["read_lag_ms"] < 1000
        assert body["totals"]["webhooks_per_s"] > 0
    finally:
        await client.close()


def test_collections_shows_the_busiest_with_ids_as_clients_see_them(stack: Stack[Any]) -> None:
    coll = f"hot{int(time.time())}"
    answers = []
    for i in range(6):
        reply = post_webhook(stack.ingest.port, webhook_body(collection=coll, record_id=f"h{i}"))
        answers.append(reply.json()["id"])
    post_webhook(
        stack.ingest.port, webhook_body(database="otherdb", collection=coll, record_id="o")
    )
    body = wait_for(
        lambda: admin_json(stack.ingest.port, "/admin/collections?database=postgres&limit=50"),
        lambda b: any(
            c["collection"] == coll and c["source"] == "activity" for c in b["collections"]
        ),
    )
    row = next(c for c in body["collections"] if c["collection"] == coll)
    assert (row["retained"], row["first_id"], row["last_id"]) == (6, answers[0], answers[-1])
    assert row["events_per_s"] > 0 and row["memory_bytes"] > 0 and row["newest_age_ms"] < 60_000
    assert all(c["database"] == "postgres" for c in body["collections"])
    EventId.parse(row["last_id"])
    everything = admin_json(stack.ingest.port, "/admin/collections?limit=100")
    assert {("otherdb", coll), ("postgres", coll)} <= {
        (c["database"], c["collection"]) for c in everything["collections"]
    }


def test_history_pages_through_what_was_posted(stack: Stack[Any]) -> None:
    coll = f"hist{int(time.time())}"
    ids = [
        post_webhook(
            stack.ingest.port,
            webhook_body(collection=coll, record_id=f"e{i}", record={"id": f"e{i}", "n": i}),
        ).json()["id"]
        for i in range(5)
    ]
    page = admin_json(
        stack.ingest.port, f"/admin/history?database=postgres&collection={coll}&limit=3"
    )
    assert [e["id"] for e in page["events"]] == ids[:3] and page["next_after"] == ids[2]
    assert page["events"][1]["data"] == {"action": "create", "record": {"id": "e1", "n": 1}}
    rest = admin_json(stack.ingest.port, f"/admin/history?collection={coll}&after={ids[2]}&limit=3")
    assert [e["id"] for e in rest["events"]] == ids[3:] and rest["next_after"] is None
    newest = admin_json(stack.ingest.port, f"/admin/history?collection={coll}&newest=1&limit=2")
    assert [e["id"] for e in newest["events"]] == [ids[4], ids[3]]


async def test_groups_show_the_client_and_redis_names_members_and_stuck_ones(
    stack: Stack[Any],
) -> None:
    stack.ensure_up()
    body = all_up(stack)
    node = stack.nodes[1]
    node_id = nodes_by_address(body)[bind(node, "FANOUT")]["id"]
    url = f"{node.ws_url}/api/realtime?db=postgres&auth={make_token(team='red')}"
    async with connect(url, open_timeout=10, compression=None) as ws:
        await ws.send(json.dumps({"type": "SUBSCRIBE", "collection": "teamjobs", "group": "jobs"}))
        assert json.loads(await ws.recv())["type"] == "SUBSCRIBED"
        for i in range(3):  # held, never acknowledged: pending grows older than the visibility
            rec = {"id": f"j{i}", "team": "red"}
            assert (
                post_webhook(
                    stack.ingest.port,
                    webhook_body(
                        collection="teamjobs",
                        record_id=f"j{i}",
                        record=rec,
                        timestamp=str(time.time()),
                    ),
                ).status
                == 200
            )
        got = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert got["type"] == "EVENT"
        one = await asyncio.to_thread(
            wait_for,
            lambda: admin_json(
                stack.ingest.port, "/admin/groups?database=postgres&collection=teamjobs"
            ),
            lambda b: any(g["pending"] >= 3 and g["stuck"] for g in b["groups"]),
            VISIBILITY * 10,
        )
        g = next(g for g in one["groups"] if g["group"] == "jobs")
        assert g["redis_group"].startswith("jobs~") and g["view"] == g["redis_group"][5:]
        assert g["members"] and {m["node"] for m in g["members"]} == {node_id}
        assert (
            g["oldest_pending_age_ms"] > VISIBILITY * 1000
            and one["visibility_seconds"] == VISIBILITY
        )
        EventId.parse(g["oldest_pending_id"])
        anywhere = admin_json(stack.ingest.port, "/admin/groups?stuck=1")
        assert any(x["redis_group"] == g["redis_group"] and x["stuck"] for x in anywhere["groups"])
        assert all(x["stuck"] for x in anywhere["groups"])


def test_a_killed_fanout_node_is_stale_then_gone_within_one_ttl(stack: Stack[Any]) -> None:
    stack.ensure_up()
    all_up(stack)
    victim = stack.nodes[0]
    address = bind(victim, "FANOUT")
    victim.signal(signal.SIGKILL)
    killed = time.monotonic()
    seen_stale = False
    while time.monotonic() - killed < TTL + 2:
        node = nodes_by_address(status(stack)).get(address)
        if node is None:
            break
        seen_stale = seen_stale or node["stale"]
        time.sleep(0.05)
    gone_after = time.monotonic() - killed
    assert address not in nodes_by_address(status(stack))
    assert gone_after <= TTL + 0.6, f"gone after {gone_after:.2f}s, TTL {TTL}s"
    assert seen_stale, "a node that missed its heartbeats is marked stale before it goes"
    stack.ensure_up()


def _hold_open(node: Proc) -> socket.socket:
    """A client that upgrades and then never reads nor answers the close: the drain waits."""
    sock = socket.create_connection(("127.0.0.1", node.port), timeout=10)
    sock.sendall(
        (
            f"GET /api/realtime?db=postgres&auth={make_token()} HTTP/1.1\r\nHost: x\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    assert b"101" in sock.recv(4096).split(b"\r\n")[0]
    return sock


def test_sigterm_marks_a_fanout_node_draining_first_and_a_clean_exit_leaves(
    redis_backend: RedisTarget, prefix: str, stack: Stack[Any]
) -> None:
    env = {
        **NODE_ENV,
        **ops_env(prefix),
        "REGISTRY_HEARTBEAT_SECONDS": "5",
        "FANOUT_DRAIN_SECONDS": "4",
    }
    node = fanout_proc(redis_backend, **env).start()
    rc = redis_backend.client()
    try:
        address = bind(node, "FANOUT")
        wait_for(lambda: status(stack), lambda s: address in nodes_by_address(s))
        sock = _hold_open(node)
        node.signal(signal.SIGTERM)
        marked = wait_for(
            lambda: status(stack),
            lambda s: nodes_by_address(s).get(address, {}).get("draining") is True,
            3,
        )
        assert node.alive(), "draining is written before the drain, while the node still runs"
        assert nodes_by_address(marked)[address]["ready"] is False
        assert node.proc is not None
        node.proc.wait(10)
        # the heartbeat would live 15 s: gone at once means the node left on its way out
        assert address not in {n["address"] for n in ops_read.read_nodes(rc, prefix, 100).nodes}
        log = node.log()
        assert log.index("registry_draining") < log.index('"draining"'), log[-2000:]
        sock.close()
    finally:
        node.stop()
        rc.close()


def test_sigterm_marks_an_ingest_instance_draining_before_its_workers_stop(
    redis_backend: RedisTarget, prefix: str
) -> None:
    env = {**ops_env(prefix), "REGISTRY_HEARTBEAT_SECONDS": "5", "INGEST_GRACEFUL_TIMEOUT": "3"}
    ingest = ingest_proc(redis_backend, 1, **env).start()
    rc = redis_backend.client()
    address = bind(ingest, "INGEST")

    def mine() -> dict[str, Any] | None:
        return {n["address"]: n for n in ops_read.read_nodes(rc, prefix, 100).nodes}.get(address)

    try:
        wait_for(mine, lambda n: n is not None and n["role"] == "ingest")
        stalled = slowloris(ingest.port, body=True)  # keeps a worker busy through the stop
        ingest.signal(signal.SIGTERM)
        wait_for(mine, lambda n: n is not None and n["draining"] is True, 3)
        assert ingest.alive()
        assert ingest.proc is not None
        ingest.proc.wait(15)
        assert mine() is None, "a clean exit leaves the registry at once"
        stalled.close()
    finally:
        with contextlib.suppress(Exception):
            ingest.stop()
        rc.close()


@pytest.mark.parametrize(
    "path",
    [
        "/admin/status",
        "/admin/collections?limit=100",
        "/admin/groups?stuck=0",
        "/admin/history?database=postgres&collection={coll}",
    ],
)
def test_no_endpoint_shows_anything_without_the_key(stack: Stack[Any], path: str) -> None:
    coll = "secretcoll"
    post_webhook(
        stack.ingest.port,
        webhook_body(collection=coll, record_id="s1", record={"id": "s1", "title": "TOPSECRET"}),
    )
    path = path.format(coll=coll)
    assert b"TOPSECRET" in admin_get(stack.ingest.port, f"/admin/history?collection={coll}").body
    for key in (None, "wrong-key", ADMIN_KEY[:-1], ADMIN_KEY + "x"):
        reply = admin_get(stack.ingest.port, path, key)
        assert reply.status == 401, (key, reply.status)
        body = reply.json()
        assert body["error"] == "unauthorized" and set(body) == {"error", "message"}
        for secret in (b"TOPSECRET", coll.encode(), b"fanout", b"127.0.0.1"):
            assert secret not in reply.body


def test_without_the_admin_key_set_the_endpoints_do_not_exist(
    redis_backend: RedisTarget, prefix: str
) -> None:
    ingest = ingest_proc(redis_backend, 1, **ops_env(prefix)).start()
    try:
        for path in (
            "/admin/status",
            "/admin/collections",
            "/admin/groups",
            "/admin/history?collection=secretcoll",
            "/admin/",
        ):
            reply = admin_get(ingest.port, path)
            assert reply.status == 404 and reply.json()["error"] == "not_found", path
            assert b"TOPSECRET" not in reply.body and b"secretcoll" not in reply.body
    finally:
        ingest.stop()
