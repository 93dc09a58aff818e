"""End to end: ``vski-fanout`` with ``FANOUT_PROCESSES=2``, a supervisor and two full nodes on one
port, real Redis and ingest.

What is under test is the supervisor's promise (docs/processes.md): ``SO_REUSEPORT`` spreads
connections over the children; a SIGKILLed child is started again and its client resumes with
its lastId, getting every event once; SIGTERM drains every child (clients see 1012) within
``FANOUT_DRAIN_SECONDS``; a SIGKILLed supervisor leaves no child behind; SIGHUP reaches every
child; ``/metrics`` adds up the children, whichever answers. Which child holds what is read from
the registry entries each child writes (a fast heartbeat here), never from debug hooks.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from common.layout import RegistryKeys
from common.registry import SCRIPT, list_args, parse_listing
from tests.support.ingest_http import Poster, request
from tests.support.procs import Proc, fanout_proc, ingest_proc, wait_until
from tests.support.redis_server import RedisServer
from tests.support.ws_client import Client, ws_url

DRAIN = 3.0
HEARTBEAT = 0.2


def node_env(prefix: str, **extra: str) -> dict[str, str]:
    return {
        "FANOUT_PROCESSES": "2",
        "FANOUT_DRAIN_SECONDS": str(DRAIN),
        "REGISTRY_HEARTBEAT_SECONDS": str(HEARTBEAT),
        "REDIS_KEY_PREFIX": prefix,
        "FANOUT_RESTART_MAX_SECONDS": "1",
        **extra,
    }


def children(sup: int) -> set[int]:
    """The live child processes of ``sup`` (zombies not counted)."""
    pids: set[int] = set()
    with contextlib.suppress(FileNotFoundError):
        for task in os.listdir(f"/proc/{sup}/task"):
            with open(f"/proc/{sup}/task/{task}/children") as f:
                pids.update(int(p) for p in f.read().split())
    return {p for p in pids if alive(p)}


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


def entries(client: redis.Redis, prefix: str) -> list[dict[str, Any]]:
    """The registry's live fanout entries (one per child)."""
    keys = RegistryKeys(prefix)
    raw = client.register_script(SCRIPT.text)(keys=[keys.beats, keys.expiry], args=list_args())
    return [n for n in parse_listing(raw).nodes if n.get("role") == "fanout"]


def metric(node: Proc, name: str) -> float:
    body = request(node.port, "GET", "/metrics").body.decode()
    found = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", body, re.M)
    return float(found.group(1)) if found else 0.0


@pytest.fixture
def prefix() -> str:
    return f"procs{time.time_ns() % 10**9}"


@pytest.fixture
def node(redis_srv: RedisServer, prefix: str) -> Iterator[Proc]:
    proc = fanout_proc(redis_srv, **node_env(prefix)).start()
    client = redis_srv.client()
    try:  # both children listening and registered
        assert wait_until(lambda: len(entries(client, prefix)) == 2, 20), proc.log()
        yield proc
    finally:
        proc.stop()


@contextlib.asynccontextmanager
async def sockets(node: Proc, count: int) -> AsyncIterator[list[ClientConnection]]:
    conns = [await connect(ws_url(node), open_timeout=15, compression=None) for _ in range(count)]
    try:
        yield conns
    finally:
        for conn in conns:
            await conn.close()


async def test_connections_spread_over_the_children_and_metrics_add_up(
    node: Proc, redis_srv: RedisServer, prefix: str
) -> None:
    client = redis_srv.client()
    async with sockets(node, 40):

        def counted() -> bool:
            conns = [int(n["connections"]) for n in entries(client, prefix)]
            return sum(conns) == 40

        assert await asyncio.to_thread(wait_until, counted, 10)
        nodes = entries(client, prefix)
        assert len({n["pid"] for n in nodes}) == 2
        assert all(n["connections"] > 0 for n in nodes), "SO_REUSEPORT left a child idle"
        assert all(n["address"] == node.env["FANOUT_BIND"] for n in nodes)
        assert sorted(n["child"] for n in nodes) == [0, 1]
        assert all(n["processes"] == 2 for n in nodes)
        assert sorted(n["id"].rpartition("-")[2] for n in nodes) == ["0", "1"]
        # whichever child answers, /metrics is the sum over both (new connection each time)
        for _ in range(6):
            assert metric(node, "vski_fanout_connections") == 40
            assert metric(node, 'vski_fanout_connection_attempts_total{outcome="accepted"}') == 40
            assert metric(node, "vski_fanout_max_connections") == 2 * 20_000


async def test_a_killed_child_is_restarted_and_its_client_resumes_with_every_event_once(
    node: Proc, redis_srv: RedisServer, prefix: str
) -> None:
    ingest = ingest_proc(redis_srv, REDIS_KEY_PREFIX=prefix).start()
    client = redis_srv.client()
    try:
        poster = Poster(ingest)
        first = await Client(node, "shop", "crash").open()
        before = await asyncio.to_thread(poster.many, "shop", "crash", 10)
        assert await first.wait_ids(10) == before

        def holder() -> list[dict[str, Any]]:
            return [n for n in entries(client, prefix) if n["connections"] == 1]

        assert await asyncio.to_thread(wait_until, lambda: len(holder()) == 1, 10)
        victim = int(holder()[0]["pid"])
        assert victim in children(node.proc.pid)  # type: ignore[union-attr]
        os.kill(victim, signal.SIGKILL)
        assert first.task is not None
        await asyncio.wait_for(first.task, 10)  # its socket is gone
        during = await asyncio.to_thread(poster.many, "shop", "crash", 10, 10)
        # the SDK reconnects to the same address and resumes from the last event it saw
        second = await Client(node, "shop", "crash").open(last_id=first.last_id)
        after = await asyncio.to_thread(poster.many, "shop", "crash", 5, 20)
        assert await second.wait_ids(15) == during + after
        assert first.ids + second.ids == before + during + after  # each once, in order
        # the supervisor started a new child in the victim's place
        sup = node.proc.pid  # type: ignore[union-attr]
        assert await asyncio.to_thread(
            wait_until, lambda: len(children(sup)) == 2 and victim not in children(sup), 10
        )
        assert await asyncio.to_thread(
            wait_until, lambda: len({n["pid"] for n in entries(client, prefix)} - {victim}) == 2, 10
        )
        assert "child_exited" in node.log()
        # the dead child's connection left the gauge sum; its counters stayed
        assert metric(node, "vski_fanout_connections") == 1
        assert metric(node, 'vski_fanout_connection_attempts_total{outcome="accepted"}') == 2
        await second.close()
    finally:
        ingest.stop()


async def test_sigterm_drains_every_child_within_the_drain_time(
    node: Proc, redis_srv: RedisServer, prefix: str
) -> None:
    sup = node.proc.pid  # type: ignore[union-attr]
    kids = children(sup)
    assert len(kids) == 2
    client = redis_srv.client()
    async with sockets(node, 20) as conns:
        assert await asyncio.to_thread(
            wait_until, lambda: all(n["connections"] > 0 for n in entries(client, prefix)), 10
        )
        started = time.monotonic()
        node.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        codes = []
        for conn in conns:
            with contextlib.suppress(ConnectionClosed):
                await asyncio.wait_for(conn.recv(), DRAIN + 2)
            codes.append(conn.close_code)
        rc = await asyncio.to_thread(node.proc.wait, DRAIN + 5)  # type: ignore[union-attr]
        elapsed = time.monotonic() - started
    assert codes == [1012] * 20
    assert rc == 0
    assert elapsed < DRAIN + 1.0, f"the supervisor took {elapsed:.1f}s to drain"
    assert not any(alive(p) for p in kids)
    assert not list(Path("/tmp").glob(f"vski-fanout-metrics-{sup}-*")), "metrics folder left"
    assert "supervisor_stopped" in node.log()


async def test_a_sigkilled_supervisor_leaves_no_child_alive(node: Proc) -> None:
    sup = node.proc.pid  # type: ignore[union-attr]
    kids = children(sup)
    assert len(kids) == 2
    async with sockets(node, 10) as conns:
        os.kill(sup, signal.SIGKILL)  # the supervisor only, not its process group
        node.proc.wait(5)  # type: ignore[union-attr]
        assert await asyncio.to_thread(
            wait_until, lambda: not any(alive(p) for p in kids), DRAIN + 3
        ), "a child outlived its supervisor"
        for conn in conns:  # they drained: clients were told to reconnect elsewhere
            with contextlib.suppress(ConnectionClosed):
                await asyncio.wait_for(conn.recv(), 5)
            assert conn.close_code == 1012
    assert "supervisor_gone" in node.log()


POLICY = """
version = 1
[claims]
id = ["id", "sub"]
[[collection]]
name = "hup"
subscribe = "{rule}"
"""


async def test_sighup_reloads_the_policy_in_every_child(
    redis_srv: RedisServer, prefix: str, tmp_path: Path
) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY.format(rule=""))
    node = fanout_proc(redis_srv, **node_env(prefix, REALTIME_POLICY=str(policy))).start()
    client = redis_srv.client()
    try:
        assert await asyncio.to_thread(wait_until, lambda: len(entries(client, prefix)) == 2, 20)

        async def answers() -> list[str]:
            out = []
            async with sockets(node, 16) as conns:
                for conn in conns:
                    await conn.send('{"type": "SUBSCRIBE", "collection": "hup"}')
                    out.append(str(await asyncio.wait_for(conn.recv(), 10)))
            return out

        assert all('"SUBSCRIBED"' in a for a in await answers())
        policy.write_text(POLICY.format(rule='@request.auth.id = \\"nobody\\"'))
        node.signal(signal.SIGHUP)
        assert await asyncio.to_thread(
            wait_until, lambda: node.log().count("policy_reloaded") >= 2, 10
        ), node.log()
        refused = await answers()
        assert all('"forbidden"' in a for a in refused), refused
        assert node.alive()
    finally:
        node.stop()


def test_the_dev_stack_runs_each_node_as_its_processes() -> None:
    from tests.support.dev_stack import DevStack

    args = ["--quiet", "--fanout-nodes", "1", "--no-console", "--fanout-processes", "2"]
    s = DevStack(args=args).start()
    pids = s.info()["pids"]
    try:
        kids = children(pids["fanout-1"])
        assert len(kids) == 2
        # the stack is up when one child answers /ready; both are soon counted in /metrics
        node = Proc("fanout", [], {}, s.fanout_port)
        assert wait_until(lambda: metric(node, "vski_fanout_max_connections") == 40_000, 10)
        rc = s.stop(signal.SIGTERM)
        assert not any(alive(p) for p in kids)
    finally:
        s.cleanup(pids)
    assert rc == 0


async def test_every_fanout_metric_the_dashboard_and_alerts_query_is_served_by_the_children(
    node: Proc, redis_srv: RedisServer, prefix: str
) -> None:
    from tests.e2e.test_monitoring import (
        METRIC,
        _family,
        alert_queries,
        dashboard_queries,
        exported,
        traffic,
    )

    ingest = ingest_proc(redis_srv, REDIS_KEY_PREFIX=prefix).start()
    try:
        await traffic(ingest, node)
        # a labelled family shows once some child counted one: a close by the server (a flood)
        async with sockets(node, 1) as (flooder,):
            with contextlib.suppress(ConnectionClosed):
                for _ in range(400):
                    await flooder.send('{"type": "SUBSCRIBE", "collection": "flood"}')
                await asyncio.wait_for(flooder.recv(), 10)
                while True:
                    await asyncio.wait_for(flooder.recv(), 10)
            assert flooder.close_code == 1008
        await asyncio.sleep(3 * HEARTBEAT)  # every child's heartbeat has set its gauges
        have = exported(node.url)
    finally:
        ingest.stop()
    wanted = {
        name
        for q in alert_queries() + dashboard_queries()
        for name in METRIC.findall(q)
        if name.startswith("vski_fanout_")
    }
    assert "vski_fanout_resident_memory_bytes" in wanted
    assert sorted(n for n in wanted if n not in have and _family(n) not in have) == []
    assert 0 < metric(node, "vski_fanout_resident_memory_bytes") < 2**31


def test_pinned_children_each_run_on_one_core_of_their_own(
    redis_srv: RedisServer, prefix: str
) -> None:
    cores = sorted(os.sched_getaffinity(0))
    node = fanout_proc(redis_srv, **node_env(prefix, FANOUT_PIN_CHILDREN="true")).start()
    try:
        assert wait_until(lambda: len(children(node.proc.pid)) == 2, 10)  # type: ignore[union-attr]
        pinned = sorted(
            tuple(os.sched_getaffinity(pid))
            for pid in children(node.proc.pid)  # type: ignore[union-attr]
        )
        assert pinned == sorted((cores[i % len(cores)],) for i in range(2))
    finally:
        node.stop()
