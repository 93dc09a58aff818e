"""Load with a stopwatch for the network-fault suites: every attempt's answer time is kept.

- :class:`TimedSenders` posts distinct webhooks from several threads at a total rate, retrying
  each delivery until 200 (as VSKI does) after the ``Retry-After`` it was given, and keeps every
  attempt: when it started, how long the answer took, the status, the error code, Retry-After.
- :class:`Prober` GETs a path every ``interval`` and keeps (time, status, seconds): readiness
  flips and how long a probe waited.
"""

from __future__ import annotations

import http.client
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass

from tests.support.chaos import webhook
from tests.support.ingest_http import post_with_headers
from tests.support.tokens import make_token


@dataclass(frozen=True)
class Attempt:
    at: float  # monotonic start
    seconds: float  # until the answer (or the sender's timeout)
    status: int  # 0: no answer (connection error or the sender's timeout)
    code: str  # the JSON error code, "" for 200
    retry_after: str | None
    key: int  # which webhook (sender index << 20 | n)


def post_timed(port: int, body: bytes, token: str, timeout: float) -> tuple[int, str, str | None]:
    """(status, the id of a 200 or the error code, Retry-After) of one delivery."""
    status, answer, headers = post_with_headers(port, body, token, timeout)
    if not isinstance(answer, dict):
        return status, str(answer)[:40], headers.get("retry-after")
    code = str(answer.get("id" if status == 200 else "error", ""))
    return status, code, headers.get("retry-after")


def percentile_ms(values: list[float], q: float) -> float:
    """The ``q`` quantile (0.99: p99) of seconds, in milliseconds; 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] * 1000


class TimedSenders:
    """``threads`` senders sharing ``rate`` webhooks/s over ``colls`` of ``db``."""

    def __init__(
        self,
        port: int,
        db: str,
        colls: list[str],
        *,
        rate: float = 40.0,
        threads: int = 8,
        timeout: float = 10.0,
        tag: str = "",
        pad: int = 0,
    ) -> None:
        self.port, self.db, self.colls, self.pad = port, db, colls, pad
        self.interval = threads / rate
        self.timeout = timeout
        self.tag = tag or f"{random.randrange(1 << 30):x}-"
        self.token = make_token(ttl=7200)
        self.attempts: list[Attempt] = []
        self.stored: dict[int, str] = {}  # webhook key -> id answered 200
        self.ids_by_coll: dict[str, list[str]] = {c: [] for c in colls}
        self.sent = 0  # distinct webhooks begun
        self._halt = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)
        ]

    def start(self) -> TimedSenders:
        for t in self._threads:
            t.start()
        return self

    def stop(self, finish: float = 30.0) -> None:
        """Stop starting new webhooks; each sender finishes (retries) the one it holds."""
        self._halt.set()
        for t in self._threads:
            t.join(finish)

    def _run(self, index: int) -> None:
        n = 0
        next_at = time.monotonic() + random.random() * self.interval
        while not self._halt.is_set():
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            next_at = max(next_at + self.interval, time.monotonic())
            key = index << 20 | n
            coll = self.colls[n % len(self.colls)]
            body = webhook(self.db, coll, key, self.pad, self.tag)
            with self._lock:
                self.sent += 1
            self._deliver(key, coll, body)
            n += 1

    def _deliver(self, key: int, coll: str, body: bytes) -> None:
        while True:
            started = time.monotonic()
            status, code, retry_after = post_timed(self.port, body, self.token, self.timeout)
            took = time.monotonic() - started
            ok = status == 200
            with self._lock:
                self.attempts.append(
                    Attempt(started, took, status, "" if ok else code, retry_after, key)
                )
                if ok:
                    self.stored[key] = code
                    self.ids_by_coll[coll].append(code)
            if ok:
                return
            wait = 0.1
            if retry_after and retry_after.isdigit():
                wait = min(float(retry_after), 2.0)
            time.sleep(wait * (0.5 + random.random() / 2))

    def statuses(self, since: float = 0.0, until: float = float("inf")) -> Counter[int]:
        return Counter(a.status for a in self.attempts if since <= a.at < until)

    def slowest(self, since: float = 0.0, until: float = float("inf")) -> float:
        return max((a.seconds for a in self.attempts if since <= a.at < until), default=0.0)


class Prober(threading.Thread):
    """GET ``path`` every ``interval``; ``samples`` are (monotonic time, status, seconds)."""

    def __init__(
        self, port: int, path: str, interval: float = 0.2, timeout: float = 10.0, host: str = ""
    ) -> None:
        super().__init__(daemon=True)
        self.port, self.path, self.interval, self.timeout = port, path, interval, timeout
        self.host = host or "127.0.0.1"
        self.samples: list[tuple[float, int, float]] = []
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            started = time.monotonic()
            status = 0
            conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                conn.request("GET", self.path)
                resp = conn.getresponse()
                resp.read()
                status = resp.status
            except (OSError, http.client.HTTPException):
                status = 0
            finally:
                conn.close()
            self.samples.append((started, status, time.monotonic() - started))
            self._halt.wait(max(0.0, self.interval - (time.monotonic() - started)))

    def stop(self) -> None:
        self._halt.set()
        self.join(self.timeout + 1)

    def first(self, status_ok: bool, after: float) -> float | None:
        """When the first probe sent at or after ``after`` that was (not) 200 got its answer
        (what a load balancer polling ``path`` would have learnt, and when)."""
        for at, status, took in self.samples:
            if at >= after and (status == 200) == status_ok:
                return at + took
        return None

    def slowest(self, since: float = 0.0, until: float = float("inf")) -> float:
        return max((s for at, _, s in self.samples if since <= at < until), default=0.0)
