"""The ceiling: a bare ``websockets`` server that broadcasts one prebuilt frame as fast as it can.

Same library, same loop, same client count and frame size as a fanout node, but no Redis, no
hub, no JSON: what is left is the cost of writing frames to sockets. The benchmark compares the
node's delivered events/s with this (run in the same benchmark run, pinned to the same core).

Usage: python bench/fanout_bare.py PORT  -- answers SUBSCRIBED to any message; on SIGUSR1
broadcasts for BARE_SECONDS (default 5) and prints "SENT <frames> <seconds> <clients>".
BARE_MODE=raw writes one prebuilt WebSocket frame (header + payload, encoded once) straight to
each transport instead of calling ``broadcast()`` (which builds the frame per connection).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time

from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosed

FRAME = (
    b'{"type":"EVENT","collection":"c0","events":[{"id":"1795825890803-17@5b5e6e84",'
    b'"data":{"action":"create","record":{"id":"r17","n":17,"sent":0.0,'
    b'"title":"a record of typical size for the benchmark"}}}]}'
)


async def main(port: int) -> None:
    conns: set[ServerConnection] = set()

    async def handler(conn: ServerConnection) -> None:
        conns.add(conn)
        try:
            async for _ in conn:
                await conn.send(b'{"type":"SUBSCRIBED","collection":"c0","last_id":"0"}', text=True)
        except ConnectionClosed:
            pass
        finally:
            conns.discard(conn)

    go = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, go.set)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    seconds = float(os.environ.get("BARE_SECONDS", "5"))
    raw = os.environ.get("BARE_MODE", "broadcast") == "raw"
    n = len(FRAME)
    header = bytes([0x81, n]) if n < 126 else bytes([0x81, 126, n >> 8, n & 0xFF])
    wire = header + FRAME
    async with serve(handler, "127.0.0.1", port, compression=None, backlog=4096):
        print("LISTENING", flush=True)
        await go.wait()
        targets = list(conns)
        sent = 0
        started = time.monotonic()
        deadline = started + seconds
        while time.monotonic() < deadline:
            if raw:
                for c in targets:
                    c.transport.write(wire)
            else:
                broadcast(targets, FRAME, text=True)
            sent += 1
            if sent % 8 == 0:
                # backpressure: never let kernel-side slowness turn into unbounded buffers
                worst = max(
                    (c.transport.get_write_buffer_size() for c in targets if c.transport),
                    default=0,
                )
                await asyncio.sleep(0.001 if worst > 256 * 1024 else 0)
        elapsed = time.monotonic() - started
        print(f"SENT {sent} {elapsed:.3f} {len(targets)}", flush=True)
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
