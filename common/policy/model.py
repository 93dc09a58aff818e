"""The compiled policy and the decisions the tiers ask of it.

Everything here is pure: callers pass the verified token payload and get a typed answer;
they do the logging, the ERROR frames and the HTTP status codes.

``[webhooks]`` without ``sender``: every valid token may post (only ``networks`` restricts);
:attr:`Policy.sender_is_open` says so, so ingest can log it as it logs a missing
``[webhooks]`` section. A missing ``[superusers]`` rule means there are no superusers.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from common.policy.claims import ClaimMap
from common.policy.compile import Rule
from common.policy.records import RecordShaper, strip_record
from common.policy.view import Filter, View

OnDelete = Literal["filter", "all"]
Unlisted = Literal["deny", "authenticated"]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer to a SUBSCRIBE (plain or with a consumer group).

    ``message`` is for the ERROR frame when refused. ``proxy``: the subscribe proxy must also
    agree before the SUBSCRIBE is accepted (then build the final View with the proxy's
    ``vars`` via :meth:`Policy.subscribe_decision` ``sub_vars=``). ``view`` is set when allowed.
    """

    allowed: bool
    message: str = ""
    proxy: bool = False
    on_delete: OnDelete = "filter"
    view: View | None = None
    superuser: bool = False


@dataclass(frozen=True, slots=True, eq=False)
class CollectionRules:
    """One ``[[collection]]`` entry, compiled. A rule that is None means superusers only."""

    database: str  # a name or "*"
    name: str
    subscribe: Rule | None
    groups: Rule | None  # already defaulted to ``subscribe`` when the key is absent
    filter: Filter | None  # None: every event
    hidden: tuple[str, ...]
    on_delete: OnDelete
    proxy: bool
    shaper: RecordShaper = field(repr=False)


@dataclass(frozen=True, slots=True)
class WebhookRules:
    sender: Rule | None  # None: any valid token
    networks: tuple[Network, ...]  # empty: any address


def _check(rule: Rule, claims: ClaimMap, payload: Any, now: str | None) -> bool:
    inputs = tuple(claims.resolve(payload, name) for _kind, name in rule.refs)
    return rule.test(None, inputs, now)


class Policy:
    """A loaded policy (or the open one); immutable, safe to share between threads."""

    def __init__(
        self,
        *,
        source: str | None = None,
        unlisted: Unlisted = "deny",
        claims: ClaimMap | None = None,
        superusers: Rule | None = None,
        collections: Mapping[tuple[str, str], CollectionRules] | None = None,
        webhooks: WebhookRules | None = None,
        is_open: bool = False,
    ) -> None:
        self.source = source
        self.unlisted: Unlisted = unlisted
        self.claims = claims or ClaimMap()
        self.superusers = superusers
        self.collections: dict[tuple[str, str], CollectionRules] = dict(collections or {})
        self.webhooks = webhooks
        self.is_open = is_open

    @classmethod
    def open(cls) -> Policy:
        """No policy file: every valid token may subscribe to everything, unfiltered."""
        return cls(unlisted="authenticated", is_open=True)

    def __repr__(self) -> str:
        if self.is_open:
            return "Policy.open()"
        return f"Policy({self.source!r}, {len(self.collections)} collections)"

    # --- lookups ------------------------------------------------------------------------

    def entry(self, database: str, collection: str) -> CollectionRules | None:
        """The entry for a collection: an exact database wins over ``"*"``."""
        found = self.collections.get((database, collection))
        return found if found is not None else self.collections.get(("*", collection))

    def is_superuser(self, claims_payload: Mapping[str, Any], now: str | None = None) -> bool:
        rule = self.superusers
        return rule is not None and _check(rule, self.claims, claims_payload, now)

    # --- SUBSCRIBE ----------------------------------------------------------------------

    def subscribe_decision(
        self,
        claims_payload: Mapping[str, Any],
        database: str,
        collection: str,
        *,
        group: str | None,
        sub_vars: Mapping[str, Any] | None = None,
        now: str | None = None,
    ) -> Decision:
        """May this token subscribe (``group`` set: join that consumer group), and what does
        it see? Superusers bypass every rule (and the proxy) and get View.ALL."""
        if self.is_open:
            return Decision(True, view=View.ALL)
        entry = self.entry(database, collection)
        on_delete: OnDelete = entry.on_delete if entry is not None else "filter"
        if self.is_superuser(claims_payload, now):
            return Decision(True, on_delete=on_delete, view=View.ALL, superuser=True)
        if entry is None:
            if self.unlisted == "authenticated":
                return Decision(True, view=View.ALL)
            return Decision(False, f"collection {collection!r} is not listed in the policy")
        rule = entry.subscribe if group is None else entry.groups
        what = "subscribe" if group is None else "groups"
        base = Decision(False, proxy=entry.proxy, on_delete=on_delete)
        if rule is None:
            doing = "subscribe to" if group is None else "join consumer groups of"
            return _refuse(base, f"only superusers may {doing} {collection!r}")
        if not _check(rule, self.claims, claims_payload, now):
            return _refuse(base, f"the {what} rule refused this token")
        flt = entry.filter
        view = View.ALL if flt is None else flt.view(claims_payload, sub_vars)
        return Decision(True, proxy=entry.proxy, on_delete=on_delete, view=view)

    # --- webhooks -----------------------------------------------------------------------

    @property
    def has_webhooks(self) -> bool:
        """Is there a ``[webhooks]`` section (else any valid token may post: log it)."""
        return self.webhooks is not None

    @property
    def sender_is_open(self) -> bool:
        """Does any valid token pass ``sender`` (no section, no rule, or an empty rule)?"""
        w = self.webhooks
        return w is None or w.sender is None or w.sender.is_empty

    def sender_allowed(self, claims_payload: Mapping[str, Any], now: str | None = None) -> bool:
        w = self.webhooks
        if w is None or w.sender is None:
            return True
        return _check(w.sender, self.claims, claims_payload, now)

    def source_allowed(self, address: str) -> bool:
        """Is the client address inside ``networks`` (no list: yes; malformed: no)?"""
        w = self.webhooks
        if w is None or not w.networks:
            return True
        if not isinstance(address, str):
            return False
        try:
            ip = ipaddress.ip_address(address.strip().strip("[]"))
        except ValueError:
            return False
        candidates: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = [ip]
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            candidates.append(ip.ipv4_mapped)
        return any(c in net for c in candidates for net in w.networks if c.version == net.version)

    # --- records ------------------------------------------------------------------------

    def strip_record(
        self,
        database: str,
        collection: str,
        action: str,
        record_json: bytes,
        record_id: str | None,
    ) -> bytes:
        """The record as ingest must store it (see records.py); the same bytes object when
        the collection hides nothing."""
        entry = None if self.is_open else self.entry(database, collection)
        return strip_record(entry.shaper if entry else None, action, record_json, record_id)


def _refuse(base: Decision, message: str) -> Decision:
    return Decision(False, message, proxy=base.proxy, on_delete=base.on_delete)
