"""Hostile webhooks against a real gunicorn ingest: each refused with the status PROTOCOL.md names,
a JSON body and no internals; nothing refused is stored; the workers stay up. Slowloris senders
cost a worker at most ``INGEST_TIMEOUT``; the per-sender rate limit answers 429 + Retry-After.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import pytest

from tests.support.chaos import leaks_trace, reported
from tests.support.ingest_http import (
    Reply,
    post_raw,
    post_webhook,
    request,
    slowloris,
    webhook_body,
)
from tests.support.procs import Proc, ingest_proc
from tests.support.redis_server import RedisServer
from tests.support.tokens import make_token

HOSTILE_COLL = "hostile"


def body(**fields: object) -> bytes:
    base: dict[str, object] = {
        "database": "postgres",
        "collection": HOSTILE_COLL,
        "id": "r1",
        "action": "create",
        "record": {"id": "r1"},
    }
    base.update(fields)
    return json.dumps({k: v for k, v in base.items() if v is not ...}).encode()


def nested(depth: int) -> bytes:
    return (
        b'{"database":"postgres","collection":"'
        + HOSTILE_COLL.encode()
        + b'","action":"create","record":'
        + b'{"a":' * depth
        + b"1"
        + b"}" * (depth + 1)
    )


# (case, body, content type, expected status, expected error code or None for any)
CASES: list[tuple[str, bytes, str, int, str | None]] = [
    (
        "broken JSON",
        b'{"database": "postgres", "collection": ',
        "application/json",
        400,
        "invalid_json",
    ),
    ("empty body", b"", "application/json", 400, "invalid_json"),
    ("invalid UTF-8", b"\xff\xfe\x00garbage", "application/json", 400, "invalid_json"),
    (
        "NaN literal",
        body(record={"x": 1}).replace(b"1}", b"NaN}"),
        "application/json",
        400,
        "invalid_json",
    ),
    ("top-level array", b"[]", "application/json", 422, "invalid_payload"),
    ("top-level string", b'"create"', "application/json", 422, "invalid_payload"),
    ("null", b"null", "application/json", 422, "invalid_payload"),
    ("collection is a number", body(collection=123), "application/json", 422, "invalid_payload"),
    ("action is a number", body(action=5), "application/json", 422, "invalid_payload"),
    ("record is a string", body(record="x"), "application/json", 422, "invalid_payload"),
    ("record is a list", body(record=[1, 2]), "application/json", 422, "invalid_payload"),
    ("id is an object", body(id={"a": 1}), "application/json", 422, "invalid_payload"),
    ("missing collection", body(collection=...), "application/json", 422, "invalid_payload"),
    ("create without record", body(record=None), "application/json", 422, "invalid_payload"),
    ("unknown action", body(action="drop"), "application/json", 422, "invalid_action"),
    ("empty action", body(action=""), "application/json", 422, "invalid_action"),
    ("very long action", body(action="x" * 100_000), "application/json", 422, "invalid_action"),
    ("collection with braces", body(collection="a}{b"), "application/json", 422, "invalid_name"),
    ("collection with colon", body(collection="a:b"), "application/json", 422, "invalid_name"),
    ("empty collection", body(collection=""), "application/json", 422, "invalid_name"),
    ("65-char collection", body(collection="c" * 65), "application/json", 422, "invalid_name"),
    ("10 KB collection", body(collection="c" * 10_000), "application/json", 422, "invalid_name"),
    ("path in collection", body(collection="../etc"), "application/json", 422, "invalid_name"),
    ("newline in database", body(database="db\nx"), "application/json", 422, "invalid_name"),
    ("unicode database", body(database="d\u00f6b"), "application/json", 422, "invalid_name"),
    ("database with braces", body(database="{db}"), "application/json", 422, "invalid_name"),
    ("300-char record id", body(id="i" * 300), "application/json", 422, "invalid_payload"),
    ("100k opening brackets", b"[" * 100_000, "application/json", 422, None),
    ("100k nested objects", nested(100_000), "application/json", 400, "invalid_json"),
    (
        "2 MB body",
        body(record={"pad": "x" * 2_000_000}),
        "application/json",
        413,
        "payload_too_large",
    ),
    ("text/plain", body(), "text/plain", 415, "unsupported_media_type"),
    ("form encoded", b"a=1", "application/x-www-form-urlencoded", 415, "unsupported_media_type"),
]


@pytest.fixture(scope="module")
def ingest(redis_mod: RedisServer) -> Iterator[Proc]:
    proc = ingest_proc(redis_mod.url, workers=2).start()
    try:
        yield proc
    finally:
        proc.stop()


def chunked(payload: bytes, token: str) -> bytes:
    head = (
        "POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {token}\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode()
    chunks = b"".join(
        f"{len(payload[i : i + 65536]):x}\r\n".encode() + payload[i : i + 65536] + b"\r\n"
        for i in range(0, len(payload), 65536)
    )
    return head + chunks + b"0\r\n\r\n"


def test_hostile_webhooks_are_refused_and_nothing_is_stored(
    ingest: Proc, redis_mod: RedisServer
) -> None:
    with reported("hostile", "webhook bodies (shape, names, size, nesting)") as row:
        wrong: dict[str, tuple[int, object]] = {}
        leaks: list[str] = []
        for case, payload, ctype, status, code in CASES:
            reply = post_webhook(ingest.port, payload, content_type=ctype, timeout=30)
            try:
                answer = reply.json()
            except ValueError:
                answer = reply.body[:100]
            got_code = answer.get("error") if isinstance(answer, dict) else None
            if reply.status != status or (code is not None and got_code != code):
                wrong[case] = (reply.status, answer)
            if leaks_trace(reply.body):
                leaks.append(case)
        # a 2 MB chunked body (no Content-Length) is cut off at the limit too
        raw = post_raw(ingest.port, chunked(body(record={"pad": "y" * 2_000_000}), make_token()))
        chunked_status = int(raw.split(b" ", 2)[1]) if raw.startswith(b"HTTP/") else 0
        if chunked_status != 413:
            wrong["2 MB chunked"] = (chunked_status, raw[:200])
        not_post = request(ingest.port, "GET", "/webhook")
        if not_post.status != 405 or leaks_trace(not_post.body):
            wrong["GET /webhook"] = (not_post.status, not_post.body[:100])
        stored = redis_mod.client().keys(f"*{HOSTILE_COLL}*")
        ok = post_webhook(ingest.port, webhook_body(collection="after_hostile"))
        row.update(
            tried=f"{len(CASES) + 2} kinds of hostile webhook",
            events=0,
            clients=0,
            lost=0,
            duplicated=0,
            notes="each refused with its 400/405/413/415/422 code; none stored"
            if not wrong
            else f"unexpected: {list(wrong)}",
        )
        assert not wrong, wrong
        assert not leaks, leaks
        assert stored == [], stored
        assert ok.status == 200 and ingest.alive()


def closed_by_server(sock: socket.socket, timeout: float) -> tuple[bool, bytes]:
    sock.settimeout(timeout)
    try:
        data = sock.recv(4096)
        return True, data
    except ConnectionResetError:
        return True, b""
    except TimeoutError:
        return False, b""
    finally:
        sock.close()


def run_slowloris(ingest: Proc, count: int, timeout: float) -> tuple[Reply, list[bool], bytes]:
    socks = [slowloris(ingest.port, body=i % 2 == 0) for i in range(count)]
    time.sleep(0.2)
    started = time.monotonic()
    reply = post_webhook(ingest.port, webhook_body(record_id=f"during-{count}"), timeout=60)
    reply.elapsed = time.monotonic() - started
    closed = [closed_by_server(s, timeout * 3 + 10) for s in socks]
    return reply, [c for c, _ in closed], b"".join(d for _, d in closed)


def test_slowloris_costs_a_sync_worker_at_most_the_timeout(redis_mod: RedisServer) -> None:
    timeout = 2
    proc = ingest_proc(redis_mod.url, workers=2, INGEST_TIMEOUT=str(timeout)).start()
    try:
        with reported("hostile", "slowloris senders (sync workers, INGEST_TIMEOUT=2)") as row:
            # fewer stalled senders than workers: the others serve at once
            one, closed_one, _ = run_slowloris(proc, 1, timeout)
            # as many as workers: served once the stalled workers are replaced
            two, closed_two, answers = run_slowloris(proc, 2, timeout)
            after = post_webhook(proc.port, webhook_body(record_id="after-slowloris"))
            row.update(
                tried="1 then 2 stalled senders (body and headers) on 2 workers",
                events=0,
                clients=0,
                lost=0,
                duplicated=0,
                notes=f"a valid webhook waited {one.elapsed:.1f} s (1 stalled) and "
                f"{two.elapsed:.1f} s (all workers stalled); stalled senders cut off",
            )
            assert one.status == 200 and two.status == 200 and after.status == 200
            assert one.elapsed < 5, "a free worker should have answered at once"
            assert two.elapsed < timeout * 3 + 10
            assert all(closed_one + closed_two), "a stalled sender was never cut off"
            assert not leaks_trace(answers)
            assert proc.alive()
    finally:
        proc.stop()


# fixed by ingest/workers.py (socket timeouts on gthread client sockets); was a strict xfail
def test_slowloris_on_gthread_workers_is_cut_off(redis_mod: RedisServer) -> None:
    proc = ingest_proc(
        redis_mod.url,
        workers=1,
        INGEST_TIMEOUT="2",
        INGEST_WORKER_CLASS="gthread",
        INGEST_THREADS="2",
    ).start()
    try:
        with reported("hostile", "slowloris senders (gthread workers, INGEST_TIMEOUT=2)") as row:
            socks = [slowloris(proc.port, body=i % 2 == 0) for i in range(3)]
            time.sleep(0.3)
            try:
                reply = post_webhook(proc.port, webhook_body(record_id="gthread"), timeout=6)
                status = reply.status
            except TimeoutError:
                status = 0
            for s in socks:
                s.close()
            row.update(
                tried="3 stalled senders on 1 worker x 2 threads",
                events=0,
                clients=0,
                lost=0,
                duplicated=0,
                notes="valid webhook answered"
                if status == 200
                else "valid webhook got no answer in 6 s",
            )
            assert status == 200, "ingest stopped answering while senders stalled"
    finally:
        proc.stop()


def test_rate_limit_answers_429_with_retry_after(redis_mod: RedisServer) -> None:
    workers, rate, burst = 2, 5.0, 5
    proc = ingest_proc(
        redis_mod.url, workers=workers, INGEST_RATE_LIMIT=str(rate), INGEST_RATE_BURST=str(burst)
    ).start()
    try:
        with reported("hostile", "webhook flood from one sender (INGEST_RATE_LIMIT=5)") as row:
            token = make_token()
            started = time.monotonic()
            replies = [
                post_webhook(proc.port, webhook_body(record_id=f"rl{i}"), token=token)
                for i in range(80)
            ]
            elapsed = time.monotonic() - started
            ok = [r for r in replies if r.status == 200]
            limited = [r for r in replies if r.status == 429]
            # each worker has its own bucket: burst + rate * elapsed each, at most
            allowed = workers * (burst + rate * elapsed) + 2
            retry_after = {r.headers.get("retry-after") for r in limited}
            codes = {r.json()["error"] for r in limited}
            time.sleep(max(int(x) for x in retry_after if x) if limited else 0)
            again = post_webhook(proc.port, webhook_body(record_id="rl-after"), token=token)
            row.update(
                tried=f"80 webhooks in {elapsed:.1f} s from one address",
                clients=1,
                notes=f"{len(ok)} accepted (bound {allowed:.0f}), {len(limited)} answered 429 "
                f"with Retry-After {sorted(x for x in retry_after if x)}",
            )
            assert len(ok) + len(limited) == len(replies), {r.status for r in replies}
            assert limited and len(ok) <= allowed
            assert codes == {"rate_limited"}
            assert all(x and int(x) >= 1 for x in retry_after), retry_after
            assert again.status == 200
    finally:
        proc.stop()
