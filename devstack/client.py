"""What a newcomer runs against the stack: post a sample webhook, listen like the SDK does.

``listen`` speaks exactly the frames of docs/protocol.md, as the VSKI SDK's realtime client does:
``SUBSCRIBE`` per collection on open (with ``lastId`` once it has seen an event), ``ACK`` with
the event's ``ackId`` for group subscriptions, and a reconnect after 3 seconds that resumes from
the last id, so it also shows recovery across fanout restarts.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import websockets

RECONNECT_SECONDS = 3.0  # the SDK's delay


def sample_webhook(
    db: str = "postgres",
    collection: str = "posts",
    action: str = "create",
    record: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A webhook shaped like a VSKI trigger call; a fresh timestamp so it is never a dedupe hit."""
    rec_id = str((record or {}).get("id") or f"rec_{secrets.token_hex(4)}")
    now = datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    return {
        "database": db,
        "collection": collection,
        "id": rec_id,
        "action": action,
        "timestamp": now,
        "record": record if record is not None else {"id": rec_id, "title": "Hello from VSKI"},
    }


def post_webhook(
    ingest_url: str, token: str | None, body: dict[str, Any] | bytes, timeout: float = 10.0
) -> tuple[int, dict[str, Any]]:
    """POST one webhook to ``<ingest_url>/webhook``; returns (status, JSON answer)."""
    return post_json(ingest_url.rstrip("/") + "/webhook", token, body, timeout)


def post_json(
    url: str, token: str | None, body: dict[str, Any] | bytes, timeout: float = 10.0
) -> tuple[int, dict[str, Any]]:
    """POST JSON with an optional bearer token; returns (status, JSON answer)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(
        url,
        data=data,
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    return _send(req, token, timeout)


def get_json(url: str, token: str | None, timeout: float = 10.0) -> tuple[int, dict[str, Any]]:
    """GET with an optional bearer token; returns (status, JSON answer)."""
    return _send(
        urllib.request.Request(url, headers={"Accept": "application/json"}), token, timeout
    )


def _send(
    req: urllib.request.Request, token: str | None, timeout: float
) -> tuple[int, dict[str, Any]]:
    """Send with the bearer token; an HTTP error status is an answer too, not an exception."""
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, _json_or_text(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, _json_or_text(exc.read())


def _json_or_text(raw: bytes) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except ValueError:
        return {"raw": raw.decode(errors="replace")}
    return value if isinstance(value, dict) else {"value": value}


def realtime_url(fanout_url: str, db: str, token: str) -> str:
    """The URL the SDK builds: base URL with http->ws, ``/api/realtime?db=&auth=``."""
    base = fanout_url.rstrip("/")
    if base.startswith("http"):
        base = "ws" + base[4:]
    if base.endswith("/api/realtime"):
        base = base[: -len("/api/realtime")]
    query = urllib.parse.urlencode({"db": db, "auth": token})
    return f"{base}/api/realtime?{query}"


def subscribe_frame(collection: str, last_id: str | None = None, group: str | None = None) -> str:
    msg: dict[str, str] = {"type": "SUBSCRIBE", "collection": collection}
    if group:
        msg["group"] = group
    elif last_id:
        msg["lastId"] = last_id
    return json.dumps(msg)


async def listen(
    url: str,
    collections: list[str],
    *,
    last_id: str | None = None,
    group: str | None = None,
    on_frame: Callable[[dict[str, Any]], None],
    max_events: int | None = None,
    reconnect: bool = True,
) -> int:
    """Subscribe and hand every server frame to ``on_frame``; return the number of events seen.

    Ends after ``max_events`` events, or when the socket closes and ``reconnect`` is off."""
    last_ids: dict[str, str | None] = dict.fromkeys(collections, last_id)
    seen = 0
    while True:
        try:
            async with websockets.connect(url, max_size=None, open_timeout=10) as ws:
                for coll in collections:
                    await ws.send(subscribe_frame(coll, last_ids[coll], group))
                async for raw in ws:
                    frame = json.loads(raw)
                    on_frame(frame)
                    events = frame.get("events")
                    if not isinstance(events, list):
                        continue
                    coll = str(frame.get("collection", ""))
                    for event in events:
                        seen += 1
                        if group and event.get("ackId"):
                            await ws.send(
                                json.dumps(
                                    {
                                        "type": "ACK",
                                        "collection": coll,
                                        "id": event["ackId"],
                                        "group": group,
                                    }
                                )
                            )
                        elif coll in last_ids and event.get("id"):
                            last_ids[coll] = str(event["id"])
                    if max_events is not None and seen >= max_events:
                        return seen
        except (OSError, websockets.ConnectionClosed, websockets.InvalidHandshake) as exc:
            on_frame({"type": "_DISCONNECTED", "reason": f"{type(exc).__name__}: {exc}"})
        if not reconnect:
            return seen
        await asyncio.sleep(RECONNECT_SECONDS)
