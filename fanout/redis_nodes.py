"""Redis connections of a fanout node: a command client and sharded pub/sub listeners.

Each collection has a sharded channel (``SSUBSCRIBE``) in its own slot. A node holds one pub/sub
connection per Redis node that owns channels it needs — one in standalone mode, one per master
on a cluster — never one per collection and never one per client. When a listener's connection
breaks or its slot moves (the server pushes ``sunsubscribe``), the listener reconnects or the
channel is re-routed, and the hub is told to catch those collections up from their streams.

Reads go to ``REDIS_READ_URL`` when set (a regional replica: it holds the same stream ids and
receives the sharded messages through replication), else to ``REDIS_URL``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable
from typing import Any

import redis
import redis.asyncio
from redis.crc import key_slot

from common.backoff import Backoff
from common.config import RedisSettings
from common.logs import get_logger
from common.redis_conn import async_client, keepalive_kwargs
from fanout import metrics

log = get_logger("fanout.redis")

Batch = list[tuple[str, bytes]]  # (channel, payload) in arrival order
OnBatch = Callable[[Batch], None]
OnResync = Callable[[Iterable[str]], None]

MAX_DRAIN = 512  # notifications taken from one socket read burst before delivering


def by_slot(channels: Iterable[str]) -> list[list[str]]:
    """Channels grouped by cluster slot: on a cluster node one SSUBSCRIBE may only name channels
    of one slot (else CROSSSLOT, and the listener would reconnect forever)."""
    groups: dict[int, list[str]] = {}
    for ch in channels:
        groups.setdefault(key_slot(ch.encode()), []).append(ch)
    return list(groups.values())


class Listener:
    """Sharded pub/sub on one Redis node, read by one task."""

    def __init__(
        self,
        name: str,
        client: Any,
        on_batch: OnBatch,
        on_resync: OnResync,
        on_moved: Callable[[str], None],
        ping_interval: float,
        on_broken: Callable[[Listener], None] | None = None,
        pong_timeout: float = 2.0,
    ) -> None:
        self.name = name
        self.client = client
        self.on_batch = on_batch
        self.on_resync = on_resync
        self.on_moved = on_moved
        self.on_broken = on_broken
        self.ping_interval = ping_interval
        self.pong_timeout = pong_timeout
        self.channels: set[str] = set()
        self._confirm: dict[str, asyncio.Future[None]] = {}
        self._pubsub: Any = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self.connected = False
        self.last_ok = time.monotonic()
        self.last_error: str | None = None
        self._closing = False

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"listener:{self.name}")

    async def close(self) -> None:
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        await self._drop_pubsub()
        with contextlib.suppress(Exception):
            await self.client.aclose()

    async def add(self, channel: str, timeout: float) -> None:
        """Subscribe and wait until Redis confirms, so that reads made afterwards on another
        connection cannot miss an event that was announced before the subscription."""
        self.channels.add(channel)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._confirm[channel] = fut
        self.start()
        if self._pubsub is not None and self.connected:
            try:
                await self._pubsub.ssubscribe(channel)
            except (redis.RedisError, OSError) as exc:
                self._fail(exc)
        self._wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(fut), timeout)
        finally:
            if self._confirm.get(channel) is fut and fut.done():
                self._confirm.pop(channel, None)

    async def remove(self, channel: str) -> None:
        self.channels.discard(channel)
        fut = self._confirm.pop(channel, None)
        if fut is not None and not fut.done():
            fut.cancel()
        if self._pubsub is not None and self.connected:
            try:
                await self._pubsub.sunsubscribe(channel)
            except (redis.RedisError, OSError) as exc:
                self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        self.connected = False
        self.last_error = f"{type(exc).__name__}: {exc}"[:200]

    async def _drop_pubsub(self) -> None:
        ps, self._pubsub = self._pubsub, None
        self.connected = False
        if ps is not None:
            with contextlib.suppress(Exception):
                await ps.aclose()

    async def _connect(self) -> None:
        await self._drop_pubsub()
        ps = self.client.pubsub()
        self._pubsub = ps
        channels = list(self.channels)
        if channels:
            for group in by_slot(channels):
                await ps.ssubscribe(*group)
        else:
            await ps.ping()  # open the connection so health reflects reality
        self.connected = True
        # channels added while the SSUBSCRIBE above was in flight saw connected=False and left
        # their subscription to us (a burst of SUBSCRIBEs to new collections, e.g. after a drain)
        missed = self.channels.difference(channels)
        for group in by_slot(missed):
            await ps.ssubscribe(*group)
        self.last_ok = time.monotonic()
        self.last_error = None

    async def _run(self) -> None:
        backoff = Backoff()
        first = True
        while not self._closing:
            try:
                if not self.channels:
                    self._wake.clear()
                    if self._pubsub is not None:
                        await self._drop_pubsub()
                    self.connected = True  # nothing to read is not a failure
                    await self._wake.wait()
                    continue
                await self._connect()
                if not first:
                    metrics.REDIS_RECONNECTS.inc()
                    log.info("listener_reconnected", node=self.name, channels=len(self.channels))
                # whatever was announced while we were not listening is read from the streams
                self.on_resync(list(self.channels))
                first = False
                backoff.reset()
                await self._read_loop()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._fail(exc)
                log.warning("listener_error", node=self.name, error=self.last_error)
                await self._drop_pubsub()
                if self.on_broken is not None:
                    self.on_broken(self)
                await backoff.sleep()

    async def _read_loop(self) -> None:
        """Read notifications; after ``ping_interval`` of silence send a PING, and if nothing
        at all arrives within ``pong_timeout`` of it, give the connection up. The pub/sub socket
        has no read timeout (it waits on purpose), so this is what finds a Redis behind a
        partition: detection within ``ping_interval + pong_timeout`` of the last reply."""
        ps = self._pubsub
        last_seen = time.monotonic()
        ping_sent: float | None = None
        while not self._closing and self.channels:
            now = time.monotonic()
            if ping_sent is not None:
                wait = ping_sent + self.pong_timeout - now
                if wait <= 0:
                    raise TimeoutError(
                        f"no reply to PING in {self.pong_timeout:g}s: pub/sub connection is stale"
                    )
            else:
                wait = last_seen + self.ping_interval - now
                if wait <= 0:
                    # bounded: even a send buffer full of a dead peer's data cannot hold us
                    await asyncio.wait_for(ps.ping(), self.pong_timeout)
                    ping_sent = now
                    continue
            msg = await ps.get_message(timeout=max(wait, 0.001))
            if msg is None:
                continue
            last_seen = self.last_ok = time.monotonic()
            ping_sent = None  # any reply proves the connection alive
            batch: Batch = []
            while msg is not None:
                kind = msg["type"]
                if kind == "smessage":
                    ch = msg["channel"]
                    batch.append((ch.decode() if isinstance(ch, bytes) else ch, msg["data"]))
                elif kind != "pong":
                    self._control(kind, msg.get("channel"))
                if len(batch) >= MAX_DRAIN:
                    break
                msg = await ps.get_message(timeout=0)
            if batch:
                self.on_batch(batch)

    def _control(self, kind: str, channel: Any) -> None:
        if channel is None:
            return
        ch = channel.decode() if isinstance(channel, bytes) else str(channel)
        if kind == "ssubscribe":
            fut = self._confirm.pop(ch, None)
            if fut is not None and not fut.done():
                fut.set_result(None)
        elif kind == "sunsubscribe" and ch in self.channels:
            # not asked for: the slot moved to another node (resharding or failover)
            self.channels.discard(ch)
            self.on_moved(ch)

    def healthy(self, max_silence: float) -> tuple[bool, str]:
        if not self.connected:
            return False, f"{self.name}: {self.last_error or 'connecting'}"
        if self.channels and time.monotonic() - self.last_ok > max_silence:
            return False, f"{self.name}: no reply from Redis for {max_silence:.0f}s"
        return True, "ok"


class RedisNodes:
    """The node's Redis: ``cmd`` for stream reads, and listeners routed by channel slot."""

    def __init__(
        self,
        settings: RedisSettings,
        on_batch: OnBatch,
        on_resync: OnResync,
        *,
        ping_interval: float = 5.0,
        subscribe_timeout: float = 5.0,
    ) -> None:
        self.settings = settings
        self.on_batch = on_batch
        self.on_resync = on_resync
        self.ping_interval = ping_interval
        self.subscribe_timeout = subscribe_timeout
        url = settings.read_url or settings.url
        self.cluster = settings.cluster
        self.cmd: Any = async_client(settings, url=url)
        self._listeners: dict[str, Listener] = {}
        self._route: dict[str, str] = {}  # channel -> listener name
        # channels that carry no events but node-wide signals (revocations): their handlers
        self._control: dict[str, tuple[Callable[[bytes], None], Callable[[], None]]] = {}
        self._url = url
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        if self.cluster:
            await self.cmd.initialize()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for lst in list(self._listeners.values()):
            await lst.close()
        with contextlib.suppress(Exception):
            await self.cmd.aclose()

    def _listener_for(self, channel: str) -> Listener:
        if self.cluster:
            node = self.cmd.get_node_from_key(channel)
            name = f"{node.host}:{node.port}"
        else:
            name = "main"
        lst = self._listeners.get(name)
        if lst is None:
            if self.cluster:
                host, port = name.rsplit(":", 1)
                client = redis.asyncio.Redis(
                    host=host,
                    port=int(port),
                    socket_connect_timeout=self.settings.connect_timeout,
                    socket_timeout=None,
                    **keepalive_kwargs(self.settings),
                )
            else:
                client = async_client(self.settings, url=self._url, blocking=True)
            lst = Listener(
                name,
                client,
                self._dispatch,
                self._resync,
                self._moved,
                self.ping_interval,
                self._broken if self.cluster else None,
                pong_timeout=self.settings.socket_timeout,
            )
            self._listeners[name] = lst
        return lst

    def _dispatch(self, batch: Batch) -> None:
        control = self._control
        if control and any(ch in control for ch, _ in batch):
            for ch, payload in batch:
                if ch in control:
                    control[ch][0](payload)
            batch = [item for item in batch if item[0] not in control]
            if not batch:
                return
        self.on_batch(batch)

    def _resync(self, channels: Iterable[str]) -> None:
        events = []
        for ch in channels:
            handlers = self._control.get(ch)
            if handlers is not None:
                handlers[1]()
            else:
                events.append(ch)
        if events:
            self.on_resync(events)

    async def subscribe_control(
        self, channel: str, on_message: Callable[[bytes], None], on_resync: Callable[[], None]
    ) -> None:
        """Listen to a node-wide signal channel: ``on_message`` per message, ``on_resync``
        after a reconnect (messages may have been missed)."""
        self._control[channel] = (on_message, on_resync)
        await self.subscribe(channel)

    async def subscribe(self, channel: str) -> None:
        lst = self._listener_for(channel)
        self._route[channel] = lst.name
        await lst.add(channel, self.subscribe_timeout)

    async def unsubscribe(self, channel: str) -> None:
        name = self._route.pop(channel, None)
        lst = self._listeners.get(name) if name else None
        if lst is not None:
            await lst.remove(channel)

    def _moved(self, channel: str) -> None:
        task = asyncio.create_task(self._reroute(channel))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _broken(self, lst: Listener) -> None:
        """A cluster node stopped answering: after a failover its slots have a new owner."""
        if getattr(self, "_rechecking", False):
            return
        self._rechecking = True
        task = asyncio.create_task(self._recheck_routes(lst))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _recheck_routes(self, lst: Listener) -> None:
        try:
            await self.cmd.nodes_manager.initialize()
        except Exception as exc:
            log.warning("cluster_refresh_failed", error=str(exc)[:200])
            return
        finally:
            self._rechecking = False
        for channel in list(lst.channels):
            node = self.cmd.get_node_from_key(channel)
            if f"{node.host}:{node.port}" != lst.name:
                await lst.remove(channel)
                self._moved(channel)

    async def _reroute(self, channel: str) -> None:
        """A slot moved: refresh the cluster map, subscribe on the new owner, catch up."""
        backoff = Backoff()
        while channel in self._route:
            try:
                if self.cluster:
                    await self.cmd.nodes_manager.initialize()
                await self.subscribe(channel)
                log.info("channel_rerouted", channel=channel, node=self._route.get(channel))
                self._resync([channel])
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("reroute_failed", channel=channel, error=str(exc)[:200])
                await backoff.sleep()

    def health(self) -> tuple[bool, str]:
        # a listener pings after ping_interval of silence and gives up pong_timeout later; a
        # longer silence means its loop is stuck, which /ready must show too
        max_silence = self.ping_interval + self.settings.socket_timeout + 1.0
        for lst in self._listeners.values():
            ok, why = lst.healthy(max_silence)
            if not ok:
                return False, why
        return True, "ok"

    def listener_names(self) -> list[str]:
        return list(self._listeners)
