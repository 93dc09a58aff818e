"""Who is subscribed to what on this node: the one index, and the router behind SUBSCRIBE.

A session hands every SUBSCRIBE, UNSUBSCRIBE and ACK here. Plain subscriptions go to the hub
(``fanout/hub.py``), group subscriptions to the consumer groups (``fanout/groups.py``); this
module keeps the per-connection index both are looked up in (limit per connection, repeated
SUBSCRIBEs, what to leave when a connection ends), so nothing else keeps its own copy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from common.errors import ClientError
from common.layout import CollectionKeys, collection_keys
from fanout.hub import Hub, SubscribeOutcome
from fanout.wire import Member


@dataclass(frozen=True, slots=True)
class SubKey:
    collection: str
    group: str | None


class GroupsPort(Protocol):
    """Consumer groups (``fanout/groups.py``); refusals are raised as ClientError."""

    async def join(
        self, member: Member, keys: CollectionKeys, group: str, last_id: str | None
    ) -> str: ...

    async def ack(self, member: Member, keys: CollectionKeys, group: str, ack_id: str) -> None: ...

    async def leave(self, member: Member, keys: CollectionKeys, group: str) -> bool: ...


class Subscriptions:
    def __init__(
        self, hub: Hub, groups: GroupsPort | None, *, max_per_connection: int, prefix: str
    ) -> None:
        self.hub = hub
        self.groups = groups
        self.max_per_connection = max_per_connection
        self.prefix = prefix
        self._by_member: dict[Member, dict[SubKey, CollectionKeys]] = {}

    def count(self, member: Member) -> int:
        return len(self._by_member.get(member, ()))

    def __len__(self) -> int:
        return sum(len(subs) for subs in self._by_member.values())

    async def subscribe(
        self, member: Member, database: str, collection: str, group: str | None, last_id: str | None
    ) -> SubscribeOutcome:
        key = SubKey(collection, group)
        subs = self._by_member.get(member, {})
        keys = subs.get(key)
        if keys is not None:
            # the SDK sends SUBSCRIBE again on an open socket: answer, never replay twice
            if group is None:
                return SubscribeOutcome(self.hub.last_id(keys), True)
            return SubscribeOutcome(await self._groups().join(member, keys, group, last_id), True)
        if len(subs) >= self.max_per_connection:
            raise ClientError(
                "too_many_subscriptions",
                f"a connection may hold at most {self.max_per_connection} subscriptions",
            )
        keys = collection_keys(database, collection, self.prefix)
        if group is None:
            outcome = await self.hub.subscribe(member, keys, last_id)
        else:
            outcome = SubscribeOutcome(
                await self._groups().join(member, keys, group, last_id), True
            )
        self._by_member.setdefault(member, {})[key] = keys
        return outcome

    async def unsubscribe(self, member: Member, collection: str, group: str | None) -> bool:
        if group is not None:
            self._groups()  # refuse on a node without groups, as SUBSCRIBE does
        subs = self._by_member.get(member)
        keys = subs.pop(SubKey(collection, group), None) if subs is not None else None
        if subs is not None and not subs:
            del self._by_member[member]
        if keys is None:
            return False
        return await self._leave(member, keys, group)

    async def ack(
        self, member: Member, database: str, collection: str, group: str, ack_id: str
    ) -> None:
        groups = self._groups()
        keys = self._by_member.get(member, {}).get(SubKey(collection, group))
        if keys is None:
            raise ClientError(
                "invalid_ack",
                f"this connection is not a member of group {group!r} of {collection!r}",
            )
        await groups.ack(member, keys, group, ack_id)

    async def remove(self, member: Member) -> None:
        """The connection ended: leave everything it was subscribed to."""
        for key, keys in self._by_member.pop(member, {}).items():
            await self._leave(member, keys, key.group)

    async def _leave(self, member: Member, keys: CollectionKeys, group: str | None) -> bool:
        if group is None:
            return self.hub.leave(member, keys)
        return await self._groups().leave(member, keys, group)

    def _groups(self) -> GroupsPort:
        if self.groups is None:
            raise ClientError(
                "groups_unavailable", "consumer groups are not available on this node"
            )
        return self.groups
