"""One client connection: reads its frames, applies its limits, and is the hub's member.

The session is the boundary where nothing a client sends may escape: every message is decoded
and validated (``common.messages``), every refusal becomes an ERROR frame on this connection
only, abuse (a flood of frames) closes this connection only, and an unexpected exception is
logged and answered with ERROR instead of reaching the server.

Messages are handled one at a time, so a SUBSCRIBE's replay has completed (and SUBSCRIBED has
been sent) before the next message of the same connection is looked at. What the hub and the
groups may use of a session is the ``Member`` interface of ``fanout/wire.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from common.auth import Claims
from common.errors import ClientError, CloseCode, ServiceError, StoreUnavailable
from common.logs import get_logger
from common.messages import (
    Ack,
    Subscribe,
    Unsubscribe,
    decode_client_message,
    error_frame,
    subscribed_frame,
)
from common.ratelimit import TokenBucket
from fanout import metrics
from fanout.settings import FanoutSettings
from fanout.subscriptions import Subscriptions
from fanout.wire import Outlet

log = get_logger("fanout.session")


class Session(Outlet):
    """A connection's state; implements ``fanout.wire.Member``.

    It is its connection's :class:`~fanout.wire.Outlet` (the broadcast path calls ``offer``
    directly, no bound method or second object per connection), slotted, and holds only what it
    uses after the handshake: at 10,000 connections every field is ~80 KB
    (``bench/fanout_memory.py``)."""

    __slots__ = (
        "_bucket",
        "_closing",
        "_expiry",
        "_tasks",
        "claims",
        "close_reason",
        "db",
        "jti",
        "settings",
        "subscriptions",
        "users",
    )

    # the Member names of the write side
    buffered_bytes = Outlet.buffered
    write_frame = Outlet.write

    def __init__(
        self,
        conn: ServerConnection,
        db: str,
        claims: Claims,
        subscriptions: Subscriptions,
        settings: FanoutSettings,
        *,
        users: list[str] | None = None,
        jti: str | None = None,
    ) -> None:
        self.db = db
        self.claims = claims
        self.subscriptions = subscriptions
        self.settings = settings
        super().__init__(conn)
        self._bucket = TokenBucket(settings.client_rate, settings.client_burst)
        self._closing = False
        self.close_reason = ""
        self._tasks: set[asyncio.Task[None]] | None = None  # closes in flight (rare)
        self._expiry: asyncio.TimerHandle | None = None
        self.users = users or []  # the ids a revocation of its user may name
        self.jti = jti

    @property
    def user(self) -> str | None:
        return self.claims.subject

    @property
    def peer(self) -> str:
        """host:port of the client, for logs (formatted only when logged)."""
        try:
            peer = self.conn.remote_address
            return f"{peer[0]}:{peer[1]}" if peer else "?"
        except Exception:
            return "?"

    # ------------------------------------------------------------------ the Member interface

    @property
    def closing(self) -> bool:
        return self._closing

    async def send_frame(self, payload: bytes) -> None:
        await self.send(payload)

    def refund_token(self) -> None:
        self._bucket.refund()

    def overflowed(self) -> None:
        """The hub found this connection's send buffer over the cap: close it (4008).

        Called synchronously from the broadcast path; the close runs as a task, bounded by
        ``slow_close_seconds`` after which the transport is aborted (memory stays bounded even
        when the client never reads the close frame)."""
        if self._closing:
            return
        log.info("slow_consumer_close", peer=self.peer, db=self.db, user=self.user)
        self._close_later(
            CloseCode.SLOW_CONSUMER, "slow consumer", self.settings.slow_close_seconds
        )

    def revoke(self) -> None:
        """Its user or token was revoked (``POST /admin/disconnect``): close with 4003."""
        if self._closing:
            return
        log.info("revoked_close", peer=self.peer, db=self.db, user=self.user)
        self._close_later(CloseCode.REVOKED, "revoked", self.settings.slow_close_seconds * 5)

    def mark_closing(self, reason: str) -> None:
        """The server is closing this connection itself (drain): stop handing it events."""
        self._closing = True
        self.close_reason = reason

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
                await self.conn.close(CloseCode.INTERNAL_ERROR, "internal error")
        finally:
            await self._cleanup()

    async def _read_loop(self) -> None:
        recv = self.conn.recv  # not ``async for``: its async generator is ~0.5 KB a connection
        while True:
            message = await recv()
            if self._closing:
                return
            if not self._bucket.take():
                log.info("client_flood", peer=self.peer, db=self.db, user=self.user)
                metrics.CLOSES.labels("flood").inc()
                self.mark_closing("flood")
                await self.conn.close(CloseCode.FLOOD, "flood")
                return
            if isinstance(message, bytes):
                await self.send_error("binary_frame", "frames must be JSON text, not binary")
                continue
            await self.handle(message)

    async def handle(self, raw: str | bytes) -> None:
        """Process one client message; client mistakes become ERROR frames."""
        collection: str | None = None
        try:
            msg = decode_client_message(raw)
            collection = msg.collection
            if isinstance(msg, Subscribe):
                outcome = await self.subscriptions.subscribe(
                    self,
                    self.claims.payload,
                    self.db,
                    msg.collection,
                    msg.group,
                    msg.lastId,
                    self.claims.expires_at,
                )
                await self.send_frame(
                    subscribed_frame(
                        msg.collection,
                        outcome.last_id,
                        recovered=outcome.recovered,
                        group=msg.group,
                    )
                )
            elif isinstance(msg, Unsubscribe):
                await self.subscriptions.unsubscribe(self, msg.collection, msg.group)
            elif isinstance(msg, Ack) and msg.group is not None:
                # a plain ACK (no group) is accepted and ignored: clients send it to move lastId
                await self.subscriptions.ack(self, msg.collection, msg.group, msg.id)
        except ConnectionClosed:
            raise
        except ServiceError as exc:
            extra = (
                {"collection": collection} if isinstance(exc, ClientError) and collection else {}
            )
            await self.send_error(exc.code, exc.message, **extra)
            if isinstance(exc, StoreUnavailable):
                # the SDK ignores ERROR frames and would never re-subscribe: close, so it
                # reconnects and re-subscribes with its lastId (1013 = try again later)
                self.mark_closing("redis unavailable")
                await self.conn.close(CloseCode.TRY_AGAIN_LATER, "event store unavailable")
        except Exception:
            log.exception("message_failed", peer=self.peer, db=self.db)
            await self.send_error("internal_error", "the server failed to handle the message")

    # ------------------------------------------------------------------ sending and closing

    async def send_error(self, code: str, message: str, **extra: Any) -> None:
        metrics.CLIENT_ERRORS.labels(code).inc()
        log.debug("client_error", peer=self.peer, db=self.db, code=code)
        await self.send_frame(error_frame(code, message, **extra))

    def _arm_expiry(self) -> None:
        exp = self.claims.expires_at
        if exp is None:
            return
        delay = exp + self.settings.expiry_grace_seconds - time.time()
        loop = asyncio.get_running_loop()
        self._expiry = loop.call_later(max(0.0, delay), self._expired)

    def _expired(self) -> None:
        if self._closing:
            return
        log.info("token_expired_close", peer=self.peer, db=self.db, user=self.user)
        timeout = self.settings.slow_close_seconds * 5
        self._close_later(CloseCode.TOKEN_EXPIRED, "token expired", timeout)

    def _close_later(self, code: CloseCode, reason: str, timeout: float) -> None:
        self.mark_closing(reason)
        metrics.CLOSES.labels(reason.replace(" ", "_")).inc()
        task = asyncio.get_running_loop().create_task(self._close_bounded(code, reason, timeout))
        if self._tasks is None:
            self._tasks = set()
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _close_bounded(self, code: CloseCode, reason: str, timeout: float) -> None:
        """Close with ``code``; abort the TCP connection if the close cannot finish in time."""
        try:
            async with asyncio.timeout(timeout):
                await self.conn.close(code, reason)
        except TimeoutError:
            self.abort()
        except Exception:
            log.exception("close_failed", peer=self.peer, db=self.db)
            self.abort()

    async def _cleanup(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
        try:
            await self.subscriptions.remove(self)
        except Exception:
            log.exception("subscriptions_remove_failed", peer=self.peer, db=self.db)
        for task in list(self._tasks or ()):
            if not task.done():
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
