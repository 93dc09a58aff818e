"""Who holds which event of one consumer group on this node: the pure part of a group worker.

Redis is the truth (the group's pending entries list); the ledger mirrors, per local member,
the entries it holds, so an ACK is checked without a round trip, the in-flight limit is
applied, and a departing member's entries can be handed on. It never awaits and never talks
to Redis: ``fanout/groups_worker.py`` feeds it what Redis said and does what it answers.
Unit tests: ``tests/unit/test_group_ledger.py``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from common.errors import ClientError
from common.layout import EventId, InvalidEventId, split_stream_id

Entry = tuple[str, bytes]  # (stream id, data JSON)
Event = tuple[str, bytes]  # (client-visible id, data JSON)

# per member: ids handed to someone else whose late ACK is still accepted
RELEASED_MEMORY = 1000


@dataclass(eq=False)
class Holder:
    """One local member of the group and the entries it holds."""

    member: Any  # the session: only ``member.closing`` is read
    consumer: str  # its Redis consumer name
    inflight: dict[str, tuple[str, float]] = field(default_factory=dict)  # sid -> (id, sent at)
    released: OrderedDict[str, str] = field(default_factory=OrderedDict)  # sid -> id
    gone: bool = False
    # one of its events passed the visibility timeout and no ACK came since: it may be a zombie
    # (the SDK's unsubscribe is local only, so such a connection keeps receiving and never
    # ACKs): one event at a time until it ACKs again, so it cannot sink `limit` per timeout
    stalled: bool = False

    def free(self, limit: int) -> int:
        if self.gone or self.member.closing:
            return 0  # leaving (drain, slow, expired): give it nothing more
        return max(0, (1 if self.stalled else limit) - len(self.inflight))

    def release_one(self, sid: str, *, timed_out: bool = False) -> None:
        """``sid`` now belongs to another consumer: no longer held, but a late ACK is fine."""
        if timed_out and sid in self.inflight:
            self.stalled = True
        held = self.inflight.pop(sid, None)
        if held is not None:
            self.released[sid] = held[0]
            while len(self.released) > RELEASED_MEMORY:
                self.released.popitem(last=False)

    def oldest_sent(self) -> float | None:
        return min((t for _, t in self.inflight.values()), default=None)


class GroupLedger:
    def __init__(self, group: str, collection: str, max_inflight: int) -> None:
        self.group = group
        self.collection = collection
        self.max_inflight = max_inflight
        self.holders: list[Holder] = []
        self.by_member: dict[Any, Holder] = {}
        self.holder_of: dict[str, Holder] = {}  # sid -> local holder
        self.floor = (0, 0)  # stream id at or below which this group has surely been positioned
        self._rr = 0

    # ------------------------------------------------------------------ members

    def add(self, member: Any, consumer: str) -> bool:
        """False if it is a member already (the SDK repeats SUBSCRIBE)."""
        if member in self.by_member:
            return False
        holder = Holder(member, consumer)
        self.holders.append(holder)
        self.by_member[member] = holder
        return True

    def remove(self, member: Any) -> Holder | None:
        """The member leaves: what it holds is no longer held here (the worker moves it on)."""
        holder = self.by_member.pop(member, None)
        if holder is None:
            return None
        holder.gone = True
        self.holders.remove(holder)
        for sid in holder.inflight:
            if self.holder_of.get(sid) is holder:
                del self.holder_of[sid]
        return holder

    def is_empty(self) -> bool:
        return not self.holders

    def next_holder(self) -> Holder | None:
        """Round-robin over members with a free slot."""
        n = len(self.holders)
        for i in range(n):
            holder = self.holders[(self._rr + i) % n]
            if holder.free(self.max_inflight) > 0:
                self._rr = (self._rr + i + 1) % n
                return holder
        return None

    def free(self, holder: Holder) -> int:
        return holder.free(self.max_inflight)

    # ------------------------------------------------------------------ events

    def hand_out(
        self, holder: Holder, entries: Iterable[Entry], epoch: str, now: float, *, timeout: bool
    ) -> list[Event]:
        """``holder`` now holds ``entries`` (read, claimed or reclaimed for it): the events to
        send it. ``timeout``: reclaimed after the visibility timeout, so whoever held an entry
        before held it too long."""
        events = []
        for sid, data in entries:
            previous = self.holder_of.get(sid)
            if previous is not None:
                if timeout:
                    previous.stalled = True
                if previous is not holder:
                    previous.release_one(sid)
            cid = f"{sid}@{epoch}"
            holder.inflight[sid] = (cid, now)
            holder.released.pop(sid, None)
            self.holder_of[sid] = holder
            events.append((cid, data))
            self.raise_floor(split_stream_id(sid))
        return events

    def ack(self, member: Any, ack_id: str) -> str:
        """Check one ACK: the stream id to XACK, or ClientError ``invalid_ack``."""
        holder = self.by_member.get(member)
        if holder is None:
            raise ClientError(
                "invalid_ack",
                f"this connection is not a member of group {self.group!r} of {self.collection!r}",
            )
        try:
            sid = EventId.parse(ack_id).stream_id
        except InvalidEventId:
            raise ClientError("invalid_ack", f"ack id {ack_id[:80]!r} is malformed") from None
        held = holder.inflight.get(sid)
        if held is not None and held[0] == ack_id:
            del holder.inflight[sid]
            if self.holder_of.get(sid) is holder:
                del self.holder_of[sid]
        elif holder.released.get(sid) == ack_id:
            del holder.released[sid]  # late ACK of an event already handed to someone else
        else:
            raise ClientError(
                "invalid_ack",
                f"event {ack_id[:80]!r} is not pending for this member of group {self.group!r}",
            )
        holder.stalled = False  # it works: full in-flight limit again
        return sid

    def forget(self, sids: Iterable[str]) -> None:
        """Entries trimmed by retention while pending: nobody holds them any more."""
        for sid in sids:
            holder = self.holder_of.pop(sid, None)
            if holder is not None:
                holder.release_one(sid)

    def overdue(self, limit: float) -> list[Holder]:
        """Members holding an entry sent before ``limit`` (it may have been reclaimed by
        another node): the worker asks Redis which of theirs they still own."""
        return [h for h in self.holders if (t := h.oldest_sent()) is not None and t <= limit]

    def reconcile(self, holder: Holder, owned: set[str]) -> list[str]:
        """Free the slots of entries no longer in ``holder``'s Redis PEL (reclaimed elsewhere; a
        late ACK is still accepted). Returns those ids."""
        lost = [sid for sid in holder.inflight if sid not in owned]
        for sid in lost:
            if self.holder_of.get(sid) is holder:
                del self.holder_of[sid]
            holder.release_one(sid, timed_out=True)
        return lost

    def reset(self) -> None:
        """The group was recreated in Redis: nothing is held any more (late ACKs still fine)."""
        for holder in self.holders:
            for sid in list(holder.inflight):
                holder.release_one(sid)
        self.holder_of.clear()

    def raise_floor(self, position: tuple[int, int]) -> None:
        if position > self.floor:
            self.floor = position
