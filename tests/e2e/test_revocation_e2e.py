"""Revocation end to end: ``POST /admin/disconnect`` on ingest, two fanout nodes, real Redis
(standalone and Redis Cluster).

A revoked user's sockets close with 4003 on both nodes within a second (p99 over 20 runs), its
group events go to another member, its reconnects are refused with 401 ``token_revoked``; a
revoked ``jti`` spares the user's other token; a node that starts later refuses too; the
endpoint's errors are JSON and it is rate limited.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.support.backends import RedisTarget
from tests.support.chaos import p99, reported
from tests.support.procs import Proc, fanout_proc, ingest_proc
from tests.support.redis_server import RedisServer
from tests.support.stack import Stack, stack_on
from tests.support.tokens import make_token
from tests.support.users import User, post_record

pytestmark = pytest.mark.timeout(120)

KEY = "test-admin-key-0123456789"
GROUP_ENV = {"FANOUT_GROUP_VISIBILITY_SECONDS": "60", "FANOUT_GROUP_MAX_INFLIGHT": "3"}


def admin(ingest: Proc, body: Any, key: str | None = KEY) -> tuple[int, dict[str, Any]]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(
        f"{ingest.url}/admin/disconnect", data=data, headers=headers, method="POST"
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


async def refused_status(node: Proc, claims: dict[str, Any]) -> int | None:
    """The HTTP status an upgrade with this token gets (None: accepted)."""
    try:
        async with connect(f"{node.ws_url}/api/realtime?auth={make_token(**claims)}"):
            return None
    except InvalidStatus as exc:
        assert b"token_revoked" in exc.response.body or exc.response.status_code != 401
        return exc.response.status_code


@pytest.fixture(scope="module")
def stack(redis_backend: RedisTarget) -> Iterator[Stack[RedisTarget]]:
    with stack_on(redis_backend, 2, ingest_env={"REALTIME_ADMIN_KEY": KEY}, **GROUP_ENV) as s:
        yield s


async def test_revoking_a_user_closes_its_sockets_everywhere_and_refuses_reconnects(
    stack: Stack[RedisTarget],
) -> None:
    coll = "rv_jobs"
    a0 = await User(stack.nodes[0], {"sub": "rv_alice"}).open()
    a1 = await User(stack.nodes[1], {"sub": "rv_alice"}).open()
    worker = await User(stack.nodes[1], {"sub": "rv_alice"}, acks=False).open()
    bob = await User(stack.nodes[0], {"sub": "rv_bob"}).open()
    for u in (a0, a1):
        await u.subscribe(coll)
    await worker.subscribe(coll, group="g")  # holds what it gets: it never ACKs
    for i in range(3):
        assert post_record(stack.ingest, coll, {"id": f"j{i}"}).status == 200
    assert await worker.wait(lambda: len(worker.ids[coll]) == 3)
    await bob.subscribe(coll, group="g")  # joins after: the three are held by the worker
    started = time.monotonic()
    status, answer = admin(stack.ingest, {"user": "rv_alice"})
    assert status == 200 and answer["success"] is True, answer
    assert answer["closed"] == 3, answer
    for u in (a0, a1, worker):
        assert await u.wait(lambda u=u: u.close_code is not None, 2)
        assert (u.close_code, u.close_reason) == (4003, "revoked")
        assert u.closed_at is not None and u.closed_at - started < 1.0
    # the revoked member's unacknowledged events went to the other member at once
    assert await bob.wait(lambda: sorted(bob.seen(coll)) == ["j0", "j1", "j2"], 5)
    assert bob.close_code is None
    for node in stack.nodes:
        assert await refused_status(node, {"sub": "rv_alice"}) == 401
    assert await refused_status(stack.nodes[0], {"sub": "rv_bob"}) is None
    await bob.close()


async def test_revoking_a_token_id_spares_the_users_other_token(
    stack: Stack[RedisTarget],
) -> None:
    leaked = await User(stack.nodes[0], {"sub": "rv_carol", "jti": "leaked-1"}).open()
    other = await User(stack.nodes[1], {"sub": "rv_carol", "jti": "fine-2"}).open()
    await leaked.subscribe("rv_misc")
    await other.subscribe("rv_misc")
    status, answer = admin(stack.ingest, {"token_id": "leaked-1"})
    assert status == 200 and answer["closed"] == 1
    assert await leaked.wait(lambda: leaked.close_code == 4003, 2)
    await asyncio.sleep(0.3)
    assert other.close_code is None
    assert await refused_status(stack.nodes[1], {"sub": "rv_carol", "jti": "leaked-1"}) == 401
    assert await refused_status(stack.nodes[1], {"sub": "rv_carol", "jti": "new-3"}) is None
    await other.close()


async def test_a_revocation_during_a_replay_closes_the_socket(stack: Stack[RedisTarget]) -> None:
    coll = "rv_long"
    for i in range(300):
        post_record(stack.ingest, coll, {"id": f"e{i}", "pad": "x" * 400})
    user = await User(stack.nodes[0], {"sub": "rv_dan"}).open()
    assert user.conn is not None
    await user.conn.send(json.dumps({"type": "SUBSCRIBE", "collection": coll, "lastId": "0"}))
    await user.wait(lambda: len(user.ids[coll]) > 0, 5)
    status, _ = admin(stack.ingest, {"user": "rv_dan"})
    assert status == 200
    assert await user.wait(lambda: user.close_code == 4003, 3)
    assert stack.nodes[0].alive()


async def test_a_node_that_starts_later_still_refuses(stack: Stack[RedisTarget]) -> None:
    status, _ = admin(stack.ingest, {"user": "rv_erin", "until": time.time() + 600})
    assert status == 200
    late = fanout_proc(stack.redis).start()
    try:
        assert await refused_status(late, {"sub": "rv_erin"}) == 401
        assert await refused_status(late, {"sub": "rv_frank"}) is None
    finally:
        late.stop()


async def test_revocation_ends_at_until(stack: Stack[RedisTarget]) -> None:
    status, _ = admin(stack.ingest, {"user": "rv_gus", "until": time.time() + 2})
    assert status == 200
    assert await refused_status(stack.nodes[0], {"sub": "rv_gus"}) == 401
    await asyncio.sleep(2.5)
    assert await refused_status(stack.nodes[0], {"sub": "rv_gus"}) is None


async def test_close_latency_p99_over_20_revocations(stack: Stack[RedisTarget]) -> None:
    """Each run: a user with a socket on both nodes is revoked; the time until both sockets
    saw the 4003 close. The p99 over 20 runs must stay under a second."""
    samples = []
    case = f"revoked user's sockets on 2 nodes closed ({stack.redis.kind} Redis)"
    tried = "20 revocations, each of a user with one socket on each of 2 nodes"
    with reported("revocation", case, tried=tried, runs=20) as row:
        for run in range(20):
            name = f"rv_lat{run}_{stack.redis.kind}"
            users = [await User(n, {"sub": name}).open() for n in stack.nodes]
            for u in users:
                await u.subscribe("rv_misc")
            started = time.monotonic()
            status, answer = admin(stack.ingest, {"user": name})
            assert status == 200 and answer["closed"] == 2, answer
            for u in users:
                assert await u.wait(lambda u=u: u.closed_at is not None, 3)
            samples.append(max(u.closed_at or 0 for u in users) - started)
        row["p99_ms"] = round(1000 * p99(samples), 1)
        row["detail"] = f"p50 {1000 * sorted(samples)[10]:.0f} ms, p99 {row['p99_ms']} ms"
    assert p99(samples) < 1.0, samples


def test_admin_endpoint_errors(stack: Stack[RedisTarget]) -> None:
    ingest = stack.ingest
    for key in (None, "wrong", KEY + "x", ""):
        status, body = admin(ingest, {"user": "x"}, key=key)
        assert status == 401 and body["error"] == "unauthorized", (key, body)
    assert admin(ingest, b"{not json")[0] == 400
    for bad in (
        {},
        {"user": "x", "token_id": "y"},
        {"user": ""},
        {"user": "x" * 300},
        {"user": "x", "until": 1},
        {"user": "x", "until": time.time() + 10 * 366 * 86400},
        {"user": "x", "extra": 1},
        {"user": 5},
    ):
        status, body = admin(ingest, bad)
        assert status == 422 and body["error"] == "invalid_payload", (bad, body)


def test_without_an_admin_key_the_endpoint_does_not_exist(redis_srv: RedisServer) -> None:
    ingest = ingest_proc(redis_srv).start()
    try:
        assert admin(ingest, {"user": "x"})[0] == 404
    finally:
        ingest.stop()


def test_the_endpoint_is_rate_limited(redis_srv: RedisServer) -> None:
    env = {"REALTIME_ADMIN_KEY": KEY, "INGEST_RATE_LIMIT": "1", "INGEST_RATE_BURST": "2"}
    ingest = ingest_proc(redis_srv, workers=1, **env).start()
    try:
        statuses = [admin(ingest, {"user": f"u{i}"})[0] for i in range(6)]
        assert statuses[:2] == [200, 200] and 429 in statuses, statuses
    finally:
        ingest.stop()


async def test_revocations_survive_a_redis_restart_with_aof(tmp_path: Any) -> None:
    """With AOF, a node started after Redis restarted still refuses; without persistence, a
    node that ran through the restart keeps refusing (its list never shrinks)."""
    from tests.support.redis_server import redis_server

    with redis_server("--appendonly", "yes", "--appendfsync", "always") as srv:
        ingest = ingest_proc(srv, REALTIME_ADMIN_KEY=KEY).start()
        early = fanout_proc(srv).start()
        try:
            assert admin(ingest, {"user": "rv_hal"})[0] == 200
            await asyncio.sleep(0.3)
            srv.restart()
            late = fanout_proc(srv).start()
            try:
                assert await refused_status(late, {"sub": "rv_hal"}) == 401
                assert await refused_status(early, {"sub": "rv_hal"}) == 401
            finally:
                late.stop()
        finally:
            early.stop()
            ingest.stop()
    with redis_server() as srv:  # no persistence
        ingest = ingest_proc(srv, REALTIME_ADMIN_KEY=KEY).start()
        early = fanout_proc(srv).start()
        try:
            assert admin(ingest, {"user": "rv_ivy"})[0] == 200
            await asyncio.sleep(0.3)
            srv.restart()
            await asyncio.sleep(0.5)
            assert await refused_status(early, {"sub": "rv_ivy"}) == 401
            late = fanout_proc(srv).start()
            try:
                assert await refused_status(late, {"sub": "rv_ivy"}) is None, "documented"
            finally:
                late.stop()
        finally:
            early.stop()
            ingest.stop()
