"""End to end: gunicorn ingest, two ``vski-fanout`` nodes, real Redis, WebSocket clients.

Every test that takes ``stack`` runs on a standalone redis-server and on the Redis Cluster
(``redis_backend``); the Redis-restart test has its own server (``redis_srv``), standalone only.

Events are posted to ingest over HTTP exactly as a VSKI trigger does; clients see what the SDK
sees. Assertions compare id sequences (order, no duplicates, nothing missing), never timings,
except where a generous liveness bound is the point (the slow-consumer test).
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.support.backends import RedisTarget
from tests.support.ingest_http import BackgroundPoster, Poster
from tests.support.procs import Proc
from tests.support.redis_server import RedisServer
from tests.support.stack import Stack, stack_on
from tests.support.tokens import make_token
from tests.support.ws_client import Client, settle, ws_url


@pytest.fixture(scope="module")
def stack(redis_backend: RedisTarget) -> Iterator[Stack[RedisTarget]]:
    """Ingest and two fanout nodes on the module's Redis, once per backend."""
    with stack_on(redis_backend) as s:
        yield s


async def test_every_subscriber_on_both_nodes_gets_each_event_once_in_order(
    stack: Stack[RedisTarget],
) -> None:
    clients = [
        await Client(node, "shop", "orders").open() for node in stack.nodes for _ in range(3)
    ]
    ids = await asyncio.to_thread(Poster(stack.ingest).many, "shop", "orders", 40)
    for c in clients:
        assert await c.wait_ids(len(ids)) == ids
    await asyncio.sleep(0.3)  # nothing extra arrives later
    for c in clients:
        assert c.ids == ids
        await c.close()


async def test_client_resumes_on_other_node_with_exactly_what_it_missed(
    stack: Stack[RedisTarget],
) -> None:
    a, b = stack.nodes
    reference = await Client(b, "shop", "resume").open()
    moving = await Client(a, "shop", "resume").open()
    poster = BackgroundPoster(Poster(stack.ingest), "shop", "resume", 150, pace=0.01)
    poster.start()
    await settle(lambda: len(moving.ids) >= 30)
    await moving.close()  # drops mid-stream; events keep flowing meanwhile
    before = list(moving.ids)
    await asyncio.sleep(0.3)
    assert before, "the client received nothing before dropping"
    resumed = await Client(b, "shop", "resume").open(last_id=before[-1])
    assert resumed.subscribed[0]["recovered"] is True
    await asyncio.to_thread(poster.join, 60)
    assert poster.error is None, poster.error
    await resumed.wait_ids(len(poster.ids) - len(before))
    await reference.wait_ids(len(poster.ids))
    assert reference.ids == poster.ids
    assert before + resumed.ids == poster.ids  # no gap, no duplicate at either hand-over
    for c in (reference, resumed):
        await c.close()


async def test_sdk_frame_sequence_gets_no_duplicates(stack: Stack[RedisTarget]) -> None:
    poster = Poster(stack.ingest)
    first = await asyncio.to_thread(poster.many, "shop", "sdk", 6)
    # reconnect as the SDK does: SUBSCRIBE with lastId on open, then the same again
    client = await Client(stack.nodes[0], "shop", "sdk").open(last_id=first[1], repeat=True)
    assert len(client.subscribed) == 2
    assert all(s["collection"] == "sdk" for s in client.subscribed)
    more = await asyncio.to_thread(poster.many, "shop", "sdk", 6, 100)
    expected = first[2:] + more
    assert await client.wait_ids(len(expected)) == expected
    # and a fresh client that sends SUBSCRIBE twice without lastId
    fresh = await Client(stack.nodes[1], "shop", "sdk").open(repeat=True)
    later = await asyncio.to_thread(poster.many, "shop", "sdk", 5, 200)
    assert await fresh.wait_ids(len(later)) == later
    await asyncio.sleep(0.3)
    assert fresh.ids == later and client.ids == expected + later
    await client.close()
    await fresh.close()


async def test_last_id_zero_replays_everything_retained(stack: Stack[RedisTarget]) -> None:
    ids = await asyncio.to_thread(Poster(stack.ingest).many, "shop", "zero", 12)
    client = await Client(stack.nodes[1], "shop", "zero").open(last_id="0")
    assert client.subscribed[0]["recovered"] is True
    assert client.subscribed[0]["last_id"] == ids[-1]
    assert client.ids == ids  # replayed before SUBSCRIBED
    await client.close()


async def test_trimmed_last_id_is_reported_not_recovered(stack: Stack[RedisTarget]) -> None:
    ids = await asyncio.to_thread(Poster(stack.ingest).many, "shop", "trim", 10)
    stack.redis.client().xtrim("vski:{shop/trim}:s", maxlen=3, approximate=False)
    client = await Client(stack.nodes[0], "shop", "trim").open(last_id=ids[2])
    assert client.subscribed[0]["recovered"] is False
    assert client.ids == ids[7:]  # what is still retained
    await client.close()
    ok = await Client(stack.nodes[1], "shop", "trim").open(last_id=ids[8])
    assert ok.subscribed[0]["recovered"] is True and ok.ids == ids[9:]
    await ok.close()
    foreign = await Client(stack.nodes[1], "shop", "trim").open(last_id="1-1@notthisepoch")
    assert foreign.subscribed[0]["recovered"] is False and foreign.ids == ids[7:]
    await foreign.close()


async def test_databases_are_isolated(stack: Stack[RedisTarget]) -> None:
    one = await Client(stack.nodes[0], "db_one", "posts").open()
    two = await Client(stack.nodes[0], "db_two", "posts").open()
    two_b = await Client(stack.nodes[1], "db_two", "posts").open()
    poster = Poster(stack.ingest)
    ids_one = await asyncio.to_thread(poster.many, "db_one", "posts", 5)
    ids_two = await asyncio.to_thread(poster.many, "db_two", "posts", 3, 50)
    await one.wait_ids(5)
    await two.wait_ids(3)
    await two_b.wait_ids(3)
    await asyncio.sleep(0.3)
    assert one.ids == ids_one
    assert two.ids == ids_two and two_b.ids == ids_two
    for c in (one, two, two_b):
        await c.close()


def rss_kb(proc: Proc) -> int:
    assert proc.proc is not None
    with open(f"/proc/{proc.proc.pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def stalled_client(node: Proc, db: str, coll: str) -> socket.socket:
    """A WebSocket client that subscribes and then never reads (tiny receive window)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", node.port))
    req = (
        f"GET /api/realtime?db={db}&auth={make_token()} HTTP/1.1\r\nHost: x\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    sock.sendall(req.encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert b" 101 " in head.split(b"\r\n")[0], head
    payload = json.dumps({"type": "SUBSCRIBE", "collection": coll}).encode()
    mask = b"\x01\x02\x03\x04"
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    sock.sendall(bytes([0x81, 0x80 | len(payload)]) + mask + masked)
    return sock


def drain_until_closed(sock: socket.socket, timeout: float = 30) -> tuple[str, bytes]:
    """Read what the server buffered; ("eof" | "reset" | "timeout", the last bytes received)."""
    sock.settimeout(timeout)
    tail = b""
    try:
        while True:
            chunk = sock.recv(1 << 20)
            if not chunk:
                return "eof", tail
            tail = (tail + chunk)[-64:]
    except ConnectionResetError:
        return "reset", tail  # aborted: the close frame could not be flushed in time
    except TimeoutError:
        return "timeout", tail


async def test_slow_consumer_is_closed_others_unaffected_memory_bounded(
    stack: Stack[RedisTarget],
) -> None:
    node = stack.nodes[0]
    stalled = await asyncio.to_thread(stalled_client, node, "shop", "slow")
    fast = [await Client(node, "shop", "slow").open() for _ in range(3)]
    rss_before = rss_kb(node)
    poster = BackgroundPoster(Poster(stack.ingest), "shop", "slow", 0, pace=0)
    # ~8 KB records: 400 events = 3.2 MB for the stalled client, far over the 256 KiB cap
    ids = await asyncio.to_thread(
        lambda: [poster.poster.post("shop", "slow", i, pad=8000) for i in range(400)]
    )
    for c in fast:
        assert await c.wait_ids(len(ids)) == ids
    how, tail = await asyncio.to_thread(drain_until_closed, stalled)
    stalled.close()
    # closed with 4008 "slow consumer" (0x0fa8), or aborted when the close could not be flushed
    assert how == "reset" or (how == "eof" and tail.endswith(b"\x0f\xa8slow consumer")), (how, tail)
    metrics = await asyncio.to_thread(fetch, node, "/metrics")
    assert "vski_fanout_slow_client_closes_total" in metrics
    closes = [
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith("vski_fanout_slow_client_closes_total")
    ]
    assert closes and closes[0] >= 1
    latencies = sorted(x for c in fast for x in c.latencies)
    # liveness, not a benchmark: the fast clients were never stalled behind the slow one
    assert latencies[len(latencies) // 2] < 2.0, latencies[-10:]
    rss_after = rss_kb(node)
    assert rss_after < 150_000, f"RSS {rss_after} kB (before {rss_before} kB)"
    for c in fast:
        await c.close()


def fetch(node: Proc, path: str) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", node.port, timeout=10)
    try:
        conn.request("GET", path)
        return conn.getresponse().read().decode()
    finally:
        conn.close()


class ResumingClient(Client):
    """Reconnects like the SDK after a close, with its lastId (and the same SUBSCRIBE)."""

    closes: int = 0
    stopping: bool = False

    async def run(self) -> None:
        while not self.stopping:
            try:
                conn = await connect(ws_url(self.node, self.db), open_timeout=5, compression=None)
            except (OSError, TimeoutError, Exception):
                await asyncio.sleep(0.3)
                continue
            msg: dict[str, Any] = {"type": "SUBSCRIBE", "collection": self.coll}
            if self.last_id:
                msg["lastId"] = self.last_id
            with contextlib.suppress(ConnectionClosed):
                await conn.send(json.dumps(msg))
            self.conn = conn
            await self._read(conn)
            self.closes += 1
            await asyncio.sleep(0.3)


async def test_redis_restart_during_stream_loses_no_answered_event(
    redis_srv: RedisServer,
) -> None:
    with stack_on(redis_srv, nodes=1, FANOUT_DRAIN_SECONDS="3") as s:
        client = ResumingClient(s.nodes[0], "shop", "restart")
        runner = asyncio.create_task(client.run())
        await settle(lambda: len(client.subscribed) >= 1)
        poster = BackgroundPoster(Poster(s.ingest), "shop", "restart", 200, pace=0.01, retry_for=30)
        poster.start()
        await settle(lambda: len(poster.ids) >= 60)
        old_ids = list(poster.ids)
        await asyncio.to_thread(redis_srv.restart)  # same port, no persistence: data gone
        await asyncio.to_thread(poster.join, 90)
        assert poster.error is None, poster.error
        await settle(lambda: set(poster.ids) <= set(client.ids), timeout=40)
        missing = [i for i in poster.ids if i not in set(client.ids)]
        assert not missing, f"{len(missing)} answered events never arrived: {missing[:5]}"
        assert len(client.ids) == len(set(client.ids)), "duplicates delivered"
        # a lastId from before the restart cannot be honoured: reported, never silently fine
        late = await Client(s.nodes[0], "shop", "restart").open(last_id=old_ids[10])
        assert late.subscribed[0]["recovered"] is False
        new_epoch_ids = [i for i in poster.ids if i.split("@")[1] != old_ids[0].split("@")[1]]
        assert new_epoch_ids and late.ids == new_epoch_ids
        await late.close()
        client.stopping = True
        if client.conn is not None:
            await client.conn.close()
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
        status = await asyncio.to_thread(fetch, s.nodes[0], "/ready")
        assert json.loads(status)["status"] == "ready"


async def test_subscribe_storm_to_new_collections_all_succeed(stack: Stack[RedisTarget]) -> None:
    """A reconnect storm (e.g. after another node drained): 300 SUBSCRIBEs at once to 100
    collections this node does not read yet; every one is answered SUBSCRIBED and live."""
    node = stack.nodes[1]

    async def one(i: int) -> tuple[str, ClientConnection]:
        conn = await connect(ws_url(node, "storm"), open_timeout=30, compression=None)
        await conn.send(json.dumps({"type": "SUBSCRIBE", "collection": f"s{i % 100}"}))
        msg = json.loads(await asyncio.wait_for(conn.recv(), 30))
        return msg["type"] + ":" + msg.get("code", ""), conn

    results = await asyncio.gather(*(one(i) for i in range(300)))
    answers = [r[0] for r in results]
    assert answers.count("SUBSCRIBED:") == 300, sorted(set(answers))
    event_id = await asyncio.to_thread(Poster(stack.ingest).post, "storm", "s42", 1)
    for i in (42, 142, 242):
        frame = json.loads(await asyncio.wait_for(results[i][1].recv(), 30))
        assert frame["events"][0]["id"] == event_id
    await asyncio.gather(*(conn.close() for _, conn in results))
