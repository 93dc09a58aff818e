"""A small HTTP client for tests of the ingest tier (stdlib only, full control over headers)."""

from __future__ import annotations

import http.client
import json
import socket
from dataclasses import dataclass, field
from typing import Any

from tests.support.tokens import make_token


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    elapsed: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def json(self) -> Any:
        return json.loads(self.body)


def request(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> Reply:
    import time

    started = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        hdrs = {k.lower(): v for k, v in resp.getheaders()}
        return Reply(resp.status, hdrs, data, time.monotonic() - started)
    finally:
        conn.close()


def webhook_body(
    *,
    database: str = "postgres",
    collection: str = "posts",
    record_id: str = "rec_1",
    action: str = "create",
    timestamp: str | None = "2026-11-27T10:00:00.000Z",
    record: Any = "default",
    **extra: Any,
) -> bytes:
    payload: dict[str, Any] = {
        "database": database,
        "collection": collection,
        "id": record_id,
        "action": action,
        **extra,
    }
    if timestamp is not None:
        payload["timestamp"] = timestamp
    if record == "default":
        record = {"id": record_id, "title": "Hello"}
    if record != "absent":
        payload["record"] = record
    return json.dumps(payload).encode()


def post_webhook(
    port: int,
    body: bytes,
    *,
    token: str | None = "default",
    content_type: str = "application/json",
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> Reply:
    hdrs = {"Content-Type": content_type}
    if token == "default":
        token = make_token()
    if token is not None:
        hdrs["Authorization"] = f"Bearer {token}"
    hdrs.update(headers or {})
    return request(port, "POST", "/webhook", body, hdrs, timeout)


def post_raw(port: int, raw: bytes, timeout: float = 10.0) -> bytes:
    """Send raw bytes (e.g. a chunked request) and return the raw response."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(raw)
        chunks = []
        while True:
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)
