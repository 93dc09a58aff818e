"""The hub: where events leave Redis for this node's clients (the I/O around the cursor).

One :class:`Stream` per collection this node serves holds its cursor (``fanout/cursor.py``)
and its live recipients (``fanout/recipients.py``). Live events arrive as sharded pub/sub
notifications (``fanout/redis_nodes.py``); the cursor says which to deliver, which are
duplicates, and where a gap must be read from the stream, so a dropped Redis connection costs
latency, never events. A sweep compares every cursor with Redis every few seconds as a safety
net for a notification lost without a reconnect.

A SUBSCRIBE with a lastId is replayed from the stream in pages up to the cursor, then joins
the live set in the same step as the last "caught up?" check (no await in between): no gap,
no duplicate.

Why one module of ~450 lines: tracking, replay, live delivery, repair and the sweep all move
one Stream's state between awaits, and their correctness rests on where those awaits are
(join without an await after the last check; queue notifications while a repair reads);
splitting them would spread that invariant over files. The decisions themselves are in the
pure cursor.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any

import redis

from common.backoff import Backoff
from common.config import CommonSettings
from common.errors import StoreUnavailable
from common.layout import (
    META_EPOCH,
    META_FIELDS,
    META_SEQ,
    BadNotification,
    CollectionKeys,
    EventId,
    Notification,
    parse_notification,
)
from common.logs import get_logger
from common.messages import event_frame
from common.policy import View
from fanout import metrics
from fanout.cursor import Advance, CollectionCursor, Replay
from fanout.recipients import Event, OnDelete, Recipients, visible
from fanout.redis_nodes import Batch, RedisNodes
from fanout.wire import Member

log = get_logger("fanout.hub")

REDIS_ERRORS = (redis.RedisError, OSError)


@dataclass(frozen=True)
class HubSettings:
    replay_page: int = 500  # events read per XRANGE and sent per frame during replay
    max_buffer_bytes: int = 1_048_576  # a member over this is closed as a slow consumer
    max_frame_events: int = 100  # live events per frame
    sweep_interval: float = 5.0  # safety net: re-read streams even without a notification
    linger: float = 5.0  # keep reading a collection this long after its last member left
    ping_interval: float = 5.0  # Redis pub/sub liveness check
    # reads made for SUBSCRIBEs in flight at once; a reconnect storm queues here instead of
    # exhausting the Redis connection pool (whose overflow would fail SUBSCRIBEs)
    max_concurrent_reads: int = 48
    # reading a replica (REDIS_READ_URL): how long a SUBSCRIBE whose lastId the replica has not
    # applied yet waits for replication before the position is called unknown
    replica_wait: float = 5.0


@dataclass(frozen=True)
class SubscribeOutcome:
    last_id: str
    recovered: bool


@dataclass(eq=False)
class Stream:
    """What this node knows of one collection, and who receives it live."""

    keys: CollectionKeys
    cursor: CollectionCursor
    recipients: Recipients = field(default_factory=Recipients)
    watchers: set[Callable[[], None]] = field(default_factory=set)  # told of each new batch
    joining: int = 0  # subscribes in progress (keep the stream tracked meanwhile)
    initialized: bool = False
    ready: asyncio.Future[None] | None = None
    pending: list[Notification] = field(default_factory=list)
    repairing: bool = False
    linger: asyncio.TimerHandle | None = None

    @property
    def busy(self) -> bool:
        return bool(self.recipients or self.watchers or self.joining)


class Hub:
    def __init__(self, settings: HubSettings, common: CommonSettings) -> None:
        self.settings = settings
        self.prefix = common.redis.key_prefix
        self.reads_replica = common.redis.read_url is not None
        self.redis = RedisNodes(
            common.redis, self._on_batch, self._on_resync, ping_interval=settings.ping_interval
        )
        self.streams: dict[str, Stream] = {}  # by channel name
        self._tasks: set[asyncio.Task[Any]] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self._last_read_error: str | None = None
        self._reads = asyncio.Semaphore(settings.max_concurrent_reads)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        await self.redis.start()
        self._sweeper = asyncio.create_task(self._sweep_loop(), name="hub-sweeper")

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        for task in list(self._tasks):
            task.cancel()
        await self.redis.close()

    def readiness(self) -> tuple[bool, str]:
        ok, why = self.redis.health()
        if not ok:
            return False, why
        if self._last_read_error is not None:
            return False, self._last_read_error
        return True, "ok"

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ subscriptions

    async def subscribe(
        self,
        member: Member,
        keys: CollectionKeys,
        last_id: str | None,
        view: View = View.ALL,
        on_delete: OnDelete = "filter",
    ) -> SubscribeOutcome:
        """Replay what the member missed after ``last_id``, then deliver live: only what
        ``view`` may see, with the ids of the collection (a filtered member sees gaps in seq;
        ``recovered`` still says whether anything after its lastId was lost)."""
        stream = await self._track(keys)
        stream.recipients.on_delete = on_delete
        stream.joining += 1
        try:
            recovered = await self._replay_and_join(member, stream, last_id, view)
        finally:
            stream.joining -= 1
            self._maybe_linger(stream)
        metrics.SUBSCRIPTIONS.inc()
        if not recovered:
            metrics.NOT_RECOVERED.inc()
        return SubscribeOutcome(stream.cursor.last_id, recovered)

    def last_id(self, keys: CollectionKeys) -> str:
        """The newest event delivered here (a repeated SUBSCRIBE is answered with it)."""
        stream = self.streams.get(keys.channel)
        return stream.cursor.last_id if stream is not None else "0"

    def leave(self, member: Member, keys: CollectionKeys, view: View = View.ALL) -> bool:
        stream = self.streams.get(keys.channel)
        if stream is None or not stream.recipients.discard(member, view):
            return False
        metrics.SUBSCRIPTIONS.dec()
        self._maybe_linger(stream)
        return True

    def change_view(
        self, member: Member, keys: CollectionKeys, old: View, new: View, on_delete: OnDelete
    ) -> None:
        """The policy changed (SIGHUP): the member receives what ``new`` lets it see from the
        next event on."""
        stream = self.streams.get(keys.channel)
        if stream is not None and stream.recipients.discard(member, old):
            stream.recipients.add(member, new)
            stream.recipients.on_delete = on_delete

    async def watch(self, keys: CollectionKeys, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` (sync, cheap) whenever new events of the collection arrive; used by
        consumer groups to wake their readers without a blocking read per group. Returns the
        function that stops watching."""
        stream = await self._track(keys)
        stream.watchers.add(callback)

        def unwatch() -> None:
            stream.watchers.discard(callback)
            self._maybe_linger(stream)

        return unwatch

    # ------------------------------------------------------------------ tracking a collection

    async def _track(self, keys: CollectionKeys) -> Stream:
        stream = self.streams.get(keys.channel)
        if stream is None:
            stream = Stream(keys=keys, cursor=CollectionCursor(self.settings.max_frame_events))
            stream.ready = asyncio.get_running_loop().create_future()
            self.streams[keys.channel] = stream
            metrics.STREAMS.set(len(self.streams))
            try:
                await self.redis.subscribe(keys.channel)
                await self._load_cursor(stream)
            except BaseException as exc:
                self.streams.pop(keys.channel, None)
                metrics.STREAMS.set(len(self.streams))
                with contextlib.suppress(Exception):
                    await self.redis.unsubscribe(keys.channel)
                stream.ready.set_exception(StoreUnavailable())
                stream.ready.exception()  # mark retrieved
                if isinstance(exc, (*REDIS_ERRORS, TimeoutError)):
                    raise StoreUnavailable() from None
                raise
            stream.initialized = True
            stream.ready.set_result(None)
            pending, stream.pending = stream.pending, []
            if pending:
                self._advance(stream, stream.cursor.on_notifications(pending))
        elif stream.ready is not None and not stream.ready.done():
            await asyncio.shield(stream.ready)
        if stream.linger is not None:
            stream.linger.cancel()
            stream.linger = None
        return stream

    async def _load_cursor(self, stream: Stream) -> None:
        async with self._reads:
            epoch, seq, ms = await self.redis.cmd.hmget(stream.keys.meta, *META_FIELDS)
        stream.cursor.load(
            epoch.decode() if epoch is not None else None, int(seq or 0), int(ms or 0)
        )

    def _maybe_linger(self, stream: Stream) -> None:
        if stream.busy or stream.linger is not None:
            return
        if self.streams.get(stream.keys.channel) is not stream:
            return
        loop = asyncio.get_running_loop()
        stream.linger = loop.call_later(self.settings.linger, self._untrack, stream)

    def _untrack(self, stream: Stream) -> None:
        stream.linger = None
        if stream.busy or self.streams.get(stream.keys.channel) is not stream:
            return
        del self.streams[stream.keys.channel]
        metrics.STREAMS.set(len(self.streams))
        self._spawn(self._release(stream.keys.channel))

    async def _release(self, channel: str) -> None:
        if channel not in self.streams:  # not re-subscribed meanwhile
            await self.redis.unsubscribe(channel)

    # ------------------------------------------------------------------ replay, then live

    async def _replay_and_join(
        self, member: Member, stream: Stream, last_id: str | None, view: View
    ) -> bool:
        """Send what the member missed, then add it to the live set. True if recovered."""
        plan = Replay.parse(last_id)
        if plan.after is not None and self.reads_replica:
            await self._wait_for_replica(stream, plan.after)
        cursor = stream.cursor
        plan.start(cursor)
        sent = 0
        while (rng := plan.next_range(cursor)) is not None:
            entries = await self._xrange(stream.keys.stream, *rng)
            events = visible(view, stream.recipients.on_delete, plan.on_page(cursor, entries))
            if events:
                await member.send_frame(event_frame(stream.keys.collection, events))
                sent += len(events)
        stream.recipients.add(member, view)  # no await since the last check: no gap, no dup
        if not plan.live:
            metrics.REPLAY_EVENTS.observe(sent)
        return plan.recovered

    async def _wait_for_replica(self, stream: Stream, last: EventId) -> None:
        """A client moving here from a region that reads the primary may hold an id that this
        node's replica has not applied yet (replication lags). Wait, bounded, for the cursor to
        reach it (live notifications advance it), instead of replaying the whole collection."""
        deadline = time.monotonic() + self.settings.replica_wait
        while time.monotonic() < deadline:
            if stream.cursor.has_reached(last):
                return
            await asyncio.sleep(0.02)
        log.info(
            "replica_behind_client", collection=stream.keys.collection, cursor=stream.cursor.seq
        )

    async def _xrange(self, key: str, start: str, end: str) -> list[Any]:
        try:
            async with self._reads:
                page = self.settings.replay_page
                return list(await self.redis.cmd.xrange(key, min=start, max=end, count=page))
        except REDIS_ERRORS as exc:
            raise StoreUnavailable() from exc

    # ------------------------------------------------------------------ live delivery

    def _on_batch(self, batch: Batch) -> None:
        """Notifications from one listener, in arrival order: group per collection, deliver."""
        by_channel: dict[str, list[Notification]] = {}
        now_ms = time.time() * 1000
        for channel, payload in batch:
            try:
                note = parse_notification(payload)
            except BadNotification as exc:
                log.warning("bad_notification", channel=channel, error=str(exc))
                continue
            by_channel.setdefault(channel, []).append(note)
            metrics.READ_LAG.observe(max(0.0, (now_ms - note.ms) / 1000))
        metrics.EVENTS_READ.inc(sum(len(v) for v in by_channel.values()))
        for channel, notes in by_channel.items():
            stream = self.streams.get(channel)
            if stream is None:
                continue
            if not stream.initialized or stream.repairing:
                stream.pending.extend(notes)
                continue
            self._advance(stream, stream.cursor.on_notifications(notes))

    def _advance(self, stream: Stream, step: Advance) -> None:
        """Do what the cursor said: log what it saw, deliver, and read a gap if there is one."""
        collection = stream.keys.collection
        for old, new in step.epoch_changes:
            # a new epoch: Redis lost the collection's data and started over
            (log.warning if old else log.info)(
                "epoch_changed", collection=collection, old=old, new=new
            )
        for cursor_seq, seq in step.went_back:
            log.warning("stream_went_back", collection=collection, cursor=cursor_seq, seq=seq)
        for after, nxt in step.trimmed:
            log.warning("live_gap_trimmed", collection=collection, after=after, next=nxt)
        for events in step.batches:
            self._flush(stream, events)
        if step.gap is not None:
            stream.pending = step.gap
            if not stream.repairing:
                stream.repairing = True
                metrics.GAP_REPAIRS.inc()
                self._spawn(self._repair(stream))

    def _flush(self, stream: Stream, events: list[Event]) -> None:
        for callback in list(stream.watchers):
            try:
                callback()
            except Exception:
                log.exception("watcher_failed", collection=stream.keys.collection)
        if not stream.recipients:
            return
        frames, sent, slow = stream.recipients.deliver(
            stream.keys.collection, events, self.settings.max_buffer_bytes
        )
        metrics.FRAMES_SENT.inc(frames)
        metrics.EVENTS_SENT.inc(sent)
        for member in slow:
            self.leave(member, stream.keys)
            metrics.SLOW_CLOSES.inc()
            try:
                member.overflowed()
            except Exception:
                log.exception("overflow_handler_failed")

    # ------------------------------------------------------------------ gap repair

    async def _repair(self, stream: Stream, *, reload_meta: bool = False) -> None:
        """Read the stream from the cursor to its end, deliver, then the queued notifications."""
        backoff = Backoff()
        cursor = stream.cursor
        page = self.settings.replay_page
        try:
            while self.streams.get(stream.keys.channel) is stream:
                try:
                    if reload_meta:
                        epoch = await self.redis.cmd.hget(stream.keys.meta, META_EPOCH)
                        self._advance(stream, self._epoch_step(stream, epoch))
                        reload_meta = False
                    while True:
                        entries = await self.redis.cmd.xrange(
                            stream.keys.stream, min=cursor.read_start(), max="+", count=page
                        )
                        if not entries:
                            break
                        self._advance(stream, cursor.on_entries(entries))
                        metrics.EVENTS_READ.inc(len(entries))
                        if len(entries) < page:
                            break
                    self._last_read_error = None
                    break
                except REDIS_ERRORS as exc:
                    self._last_read_error = f"stream read failed: {type(exc).__name__}"
                    await backoff.sleep()
        finally:
            stream.repairing = False
        pending, stream.pending = stream.pending, []
        if pending:
            self._advance(stream, cursor.on_notifications(pending))

    @staticmethod
    def _epoch_step(stream: Stream, raw: bytes | None) -> Advance:
        step = Advance()
        changed = stream.cursor.on_meta_epoch(raw.decode() if raw is not None else None)
        if changed is not None:
            step.epoch_changes.append(changed)
        return step

    def _start_catch_up(self, stream: Stream) -> None:
        if not stream.initialized or stream.repairing:
            return
        if self.streams.get(stream.keys.channel) is not stream:
            return
        stream.repairing = True
        self._spawn(self._repair(stream, reload_meta=True))

    def _on_resync(self, channels: Iterable[str]) -> None:
        """A listener (re)connected: read whatever was announced while it was away."""
        for channel in channels:
            stream = self.streams.get(channel)
            if stream is not None:
                self._start_catch_up(stream)

    async def _sweep_loop(self) -> None:
        """Safety net for a notification lost without a reconnect: compare each collection's
        seq in Redis with the cursor every few seconds and catch up when Redis is ahead."""
        while True:
            await asyncio.sleep(self.settings.sweep_interval)
            try:
                await self._sweep()
                self._last_read_error = None
            except asyncio.CancelledError:
                raise
            except REDIS_ERRORS as exc:
                self._last_read_error = f"sweep failed: {type(exc).__name__}"
            except Exception:
                log.exception("sweep_failed")

    async def _sweep(self) -> None:
        await self.redis.cmd.ping()  # readiness also covers a node with nothing subscribed
        items = [st for st in self.streams.values() if st.initialized and not st.repairing]
        for i in range(0, len(items), 500):
            chunk = items[i : i + 500]
            pipe = (
                self.redis.cmd.pipeline()
                if self.redis.cluster
                else self.redis.cmd.pipeline(transaction=False)
            )
            for stream in chunk:
                pipe.hmget(stream.keys.meta, META_EPOCH, META_SEQ)
            results = await pipe.execute()
            for stream, (epoch, seq) in zip(chunk, results, strict=True):
                decoded = epoch.decode() if epoch is not None else None
                if stream.cursor.is_behind(decoded, int(seq or 0)):
                    self._start_catch_up(stream)
