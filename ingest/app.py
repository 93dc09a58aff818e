"""The ingest HTTP app: where VSKI webhooks enter.

``POST /webhook``: bearer JWT -> size -> content type -> JSON + shape -> append in Redis -> 200
with the event id. Every refusal is JSON ``{"error": code, "message": sentence}`` with the status
PROTOCOL.md names; a Redis failure is 503 with ``Retry-After`` so VSKI retries, and since the
append is one atomic script nothing is ever half-stored.
"""

from __future__ import annotations

import time
from typing import Any

import falcon
import msgspec
import redis

from common.auth import AuthError, TokenVerifier, bearer_token
from common.logs import get_logger
from common.messages import MessageError, decode_webhook
from ingest import metrics
from ingest.ratelimit import RateLimiter
from ingest.settings import IngestSettings
from ingest.store import EventStore, ReplicationTimeout

log = get_logger("ingest")
_json = msgspec.json.Encoder()


class HTTPJsonError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def _answer(resp: falcon.Response, status: int, body: dict[str, Any]) -> None:
    resp.status = status
    resp.content_type = falcon.MEDIA_JSON
    resp.data = _json.encode(body)


class WebhookResource:
    def __init__(
        self,
        settings: IngestSettings,
        store: EventStore,
        verifier: TokenVerifier | None,
        limiter: RateLimiter,
    ) -> None:
        self.settings = settings
        self.store = store
        self.verifier = verifier
        self.limiter = limiter

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        started = time.perf_counter()
        outcome = "error"
        try:
            outcome = self._handle(req, resp)
        except HTTPJsonError as exc:
            outcome = exc.code
            for name, value in exc.headers.items():
                resp.set_header(name, value)
            _answer(resp, exc.status, {"error": exc.code, "message": exc.message})
        finally:
            metrics.WEBHOOKS.labels(outcome).inc()
            metrics.LATENCY.observe(time.perf_counter() - started)

    def _handle(self, req: falcon.Request, resp: falcon.Response) -> str:
        s = self.settings
        if not self.limiter.allow(req.remote_addr or "-"):
            raise HTTPJsonError(
                429, "rate_limited", "too many webhooks from this sender: retry later",
                {"Retry-After": str(self.limiter.retry_after())},
            )
        if self.verifier is not None:
            try:
                self.verifier.verify(bearer_token(req.get_header("Authorization")))
            except AuthError as exc:
                raise HTTPJsonError(
                    401, exc.code, exc.message, {"WWW-Authenticate": 'Bearer realm="vski-realtime"'}
                ) from None
        length = req.content_length
        if length is not None and length > s.max_body_bytes:
            raise HTTPJsonError(
                413, "payload_too_large",
                f"webhook body is {length} bytes; the limit is {s.max_body_bytes} "
                "(INGEST_MAX_BODY_BYTES)",
            )
        ctype = (req.content_type or "").split(";")[0].strip().lower()
        if ctype != "application/json":
            raise HTTPJsonError(
                415, "unsupported_media_type",
                f"Content-Type must be application/json, got {ctype or 'none'!r}",
            )
        body = req.bounded_stream.read(s.max_body_bytes + 1)
        if len(body) > s.max_body_bytes:
            raise HTTPJsonError(
                413, "payload_too_large",
                f"webhook body exceeds {s.max_body_bytes} bytes (INGEST_MAX_BODY_BYTES)",
            )
        try:
            hook = decode_webhook(body)
        except MessageError as exc:
            raise HTTPJsonError(exc.status, exc.code, exc.message) from None
        try:
            result = self.store.append(hook)
        except ReplicationTimeout as exc:
            log.warning("replication_timeout", detail=str(exc))
            raise HTTPJsonError(
                503, "replication_timeout", str(exc) + "; retry", {"Retry-After": "1"}
            ) from None
        except (redis.RedisError, OSError) as exc:
            metrics.REDIS_ERRORS.inc()
            log.warning("redis_unavailable", error=type(exc).__name__, detail=str(exc)[:200])
            raise HTTPJsonError(
                503, "redis_unavailable",
                "the event store (Redis) is unavailable; nothing was stored, retry later",
                {"Retry-After": "1"},
            ) from None
        _answer(resp, 200, {"success": True, "id": result.id})
        return "duplicate" if result.duplicate else "stored"


class HealthResource:
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        _answer(resp, 200, {"status": "ok"})


class ReadyResource:
    def __init__(self, store: EventStore) -> None:
        self.store = store

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        try:
            self.store.ping()
        except (redis.RedisError, OSError) as exc:
            resp.set_header("Retry-After", "1")
            _answer(resp, 503, {"status": "unavailable", "redis": type(exc).__name__})
            return
        _answer(resp, 200, {"status": "ready", "redis": "ok"})


class MetricsResource:
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        data, ctype = metrics.render()
        resp.data = data
        resp.content_type = ctype


def _not_found(req: falcon.Request, resp: falcon.Response) -> None:
    _answer(resp, 404, {"error": "not_found", "message": f"no such endpoint: {req.path}"})


def _error_handler(req: falcon.Request, resp: falcon.Response, ex: Exception, params: Any) -> None:
    if isinstance(ex, falcon.HTTPError):
        code = (ex.title or "error").lower().replace(" ", "_")
        _answer(resp, int(ex.status_code), {"error": code, "message": ex.description or ex.title})
        if ex.headers:
            for name, value in ex.headers.items():
                resp.set_header(name, value)
        return
    log.exception("unhandled_error", path=req.path)
    _answer(resp, 500, {"error": "internal_error", "message": "internal error; it was logged"})


def create_app(
    settings: IngestSettings, store: EventStore, verifier: TokenVerifier | None
) -> falcon.App:
    app = falcon.App()
    app.req_options.strip_url_path_trailing_slash = True
    limiter = RateLimiter(settings.rate_limit, settings.rate_burst)
    app.add_route("/webhook", WebhookResource(settings, store, verifier, limiter))
    app.add_route("/health", HealthResource())
    app.add_route("/ready", ReadyResource(store))
    app.add_route("/metrics", MetricsResource())
    app.add_sink(_not_found, "/")
    app.add_error_handler(Exception, _error_handler)
    return app
