"""Helpers of the reliability and abuse suite: load, resuming clients, process facts, results.

- :class:`WebhookPoster` posts webhooks at a pace from a thread, like a VSKI trigger, and keeps
  every id answered 200 (the events the service promised to deliver) and every status seen.
- :class:`ResumingClient` behaves like the SDK after a close: it reconnects (to the next node, as
  a load balancer would) and re-subscribes with its lastId; it keeps every id it received.
- :func:`delivery` compares what a client got with what ingest answered 200: lost, duplicated.
- :class:`RssSampler` samples the resident memory of processes while a test runs.
- :func:`reported` writes one result row per case (JSON, under ``VSKI_RELIABILITY_DIR``), from
  which ``bench/reliability_report.py`` renders the README's reliability table.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import itertools
import json
import os
import random
import re
import signal
import statistics
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.support.ingest_http import post_once
from tests.support.procs import Proc
from tests.support.tokens import make_token

ROOT = Path(__file__).resolve().parents[2]
RESULTS_ENV = "VSKI_RELIABILITY_DIR"

# ---------------------------------------------------------------- result rows


def results_dir() -> Path:
    path = Path(os.environ.get(RESULTS_ENV) or ROOT / ".vski" / "reliability")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:80]


@contextlib.contextmanager
def reported(area: str, case: str, **fields: Any) -> Iterator[dict[str, Any]]:
    """Yield a row the test fills (tried, events, clients, lost, duplicated, notes); on exit the
    row is written with ``result`` pass, or FAIL and the assertion's text if the block raised, so
    the table shows failures too. ``known_bug`` marks a case expected to fail (xfail)."""
    test = os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0]
    row: dict[str, Any] = {"area": area, "case": case, "tried": "", "test": test, **fields}
    started = time.monotonic()
    try:
        yield row
    except BaseException as exc:
        row["result"] = "known bug" if row.get("known_bug") else "FAIL"
        row["error"] = (str(exc) or type(exc).__name__).splitlines()[0][:200]
        raise
    else:
        row["result"] = "pass"
    finally:
        row["seconds"] = round(time.monotonic() - started, 1)
        row["at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        out = results_dir() / f"{_slug(area)}__{_slug(case)}.json"
        out.write_text(json.dumps(row, indent=1, default=str))


# ---------------------------------------------------------------- webhooks


def webhook(db: str, coll: str, n: int, pad: int = 0, tag: str = "") -> bytes:
    """One webhook body; ``n`` and ``tag`` make it a distinct delivery (not deduplicated)."""
    record: dict[str, Any] = {"id": f"r{tag}{n}", "n": n, "sent": time.time()}
    if pad:
        record["pad"] = "x" * pad
    body = {
        "database": db,
        "collection": coll,
        "id": f"r{tag}{n}",
        "action": "create",
        "timestamp": f"2026-11-28T00:00:00.{n:06d}Z{tag}",
        "record": record,
    }
    return json.dumps(body).encode()


class WebhookPoster(threading.Thread):
    """Posts ``count`` webhooks (or until :meth:`stop`) at ``rate`` per second.

    With ``retry`` a refused or broken delivery is sent again (same body, as VSKI retries) until
    it is answered 200; without it every event is tried once. ``ids`` holds the ids answered 200
    in answer order; ``statuses`` counts every answer (0 = connection error)."""

    def __init__(
        self,
        port: int,
        db: str,
        coll: str | Sequence[str],
        *,
        rate: float = 100.0,
        count: int | None = None,
        retry: bool = True,
        pad: int = 0,
        tag: str = "",
        retry_for: float = 60.0,
    ) -> None:
        super().__init__(daemon=True)
        self.port, self.db = port, db
        self.colls = [coll] if isinstance(coll, str) else list(coll)
        self.rate, self.count, self.retry, self.pad = rate, count, retry, pad
        self.tag, self.retry_for = tag or f"{random.randrange(1 << 30):x}-", retry_for
        self.token = make_token(ttl=7200)
        self.ids: list[str] = []
        self.ids_by_coll: dict[str, list[str]] = {c: [] for c in self.colls}
        self.statuses: Counter[int] = Counter()
        self.answers: list[tuple[float, int]] = []  # (monotonic time, status) of every attempt
        self.bad: list[Any] = []  # unexpected answers (not 200/503/429/0)
        self.error: BaseException | None = None
        self._halt = threading.Event()

    def stop(self) -> None:
        self._halt.set()

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:
            self.error = exc

    def _run(self) -> None:
        interval = 1.0 / self.rate if self.rate > 0 else 0.0
        next_at = time.monotonic()
        for n in itertools.count():
            if self._halt.is_set() or (self.count is not None and n >= self.count):
                return
            coll = self.colls[n % len(self.colls)]
            body = webhook(self.db, coll, n, self.pad, self.tag)
            deadline = time.monotonic() + self.retry_for
            while True:
                status, answer = post_once(self.port, body, self.token)
                self.statuses[status] += 1
                self.answers.append((time.monotonic(), status))
                if status == 200:
                    self.ids.append(answer["id"])
                    self.ids_by_coll[coll].append(answer["id"])
                    break
                if status not in (0, 429, 503):
                    self.bad.append((status, answer))
                if not self.retry or self._halt.is_set() or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            next_at += interval
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                next_at = time.monotonic()  # behind: do not burst to catch up


# ---------------------------------------------------------------- clients


def ws_url(port: int, db: str, token: str | None = None, host: str = "127.0.0.1") -> str:
    return f"ws://{host}:{port}/api/realtime?db={db}&auth={token or make_token(ttl=7200)}"


@dataclass(eq=False)
class ResumingClient:
    """An SDK-like client of one or more collections.

    It connects to ``ports[start]``; when the connection closes it waits ``delay`` and connects to
    the next port in the list (the load balancer's choice of a live node) with a SUBSCRIBE per
    collection carrying that collection's lastId."""

    ports: list[int]
    db: str
    colls: list[str]
    start: int = 0
    delay: float = 0.1
    token: str = field(default_factory=lambda: make_token(ttl=7200))
    host: str = "127.0.0.1"  # another address: e.g. a node seen from a network namespace
    # (receive time, latency) of every event whose record has a "sent" time, when a list
    latencies: list[tuple[float, float]] | None = None
    ids: dict[str, list[str]] = field(default_factory=dict)
    subscribed: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    close_codes: list[int | None] = field(default_factory=list)
    connects: int = 0
    failed_connects: int = 0
    conn: ClientConnection | None = None
    task: asyncio.Task[None] | None = None
    stopping: bool = False
    _node: int = 0

    def __post_init__(self) -> None:
        self._node = self.start % len(self.ports)
        for c in self.colls:
            self.ids.setdefault(c, [])

    @property
    def port(self) -> int:
        return self.ports[self._node]

    def last_id(self, coll: str) -> str | None:
        got = self.ids.get(coll)
        return got[-1] if got else None

    def begin(self) -> ResumingClient:
        self.task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        while not self.stopping:
            try:
                conn = await connect(
                    ws_url(self.port, self.db, self.token, self.host),
                    open_timeout=10,
                    compression=None,
                    max_size=None,
                    ping_interval=None,
                )
            except Exception:
                self.failed_connects += 1
                self._node = (self._node + 1) % len(self.ports)
                await asyncio.sleep(self.delay)
                continue
            self.connects += 1
            self.conn = conn
            with contextlib.suppress(ConnectionClosed):
                for coll in self.colls:
                    await conn.send(self._subscribe_frame(coll))
            await self._read(conn)
            self.close_codes.append(conn.close_code)
            if self.stopping:
                return
            self._node = (self._node + 1) % len(self.ports)
            await asyncio.sleep(self.delay * (0.5 + random.random()))

    def _subscribe_frame(self, coll: str) -> str:
        msg: dict[str, Any] = {"type": "SUBSCRIBE", "collection": coll}
        last = self.last_id(coll)
        if last is not None:
            msg["lastId"] = last
        return json.dumps(msg)

    async def _read(self, conn: ClientConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for raw in conn:
                msg = json.loads(raw)
                kind = msg.get("type")
                if kind == "EVENT":
                    got = self.ids.setdefault(msg["collection"], [])
                    got.extend(ev["id"] for ev in msg["events"])
                    if self.latencies is not None:
                        self._timed(msg["events"])
                elif kind == "SUBSCRIBED":
                    self.subscribed.append(msg)
                elif kind == "ERROR":
                    self.errors.append(msg)

    def _timed(self, events: list[dict[str, Any]]) -> None:
        assert self.latencies is not None
        now = time.time()
        for ev in events:
            sent = ((ev.get("data") or {}).get("record") or {}).get("sent")
            if isinstance(sent, (int, float)):
                self.latencies.append((now, now - sent))

    async def send(self, msg: dict[str, Any]) -> None:
        if self.conn is not None:
            with contextlib.suppress(ConnectionClosed):
                await self.conn.send(json.dumps(msg))

    async def stop(self) -> None:
        self.stopping = True
        if self.conn is not None:
            with contextlib.suppress(Exception):
                await self.conn.close()
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task


async def wait_for(predicate: Any, timeout: float = 30.0, interval: float = 0.05) -> bool:
    """Poll ``predicate`` until true or ``timeout``; returns whether it became true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(interval)
    return bool(predicate())


async def open_clients(
    ports: Sequence[int],
    db: str,
    count: int,
    colls: list[str],
    start: int | None = None,
    delay: float = 0.1,
) -> list[ResumingClient]:
    """``count`` resuming clients of ``colls``, spread over the nodes (or all on ``start``),
    once every one of them is subscribed."""
    clients = []
    for i in range(count):
        first = i % len(ports) if start is None else start
        clients.append(ResumingClient(list(ports), db, colls, start=first, delay=delay).begin())
        if i % 50 == 49:
            await asyncio.sleep(0.05)  # do not make the setup itself a storm
    ok = await wait_for(lambda: all(len(c.subscribed) >= len(colls) for c in clients), 60)
    assert ok, "clients did not all subscribe"
    return clients


async def stop_all(clients: list[ResumingClient]) -> None:
    await asyncio.gather(*(c.stop() for c in clients))


async def settle_delivery(
    clients: list[ResumingClient], expected: dict[str, list[str]], timeout: float = 45
) -> None:
    """Until every client has as many ids of each collection as expected (or ``timeout``),
    then a moment more: anything extra (a duplicate) would arrive now."""

    def done() -> bool:
        return all(len(c.ids[coll]) >= len(ids) for c in clients for coll, ids in expected.items())

    await wait_for(done, timeout)
    await asyncio.sleep(0.3)


def kill9(node: Proc) -> None:
    """SIGKILL a tier's whole process group (no drain, no goodbye) and reap it."""
    node.signal(signal.SIGKILL)
    node.stop()


@dataclass(frozen=True)
class Delivery:
    expected: int
    received: int
    lost: int
    duplicated: int
    out_of_order: int
    first_lost: tuple[str, ...]


def delivery(expected: Sequence[str], received: Sequence[str]) -> Delivery:
    """Compare a client's received ids with the ids ingest answered 200 (in seq order)."""
    got = set(received)
    missing = [i for i in expected if i not in got]
    counts = Counter(received)
    dups = sum(n - 1 for n in counts.values() if n > 1)
    order = {eid: n for n, eid in enumerate(expected)}
    seen = [order[i] for i in received if i in order]
    disorder = sum(1 for a, b in itertools.pairwise(seen) if b < a)
    return Delivery(len(expected), len(received), len(missing), dups, disorder, tuple(missing[:5]))


def sum_delivery(results: Sequence[Delivery]) -> tuple[int, int, int]:
    """(lost, duplicated, out of order) summed over clients."""
    return (
        sum(d.lost for d in results),
        sum(d.duplicated for d in results),
        sum(d.out_of_order for d in results),
    )


def faulty(results: Sequence[Delivery]) -> list[Delivery]:
    """The first few clients that lost, duplicated or reordered something (for messages)."""
    return [r for r in results if r.lost or r.duplicated or r.out_of_order][:3]


def seq_order(ids: Sequence[str]) -> list[str]:
    """Ids of one collection and one epoch in stream order (answers can race between workers)."""

    def key(eid: str) -> tuple[int, int]:
        ms, _, seq = eid.partition("@")[0].partition("-")
        return int(seq), int(ms)

    return sorted(ids, key=key)


class PingProbe:
    """A connection that pings the node every ``interval`` and keeps the round-trip times: the
    node's event-loop latency as another client sees it."""

    def __init__(self, port: int, interval: float = 0.02) -> None:
        self.port, self.interval = port, interval
        self.rtts: list[float] = []
        self.failures = 0
        self._task: asyncio.Task[None] | None = None
        self._conn: ClientConnection | None = None

    async def start(self) -> PingProbe:
        self._conn = await connect(ws_url(self.port, "probe"), ping_interval=None, open_timeout=10)
        self._task = asyncio.create_task(self._loop())
        return self

    async def _loop(self) -> None:
        assert self._conn is not None
        while True:
            started = time.perf_counter()
            try:
                pong = await self._conn.ping()
                async with asyncio.timeout(5):
                    await pong
                self.rtts.append(time.perf_counter() - started)
            except (TimeoutError, ConnectionClosed):
                self.failures += 1
                if self._conn.close_code is not None:
                    return
            await asyncio.sleep(self.interval)

    def take(self) -> list[float]:
        out, self.rtts = self.rtts, []
        return out

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._conn is not None:
            await self._conn.close()


def p99(values: Sequence[float]) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


# ---------------------------------------------------------------- processes


def rss_kb(pid: int) -> int:
    """Resident memory of one process in kB (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return 0
    return 0


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (e.g. gunicorn's workers), from /proc."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces, so split after the last ')'
        fields = stat.rpartition(")")[2].split()
        if len(fields) > 1 and int(fields[1]) == pid:
            out.append(int(entry))
    return sorted(out)


def tree_rss_kb(pid: int) -> int:
    """RSS of a process and its direct children (gunicorn master + workers)."""
    return rss_kb(pid) + sum(rss_kb(c) for c in children(pid))


class RssSampler(threading.Thread):
    """Samples RSS (kB) of named process trees every ``interval`` seconds."""

    def __init__(self, pids: dict[str, int], interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.pids, self.interval = pids, interval
        self.samples: dict[str, list[int]] = {name: [] for name in pids}
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            for name, pid in self.pids.items():
                self.samples[name].append(tree_rss_kb(pid))
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join(5)


@dataclass(frozen=True)
class Growth:
    first_kb: float
    last_kb: float
    peak_kb: int

    @property
    def growth_kb(self) -> float:
        return self.last_kb - self.first_kb

    def bounded(self, ratio: float, slack_kb: float) -> bool:
        """Last third's median within ``ratio`` of the first third's, or within ``slack_kb``."""
        return self.last_kb <= max(self.first_kb * (1 + ratio), self.first_kb + slack_kb)


def growth(samples: Sequence[int]) -> Growth:
    """Median RSS of the first and the last third of a run (medians ignore one-off spikes)."""
    live = [s for s in samples if s > 0]
    if len(live) < 3:
        raise AssertionError(f"too few RSS samples: {samples}")
    third = len(live) // 3
    return Growth(statistics.median(live[:third]), statistics.median(live[-third:]), max(live))


def metric_value(text: str, name: str) -> float | None:
    """The value of an unlabelled Prometheus sample in a /metrics page."""
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{}"):
            return float(line.split()[-1])
    return None


def node_gauge(port: int, name: str) -> float:
    """An unlabelled gauge from a node's /metrics; -1 when it cannot be read."""
    status, body = http_get(port, "/metrics", 5)
    value = metric_value(body.decode(), name) if status == 200 else None
    return -1.0 if value is None else value


def stream_ids(client: Any, db: str, coll: str, prefix: str = "vski") -> list[str]:
    """Client-visible ids of every event Redis retains for one collection, in stream order."""
    epoch = client.hget(f"{prefix}:{{{db}/{coll}}}:m", "e")
    if epoch is None:
        return []
    entries = client.xrange(f"{prefix}:{{{db}/{coll}}}:s")
    return [f"{sid.decode()}@{epoch.decode()}" for sid, _ in entries]


def http_get(port: int, path: str, timeout: float = 10.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


TRACE_MARKERS = ("Traceback", 'File "', "site-packages", '.py", line')


def leaks_trace(body: bytes | str) -> bool:
    """True if an answer shows internals (a Python traceback or file paths)."""
    text = body.decode(errors="replace") if isinstance(body, bytes) else body
    return any(marker in text for marker in TRACE_MARKERS)
