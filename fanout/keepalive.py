"""WebSocket keepalive for a whole node: one sweep task, not one task per connection.

websockets' own keepalive runs a task per connection (a coroutine, a sleep timer and a future
each: ~1.5 KB of a ~17 KB connection, measured by ``bench/fanout_memory.py``). The node turns it
off and runs :class:`KeepaliveSweep` instead: every ``FANOUT_PING_INTERVAL`` it pings every open
connection (500 per loop iteration, so deliveries are not held up), and ``FANOUT_PING_TIMEOUT``
later it fails, with 1011 "keepalive ping timeout" as websockets does, each one that has not
answered with a pong since. A connection is pinged at most ``FANOUT_PING_INTERVAL`` after it
opens (at the next sweep), as before.

A peer that missed its pong is gone (it vanished without FIN: a partition, a phone out of
coverage, a host powered off) and will never answer a close frame, so waiting the normal
``close_timeout`` for it would only hold its session and buffers longer: the failed connection
waits ``FANOUT_SLOW_CLOSE_SECONDS`` instead. A vanished client is freed within
``FANOUT_PING_INTERVAL + FANOUT_PING_TIMEOUT + FANOUT_SLOW_CLOSE_SECONDS``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode
from websockets.protocol import State

from common.logs import get_logger

log = get_logger("fanout.keepalive")
SWEEP_SLICE = 500  # connections pinged per loop iteration
_OPEN = State.OPEN


class PongClock(ServerConnection):
    """A ServerConnection that remembers when its peer last answered a ping (any pong)."""

    pong_at: float = 0.0

    def acknowledge_pings(self, data: bytes) -> None:
        self.pong_at = self.loop.time()
        super().acknowledge_pings(data)


class KeepaliveSweep:
    """Pings every open connection each ``interval``; fails those silent for ``timeout``."""

    def __init__(
        self,
        connections: Callable[[], Iterable[PongClock]],
        interval: float,
        timeout: float | None,
        dead_peer_close: float,
    ) -> None:
        self.connections = connections
        self.interval = interval
        self.timeout = timeout
        self.dead_peer_close = dead_peer_close
        self._task: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Task[None]] = set()
        self._checks: set[asyncio.TimerHandle] = set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="keepalive-sweep")

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        for handle in self._checks:
            handle.cancel()
        self._checks.clear()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            conns = list(self.connections())
            # in slices, yielding in between: a sweep over 20,000 connections must not hold the
            # loop (and every delivery) for the ~100 ms it takes in one go
            for i in range(0, len(conns), SWEEP_SLICE):
                try:
                    self.ping(conns[i : i + SWEEP_SLICE])
                except Exception:  # a bug here must not end keepalive for the whole node
                    log.exception("keepalive_sweep_failed")
                await asyncio.sleep(0)

    def ping(self, conns: Iterable[PongClock]) -> int:
        """Send one ping to each open connection of ``conns`` and schedule their pong check
        ``timeout`` from now. Returns how many were pinged."""
        loop = asyncio.get_running_loop()
        sent_at = loop.time()
        pinged: list[PongClock] = []
        for conn in conns:
            if conn.protocol.state is not _OPEN or conn.transport.is_closing():
                continue
            conn.protocol.send_ping(b"")
            conn.send_data()
            pinged.append(conn)
        if self.timeout is not None and pinged:
            handle: asyncio.TimerHandle | Any = None

            def check() -> None:
                self._checks.discard(handle)
                self.fail_silent(pinged, sent_at)

            handle = loop.call_later(self.timeout, check)
            self._checks.add(handle)
        return len(pinged)

    def fail_silent(self, pinged: Iterable[PongClock], sent_at: float) -> int:
        """Fail every still-open connection of ``pinged`` with no pong since ``sent_at``."""
        failed = 0
        for conn in pinged:
            if conn.protocol.state is _OPEN and conn.pong_at < sent_at:
                task = asyncio.get_running_loop().create_task(self._fail(conn))
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)
                failed += 1
        return failed

    async def _fail(self, conn: PongClock) -> None:
        wait = conn.close_timeout
        conn.close_timeout = (
            self.dead_peer_close if wait is None else min(wait, self.dead_peer_close)
        )
        with contextlib.suppress(ConnectionClosed):
            async with conn.send_context():
                conn.protocol.fail(CloseCode.INTERNAL_ERROR, "keepalive ping timeout")
