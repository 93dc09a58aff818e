"""The subscribe proxy: ask the app's own backend before a SUBSCRIBE that needs its database.

For a collection with ``proxy = true`` the node POSTs ``{"database", "collection", "group",
"user", "claims"}`` to ``REALTIME_SUBSCRIBE_PROXY_URL``, signed with a short JWT (``sub
"vski-realtime"``, HS256 with ``JWT_SECRET``), and expects ``200 {"allow": bool, "vars": {...},
"ttl": seconds}``. Answers are cached per (user, database, collection, group) for ``ttl``
(default 30 s) and never beyond the asking token's ``exp``.

A slow or dead proxy must never stall the node: every ask is bounded by
``REALTIME_SUBSCRIBE_PROXY_TIMEOUT_MS`` (queueing included), concurrent identical asks share
one request, requests in flight are capped per node, and the answer body is read up to a cap.
Any failure (timeout, refused connection, non-200, wrong content type, garbage, oversized) is
``auth_unavailable`` for that SUBSCRIBE only.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt
import msgspec

from common.errors import ClientError
from common.logs import get_logger
from fanout import metrics

log = get_logger("fanout.proxy")

ProxyKey = tuple[str, str, str, str | None]  # (user, database, collection, group)
DEFAULT_TTL = 30.0
MAX_TTL = 24 * 3600.0


class ProxyUnavailable(ClientError):
    def __init__(self, why: str) -> None:
        super().__init__(
            "auth_unavailable", f"the subscribe proxy could not decide ({why}); retry later"
        )
        self.why = why


@dataclass(frozen=True, slots=True)
class ProxyAnswer:
    allow: bool
    vars: Mapping[str, Any]
    expires_at: float  # time.monotonic() deadline of this answer


class _Reply(msgspec.Struct):
    allow: bool
    vars: dict[str, Any] = msgspec.field(default_factory=dict)
    ttl: float | None = None


_decode_reply = msgspec.json.Decoder(_Reply).decode
_encode = msgspec.json.Encoder().encode


def parse_answer(body: bytes, content_type: str | None, now: float) -> ProxyAnswer:
    """The proxy's 200 body, validated (raises ProxyUnavailable saying what is wrong)."""
    if (content_type or "").partition(";")[0].strip().lower() != "application/json":
        raise ProxyUnavailable(f"answer is {content_type or 'untyped'}, not application/json")
    try:
        reply = _decode_reply(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ProxyUnavailable(f"answer is not {{allow, vars, ttl}}: {str(exc)[:80]}") from None
    ttl = DEFAULT_TTL if reply.ttl is None else reply.ttl
    if not 0 <= ttl <= MAX_TTL:
        raise ProxyUnavailable(f"ttl {ttl!r} is outside 0..{MAX_TTL:.0f} seconds")
    return ProxyAnswer(reply.allow, reply.vars, now + ttl)


@dataclass
class ProxySettings:
    url: str
    secret: str
    timeout: float = 1.0  # seconds, queueing included
    max_inflight: int = 64
    max_body: int = 64 * 1024
    cache_size: int = 100_000


@dataclass
class _Cache:
    size: int
    entries: OrderedDict[ProxyKey, ProxyAnswer] = field(default_factory=OrderedDict)

    def get(self, key: ProxyKey, now: float) -> ProxyAnswer | None:
        answer = self.entries.get(key)
        if answer is None:
            return None
        if answer.expires_at <= now:
            del self.entries[key]
            return None
        self.entries.move_to_end(key)
        return answer

    def put(self, key: ProxyKey, answer: ProxyAnswer) -> None:
        self.entries[key] = answer
        self.entries.move_to_end(key)
        while len(self.entries) > self.size:
            self.entries.popitem(last=False)


class SubscribeProxy:
    def __init__(self, settings: ProxySettings) -> None:
        self.settings = settings
        self._client = httpx.AsyncClient(
            timeout=settings.timeout,
            limits=httpx.Limits(
                max_connections=settings.max_inflight,
                max_keepalive_connections=min(settings.max_inflight, 16),
            ),
            follow_redirects=False,
        )
        self._slots = asyncio.Semaphore(settings.max_inflight)
        self._cache = _Cache(settings.cache_size)
        self._asking: dict[ProxyKey, asyncio.Future[ProxyAnswer]] = {}
        self._token = ("", 0.0)

    async def close(self) -> None:
        await self._client.aclose()

    def cached(self, key: ProxyKey) -> ProxyAnswer | None:
        return self._cache.get(key, time.monotonic())

    async def ask(
        self, key: ProxyKey, claims: Mapping[str, Any], *, fresh: bool = False
    ) -> ProxyAnswer:
        """The proxy's answer for ``key`` (cached unless ``fresh``); identical asks in flight
        share one request. Raises ProxyUnavailable."""
        if not fresh and (answer := self.cached(key)) is not None:
            return answer
        pending = self._asking.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._request(key, claims))
            self._asking[key] = pending
            pending.add_done_callback(self._asked(key))
        return await asyncio.shield(pending)

    def _asked(self, key: ProxyKey) -> Callable[[asyncio.Future[ProxyAnswer]], None]:
        def done(_future: asyncio.Future[ProxyAnswer]) -> None:
            self._asking.pop(key, None)

        return done

    def _bearer(self) -> str:
        token, valid_until = self._token
        now = time.time()
        if now > valid_until:
            token = jwt.encode(
                {"sub": "vski-realtime", "iat": int(now), "exp": int(now) + 60},
                self.settings.secret,
                algorithm="HS256",
            )
            self._token = (token, now + 30)  # re-signed well before its exp
        return f"Bearer {token}"

    async def _request(self, key: ProxyKey, claims: Mapping[str, Any]) -> ProxyAnswer:
        user, database, collection, group = key
        body = _encode(
            {
                "database": database,
                "collection": collection,
                "group": group,
                "user": user,
                "claims": claims,
            }
        )
        started = time.monotonic()
        outcome = "error"
        try:
            async with asyncio.timeout(self.settings.timeout):
                async with self._slots:
                    answer = await self._post(body)
            self._cache.put(key, answer)
            outcome = "allow" if answer.allow else "deny"
            return answer
        except TimeoutError:
            outcome = "timeout"
            raise ProxyUnavailable(
                f"no answer within {self.settings.timeout * 1000:.0f} ms"
            ) from None
        except httpx.HTTPError as exc:
            raise ProxyUnavailable(f"request failed: {type(exc).__name__}") from None
        finally:
            metrics.PROXY_REQUESTS.labels(outcome).inc()
            metrics.PROXY_SECONDS.observe(time.monotonic() - started)
            if outcome in ("error", "timeout"):
                log.warning("subscribe_proxy_failed", collection=collection, outcome=outcome)

    async def _post(self, body: bytes) -> ProxyAnswer:
        headers = {"Authorization": self._bearer(), "Content-Type": "application/json"}
        async with self._client.stream(
            "POST", self.settings.url, content=body, headers=headers
        ) as resp:
            if resp.status_code != 200:
                raise ProxyUnavailable(f"it answered HTTP {resp.status_code}")
            data = bytearray()
            async for chunk in resp.aiter_bytes():
                data += chunk
                if len(data) > self.settings.max_body:
                    raise ProxyUnavailable(f"answer is larger than {self.settings.max_body} bytes")
            return parse_answer(bytes(data), resp.headers.get("content-type"), time.monotonic())
