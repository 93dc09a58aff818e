"""The hub against a real Redis and real WebSocket connections, in one process.

Events are appended with the real ingest store (the same Lua script as production); a second
script variant stores an event *without* announcing it, to simulate a lost notification.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis
import websockets
from websockets.asyncio.server import ServerConnection, serve

from common.config import CommonSettings, RedisSettings, RetentionSettings
from common.layout import EventId, collection_keys
from common.messages import Webhook
from fanout.hub import Hub, HubSettings, SubscribeOutcome
from fanout.subscriptions import Subscriptions
from fanout.wire import Outlet
from ingest.store import APPEND, EventStore, dedupe_digest, new_epoch
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.timeout(60)


def hook(i: int, collection: str = "posts", database: str = "postgres") -> Webhook:
    return Webhook(
        database=database,
        collection=collection,
        action="create",
        record_id=f"r{i}",
        timestamp=f"t{i}",
        record=json.dumps({"id": f"r{i}", "n": i}).encode(),
    )


class Appender:
    """Appends through the production script; ``silent=True`` stores without notifying."""

    def __init__(self, server: RedisServer, retention: RetentionSettings | None = None) -> None:
        self.client = redis.Redis(port=server.port)
        self.store = EventStore(self.client, retention or RetentionSettings())
        self.n = 0

    def append(self, collection: str = "posts", database: str = "postgres") -> str:
        self.n += 1
        return self.store.append(hook(self.n, collection, database)).id

    def append_silently(self, collection: str = "posts") -> str:
        """Store without the pub/sub notification (as if the node missed it)."""
        self.n += 1
        h = hook(self.n, collection)
        k = collection_keys(h.database, h.collection)
        script = self.client.register_script(APPEND.text)

        res = script(
            keys=[k.stream, k.meta, k.dedupe(dedupe_digest(h)), k.meta + ":nobody-listens"],
            args=[h.data_json(), new_epoch(), 3_600_000, 10_000, 86_400_000, 3_600_000],
        )
        return str(res[1].decode())


@dataclass(eq=False)
class Member:
    """The hub's view of a connection (``fanout.wire.Member``), over a real websockets one."""

    conn: ServerConnection
    overflow_calls: int = 0
    closing: bool = False

    def __post_init__(self) -> None:
        self.outlet = Outlet(self.conn)

    def buffered_bytes(self) -> int:
        return self.outlet.buffered()

    def write_frame(self, frame: Any) -> bool:
        return self.outlet.write(frame)

    def offer(self, frame: Any, limit: int) -> int:
        return self.outlet.offer(frame, limit)

    async def send_frame(self, payload: bytes) -> None:
        await self.outlet.send(payload)

    def refund_token(self) -> None:
        pass

    def overflowed(self) -> None:
        self.overflow_calls += 1


@dataclass
class Rig:
    hub: Hub
    subs: Subscriptions
    url: str
    members: asyncio.Queue[Member]
    clients: list[Any] = field(default_factory=list)

    async def subscribe(
        self, member: Member, db: str, collection: str, last_id: str | None
    ) -> SubscribeOutcome:
        return await self.subs.subscribe(member, {"sub": "u"}, db, collection, None, last_id)

    def receives(self, member: Member, db: str, collection: str) -> bool:
        stream = self.hub.streams.get(collection_keys(db, collection).channel)
        return stream is not None and stream.recipients.has(member)

    async def connect(self) -> tuple[Member, Any]:
        ws = await websockets.connect(self.url, max_size=None)
        self.clients.append(ws)
        member = await asyncio.wait_for(self.members.get(), 5)
        return member, ws


@contextlib.asynccontextmanager
async def rig(server: RedisServer, url: str | None = None, **hub_kw: Any) -> AsyncIterator[Rig]:
    common = CommonSettings(redis=RedisSettings(url=url or server.url))
    settings = HubSettings(**{"sweep_interval": 0.5, "linger": 0.2, **hub_kw})
    hub = Hub(settings, common)
    await hub.start()
    members: asyncio.Queue[Member] = asyncio.Queue()

    async def handler(conn: ServerConnection) -> None:
        await members.put(Member(conn))
        with contextlib.suppress(Exception):
            await conn.wait_closed()

    async with serve(handler, "127.0.0.1", 0, compression=None) as srv:
        port = next(iter(srv.sockets)).getsockname()[1]
        subs = Subscriptions(hub, None, max_per_connection=100, prefix="vski")
        r = Rig(hub, subs, f"ws://127.0.0.1:{port}", members)
        try:
            yield r
        finally:
            for ws in r.clients:
                await ws.close()
            await hub.stop()


async def read_ids(ws: Any, n: int, timeout: float = 10) -> list[str]:
    ids: list[str] = []
    async with asyncio.timeout(timeout):
        while len(ids) < n:
            frame = json.loads(await ws.recv())
            assert frame["type"] == "EVENT", frame
            ids += [e["id"] for e in frame["events"]]
    return ids


async def no_more(ws: Any, wait: float = 0.3) -> None:
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(wait):
            extra = await ws.recv()
            raise AssertionError(f"unexpected frame {extra!r}")


def in_thread(fn: Callable[[], Any]) -> Any:
    return asyncio.to_thread(fn)


async def test_live_events_in_order_to_every_member(redis_srv: RedisServer) -> None:
    app = Appender(redis_srv)
    async with rig(redis_srv) as r:
        (m1, ws1), (m2, ws2) = await r.connect(), await r.connect()
        for m in (m1, m2):
            out = await r.subscribe(m, "postgres", "posts", None)
            assert out.recovered and out.last_id == "0"
        ids = [await in_thread(app.append) for _ in range(20)]
        assert await read_ids(ws1, 20) == ids
        assert await read_ids(ws2, 20) == ids
        await no_more(ws1)


async def test_lost_notification_repaired_from_stream(redis_srv: RedisServer) -> None:
    app = Appender(redis_srv)
    async with rig(redis_srv, sweep_interval=30) as r:
        m, ws = await r.connect()
        await r.subscribe(m, "postgres", "posts", None)
        a = await in_thread(app.append)
        b = await in_thread(app.append_silently)  # notification lost
        c = await in_thread(app.append)  # its seq jump reveals the gap
        assert await read_ids(ws, 3) == [a, b, c]
        await no_more(ws)


async def test_sweep_finds_silent_event_without_further_traffic(redis_srv: RedisServer) -> None:
    app = Appender(redis_srv)
    async with rig(redis_srv, sweep_interval=0.3) as r:
        m, ws = await r.connect()
        await r.subscribe(m, "postgres", "posts", None)
        a = await in_thread(app.append)
        b = await in_thread(app.append_silently)
        assert await read_ids(ws, 2, timeout=5) == [a, b]


async def test_replay_hands_over_to_live_without_gap_or_duplicate(redis_srv: RedisServer) -> None:
    app = Appender(redis_srv)
    first = [app.append() for _ in range(300)]
    stop = threading.Event()
    produced: list[str] = []

    def produce() -> None:
        local = Appender(redis_srv)
        local.n = 10_000
        while not stop.is_set() and len(produced) < 2000:
            produced.append(local.append())

    async with rig(redis_srv, replay_page=50) as r:
        thread = threading.Thread(target=produce)
        thread.start()
        try:
            await asyncio.sleep(0.1)
            m, ws = await r.connect()
            out = await r.subscribe(m, "postgres", "posts", first[99])
            assert out.recovered
            await asyncio.sleep(0.3)
        finally:
            stop.set()
            await asyncio.to_thread(thread.join)
        expected = first[100:] + produced
        got = await read_ids(ws, len(expected), timeout=20)
        assert got == expected
        seqs = [EventId.parse(i).seq for i in got]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
        await no_more(ws)


async def test_subscribe_twice_does_not_double_deliver(redis_srv: RedisServer) -> None:
    app = Appender(redis_srv)
    ids = [app.append() for _ in range(5)]
    async with rig(redis_srv) as r:
        m, ws = await r.connect()
        await r.subscribe(m, "postgres", "posts", ids[1])
        again = await r.subscribe(m, "postgres", "posts", ids[1])
        assert again.last_id == ids[-1]
        assert await read_ids(ws, 3) == ids[2:]
        new = await in_thread(app.append)
        assert await read_ids(ws, 1) == [new]
        await no_more(ws)


async def test_unknown_epoch_or_trimmed_last_id_is_not_recovered(redis_srv: RedisServer) -> None:
    app = Appender(redis_srv, RetentionSettings(max_len=5))
    ids = [app.append() for _ in range(400)]  # approximate trimming keeps a tail
    async with rig(redis_srv) as r:
        m, ws = await r.connect()
        out = await r.subscribe(m, "postgres", "posts", ids[0])
        assert not out.recovered, "the events after ids[0] were trimmed away"
        retained = len(redis_srv.client().xrange("vski:{postgres/posts}:s"))
        assert await read_ids(ws, retained) == ids[-retained:]

        m2, ws2 = await r.connect()
        stale = "1700000000000-3@deadbeef"
        out2 = await r.subscribe(m2, "postgres", "posts", stale)
        assert not out2.recovered
        assert await read_ids(ws2, retained) == ids[-retained:]

        m3, ws3 = await r.connect()
        out3 = await r.subscribe(m3, "postgres", "posts", ids[-2])
        assert out3.recovered
        assert await read_ids(ws3, 1) == ids[-1:]


async def test_epoch_change_after_redis_lost_data(redis_srv: RedisServer) -> None:
    app = Appender(redis_srv)
    async with rig(redis_srv) as r:
        m, ws = await r.connect()
        await r.subscribe(m, "postgres", "posts", None)
        before = await in_thread(app.append)
        assert await read_ids(ws, 1) == [before]
        redis_srv.client().flushall()
        after = [await in_thread(app.append) for _ in range(3)]
        assert EventId.parse(after[0]).epoch != EventId.parse(before).epoch
        assert EventId.parse(after[0]).seq == 1
        assert await read_ids(ws, 3) == after


async def test_databases_are_isolated(redis_srv: RedisServer) -> None:
    app = Appender(redis_srv)
    async with rig(redis_srv) as r:
        m1, ws1 = await r.connect()
        m2, ws2 = await r.connect()
        await r.subscribe(m1, "db1", "posts", None)
        await r.subscribe(m2, "db2", "posts", None)
        a = await in_thread(lambda: app.append("posts", "db1"))
        b = await in_thread(lambda: app.append("posts", "db2"))
        assert await read_ids(ws1, 1) == [a]
        assert await read_ids(ws2, 1) == [b]
        await no_more(ws1)
        await no_more(ws2)


async def raw_client_that_never_reads(url: str) -> tuple[asyncio.StreamReader, Any]:
    """A WebSocket client that completes the handshake and then never reads a byte."""
    import base64
    import os
    import socket

    host, port = url.removeprefix("ws://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    reader, writer = await asyncio.open_connection(sock=sock)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        f"GET / HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    await writer.drain()
    await reader.readuntil(b"\r\n\r\n")
    return reader, writer


async def test_slow_member_is_cut_off_others_keep_receiving(redis_srv: RedisServer) -> None:
    app = Appender(redis_srv)
    async with rig(redis_srv, max_buffer_bytes=64 * 1024) as r:
        _reader, writer = await raw_client_that_never_reads(r.url)
        slow = await asyncio.wait_for(r.members.get(), 5)
        await r.subscribe(slow, "postgres", "posts", None)
        other, ws_other = await r.connect()
        await r.subscribe(other, "postgres", "posts", None)
        big = "x" * 20_000

        def append_big() -> str:
            app.n += 1
            h = hook(app.n)
            h = Webhook(
                **{
                    **{f: getattr(h, f) for f in h.__struct_fields__},
                    "record": json.dumps({"pad": big}).encode(),
                }
            )
            return app.store.append(h).id

        ids = []
        for _ in range(200):
            ids.append(await in_thread(append_big))
            if slow.overflow_calls:
                break
        assert slow.overflow_calls == 1, "the member that never reads was not cut off"
        assert not r.receives(slow, "postgres", "posts")
        buffered = slow.conn.transport.get_write_buffer_size()
        assert buffered < 64 * 1024 + 40_000, f"buffer kept growing: {buffered}"
        assert await read_ids(ws_other, len(ids)) == ids
        more = await in_thread(app.append)
        assert await read_ids(ws_other, 1) == [more]
        writer.close()


async def test_unsubscribe_stops_delivery_and_stream_is_released(redis_srv: RedisServer) -> None:
    app = Appender(redis_srv)
    async with rig(redis_srv, linger=0.1) as r:
        m, ws = await r.connect()
        await r.subscribe(m, "postgres", "posts", None)
        assert await r.subs.unsubscribe(m, "posts", None)
        await in_thread(app.append)
        await no_more(ws)
        await asyncio.sleep(0.4)
        assert r.hub.streams == {}
        # and subscribing again works (channel re-subscribed)
        await r.subscribe(m, "postgres", "posts", None)
        x = await in_thread(app.append)
        assert await read_ids(ws, 1) == [x]


async def test_redis_restart_keeps_live_members_flowing(redis_srv: RedisServer) -> None:
    app = Appender(redis_srv)
    async with rig(redis_srv, ping_interval=0.5) as r:
        m, ws = await r.connect()
        await r.subscribe(m, "postgres", "posts", None)
        a = await in_thread(app.append)
        assert await read_ids(ws, 1) == [a]
        redis_srv.restart()  # no persistence: data gone, new epoch
        for _ in range(100):
            if r.hub.readiness()[0]:
                break
            await asyncio.sleep(0.1)
        app = Appender(redis_srv)
        after = [await in_thread(app.append) for _ in range(3)]
        assert await read_ids(ws, 3, timeout=15) == after
        assert r.hub.readiness()[0]


async def test_replay_finishes_while_events_outpace_reads(redis_srv: RedisServer) -> None:
    """Reads take 60 ms (a relay holds every chunk 30 ms each way) and events arrive every
    ~5 ms: a replay that only joins when a read ends at the cursor would chase it forever. After
    a few rounds the hub holds live delivery for one read; the member joins, exactly."""
    from tests.support.netns import DelayRelay

    app = Appender(redis_srv)
    first = [app.append() for _ in range(50)]
    stop = threading.Event()
    produced: list[str] = []

    def produce() -> None:
        local = Appender(redis_srv)
        local.n = 10_000
        while not stop.is_set() and len(produced) < 3000:
            produced.append(local.append())
            stop.wait(0.005)

    with DelayRelay(("127.0.0.1", redis_srv.port), 0.03) as relay:
        async with rig(redis_srv, url=f"redis://127.0.0.1:{relay.port}/0", replay_page=50) as r:
            thread = threading.Thread(target=produce)
            thread.start()
            try:
                await asyncio.sleep(0.3)
                m, ws = await r.connect()
                async with asyncio.timeout(10):  # it never returned before the fix
                    out = await r.subscribe(m, "postgres", "posts", first[9])
                assert out.recovered
                await asyncio.sleep(0.5)
            finally:
                stop.set()
                await asyncio.to_thread(thread.join)
            expected = first[10:] + produced
            got = await read_ids(ws, len(expected), timeout=20)
            assert got == expected
            await no_more(ws)
