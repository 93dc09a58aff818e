"""A small HTTP client for tests of the ingest tier (stdlib only, full control over headers).

``request``/``post_webhook``/``post_raw`` send exactly what a test says; :class:`Poster` and
:class:`BackgroundPoster` post webhooks like a VSKI trigger for suites about what comes out.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from tests.support.procs import Proc
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


def slowloris(port: int, *, body: bool, length: int = 1000) -> socket.socket:
    """A stalled sender: the headers and the first bytes of a promised ``length``-byte body
    (``body``), or headers that never end; the socket stays open for the test to watch."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    if body:
        sock.sendall(
            (
                "POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Authorization: Bearer {make_token()}\r\nContent-Length: {length}\r\n\r\n"
                '{"database'
            ).encode()
        )
    else:
        sock.sendall(b"POST /webhook HTTP/1.1\r\nHost: x\r\n")
    return sock


def post_once(port: int, body: bytes, token: str, timeout: float = 10.0) -> tuple[int, Any]:
    """POST one webhook; (status, decoded JSON) or (0, error text) when the connection broke."""
    status, answer, _ = post_with_headers(port, body, token, timeout)
    return status, answer


def post_with_headers(
    port: int, body: bytes, token: str, timeout: float = 10.0
) -> tuple[int, Any, dict[str, str]]:
    """:func:`post_once` plus the answer's headers (lower-case names; empty when it broke)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(
            "POST",
            "/webhook",
            body,
            {"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
        )
        resp = conn.getresponse()
        raw = resp.read()
        headers = {k.lower(): v for k, v in resp.getheaders()}
        try:
            return resp.status, json.loads(raw or b"{}"), headers
        except ValueError:
            return resp.status, raw[:200].decode(errors="replace"), headers
    except (OSError, http.client.HTTPException) as exc:
        return 0, repr(exc), {}
    finally:
        conn.close()


def post_titled(
    base_url: str, coll: str, title: str, token: str, body: bytes | None = None
) -> tuple[int, Any]:
    """POST ``body``, or a create webhook of record ``{"id": title, "title": title}`` in
    ``postgres/<coll>``, to ``<base_url>/webhook`` (ingest itself, or nginx in front of it);
    (status, decoded JSON, or the text of a non-JSON answer)."""
    data = (
        body
        or json.dumps(
            {
                "database": "postgres",
                "collection": coll,
                "action": "create",
                "id": title,
                "record": {"id": title, "title": title},
            }
        ).encode()
    )
    req = urllib.request.Request(
        base_url + "/webhook",
        data=data,
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
    )
    try:
        with urllib.request.urlopen(req, timeout=15) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            return exc.code, json.loads(raw)
        except ValueError:
            return exc.code, raw.decode(errors="replace")


class Poster:
    """Posts webhooks like a VSKI trigger (keeps retrying 503s, as VSKI does)."""

    def __init__(self, ingest: Proc) -> None:
        self.port = ingest.port
        self.token = make_token()

    def post(self, db: str, coll: str, n: int, pad: int = 0, retry_for: float = 0) -> str:
        body: dict[str, Any] = {
            "database": db,
            "collection": coll,
            "id": f"r{n}",
            "action": "create",
            "record": {"id": f"r{n}", "n": n, "sent": time.time()},
        }
        if pad:
            body["record"]["pad"] = "x" * pad
        data = json.dumps(body).encode()
        deadline = time.monotonic() + retry_for
        while True:
            status, answer = post_once(self.port, data, self.token)
            if status == 200:
                return str(answer["id"])
            if time.monotonic() > deadline:
                raise AssertionError(f"webhook answered {status}: {answer}")
            time.sleep(0.05)

    def many(self, db: str, coll: str, count: int, start: int = 0) -> list[str]:
        return [self.post(db, coll, start + i) for i in range(count)]


class BackgroundPoster(threading.Thread):
    """Keeps posting at a modest pace; ``ids`` are the events answered 200, in order."""

    def __init__(
        self,
        poster: Poster,
        db: str,
        coll: str,
        count: int,
        pace: float = 0.005,
        retry_for: float = 0,
    ) -> None:
        super().__init__(daemon=True)
        self.poster, self.db, self.coll, self.count = poster, db, coll, count
        self.pace, self.retry_for = pace, retry_for
        self.ids: list[str] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for i in range(self.count):
                self.ids.append(self.poster.post(self.db, self.coll, i, retry_for=self.retry_for))
                time.sleep(self.pace)
        except BaseException as exc:
            self.error = exc
