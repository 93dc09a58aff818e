"""The one write path: every frame this node sends a client leaves through this module.

- :class:`Member` is what the hub and the consumer groups may use of a client connection. They
  never see the connection, its transport or the session's fields.
- :class:`Outlet` is the write side of one websockets connection, the only code that touches
  its transport.
- :func:`deliver` writes one frame to many members: the hot path of live delivery.

A server frame is unmasked, so without extensions its bytes are identical for every client:
:class:`Frame` encodes the WebSocket header once and each outlet writes the same bytes straight
to its transport (bench/fanout_bare.py: ~1.3x the deliveries/s of ``websockets.broadcast``,
which builds a frame per connection). A connection with an extension (permessage-deflate) or
in the middle of a fragmented send goes through ``broadcast`` instead. Safe because websockets
flushes every frame it builds to the transport synchronously, so nothing of its own can be
pending in between.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from websockets.asyncio.server import ServerConnection, broadcast
from websockets.protocol import State

_OPEN = State.OPEN


class Frame:
    """One JSON text message, with its WebSocket frame built once for all recipients."""

    __slots__ = ("payload", "wire")

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        n = len(payload)
        if n < 126:
            header = bytes((0x81, n))
        elif n < 65536:
            header = bytes((0x81, 126)) + n.to_bytes(2, "big")
        else:
            header = bytes((0x81, 127)) + n.to_bytes(8, "big")
        self.wire = header + payload


class Member(Protocol):
    """A client connection as the hub and the groups see it."""

    @property
    def closing(self) -> bool:
        """The connection is being closed: give it nothing more."""
        ...

    def buffered_bytes(self) -> int:
        """Bytes written but not yet sent to the client (its send buffer)."""
        ...

    def write_frame(self, frame: Frame) -> bool:
        """Write without waiting; False if the connection is not open."""
        ...

    def offer(self, frame: Frame, limit: int) -> int:
        """The broadcast path, one call per member: write without waiting if its send buffer
        is within ``limit``. Returns WRITTEN, NOT_OPEN or OVER_LIMIT (nothing written)."""
        ...

    async def send_frame(self, payload: bytes) -> None:
        """Send and wait for the buffer to drain (replay: a slow client slows its own replay)."""
        ...

    def refund_token(self) -> None:
        """Give back one message of the client's rate limit (a valid ACK)."""
        ...

    def overflowed(self) -> None:
        """Its send buffer is over the cap: close it as a slow consumer."""
        ...


WRITTEN, NOT_OPEN, OVER_LIMIT = 1, 0, -1


class Outlet:
    """The write side of one websockets connection (opened: its transport is set)."""

    __slots__ = ("conn", "plain", "protocol", "transport")

    def __init__(self, conn: ServerConnection) -> None:
        self.conn = conn
        self.protocol = conn.protocol
        self.transport = conn.transport
        # extensions are fixed by the handshake: without any, frames are written prebuilt
        self.plain = not conn.protocol.extensions

    def buffered(self) -> int:
        return self.transport.get_write_buffer_size()

    def write(self, frame: Frame) -> bool:
        if self.protocol.state is not _OPEN:
            return False
        if not self.plain or self.conn.send_in_progress is not None:
            broadcast([self.conn], frame.payload, text=True)
            return True
        transport = self.transport
        if transport.is_closing():
            return False
        transport.write(frame.wire)
        return True

    def offer(self, frame: Frame, limit: int) -> int:
        transport = self.transport
        if transport.get_write_buffer_size() > limit:
            return OVER_LIMIT
        # the attribute behind websockets' ``state`` property: the property call alone was
        # ~4.5 % of the node's busy time at 10,000 subscribers (bench/profile_top.py);
        # tests/unit/test_connection_buffers.py guards the name
        if self.protocol._state is not _OPEN:
            return NOT_OPEN
        if not self.plain or self.conn.send_in_progress is not None:
            broadcast([self.conn], frame.payload, text=True)
            return WRITTEN
        if transport.is_closing():
            return NOT_OPEN
        transport.write(frame.wire)
        return WRITTEN

    async def send(self, payload: bytes) -> None:
        await self.conn.send(payload, text=True)

    def abort(self) -> None:
        """Drop the TCP connection without a closing handshake (a close that cannot finish)."""
        self.conn.transport.abort()


def deliver(members: Iterable[Member], frame: Frame, limit: int) -> tuple[int, list[Member]]:
    """Write ``frame`` to every member whose send buffer is within ``limit``.

    Returns (connections written to, members over the limit). The caller closes the latter as
    slow consumers; skipping them loses nothing (they resume from their lastId) and keeps the
    node's memory bounded."""
    written = 0
    slow: list[Member] = []
    for member in members:
        outcome = member.offer(frame, limit)
        if outcome > 0:
            written += 1
        elif outcome < 0:
            slow.append(member)
    return written, slow
