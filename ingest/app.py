"""The ingest HTTP app: where VSKI webhooks enter.

``POST /webhook``: rate limit -> source network -> bearer JWT -> sender rule -> size -> content
type -> JSON + shape -> hidden fields removed -> append in Redis -> 200 with the event id. The
source network and the sender rule are the policy's ``[webhooks]`` (VSKI signs user tokens and
webhooks with one secret, so a valid token alone does not make a webhook sender).

Every refusal is JSON ``{"error": code, "message": sentence}`` with the status of the wire
contract (docs/protocol.md); a Redis failure is 503 with ``Retry-After`` so VSKI retries, and
since the append is one atomic script nothing is ever half-stored.

The success path is kept lean (gunicorn's own cost per request dominates): no log
line, no dict building, the answer is concatenated bytes, metric children are bound once.
"""

from __future__ import annotations

import time
from typing import Any

import falcon
import msgspec
import redis

from common.auth import AuthError, TokenVerifier, bearer_token
from common.errors import HTTPRefusal, code_for, error_json
from common.logs import get_logger
from common.messages import MessageError, decode_webhook
from common.policy import Policy
from common.policy_source import policy_label
from common.ratelimit import KeyedRateLimiter
from ingest import metrics
from ingest.admin_auth import AdminAuth
from ingest.ops_api import add_ops_routes
from ingest.revocations import DisconnectResource
from ingest.sender import sender_address
from ingest.settings import IngestSettings
from ingest.store import CircuitOpen, EventStore, ReplicationTimeout

log = get_logger("ingest")
_json = msgspec.json.Encoder()
_JSON = falcon.MEDIA_JSON
_AUTH_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="vski-realtime"'}
_RETRY = {"Retry-After": "1"}


def _answer(resp: falcon.Response, status: int, body: dict[str, Any]) -> None:
    resp.status = status
    resp.content_type = _JSON
    resp.data = _json.encode(body)


def _refuse(resp: falcon.Response, status: int, code: str, message: str) -> None:
    resp.status = status
    resp.content_type = _JSON
    resp.data = error_json(code, message)


class WebhookResource:
    def __init__(
        self,
        settings: IngestSettings,
        store: EventStore,
        verifier: TokenVerifier | None,
        limiter: KeyedRateLimiter,
        policy: Policy,
    ) -> None:
        self.settings = settings
        self.max_body = settings.max_body_bytes
        self.store = store
        self.verifier = verifier
        self.limiter = limiter if limiter.enabled else None
        self.policy = policy
        webhooks = policy.webhooks
        self.check_source = webhooks is not None and bool(webhooks.networks)
        self.check_sender = not policy.sender_is_open

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        started = time.perf_counter()
        try:
            event_id, duplicate = self._handle(req)
        except HTTPRefusal as exc:
            resp.set_headers(exc.headers)
            _refuse(resp, exc.status, exc.code, exc.message)
            metrics.outcome(exc.code).inc()
        else:
            resp.content_type = _JSON
            resp.data = b'{"success":true,"id":"' + event_id.encode() + b'"}'
            (metrics.DUPLICATE if duplicate else metrics.STORED).inc()
        metrics.LATENCY.observe(time.perf_counter() - started)

    def _handle(self, req: falcon.Request) -> tuple[str, bool]:
        sender = sender_address(
            req.remote_addr, req.get_header("X-Forwarded-For"), self.settings.trusted_proxies
        )
        if self.limiter is not None and not self.limiter.allow(sender):
            raise HTTPRefusal(
                429,
                "rate_limited",
                "too many webhooks from this sender: retry later",
                {"Retry-After": str(self.limiter.retry_after())},
            )
        if self.check_source and not self.policy.source_allowed(sender):
            log.info("forbidden_source", source=sender)
            raise HTTPRefusal(
                403,
                "forbidden_source",
                "webhooks are not accepted from this address ([webhooks] networks)",
            )
        payload: dict[str, Any] = {}
        if self.verifier is not None:
            try:
                payload = self.verifier.verify(
                    bearer_token(req.get_header("Authorization"))
                ).payload
            except AuthError as exc:
                raise HTTPRefusal(401, exc.code, exc.message, _AUTH_CHALLENGE) from None
        if self.check_sender and not self.policy.sender_allowed(payload):
            log.info("forbidden_sender", source=sender, claims=claims_summary(payload))
            raise HTTPRefusal(
                403,
                "forbidden_sender",
                "this token may not post webhooks: it does not pass the policy's [webhooks] "
                "sender rule (a user's token is not a trigger's)",
            )
        body = self._read_body(req)
        try:
            hook = decode_webhook(body)
            record = self.policy.strip_record(
                hook.database, hook.collection, hook.action, hook.record, hook.record_id
            )
        except MessageError as exc:
            raise HTTPRefusal(exc.status, exc.code, exc.message) from None
        except ValueError as exc:
            raise HTTPRefusal(422, "invalid_payload", f"record cannot be read: {exc}") from None
        if record is not hook.record:  # hidden fields removed: no stream ever holds them
            hook = msgspec.structs.replace(hook, record=record)
        try:
            result = self.store.append(hook)
        except CircuitOpen as exc:  # known unreachable: answered at once, logged once on trip
            raise HTTPRefusal(
                503,
                "redis_unavailable",
                f"the event store (Redis) is unreachable ({exc}); nothing was stored: retry "
                "after Retry-After",
                {"Retry-After": str(exc.retry_after)},
            ) from None
        except ReplicationTimeout as exc:
            metrics.REPLICATION_TIMEOUTS.inc()
            log.warning("replication_timeout", detail=str(exc))
            raise HTTPRefusal(
                503,
                "replication_timeout",
                f"{exc}; the sender should retry (a retry is deduplicated)",
                _RETRY,
            ) from None
        except (redis.RedisError, OSError) as exc:
            metrics.REDIS_ERRORS.inc()
            log.warning("redis_unavailable", error=type(exc).__name__, detail=str(exc)[:200])
            raise HTTPRefusal(
                503,
                "redis_unavailable",
                "the event store (Redis) is unavailable and the event was not confirmed; retry "
                "(a retry of an event that did get stored is recognised and not stored twice)",
                _RETRY,
            ) from None
        return result.id, result.duplicate

    def _read_body(self, req: falcon.Request) -> bytes:
        """Check size and type, then read at most the limit (+1 byte to detect more)."""
        limit = self.max_body
        length = req.content_length  # a malformed header raises HTTPInvalidHeader -> 400
        if length is not None and length > limit:
            raise HTTPRefusal(
                413,
                "payload_too_large",
                f"webhook body is {length} bytes; the limit is {limit} (INGEST_MAX_BODY_BYTES)",
            )
        ctype = req.content_type
        if ctype is None or (
            ctype != "application/json"
            and ctype.partition(";")[0].strip().lower() != "application/json"
        ):
            shown = (ctype or "").partition(";")[0].strip()[:60] or "none"
            raise HTTPRefusal(
                415,
                "unsupported_media_type",
                f"Content-Type must be application/json, got {shown!r}",
            )
        try:
            if length is not None:
                return req.bounded_stream.read(length)
            # no Content-Length: a chunked body. gunicorn's wsgi.input ends at the last chunk
            # (wsgi.input_terminated), Falcon's bounded_stream would read nothing.
            body = req.stream.read(limit + 1)
        except OSError:  # the sender stalled past INGEST_TIMEOUT (gthread socket timeout)
            raise HTTPRefusal(
                408,
                "request_timeout",
                "the webhook body did not arrive in time (INGEST_TIMEOUT); nothing was stored",
            ) from None
        if len(body) > limit:
            raise HTTPRefusal(
                413,
                "payload_too_large",
                f"webhook body exceeds {limit} bytes (INGEST_MAX_BODY_BYTES)",
            )
        return body


class HealthResource:
    """Process alive: answers without touching Redis (liveness probe)."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        _answer(resp, 200, {"status": "ok"})


def claims_summary(payload: dict[str, Any]) -> dict[str, str]:
    """A refused sender's claims for the log (so an operator can write the sender rule): names
    and short values, never the token itself."""
    return {str(k)[:40]: repr(v)[:60] for k, v in list(payload.items())[:20]}


class ReadyResource:
    """Redis reachable (readiness probe): 503 takes the instance out of the load balancer."""

    def __init__(self, store: EventStore, policy: Policy) -> None:
        self.store = store
        self.about = {
            "policy": policy_label(policy),
            "webhooks": "restricted" if policy.has_webhooks else "any-token",
        }

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        breaker = self.store.open_circuit()
        if breaker is not None:  # known unreachable: say so at once, the probe is on it
            resp.set_header("Retry-After", str(breaker.retry_after))
            body = {"status": "unavailable", "redis": "circuit_open", **self.about}
            _answer(resp, 503, body)
            return
        try:
            self.store.ping()
        except (redis.RedisError, OSError) as exc:
            resp.set_header("Retry-After", "1")
            body = {"status": "unavailable", "redis": type(exc).__name__, **self.about}
            _answer(resp, 503, body)
            return
        _answer(resp, 200, {"status": "ready", "redis": "ok", **self.about})


class MetricsResource:
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        data, ctype = metrics.render()
        resp.data = data
        resp.content_type = ctype


def _not_found(req: falcon.Request, resp: falcon.Response, **_: Any) -> None:
    _refuse(resp, 404, "not_found", f"no such endpoint: {req.path[:100]}; use POST /webhook")


def _error_handler(req: falcon.Request, resp: falcon.Response, ex: Exception, params: Any) -> None:
    """Our refusals, Falcon's own (405, bad headers) and anything unexpected, in our JSON
    shape; an unexpected error is logged with its traceback but never shown to the sender."""
    if isinstance(ex, HTTPRefusal):
        resp.set_headers(ex.headers)
        _refuse(resp, ex.status, ex.code, ex.message)
        return
    if isinstance(ex, falcon.HTTPError):
        phrase = str(ex.status).partition(" ")[2] or str(ex.title)
        message = ex.description or ex.title or phrase
        _refuse(resp, int(ex.status_code), code_for(phrase), str(message))
        if ex.headers:
            resp.set_headers(ex.headers)
        return
    log.exception("unhandled_error", path=req.path[:100])
    _refuse(resp, 500, "internal_error", "internal error; it was logged")


def create_app(
    settings: IngestSettings,
    store: EventStore,
    verifier: TokenVerifier | None,
    policy: Policy | None = None,
) -> falcon.App[falcon.Request, falcon.Response]:
    policy = policy or Policy.open()
    app = falcon.App()
    app.req_options.strip_url_path_trailing_slash = True
    limiter = KeyedRateLimiter(settings.rate_limit, settings.rate_burst)
    app.add_route("/webhook", WebhookResource(settings, store, verifier, limiter, policy))
    app.add_route("/health", HealthResource())
    app.add_route("/ready", ReadyResource(store, policy))
    app.add_route("/metrics", MetricsResource())
    admin = AdminAuth(settings.admin_key)
    if admin.enabled:  # without REALTIME_ADMIN_KEY, /admin/* does not exist (404)
        app.add_route("/admin/disconnect", DisconnectResource(settings, store.client, admin))
        add_ops_routes(app, store.client, settings.common.redis.key_prefix, admin)  # /admin/*
    app.add_sink(_not_found, "/")
    app.add_error_handler(Exception, _error_handler)
    app.add_error_handler(falcon.HTTPError, _error_handler)
    return app
