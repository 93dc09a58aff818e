"""Named users for the access-policy suites: SDK-like connections with their own tokens, the
policy file they run under, and webhooks posted as the VSKI master.

:class:`User` is one connection of one user (claims of its choosing): it SUBSCRIBEs to several
collections (optionally in a consumer group, ACKing what it gets) and records, per collection,
the records it received, every ERROR and SUBSCRIBED frame, and how the socket closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.support.ingest_http import Reply, post_webhook
from tests.support.procs import Proc
from tests.support.tokens import make_token

MASTER = {"sub": "vski-master"}  # what the suites' [webhooks] sender rule accepts


def write_policy(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def post_record(
    ingest: Proc,
    collection: str,
    record: dict[str, Any] | None,
    *,
    action: str = "create",
    record_id: str | None = None,
    claims: dict[str, Any] | None = None,
    database: str = "postgres",
) -> Reply:
    """One webhook, signed as the VSKI master unless ``claims`` say otherwise."""
    rid = record_id or (record or {}).get("id") or f"r{time.monotonic_ns()}"
    body = {
        "database": database,
        "collection": collection,
        "id": rid,
        "action": action,
        "timestamp": f"{time.time_ns()}",
        "record": record,
    }
    token = make_token(**(claims if claims is not None else MASTER))
    return post_webhook(ingest.port, json.dumps(body).encode(), token=token)


@dataclass
class User:
    node: Proc
    claims: dict[str, Any]
    db: str = "postgres"
    records: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    ids: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    # per collection: receive time minus the record's "sent" (seconds), when it has one
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: list[dict[str, Any]] = field(default_factory=list)
    subscribed: list[dict[str, Any]] = field(default_factory=list)
    acks: bool = True
    close_code: int | None = None
    close_reason: str = ""
    closed_at: float | None = None
    conn: ClientConnection | None = None
    task: asyncio.Task[None] | None = None
    groups: dict[str, str] = field(default_factory=dict)  # collection -> group

    @property
    def token(self) -> str:
        return make_token(**self.claims)

    async def open(self) -> User:
        url = f"{self.node.ws_url}/api/realtime?db={self.db}&auth={self.token}"
        self.conn = await connect(url, open_timeout=15, compression=None, max_size=None)
        self.task = asyncio.create_task(self._read(self.conn))
        return self

    async def subscribe(
        self, collection: str, *, last_id: str | None = None, group: str | None = None
    ) -> dict[str, Any]:
        """SUBSCRIBE and wait for its SUBSCRIBED or ERROR frame; returns that frame."""
        assert self.conn is not None
        msg: dict[str, Any] = {"type": "SUBSCRIBE", "collection": collection}
        if last_id is not None:
            msg["lastId"] = last_id
        if group is not None:
            msg["group"] = group
            self.groups[collection] = group
        seen = len(self.subscribed) + len(self.errors)
        await self.conn.send(json.dumps(msg))
        async with asyncio.timeout(20):
            while len(self.subscribed) + len(self.errors) == seen:
                await asyncio.sleep(0.01)
        answers = [*self.subscribed, *self.errors]
        return next(a for a in reversed(answers) if a.get("collection") == collection)

    async def _read(self, conn: ClientConnection) -> None:
        try:
            async for raw in conn:
                msg = json.loads(raw)
                kind = msg.get("type")
                if kind == "SUBSCRIBED":
                    self.subscribed.append(msg)
                elif kind == "ERROR":
                    self.errors.append(msg)
                coll = msg.get("collection", "")
                now = time.time()
                for ev in msg.get("events") or ():
                    record = ev["data"].get("record") or {}
                    self.ids[coll].append(ev["id"])
                    self.records[coll].append(record)
                    if isinstance(record.get("sent"), float):
                        self.latencies[coll].append(now - record["sent"])
                    group = self.groups.get(coll)
                    if group is not None and self.acks:
                        ack = {"type": "ACK", "collection": coll, "id": ev["ackId"], "group": group}
                        await conn.send(json.dumps(ack))
        except ConnectionClosed:
            pass
        finally:
            self.closed_at = time.monotonic()
            if conn.close_code is not None:
                self.close_code, self.close_reason = conn.close_code, conn.close_reason or ""

    def seen(self, collection: str, key: str = "id") -> list[Any]:
        return [r.get(key) for r in self.records[collection]]

    async def wait(self, predicate: Any, timeout: float = 15) -> bool:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while not predicate():
                    await asyncio.sleep(0.02)
        return bool(predicate())

    async def close(self) -> None:
        if self.conn is not None:
            await self.conn.close()
        if self.task is not None:
            with contextlib.suppress(Exception):
                await self.task
