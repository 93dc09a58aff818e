"""Revocations at a fanout node: the feed from Redis that keeps ``RevocationList`` current.

At start the node reads every revocation still in force (two sorted sets in the
``{revocations}`` slot), so a node that starts after ``POST /admin/disconnect`` refuses the
user too. Then it listens on the sharded channel that ingest announces each revocation on
(from whichever Redis node or replica it reads, as for events), closes the matching sockets
at once (4003) and replies how many it closed; after a reconnect, and every few seconds as a
safety net, it reads the sets again. Entries never shrink here: a Redis restarted without
persistence cannot lift a revocation a running node already holds (persistence matters for
nodes that start after such a restart: docs/policy.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Coroutine
from typing import Any

import redis

from common.layout import RevocationKeys
from common.logs import get_logger
from fanout.redis_nodes import RedisNodes
from fanout.revocation_list import TOKEN, USER, RevocationList

log = get_logger("fanout.revocations")

REDIS_ERRORS = (redis.RedisError, OSError)


class Revocations:
    def __init__(
        self,
        nodes: RedisNodes,
        primary: Any,
        prefix: str,
        close: Callable[[str, str], int],
        *,
        reload_interval: float = 5.0,
    ) -> None:
        self.nodes = nodes
        self.primary = primary  # replies are writes: never to a replica
        self.keys = RevocationKeys(prefix)
        self.close = close  # (kind, id) -> sockets closed
        self.reload_interval = reload_interval
        self.list = RevocationList()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._reloader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Read what is in force, then follow the channel. Redis away at start: the node
        serves and the reload loop fills the list as soon as Redis answers."""
        with contextlib.suppress(*REDIS_ERRORS):
            await self.reload()
        await self.nodes.subscribe_control(self.keys.channel, self._on_message, self._on_resync)
        self._reloader = asyncio.create_task(self._reload_loop(), name="revocations-reload")

    async def stop(self) -> None:
        for task in [self._reloader, *self._tasks]:
            if task is not None:
                task.cancel()

    def revoked(self, users: list[str], jti: str | None) -> bool:
        return self.list.revoked(users, jti, time.time())

    async def reload(self) -> None:
        now = time.time()
        for kind in (USER, TOKEN):
            rows = await self.nodes.cmd.zrangebyscore(
                self.keys.of(kind), f"({now}", "+inf", withscores=True
            )
            self.list.merge(kind, ((_text(i), float(until)) for i, until in rows))
        self.list.prune(now)

    async def _reload_loop(self) -> None:
        while True:
            await asyncio.sleep(self.reload_interval)
            await self._reload_quietly()

    def _on_message(self, payload: bytes) -> None:
        try:
            kind, until, request, ident = payload.decode().split(" ", 3)
            end = float(until)
        except ValueError:
            log.warning("bad_revocation_message", payload=payload[:80])
            return
        if not self.list.add(kind, ident, end):
            return
        closed = self.close(kind, ident) if end > time.time() else 0
        self._spawn(self._reply(request, closed))

    def _on_resync(self) -> None:
        self._spawn(self._reload_quietly())

    async def _reload_quietly(self) -> None:
        try:
            await self.reload()
        except REDIS_ERRORS as exc:
            log.info("revocations_reload_failed", error=type(exc).__name__)

    async def _reply(self, request: str, closed: int) -> None:
        key = self.keys.replies(request)
        try:
            await self.primary.rpush(key, closed)
            await self.primary.expire(key, 10)
        except REDIS_ERRORS as exc:
            log.info("revocation_reply_failed", error=type(exc).__name__)

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
