"""Ingest when things go wrong: Redis killed or frozen, shutdown mid-request, replicas behind,
senders too fast; plus the relaxed-auth mode and retention from the environment."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from typing import Any

import pytest

from tests.support.ingest_http import Reply, post_webhook, request, slowloris, webhook_body
from tests.support.procs import ingest_proc, wait_until
from tests.support.redis_server import RedisServer, primary_with_replica, redis_server
from tests.support.tokens import make_token

BOUND = 3.0  # a webhook never waits longer than this for an answer when Redis is in trouble


def xlen(server: RedisServer, coll: str) -> int:
    return int(server.client().xlen(f"vski:{{postgres/{coll}}}:s"))


def assert_503(reply: Reply, code: str) -> None:
    assert reply.status == 503, reply.body
    assert reply.headers.get("retry-after") == "1"
    body = reply.json()
    assert set(body) == {"error", "message"} and body["error"] == code
    assert b"Traceback" not in reply.body


def freeze(server: RedisServer, on: bool) -> None:
    assert server.proc is not None
    os.kill(server.proc.pid, signal.SIGSTOP if on else signal.SIGCONT)


def test_redis_killed_503_fast_then_recovers(redis_srv: RedisServer) -> None:
    proc = ingest_proc(
        redis_srv.url, workers=2, REDIS_TIMEOUT="1", INGEST_BREAKER_PROBE_SECONDS="0.2"
    ).start()
    try:
        ok = post_webhook(proc.port, webhook_body(collection="kill", record_id="before"))
        assert ok.status == 200
        epoch_before = ok.json()["id"].split("@")[1]
        redis_srv.stop(kill=True)
        token = make_token()
        for i in range(6):  # enough to reach both workers
            reply = post_webhook(
                proc.port, webhook_body(collection="kill", record_id=f"d{i}"), token=token
            )
            assert_503(reply, "redis_unavailable")
            assert reply.elapsed < BOUND
        ready = request(proc.port, "GET", "/ready")
        assert ready.status == 503 and ready.headers.get("retry-after") == "1"
        assert request(proc.port, "GET", "/health").status == 200

        redis_srv.start()  # same port, empty (no persistence)
        assert wait_until(
            lambda: (
                post_webhook(proc.port, webhook_body(collection="kill", record_id="probe")).status
                == 200
            ),
            timeout=15,
            interval=0.2,
        )
        time.sleep(0.5)  # the other worker's breaker probes every 0.2 s
        ids = set()
        for i in range(6):
            reply = post_webhook(proc.port, webhook_body(collection="kill", record_id=f"a{i}"))
            assert reply.status == 200
            ids.add(reply.json()["id"].split("@")[1])
        assert len(ids) == 1 and epoch_before not in ids  # lost data -> new epoch
        assert xlen(redis_srv, "kill") == 7  # probe + 6; nothing from the refused ones
        assert request(proc.port, "GET", "/ready").status == 200
        log = proc.log_path.read_text(errors="replace")
        assert "redis_unavailable" in log
        assert token not in log and token.split(".")[1] not in log
    finally:
        proc.stop()


def test_frozen_redis_503_in_bounded_time_nothing_doubled(redis_srv: RedisServer) -> None:
    proc = ingest_proc(redis_srv.url, workers=1, REDIS_TIMEOUT="0.3").start()
    try:
        body = webhook_body(collection="frozen", record_id="f1")
        assert post_webhook(proc.port, webhook_body(collection="frozen")).status == 200
        freeze(redis_srv, True)
        try:
            reply = post_webhook(proc.port, body)
            assert_503(reply, "redis_unavailable")
            assert reply.elapsed < BOUND
        finally:
            freeze(redis_srv, False)
        # VSKI retries (after Retry-After: the breaker probes Redis back within 1 s): whether or
        # not Redis ran the timed-out attempt, there is one event
        deadline = time.monotonic() + 5
        retry = post_webhook(proc.port, body)
        while retry.status == 503 and time.monotonic() < deadline:
            assert_503(retry, "redis_unavailable")
            time.sleep(0.2)
            retry = post_webhook(proc.port, body)
        assert retry.status == 200
        assert post_webhook(proc.port, body).json()["id"] == retry.json()["id"]
        assert xlen(redis_srv, "frozen") == 2
    finally:
        proc.stop()


def test_sigterm_answers_the_request_in_flight(redis_srv: RedisServer) -> None:
    proc = ingest_proc(redis_srv.url, workers=1, REDIS_TIMEOUT="10").start()
    result: dict[str, Any] = {}
    assert post_webhook(proc.port, webhook_body(collection="warm")).status == 200
    freeze(redis_srv, True)
    try:
        sender = threading.Thread(
            target=lambda: result.update(
                reply=post_webhook(proc.port, webhook_body(collection="term"), timeout=30)
            )
        )
        sender.start()
        time.sleep(0.7)  # the request is inside the worker, waiting for Redis
        proc.signal(signal.SIGTERM)
        time.sleep(0.5)
    finally:
        freeze(redis_srv, False)
    sender.join(30)
    assert result["reply"].status == 200
    assert proc.proc is not None and proc.proc.wait(30) == 0
    assert xlen(redis_srv, "term") == 1


def test_auth_can_be_disabled_with_a_warning(redis_srv: RedisServer) -> None:
    proc = ingest_proc(redis_srv.url, workers=1, INGEST_REQUIRE_AUTH="false", JWT_SECRET="")
    proc.start()
    try:
        reply = post_webhook(proc.port, webhook_body(collection="open"), token=None)
        assert reply.status == 200
        assert wait_until(lambda: "INGEST_REQUIRE_AUTH=false" in proc.log(), timeout=5)
        warning = next(line for line in proc.log().splitlines() if "auth_disabled" in line)
        assert json.loads(warning)["level"] == "warning"
    finally:
        proc.stop()


def test_rate_limit_429(redis_srv: RedisServer) -> None:
    proc = ingest_proc(
        redis_srv.url, workers=1, INGEST_RATE_LIMIT="0.5", INGEST_RATE_BURST="3"
    ).start()
    try:
        replies = [
            post_webhook(proc.port, webhook_body(collection="rl", record_id=f"r{i}"))
            for i in range(8)
        ]
        statuses = [r.status for r in replies]
        assert statuses[:3] == [200, 200, 200]
        limited = [r for r in replies if r.status == 429]
        assert len(limited) >= 4
        for r in limited:
            assert r.json()["error"] == "rate_limited"
            assert int(r.headers["retry-after"]) >= 1
        assert xlen(redis_srv, "rl") == statuses.count(200)
    finally:
        proc.stop()


def test_rate_limit_per_sender_behind_a_trusted_proxy(redis_srv: RedisServer) -> None:
    """The test client plays nginx on 127.0.0.1: with INGEST_TRUSTED_PROXIES the limit counts
    each X-Forwarded-For sender on its own; a forged left-most hop does not escape it."""
    proc = ingest_proc(
        redis_srv.url,
        workers=1,
        INGEST_RATE_LIMIT="0.5",
        INGEST_RATE_BURST="2",
        INGEST_TRUSTED_PROXIES="127.0.0.1",
    ).start()
    try:

        def send(i: int, forwarded: str) -> int:
            body = webhook_body(collection="rlp", record_id=f"p{i}")
            reply = post_webhook(proc.port, body, headers={"X-Forwarded-For": forwarded})
            return reply.status

        a = [send(i, "10.0.0.1") for i in range(4)]
        b = [send(10 + i, "10.0.0.2") for i in range(4)]
        forged = [send(20 + i, f"1.2.3.{i}, 10.0.0.1") for i in range(2)]
        assert a[:2] == [200, 200] and 429 in a[2:]
        assert b[:2] == [200, 200], "another sender behind the same proxy has its own budget"
        assert forged == [429, 429], "a forged left-most hop must not reset the budget"
    finally:
        proc.stop()


def test_retention_from_environment() -> None:
    with redis_server("--stream-node-max-entries", "10") as server:
        proc = ingest_proc(
            server.url, workers=2, RETENTION_MAX_EVENTS="20", RETENTION_SECONDS="5"
        ).start()
        try:
            for i in range(120):
                assert (
                    post_webhook(proc.port, webhook_body(collection="ret", record_id=f"{i}")).status
                    == 200
                )
            assert 20 <= xlen(server, "ret") <= 30
            pttl = server.client().pttl("vski:{postgres/ret}:s")
            assert 0 < pttl <= 5000
        finally:
            proc.stop()


def test_wait_replicas() -> None:
    with primary_with_replica() as (primary, replica):
        proc = ingest_proc(
            primary.url, workers=1, INGEST_WAIT_REPLICAS="1", INGEST_WAIT_TIMEOUT_MS="300"
        ).start()
        try:
            assert (
                post_webhook(proc.port, webhook_body(collection="w", record_id="1")).status == 200
            )
            assert int(replica.client().xlen("vski:{postgres/w}:s")) == 1
            body = webhook_body(collection="w", record_id="2")
            freeze(replica, True)
            try:
                reply = post_webhook(proc.port, body)
                assert_503(reply, "replication_timeout")
                assert "0 of 1 replicas" in reply.json()["message"]
                assert reply.elapsed < BOUND
            finally:
                freeze(replica, False)
            retry = post_webhook(proc.port, body)  # dedupe: the event the first try stored
            assert retry.status == 200
            assert xlen(primary, "w") == 2
            replica.stop()  # replica gone
            reply = post_webhook(proc.port, webhook_body(collection="w", record_id="3"))
            assert_503(reply, "replication_timeout")
        finally:
            proc.stop()


@pytest.mark.slow
def test_redis_flapping_soak(redis_srv: RedisServer) -> None:
    """Redis killed and restarted several times under steady traffic: every answer is 200 or a
    fast 503, and the service always comes back."""
    proc = ingest_proc(redis_srv.url, workers=2, REDIS_TIMEOUT="0.5").start()
    try:
        for round_ in range(5):
            redis_srv.stop(kill=True)
            for i in range(10):
                reply = post_webhook(
                    proc.port, webhook_body(collection="flap", record_id=f"{round_}-{i}")
                )
                assert reply.status == 503 and reply.elapsed < BOUND
            redis_srv.start()
            assert wait_until(
                lambda: (
                    post_webhook(proc.port, webhook_body(collection="flap", record_id="p")).status
                    == 200
                ),
                timeout=15,
                interval=0.2,
            )
    finally:
        proc.stop()


def test_gthread_workers(redis_srv: RedisServer) -> None:
    """INGEST_WORKER_CLASS=gthread: keep-alive connections, the same contract, same recovery."""
    import http.client

    proc = ingest_proc(
        redis_srv.url,
        workers=2,
        INGEST_WORKER_CLASS="gthread",
        INGEST_THREADS="4",
        REDIS_TIMEOUT="1",
        INGEST_BREAKER_PROBE_SECONDS="0.2",
    ).start()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", proc.port, timeout=10)
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {make_token()}"}
        ids = []
        for i in range(5):  # one kept-alive connection, several webhooks
            conn.request(
                "POST", "/webhook", webhook_body(collection="gt", record_id=f"{i}"), headers
            )
            resp = conn.getresponse()
            assert resp.status == 200 and resp.getheader("connection") != "close"
            ids.append(json.loads(resp.read())["id"])
        conn.close()
        assert [int(i.split("@")[0].split("-")[1]) for i in ids] == [1, 2, 3, 4, 5]

        body = webhook_body(collection="gt", record_id="same")
        barrier = threading.Barrier(12)
        replies: list[Reply] = []

        def send() -> None:
            barrier.wait()
            replies.append(post_webhook(proc.port, body, timeout=30))

        threads = [threading.Thread(target=send) for _ in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert {r.status for r in replies} == {200}
        assert len({r.json()["id"] for r in replies}) == 1
        assert xlen(redis_srv, "gt") == 6

        redis_srv.stop(kill=True)
        reply = post_webhook(proc.port, webhook_body(collection="gt", record_id="down"))
        assert_503(reply, "redis_unavailable")
        assert reply.elapsed < BOUND
        redis_srv.start()
        assert wait_until(
            lambda: (
                post_webhook(proc.port, webhook_body(collection="gt", record_id="up")).status == 200
            ),
            timeout=15,
            interval=0.2,
        )
        time.sleep(0.5)  # every worker's breaker has probed Redis back by now

        freeze(redis_srv, True)
        result: dict[str, Any] = {}
        try:
            sender = threading.Thread(
                target=lambda: result.update(
                    reply=post_webhook(proc.port, webhook_body(collection="gt2"), timeout=30)
                )
            )
            sender.start()
            time.sleep(0.5)
            proc.signal(signal.SIGTERM)
            time.sleep(0.3)
        finally:
            freeze(redis_srv, False)
        sender.join(30)
        assert result["reply"].status == 200
        assert proc.proc is not None and proc.proc.wait(30) == 0
    finally:
        proc.stop()


def test_gthread_stalled_senders_cannot_hold_threads(redis_srv: RedisServer) -> None:
    """gunicorn's gthread threads would block forever on a stalled sender; ours time out after
    INGEST_TIMEOUT, and a body that never completes gets a JSON 408."""
    proc = ingest_proc(
        redis_srv.url,
        workers=1,
        INGEST_WORKER_CLASS="gthread",
        INGEST_THREADS="2",
        INGEST_TIMEOUT="2",
    ).start()
    try:
        socks = [slowloris(proc.port, body=i % 2 == 0, length=500) for i in range(3)]
        time.sleep(0.3)
        reply = post_webhook(proc.port, webhook_body(collection="stall"), timeout=20)
        assert reply.status == 200 and reply.elapsed < 10
        answers = []
        for s in socks:
            s.settimeout(15)
            try:
                answers.append(s.recv(4096))
            except (ConnectionResetError, TimeoutError):
                answers.append(b"")
            s.close()
        body_stall = answers[0]
        assert body_stall.startswith(b"HTTP/1.1 408"), body_stall[:200]
        assert json.loads(body_stall.partition(b"\r\n\r\n")[2])["error"] == "request_timeout"
        assert xlen(redis_srv, "stall") == 1 and proc.alive()
    finally:
        proc.stop()
