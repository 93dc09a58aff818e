"""Soak with churn: connections open and close (some aborted without a close frame),
subscriptions change, events flow, for a bounded time; RSS of every process is sampled.

Asserted: the stable clients lose and duplicate nothing; after the churn the nodes' gauges are
back to the stable clients' count (no session or subscription left behind); the RSS of each
tier in the last third of the run is within 25 % or 10 MB of the first third's (medians). The
short variant always runs (~25 s); the long one (``--run-slow``) churns for 3 minutes.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator

import pytest

from tests.support.chaos import (
    ResumingClient,
    RssSampler,
    WebhookPoster,
    delivery,
    faulty,
    growth,
    node_gauge,
    reported,
    seq_order,
    sum_delivery,
    wait_for,
)
from tests.support.churn import Churner
from tests.support.redis_server import RedisServer
from tests.support.stack import Stack, stack_on

DB = "soak"
COLLS = [f"c{i}" for i in range(20)]
STABLE = ["stable0", "stable1"]
RSS_RATIO, RSS_SLACK_KB = 0.25, 10_240


@pytest.fixture
def stack(redis_srv: RedisServer) -> Iterator[Stack[RedisServer]]:
    with stack_on(redis_srv, node_env={"FANOUT_CLIENT_RATE": "1000"}) as s:
        yield s


async def soak(stack: Stack[RedisServer], seconds: float, population: int, label: str) -> None:
    ports = [n.port for n in stack.nodes]
    stable = [ResumingClient(ports, DB, STABLE, start=i % 2).begin() for i in range(4)]
    assert await wait_for(lambda: all(len(c.subscribed) >= 2 for c in stable), 20)
    poster = WebhookPoster(stack.ingest.port, DB, COLLS + STABLE * 5, rate=60)
    poster.start()
    churner = Churner(ports, random.Random(11), DB, COLLS)
    await churner.run(4.0, population)  # warm-up: reach the steady population first
    assert stack.ingest.proc and stack.redis.proc
    pids = {f"fanout {i}": n.proc.pid for i, n in enumerate(stack.nodes) if n.proc}
    pids["ingest (master + workers)"] = stack.ingest.proc.pid
    pids["redis"] = stack.redis.proc.pid
    sampler = RssSampler(pids, interval=0.5)
    sampler.start()
    with reported("soak", label) as row:
        await churner.run(seconds, population)
        sampler.stop()
        await churner.stop()
        poster.stop()
        await asyncio.to_thread(poster.join, 30)
        expected = {c: seq_order(poster.ids_by_coll[c]) for c in STABLE}
        await wait_for(
            lambda: all(len(s.ids[c]) >= len(expected[c]) for s in stable for c in STABLE), 30
        )
        results = [delivery(expected[c], s.ids[c]) for s in stable for c in STABLE]
        lost, dup, disorder = sum_delivery(results)
        grown = {name: growth(samples) for name, samples in sampler.samples.items()}
        # every churned session is gone: only the 4 stable clients (2 subscriptions each) remain
        per_node = [float(sum(1 for s in stable if s.port == n.port)) for n in stack.nodes]
        want = [(c, 2 * c) for c in per_node]

        def gauges() -> list[tuple[float, float]]:
            return [
                (
                    node_gauge(n.port, "vski_fanout_connections"),
                    node_gauge(n.port, "vski_fanout_subscriptions"),
                )
                for n in stack.nodes
            ]

        await wait_for(lambda: gauges() == want, 10, 0.5)
        left = gauges()
        mem = "; ".join(
            f"{name} {g.first_kb / 1024:.0f}->{g.last_kb / 1024:.0f} MB"
            for name, g in grown.items()
        )
        row.update(
            tried=f"{seconds:.0f} s: {churner.opened} connections opened, {churner.closed} "
            f"closed, {churner.aborted} aborted, {churner.changes} subscription changes",
            events=len(poster.ids),
            clients=len(stable) + churner.opened,
            lost=lost,
            duplicated=dup,
            notes=f"RSS first->last third (median): {mem}",
        )
        for s in stable:
            await s.stop()
        assert poster.error is None and not poster.bad
        assert (lost, dup, disorder) == (0, 0, 0), faulty(results)
        assert left == want, f"(connections, subscriptions) per node {left}, want {want}"
        for name, g in grown.items():
            if name == "redis":
                continue  # Redis holds the growing streams (bounded by retention, not by us)
            assert g.bounded(RSS_RATIO, RSS_SLACK_KB), f"{name}: {g}"


async def test_soak_short(stack: Stack[RedisServer]) -> None:
    await soak(stack, 20.0, 80, "churn soak, short (20 s)")


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_soak_long(stack: Stack[RedisServer]) -> None:
    await soak(stack, 180.0, 200, "churn soak, long (3 min)")
