"""``fanout.wire`` in process, against real websockets connections: the frame it prebuilds once
must be what a websockets client decodes, for every payload length encoding."""

from __future__ import annotations

import asyncio
import json

from websockets.asyncio.client import connect


async def test_prebuilt_frame_matches_websockets_framing() -> None:
    """The frame encoded once for all recipients must be byte-compatible with a real client,
    for every length encoding, and fall back to websockets for deflate connections."""
    from websockets.asyncio.server import ServerConnection, serve

    from fanout.wire import Frame, Outlet

    def broadcast_text(conns: list[ServerConnection], payload: bytes) -> int:
        frame = Frame(payload)
        return sum(Outlet(conn).write(frame) for conn in conns)

    conns: list[ServerConnection] = []
    done = asyncio.Event()

    async def handler(conn: ServerConnection) -> None:
        conns.append(conn)
        await done.wait()

    async with serve(handler, "127.0.0.1", 0, compression="deflate") as server:
        port = server.sockets[0].getsockname()[1]
        plain = await connect(f"ws://127.0.0.1:{port}", compression=None)
        deflate = await connect(f"ws://127.0.0.1:{port}", compression="deflate")
        while len(conns) < 2:
            await asyncio.sleep(0.01)
        payloads = [json.dumps({"n": "x" * size}).encode() for size in (1, 200, 70_000)]
        for payload in payloads:
            assert broadcast_text(conns, payload) == 2
        for client in (plain, deflate):
            for payload in payloads:
                got = await asyncio.wait_for(client.recv(), 10)
                assert isinstance(got, str) and got.encode() == payload
        await plain.close()
        await asyncio.sleep(0.1)
        assert broadcast_text(conns, b"{}") == 1  # closed connections are skipped
        assert await asyncio.wait_for(deflate.recv(), 10) == "{}"
        await deflate.close()
        done.set()
