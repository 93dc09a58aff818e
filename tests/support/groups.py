"""Consumer groups as the SDK uses them, for the group suites (standalone, cluster, regions).

:class:`GroupClient` is one SDK-like connection: it SUBSCRIBEs with a ``group``, ACKs each event
by its ackId (after ``ack_delay``) and records what it got; every member of one group shares a
:class:`Ledger` of who holds which event and every accepted ACK, from which the tests read
"each event ACKed exactly once" and "no event held by two members at once". ``nodes`` starts
fanout nodes with group settings; ``pending`` reads the group's pending entries from Redis.
"""

from __future__ import annotations

import asyncio
import collections
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.support.backends import RedisTarget
from tests.support.ingest_http import post_webhook, webhook_body
from tests.support.procs import Proc, fanout_proc
from tests.support.tokens import make_token

LIMIT = 4  # FANOUT_GROUP_MAX_INFLIGHT in these tests
FAST = {  # short visibility timeout: reclaim is under test
    "FANOUT_GROUP_MAX_INFLIGHT": str(LIMIT),
    "FANOUT_GROUP_VISIBILITY_SECONDS": "2",
    "FANOUT_GROUP_RECLAIM_SECONDS": "0.5",
}
SLOW = {  # long visibility timeout: anything arriving sooner came by another path
    "FANOUT_GROUP_MAX_INFLIGHT": str(LIMIT),
    "FANOUT_GROUP_VISIBILITY_SECONDS": "60",
    "FANOUT_GROUP_RECLAIM_SECONDS": "0.5",
}


async def nodes_started(procs: list[Proc]) -> list[Proc]:
    await asyncio.gather(*(asyncio.to_thread(p.start) for p in procs))
    return procs


@asynccontextmanager
async def nodes(redis: RedisTarget, count: int, env: dict[str, str]) -> AsyncIterator[list[Proc]]:
    """``count`` fanout nodes with ``env`` on ``redis``, started together, stopped after."""
    procs = [fanout_proc(redis, **env) for _ in range(count)]
    try:
        yield await nodes_started(procs)
    finally:
        for p in procs:
            p.stop()


async def publish(
    ingest: Proc, collection: str, count: int, start: int = 0, pause: float = 0.0
) -> None:
    def send() -> None:
        for i in range(start, start + count):
            body = webhook_body(collection=collection, record_id=f"r{i}")
            reply = post_webhook(ingest.port, body)
            assert reply.status == 200, reply.body
            time.sleep(pause)

    await asyncio.to_thread(send)


@dataclass
class Ledger:
    """What all members of one group saw: who holds which event, and every accepted ACK."""

    holders: dict[str, str] = field(default_factory=dict)
    acks: collections.Counter[str] = field(default_factory=collections.Counter)
    overlaps: list[str] = field(default_factory=list)


class GroupClient:
    """An SDK-like connection: records EVENT ids, ERRORs, and (if ``ack``) ACKs each event."""

    def __init__(self, name: str, conn: ClientConnection, ledger: Ledger | None, ack: bool):
        self.ack_delay = 0.0  # handling time before the ACK
        self.name = name
        self.conn = conn
        self.ledger = ledger
        self.ack = ack
        self.received: list[str] = []
        self.errors: list[dict[str, Any]] = []
        self.subscribed: list[dict[str, Any]] = []
        self.group: str | None = None
        self.leaving = False
        self.collection = ""
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        with suppress(ConnectionClosed):
            async for raw in self.conn:
                msg = json.loads(raw)
                if msg["type"] == "SUBSCRIBED":
                    self.subscribed.append(msg)
                elif msg["type"] == "ERROR":
                    self.errors.append(msg)
                elif msg["type"] == "EVENT":
                    for event in msg["events"]:
                        await self._on_event(event)

    async def _on_event(self, event: dict[str, Any]) -> None:
        eid = event["id"]
        self.received.append(eid)
        if self.group is None:
            assert "ackId" not in event
            return
        assert event["ackId"] == eid
        ledger = self.ledger if self.ledger is not None else Ledger()
        if self.leaving:  # closing: the node hands what this member holds to others now
            return
        holder = ledger.holders.get(eid)
        if holder is not None and holder != self.name:
            ledger.overlaps.append(f"{eid} at {holder} and {self.name}")
        ledger.holders[eid] = self.name
        if self.ack:
            if self.ack_delay:
                await asyncio.sleep(self.ack_delay)
            await self.send_ack(eid)
            ledger.acks[eid] += 1
            ledger.holders.pop(eid, None)

    async def send_ack(self, ack_id: str, group: str | None = None) -> None:
        msg = {"type": "ACK", "collection": self.collection, "id": ack_id}
        msg["group"] = group or self.group or ""
        await self.conn.send(json.dumps(msg))

    async def subscribe(
        self, collection: str, group: str | None = None, last_id: str | None = None
    ) -> None:
        self.collection = collection
        self.group = group
        msg: dict[str, Any] = {"type": "SUBSCRIBE", "collection": collection}
        if group is not None:
            msg["group"] = group
        if last_id is not None:
            msg["lastId"] = last_id
        before = len(self.subscribed)
        await self.conn.send(json.dumps(msg))
        assert await until(lambda: len(self.subscribed) > before, 10), self.errors

    def forget_holdings(self) -> None:
        """This member is gone: what it held is free to go elsewhere."""
        if self.ledger is not None:
            for eid in [e for e, h in self.ledger.holders.items() if h == self.name]:
                del self.ledger.holders[eid]

    async def close(self) -> None:
        # released from the moment the close starts: the node may hand these events to another
        # member before our side of the close handshake returns (a race the ledger must not
        # count as an event held twice; it showed under a loaded full-suite run)
        self.leaving = True
        self.forget_holdings()
        await self.conn.close()
        with suppress(Exception):
            await asyncio.wait_for(self.task, 5)


@asynccontextmanager
async def client(
    node: Proc, name: str, ledger: Ledger | None = None, *, ack: bool = True
) -> AsyncIterator[GroupClient]:
    url = f"{node.ws_url}/api/realtime?db=postgres&auth={make_token()}"
    async with connect(url, open_timeout=10, compression=None) as conn:
        c = GroupClient(name, conn, ledger, ack)
        try:
            yield c
        finally:
            c.task.cancel()
            with suppress(BaseException):
                await c.task


async def until(predicate: Callable[[], bool], timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.02)
    return predicate()


def stream_key(collection: str) -> str:
    return f"vski:{{postgres/{collection}}}:s"


def pending(redis: RedisTarget, collection: str, group: str) -> dict[str, int]:
    """Pending entries per consumer, straight from Redis."""
    info = redis.client().xpending(stream_key(collection), group)
    return {c["name"].decode(): int(c["pending"]) for c in info["consumers"]}


def silent_consumer(redis: RedisTarget, collection: str) -> str:
    """The one consumer holding entries (when exactly one does)."""
    (name,) = pending(redis, collection, "g")
    return name
