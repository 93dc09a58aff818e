"""Consumer groups (the SDK's ``group`` option) across fanout nodes, on Redis Streams groups.

Each (database, collection, group) is a Redis consumer group on the collection's stream, so
members on every node share one position and one pending entries list: each event goes to one
member, whichever node it is on. This node runs a :class:`GroupWorker` per group it has
members of; each member (a connection) is its own Redis consumer ``<node id>:<n>``.

At-least-once: an event stays pending until its member ACKs it; a member that leaves hands its
pending events on at once, and every node reclaims events idle past the visibility timeout
(silent members, crashed nodes). Group commands are writes, so they go to ``REDIS_URL`` (the
primary), never to ``REDIS_READ_URL``. Plain subscribers are untouched: groups are a separate
read of the same stream.

Implements ``fanout.subscriptions.GroupsPort``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import secrets
from typing import Any

from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from common.errors import ClientError, StoreUnavailable
from common.layout import CollectionKeys, collection_keys
from common.logs import get_logger
from common.policy import View
from common.redis_conn import async_client
from fanout import metrics
from fanout.groups_redis import GroupRedis
from fanout.groups_worker import REDIS_ERRORS, GroupConfig, GroupWorker
from fanout.hub import Hub
from fanout.recipients import OnDelete
from fanout.settings import FanoutSettings
from fanout.wire import Member

log = get_logger("fanout.groups")

GroupKey = tuple[str, str, str]  # (database, collection, Redis group name)


def redis_group(group: str, view: View) -> str:
    """The Redis consumer group of a client's ``group`` for members who see ``view``.

    Members whose filters let them see different events must never share one group's events,
    so each view has its own Redis group: ``<group>~<digest of the filter and its inputs>``
    (the same on every node); unfiltered members use ``<group>`` itself."""
    if view.filter is None:
        return group
    digest = hashlib.blake2b(repr((view.filter.rule.source, view.key)).encode(), digest_size=6)
    return f"{group}~{digest.hexdigest()}"


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
    def __init__(self, hub: Hub, settings: FanoutSettings, client: Any | None = None) -> None:
        self.hub = hub
        self.config = config_from(settings)
        self.prefix = settings.common.redis.key_prefix
        self.retention_ms = settings.common.retention.max_age_ms
        self.client = client or _group_client(settings)
        self.node_id = secrets.token_hex(4)
        self.workers: dict[GroupKey, GroupWorker] = {}
        self.starting: dict[GroupKey, asyncio.Future[GroupWorker]] = {}
        self._consumers = itertools.count(1)
        # collections this node made or served groups of, still to be swept for idle groups
        # after their last member is gone (else a group abandoned on a busy collection, whose
        # stream never expires, would stay forever)
        self.swept: set[tuple[str, str]] = set()
        self._janitor: asyncio.Task[None] | None = None

    def _new_consumer(self) -> str:
        return f"{self.node_id}:{next(self._consumers)}"

    # ------------------------------------------------------------------ GroupsPort

    async def join(
        self,
        member: Member,
        keys: CollectionKeys,
        group: str,
        last_id: str | None,
        view: View = View.ALL,
        on_delete: OnDelete = "filter",
    ) -> str:
        """Join ``group``; a new group starts at the end of the stream (``$``: events from now
        on), or at its oldest retained event when the SUBSCRIBE says ``lastId: "0"``. Returns
        the collection's newest event id, for SUBSCRIBED."""
        key = (keys.database, keys.collection, redis_group(group, view))
        start = "0" if last_id == "0" else "$"
        worker = await self._worker(key, start, view, on_delete)
        try:
            last = await worker.rds.last_id()
        except REDIS_ERRORS:
            raise StoreUnavailable() from None
        if worker.stopped:  # emptied and stopped while we waited: join a fresh one
            worker = await self._worker(key, "$", view, on_delete)
        worker.add(member)
        return last

    async def ack(
        self, member: Member, keys: CollectionKeys, group: str, view: View, ack_id: str
    ) -> None:
        worker = self.workers.get((keys.database, keys.collection, redis_group(group, view)))
        if worker is None:
            raise ClientError(
                "invalid_ack",
                f"this connection is not a member of group {group!r} of {keys.collection!r}",
            )
        await worker.ack(member, ack_id)

    async def leave(
        self, member: Member, keys: CollectionKeys, group: str, view: View = View.ALL
    ) -> bool:
        key = (keys.database, keys.collection, redis_group(group, view))
        worker = self.workers.get(key)
        if worker is None:
            return False
        left = await worker.remove(member)
        if worker.is_empty() and self.workers.get(key) is worker:
            del self.workers[key]
            await worker.stop()
        return left

    # ------------------------------------------------------------------ workers

    async def _worker(
        self, key: GroupKey, start_id: str, view: View, on_delete: OnDelete
    ) -> GroupWorker:
        worker = self.workers.get(key)
        if worker is not None:
            return worker
        pending = self.starting.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[GroupWorker] = asyncio.get_running_loop().create_future()
        self.starting[key] = future
        try:
            worker = await self._start_worker(key, start_id, view, on_delete)
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

    async def _start_worker(
        self, key: GroupKey, start_id: str, view: View, on_delete: OnDelete
    ) -> GroupWorker:
        db, collection, group = key
        keys = collection_keys(db, collection, self.prefix)
        rds = GroupRedis(self.client, keys, group, self.retention_ms)
        worker = GroupWorker(
            rds,
            self.config,
            new_consumer=self._new_consumer,
            view=view,
            on_delete=on_delete,
            database=db,
            collection=collection,
            group=group,
        )
        try:
            await worker.start(start_id)
            worker.unwatch = await self.hub.watch(keys, worker.poke)
        except (*REDIS_ERRORS, TimeoutError) as exc:
            await worker.stop()
            log.warning("group_start_failed", collection=collection, group=group, error=str(exc))
            raise StoreUnavailable() from None
        except BaseException:
            await worker.stop()
            raise
        log.info("group_started", database=db, collection=collection, group=group)
        return worker

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
                except REDIS_ERRORS as exc:
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
        for worker in list(self.workers.values()):
            for holder in list(worker.ledger.holders):
                with contextlib.suppress(Exception):
                    await worker.remove(holder.member)
            await worker.stop()
        self.workers.clear()
        with contextlib.suppress(Exception):
            await self.client.aclose()
