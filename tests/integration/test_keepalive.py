"""The node's one keepalive sweep over real loopback websockets connections (milliseconds)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from fanout.keepalive import KeepaliveSweep, PongClock


@asynccontextmanager
async def pair() -> AsyncIterator[tuple[PongClock, ClientConnection, list[PongClock]]]:
    conns: list[PongClock] = []
    opened = asyncio.Event()

    async def handler(conn: ServerConnection) -> None:
        assert isinstance(conn, PongClock)
        conns.append(conn)
        opened.set()
        try:
            await conn.wait_closed()
        finally:
            conns.remove(conn)

    async with serve(
        handler, "127.0.0.1", 0, create_connection=PongClock, ping_interval=None
    ) as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}", ping_interval=None) as client:
            await opened.wait()
            yield conns[0], client, conns


async def test_a_peer_that_answers_is_kept() -> None:
    async with pair() as (conn, client, conns):
        sweep = KeepaliveSweep(lambda: conns, 10.0, 5.0, 1.0)
        assert conn.pong_at == 0.0
        sent_at = asyncio.get_running_loop().time()
        assert sweep.ping(conns) == 1
        recv = asyncio.ensure_future(client.recv())  # the client answers pings while reading
        for _ in range(100):
            if conn.pong_at >= sent_at:
                break
            await asyncio.sleep(0.01)
        assert conn.pong_at >= sent_at
        assert sweep.fail_silent([conn], sent_at) == 0
        assert conn.protocol.state.name == "OPEN"
        sweep.stop()
        recv.cancel()


async def test_a_silent_peer_is_failed_with_1011_and_the_short_close_wait() -> None:
    async with pair() as (conn, client, conns):
        sweep = KeepaliveSweep(lambda: conns, 10.0, 5.0, 0.2)
        assert conn.close_timeout == 10  # websockets' default
        future = asyncio.get_running_loop().time() + 60  # "no pong since then"
        assert sweep.fail_silent(list(conns), future) == 1
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(client.recv(), 5)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1011
        assert closed.value.rcvd.reason == "keepalive ping timeout"
        assert conn.close_timeout == 0.2


async def test_the_sweep_pings_on_its_interval_and_checks_after_the_timeout() -> None:
    async with pair() as (conn, client, conns):
        sweep = KeepaliveSweep(lambda: conns, 0.05, 0.05, 0.2)
        sweep.start()
        recv = asyncio.ensure_future(client.recv())
        await asyncio.sleep(0.3)  # several rounds: pongs arrive, nobody is failed
        assert conn.pong_at > 0
        assert conn.protocol.state.name == "OPEN"
        recv.cancel()
        sweep.stop()
