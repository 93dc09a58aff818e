"""One consumer group of one collection on this node: its members, what each holds, and the
loop that hands out events.

Redis is the truth (the group's pending entries list, PEL); each member's ``inflight`` mirrors
its own PEL so an ACK can be checked without a round trip and the in-flight limit can be
applied. All Redis work of a worker runs under one lock, so a read for a member and that
member's departure never interleave (a departed member's entries are always found and moved).

Delivery is woken by the hub (``Hub.watch``: new events of the collection arrived), by an ACK
that freed a slot, and by a periodic pass that also reclaims entries idle past the visibility
timeout (a silent member, a crashed node), reconciles the mirrors, records the group as used,
updates the pending gauge and, less often, prunes dead consumers and idle groups.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import redis
from websockets.asyncio.server import broadcast

from common.ids import EventId, InvalidEventId, split_stream_id
from common.logs import get_logger
from common.messages import group_event_frame
from fanout import metrics
from fanout.groups_redis import Entry, GroupRedis, is_nogroup

log = get_logger("fanout.groups")

ORPHANS = "orphaned"  # consumer holding a departed member's entries until a node reclaims them
RELEASED_MEMORY = 1000  # per member: ids redelivered elsewhere whose late ACK is still accepted


class GroupError(Exception):
    """A refusal meant for the client (the session turns it into ERROR code/message)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class GroupConfig:
    max_inflight: int = 10
    visibility_ms: int = 30_000
    period: float = 5.0  # reclaim / housekeeping pass
    cleanup_period: float = 60.0  # prune dead consumers, destroy idle groups
    retry_delay: float = 0.5  # after a Redis error


@dataclass(eq=False)
class MemberState:
    session: Any
    consumer: str
    inflight: dict[str, tuple[str, float]] = field(default_factory=dict)  # sid -> (id, sent at)
    released: OrderedDict[str, str] = field(default_factory=OrderedDict)  # sid -> id
    gone: bool = False
    # an event of it passed the visibility timeout and no ACK came since: it may be a zombie
    # (the SDK's unsubscribe is local only, so such a connection keeps receiving and never
    # ACKs): one event at a time until it ACKs again, so it cannot sink `limit` events per timeout
    stalled: bool = False

    def free(self, limit: int) -> int:
        if self.gone or getattr(self.session, "closing", False):
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


def _refund_rate_token(session: Any) -> None:
    """A valid ACK answers an event the node chose to send, so it does not count against the
    connection's message rate limit (else a member handling more than FANOUT_CLIENT_RATE
    events/s would be closed as a flood and its events redelivered in a loop). Invalid ACKs are
    not refunded: a flood of them still closes the connection."""
    bucket = getattr(session, "bucket", None)
    if bucket is not None and hasattr(bucket, "tokens") and hasattr(bucket, "burst"):
        bucket.tokens = min(bucket.burst, bucket.tokens + 1.0)


def _sid_key(sid: str) -> tuple[int, int]:
    return split_stream_id(sid)


class GroupWorker:
    def __init__(
        self,
        rds: GroupRedis,
        config: GroupConfig,
        *,
        database: str,
        collection: str,
        group: str,
    ) -> None:
        self.rds = rds
        self.config = config
        self.database = database
        self.collection = collection
        self.group = group
        self.members: list[MemberState] = []
        self.by_session: dict[Any, MemberState] = {}
        self.holder: dict[str, MemberState] = {}  # sid -> local member holding it in flight
        self.lock = asyncio.Lock()
        self.wake = asyncio.Event()
        self.epoch: str | None = None
        self.floor = (0, 0)  # stream id at or below which this group has surely been positioned
        self.rr = 0
        self.task: asyncio.Task[None] | None = None
        self.unwatch: Any = None
        self.stopped = False
        self._next_cleanup = 0.0
        self._acks: list[str] = []
        self._ack_task: asyncio.Task[None] | None = None
        self._labels = (database, collection, group)

    # ------------------------------------------------------------------ lifecycle

    async def start(self, start_id: str) -> None:
        now_ms, created = await self.rds.ensure(start_id)
        if created and start_id == "$":
            self._raise_floor((now_ms, 0))  # positioned at the end of the stream as of now
        self.epoch = await self.rds.epoch()
        self._next_cleanup = time.monotonic() + self.config.cleanup_period * 0.5
        self.task = asyncio.create_task(self._run(), name=f"group-{self.collection}-{self.group}")

    async def stop(self) -> None:
        self.stopped = True
        if self.unwatch is not None:
            with contextlib.suppress(Exception):
                self.unwatch()
            self.unwatch = None
        await self._acks_flushed()
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task
        with contextlib.suppress(KeyError):
            metrics.GROUP_PENDING.remove(*self._labels)

    def poke(self) -> None:
        """Hub watcher callback: new events arrived (sync and cheap)."""
        self.wake.set()

    # ------------------------------------------------------------------ members

    def add(self, session: Any, consumer: str) -> bool:
        """Add a member (no await: the session sends SUBSCRIBED before anything is read for
        it). False if it is a member already (the SDK repeats SUBSCRIBE)."""
        if session in self.by_session:
            return False
        member = MemberState(session, consumer)
        self.members.append(member)
        self.by_session[session] = member
        metrics.GROUP_MEMBERS.inc()
        self.wake.set()
        return True

    async def remove(self, session: Any, *, hand_over: bool = True) -> bool:
        """A member leaves: its unacked entries go to a local member with free slots at once,
        the rest are marked idle for any node's next reclaim pass; its consumer is deleted."""
        member = self.by_session.pop(session, None)
        if member is None:
            return False
        member.gone = True
        self.members.remove(member)
        metrics.GROUP_MEMBERS.dec()
        for sid in member.inflight:
            self.holder.pop(sid, None)
        await self._acks_flushed()  # what it ACKed is not handed on
        async with self.lock:
            try:
                await self._release(member, hand_over)
            except (redis.RedisError, OSError) as exc:
                # left in its PEL: reclaimed after the visibility timeout
                if not is_nogroup(exc):
                    log.warning(
                        "group_release_failed",
                        collection=self.collection,
                        group=self.group,
                        error=type(exc).__name__,
                    )
        self.wake.set()
        return True

    async def _release(self, member: MemberState, hand_over: bool) -> None:
        ids = await self.rds.pending_of(member.consumer, 10_000) if hand_over else []
        while ids:
            target = self._next_member()
            if target is None:
                break
            room = target.free(self.config.max_inflight)
            take, ids = ids[:room], ids[room:]
            claimed = await self.rds.claim(target.consumer, take)
            got = {sid for sid, _ in claimed}
            await self.rds.ack([sid for sid in take if sid not in got])  # trimmed meanwhile
            self._send(target, claimed, "disconnect")
        moved = await self.rds.release(member.consumer, ORPHANS, self.config.visibility_ms)
        if moved:
            log.info(
                "group_member_released",
                collection=self.collection,
                group=self.group,
                entries=moved,
            )

    def is_empty(self) -> bool:
        return not self.members

    # ------------------------------------------------------------------ ACK

    async def ack(self, session: Any, ack_id: str) -> None:
        member = self.by_session.get(session)
        if member is None:
            raise GroupError(
                "invalid_ack",
                f"this connection is not a member of group {self.group!r} of {self.collection!r}",
            )
        try:
            sid = EventId.parse(ack_id).stream_id
        except InvalidEventId:
            raise GroupError("invalid_ack", f"ack id {ack_id[:80]!r} is malformed") from None
        held = member.inflight.get(sid)
        if held is not None and held[0] == ack_id:
            del member.inflight[sid]
            self.holder.pop(sid, None)
            member.stalled = False  # it works: full in-flight limit again
            self.wake.set()  # a slot is free
        elif member.released.get(sid) == ack_id:
            del member.released[sid]  # late ACK of an event already handed to someone else
            member.stalled = False
            self.wake.set()
        else:
            raise GroupError(
                "invalid_ack",
                f"event {ack_id[:80]!r} is not pending for this member of group {self.group!r}",
            )
        metrics.GROUP_ACKS.inc()
        _refund_rate_token(session)
        self._acks.append(sid)
        if self._ack_task is None or self._ack_task.done():
            self._ack_task = asyncio.create_task(self._flush_acks())

    async def _flush_acks(self) -> None:
        """One XACK for all ACKs that arrived in the same loop turn (across members): the ACK
        path is the hot path of a busy group. An XACK that fails leaves the events pending:
        they come again after the visibility timeout (at-least-once)."""
        await asyncio.sleep(0)
        while self._acks:
            ids, self._acks = self._acks, []
            try:
                await self.rds.ack(ids)
            except (redis.RedisError, OSError) as exc:
                if not is_nogroup(exc):  # NOGROUP: reset with its stream, nothing to confirm
                    log.warning(
                        "group_ack_failed",
                        collection=self.collection,
                        group=self.group,
                        events=len(ids),
                        error=type(exc).__name__,
                    )

    async def _acks_flushed(self) -> None:
        task = self._ack_task
        if task is not None and not task.done():
            with contextlib.suppress(Exception):
                await asyncio.shield(task)

    # ------------------------------------------------------------------ the loop

    async def _run(self) -> None:
        next_pass = time.monotonic()  # reclaim at once: a new member may find orphans
        delay = self.config.retry_delay
        while not self.stopped:
            timeout = max(0.0, next_pass - time.monotonic())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self.wake.wait()
            self.wake.clear()
            try:
                async with self.lock:
                    if time.monotonic() >= next_pass:
                        next_pass = time.monotonic() + self.config.period
                        await self._periodic()
                    await self._deliver()
                delay = self.config.retry_delay
            except asyncio.CancelledError:
                raise
            except (redis.RedisError, OSError) as exc:
                if is_nogroup(exc):
                    await self._recreate()
                    self.wake.set()
                    continue
                log.warning(
                    "group_pass_failed",
                    collection=self.collection,
                    group=self.group,
                    error=type(exc).__name__,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                self.wake.set()
            except Exception:
                log.exception("group_pass_crashed", collection=self.collection, group=self.group)
                await asyncio.sleep(delay)
                self.wake.set()

    async def _recreate(self) -> None:
        """The group vanished with its stream (retention expiry, a new epoch, an operator).
        Recreate it just after the newest position it surely had: later events are delivered,
        nothing it already delivered comes again. Held ids are kept for late ACKs."""
        with contextlib.suppress(redis.RedisError, OSError):
            async with self.lock:
                start = f"{self.floor[0]}-{self.floor[1]}"
                await self.rds.ensure(start)
                self.epoch = await self.rds.epoch()
                for member in self.members:
                    for sid in list(member.inflight):
                        member.release_one(sid)
                self.holder.clear()
                log.info(
                    "group_recreated", collection=self.collection, group=self.group, start=start
                )

    def _next_member(self) -> MemberState | None:
        """Round-robin over members with a free slot."""
        n = len(self.members)
        for i in range(n):
            member = self.members[(self.rr + i) % n]
            if member.free(self.config.max_inflight) > 0:
                self.rr = (self.rr + i + 1) % n
                return member
        return None

    async def _deliver(self) -> None:
        while True:
            member = self._next_member()
            if member is None:
                return
            want = member.free(self.config.max_inflight)
            entries = await self.rds.read_new(member.consumer, want)
            if not entries:
                return
            if member.gone:
                return  # its release (waiting on the lock) moves them on
            if self.epoch is None:
                self.epoch = await self.rds.epoch()
            self._send(member, entries, None)
            if len(entries) < want:
                return

    def _send(self, member: MemberState, entries: list[Entry], redelivery: str | None) -> None:
        if not entries:
            return
        now = time.monotonic()
        epoch = self.epoch or "0"
        events = []
        for sid, data in entries:
            previous = self.holder.get(sid)
            if previous is not None and redelivery == "timeout":
                previous.stalled = True  # held it past the visibility timeout
            if previous is not None and previous is not member:
                previous.release_one(sid)
            cid = f"{sid}@{epoch}"
            member.inflight[sid] = (cid, now)
            member.released.pop(sid, None)
            self.holder[sid] = member
            events.append((cid, data))
            self._raise_floor(_sid_key(sid))
        broadcast([member.session.conn], group_event_frame(self.collection, events), text=True)
        if redelivery is None:
            metrics.GROUP_DELIVERED.inc(len(events))
        else:
            metrics.GROUP_REDELIVERIES.labels(redelivery).inc(len(events))
        metrics.EVENTS_SENT.inc(len(events))
        metrics.FRAMES_SENT.inc()

    def _raise_floor(self, key: tuple[int, int]) -> None:
        if key > self.floor:
            self.floor = key

    # ------------------------------------------------------------------ periodic pass

    async def _periodic(self) -> None:
        await self.rds.touch()
        self.epoch = await self.rds.epoch() or self.epoch
        await self._reconcile()
        await self._reclaim()
        pending = await self.rds.pending_count()
        metrics.GROUP_PENDING.labels(*self._labels).set(pending)
        if time.monotonic() >= self._next_cleanup:
            self._next_cleanup = time.monotonic() + self.config.cleanup_period
            keep = [m.consumer for m in self.members]
            pruned = await self.rds.prune(self.config.visibility_ms, keep)
            destroyed, _remaining = await self.rds.cleanup()
            if pruned or destroyed:
                log.info(
                    "group_cleanup",
                    collection=self.collection,
                    group=self.group,
                    consumers_pruned=pruned,
                    groups_destroyed=destroyed,
                )
            metrics.GROUP_DESTROYED.inc(len(destroyed))

    async def _reclaim(self) -> None:
        """XAUTOCLAIM entries idle past the visibility timeout (crashed nodes, silent members,
        orphans of departed members) for local members with free slots."""
        start = "0-0"
        for _ in range(50):  # bounded per pass; the next pass goes on
            member = self._next_member()
            if member is None:
                return
            want = member.free(self.config.max_inflight)
            got = await self.rds.autoclaim(member.consumer, self.config.visibility_ms, start, want)
            if got.deleted:
                # trimmed by retention while pending: nothing to deliver, confirm them away
                await self.rds.ack(got.deleted)
                for sid in got.deleted:
                    holder = self.holder.pop(sid, None)
                    if holder is not None:
                        holder.release_one(sid)
            self._send(member, got.entries, "timeout")
            start = got.next_start
            if start == "0-0":
                return

    async def _reconcile(self) -> None:
        """A member holding entries past the visibility timeout may have lost them to another
        node's reclaim: free the slots of those no longer in its PEL (a late ACK is accepted)."""
        limit = time.monotonic() - self.config.visibility_ms / 1000
        for member in list(self.members):
            if not member.inflight or min(t for _, t in member.inflight.values()) > limit:
                continue
            owned = set(await self.rds.pending_of(member.consumer, len(member.inflight) + 100))
            for sid in [s for s in member.inflight if s not in owned]:
                if self.holder.get(sid) is member:
                    del self.holder[sid]
                member.release_one(sid, timed_out=True)  # reclaimed by another node
