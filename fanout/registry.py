"""This node's heartbeat in the node registry (``common/registry.py``), for the operations view.

Every ``REGISTRY_HEARTBEAT_SECONDS`` the node writes what it is (id, address = ``FANOUT_BIND``
as configured, version, start time) and how it is doing (connections, subscriptions, deliveries
per second, read lag, memory, readiness). The numbers come from the objects and metrics the node
already keeps, so a heartbeat costs one small script call and nothing on the delivery path.

Under the supervisor (``FANOUT_PROCESSES`` > 1) every child is its own entry: the same
``address``, an id ending in ``-<child>``, and ``child``/``processes`` fields; a crashed child's
entry expires like a vanished node's, and its restart joins under a new id.

On SIGTERM ``mark_draining`` writes ``draining: true`` before the drain begins, so an operator
(and a deploy script polling ``/admin/status``) sees the node leaving; the last act of a clean
exit removes the node. A node that dies without exiting disappears when its heartbeat expires.
Heartbeats go to the primary (``REDIS_URL``), never to a read replica; a failed one is logged
once per outage and retried at the next interval: the registry never stops a node.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from typing import TYPE_CHECKING, Any

import redis

from common.layout import RegistryKeys
from common.logs import get_logger
from common.node_stats import (
    LatencyMeter,
    RateMeter,
    histogram_state,
    rss_bytes,
    sample_total,
    version,
)
from common.redis_conn import async_client
from common.registry import SCRIPT, RegistrySettings, beat_args, leave_args
from fanout import metrics
from fanout.settings import FanoutSettings

if TYPE_CHECKING:
    from fanout.groups import Groups
    from fanout.hub import Hub
    from fanout.server import FanoutServer

log = get_logger("fanout.registry")

MAX_GROUP_COLLECTIONS = 50  # collections with groups named per heartbeat (for /admin/groups)
WRITE_TIMEOUT = 1.0  # seconds the draining mark and the goodbye may hold up the shutdown
IDLE_REFRESH = 2.0  # with the registry off: how often the readiness gauges are refreshed


class NodeRegistry:
    def __init__(
        self,
        settings: FanoutSettings,
        registry: RegistrySettings,
        server: FanoutServer,
        hub: Hub,
        groups: Groups,
        client: Any | None = None,
        *,
        child: int | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.server = server
        self.hub = hub
        self.groups = groups
        # the consumer names of this node's group members start with it, so /admin/groups can
        # say which node holds a pending event
        self.node_id = groups.node_id
        self.child = child  # with FANOUT_PROCESSES > 1: which of the supervisor's children
        self.keys = RegistryKeys(settings.common.redis.key_prefix)
        self._own_client = client is None
        self.client = client if client is not None else async_client(settings.common.redis)
        self.script = self.client.register_script(SCRIPT.text)
        self.started_at = round(time.time(), 3)
        self.draining = False
        metrics.MAX_CONNECTIONS.set(settings.max_connections)
        self._events = RateMeter()
        self._reads = RateMeter()
        self._lag = LatencyMeter()
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    # ------------------------------------------------------------------ what a heartbeat says

    def record(self) -> dict[str, Any]:
        now = time.monotonic()
        sent = sample_total(metrics.EVENTS_SENT.collect(), "vski_fanout_events_sent_total")
        read = sample_total(metrics.EVENTS_READ.collect(), "vski_fanout_events_read_total")
        lag = self._lag.update(
            histogram_state(metrics.READ_LAG.collect(), "vski_fanout_read_lag_seconds"), now
        )
        try:
            ok, detail = self.hub.readiness()
        except Exception as exc:  # readiness must never stop a heartbeat
            ok, detail = False, type(exc).__name__
        draining = self.draining or self.server.draining
        ready = ok and not draining
        metrics.READY.set(1 if ready else 0)
        metrics.DRAINING.set(1 if draining else 0)
        members = sample_total(metrics.GROUP_MEMBERS.collect(), "vski_fanout_group_members")
        plain = sample_total(metrics.SUBSCRIPTIONS.collect(), "vski_fanout_subscriptions")
        rss = rss_bytes()
        if rss is not None:
            metrics.RESIDENT_MEMORY.set(rss)
        return {
            "role": "fanout",
            "address": self.settings.bind,
            "version": version(),
            "started_at": self.started_at,
            "connections": len(self.server.sessions),
            "subscriptions": int(plain + members),
            "events_per_s": round(self._events.update(sent, now), 2),
            "read_lag_ms": lag.mean_ms,
            "read_lag_p99_ms": lag.p99_ms,
            "rss_bytes": rss,
            "draining": draining,
            "ready": ready,
            "ready_detail": "draining" if draining else detail,
            "events_read_per_s": round(self._reads.update(read, now), 2),
            "streams": len(self.hub.streams),
            "group_members": int(members),
            "groups": len(self.groups.workers),
            "group_collections": self._group_collections(),
            "group_visibility_seconds": self.settings.group_visibility_seconds,
            "max_connections": self.settings.max_connections,
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
            "child": self.child,
            "processes": self.settings.processes,
            "sent_at": round(time.time(), 3),
        }

    def _group_collections(self) -> list[str]:
        """Collections this node serves or sweeps groups of: where /admin/groups looks for
        stuck groups besides the busiest collections."""
        seen = {(db, coll) for db, coll, _ in self.groups.workers} | set(self.groups.swept)
        return sorted(f"{db}/{coll}" for db, coll in seen)[:MAX_GROUP_COLLECTIONS]

    # ------------------------------------------------------------------ lifecycle

    async def beat(self) -> bool:
        """Write one heartbeat; False (logged once per outage) when Redis did not take it.
        With the registry off, only the readiness gauges are refreshed."""
        record = self.record()
        if not self.registry.enabled:
            return False
        try:
            args = beat_args(self.node_id, record, self.registry)
            await self.script(keys=[self.keys.beats, self.keys.expiry], args=args)
        except (redis.RedisError, OSError, TimeoutError) as exc:
            if not self._failing:
                log.warning("registry_heartbeat_failed", error=type(exc).__name__)
            self._failing = True
            return False
        if self._failing:
            log.info("registry_heartbeat_restored")
        self._failing = False
        return True

    async def start(self) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(WRITE_TIMEOUT):
                await self.beat()  # registered before the first client arrives, if Redis is up
        self._task = asyncio.create_task(self._loop(), name="registry-heartbeat")
        if self.registry.enabled:
            log.info("registry_joined", node=self.node_id, heartbeat_s=self.registry.heartbeat)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.registry.heartbeat or IDLE_REFRESH)
            await self.beat()

    async def mark_draining(self) -> None:
        """SIGTERM: say ``draining: true`` now, before the drain closes the connections."""
        self.draining = True
        with contextlib.suppress(TimeoutError):
            # a tenth of the drain at most: the exit must still fit in FANOUT_DRAIN_SECONDS
            async with asyncio.timeout(min(WRITE_TIMEOUT, self.settings.drain_seconds / 10)):
                if await self.beat():
                    log.info("registry_draining", node=self.node_id)

    async def stop(self) -> None:
        """Clean exit: stop the heartbeat and leave the registry at once."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.registry.enabled:
            with contextlib.suppress(redis.RedisError, OSError, TimeoutError):
                async with asyncio.timeout(WRITE_TIMEOUT):
                    await self.script(
                        keys=[self.keys.beats, self.keys.expiry], args=leave_args(self.node_id)
                    )
                    log.info("registry_left", node=self.node_id)
        if self._own_client:
            with contextlib.suppress(Exception):
                await self.client.aclose()
