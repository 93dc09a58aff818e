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
from dataclasses import dataclass
from typing import Any, Protocol

from common.errors import ClientError
from common.layout import CollectionKeys, collection_keys
from common.logs import get_logger
from common.messages import error_frame
from common.policy import Decision, Policy, View
from fanout import metrics
from fanout.hub import Hub, SubscribeOutcome
from fanout.recipients import OnDelete
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
    view: View
    on_delete: OnDelete
    claims: Any  # the token payload the decision was made on (checked again on SIGHUP)


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


def forbidden(collection: str, message: str) -> ClientError:
    return ClientError("forbidden", f"{message}; SUBSCRIBE to {collection!r} refused")


class Subscriptions:
    def __init__(
        self,
        hub: Hub,
        groups: GroupsPort | None,
        *,
        max_per_connection: int,
        prefix: str,
        policy: Policy | None = None,
    ) -> None:
        self.hub = hub
        self.groups = groups
        self.max_per_connection = max_per_connection
        self.prefix = prefix
        self.policy = policy or Policy.open()
        self._by_member: dict[Member, dict[SubKey, Subscription]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def count(self, member: Member) -> int:
        return len(self._by_member.get(member, ()))

    def __len__(self) -> int:
        return sum(len(subs) for subs in self._by_member.values())

    def decide(self, claims: Any, database: str, collection: str, group: str | None) -> Decision:
        decision = self.policy.subscribe_decision(claims, database, collection, group=group)
        if not decision.allowed:
            metrics.FORBIDDEN.inc()
            raise forbidden(collection, decision.message)
        return decision

    async def subscribe(
        self,
        member: Member,
        claims: Any,
        database: str,
        collection: str,
        group: str | None,
        last_id: str | None,
    ) -> SubscribeOutcome:
        key = SubKey(collection, group)
        subs = self._by_member.get(member, {})
        sub = subs.get(key)
        if sub is not None:
            # the SDK sends SUBSCRIBE again on an open socket: answer, never replay twice
            if group is None:
                return SubscribeOutcome(self.hub.last_id(sub.keys), True)
            last = await self._groups().join(
                member, sub.keys, group, last_id, sub.view, sub.on_delete
            )
            return SubscribeOutcome(last, True)
        if len(subs) >= self.max_per_connection:
            raise ClientError(
                "too_many_subscriptions",
                f"a connection may hold at most {self.max_per_connection} subscriptions",
            )
        keys = collection_keys(database, collection, self.prefix)
        if group is not None:
            self._groups()  # groups_unavailable before forbidden: nothing could be joined
        decision = self.decide(claims, database, collection, group)
        view = decision.view or View.ALL
        if group is None:
            outcome = await self.hub.subscribe(member, keys, last_id, view, decision.on_delete)
        else:
            last = await self._groups().join(member, keys, group, last_id, view, decision.on_delete)
            outcome = SubscribeOutcome(last, True)
        self._by_member.setdefault(member, {})[key] = Subscription(
            keys, group, view, decision.on_delete, claims
        )
        return outcome

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
        await groups.ack(member, sub.keys, group, sub.view, ack_id)

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
            return self.hub.leave(member, sub.keys, sub.view)
        return await self._groups().leave(member, sub.keys, sub.group, sub.view)

    def _groups(self) -> GroupsPort:
        if self.groups is None:
            raise ClientError(
                "groups_unavailable", "consumer groups are not available on this node"
            )
        return self.groups

    # ------------------------------------------------------------------ policy changes

    def apply_policy(self, policy: Policy) -> None:
        """A new policy is in force (SIGHUP): check every subscription again. Refused ones get
        the ``forbidden`` ERROR and stop; the others see what the new filter lets them see from
        the next event on."""
        self.policy = policy
        task = asyncio.get_running_loop().create_task(self._recheck())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _recheck(self) -> None:
        refused = changed = 0
        for member, subs in list(self._by_member.items()):
            for key, sub in list(subs.items()):
                if self._by_member.get(member, {}).get(key) is not sub:
                    continue  # left meanwhile
                decision = self.policy.subscribe_decision(
                    sub.claims, sub.keys.database, sub.keys.collection, group=sub.group
                )
                try:
                    if not decision.allowed:
                        refused += 1
                        self._pop(member, key)
                        await self._leave(member, sub)
                        err = forbidden(sub.keys.collection, decision.message)
                        metrics.FORBIDDEN.inc()
                        await member.send_frame(
                            error_frame(err.code, err.message, collection=sub.keys.collection)
                        )
                    elif (view := decision.view or View.ALL) != sub.view:
                        changed += 1
                        await self._move(member, sub, view, decision)
                except Exception as exc:  # a closed connection, Redis away: the rest goes on
                    log.info("policy_recheck_skipped", error=type(exc).__name__)
        log.info("policy_rechecked", refused=refused, changed=changed, kept=len(self))

    async def _move(self, member: Member, sub: Subscription, view: View, d: Decision) -> None:
        if sub.group is None:
            self.hub.change_view(member, sub.keys, sub.view, view, d.on_delete)
            sub.view, sub.on_delete = view, d.on_delete
            return
        # a group member with another view belongs to another Redis group (members who see
        # different events never share one): leave the old one, its events go to the others
        groups = self._groups()
        await groups.leave(member, sub.keys, sub.group, sub.view)
        sub.view, sub.on_delete = view, d.on_delete
        await groups.join(member, sub.keys, sub.group, None, view, d.on_delete)
