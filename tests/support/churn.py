"""A population of short-lived WebSocket connections for the soak suites: they open, subscribe
(now and then replaying from the start), change subscriptions, and leave, some with a close
frame and some aborted without one (a client whose network went away)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from dataclasses import dataclass, field

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.support.chaos import ws_url


@dataclass(eq=False)
class Churner:
    """A population of short-lived connections that keep changing what they subscribe to."""

    ports: list[int]
    rng: random.Random
    db: str
    colls: list[str]
    replay_share: float = 0.3  # of new subscriptions, how many replay from the start
    conns: dict[ClientConnection, set[str]] = field(default_factory=dict)
    readers: set[asyncio.Task[None]] = field(default_factory=set)
    opened: int = 0
    closed: int = 0
    aborted: int = 0
    changes: int = 0
    frames: int = 0

    async def _read(self, conn: ClientConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for _ in conn:
                self.frames += 1

    async def open(self) -> None:
        conn = await connect(ws_url(self.rng.choice(self.ports), self.db), open_timeout=10)
        subs = set(self.rng.sample(self.colls, self.rng.randint(1, 3)))
        for coll in subs:
            msg = {"type": "SUBSCRIBE", "collection": coll}
            if self.rng.random() < self.replay_share:
                msg["lastId"] = "0"  # a replay from the start, now and then
            await conn.send(json.dumps(msg))
        self.conns[conn] = subs
        task = asyncio.create_task(self._read(conn))
        self.readers.add(task)
        task.add_done_callback(self.readers.discard)
        self.opened += 1

    async def close_one(self) -> None:
        conn = self.rng.choice(list(self.conns))
        del self.conns[conn]
        if self.rng.random() < 0.3:
            conn.transport.abort()  # gone without a close frame (network loss)
            self.aborted += 1
        else:
            await conn.close()
            self.closed += 1

    async def change_one(self) -> None:
        conn = self.rng.choice(list(self.conns))
        subs = self.conns[conn]
        with contextlib.suppress(ConnectionClosed):
            if subs and self.rng.random() < 0.5:
                coll = subs.pop()
                await conn.send(json.dumps({"type": "UNSUBSCRIBE", "collection": coll}))
            else:
                coll = self.rng.choice(self.colls)
                subs.add(coll)
                await conn.send(json.dumps({"type": "SUBSCRIBE", "collection": coll}))
        self.changes += 1

    async def run(self, seconds: float, population: int) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            while len(self.conns) < population:
                await self.open()
            for _ in range(3):
                await self.close_one()
            for _ in range(6):
                await self.change_one()
            await asyncio.sleep(0.2)

    async def stop(self) -> None:
        for conn in list(self.conns):
            await conn.close()
        self.conns.clear()
        for task in list(self.readers):
            with contextlib.suppress(Exception):
                await task
