"""Consumer groups (the SDK's ``group`` option) across fanout nodes, on Redis Streams groups.

Each (database, collection, group) is a Redis consumer group on the collection's stream, so
members on every node share one position and one pending entries list: each event goes to one
member, whichever node it is on. This node runs a :class:`GroupWorker` per group it has
members of; each member (a connection) is its own Redis consumer ``<node id>:<connection>``.

At-least-once: an event stays pending until its member ACKs it; a member that leaves hands its
pending events on at once, and every node reclaims events idle past the visibility timeout
(silent members, crashed nodes). Group commands are writes, so they go to ``REDIS_URL`` (the
primary), never to ``REDIS_READ_URL``. Plain subscribers are untouched: groups are a separate
read of the same stream.

Implements the session's ``GroupsPort``; ``fanout/__main__.py`` calls :func:`build`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import secrets
from typing import Any

import redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from common.keys import collection_keys
from common.logs import get_logger
from common.redis_conn import async_client
from fanout import metrics
from fanout.groups_redis import GroupRedis
from fanout.groups_worker import GroupConfig, GroupError, GroupWorker
from fanout.settings import FanoutSettings

log = get_logger("fanout.groups")

__all__ = ["GroupError", "Groups", "build", "config_from"]

GroupKey = tuple[str, str, str]  # (database, collection, group)


def _group_client(settings: FanoutSettings) -> Any:
    """The primary (``REDIS_URL``; group reads are writes), retrying a command a few times on a
    connection error: after a Redis restart the first command on each pooled connection fails,
    and a lost XACK would mean a needless redelivery. Retrying is safe here: XACK and the
    scripts are idempotent, and an XREADGROUP whose reply was lost leaves its entries pending,
    to be reclaimed after the visibility timeout."""
    client = async_client(settings.common.redis)
    client.set_retry(Retry(ExponentialBackoff(cap=0.5, base=0.05), 3))
    return client


def config_from(settings: FanoutSettings) -> GroupConfig:
    visibility = settings.group_visibility_seconds
    period = max(0.05, settings.group_reclaim_seconds or min(5.0, visibility / 4))
    return GroupConfig(
        max_inflight=settings.group_max_inflight,
        visibility_ms=int(visibility * 1000),
        period=period,
        cleanup_period=max(period, min(60.0, visibility * 2)),
    )


class Groups:
    def __init__(self, hub: Any, settings: FanoutSettings, client: Any | None = None) -> None:
        self.hub = hub
        self.settings = settings
        self.config = config_from(settings)
        self.prefix = settings.common.redis.key_prefix
        self.retention_ms = settings.common.retention.max_age_ms
        self.client = client or _group_client(settings)
        self.node_id = secrets.token_hex(4)
        self.workers: dict[GroupKey, GroupWorker] = {}
        self.starting: dict[GroupKey, asyncio.Future[GroupWorker]] = {}
        self.memberships: dict[Any, set[GroupKey]] = {}
        self.consumers: dict[Any, str] = {}
        self._seq = itertools.count(1)
        # collections this node made or served groups of, still to be swept for idle groups
        # after their last member is gone (else a group abandoned on a busy collection, whose
        # stream never expires, would stay forever)
        self.swept: set[tuple[str, str]] = set()
        self._janitor: asyncio.Task[None] | None = None

    def consumer_of(self, member: Any) -> str:
        name = self.consumers.get(member)
        if name is None:
            name = self.consumers[member] = f"{self.node_id}:{next(self._seq)}"
        return name

    # ------------------------------------------------------------------ GroupsPort

    async def subscribe(
        self, member: Any, db: str, collection: str, group: str, last_id: str | None
    ) -> str:
        """Join ``group``; a new group starts at the end of the stream (``$``: events from now
        on), or at its oldest retained event when the SUBSCRIBE says ``lastId: "0"``."""
        key = (db, collection, group)
        worker = await self._worker(key, "0" if last_id == "0" else "$")
        try:
            last = await worker.rds.last_id()
        except (redis.RedisError, OSError):
            raise GroupError(
                "redis_unavailable", "the event store is unavailable; retry later"
            ) from None
        if worker.stopped:  # emptied and stopped while we waited: join a fresh one
            worker = await self._worker(key, "$")
        if worker.add(member, self.consumer_of(member)):
            self.memberships.setdefault(member, set()).add(key)
        return last

    async def ack(self, member: Any, db: str, collection: str, group: str, ack_id: str) -> None:
        worker = self.workers.get((db, collection, group))
        if worker is None or member not in worker.by_session:
            raise GroupError(
                "invalid_ack",
                f"this connection is not a member of group {group!r} of {collection!r}",
            )
        await worker.ack(member, ack_id)

    async def unsubscribe(self, member: Any, db: str, collection: str, group: str) -> bool:
        key = (db, collection, group)
        keys = self.memberships.get(member)
        if keys is not None:
            keys.discard(key)
            if not keys:
                self.memberships.pop(member, None)
                self.consumers.pop(member, None)
        return await self._leave(member, key)

    async def remove(self, member: Any) -> None:
        keys = self.memberships.pop(member, set())
        self.consumers.pop(member, None)
        for key in keys:
            await self._leave(member, key)

    # ------------------------------------------------------------------ workers

    async def _worker(self, key: GroupKey, start_id: str) -> GroupWorker:
        worker = self.workers.get(key)
        if worker is not None:
            return worker
        pending = self.starting.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[GroupWorker] = asyncio.get_running_loop().create_future()
        self.starting[key] = future
        try:
            worker = await self._start_worker(key, start_id)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters get it through await
            raise
        else:
            self.workers[key] = worker
            self.swept.add((key[0], key[1]))
            if self._janitor is None:
                self._janitor = asyncio.create_task(self._janitor_loop(), name="groups-janitor")
            future.set_result(worker)
            return worker
        finally:
            self.starting.pop(key, None)

    async def _start_worker(self, key: GroupKey, start_id: str) -> GroupWorker:
        db, collection, group = key
        keys = collection_keys(db, collection, self.prefix)
        rds = GroupRedis(self.client, keys, group, self.retention_ms)
        worker = GroupWorker(rds, self.config, database=db, collection=collection, group=group)
        try:
            await worker.start(start_id)
            worker.unwatch = await self.hub.watch(db, collection, worker.poke)
        except (redis.RedisError, OSError, TimeoutError) as exc:
            await worker.stop()
            log.warning("group_start_failed", collection=collection, group=group, error=str(exc))
            raise GroupError(
                "redis_unavailable", "the event store is unavailable; retry later"
            ) from None
        except BaseException:
            await worker.stop()
            raise
        log.info("group_started", database=db, collection=collection, group=group)
        return worker

    async def _leave(self, member: Any, key: GroupKey) -> bool:
        worker = self.workers.get(key)
        if worker is None:
            return False
        left = await worker.remove(member)
        if worker.is_empty() and self.workers.get(key) is worker:
            del self.workers[key]
            await worker.stop()
        return left

    async def _janitor_loop(self) -> None:
        """Every cleanup period, destroy groups idle past retention on collections this node
        served groups of but has no member of any more; forget a collection once it has no
        groups left (collections with members are swept by their workers)."""
        while True:
            await asyncio.sleep(self.config.cleanup_period)
            active = {(db, coll) for db, coll, _ in self.workers}
            for db, coll in list(self.swept - active):
                try:
                    keys = collection_keys(db, coll, self.prefix)
                    rds = GroupRedis(self.client, keys, "", self.retention_ms)
                    destroyed, remaining = await rds.cleanup()
                except (redis.RedisError, OSError) as exc:
                    log.warning("group_sweep_failed", collection=coll, error=type(exc).__name__)
                    break
                if destroyed:
                    log.info("groups_destroyed_idle", collection=coll, groups=destroyed)
                    metrics.GROUP_DESTROYED.inc(len(destroyed))
                if remaining == 0:
                    self.swept.discard((db, coll))

    async def stop(self) -> None:
        """Graceful exit: hand every remaining member's events on, then close."""
        if self._janitor is not None:
            self._janitor.cancel()
        for member in list(self.memberships):
            with contextlib.suppress(Exception):
                await self.remove(member)
        for worker in list(self.workers.values()):
            await worker.stop()
        self.workers.clear()
        with contextlib.suppress(Exception):
            await self.client.aclose()


def build(hub: Any, settings: FanoutSettings) -> Groups:
    return Groups(hub, settings)
