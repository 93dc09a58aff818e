"""Which collections are busy right now, for ``/admin/collections``: counted by ingest workers.

Finding the busiest of 100,000 collections by looking at them would cost a scan of the whole
keyspace; instead each worker counts the events it stores per collection in memory (one dict
increment per webhook, no Redis call) and a thread adds its counts to Redis once a second: per
time window (``WINDOW_SECONDS``) a sorted set of ``<db>/<collection>`` by events stored, and one
per database (``common/layout.py`` ``ActivityKeys``). The append script is unchanged: on Redis
Cluster it could not write a key outside the collection's slot anyway.

Bounded: a window keeps its ``MAX_MEMBERS`` busiest collections (the tail is trimmed at each
flush) and expires after ``KEEP_WINDOWS`` windows. These are statistics: if Redis is down the
counts of that second are dropped (logged once per outage), and a worker that exits loses at
most its last second of counts. Window numbers come from the worker's clock.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import redis

from common.layout import ActivityKeys
from common.logs import get_logger
from common.messages import Webhook
from ingest.store import AppendResult, EventStore

log = get_logger("ingest.activity")

WINDOW_SECONDS = 60
KEEP_WINDOWS = 3
MAX_MEMBERS = 10_000
FLUSH_SECONDS = 1.0


def window_index(now: float) -> int:
    return int(now // WINDOW_SECONDS)


class Activity:
    """Per-worker counts of stored events per collection, flushed to Redis by a thread."""

    def __init__(self, client: Any, prefix: str = "vski") -> None:
        self.client = client
        self.keys = ActivityKeys(prefix)
        self._counts: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._failing = False
        # a thread does not survive fork: a worker forked from a process that had one starts
        # its own at its first event (gunicorn's --preload would do that)
        os.register_at_fork(after_in_child=self._forget_thread)

    def _forget_thread(self) -> None:
        self._lock = threading.Lock()
        self._thread = None

    def note(self, database: str, collection: str) -> None:
        """One stored event (the hot path: a lock and a dict increment)."""
        key = (database, collection)
        with self._lock:
            self._counts[key] = self._counts.get(key, 0) + 1
        if self._thread is None:
            self._start()

    def _start(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._run, name="vski-activity", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            time.sleep(FLUSH_SECONDS)
            self.flush()

    def flush(self, now: float | None = None) -> int:
        """Add the counts so far to the current window; returns how many collections."""
        with self._lock:
            counts, self._counts = self._counts, {}
        if not counts:
            return 0
        window = window_index(time.time() if now is None else now)
        ttl_ms = WINDOW_SECONDS * KEEP_WINDOWS * 1000
        touched: set[str] = set()
        pipe = self.client.pipeline(transaction=False)
        for (db, coll), n in counts.items():
            everywhere, one_db = self.keys.window(window), self.keys.window(window, db)
            pipe.zincrby(everywhere, n, f"{db}/{coll}")
            pipe.zincrby(one_db, n, coll)
            touched.update((everywhere, one_db))
        for key in touched:
            pipe.pexpire(key, ttl_ms)
            pipe.zremrangebyrank(key, 0, -(MAX_MEMBERS + 1))
        try:
            pipe.execute()
        except (redis.RedisError, OSError) as exc:
            if not self._failing:
                log.warning("activity_flush_failed", error=type(exc).__name__)
            self._failing = True
            return 0
        self._failing = False
        return len(counts)


class TrackedEventStore(EventStore):
    """The event store of a worker, noting each newly stored event in :class:`Activity`."""

    activity: Activity | None = None

    def append(self, hook: Webhook) -> AppendResult:
        result = super().append(hook)
        if not result.duplicate and self.activity is not None:
            self.activity.note(hook.database, hook.collection)
        return result
