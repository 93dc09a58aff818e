"""The fanout node's HTTP checks and per-connection limits, against a real ``vski-fanout``.

Everything here is refused or answered by fanout/server.py and fanout/session.py; Redis is real
(the hub needs it) but no events flow.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, suppress
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.support import ROOT
from tests.support.procs import Proc, fanout_proc
from tests.support.redis_server import RedisServer
from tests.support.tokens import make_token

LIMITS = {
    "FANOUT_MAX_SUBSCRIPTIONS": "3",
    "FANOUT_CLIENT_RATE": "5",
    "FANOUT_CLIENT_BURST": "30",
    "FANOUT_MAX_FRAME_BYTES": "2048",
}


@pytest.fixture(scope="module")
def node(redis_mod: RedisServer) -> Iterator[Proc]:
    proc = fanout_proc(redis_mod.url, **LIMITS).start()
    try:
        yield proc
    finally:
        proc.stop()


def http_get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


@asynccontextmanager
async def ws(
    node: Proc, token: str | None = None, db: str = "postgres"
) -> AsyncIterator[ClientConnection]:
    token = make_token() if token is None else token
    async with connect(
        f"{node.ws_url}/api/realtime?db={db}&auth={token}", open_timeout=10, compression=None
    ) as conn:
        yield conn


async def recv_json(conn: ClientConnection, timeout: float = 10) -> dict[str, Any]:
    raw = await asyncio.wait_for(conn.recv(), timeout)
    result: dict[str, Any] = json.loads(raw)
    return result


async def closed_with(conn: ClientConnection, timeout: float = 15) -> tuple[int | None, str]:
    """Read until the server closes; return (code, reason) of its close frame."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                await conn.recv()
    except ConnectionClosed as exc:
        return (exc.rcvd.code if exc.rcvd else None), (exc.rcvd.reason if exc.rcvd else "")
    raise AssertionError("unreachable")


# ---------------------------------------------------------------- HTTP before the upgrade


async def test_refuses_missing_bad_and_expired_tokens_with_401_before_upgrade(node: Proc) -> None:
    cases = {
        "": "missing_token",
        "not-a-jwt": "invalid_token",
        make_token("another-secret-another-secret-another!"): "invalid_token",
        make_token(ttl=-120): "token_expired",  # past exp and the 30 s leeway
    }
    for token, code in cases.items():
        with pytest.raises(InvalidStatus) as info:
            async with connect(f"{node.ws_url}/api/realtime?auth={token}", open_timeout=10):
                pass
        assert info.value.response.status_code == 401, token
        assert json.loads(info.value.response.body)["error"] == code


async def test_token_in_bearer_header_is_accepted(node: Proc) -> None:
    async with connect(
        f"{node.ws_url}/api/realtime",
        additional_headers={"Authorization": f"Bearer {make_token()}"},
        open_timeout=10,
    ) as conn:
        await conn.send(json.dumps({"type": "SUBSCRIBE", "collection": "hdr"}))
        assert (await recv_json(conn))["type"] == "SUBSCRIBED"


def test_http_endpoints(node: Proc) -> None:
    status, _, body = http_get(f"{node.url}/health")
    assert status == 200 and json.loads(body)["status"] == "ok"
    status, _, body = http_get(f"{node.url}/ready")
    assert status == 200, body
    status, _, body = http_get(f"{node.url}/metrics")
    assert status == 200 and b"vski_fanout_connections" in body
    status, _, body = http_get(f"{node.url}/api/other")
    assert status == 404 and json.loads(body)["error"] == "not_found"
    # plain GET with a valid token: told to use a WebSocket, not a 500 or a hang
    status, _headers, body = http_get(f"{node.url}/api/realtime?auth={make_token()}")
    assert status == 426 and json.loads(body)["error"] == "upgrade_required"
    status, _, body = http_get(f"{node.url}/api/realtime?auth={make_token()}&db=bad%7Bdb")
    assert status == 400 and json.loads(body)["error"] == "invalid_name"


def test_log_never_contains_the_token(node: Proc) -> None:
    token = make_token(sub="log-check")
    http_get(f"{node.url}/api/realtime?auth={token}&db=bad%7Bdb")
    http_get(f"{node.url}/api/realtime?auth={token[:-3]}xyz")
    time.sleep(0.3)
    log = node.log()
    assert "connection_refused" in log
    assert token[:-3] not in log


# ---------------------------------------------------------------- frames


async def test_malformed_frames_answer_error_and_connection_stays_up(node: Proc) -> None:
    async with ws(node) as conn:
        bad = {
            "{not json": "invalid_json",
            json.dumps({"type": "HELLO", "collection": "a"}): "unknown_type",
            json.dumps({"collection": "a"}): "unknown_type",
            json.dumps({"type": "SUBSCRIBE"}): "invalid_message",
            json.dumps({"type": "SUBSCRIBE", "collection": "a{b}"}): "invalid_name",
            json.dumps([1, 2, 3]): "invalid_message",
        }
        for frame, code in bad.items():
            await conn.send(frame)
            msg = await recv_json(conn)
            assert msg["type"] == "ERROR" and msg["code"] == code, (frame, msg)
        await conn.send(b"\x00\x01binary")
        assert (await recv_json(conn))["code"] == "binary_frame"
        await conn.send(json.dumps({"type": "SUBSCRIBE", "collection": "still_up"}))
        msg = await recv_json(conn)
        assert msg == {
            "type": "SUBSCRIBED",
            "collection": "still_up",
            "last_id": msg["last_id"],
            "recovered": True,
        }


async def test_bad_last_id_is_answered_not_fatal(node: Proc) -> None:
    async with ws(node) as conn:
        await conn.send(json.dumps({"type": "SUBSCRIBE", "collection": "c", "lastId": "garbage"}))
        msg = await recv_json(conn)
        # either refused with ERROR or replayed as not recovered: never silently "recovered"
        assert (msg["type"] == "ERROR") or (msg["type"] == "SUBSCRIBED" and not msg["recovered"])
        await conn.send(json.dumps({"type": "SUBSCRIBE", "collection": "c2"}))
        assert (await recv_json(conn))["type"] == "SUBSCRIBED"


async def test_plain_ack_is_accepted_silently(node: Proc) -> None:
    async with ws(node) as conn:
        await conn.send(json.dumps({"type": "ACK", "collection": "posts", "id": "1-1@x"}))
        await conn.send(json.dumps({"type": "SUBSCRIBE", "collection": "posts"}))
        msg = await recv_json(conn)
        assert msg["type"] == "SUBSCRIBED", msg  # no ERROR came before it


async def test_subscription_cap_per_connection(node: Proc) -> None:
    async with ws(node) as conn:
        for name in ("s1", "s2", "s3", "s1"):  # a repeated SUBSCRIBE does not count twice
            await conn.send(json.dumps({"type": "SUBSCRIBE", "collection": name}))
            assert (await recv_json(conn))["type"] == "SUBSCRIBED"
        await conn.send(json.dumps({"type": "SUBSCRIBE", "collection": "s4"}))
        msg = await recv_json(conn)
        assert msg["type"] == "ERROR" and msg["code"] == "too_many_subscriptions"
        await conn.send(json.dumps({"type": "UNSUBSCRIBE", "collection": "s2"}))
        await conn.send(json.dumps({"type": "SUBSCRIBE", "collection": "s4"}))
        assert (await recv_json(conn))["type"] == "SUBSCRIBED"


@pytest.mark.skipif(
    (ROOT / "fanout" / "groups.py").exists(),
    reason="consumer groups are implemented: covered by their own tests",
)
async def test_group_messages_answer_groups_unavailable_without_groups(node: Proc) -> None:
    async with ws(node) as conn:
        await conn.send(json.dumps({"type": "SUBSCRIBE", "collection": "p", "group": "g"}))
        assert (await recv_json(conn))["code"] == "groups_unavailable"
        await conn.send(json.dumps({"type": "ACK", "collection": "p", "id": "1-1@x", "group": "g"}))
        assert (await recv_json(conn))["code"] == "groups_unavailable"


async def test_oversized_frame_closes_1009(node: Proc) -> None:
    async with ws(node) as conn:
        big = {"type": "SUBSCRIBE", "collection": "x" * 10, "pad": "y" * 4000}
        await conn.send(json.dumps(big))
        code, _ = await closed_with(conn)
        assert code == 1009


async def test_flood_closes_1008_and_node_keeps_serving(node: Proc) -> None:
    async with ws(node) as conn:
        for _ in range(200):
            try:
                await conn.send(json.dumps({"type": "ACK", "collection": "f", "id": "1-1@x"}))
            except ConnectionClosed:
                break
        code, reason = await closed_with(conn)
        assert (code, reason) == (1008, "flood")
    async with ws(node) as conn:
        await conn.send(json.dumps({"type": "SUBSCRIBE", "collection": "after_flood"}))
        assert (await recv_json(conn))["type"] == "SUBSCRIBED"


async def test_token_expiry_closes_4001(node: Proc) -> None:
    async with ws(node, token=make_token(ttl=2)) as conn:
        started = time.monotonic()
        await conn.send(json.dumps({"type": "SUBSCRIBE", "collection": "exp"}))
        assert (await recv_json(conn))["type"] == "SUBSCRIBED"
        code, reason = await closed_with(conn, timeout=20)
        assert (code, reason) == (4001, "token expired")
        assert time.monotonic() - started < 15


async def test_garbage_bytes_on_socket_do_not_hurt_the_node(node: Proc) -> None:
    def garbage() -> None:
        for payload in (b"\x16\x03\x01\x02\x00garbage", b"POST /api/realtime HTTP/1.1\r\n\r\n"):
            with socket.create_connection(("127.0.0.1", node.port), timeout=5) as s:
                s.sendall(payload)
                with suppress(OSError):
                    s.recv(1024)

    await asyncio.to_thread(garbage)
    async with ws(node) as conn:
        await conn.send(json.dumps({"type": "SUBSCRIBE", "collection": "ok"}))
        assert (await recv_json(conn))["type"] == "SUBSCRIBED"
    assert node.alive()


# ---------------------------------------------------------------- whole-node limits


async def test_connection_cap_answers_503_with_retry_after(redis_mod: RedisServer) -> None:
    proc = fanout_proc(redis_mod.url, FANOUT_MAX_CONNECTIONS="2").start()
    try:
        async with ws(proc), ws(proc):
            await asyncio.sleep(0.2)
            with pytest.raises(InvalidStatus) as info:
                async with ws(proc):
                    pass
            assert info.value.response.status_code == 503
            assert info.value.response.headers.get("Retry-After")
            assert json.loads(info.value.response.body)["error"] == "node_full"
    finally:
        proc.stop()


async def test_sigterm_closes_connections_with_1012_within_drain_time(
    redis_mod: RedisServer,
) -> None:
    proc = fanout_proc(redis_mod.url, FANOUT_DRAIN_SECONDS="5").start()
    try:
        conns = [await connect(f"{proc.ws_url}/api/realtime?auth={make_token()}") for _ in range(5)]
        for i, conn in enumerate(conns):
            await conn.send(json.dumps({"type": "SUBSCRIBE", "collection": f"d{i}"}))
            assert (await recv_json(conn))["type"] == "SUBSCRIBED"
        started = time.monotonic()
        proc.signal(signal.SIGTERM)
        results = await asyncio.gather(*(closed_with(c) for c in conns))
        assert all(r == (1012, "service restart") for r in results), results
        assert proc.proc is not None
        rc = await asyncio.to_thread(proc.proc.wait, 10)
        assert rc == 0
        assert time.monotonic() - started < 5 + 2
    finally:
        proc.stop()


async def test_compression_is_off_by_default_and_allowed_by_setting(
    node: Proc, redis_mod: RedisServer
) -> None:
    url = f"/api/realtime?auth={make_token()}"
    async with connect(node.ws_url + url, compression="deflate") as conn:
        assert conn.response is not None
        assert "Sec-WebSocket-Extensions" not in conn.response.headers
    proc = fanout_proc(redis_mod.url, FANOUT_COMPRESSION="deflate").start()
    try:
        async with connect(proc.ws_url + url, compression="deflate") as conn:
            assert conn.response is not None
            assert "permessage-deflate" in conn.response.headers["Sec-WebSocket-Extensions"]
            await conn.send(json.dumps({"type": "SUBSCRIBE", "collection": "z"}))
            assert (await recv_json(conn))["type"] == "SUBSCRIBED"
    finally:
        proc.stop()
