"""WebSocket keepalive that gives up on a dead peer quickly.

websockets pings every ``FANOUT_PING_INTERVAL`` and, when no pong comes within
``FANOUT_PING_TIMEOUT``, fails the connection with 1011, then waits ``close_timeout`` for the
peer's side of the close handshake before aborting the TCP connection. A peer that missed its
pong is gone (it vanished without FIN: a partition, a phone out of coverage, a host powered off)
and will never answer a close frame, so that wait only holds its session and buffers longer.
:class:`DeadPeerConnection` waits ``dead_peer_close`` (``FANOUT_SLOW_CLOSE_SECONDS``) instead:
a vanished client is freed within ``FANOUT_PING_INTERVAL + FANOUT_PING_TIMEOUT +
FANOUT_SLOW_CLOSE_SECONDS``. Normal closes keep the longer ``close_timeout``.
"""

from __future__ import annotations

import asyncio

from websockets.asyncio.server import ServerConnection
from websockets.frames import CloseCode


class DeadPeerConnection(ServerConnection):
    dead_peer_close: float = 1.0  # set from FANOUT_SLOW_CLOSE_SECONDS when the server starts

    async def keepalive(self) -> None:
        """websockets' keepalive loop (same pings, same 1011), with the short close wait."""
        assert self.ping_interval is not None
        latency = 0.0
        try:
            while True:
                await asyncio.sleep(self.ping_interval - latency)
                pong_received = await self.ping()
                if self.ping_timeout is None:
                    continue
                try:
                    async with asyncio.timeout(self.ping_timeout):
                        latency = await pong_received
                except TimeoutError:
                    wait = self.close_timeout
                    self.close_timeout = (
                        self.dead_peer_close if wait is None else min(wait, self.dead_peer_close)
                    )
                    async with self.send_context():
                        self.protocol.fail(CloseCode.INTERNAL_ERROR, "keepalive ping timeout")
                    raise AssertionError("send_context() waits for connection_lost()") from None
        except Exception:
            self.logger.error("keepalive ping failed", exc_info=True)
