"""One consumer group of one collection on this node: the loop that hands out its events.

Who holds what is the ledger's (``fanout/group_ledger.py``); the Redis commands are
``fanout/groups_redis.py``'s; this module is the I/O between them. All Redis work of a worker
runs under one lock, so a read for a member and that member's departure never interleave (a
departed member's entries are always found and moved).

Delivery is woken by the hub (``Hub.watch``: new events of the collection arrived), by an ACK
that freed a slot, and by a periodic pass that also reclaims entries idle past the visibility
timeout (a silent member, a crashed node), reconciles the ledger with Redis, records the group
as used, updates the pending gauge and, less often, prunes dead consumers and idle groups.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis

from common.backoff import Backoff
from common.logs import get_logger
from common.messages import group_event_frame
from common.policy import View
from fanout import metrics
from fanout.group_ledger import Entry, GroupLedger, Holder
from fanout.groups_redis import GroupRedis, is_nogroup
from fanout.recipients import OnDelete, visible
from fanout.wire import Frame, Member

log = get_logger("fanout.groups")

ORPHANS = "orphaned"  # consumer holding a departed member's entries until a node reclaims them
REDIS_ERRORS = (redis.RedisError, OSError)


@dataclass(frozen=True)
class GroupConfig:
    max_inflight: int = 10
    visibility_ms: int = 30_000
    period: float = 5.0  # reclaim / housekeeping pass
    cleanup_period: float = 60.0  # prune dead consumers, destroy idle groups
    retry_delay: float = 0.5  # after a Redis error


class GroupWorker:
    def __init__(
        self,
        rds: GroupRedis,
        config: GroupConfig,
        *,
        new_consumer: Callable[[], str],
        view: View = View.ALL,
        on_delete: OnDelete = "filter",
        database: str,
        collection: str,
        group: str,
    ) -> None:
        self.rds = rds
        self.config = config
        self.new_consumer = new_consumer  # Redis consumer names, unique on this node
        # what every member of this (Redis) group may see: entries it may not are ACKed unseen
        self.view = view
        self.on_delete: OnDelete = on_delete
        self.collection = collection
        self.group = group
        self.ledger = GroupLedger(group, collection, config.max_inflight)
        self.lock = asyncio.Lock()
        self.wake = asyncio.Event()
        self.epoch: str | None = None
        self.task: asyncio.Task[None] | None = None
        self.unwatch: Callable[[], None] | None = None
        self.stopped = False
        self._next_cleanup = 0.0
        self._acks: list[str] = []
        self._ack_task: asyncio.Task[None] | None = None
        self._labels = (database, collection, group)

    # ------------------------------------------------------------------ lifecycle

    async def start(self, start_id: str) -> None:
        now_ms, created = await self.rds.ensure(start_id)
        if created and start_id == "$":
            self.ledger.raise_floor((now_ms, 0))  # positioned at the end of the stream as of now
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

    def add(self, member: Member) -> bool:
        """Add a member (no await: the session sends SUBSCRIBED before anything is read for
        it). False if it is a member already (the SDK repeats SUBSCRIBE)."""
        if not self.ledger.add(member, self.new_consumer()):
            return False
        metrics.GROUP_MEMBERS.inc()
        self.wake.set()
        return True

    async def remove(self, member: Member, *, hand_over: bool = True) -> bool:
        """A member leaves: its unacked entries go to a local member with free slots at once,
        the rest are marked idle for any node's next reclaim pass; its consumer is deleted."""
        holder = self.ledger.remove(member)
        if holder is None:
            return False
        metrics.GROUP_MEMBERS.dec()
        await self._acks_flushed()  # what it ACKed is not handed on
        async with self.lock:
            try:
                await self._release(holder, hand_over)
            except REDIS_ERRORS as exc:
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

    async def _release(self, holder: Holder, hand_over: bool) -> None:
        ids = await self.rds.pending_of(holder.consumer, 10_000) if hand_over else []
        while ids:
            target = self.ledger.next_holder()
            if target is None:
                break
            room = self.ledger.free(target)
            take, ids = ids[:room], ids[room:]
            claimed = await self.rds.claim(target.consumer, take)
            got = {sid for sid, _ in claimed}
            await self.rds.ack([sid for sid in take if sid not in got])  # trimmed meanwhile
            self._send(target, claimed, "disconnect")
        moved = await self.rds.release(holder.consumer, ORPHANS, self.config.visibility_ms)
        if moved:
            log.info(
                "group_member_released",
                collection=self.collection,
                group=self.group,
                entries=moved,
            )

    def is_empty(self) -> bool:
        return self.ledger.is_empty()

    # ------------------------------------------------------------------ ACK

    async def ack(self, member: Member, ack_id: str) -> None:
        sid = self.ledger.ack(member, ack_id)  # ClientError invalid_ack if not held
        self.wake.set()  # a slot is free
        metrics.GROUP_ACKS.inc()
        # a valid ACK answers an event the node chose to send, so it does not count against
        # the connection's message rate (else a member handling more than FANOUT_CLIENT_RATE
        # events/s would be closed as a flood and its events redelivered in a loop); invalid
        # ACKs are not refunded: a flood of them still closes the connection
        member.refund_token()
        self._acks.append(sid)
        self._schedule_acks()

    def _schedule_acks(self) -> None:
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
            except REDIS_ERRORS as exc:
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
        backoff = Backoff(self.config.retry_delay, cap=5.0)
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
                backoff.reset()
            except asyncio.CancelledError:
                raise
            except REDIS_ERRORS as exc:
                if is_nogroup(exc):
                    await self._recreate()
                    self.wake.set()
                    continue
                log.warning(
                    "group_pass_failed",
                    collection=self.collection,
                    group=self.group,
                    error=f"{type(exc).__name__}: {exc}"[:200],
                )
                await backoff.sleep()
                self.wake.set()
            except Exception:
                log.exception("group_pass_crashed", collection=self.collection, group=self.group)
                await asyncio.sleep(self.config.retry_delay)
                self.wake.set()

    async def _recreate(self) -> None:
        """The group vanished with its stream (retention expiry, a new epoch, an operator).
        Recreate it just after the newest position it surely had: later events are delivered,
        nothing it already delivered comes again. Held ids are kept for late ACKs."""
        with contextlib.suppress(*REDIS_ERRORS):
            async with self.lock:
                start = "{}-{}".format(*self.ledger.floor)
                await self.rds.ensure(start)
                self.epoch = await self.rds.epoch()
                self.ledger.reset()
                log.info(
                    "group_recreated", collection=self.collection, group=self.group, start=start
                )

    async def _deliver(self) -> None:
        while True:
            holder = self.ledger.next_holder()
            if holder is None:
                return
            want = self.ledger.free(holder)
            entries = await self.rds.read_new(holder.consumer, want)
            if not entries:
                return
            if holder.gone:
                return  # its release (waiting on the lock) moves them on
            if self.epoch is None:
                self.epoch = await self.rds.epoch()
            self._send(holder, entries, None)
            if len(entries) < want:
                return

    def _send(self, holder: Holder, entries: list[Entry], redelivery: str | None) -> None:
        if entries and not self.view.is_all:
            shown = {sid for sid, _ in visible(self.view, self.on_delete, entries)}
            if len(shown) < len(entries):
                hidden = [sid for sid, _ in entries if sid not in shown]
                self._acks.extend(hidden)  # nobody in this group may see them: done for it
                self._schedule_acks()
                metrics.GROUP_FILTERED.inc(len(hidden))
                entries = [e for e in entries if e[0] in shown]
        if not entries:
            return
        events = self.ledger.hand_out(
            holder, entries, self.epoch or "0", time.monotonic(), timeout=redelivery == "timeout"
        )
        holder.member.write_frame(Frame(group_event_frame(self.collection, events)))
        if redelivery is None:
            metrics.GROUP_DELIVERED.inc(len(events))
        else:
            metrics.GROUP_REDELIVERIES.labels(redelivery).inc(len(events))
        metrics.EVENTS_SENT.inc(len(events))
        metrics.FRAMES_SENT.inc()

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
            keep = [h.consumer for h in self.ledger.holders]
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
            holder = self.ledger.next_holder()
            if holder is None:
                return
            want = self.ledger.free(holder)
            got = await self.rds.autoclaim(holder.consumer, self.config.visibility_ms, start, want)
            if got.deleted:
                # trimmed by retention while pending: nothing to deliver, confirm them away
                await self.rds.ack(got.deleted)
                self.ledger.forget(got.deleted)
            self._send(holder, got.entries, "timeout")
            start = got.next_start
            if start == "0-0":
                return

    async def _reconcile(self) -> None:
        """A member holding entries past the visibility timeout may have lost them to another
        node's reclaim: free the slots of those no longer in its PEL (a late ACK is accepted)."""
        limit = time.monotonic() - self.config.visibility_ms / 1000
        for holder in self.ledger.overdue(limit):
            owned = set(await self.rds.pending_of(holder.consumer, len(holder.inflight) + 100))
            self.ledger.reconcile(holder, owned)
