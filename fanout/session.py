"""One client connection: reads its frames, applies its limits, and is the hub's member object.

The session is the boundary where nothing a client sends may escape: every message is decoded
and validated (``common.messages``), every failure becomes an ERROR frame on this connection
only, abuse (a flood of frames) closes this connection only, and an unexpected exception is
logged and answered with ERROR instead of reaching the server.

Messages are handled one at a time, so a SUBSCRIBE's replay has completed (and SUBSCRIBED has
been sent) before the next message of the same connection is looked at.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any, Protocol

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from common.auth import Claims
from common.logs import get_logger
from common.messages import (
    Ack,
    MessageError,
    Subscribe,
    Unsubscribe,
    decode_client_message,
    error_frame,
    subscribed_frame,
)
from fanout import metrics
from fanout.settings import FanoutSettings

log = get_logger("fanout.session")

# close codes a fanout node uses (documented in the README's protocol section)
CLOSE_TOKEN_EXPIRED = 4001
CLOSE_SLOW_CONSUMER = 4008
CLOSE_FLOOD = 1008
CLOSE_SERVICE_RESTART = 1012
CLOSE_TRY_AGAIN = 1013


class HubPort(Protocol):
    """What the session needs of fanout.hub.Hub (kept narrow so tests can see the seam)."""

    async def subscribe(
        self, member: Any, db: str, collection: str, last_id: str | None
    ) -> Any: ...

    def unsubscribe(self, member: Any, db: str, collection: str) -> bool: ...

    def remove(self, member: Any) -> None: ...


class GroupsPort(Protocol):
    """Consumer groups (fanout/groups.py). ``subscribe`` returns the last_id for SUBSCRIBED.
    Errors meant for the client are raised with ``code`` and ``message`` attributes."""

    async def subscribe(
        self, member: Any, db: str, collection: str, group: str, last_id: str | None
    ) -> str: ...

    async def ack(self, member: Any, db: str, collection: str, group: str, ack_id: str) -> None: ...

    async def unsubscribe(self, member: Any, db: str, collection: str, group: str) -> bool: ...

    async def remove(self, member: Any) -> None: ...


class TokenBucket:
    """Client messages/s limit: ``rate`` per second refill, ``burst`` capacity."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


class Session:
    """A connection's state; the hub keeps it as a member of each collection it subscribed."""

    def __init__(
        self,
        conn: ServerConnection,
        db: str,
        claims: Claims,
        hub: HubPort,
        settings: FanoutSettings,
        groups: GroupsPort | None = None,
    ) -> None:
        self.conn = conn
        self.db = db
        self.claims = claims
        self.hub = hub
        self.settings = settings
        self.groups = groups
        self.subscriptions: set[tuple[str, str | None]] = set()  # (collection, group)
        self.bucket = TokenBucket(settings.client_rate, settings.client_burst)
        self.closing = False
        self.close_reason = ""
        self._tasks: set[asyncio.Task[None]] = set()
        self._expiry: asyncio.TimerHandle | None = None
        try:
            peer = conn.remote_address
            self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        except Exception:
            self.peer = "?"
        self.user = claims.subject

    # ------------------------------------------------------------------ hub callbacks

    def overflowed(self) -> None:
        """The hub found this connection's send buffer over the cap: close it (4008).

        Called synchronously from the broadcast path; the close runs as a task, bounded by
        ``slow_close_seconds`` after which the transport is aborted (memory stays bounded even
        when the client never reads the close frame)."""
        if self.closing:
            return
        log.info("slow_consumer_close", peer=self.peer, db=self.db, user=self.user)
        self._close_later(CLOSE_SLOW_CONSUMER, "slow consumer", self.settings.slow_close_seconds)

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        """Serve the connection until it closes; never raises (the session boundary)."""
        self._arm_expiry()
        try:
            await self._read_loop()
        except ConnectionClosed:
            pass
        except Exception:
            log.exception("session_failed", peer=self.peer, db=self.db)
            with contextlib.suppress(Exception):
                await self.conn.close(1011, "internal error")
        finally:
            await self._cleanup()

    async def _read_loop(self) -> None:
        async for message in self.conn:
            if self.closing:
                return
            if not self.bucket.take():
                log.info("client_flood", peer=self.peer, db=self.db, user=self.user)
                metrics.CLOSES.labels("flood").inc()
                self.closing = True
                self.close_reason = "flood"
                await self.conn.close(CLOSE_FLOOD, "flood")
                return
            if isinstance(message, bytes):
                await self.send_error("binary_frame", "frames must be JSON text, not binary")
                continue
            await self.handle(message)

    async def handle(self, raw: str | bytes) -> None:
        """Process one client message; client mistakes become ERROR frames."""
        try:
            msg = decode_client_message(raw)
            if isinstance(msg, Subscribe):
                await self._subscribe(msg)
            elif isinstance(msg, Unsubscribe):
                await self._unsubscribe(msg)
            elif isinstance(msg, Ack):
                await self._ack(msg)
        except MessageError as exc:
            await self.send_error(exc.code, exc.message)
        except ConnectionClosed:
            raise
        except Exception as exc:
            code = getattr(exc, "code", None)
            message = getattr(exc, "message", None)
            if isinstance(code, str) and isinstance(message, str):
                await self.send_error(code, message)  # hub/groups refusals (SubscribeError)
                if code == "redis_unavailable":
                    # the SDK ignores ERROR frames and would never re-subscribe: close, so it
                    # reconnects and re-subscribes with its lastId (1013 = try again later)
                    self.closing = True
                    self.close_reason = "redis unavailable"
                    await self.conn.close(CLOSE_TRY_AGAIN, "event store unavailable")
            else:
                log.exception("message_failed", peer=self.peer, db=self.db)
                await self.send_error("internal_error", "the server failed to handle the message")

    async def _subscribe(self, msg: Subscribe) -> None:
        key = (msg.collection, msg.group)
        limit = self.settings.max_subscriptions
        if key not in self.subscriptions and len(self.subscriptions) >= limit:
            await self.send_error(
                "too_many_subscriptions",
                f"a connection may hold at most {self.settings.max_subscriptions} subscriptions",
                collection=msg.collection,
            )
            return
        if msg.group is not None:
            if self.groups is None:
                await self._groups_unavailable(msg.collection)
                return
            last_id = await self.groups.subscribe(
                self, self.db, msg.collection, msg.group, msg.lastId
            )
            self.subscriptions.add(key)
            await self.send(subscribed_frame(msg.collection, last_id, group=msg.group))
            return
        outcome = await self.hub.subscribe(self, self.db, msg.collection, msg.lastId)
        self.subscriptions.add(key)
        await self.send(
            subscribed_frame(msg.collection, outcome.last_id, recovered=outcome.recovered)
        )

    async def _unsubscribe(self, msg: Unsubscribe) -> None:
        key = (msg.collection, msg.group)
        self.subscriptions.discard(key)
        if msg.group is not None:
            if self.groups is None:
                await self._groups_unavailable(msg.collection)
                return
            await self.groups.unsubscribe(self, self.db, msg.collection, msg.group)
            return
        self.hub.unsubscribe(self, self.db, msg.collection)

    async def _ack(self, msg: Ack) -> None:
        if msg.group is None:
            return  # the seed accepted plain ACKs (clients use them to move lastId): nothing to do
        if self.groups is None:
            await self._groups_unavailable(msg.collection)
            return
        await self.groups.ack(self, self.db, msg.collection, msg.group, msg.id)

    async def _groups_unavailable(self, collection: str) -> None:
        await self.send_error(
            "groups_unavailable",
            "consumer groups are not available on this node",
            collection=collection,
        )

    # ------------------------------------------------------------------ sending and closing

    async def send(self, frame: bytes) -> None:
        await self.conn.send(frame, text=True)

    async def send_error(self, code: str, message: str, **extra: Any) -> None:
        metrics.CLIENT_ERRORS.labels(code).inc()
        log.debug("client_error", code=code, peer=self.peer, db=self.db)
        await self.send(error_frame(code, message, **extra))

    def _arm_expiry(self) -> None:
        exp = self.claims.expires_at
        if exp is None:
            return
        delay = exp + self.settings.expiry_grace_seconds - time.time()
        loop = asyncio.get_running_loop()
        self._expiry = loop.call_later(max(0.0, delay), self._expired)

    def _expired(self) -> None:
        if self.closing:
            return
        log.info("token_expired_close", peer=self.peer, db=self.db, user=self.user)
        timeout = self.settings.slow_close_seconds * 5
        self._close_later(CLOSE_TOKEN_EXPIRED, "token expired", timeout)

    def _close_later(self, code: int, reason: str, timeout: float) -> None:
        self.closing = True
        self.close_reason = reason
        metrics.CLOSES.labels(reason.replace(" ", "_")).inc()
        task = asyncio.get_running_loop().create_task(self.close_bounded(code, reason, timeout))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close_bounded(self, code: int, reason: str, timeout: float) -> None:
        """Close with ``code``; abort the TCP connection if the close cannot finish in time."""
        try:
            async with asyncio.timeout(timeout):
                await self.conn.close(code, reason)
        except TimeoutError:
            self.conn.transport.abort()
        except Exception:
            log.exception("close_failed", peer=self.peer)
            self.conn.transport.abort()

    async def _cleanup(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
        try:
            self.hub.remove(self)
        except Exception:
            log.exception("hub_remove_failed", peer=self.peer)
        if self.groups is not None:
            try:
                await self.groups.remove(self)
            except Exception:
                log.exception("groups_remove_failed", peer=self.peer)
        for task in list(self._tasks):
            if not task.done():
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
