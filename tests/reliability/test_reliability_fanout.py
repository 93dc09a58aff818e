"""Fanout nodes die or restart under load: clients resume on the other node with their lastId.

Real processes (gunicorn ingest, two ``vski-fanout`` nodes, redis-server). Each case counts, per
client, the events ingest answered 200 that never arrived (lost) and the ones that arrived twice
(duplicated); the protocol resumes strictly after lastId, so both must be zero.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator

import pytest

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
from tests.support.redis_server import RedisServer
from tests.support.stack import Stack, stack_on

DB = "chaos"
NODE_ENV = {"FANOUT_DRAIN_SECONDS": "4", "FANOUT_CLIENT_RATE": "1000"}


@pytest.fixture(scope="module")
def stack(redis_mod: RedisServer) -> Iterator[Stack[RedisServer]]:
    with stack_on(redis_mod, node_env=NODE_ENV) as s:
        yield s


async def test_kill9_of_a_node_under_load_clients_resume_elsewhere(
    stack: Stack[RedisServer],
) -> None:
    stack.ensure_up()
    colls = ["k9a", "k9b"]
    with reported("fault", "kill -9 of a fanout node under load") as row:
        clients = await open_clients(stack.ports(), DB, 40, colls)
        poster = WebhookPoster(stack.ingest.port, DB, colls, rate=120)
        poster.start()
        kills = 0
        for victim in (stack.nodes[0], stack.nodes[1]):
            await asyncio.sleep(1.5)
            await asyncio.to_thread(kill9, victim)
            kills += 1
            await asyncio.sleep(1.0)
            await asyncio.to_thread(victim.start)  # back for the next round's clients
        await asyncio.sleep(1.0)
        poster.stop()
        await asyncio.to_thread(poster.join, 30)
        expected = {c: seq_order(poster.ids_by_coll[c]) for c in colls}
        await settle_delivery(clients, expected)
        results = [delivery(expected[k], c.ids[k]) for c in clients for k in colls]
        lost, dup, disorder = sum_delivery(results)
        resumes = sum(c.connects - 1 for c in clients)
        not_recovered = [s for c in clients for s in c.subscribed if not s["recovered"]]
        row.update(
            tried=f"{kills} kills (SIGKILL), 40 clients x 2 collections, {resumes} resumes",
            events=sum(len(v) for v in expected.values()),
            clients=len(clients),
            lost=lost,
            duplicated=dup,
            notes=f"{poster.statuses[200]} webhooks answered 200 while nodes died",
        )
        await stop_all(clients)
        assert poster.error is None and not poster.bad, (poster.error, poster.bad[:3])
        assert resumes >= 60, f"only {resumes} reconnects: the kills did not hit the clients"
        assert (lost, dup, disorder) == (0, 0, 0), faulty(results)
        assert not not_recovered, not_recovered[:3]
        assert not [c.errors for c in clients if c.errors][:3]


async def test_sigterm_during_heavy_broadcast_closes_1012_and_loses_nothing(
    stack: Stack[RedisServer],
) -> None:
    stack.ensure_up()
    colls = ["heavy1", "heavy2"]
    a = stack.nodes[0]
    with reported("fault", "SIGTERM of a node during heavy broadcast") as row:
        on_a = await open_clients(stack.ports(), DB, 40, colls, start=0)
        on_b = await open_clients(stack.ports(), DB, 10, colls, start=1)
        # two posters with ~1 KB records: a few hundred events/s into 50 clients
        posters = [WebhookPoster(stack.ingest.port, DB, coll, rate=150, pad=800) for coll in colls]
        for p in posters:
            p.start()
        await asyncio.sleep(2.0)
        a.signal(signal.SIGTERM)
        assert a.proc is not None
        rc = await asyncio.to_thread(a.proc.wait, 15)
        await asyncio.sleep(1.5)
        for p in posters:
            p.stop()
        for p in posters:
            await asyncio.to_thread(p.join, 30)
        expected = {p.colls[0]: seq_order(p.ids) for p in posters}
        clients = on_a + on_b
        await settle_delivery(clients, expected)
        results = [delivery(expected[k], c.ids[k]) for c in clients for k in colls]
        lost, dup, disorder = sum_delivery(results)
        codes = [c.close_codes[0] if c.close_codes else None for c in on_a]
        row.update(
            tried="SIGTERM with 40 of 50 clients on the node, 2 collections, ~300 events/s",
            events=sum(len(v) for v in expected.values()),
            clients=len(clients),
            lost=lost,
            duplicated=dup,
            notes=f"close codes seen: {sorted(set(codes), key=str)}; exit code {rc}",
        )
        await stop_all(clients)
        await asyncio.to_thread(a.stop)
        await asyncio.to_thread(a.start)
        assert all(p.error is None and not p.bad for p in posters)
        assert rc == 0
        assert codes == [1012] * len(on_a), codes
        assert (lost, dup, disorder) == (0, 0, 0), faulty(results)
        assert all(c.connects >= 2 for c in on_a)


async def test_reconnect_storm_all_clients_resume_at_once(stack: Stack[RedisServer]) -> None:
    stack.ensure_up()
    coll = "storm"
    victim = stack.nodes[0]
    with reported("fault", "reconnect storm: 300 clients at once") as row:
        clients = await open_clients(stack.ports(), DB, 300, [coll], start=0, delay=0.01)
        poster = WebhookPoster(stack.ingest.port, DB, coll, rate=25)
        poster.start()
        await asyncio.sleep(1.5)
        await asyncio.to_thread(kill9, victim)  # all 300 reconnect to the other node at once
        resumed = await wait_for(lambda: all(c.connects >= 2 for c in clients), 60)
        await asyncio.sleep(1.5)
        poster.stop()
        await asyncio.to_thread(poster.join, 30)
        expected = seq_order(poster.ids)
        await settle_delivery(clients, {coll: expected}, timeout=60)
        results = [delivery(expected, c.ids[coll]) for c in clients]
        lost, dup, disorder = sum_delivery(results)
        recovered = sum(1 for c in clients if c.subscribed[-1]["recovered"] is True)
        row.update(
            tried="node killed under 300 clients; all reconnect to one node with lastIds",
            events=len(expected),
            clients=len(clients),
            lost=lost,
            duplicated=dup,
            notes=f"{recovered}/300 resumed with recovered=true",
        )
        await stop_all(clients)
        await asyncio.to_thread(victim.start)
        assert resumed, f"{sum(c.connects < 2 for c in clients)} clients never reconnected"
        assert recovered == len(clients)
        assert (lost, dup, disorder) == (0, 0, 0), faulty(results)
        assert poster.error is None and not poster.bad
        assert not [c.errors for c in clients if c.errors][:3]  # e.g. redis_unavailable


async def test_whole_fanout_tier_killed_and_restarted(stack: Stack[RedisServer]) -> None:
    """Both nodes die at once: clients retry until a node is back, then resume."""
    stack.ensure_up()
    coll = "tier"
    with reported("fault", "whole fanout tier kill -9, back 2 s later") as row:
        clients = await open_clients(stack.ports(), DB, 30, [coll])
        poster = WebhookPoster(stack.ingest.port, DB, coll, rate=60)
        poster.start()
        await asyncio.sleep(1.5)
        await asyncio.gather(*(asyncio.to_thread(kill9, n) for n in stack.nodes))
        await asyncio.sleep(2.0)  # events keep being stored meanwhile: nobody is connected
        await asyncio.gather(*(asyncio.to_thread(n.start) for n in stack.nodes))
        await wait_for(lambda: all(c.connects >= 2 for c in clients), 30)
        await asyncio.sleep(1.0)
        poster.stop()
        await asyncio.to_thread(poster.join, 30)
        expected = seq_order(poster.ids)
        await settle_delivery(clients, {coll: expected})
        results = [delivery(expected, c.ids[coll]) for c in clients]
        lost, dup, disorder = sum_delivery(results)
        failed = sum(c.failed_connects for c in clients)
        row.update(
            tried="2 nodes SIGKILLed together under 30 clients, restarted after 2 s",
            events=len(expected),
            clients=len(clients),
            lost=lost,
            duplicated=dup,
            notes=f"{failed} refused reconnect attempts while no node was up; "
            f"{sum(s['recovered'] for c in clients for s in c.subscribed[1:])} resumes "
            "recovered=true",
        )
        await stop_all(clients)
        assert poster.error is None and not poster.bad
        assert all(c.connects >= 2 for c in clients)
        assert all(s["recovered"] for c in clients for s in c.subscribed)
        assert (lost, dup, disorder) == (0, 0, 0), faulty(results)
