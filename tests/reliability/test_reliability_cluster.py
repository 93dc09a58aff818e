"""A reconnect storm against fanout nodes reading a Redis Cluster.

The asyncio cluster client caps connections per Redis node (100) and has no blocking pool, so a
storm of simultaneous resumes makes some SUBSCRIBEs fail on one slot owner; the node answers
those with ERROR + close 1013 and the clients resume on their next attempt. What must hold: no
client ends up without its subscription, nothing is lost, nothing is duplicated.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from tests.support.backends import ClusterBackend
from tests.support.chaos import (
    WebhookPoster,
    delivery,
    faulty,
    kill9,
    open_clients,
    reported,
    seq_order,
    settle_delivery,
    stop_all,
    sum_delivery,
    wait_for,
)
from tests.support.redis_cluster import RedisClusterFixture
from tests.support.stack import Stack, stack_on

DB = "chaos"
NODE_ENV = {"FANOUT_CLIENT_RATE": "1000", "FANOUT_DRAIN_SECONDS": "3"}  # + REDIS_CLUSTER

pytestmark = pytest.mark.cluster


@pytest.fixture
def cstack(redis_cluster_session: RedisClusterFixture) -> Iterator[Stack[ClusterBackend]]:
    redis_cluster_session.wait_ok()
    with stack_on(ClusterBackend(redis_cluster_session), node_env=NODE_ENV) as s:
        yield s


async def test_reconnect_storm_on_cluster_loses_nothing(cstack: Stack[ClusterBackend]) -> None:
    coll = "cstorm"
    with reported("fault", "reconnect storm on Redis Cluster: 300 clients at once") as row:
        clients = await open_clients(cstack.ports(), DB, 300, [coll], start=0, delay=0.05)
        poster = WebhookPoster(cstack.ingest.port, DB, coll, rate=25)
        poster.start()
        await asyncio.sleep(1.5)
        await asyncio.to_thread(kill9, cstack.nodes[0])
        resumed = await wait_for(lambda: all(c.connects >= 2 for c in clients), 60)
        await asyncio.sleep(1.5)
        poster.stop()
        await asyncio.to_thread(poster.join, 30)
        expected = seq_order(poster.ids)
        await settle_delivery(clients, {coll: expected}, timeout=60)
        results = [delivery(expected, c.ids[coll]) for c in clients]
        lost, dup, disorder = sum_delivery(results)
        retried = sum(1 for c in clients if 1013 in c.close_codes)
        final_ok = sum(1 for c in clients if c.subscribed[-1]["recovered"] is True)
        row.update(
            tried="node killed under 300 clients on a 3-master cluster; all resume at once",
            events=len(expected),
            clients=len(clients),
            lost=lost,
            duplicated=dup,
            notes=f"{retried} clients told to retry (1013) first; {final_ok}/300 resumed with "
            "recovered=true",
        )
        await stop_all(clients)
        assert poster.error is None and not poster.bad
        assert resumed
        assert final_ok == len(clients)
        assert (lost, dup, disorder) == (0, 0, 0), faulty(results)
