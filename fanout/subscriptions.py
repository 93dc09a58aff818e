"""Who is subscribed to what on this node: the one index, the access checks, and the router.

A session hands every SUBSCRIBE, UNSUBSCRIBE and ACK here. The access policy decides first
(``common/policy``: may this token subscribe, join the group, and what does it see); then plain
subscriptions go to the hub (``fanout/hub.py``) and group subscriptions to the consumer groups
(``fanout/groups.py``). The per-connection index kept here is the only one: the limit per
connection, repeated SUBSCRIBEs, what to leave when a connection ends, and what to check again
when the policy changes (SIGHUP) are all answered from it.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from dataclasses import dataclass, replace
from typing import Any, Protocol

from common.errors import ClientError
from common.layout import CollectionKeys, collection_keys
from common.logs import get_logger
from common.messages import error_frame
from common.policy import Policy, View
from fanout.access import Access, Grant
from fanout.hub import Hub, SubscribeOutcome
from fanout.recipients import OnDelete
from fanout.subscribe_proxy import ProxyUnavailable
from fanout.wire import Member

log = get_logger("fanout.subscriptions")


@dataclass(frozen=True, slots=True)
class SubKey:
    collection: str
    group: str | None


@dataclass(slots=True)
class Subscription:
    keys: CollectionKeys
    group: str | None
    grant: Grant  # its view, and when it must be decided again
    claims: Any  # the token payload it was granted to (decided again on SIGHUP and expiry)
    token_exp: float | None


class GroupsPort(Protocol):
    """Consumer groups (``fanout/groups.py``); refusals are raised as ClientError."""

    async def join(
        self,
        member: Member,
        keys: CollectionKeys,
        group: str,
        last_id: str | None,
        view: View,
        on_delete: OnDelete,
    ) -> str: ...

    async def ack(
        self, member: Member, keys: CollectionKeys, group: str, view: View, ack_id: str
    ) -> None: ...

    async def leave(self, member: Member, keys: CollectionKeys, group: str, view: View) -> bool: ...


class Subscriptions:
    def __init__(
        self,
        hub: Hub,
        groups: GroupsPort | None,
        *,
        max_per_connection: int,
        prefix: str,
        access: Access | None = None,
        refresh_interval: float = 0.5,
    ) -> None:
        self.hub = hub
        self.groups = groups
        self.max_per_connection = max_per_connection
        self.prefix = prefix
        self.access = access or Access(Policy.open())
        self.refresh_interval = refresh_interval
        self._by_member: dict[Member, dict[SubKey, Subscription]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._refresher: asyncio.Task[None] | None = None
        # when grants expire: (expires_at, n, member, key), checked lazily against the index
        self._schedule: list[tuple[float, int, Member, SubKey]] = []
        self._order = itertools.count()

    @property
    def policy(self) -> Policy:
        return self.access.policy

    def start(self) -> None:
        """Start deciding again the grants that expire (subscribe proxy answers)."""
        if self._refresher is None:
            self._refresher = asyncio.get_running_loop().create_task(self._refresh_loop())

    async def stop(self) -> None:
        for task in [self._refresher, *self._tasks]:
            if task is not None:
                task.cancel()

    def count(self, member: Member) -> int:
        return len(self._by_member.get(member, ()))

    def __len__(self) -> int:
        return sum(len(subs) for subs in self._by_member.values())

    async def subscribe(
        self,
        member: Member,
        claims: Any,
        database: str,
        collection: str,
        group: str | None,
        last_id: str | None,
        token_exp: float | None = None,
    ) -> SubscribeOutcome:
        key = SubKey(collection, group)
        subs = self._by_member.get(member, {})
        sub = subs.get(key)
        if sub is not None:
            # the SDK sends SUBSCRIBE again on an open socket: answer, never replay twice
            if group is None:
                return SubscribeOutcome(self.hub.last_id(sub.keys), True)
            g = sub.grant
            last = await self._groups().join(member, sub.keys, group, last_id, g.view, g.on_delete)
            return SubscribeOutcome(last, True)
        if len(subs) >= self.max_per_connection:
            raise ClientError(
                "too_many_subscriptions",
                f"a connection may hold at most {self.max_per_connection} subscriptions",
            )
        keys = collection_keys(database, collection, self.prefix)
        if group is not None:
            self._groups()  # groups_unavailable before forbidden: nothing could be joined
        grant = await self.access.grant(claims, database, collection, group, token_exp=token_exp)
        if group is None:
            outcome = await self.hub.subscribe(member, keys, last_id, grant.view, grant.on_delete)
        else:
            joined = self._groups().join(member, keys, group, last_id, grant.view, grant.on_delete)
            outcome = SubscribeOutcome(await joined, True)
        sub = Subscription(keys, group, grant, claims, token_exp)
        self._by_member.setdefault(member, {})[key] = sub
        self._plan(member, key, sub)
        return outcome

    def _plan(self, member: Member, key: SubKey, sub: Subscription) -> None:
        if sub.grant.expires_at is not None:
            entry = (sub.grant.expires_at, next(self._order), member, key)
            heapq.heappush(self._schedule, entry)

    async def unsubscribe(self, member: Member, collection: str, group: str | None) -> bool:
        if group is not None:
            self._groups()  # refuse on a node without groups, as SUBSCRIBE does
        sub = self._pop(member, SubKey(collection, group))
        return sub is not None and await self._leave(member, sub)

    async def ack(self, member: Member, collection: str, group: str, ack_id: str) -> None:
        groups = self._groups()
        sub = self._by_member.get(member, {}).get(SubKey(collection, group))
        if sub is None:
            raise ClientError(
                "invalid_ack",
                f"this connection is not a member of group {group!r} of {collection!r}",
            )
        await groups.ack(member, sub.keys, group, sub.grant.view, ack_id)

    async def remove(self, member: Member) -> None:
        """The connection ended: leave everything it was subscribed to."""
        for sub in self._by_member.pop(member, {}).values():
            await self._leave(member, sub)

    def _pop(self, member: Member, key: SubKey) -> Subscription | None:
        subs = self._by_member.get(member)
        sub = subs.pop(key, None) if subs is not None else None
        if subs is not None and not subs:
            del self._by_member[member]
        return sub

    async def _leave(self, member: Member, sub: Subscription) -> bool:
        if sub.group is None:
            return self.hub.leave(member, sub.keys, sub.grant.view)
        return await self._groups().leave(member, sub.keys, sub.group, sub.grant.view)

    def _groups(self) -> GroupsPort:
        if self.groups is None:
            raise ClientError(
                "groups_unavailable", "consumer groups are not available on this node"
            )
        return self.groups

    # ------------------------------------------------------------------ deciding again

    def apply_policy(self, policy: Policy) -> None:
        """A new policy is in force (SIGHUP): check every subscription again. Refused ones get
        the ``forbidden`` ERROR and stop; the others see what the new filter lets them see from
        the next event on."""
        self.access.policy = policy
        task = asyncio.get_running_loop().create_task(self._recheck(None))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _refresh_loop(self) -> None:
        """Grants made on a subscribe proxy answer are decided again when it expires."""
        while True:
            await asyncio.sleep(self.refresh_interval)
            try:
                await self._recheck(time.monotonic())
            except Exception:
                log.exception("grant_refresh_failed")

    def _due(self, now: float) -> list[tuple[Member, SubKey, Subscription]]:
        """Subscriptions whose grant expired by ``now`` (stale schedule entries skipped)."""
        due = []
        while self._schedule and self._schedule[0][0] <= now:
            expires, _n, member, key = heapq.heappop(self._schedule)
            sub = self._by_member.get(member, {}).get(key)
            if sub is not None and sub.grant.expires_at == expires:
                due.append((member, key, sub))
        return due

    async def _recheck(self, expired_before: float | None) -> None:
        """Decide again every subscription (``None``: after a policy change) or those whose
        grant expired before ``expired_before`` (asking the proxy afresh, once per key)."""
        if expired_before is None:
            todo = [(m, k, s) for m, subs in list(self._by_member.items()) for k, s in subs.items()]
        else:
            todo = self._due(expired_before)
        refused = changed = 0
        asked: set[Any] = set()
        for member, key, sub in todo:
            if self._by_member.get(member, {}).get(key) is not sub:
                continue  # left meanwhile
            fresh = expired_before is not None and sub.grant.proxy_key not in asked
            asked.add(sub.grant.proxy_key)
            before = sub.grant.expires_at
            outcome = await self._regrant(member, key, sub, fresh=fresh)
            refused += outcome == "refused"
            changed += outcome == "changed"
            if outcome != "refused" and (
                expired_before is not None or sub.grant.expires_at != before
            ):
                self._plan(member, key, sub)
        if expired_before is None or refused or changed:
            log.info("subscriptions_rechecked", refused=refused, changed=changed, kept=len(self))

    async def _regrant(self, member: Member, key: SubKey, sub: Subscription, *, fresh: bool) -> str:
        k = sub.keys
        try:
            grant = await self.access.grant(
                sub.claims,
                k.database,
                k.collection,
                sub.group,
                token_exp=sub.token_exp,
                fresh=fresh,
            )
        except ProxyUnavailable as exc:
            # keep serving what the last answer allowed; ask again soon
            log.warning("grant_refresh_deferred", collection=k.collection, why=exc.why)
            retry = time.monotonic() + max(1.0, self.refresh_interval * 10)
            sub.grant = replace(sub.grant, expires_at=retry)
            return "kept"
        except ClientError as exc:
            try:
                self._pop(member, key)
                await self._leave(member, sub)
                frame = error_frame(exc.code, exc.message, collection=k.collection)
                await member.send_frame(frame)
            except Exception as err:  # a closed connection, Redis away: the rest goes on
                log.info("recheck_leave_failed", error=type(err).__name__)
            return "refused"
        if grant.view == sub.grant.view:
            sub.grant = grant
            return "kept"
        try:
            await self._move(member, sub, grant)
        except Exception as err:
            log.info("recheck_move_failed", error=type(err).__name__)
        return "changed"

    async def _move(self, member: Member, sub: Subscription, grant: Grant) -> None:
        old = sub.grant
        sub.grant = grant
        if sub.group is None:
            self.hub.change_view(member, sub.keys, old.view, grant.view, grant.on_delete)
            return
        # a group member with another view belongs to another Redis group (members who see
        # different events never share one): leave the old one, its events go to the others
        groups = self._groups()
        await groups.leave(member, sub.keys, sub.group, old.view)
        await groups.join(member, sub.keys, sub.group, None, grant.view, grant.on_delete)
