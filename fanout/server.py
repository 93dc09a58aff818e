"""The node's listening socket: HTTP checks before the upgrade, then one Session per WebSocket.

Everything that can be refused is refused before the WebSocket upgrade, in ``process_request``
(cheap, and the SDK sees a plain HTTP status): unknown paths (404), missing or invalid tokens
(401), bad ``db`` names (400), a full or draining node (503 with Retry-After), and plain HTTP
GETs on the WebSocket path (426). ``/health``, ``/ready`` and ``/metrics`` are answered on the
same port.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import parse_qsl, urlsplit

import msgspec
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from common.auth import AuthError, Claims, TokenVerifier, bearer_token
from common.errors import CloseCode, error_json
from common.layout import InvalidName, check_name
from common.logs import get_logger, redact
from common.policy_source import policy_label
from fanout import metrics
from fanout.access import identities
from fanout.hub import Hub
from fanout.keepalive import KeepaliveSweep, PongClock
from fanout.revocations import Revocations
from fanout.session import Session
from fanout.settings import FanoutSettings
from fanout.subscriptions import Subscriptions

log = get_logger("fanout.server")

REALTIME_PATH = "/api/realtime"
_json = msgspec.json.Encoder()


@dataclass(frozen=True, slots=True)
class Admission:
    """What process_request learned about an accepted request, handed to the handler."""

    db: str
    claims: Claims
    users: list[str]  # the ids a revocation of its user may name
    jti: str | None


class NodeConnection(PongClock):
    """A ServerConnection that carries its admission from the HTTP check to the handler (its
    pings come from the node's one sweep: ``fanout/keepalive.py``)."""

    admission: Admission | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # websockets keeps one deque of drain waiters per connection (~0.7 KB empty); the
        # node's sends wait on at most one at a time, and a list has the same operations
        self.drain_waiters = cast("deque[asyncio.Future[None]]", [])
        # and wraps its logger in an adapter that names the connection (~0.4 KB each); the node
        # logs connections itself (structlog), websockets' own records need no per-connection tag
        self.protocol.logger = self.logger = _WEBSOCKETS_LOG

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        # the same for the assembler's frame queue (it holds a frame or two at a time)
        self.recv_messages.frames.queue = cast("deque[Any]", _SmallQueue())

    def shed_handshake(self) -> None:
        """Drop the handshake's headers (~3 KB a connection). The request object itself lives
        on in websockets' parser, so its headers are emptied rather than the object dropped."""
        if self.request is not None:
            self.request.headers = _NO_HEADERS
        self.response = None


_NO_HEADERS = Headers()
_WEBSOCKETS_LOG = logging.getLogger("websockets.server")


class _SmallQueue(list[Any]):
    """The deque operations websockets' frame queue uses, on a list (56 bytes empty, not
    760): it holds at most ``max_queue`` frames, so popping from the front costs nothing."""

    __slots__ = ()

    def popleft(self) -> Any:
        return self.pop(0)

    def extendleft(self, items: Any) -> None:
        for item in items:
            self.insert(0, item)


def _response(status: int, data: bytes, **headers: str) -> Response:
    hdrs = Headers()
    hdrs["Content-Type"] = "application/json"
    hdrs["Content-Length"] = str(len(data))
    hdrs["Cache-Control"] = "no-store"
    for name, value in headers.items():
        hdrs[name.replace("_", "-")] = value
    return Response(status, http.HTTPStatus(status).phrase, hdrs, data)


def json_response(status: int, body: dict[str, Any], **headers: str) -> Response:
    return _response(status, _json.encode(body), **headers)


def error_response(status: int, code: str, message: str, **headers: str) -> Response:
    return _response(status, error_json(code, message), **headers)


class FanoutServer:
    def __init__(
        self,
        settings: FanoutSettings,
        hub: Hub,
        subscriptions: Subscriptions,
        *,
        verifier: TokenVerifier | None = None,
    ) -> None:
        self.settings = settings
        self.hub = hub
        self.subscriptions = subscriptions
        self.verifier = verifier or TokenVerifier(settings.common.jwt)
        self.sessions: set[Session] = set()
        self.revocations: Revocations | None = None
        self.draining = False
        self._server: Server | None = None
        self._keepalive: KeepaliveSweep | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        s = self.settings
        self._server = await serve(
            self._handler,
            s.host,
            s.port,
            process_request=self._process_request,
            create_connection=NodeConnection,
            compression=s.compression,
            max_size=s.max_frame_bytes,
            max_queue=16,
            ping_interval=None,  # one sweep for the node instead of a task per connection
            close_timeout=min(5.0, s.drain_seconds / 2),
            open_timeout=s.open_timeout,
            server_header="vski-fanout",
            backlog=4096,
            reuse_port=s.processes > 1,  # children of one supervisor share the port
        )
        if s.ping_interval is not None:
            self._keepalive = KeepaliveSweep(
                self._open_connections, s.ping_interval, s.ping_timeout, s.slow_close_seconds
            )
            self._keepalive.start()
        log.info("listening", bind=s.bind, compression=s.compression or "off")

    def _open_connections(self) -> list[NodeConnection]:
        return [s.conn for s in self.sessions if isinstance(s.conn, NodeConnection)]

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def drain(self, timeout: float | None = None) -> None:
        """Stop accepting, close every connection with 1012, return within ``timeout``."""
        if self._server is None:
            return
        timeout = self.settings.drain_seconds if timeout is None else timeout
        self.draining = True
        if self._keepalive is not None:
            self._keepalive.stop()
        count = len(self.sessions)
        log.info("draining", connections=count, timeout_s=timeout)
        for session in self.sessions:
            session.mark_closing("service restart")
        self._server.close(code=CloseCode.SERVICE_RESTART, reason="service restart")
        try:
            async with asyncio.timeout(max(0.1, timeout - 0.5)):
                await self._server.wait_closed()
        except TimeoutError:
            left = list(self._server.all_connections)
            log.warning("drain_timeout_abort", connections=len(left))
            for conn in left:
                with contextlib.suppress(Exception):
                    conn.transport.abort()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.4):
                    await self._server.wait_closed()
        metrics.CLOSES.labels("service_restart").inc(count)
        log.info("drained", connections=count)

    # ------------------------------------------------------------------ HTTP before the upgrade

    async def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        try:
            return self._check(conn, request)
        except Exception:
            log.exception("process_request_failed", path=redact(request.path))
            return error_response(500, "internal_error", "the server failed to handle the request")

    def _check(self, conn: ServerConnection, request: Request) -> Response | None:
        url = urlsplit(request.path)
        path = url.path.rstrip("/") or "/"
        if path == "/health":
            return json_response(200, {"status": "ok"})
        if path == "/ready":
            return self._ready()
        if path == "/metrics":
            return self._metrics()
        if path != REALTIME_PATH:
            return error_response(404, "not_found", f"no such path: use {REALTIME_PATH}")
        try:
            params = dict(parse_qsl(url.query, keep_blank_values=True, max_num_fields=20))
        except ValueError:
            return self._refuse(400, "bad_request", "too many query parameters")
        token = params.get("auth") or bearer_token(request.headers.get("Authorization"))
        try:
            claims = self.verifier.verify(token)
        except AuthError as exc:
            return self._refuse(401, exc.code, exc.message, WWW_Authenticate="Bearer")
        if claims.expires_at is not None and (
            claims.expires_at + self.settings.expiry_grace_seconds <= time.time()
        ):
            # accepted within the JWT leeway, but the connection would be closed at once
            return self._refuse(401, "token_expired", "token has expired: get a new one")
        users = identities(self.subscriptions.policy, claims.payload)
        jti = claims.payload.get("jti")
        jti = str(jti) if jti is not None else None
        if self.revocations is not None and self.revocations.revoked(users, jti):
            return self._refuse(401, "token_revoked", "this user or token has been revoked")
        db = params.get("db") or "postgres"
        try:
            check_name("database", db)
        except InvalidName as exc:
            return self._refuse(400, "invalid_name", str(exc))
        if self.draining:
            return self._refuse(
                503, "draining", "this node is restarting: connect to another", Retry_After="1"
            )
        if len(self.sessions) >= self.settings.max_connections:
            return self._refuse(
                503,
                "node_full",
                f"this node holds its maximum of {self.settings.max_connections} connections",
                Retry_After="5",
            )
        if "websocket" not in request.headers.get("Upgrade", "").lower():
            return self._refuse(
                426,
                "upgrade_required",
                f"{REALTIME_PATH} speaks WebSocket only: connect with a WebSocket client "
                "(the VSKI SDK), not plain HTTP",
                Upgrade="websocket",
            )
        if isinstance(conn, NodeConnection):
            conn.admission = Admission(db=db, claims=claims, users=users, jti=jti)
        return None

    def _refuse(self, status: int, code: str, message: str, **headers: str) -> Response:
        metrics.CONNECTIONS_TOTAL.labels(code).inc()
        log.info("connection_refused", status=status, code=code)
        return error_response(status, code, message, **headers)

    def _ready(self) -> Response:
        if self.draining:
            return json_response(503, {"status": "draining"})
        try:
            ok, detail = self.hub.readiness()
        except Exception as exc:
            ok, detail = False, f"readiness check failed: {type(exc).__name__}"
        policy = policy_label(self.subscriptions.policy)
        if ok:
            return json_response(200, {"status": "ready", "redis": detail, "policy": policy})
        return json_response(503, {"status": "not_ready", "redis": detail, "policy": policy})

    def _metrics(self) -> Response:
        metrics.TASKS.set(len(asyncio.all_tasks()))  # counted here: this runs on the loop
        data, content_type = metrics.render()  # every child's sum under the supervisor
        hdrs = Headers()
        hdrs["Content-Type"] = content_type
        hdrs["Content-Length"] = str(len(data))
        return Response(200, "OK", hdrs, data)

    def close_revoked(self, kind: str, ident: str) -> int:
        """Close the sockets of a revoked user (``kind`` ``u``) or token (``t``)."""
        closed = 0
        for session in list(self.sessions):
            matches = ident in session.users if kind == "u" else ident == session.jti
            if matches and not session.closing:
                session.revoke()
                closed += 1
        metrics.REVOKED_CLOSES.inc(closed)
        return closed

    # ------------------------------------------------------------------ one WebSocket

    async def _handler(self, conn: ServerConnection) -> None:
        admission = conn.admission if isinstance(conn, NodeConnection) else None
        if admission is None:  # cannot happen: process_request admits every upgrade
            await conn.close(CloseCode.INTERNAL_ERROR, "not admitted")
            return
        assert isinstance(conn, NodeConnection)
        conn.admission = None
        conn.shed_handshake()
        db, claims, users, jti = admission.db, admission.claims, admission.users, admission.jti
        del admission  # this frame lives as long as the connection
        session = Session(
            conn,
            db,
            claims,
            self.subscriptions,
            self.settings,
            users=users,
            jti=jti,
        )
        self.sessions.add(session)
        metrics.CONNECTIONS.inc()
        metrics.CONNECTIONS_TOTAL.labels("accepted").inc()
        try:
            await session.run()
        finally:
            self.sessions.discard(session)
            metrics.CONNECTIONS.dec()
