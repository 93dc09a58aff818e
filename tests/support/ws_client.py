"""An SDK-like WebSocket subscriber of one collection, for the end-to-end suites.

:class:`Client` connects to a fanout node, SUBSCRIBEs (optionally with a lastId, or twice as the
SDK does) and records every event id in order, each SUBSCRIBED frame and the delivery latency.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.support.procs import Proc
from tests.support.tokens import make_token


def ws_url(node: Proc, db: str = "postgres") -> str:
    return f"{node.ws_url}/api/realtime?db={db}&auth={make_token()}"


@dataclass
class Client:
    """A WebSocket client that behaves like the SDK: records every event id and its lastId."""

    node: Proc
    db: str
    coll: str
    ids: list[str] = field(default_factory=list)
    subscribed: list[dict[str, Any]] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    conn: ClientConnection | None = None
    task: asyncio.Task[None] | None = None

    @property
    def last_id(self) -> str | None:
        return self.ids[-1] if self.ids else None

    async def open(self, last_id: str | None = None, repeat: bool = False) -> Client:
        self.conn = await connect(ws_url(self.node, self.db), open_timeout=15, compression=None)
        msg: dict[str, Any] = {"type": "SUBSCRIBE", "collection": self.coll}
        if last_id is not None:
            msg["lastId"] = last_id
        await self.conn.send(json.dumps(msg))
        if repeat:  # the SDK's open handler plus subscribe() on an open socket
            await self.conn.send(json.dumps(msg))
        self.task = asyncio.create_task(self._read(self.conn))
        await self.wait_subscribed(2 if repeat else 1)
        return self

    async def _read(self, conn: ClientConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for raw in conn:
                msg = json.loads(raw)
                if msg.get("type") == "SUBSCRIBED":
                    self.subscribed.append(msg)
                for ev in msg.get("events") or ():
                    assert msg["collection"] == self.coll
                    self.ids.append(ev["id"])
                    sent = (ev["data"].get("record") or {}).get("sent")
                    if sent:
                        self.latencies.append(time.time() - sent)

    async def wait_subscribed(self, count: int, timeout: float = 20) -> None:
        async with asyncio.timeout(timeout):
            while len(self.subscribed) < count:
                await asyncio.sleep(0.01)

    async def wait_ids(self, count: int, timeout: float = 30) -> list[str]:
        try:
            async with asyncio.timeout(timeout):
                while len(self.ids) < count:
                    await asyncio.sleep(0.02)
        except TimeoutError:
            pass
        return self.ids

    async def close(self) -> None:
        if self.conn is not None:
            await self.conn.close()
        if self.task is not None:
            await self.task


async def settle(predicate: Any, timeout: float = 30) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            while not predicate():
                await asyncio.sleep(0.02)
