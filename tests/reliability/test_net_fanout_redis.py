"""Fanout <-> Redis over a real network fault: Redis in its own namespace, its link blackholed
(far end down) under load. The pub/sub connections are half-open: nothing errors, reads just
wait. The node must notice (its PING unanswered), say so on ``/ready`` within the documented
bound, tell its clients nothing false meanwhile, reconnect by itself after the heal, deliver
every event answered 200 exactly once, and leak no task and no Redis connection.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.support.chaos import (
    delivery,
    faulty,
    node_gauge,
    open_clients,
    reported,
    seq_order,
    settle_delivery,
    stop_all,
    sum_delivery,
    wait_for,
)
from tests.support.net_load import Prober, TimedSenders
from tests.support.netns import net_namespace, unavailable
from tests.support.redis_server import redis_in_namespace
from tests.support.stack import stack_on

pytestmark = pytest.mark.skipif(unavailable() is not None, reason=str(unavailable()))

DB = "netfanout"
PING = 1.0  # FANOUT_REDIS_PING_INTERVAL
TIMEOUT = 1.0  # REDIS_TIMEOUT: also how long a PING may go unanswered
# /ready false within: silence before the PING + its timeout + the prober's and the loop's
# granularity (0.2 s each) + 1 s for a loaded box
READY_BOUND = PING + TIMEOUT + 1.5
DOWN_SECONDS = 8.0
ROUNDS = 2
SETTLE = 8.0  # after a heal: Redis's tcp-keepalive (3 s) finds the sockets the nodes abandoned


def tasks_of(port: int) -> float:
    value = node_gauge(port, "vski_fanout_asyncio_tasks")
    assert value >= 0, "the node does not report its asyncio tasks"
    return value


def redis_clients(client: object) -> int:
    return len(client.client_list())  # type: ignore[attr-defined]


async def test_fanout_redis_blackhole_detected_and_healed() -> None:
    colls = ["bh1", "bh2"]
    with (
        reported("network", "fanout <-> Redis blackhole (link down) under load") as row,
        net_namespace("fanout") as ns,
        # the server side of a partition: Redis frees the connections of clients that gave up
        # meanwhile (their FIN was lost) by its own keepalive (docs/operations.md)
        redis_in_namespace(ns, "--tcp-keepalive", "3") as srv,
        stack_on(
            srv,
            ingest_env={"REDIS_TIMEOUT": "2", "INGEST_BREAKER_PROBE_SECONDS": "0.5"},
            REDIS_TIMEOUT=str(TIMEOUT),
            FANOUT_REDIS_PING_INTERVAL=str(PING),
        ) as stack,
    ):
        ports = stack.ports()
        clients = await open_clients(ports, DB, 40, colls)
        senders = TimedSenders(stack.ingest.port, DB, colls, rate=20, threads=4).start()
        assert await wait_for(lambda: sum(len(v) for v in senders.ids_by_coll.values()) > 40, 10)
        tasks = [[await asyncio.to_thread(tasks_of, p) for p in ports]]
        conns = [redis_clients(srv.client())]
        detect: list[float | None] = []
        recover: list[float | None] = []
        probers = [Prober(p, "/ready", interval=0.2) for p in ports]
        for p in probers:
            p.start()
        try:
            for _ in range(ROUNDS):  # twice: what a fault leaks shows as growth the 2nd time
                ns.blackhole()
                down_at = time.monotonic()
                await asyncio.sleep(DOWN_SECONDS)
                ns.heal()
                up_at = time.monotonic()
                await wait_for(lambda t=up_at: all(p.first(True, t) for p in probers), 30)
                detect += [_since(p.first(False, down_at), down_at) for p in probers]
                recover += [_since(p.first(True, up_at), up_at) for p in probers]
                await asyncio.sleep(SETTLE)  # Redis's keepalive drops the abandoned sockets
                tasks.append([await asyncio.to_thread(tasks_of, p) for p in ports])
                conns.append(redis_clients(srv.client()))
        finally:
            await asyncio.to_thread(senders.stop)
            for p in probers:
                p.stop()
        await settle_delivery(clients, senders.ids_by_coll, 45)
        results = [
            delivery(seq_order(senders.ids_by_coll[c]), cl.ids[c]) for cl in clients for c in colls
        ]
        lost, dup, _ = sum_delivery(results)
        told = [(c.close_codes, c.errors) for c in clients if c.close_codes or c.errors]
        resubscribed = sum(len(c.subscribed) - len(colls) for c in clients)
        events = sum(len(v) for v in senders.ids_by_coll.values())
        row.update(
            tried=f"{ROUNDS} blackholes of {DOWN_SECONDS:.0f} s, 20 webhooks/s over 2 collections"
            f" retried until 200, 40 clients on 2 nodes, FANOUT_REDIS_PING_INTERVAL={PING:g} "
            f"REDIS_TIMEOUT={TIMEOUT:g}",
            events=events,
            clients=len(clients),
            lost=lost,
            duplicated=dup,
            notes=f"/ready 503 after {_seconds(detect)} (bound {READY_BOUND:g} s), 200 again "
            f"{_seconds(recover)} after the heal; clients closed or told errors: {len(told)}, "
            f"re-subscribed: {resubscribed}; asyncio tasks per node {tasks}; Redis connections "
            f"{' -> '.join(map(str, conns))}",
        )
        await stop_all(clients)
        assert all(r is not None for r in recover), f"not ready again after the heal: {recover}"
        assert all(d is not None and d <= READY_BOUND for d in detect), detect
        assert not told, told[:3]
        assert resubscribed == 0
        assert (lost, dup) == (0, 0), faulty(results)
        for before, after in zip(tasks[0], tasks[-1], strict=True):
            assert after <= before + 2, tasks
        # the first heal may leave the pool larger (it grew to serve the catch-up reads); a
        # second fault must not grow it again
        assert conns[-1] <= conns[1] + 1, conns


def _since(t: float | None, since: float) -> float | None:
    return None if t is None else round(t - since, 1)


def _seconds(values: list[float | None]) -> str:
    return ", ".join("never" if v is None else f"{v:g} s" for v in values)
