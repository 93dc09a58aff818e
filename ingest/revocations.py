"""``POST /admin/disconnect``: cut a user (or one token) off now, on every fanout node.

The revocation is stored in Redis (a sorted set scored by its end, so it expires by itself and
nodes that start later still know it) and announced on a sharded channel in the same atomic
script (``ingest/revoke.lua``). Every fanout node closes the matching sockets with 4003 and
refuses their upgrades until the end; each replies how many it closed, which this endpoint
waits for (at most ``REPLY_WAIT`` seconds, best effort) to answer ``{"success", "closed"}``.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

import falcon
import msgspec
import redis

from common.errors import HTTPRefusal
from common.layout import RevocationKeys
from common.logs import get_logger
from common.ratelimit import KeyedRateLimiter
from common.scripts import load_lua
from ingest.admin_auth import AdminAuth
from ingest.sender import sender_address
from ingest.settings import IngestSettings

log = get_logger("ingest.admin")

REVOKE = load_lua("ingest", "revoke")
REPLY_WAIT = 1.0  # seconds to collect the nodes' "closed" counts
MAX_ID = 256
MAX_BODY = 4096
MAX_UNTIL_AHEAD = 366 * 24 * 3600


class DisconnectBody(msgspec.Struct, forbid_unknown_fields=True):
    user: str | None = None
    token_id: str | None = None
    until: float | None = None


_decode = msgspec.json.Decoder(DisconnectBody).decode


def parse_disconnect(body: bytes, now: float, max_age: float) -> tuple[str, str, int]:
    """(kind ``u``/``t``, id, until) of a disconnect request, or HTTPRefusal 400/422."""
    try:
        req = _decode(body)
    except msgspec.ValidationError as exc:
        raise HTTPRefusal(422, "invalid_payload", f"body has the wrong shape: {exc}") from None
    except msgspec.DecodeError:
        raise HTTPRefusal(400, "invalid_json", "body is not valid JSON") from None
    if (req.user is None) == (req.token_id is None):
        raise HTTPRefusal(422, "invalid_payload", 'send exactly one of "user" and "token_id"')
    kind, ident = ("u", req.user) if req.user is not None else ("t", req.token_id)
    assert ident is not None
    if not 0 < len(ident) <= MAX_ID:
        raise HTTPRefusal(422, "invalid_payload", f"the id must be 1-{MAX_ID} characters")
    until = now + max_age if req.until is None else req.until
    if not now < until <= now + MAX_UNTIL_AHEAD:
        raise HTTPRefusal(
            422, "invalid_payload", "until must be a unix time in the future, within a year"
        )
    return kind, ident, int(until)


class DisconnectResource:
    def __init__(self, settings: IngestSettings, client: Any, auth: AdminAuth) -> None:
        self.settings = settings
        self.client = client
        self.auth = auth
        self.keys = RevocationKeys(settings.common.redis.key_prefix)
        self.script = client.register_script(REVOKE.text)
        self.limiter = KeyedRateLimiter(settings.rate_limit, settings.rate_burst)

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        sender = sender_address(
            req.remote_addr, req.get_header("X-Forwarded-For"), self.settings.trusted_proxies
        )
        if not self.limiter.allow(sender):
            raise HTTPRefusal(
                429,
                "rate_limited",
                "too many requests from this sender: retry later",
                {"Retry-After": str(self.limiter.retry_after())},
            )
        self.auth.check(req)
        length = req.content_length or 0
        if length > MAX_BODY:
            raise HTTPRefusal(413, "payload_too_large", f"body over {MAX_BODY} bytes")
        body = req.bounded_stream.read(MAX_BODY + 1)
        kind, ident, until = parse_disconnect(body, time.time(), self.settings.common.jwt.max_age)
        request = secrets.token_hex(8)
        try:
            keys = [self.keys.of(kind), self.keys.channel]
            reached = int(self.script(keys=keys, args=[ident, until, kind, request]))
            closed = self._closed(request, reached)
        except (redis.RedisError, OSError) as exc:
            log.warning("revocation_failed", error=type(exc).__name__)
            raise HTTPRefusal(
                503,
                "redis_unavailable",
                "the revocation could not be stored; retry",
                {"Retry-After": "1"},
            ) from None
        log.info(
            "revoked",
            kind="user" if kind == "u" else "token",
            id=ident,
            until=until,
            nodes=reached,
            closed=closed,
        )
        resp.content_type = falcon.MEDIA_JSON
        resp.data = msgspec.json.encode({"success": True, "closed": closed})

    def _closed(self, request: str, nodes: int) -> int:
        """Sum the "closed" counts the nodes reply, waiting at most REPLY_WAIT seconds."""
        key = self.keys.replies(request)
        deadline = time.monotonic() + REPLY_WAIT
        closed = 0
        for _ in range(nodes):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            item = self.client.blpop([key], timeout=max(0.01, left))
            if item is None:
                break
            closed += int(item[1])
        self.client.delete(key)
        return closed
