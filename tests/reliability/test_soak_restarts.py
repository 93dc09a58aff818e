"""The 30-minute soak (``--run-slow`` only; a load test: run it under the bench lock).

Two nodes, 200 webhooks/s retried until 200, churning clients (connect, subscribe, replay,
change, leave; some aborted without a close frame), resuming clients whose connections are cut
every few seconds, and a Redis restart (SIGTERM, AOF) every 3 minutes. Asserted: nothing
answered 200 is lost or doubled; the steady clients' p99 latency in the last 5 minutes is
within 1.5x of the first 5 (after warm-up; the 10 s after each Redis restart are left out of
both, their own p99 is reported); each node's RSS per minute stays within 10 % of the first
minute after warm-up. Samples go to ``samples/soak-restarts.json`` under the result rows' folder;
``bench/soak_plot.py`` draws them (docs/reliability.md).

``VSKI_SOAK_SECONDS`` shortens it for a dry run (default 1800).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import statistics
import time
from collections.abc import Iterator

import pytest

from tests.support.chaos import (
    ResumingClient,
    RssSampler,
    children,
    delivery,
    faulty,
    reported,
    results_dir,
    seq_order,
    sum_delivery,
    wait_for,
)
from tests.support.churn import Churner
from tests.support.net_load import TimedSenders, percentile_ms
from tests.support.redis_server import RedisServer, redis_server
from tests.support.stack import Stack, stack_on

DB = "soak30"
COLLS = [f"c{i}" for i in range(20)]
STABLE = ["stable0", "stable1"]
SECONDS = float(os.environ.get("VSKI_SOAK_SECONDS", "1800"))
WARMUP = min(180.0, SECONDS / 6)
WINDOW = min(300.0, SECONDS / 4)  # "first/last 5 minutes"
RESTART_EVERY = min(180.0, SECONDS / 4)
SHADOW = 10.0  # seconds after a restart that the latency comparison leaves out
SAMPLE = 10.0
RATE = 200.0
RETENTION = 1000  # events per collection: ~150 s of a churn collection's share of RATE


@pytest.fixture
def soak_stack() -> Iterator[Stack[RedisServer]]:
    with (
        redis_server("--appendonly", "yes", "--appendfsync", "everysec") as srv,
        # retention reached within the warm-up: replays and memory are in their steady state
        stack_on(
            srv,
            node_env={"FANOUT_CLIENT_RATE": "1000"},
            ingest_env={"RETENTION_MAX_EVENTS": str(RETENTION)},
            workers=4,
        ) as stack,
    ):
        yield stack


def p99_ms(values: list[float]) -> float:
    return percentile_ms(values, 0.99)


def in_shadow(t: float, restarts: list[float]) -> bool:
    return any(r <= t < r + SHADOW for r in restarts)


@pytest.mark.slow
@pytest.mark.timeout(SECONDS + 900)
async def test_soak_with_redis_restarts(soak_stack: Stack[RedisServer]) -> None:
    stack = soak_stack
    _pin(stack)
    ports = stack.ports()
    rng = random.Random(7)
    steady = [
        ResumingClient(ports, DB, STABLE, start=i % 2, latencies=[]).begin() for i in range(4)
    ]
    resumers = [ResumingClient(ports, DB, STABLE, start=i % 2).begin() for i in range(20)]
    everyone = [*steady, *resumers]
    assert await wait_for(lambda: all(len(c.subscribed) >= 2 for c in everyone), 30)
    senders = TimedSenders(stack.ingest.port, DB, COLLS + STABLE * 5, rate=RATE, threads=20)
    senders.start()
    churner = Churner(ports, rng, DB, COLLS, replay_share=0.05)
    assert stack.ingest.proc and stack.redis.proc
    pids = {f"fanout {i}": n.proc.pid for i, n in enumerate(stack.nodes) if n.proc}
    pids["ingest"] = stack.ingest.proc.pid
    sampler = RssSampler(pids, interval=1.0)
    sampler.start()
    started = time.time()
    restarts: list[float] = []
    cuts = 0

    async def disturb() -> None:
        nonlocal cuts
        next_restart = started + RESTART_EVERY / 2
        while True:
            await asyncio.sleep(5.0)
            victim = rng.choice(resumers)  # a network cut: resume with its lastId elsewhere
            if victim.conn is not None:
                victim.conn.transport.abort()
                cuts += 1
            if time.time() >= next_restart:
                restarts.append(time.time())
                await asyncio.to_thread(stack.redis.restart)  # SIGTERM: the AOF is flushed
                next_restart += RESTART_EVERY

    with reported(
        "soak", f"soak {SECONDS / 60:.0f} min: churn, 200 webhooks/s, Redis restarts"
    ) as row:
        disturber = asyncio.create_task(disturb())
        try:
            await churner.run(SECONDS, 100)
        finally:
            disturber.cancel()
            await asyncio.gather(disturber, return_exceptions=True)
            sampler.stop()
            await churner.stop()
            await asyncio.to_thread(senders.stop, 60)
        expected = {c: seq_order(senders.ids_by_coll[c]) for c in STABLE}
        await wait_for(
            lambda: all(len(s.ids[c]) >= len(expected[c]) for s in everyone for c in STABLE), 60
        )
        await asyncio.sleep(1.0)
        results = [delivery(expected[c], s.ids[c]) for s in everyone for c in STABLE]
        lost, dup, disorder = sum_delivery(results)
        lat = [pt for s in steady for pt in (s.latencies or [])]
        first = [v for t, v in lat if started + WARMUP <= t < started + WARMUP + WINDOW]
        last = [v for t, v in lat if t >= started + SECONDS - WINDOW]
        first_clean = [
            v
            for t, v in lat
            if started + WARMUP <= t < started + WARMUP + WINDOW and not in_shadow(t, restarts)
        ]
        last_clean = [
            v for t, v in lat if t >= started + SECONDS - WINDOW and not in_shadow(t, restarts)
        ]
        minutes = _rss_by_minute(sampler, started)
        _write_samples(lat, minutes, restarts, started)
        ref = {name: per[int(WARMUP // 60)] for name, per in minutes.items() if per}
        worst = {name: max(per[int(WARMUP // 60) :]) for name, per in minutes.items() if per}
        rss = "; ".join(
            f"{n} {ref[n]:.0f}->{worst[n]:.0f} MB (max minute)" for n in ref if n.startswith("f")
        )
        row.update(
            tried=f"{SECONDS:.0f} s: {churner.opened} connections opened, {churner.aborted} "
            f"aborted, {cuts} resumes after a cut, {len(restarts)} Redis restarts (AOF), "
            f"{RATE:.0f} webhooks/s",
            events=sum(len(v) for v in expected.values()),
            clients=len(everyone) + churner.opened,
            lost=lost,
            duplicated=dup,
            notes=f"steady p99 first/last {WINDOW / 60:.0f} min: {p99_ms(first_clean):.0f}/"
            f"{p99_ms(last_clean):.0f} ms without restarts' first {SHADOW:.0f} s, "
            f"{p99_ms(first):.0f}/{p99_ms(last):.0f} ms with; RSS after warm-up: {rss}; "
            f"{senders.sent} webhooks",
        )
        for c in everyone:
            await c.stop()
        assert (lost, dup, disorder) == (0, 0, 0), faulty(results)
        assert senders.sent == len(senders.stored), "a webhook was never answered 200"
        assert p99_ms(last_clean) <= 1.5 * p99_ms(first_clean), (first_clean[:3], last_clean[:3])
        for name in ref:
            if name.startswith("fanout"):
                assert worst[name] <= ref[name] * 1.10, (name, minutes[name])


def _pin(stack: Stack[RedisServer]) -> None:
    """As the benches do: the servers on core 0, this process (the load) on core 1."""
    if (os.cpu_count() or 1) < 2:
        return
    servers = [p.proc.pid for p in (stack.ingest, *stack.nodes) if p.proc]
    if stack.redis.proc:
        servers.append(stack.redis.proc.pid)
    for pid in [*servers, *(c for parent in servers for c in children(parent))]:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(pid, {0})
    os.sched_setaffinity(0, {1})


def _rss_by_minute(sampler: RssSampler, started: float) -> dict[str, list[float]]:
    """Median RSS (MB) of each process per minute of the run (samples are 1 s apart)."""
    out: dict[str, list[float]] = {}
    for name, samples in sampler.samples.items():
        live = [s / 1024 for s in samples if s > 0]
        out[name] = [statistics.median(live[i : i + 60]) for i in range(0, len(live), 60)]
    return out


def _write_samples(
    lat: list[tuple[float, float]],
    minutes: dict[str, list[float]],
    restarts: list[float],
    started: float,
) -> None:
    windows = []
    end = max((t for t, _ in lat), default=started)
    t = started
    while t < end:
        vals = [v for at, v in lat if t <= at < t + SAMPLE]
        windows.append({"t": round(t - started), "p99_ms": round(p99_ms(vals), 1), "n": len(vals)})
        t += SAMPLE
    data = {
        "seconds": SECONDS,
        "warmup": WARMUP,
        "restarts": [round(r - started, 1) for r in restarts],
        "latency": windows,
        "rss_mb_per_minute": minutes,
    }
    folder = results_dir() / "samples"  # not a result row: bench/reliability_report.py skips it
    folder.mkdir(exist_ok=True)
    (folder / "soak-restarts.json").write_text(json.dumps(data))
