"""gunicorn workers of the ingest tier are killed (SIGKILL) while they serve webhooks.

The master must replace them, requests must keep succeeding, and since a sender retries a broken
delivery with the same body, the atomic dedupe must keep each event stored exactly once, with
every id answered 200 present in Redis.
"""

from __future__ import annotations

import os
import random
import signal
import time

from tests.support.chaos import WebhookPoster, children, http_get, reported, stream_ids
from tests.support.procs import ingest_proc, wait_until
from tests.support.redis_server import RedisServer

DB = "chaos"
WORKERS = 2


def test_worker_killed_mid_request_is_replaced_and_nothing_is_stored_twice(
    redis_srv: RedisServer,
) -> None:
    coll = "workerkill"
    ingest = ingest_proc(redis_srv.url, workers=WORKERS).start()
    try:
        assert ingest.proc is not None
        master = ingest.proc.pid
        assert wait_until(lambda: len(children(master)) == WORKERS, 20)
        with reported("fault", "gunicorn worker SIGKILLed mid-request") as row:
            posters = [
                WebhookPoster(ingest.port, DB, coll, rate=200, tag=f"p{i}-") for i in range(3)
            ]
            for p in posters:
                p.start()
            time.sleep(1.0)
            killed: list[int] = []
            for _ in range(4):
                pids = children(master)
                if pids:
                    victim = random.choice(pids)
                    os.kill(victim, signal.SIGKILL)
                    killed.append(victim)
                time.sleep(0.8)
            replaced = wait_until(
                lambda: (
                    len(children(master)) == WORKERS and not set(children(master)) & set(killed)
                ),
                20,
            )
            ok_after = sum(p.statuses[200] for p in posters)
            time.sleep(1.0)
            ok_after = sum(p.statuses[200] for p in posters) - ok_after
            for p in posters:
                p.stop()
            for p in posters:
                p.join(30)
            ids = [i for p in posters for i in p.ids]
            broken = sum(p.statuses[0] for p in posters)
            r = redis_srv.client()
            stored = r.xlen(f"vski:{{{DB}/{coll}}}:s")
            in_stream = set(stream_ids(r, DB, coll))
            status, _ = http_get(ingest.port, "/health")
            row.update(
                tried=f"{len(killed)} workers killed under 3 senders (~{len(ids)} webhooks)",
                events=len(ids),
                clients=3,
                lost=len(set(ids) - in_stream),
                duplicated=stored - len(set(ids)),
                notes=f"{broken} deliveries broke mid-request and were retried; "
                f"{ok_after} answered 200 in the second after the last kill",
            )
            assert all(p.error is None and not p.bad for p in posters), [p.bad[:2] for p in posters]
            assert replaced, f"workers {children(master)} after killing {killed}"
            assert ingest.alive() and status == 200
            assert len(ids) == len(set(ids)), "two deliveries got the same id"
            assert set(ids) <= in_stream, "an event answered 200 is not in Redis"
            assert stored == len(ids), "a retried delivery was stored twice"
            assert ok_after > 20, "requests did not keep succeeding after the kills"
    finally:
        ingest.stop()
