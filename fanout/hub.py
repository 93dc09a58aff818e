"""The hub: where events leave Redis for this node's clients.

One :class:`StreamState` per collection this node serves holds the cursor (epoch, seq, ms of the
last event delivered to its live members) and the members. Live events arrive as sharded pub/sub
notifications (fanout/redis_nodes.py); a notification whose seq is cursor+1 is delivered at once,
one already seen is dropped, and a jump means notifications were missed: the gap is read from the
collection's stream, so a dropped Redis connection costs latency, never events.

Delivery encodes each batch once (all events of one collection that arrived together share one
frame) and writes it to every live member with ``websockets.broadcast``. A member whose send
buffer is over the cap is not written to but closed (``member.overflowed()``): it resumes from
its lastId elsewhere, so skipping it loses nothing and keeps the node's memory bounded.

SUBSCRIBE with a lastId replays from the stream in pages up to the cursor, then joins the live set
in the same step as the last "caught up?" check (no await in between): no gap, no duplicate.

Interface used by the session layer:

    hub = Hub(settings, common); await hub.start(); await hub.stop()
    hub.readiness() -> (ok, reason)
    await hub.subscribe(member, db, collection, last_id) -> SubscribeOutcome(last_id, recovered)
    hub.unsubscribe(member, db, collection) -> bool;  hub.remove(member)

A member needs ``member.conn`` (a websockets ServerConnection) and ``member.overflowed()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import redis

from common.config import CommonSettings
from common.events import DATA_FIELD, BadNotification, Notification, parse_notification
from common.ids import EventId, InvalidEventId, StreamState, is_recoverable, split_stream_id
from common.keys import CollectionKeys, collection_keys
from common.logs import get_logger
from common.messages import event_frame
from fanout import metrics
from fanout.redis_nodes import Batch, RedisNodes
from fanout.wire import broadcast_text

log = get_logger("fanout.hub")


class Member(Protocol):
    conn: Any

    def overflowed(self) -> None: ...


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


class SubscribeError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class SubscribeOutcome:
    last_id: str
    recovered: bool


@dataclass(eq=False)
class Stream:
    """What this node knows of one collection, and who receives it live."""

    keys: CollectionKeys
    epoch: str | None = None
    seq: int = 0
    ms: int = 0
    members: set[Any] = field(default_factory=set)
    watchers: set[Callable[[], None]] = field(default_factory=set)  # told of each new batch
    joining: int = 0  # subscribes in progress (keep the stream tracked meanwhile)
    initialized: bool = False
    ready: asyncio.Future[None] | None = None
    pending: list[Notification] = field(default_factory=list)
    repairing: bool = False
    linger: asyncio.TimerHandle | None = None

    @property
    def last_id(self) -> str:
        if self.epoch is None or self.seq == 0:
            return "0"
        return f"{self.ms}-{self.seq}@{self.epoch}"

    @property
    def cursor_sid(self) -> str:
        return f"{self.ms}-{self.seq}"


class Hub:
    def __init__(self, settings: HubSettings, common: CommonSettings) -> None:
        self.settings = settings
        self.prefix = common.redis.key_prefix
        self.reads_replica = common.redis.read_url is not None
        self.redis = RedisNodes(
            common.redis, self._on_batch, self._on_resync, ping_interval=settings.ping_interval
        )
        self.streams: dict[str, Stream] = {}  # by channel name
        self.member_streams: dict[Any, set[str]] = {}
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

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ subscriptions

    async def subscribe(
        self, member: Member, database: str, collection: str, last_id: str | None
    ) -> SubscribeOutcome:
        keys = collection_keys(database, collection, self.prefix)
        stream = self.streams.get(keys.channel)
        if stream is not None and member in stream.members:
            # the SDK sends SUBSCRIBE again on an open socket: never replay twice
            return SubscribeOutcome(stream.last_id, True)
        stream = await self._track(keys)
        stream.joining += 1
        try:
            recovered = await self._replay_and_join(member, stream, last_id)
        finally:
            stream.joining -= 1
            self._maybe_linger(stream)
        self.member_streams.setdefault(member, set()).add(keys.channel)
        metrics.SUBSCRIPTIONS.inc()
        if not recovered:
            metrics.NOT_RECOVERED.inc()
        return SubscribeOutcome(stream.last_id, recovered)

    def unsubscribe(self, member: Member, database: str, collection: str) -> bool:
        keys = collection_keys(database, collection, self.prefix)
        return self._leave(member, keys.channel)

    def remove(self, member: Member) -> None:
        for channel in list(self.member_streams.get(member, ())):
            self._leave(member, channel)
        self.member_streams.pop(member, None)

    def _leave(self, member: Member, channel: str) -> bool:
        stream = self.streams.get(channel)
        chans = self.member_streams.get(member)
        if chans is not None:
            chans.discard(channel)
            if not chans:
                self.member_streams.pop(member, None)
        if stream is None or member not in stream.members:
            return False
        stream.members.discard(member)
        metrics.SUBSCRIPTIONS.dec()
        self._maybe_linger(stream)
        return True

    async def watch(
        self, database: str, collection: str, callback: Callable[[], None]
    ) -> Callable[[], None]:
        """Call ``callback`` (sync, cheap) whenever new events of the collection arrive; used by
        consumer groups to wake their readers without a blocking read per group. Returns the
        function that stops watching."""
        keys = collection_keys(database, collection, self.prefix)
        stream = await self._track(keys)
        stream.watchers.add(callback)

        def unwatch() -> None:
            stream.watchers.discard(callback)
            self._maybe_linger(stream)

        return unwatch

    def subscription_count(self, member: Member) -> int:
        return len(self.member_streams.get(member, ()))

    # ------------------------------------------------------------------ tracking a collection

    async def _track(self, keys: CollectionKeys) -> Stream:
        stream = self.streams.get(keys.channel)
        if stream is None:
            stream = Stream(keys=keys)
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
                stream.ready.set_exception(
                    SubscribeError("redis_unavailable", "event store unavailable, retry later")
                )
                stream.ready.exception()  # mark retrieved
                if isinstance(exc, redis.RedisError | OSError | TimeoutError):
                    raise SubscribeError(
                        "redis_unavailable", "the event store is unavailable; retry later"
                    ) from None
                raise
            stream.initialized = True
            stream.ready.set_result(None)
            pending, stream.pending = stream.pending, []
            if pending:
                self._deliver_notes(stream, pending)
        elif stream.ready is not None and not stream.ready.done():
            await asyncio.shield(stream.ready)
        if stream.linger is not None:
            stream.linger.cancel()
            stream.linger = None
        return stream

    async def _load_cursor(self, stream: Stream) -> None:
        async with self._reads:
            epoch, seq, ms = await self.redis.cmd.hmget(stream.keys.meta, "e", "q", "ms")
        if epoch is None:
            stream.epoch, stream.seq, stream.ms = None, 0, 0
            return
        stream.epoch = epoch.decode()
        stream.seq = int(seq or 0)
        stream.ms = int(ms or 0)

    def _maybe_linger(self, stream: Stream) -> None:
        if stream.members or stream.watchers or stream.joining or stream.linger is not None:
            return
        if self.streams.get(stream.keys.channel) is not stream:
            return
        loop = asyncio.get_running_loop()
        stream.linger = loop.call_later(self.settings.linger, self._untrack, stream)

    def _untrack(self, stream: Stream) -> None:
        stream.linger = None
        busy = stream.members or stream.watchers or stream.joining
        if busy or self.streams.get(stream.keys.channel) is not stream:
            return
        del self.streams[stream.keys.channel]
        metrics.STREAMS.set(len(self.streams))
        self._spawn(self._release(stream.keys.channel))

    async def _release(self, channel: str) -> None:
        if channel not in self.streams:  # not re-subscribed meanwhile
            await self.redis.unsubscribe(channel)

    # ------------------------------------------------------------------ replay, then live

    async def _replay_and_join(self, member: Member, stream: Stream, last_id: str | None) -> bool:
        """Send what the member missed, then add it to the live set. True if recovered."""
        if last_id in (None, "", "$"):
            stream.members.add(member)
            return True
        recovered = True
        pos_seq, pos_ms = 0, 0  # replay everything retained
        if last_id != "0":
            try:
                last = EventId.parse(last_id)
            except InvalidEventId:
                last = None
            if last is not None and self.reads_replica:
                await self._wait_for_replica(stream, last)
            if last is None or last.epoch != stream.epoch or last.seq > stream.seq:
                recovered = False  # not ours, another epoch, or ahead of Redis: replay all
            else:
                pos_seq, pos_ms = last.seq, last.ms
                if last.seq == stream.seq:
                    if last.ms != stream.ms:
                        recovered = False
                        pos_seq, pos_ms = 0, 0
                    else:
                        stream.members.add(member)
                        return True
        epoch = stream.epoch
        first = True
        sent = 0
        while True:
            if stream.epoch != epoch:  # Redis lost data during the replay: start over
                epoch, pos_seq, pos_ms, recovered, first = stream.epoch, 0, 0, False, False
            if pos_seq >= stream.seq:
                stream.members.add(member)  # no await since the check: no gap, no duplicate
                break
            start = f"({pos_ms}-{pos_seq}" if pos_seq else "-"
            entries = await self._xrange(stream.keys.stream, start, stream.cursor_sid)
            if stream.epoch != epoch:
                continue
            if first and pos_seq:
                first_seq = split_stream_id(entries[0][0])[1] if entries else None
                state = StreamState(epoch=stream.epoch, last_seq=stream.seq)
                recovered = recovered and is_recoverable(
                    EventId(pos_ms, pos_seq, epoch or ""), state, first_seq
                )
            first = False
            if not entries:
                # the rest up to the cursor is no longer retained
                if pos_seq < stream.seq:
                    recovered = False if pos_seq else recovered
                pos_seq, pos_ms = stream.seq, stream.ms
                continue
            events = [(f"{sid.decode()}@{epoch}", fields[DATA_FIELD]) for sid, fields in entries]
            await member.conn.send(event_frame(stream.keys.collection, events), text=True)
            sent += len(events)
            pos_ms, pos_seq = split_stream_id(entries[-1][0])
        metrics.REPLAY_EVENTS.observe(sent)
        return recovered

    async def _wait_for_replica(self, stream: Stream, last: EventId) -> None:
        """A client moving here from a region that reads the primary may hold an id that this
        node's replica has not applied yet (replication lags). Wait, bounded, for the cursor to
        reach it (live notifications advance it), instead of replaying the whole collection."""
        deadline = time.monotonic() + self.settings.replica_wait
        while time.monotonic() < deadline:
            if stream.epoch is not None and (stream.epoch != last.epoch or stream.seq >= last.seq):
                return
            await asyncio.sleep(0.02)
        log.info("replica_behind_client", collection=stream.keys.collection, cursor=stream.seq)

    async def _xrange(self, key: str, start: str, end: str) -> list[Any]:
        try:
            page = self.settings.replay_page
            async with self._reads:
                return list(await self.redis.cmd.xrange(key, min=start, max=end, count=page))
        except (redis.RedisError, OSError) as exc:
            raise SubscribeError(
                "redis_unavailable", "the event store is unavailable; retry later"
            ) from exc

    # ------------------------------------------------------------------ live delivery

    def _on_batch(self, batch: Batch) -> None:
        """Notifications from one listener, in arrival order: group per collection, deliver."""
        groups: dict[str, list[Notification]] = {}
        now_ms = time.time() * 1000
        for channel, payload in batch:
            try:
                note = parse_notification(payload)
            except BadNotification as exc:
                log.warning("bad_notification", channel=channel, error=str(exc))
                continue
            groups.setdefault(channel, []).append(note)
            metrics.READ_LAG.observe(max(0.0, (now_ms - note.ms) / 1000))
        metrics.EVENTS_READ.inc(sum(len(v) for v in groups.values()))
        for channel, notes in groups.items():
            stream = self.streams.get(channel)
            if stream is None:
                continue
            if not stream.initialized or stream.repairing:
                stream.pending.extend(notes)
                continue
            self._deliver_notes(stream, notes)

    def _deliver_notes(self, stream: Stream, notes: list[Notification]) -> None:
        ready: list[tuple[str, bytes]] = []
        for i, note in enumerate(notes):
            if note.epoch != stream.epoch:
                # a new epoch: Redis lost the collection's data and started over
                self._flush(stream, ready)
                ready = []
                (log.warning if stream.epoch else log.info)(
                    "epoch_changed",
                    collection=stream.keys.collection,
                    old=stream.epoch,
                    new=note.epoch,
                )
                stream.epoch, stream.seq, stream.ms = note.epoch, 0, 0
            if note.seq <= stream.seq:
                if note.ms <= stream.ms:
                    continue  # already delivered (catch-up read it first)
                self._diverged(stream, note.seq, note.ms)
            if note.seq != stream.seq + 1:
                self._flush(stream, ready)
                stream.pending = notes[i:]
                self._start_repair(stream)
                return
            ready.append((note.event_id, note.data))
            stream.seq, stream.ms = note.seq, note.ms
            if len(ready) >= self.settings.max_frame_events:
                self._flush(stream, ready)
                ready = []
        self._flush(stream, ready)

    def _flush(self, stream: Stream, events: list[tuple[str, bytes]]) -> None:
        if not events:
            return
        for callback in list(stream.watchers):
            try:
                callback()
            except Exception:
                log.exception("watcher_failed", collection=stream.keys.collection)
        if not stream.members:
            return
        frame = event_frame(stream.keys.collection, events)
        limit = self.settings.max_buffer_bytes
        conns = []
        slow = []
        for member in stream.members:
            transport = member.conn.transport
            if transport is not None and transport.get_write_buffer_size() > limit:
                slow.append(member)
            else:
                conns.append(member.conn)
        for member in slow:
            self.remove(member)
            metrics.SLOW_CLOSES.inc()
            try:
                member.overflowed()
            except Exception:
                log.exception("overflow_handler_failed")
        # the frame is encoded once and written to each transport (fanout/wire.py)
        broadcast_text(conns, frame)
        metrics.FRAMES_SENT.inc(len(conns))
        metrics.EVENTS_SENT.inc(len(conns) * len(events))

    # ------------------------------------------------------------------ gap repair

    def _start_repair(self, stream: Stream) -> None:
        if stream.repairing:
            return
        stream.repairing = True
        metrics.GAP_REPAIRS.inc()
        self._spawn(self._repair(stream))

    async def _repair(self, stream: Stream, *, reload_meta: bool = False) -> None:
        """Read the stream from the cursor to its end, deliver, then the queued notifications."""
        delay = 0.05
        try:
            while self.streams.get(stream.keys.channel) is stream:
                try:
                    if reload_meta:
                        await self._check_epoch(stream)
                        reload_meta = False
                    while True:
                        start = f"({stream.cursor_sid}" if stream.seq else "-"
                        entries = await self.redis.cmd.xrange(
                            stream.keys.stream, min=start, max="+", count=self.settings.replay_page
                        )
                        if not entries:
                            break
                        self._deliver_entries(stream, entries)
                        if len(entries) < self.settings.replay_page:
                            break
                    self._last_read_error = None
                    break
                except (redis.RedisError, OSError) as exc:
                    self._last_read_error = f"stream read failed: {type(exc).__name__}"
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 2.0)
        finally:
            stream.repairing = False
        pending, stream.pending = stream.pending, []
        if pending:
            self._deliver_notes(stream, pending)

    def _deliver_entries(self, stream: Stream, entries: list[Any]) -> None:
        events: list[tuple[str, bytes]] = []
        for sid, fields in entries:
            ms, seq = split_stream_id(sid)
            if seq <= stream.seq:
                if ms <= stream.ms:
                    continue
                self._diverged(stream, seq, ms)
            if seq != stream.seq + 1 and stream.seq:
                log.warning(
                    "live_gap_trimmed",
                    collection=stream.keys.collection,
                    after=stream.seq,
                    next=seq,
                )
            events.append((f"{ms}-{seq}@{stream.epoch}", fields[DATA_FIELD]))
            stream.seq, stream.ms = seq, ms
            if len(events) >= self.settings.max_frame_events:
                self._flush(stream, events)
                events = []
        self._flush(stream, events)
        metrics.EVENTS_READ.inc(len(entries))

    def _diverged(self, stream: Stream, seq: int, ms: int) -> None:
        """An event with a seq we passed but a later time: Redis lost its newest writes (a
        failover without WAIT) and reused their seqs. Follow Redis from here; the lost events are
        gone, and clients resuming from an id of theirs are told they were not recovered."""
        log.warning(
            "stream_went_back", collection=stream.keys.collection, cursor=stream.seq, seq=seq
        )
        stream.seq, stream.ms = seq - 1, ms

    async def _check_epoch(self, stream: Stream) -> None:
        epoch = await self.redis.cmd.hget(stream.keys.meta, "e")
        if epoch is None:
            return  # nothing in Redis (yet): the next notification brings the new epoch
        new = epoch.decode()
        if new != stream.epoch:
            log.warning(
                "epoch_changed", collection=stream.keys.collection, old=stream.epoch, new=new
            )
            stream.epoch, stream.seq, stream.ms = new, 0, 0

    def _on_resync(self, channels: Iterable[str]) -> None:
        """A listener (re)connected: read whatever was announced while it was away."""
        for channel in channels:
            stream = self.streams.get(channel)
            if stream is None or not stream.initialized or stream.repairing:
                continue
            stream.repairing = True
            self._spawn(self._repair(stream, reload_meta=True))

    async def _sweep_loop(self) -> None:
        """Safety net for a notification lost without a reconnect: compare each collection's
        seq in Redis with the cursor every few seconds and repair when Redis is ahead."""
        while True:
            await asyncio.sleep(self.settings.sweep_interval)
            try:
                await self._sweep()
                self._last_read_error = None
            except asyncio.CancelledError:
                raise
            except (redis.RedisError, OSError) as exc:
                self._last_read_error = f"sweep failed: {type(exc).__name__}"
            except Exception:
                log.exception("sweep_failed")

    async def _sweep(self) -> None:
        await self.redis.cmd.ping()  # readiness also covers a node with nothing subscribed
        items = [(ch, st) for ch, st in self.streams.items() if st.initialized and not st.repairing]
        for i in range(0, len(items), 500):
            chunk = items[i : i + 500]
            pipe = (
                self.redis.cmd.pipeline()
                if self.redis.cluster
                else self.redis.cmd.pipeline(transaction=False)
            )
            for _, stream in chunk:
                pipe.hmget(stream.keys.meta, "e", "q")
            results = await pipe.execute()
            for (channel, stream), (epoch, seq) in zip(chunk, results, strict=True):
                if epoch is None:
                    continue
                behind = epoch.decode() != stream.epoch or int(seq or 0) > stream.seq
                if behind and self.streams.get(channel) is stream and not stream.repairing:
                    stream.repairing = True
                    self._spawn(self._repair(stream, reload_meta=True))

    def describe(self) -> dict[str, Any]:
        return {
            "streams": len(self.streams),
            "members": len(self.member_streams),
            "redis_nodes": self.redis.listener_names(),
        }
