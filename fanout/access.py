"""What a node decides about a subscription, before it starts and while it lasts.

The access policy answers from the token and the record alone (``common/policy``). A
collection with ``proxy = true`` also needs the subscribe proxy (``fanout/subscribe_proxy.py``):
its answer may refuse, and its ``vars`` become ``@sub.*`` in the subscriber's filter. A grant
made with a proxy answer expires with it (never after the token's ``exp``) and is decided again
then, so a revoked membership ends the subscription.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from common.errors import ClientError
from common.policy import Decision, Policy, View
from fanout import metrics
from fanout.recipients import OnDelete
from fanout.subscribe_proxy import ProxyKey, SubscribeProxy


@dataclass(frozen=True, slots=True)
class Grant:
    """An accepted subscription's terms."""

    view: View
    on_delete: OnDelete
    proxy_key: ProxyKey | None = None  # asked the proxy under this key
    expires_at: float | None = None  # time.monotonic(): decide again then


def forbidden(collection: str, message: str) -> ClientError:
    return ClientError("forbidden", f"{message}; SUBSCRIBE to {collection!r} refused")


def user_id(policy: Policy, claims: Mapping[str, Any]) -> str:
    """The user a token stands for: ``@request.auth.id``, else its ``sub``."""
    value = policy.claims.resolve(claims, "id")
    if value is None and isinstance(claims, Mapping):
        value = claims.get("sub")
    return "" if value is None else str(value)


def identities(policy: Policy, claims: Mapping[str, Any]) -> list[str]:
    """Every id a revocation of this token's user may name: ``@request.auth.id``, ``id``,
    ``sub``."""
    out = {user_id(policy, claims)}
    if isinstance(claims, Mapping):
        out.update(str(claims[k]) for k in ("id", "sub") if claims.get(k) is not None)
    out.discard("")
    return sorted(out)


class Access:
    def __init__(self, policy: Policy, proxy: SubscribeProxy | None = None) -> None:
        self.policy = policy
        self.proxy = proxy

    async def grant(
        self,
        claims: Mapping[str, Any],
        database: str,
        collection: str,
        group: str | None,
        *,
        token_exp: float | None = None,
        fresh: bool = False,
    ) -> Grant:
        """The terms of a subscription, or ClientError ``forbidden`` / ``auth_unavailable``."""
        decision = self._decide(claims, database, collection, group, None)
        if not decision.proxy or decision.superuser:
            return Grant(decision.view or View.ALL, decision.on_delete)
        if self.proxy is None:
            raise ClientError(
                "auth_unavailable",
                f"{collection!r} needs the subscribe proxy, which is not configured on this "
                "node (REALTIME_SUBSCRIBE_PROXY_URL)",
            )
        key: ProxyKey = (user_id(self.policy, claims), database, collection, group)
        answer = await self.proxy.ask(key, claims, fresh=fresh)
        if not answer.allow:
            metrics.FORBIDDEN.inc()
            raise forbidden(collection, "the subscribe proxy refused this user")
        decision = self._decide(claims, database, collection, group, answer.vars)
        expires = answer.expires_at
        if token_exp is not None:  # an answer never outlives the token it was asked for
            expires = min(expires, time.monotonic() + max(0.0, token_exp - time.time()))
        return Grant(decision.view or View.ALL, decision.on_delete, key, expires)

    def _decide(
        self,
        claims: Mapping[str, Any],
        database: str,
        collection: str,
        group: str | None,
        sub_vars: Mapping[str, Any] | None,
    ) -> Decision:
        decision = self.policy.subscribe_decision(
            claims, database, collection, group=group, sub_vars=sub_vars
        )
        if not decision.allowed:
            metrics.FORBIDDEN.inc()
            raise forbidden(collection, decision.message)
        return decision
