"""A circuit breaker in front of Redis: while Redis is known unreachable, webhooks are answered
503 + Retry-After at once instead of each waiting out its own timeout.

Why: in a partition (Redis's host gone silent, no RST) every command waits ``REDIS_TIMEOUT``
and every new connection ``REDIS_CONNECT_TIMEOUT``; a sync gunicorn worker holds its one slot
for that long per webhook, the listen backlog fills, and senders time out before being
answered (an operator measured > 10 s). With the breaker, the first webhook that meets the
outage in a worker waits at most one timeout; it opens the circuit, and until a background
probe (``PING`` every ``INGEST_BREAKER_PROBE_SECONDS`` on its own connection) gets an answer,
no webhook touches Redis. Nothing is lost: a 503 tells VSKI to retry and a retry of an event
that did get stored is deduplicated.

One breaker per Redis target and worker process (no shared state between workers: each finds
out by itself, within one timeout). The probe thread starts on the first trip in a process, so
a breaker built before gunicorn forks is still safe.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable

from common.logs import get_logger
from ingest import metrics

log = get_logger("ingest.breaker")


class CircuitOpen(Exception):
    """Redis is known unreachable: not tried, answer 503 with ``retry_after``."""

    def __init__(self, target: str, since: float, retry_after: int, reason: str) -> None:
        super().__init__(f"Redis {target} unreachable for {since:.1f} s ({reason})")
        self.retry_after = retry_after


class Breaker:
    """Closed (calls go through) or open (calls refused until ``probe`` succeeds)."""

    def __init__(
        self, target: str, probe: Callable[[], object], probe_interval: float = 1.0
    ) -> None:
        self.target = target
        self.probe = probe
        self.probe_interval = probe_interval
        self.retry_after = max(1, math.ceil(probe_interval))
        self._open_since: float | None = None
        self._reason = ""
        self._lock = threading.Lock()
        self._probing = False
        self._prober_pid = 0

    @property
    def is_open(self) -> bool:
        return self._open_since is not None

    def check(self) -> None:
        """Raise :class:`CircuitOpen` while the circuit is open (cheap: one attribute read)."""
        since = self._open_since
        if since is not None:
            raise CircuitOpen(self.target, time.monotonic() - since, self.retry_after, self._reason)

    def trip(self, exc: BaseException) -> None:
        """A call failed with a connection error or a timeout: open, and probe until healed."""
        with self._lock:
            if self._open_since is None:
                self._open_since = time.monotonic()
                self._reason = type(exc).__name__
                metrics.CIRCUIT_TRIPS.inc()
                metrics.CIRCUIT_OPEN.set(1)
                log.warning(
                    "redis_circuit_open", target=self.target, error=self._reason,
                    detail=str(exc)[:200],
                )  # fmt: skip
            if not self._probing or self._prober_pid != os.getpid():  # none yet, or forked
                self._probing, self._prober_pid = True, os.getpid()
                threading.Thread(
                    target=self._probe_loop, name=f"breaker:{self.target}", daemon=True
                ).start()

    def _probe_loop(self) -> None:
        while True:
            time.sleep(self.probe_interval)
            try:
                self.probe()
            except Exception as exc:  # still unreachable (or anything else): keep probing
                self._reason = type(exc).__name__
                continue
            with self._lock:  # decided under the lock: a trip from now on starts a new probe
                since, self._open_since = self._open_since, None
                self._probing = False
            metrics.CIRCUIT_OPEN.set(0)
            if since is not None:
                log.info(
                    "redis_circuit_closed", target=self.target,
                    open_s=round(time.monotonic() - since, 2),
                )  # fmt: skip
            return
