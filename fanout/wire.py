"""Writing frames to many client connections at once: the hot path of live delivery."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from websockets.asyncio.server import broadcast
from websockets.protocol import State


def broadcast_text(conns: Iterable[Any], payload: bytes) -> int:
    """Write one JSON text message to many connections, encoding the WebSocket frame once.

    ``websockets.broadcast`` builds and serializes a frame per connection; a server frame is
    unmasked, so without extensions the bytes are identical for every client and can be written
    straight to each transport (bench/fanout_bare.py: ~1.3x the deliveries/s of ``broadcast``
    per core). Connections with an extension (permessage-deflate) or in the middle of a
    fragmented send go through ``broadcast``. Safe because websockets flushes every frame it
    builds to the transport synchronously, so nothing of its own can be pending in between.
    Returns the number of connections written to.
    """
    n = len(payload)
    if n < 126:
        header = bytes((0x81, n))
    elif n < 65536:
        header = bytes((0x81, 126)) + n.to_bytes(2, "big")
    else:
        header = bytes((0x81, 127)) + n.to_bytes(8, "big")
    wire = header + payload
    other: list[Any] = []
    written = 0
    open_state = State.OPEN
    for conn in conns:
        protocol = conn.protocol
        if protocol.state is not open_state:
            continue
        if protocol.extensions or conn.send_in_progress is not None:
            other.append(conn)
            continue
        transport = conn.transport
        if transport.is_closing():
            continue
        transport.write(wire)
        written += 1
    if other:
        broadcast(other, payload, text=True)
        written += len(other)
    return written
