"""The ingest instance's heartbeat in the node registry, written by the gunicorn master.

Workers come and go (gunicorn replaces them), so the instance is registered once, by its
master, for all of them: a thread started from ``when_ready`` (``ingest/gunicorn_conf.py``).
Its rates are summed over every worker from the Prometheus multiprocess files the workers
already write (``PROMETHEUS_MULTIPROC_DIR``, the numbers ``/metrics`` serves), and a dead
worker's counters stay in its file, so the sums never go back and the rates stay right while
workers are replaced. Memory is the master's plus its workers' resident sizes.

SIGTERM: gunicorn's master calls ``Arbiter.stop`` to stop its workers; :func:`install` puts
``mark_draining`` in front of it, so ``draining: true`` is written before the first worker is
told to stop, and ``on_exit`` removes the instance.

The thread lives in a process that forks workers, and a fork copies every lock as it is at
that instant: a worker forked while the thread was halfway through importing a module (the
first heartbeat imports ``importlib.metadata``'s helpers) or writing a log line would inherit
that lock held by a thread it does not have, and hang at its own first import or log line
(seen: a worker that never answered). So every heartbeat, log lines included, runs under
:data:`_FORK_LOCK`, ``os.register_at_fork`` takes the same lock around each fork, and the
first heartbeat's record is built once in the main thread before the thread starts. A fork
waits for a heartbeat in progress: milliseconds, at most ~2 s while Redis hangs (the
heartbeat's client gives up after 1 s per attempt).
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from dataclasses import replace
from typing import Any

import redis
from prometheus_client import CollectorRegistry, multiprocess

from common.layout import RegistryKeys
from common.logs import get_logger
from common.node_stats import (
    LatencyMeter,
    RateMeter,
    histogram_state,
    rss_bytes,
    sample_total,
    version,
)
from common.redis_conn import sync_client
from common.registry import SCRIPT, beat_args, leave_args
from ingest.settings import IngestSettings

log = get_logger("ingest.registry")

_FORK_LOCK = threading.RLock()  # reentrant: a heartbeat logs while holding it
os.register_at_fork(
    before=_FORK_LOCK.acquire,
    after_in_parent=_FORK_LOCK.release,
    after_in_child=_FORK_LOCK.release,
)

# the outcomes answered 5xx: Redis unreachable, replicas too slow
SERVER_ERRORS = ("redis_unavailable", "replication_timeout")
WEBHOOKS = "vski_ingest_webhooks_total"


def _log(level: str, event: str, **fields: Any) -> None:
    with _FORK_LOCK:
        getattr(log, level)(event, **fields)


class MasterHeartbeat:
    """Heartbeats of one ingest instance; ``arbiter`` is gunicorn's (its ``WORKERS`` map)."""

    def __init__(self, settings: IngestSettings, arbiter: Any, client: Any | None = None) -> None:
        self.settings = settings
        self.registry = settings.registry
        self.arbiter = arbiter
        self.node_id = f"ingest-{os.urandom(4).hex()}"
        self.keys = RegistryKeys(settings.common.redis.key_prefix)
        self.client = client if client is not None else _quick_client(settings)
        self.script = self.client.register_script(SCRIPT.text)
        self.started_at = round(time.time(), 3)
        self.draining = False
        self._webhooks = RateMeter()
        self._stored = RateMeter()
        self._errors = RateMeter()
        self._latency = LatencyMeter()
        self._stop = threading.Event()
        self._lock = threading.Lock()  # one write at a time: the loop's or the draining mark
        self._thread: threading.Thread | None = None
        self._failing = False

    def _families(self) -> list[Any]:
        path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if not path or not os.path.isdir(path):
            return []
        collector = multiprocess.MultiProcessCollector(CollectorRegistry(), path)  # type: ignore[no-untyped-call]
        return list(collector.collect())  # type: ignore[no-untyped-call]

    def record(self) -> dict[str, Any]:
        now = time.monotonic()
        families = self._families()
        workers = list(getattr(self.arbiter, "WORKERS", {}) or {})
        rss = [rss_bytes(), *(rss_bytes(pid) for pid in workers)]
        total = sample_total(families, WEBHOOKS)
        stored = sample_total(families, WEBHOOKS, outcome="stored")
        errors = sum(sample_total(families, WEBHOOKS, outcome=code) for code in SERVER_ERRORS)
        latency = self._latency.update(
            histogram_state(families, "vski_ingest_webhook_seconds"), now
        )
        return {
            "role": "ingest",
            "address": self.settings.bind,
            "version": version(),
            "started_at": self.started_at,
            "connections": 0,
            "subscriptions": 0,
            "events_per_s": 0.0,
            "webhooks_per_s": round(self._webhooks.update(total, now), 2),
            "stored_per_s": round(self._stored.update(stored, now), 2),
            "errors_5xx_per_s": round(self._errors.update(errors, now), 2),
            "webhook_ms": latency.mean_ms,
            "webhook_p99_ms": latency.p99_ms,
            "read_lag_ms": None,
            "rss_bytes": sum(r for r in rss if r is not None),
            "draining": self.draining,
            "ready": not self.draining,
            "workers": len(workers),
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
            "sent_at": round(time.time(), 3),
        }

    def beat(self) -> bool:
        with self._lock, _FORK_LOCK:
            try:
                args = beat_args(self.node_id, self.record(), self.registry)
                self.script(keys=[self.keys.beats, self.keys.expiry], args=args)
            except (redis.RedisError, OSError) as exc:
                if not self._failing:
                    _log("warning", "registry_heartbeat_failed", error=type(exc).__name__)
                self._failing = True
                return False
        if self._failing:
            _log("info", "registry_heartbeat_restored")
        self._failing = False
        return True

    def _run(self) -> None:
        # when_ready runs just before the master forks its workers: the first heartbeat
        # waits (at most a second) for them, so it does not say "0 workers"
        deadline = time.monotonic() + 1.0
        while not getattr(self.arbiter, "WORKERS", None) and time.monotonic() < deadline:
            if self._stop.wait(0.05):
                return
        self.beat()
        while not self._stop.wait(self.registry.heartbeat):
            if not self.draining:  # after the draining mark, stop() owns the last word
                self.beat()

    def start(self) -> None:
        self.record()  # the first one imports what it needs here, in the main thread
        self._thread = threading.Thread(target=self._run, name="vski-registry", daemon=True)
        self._thread.start()
        _log("info", "registry_joined", node=self.node_id, heartbeat_s=self.registry.heartbeat)

    def mark_draining(self) -> None:
        self.draining = True
        if self.beat():
            _log("info", "registry_draining", node=self.node_id)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=3)
        with self._lock, contextlib.suppress(redis.RedisError, OSError):
            self.script(keys=[self.keys.beats, self.keys.expiry], args=leave_args(self.node_id))
            _log("info", "registry_left", node=self.node_id)


def _quick_client(settings: IngestSettings) -> Any:
    """Redis for heartbeats: at most a second per attempt and no retry (the next heartbeat is
    the retry), so a Redis outage cannot hold up the master, above all its SIGTERM."""
    quick = min(1.0, settings.common.redis.socket_timeout)
    redis_settings = replace(settings.common.redis, socket_timeout=quick, connect_timeout=quick)
    return sync_client(redis_settings, retries=0)


_heartbeat: MasterHeartbeat | None = None


def install(settings: IngestSettings, arbiter: Any) -> None:
    """``when_ready``: register this instance and mark it draining when the master stops."""
    global _heartbeat
    if not settings.registry.enabled or _heartbeat is not None:
        return
    heartbeat = _heartbeat = MasterHeartbeat(settings, arbiter)
    heartbeat.start()
    stop = arbiter.stop

    def stop_draining(graceful: bool = True) -> None:
        with contextlib.suppress(Exception):  # the registry must never stop a shutdown
            heartbeat.mark_draining()
        stop(graceful)

    arbiter.stop = stop_draining  # halt() calls self.stop(): the instance attribute wins


def uninstall() -> None:
    """``on_exit``: leave the registry."""
    global _heartbeat
    if _heartbeat is not None:
        _heartbeat.stop()
        _heartbeat = None
