"""POST /webhook against the real app under a real gunicorn (2 workers) and a real Redis.

Every status of PROTOCOL.md §1 except 429/503 (see reliability/test_ingest_resilience.py) is
provoked here; each refusal must be JSON ``{error, message}`` with no trace, and must store
nothing. Every test runs on a standalone redis-server and on the Redis Cluster
(``redis_backend``).
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
import redis

from tests.support.backends import RedisTarget
from tests.support.ingest_http import Reply, post_raw, post_webhook, request, webhook_body
from tests.support.procs import Proc, ingest_proc
from tests.support.tokens import SECRET, make_token

MAX_BODY = 65536
ID_RE = re.compile(r"^(\d+)-(\d+)@([0-9a-f]{8})$")


@pytest.fixture(scope="module")
def srv(redis_backend: RedisTarget) -> Iterator[tuple[RedisTarget, Proc]]:
    """gunicorn ingest (2 workers) on the module's Redis, once per backend."""
    p = ingest_proc(redis_backend, workers=2, INGEST_MAX_BODY_BYTES=str(MAX_BODY)).start()
    try:
        yield redis_backend, p
    finally:
        p.stop()


@pytest.fixture
def port(srv: tuple[RedisTarget, Proc]) -> int:
    return srv[1].port


@pytest.fixture
def rds(srv: tuple[RedisTarget, Proc]) -> redis.Redis:
    client: redis.Redis = srv[0].client()  # a RedisCluster on the cluster: same commands
    return client


Entries = list[tuple[str, dict[str, object]]]


def stream(rds: redis.Redis, coll: str, db: str = "postgres") -> Entries:
    entries: Any = rds.xrange(f"vski:{{{db}/{coll}}}:s")
    return [(sid.decode(), json.loads(fields[b"d"])) for sid, fields in entries]


def assert_error(reply: Reply, status: int, code: str | None = None) -> dict[str, str]:
    assert reply.status == status, reply.body
    assert reply.headers["content-type"].startswith("application/json")
    body = reply.json()
    assert set(body) == {"error", "message"}
    if code is not None:
        assert body["error"] == code
    assert len(body["message"]) > 10
    assert b"Traceback" not in reply.body and b'File "' not in reply.body
    return dict(body)


# ---------------------------------------------------------------- success


def test_stored_before_200(port: int, rds: redis.Redis) -> None:
    reply = post_webhook(port, webhook_body(collection="ok1", record_id="r1"))
    assert reply.status == 200
    body = reply.json()
    assert body["success"] is True
    m = ID_RE.match(body["id"])
    assert m, body
    entries = stream(rds, "ok1")
    assert entries == [
        (
            f"{m.group(1)}-{m.group(2)}",
            {"action": "create", "record": {"id": "r1", "title": "Hello"}},
        )
    ]
    assert rds.hget("vski:{postgres/ok1}:m", "e") == m.group(3).encode()


@pytest.mark.parametrize(
    ("sent", "expected", "record"),
    [
        ("INSERT", "create", {"id": "r"}),
        ("UPDATE", "update", {"id": "r"}),
        ("DELETE", "delete", None),
        ("delete", "delete", "absent"),
        ("update", "update", {"a": 1}),
    ],
)
def test_actions_normalised(
    port: int, rds: redis.Redis, sent: str, expected: str, record: object
) -> None:
    coll = f"norm_{sent}_{expected}_{record is None}"
    reply = post_webhook(port, webhook_body(collection=coll, action=sent, record=record))
    assert reply.status == 200, reply.body
    [(_, data)] = stream(rds, coll)
    assert data == {"action": expected, "record": None if record == "absent" else record}


def test_charset_in_content_type_is_accepted(port: int) -> None:
    reply = post_webhook(
        port, webhook_body(collection="cs"), content_type="application/json; charset=utf-8"
    )
    assert reply.status == 200


def test_chunked_body_is_read(port: int, rds: redis.Redis) -> None:
    body = webhook_body(collection="chunked", record_id="c1")
    head = (
        b"POST /webhook HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer "
        + make_token().encode()
        + b"\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    half = len(body) // 2
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (body[:half], body[half:]))
    raw = post_raw(port, head + chunks + b"0\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 200"), raw
    assert len(stream(rds, "chunked")) == 1


def test_ids_dense_and_epoch_stable(port: int, rds: redis.Redis) -> None:
    ids = []
    for i in range(12):
        reply = post_webhook(port, webhook_body(collection="dense", record_id=f"r{i}"))
        ids.append(ID_RE.match(reply.json()["id"]))
    assert all(ids)
    assert [int(m.group(2)) for m in ids if m] == list(range(1, 13))
    assert len({m.group(3) for m in ids if m}) == 1
    ms = [int(m.group(1)) for m in ids if m]
    assert ms == sorted(ms)
    assert [sid for sid, _ in stream(rds, "dense")] == [
        f"{m.group(1)}-{m.group(2)}" for m in ids if m
    ]


# ---------------------------------------------------------------- dedupe


def test_concurrent_retries_store_one_event(port: int, rds: redis.Redis) -> None:
    body = webhook_body(collection="dedupe", record_id="same", timestamp="2026-11-27T10:00:01Z")
    token = make_token()
    barrier = threading.Barrier(20)
    replies: list[Reply] = []
    lock = threading.Lock()

    def send() -> None:
        barrier.wait()
        reply = post_webhook(port, body, token=token, timeout=30)
        with lock:
            replies.append(reply)

    threads = [threading.Thread(target=send) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(replies) == 20
    assert {r.status for r in replies} == {200}
    assert len({r.json()["id"] for r in replies}) == 1
    entries = stream(rds, "dedupe")
    assert len(entries) == 1
    assert replies[0].json()["id"].startswith(entries[0][0] + "@")


def test_different_timestamps_are_different_events(port: int, rds: redis.Redis) -> None:
    a = post_webhook(port, webhook_body(collection="ts", timestamp="2026-11-27T10:00:00.000Z"))
    b = post_webhook(port, webhook_body(collection="ts", timestamp="2026-11-27T10:00:00.001Z"))
    c = post_webhook(port, webhook_body(collection="ts", timestamp="2026-11-27T10:00:00.000Z"))
    d = post_webhook(
        port, webhook_body(collection="ts", timestamp="2026-11-27T10:00:00.000Z", action="update")
    )
    assert a.json()["id"] != b.json()["id"] != d.json()["id"]
    assert c.json()["id"] == a.json()["id"]
    assert len(stream(rds, "ts")) == 3


def test_same_collection_in_two_databases_is_two_streams(port: int, rds: redis.Redis) -> None:
    assert post_webhook(port, webhook_body(database="db1", collection="twin")).status == 200
    assert post_webhook(port, webhook_body(database="db2", collection="twin")).status == 200
    assert len(stream(rds, "twin", "db1")) == 1 and len(stream(rds, "twin", "db2")) == 1


# ---------------------------------------------------------------- 401


def _none_token() -> str:
    return jwt.encode({"sub": "x", "exp": int(time.time()) + 600}, None, algorithm="none")


UNAUTHORISED = {
    "missing": (None, "missing_token"),
    "alg_none": (_none_token(), "invalid_token"),
    "wrong_secret": (make_token("another-secret-entirely-for-this-test!!"), "invalid_token"),
    "other_hs_alg": (make_token(alg="HS384"), "invalid_token"),
    "expired": (make_token(ttl=-600), "token_expired"),
    "nbf_future": (make_token(nbf=int(time.time()) + 600), "token_not_yet_valid"),
    "garbage": ("garbage.not.ajwt", "invalid_token"),
    "truncated": (make_token()[:-5], "invalid_token"),
}


@pytest.mark.parametrize("case", sorted(UNAUTHORISED))
def test_bad_tokens_are_401(port: int, rds: redis.Redis, case: str) -> None:
    token, code = UNAUTHORISED[case]
    coll = f"auth_{case}"
    reply = post_webhook(port, webhook_body(collection=coll), token=token)
    assert_error(reply, 401, code)
    assert reply.headers.get("www-authenticate", "").startswith("Bearer")
    assert stream(rds, coll) == []


def test_other_auth_schemes_are_401(port: int) -> None:
    reply = post_webhook(
        port,
        webhook_body(collection="basic"),
        token=None,
        headers={"Authorization": "Basic dXNlcjpwYXNz"},
    )
    assert_error(reply, 401, "missing_token")


def test_previous_secret_is_not_accepted_unless_configured(port: int) -> None:
    reply = post_webhook(port, webhook_body(), token=make_token(SECRET + "x"))
    assert_error(reply, 401, "invalid_token")


# ---------------------------------------------------------------- 400 / 413 / 415 / 422


@pytest.mark.parametrize(
    "body", [b"", b"{", b"not json", b'{"collection": "bad",}', b"\xff\xfe\x00"]
)
def test_bad_json_is_400(port: int, body: bytes) -> None:
    assert_error(post_webhook(port, body), 400, "invalid_json")


def test_deep_nesting_is_400(port: int, rds: redis.Redis) -> None:
    depth = 30_000
    body = (
        b'{"collection":"deep","action":"create","record":{"a":'
        + b"[" * depth
        + b"]" * depth
        + b"}}"
    )
    assert len(body) < MAX_BODY
    assert_error(post_webhook(port, body), 400, "invalid_json")
    assert stream(rds, "deep") == []


def test_too_large_by_content_length_is_413(port: int, rds: redis.Redis) -> None:
    body = webhook_body(collection="big", record={"blob": "x" * MAX_BODY})
    reply = post_webhook(port, body)
    err = assert_error(reply, 413, "payload_too_large")
    assert "INGEST_MAX_BODY_BYTES" in err["message"]
    assert stream(rds, "big") == []


def test_too_large_chunked_is_413(port: int, rds: redis.Redis) -> None:
    body = webhook_body(collection="bigchunk", record={"blob": "x" * MAX_BODY})
    head = (
        b"POST /webhook HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer "
        + make_token().encode()
        + b"\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    chunks = b"".join(
        b"%x\r\n%s\r\n" % (len(body[i : i + 4096]), body[i : i + 4096])
        for i in range(0, len(body), 4096)
    )
    raw = post_raw(port, head + chunks + b"0\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 413"), raw[:200]
    assert json.loads(raw.partition(b"\r\n\r\n")[2])["error"] == "payload_too_large"
    assert stream(rds, "bigchunk") == []


@pytest.mark.parametrize(
    "ctype", ["text/plain", "application/x-www-form-urlencoded", "application/jsonx", ""]
)
def test_wrong_content_type_is_415(port: int, rds: redis.Redis, ctype: str) -> None:
    reply = post_webhook(port, webhook_body(collection="ctype"), content_type=ctype)
    err = assert_error(reply, 415, "unsupported_media_type")
    assert "application/json" in err["message"]
    assert stream(rds, "ctype") == []


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"[1, 2]", "invalid_payload"),
        (b'{"action": "create", "record": {}}', "invalid_payload"),
        (webhook_body(collection="shape", action="upsert"), "invalid_action"),
        (webhook_body(collection="{shape}"), "invalid_name"),
        (webhook_body(collection="sh:ape"), "invalid_name"),
        (webhook_body(collection=""), "invalid_name"),
        (webhook_body(collection="s" * 65), "invalid_name"),
        (webhook_body(database="d{b", collection="shape"), "invalid_name"),
        (webhook_body(collection="shape", record=None), "invalid_payload"),
        (webhook_body(collection="shape", record="absent"), "invalid_payload"),
        (webhook_body(collection="shape", record=[1]), "invalid_payload"),
        (webhook_body(collection="shape", record_id=["x"]), "invalid_payload"),  # type: ignore[arg-type]
    ],
)
def test_wrong_shape_is_422(port: int, rds: redis.Redis, body: bytes, code: str) -> None:
    assert_error(post_webhook(port, body), 422, code)
    assert rds.keys("vski:*shape*") == []


def test_unknown_path_and_method(port: int) -> None:
    assert_error(request(port, "GET", "/nope"), 404, "not_found")
    reply = request(port, "GET", "/webhook")
    assert_error(reply, 405, "method_not_allowed")
    assert "POST" in reply.headers.get("allow", "")


@pytest.mark.parametrize(
    ("raw", "status", "code"),
    [
        (
            b"POST /webhook HTTP/1.1\r\nHost: t\r\nContent-Length: abc\r\n"
            b"Content-Type: application/json\r\n\r\n{}",
            400,
            "bad_request",
        ),
        (b"GARBAGE\r\n\r\n", 400, "bad_request"),
        (
            b"POST /webhook HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n",
            431,
            "request_header_fields_too_large",
        ),
    ],
)
def test_malformed_http_is_json_too(port: int, raw: bytes, status: int, code: str) -> None:
    """Refused by gunicorn before the app runs, still in the same JSON shape."""
    answer = post_raw(port, raw)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 %d" % status), answer[:200]
    assert b"content-type: application/json" in head.lower()
    parsed = json.loads(body)
    assert set(parsed) == {"error", "message"} and parsed["error"] == code


# ---------------------------------------------------------------- health, ready, metrics


def test_health_and_ready(port: int) -> None:
    assert request(port, "GET", "/health").json() == {"status": "ok"}
    ready = request(port, "GET", "/ready")
    assert ready.status == 200 and ready.json()["redis"] == "ok"


def _scrape(port: int) -> dict[str, float]:
    text = request(port, "GET", "/metrics").body.decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def test_metrics_add_up_across_workers(port: int) -> None:
    stored = 'vski_ingest_webhooks_total{outcome="stored"}'
    dup = 'vski_ingest_webhooks_total{outcome="duplicate"}'
    before = _scrape(port)
    n = 40
    for i in range(n):
        reply = post_webhook(port, webhook_body(collection="metrics", record_id=f"m{i}"))
        assert reply.status == 200
    post_webhook(port, webhook_body(collection="metrics", record_id="m0"))  # a retry
    # several scrapes, answered by whichever worker: all must see the same sums
    for _ in range(6):
        after = _scrape(port)
        assert after[stored] - before.get(stored, 0) == n
        assert after[dup] - before.get(dup, 0) == 1
    assert after["vski_ingest_webhook_seconds_count"] >= n + 1


def test_token_never_logged(srv: tuple[RedisTarget, Proc]) -> None:
    _, proc = srv
    wrong = make_token("a-secret-that-the-server-does-not-know!!")
    post_webhook(proc.port, webhook_body(collection="leak"), token=wrong)
    post_webhook(proc.port, b"{broken", token=wrong)
    post_webhook(proc.port, webhook_body(collection="leak"), token="plain-secret-token-123")
    time.sleep(0.3)
    log = proc.log_path.read_text(errors="replace")
    assert wrong not in log and wrong.split(".")[1] not in log
    assert "plain-secret-token-123" not in log
    assert SECRET not in log
