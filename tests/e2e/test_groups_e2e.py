"""Consumer groups end to end: real redis-server, ``vski-ingest`` and ``vski-fanout`` processes,
WebSocket clients that behave like the SDK (SUBSCRIBE with ``group``, ACK each event's ackId).

Every test uses its own collection; the Redis and ingest are shared by the module, fanout
nodes are started per test (some tests kill them). Each test runs on a standalone redis-server
and on the Redis Cluster (``redis_backend``), except the one that restarts its own server.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
import urllib.request
from collections.abc import Iterator
from contextlib import suppress
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed

from tests.support.backends import RedisTarget
from tests.support.groups import (
    FAST,
    LIMIT,
    SLOW,
    GroupClient,
    Ledger,
    client,
    nodes,
    pending,
    publish,
    silent_consumer,
    stream_key,
    until,
)
from tests.support.procs import Proc, ingest_proc
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module")
def ingest(redis_backend: RedisTarget) -> Iterator[Proc]:
    proc = ingest_proc(redis_backend, workers=2).start()
    try:
        yield proc
    finally:
        proc.stop()


# ---------------------------------------------------------------------------------------------


async def test_members_on_two_nodes_share_events_each_acked_once_and_plain_gets_all(
    redis_backend: RedisTarget, ingest: Proc
) -> None:
    coll, n = "jobs_share", 60
    ledger = Ledger()
    async with (
        nodes(redis_backend, 2, FAST) as (a, b),
        client(a, "a1", ledger) as a1,
        client(a, "a2", ledger) as a2,
        client(b, "b1", ledger) as b1,
        client(b, "plain") as plain,
        client(a, "outsider") as outsider,
    ):
        for member in (a1, a2, b1):
            await member.subscribe(coll, "mailers")
        await a1.subscribe(coll, "mailers")  # the SDK repeats SUBSCRIBE: no double delivery
        await plain.subscribe(coll)
        await outsider.subscribe(coll, "others")
        await publish(ingest, coll, n)

        assert await until(lambda: len(ledger.acks) == n and len(plain.received) == n, 30), (
            len(ledger.acks),
            len(plain.received),
        )
        await asyncio.sleep(1.0)  # anything duplicated would arrive now
        assert set(ledger.acks.values()) == {1}, "every event ACKed exactly once in total"
        assert ledger.overlaps == []
        members = (a1, a2, b1)
        assert sum(len(m.received) for m in members) == n
        assert a1.received or a2.received, "node A's members got a share"
        assert b1.received, "node B's member got a share"
        assert sorted(ledger.acks) == sorted(plain.received)
        # plain subscriber: all, in order; the other group got its own copy of everything
        seqs = [int(e.split("@")[0].split("-")[1]) for e in plain.received]
        assert seqs == sorted(seqs) and len(set(seqs)) == n
        assert await until(lambda: len(outsider.received) == n, 15)
        for m in members:  # within a member, first deliveries come in stream order
            ms = [int(e.split("@")[0].split("-")[1]) for e in m.received]
            assert ms == sorted(ms)

        # bad ACKs: each answers ERROR invalid_ack
        done = a1.received[0]
        errors_before = len(a1.errors)
        await a1.send_ack(done)  # already ACKed
        await a1.send_ack(done, group="nope")  # not a member of that group
        await a1.send_ack("not-an-id")  # malformed
        await a1.send_ack("1-999999@abcdef")  # never issued
        await a1.send_ack(b1.received[0])  # another member's event
        assert await until(lambda: len(a1.errors) >= errors_before + 5, 10), a1.errors
        assert {e["code"] for e in a1.errors[errors_before:]} == {"invalid_ack"}
        await plain.send_ack(done, group="mailers")  # a plain subscriber is no member
        assert await until(lambda: len(plain.errors) == 1, 10)
        assert plain.errors[0]["code"] == "invalid_ack"
        await asyncio.sleep(0.5)
        assert set(ledger.acks.values()) == {1}
        assert await until(lambda: not pending(redis_backend, coll, "mailers"), 10)

        # metrics: acks, deliveries, and the pending gauge of this group
        def metric_lines() -> list[str]:
            with urllib.request.urlopen(f"{a.url}/metrics", timeout=10) as resp:
                lines = resp.read().decode().splitlines()
            return [ln for ln in lines if "_group_" in ln and not ln.startswith("#")]

        def gauge_zero() -> bool:
            return any(
                ln.startswith("vski_fanout_group_pending{")
                and 'group="mailers"' in ln
                and ln.endswith(" 0.0")
                for ln in metric_lines()
            )

        assert await until(gauge_zero, 10), metric_lines()
        values = {ln.split()[0]: float(ln.split()[1]) for ln in metric_lines() if "{" not in ln}
        assert values["vski_fanout_group_acks_total"] >= 1
        assert values["vski_fanout_group_delivered_total"] >= 1
        assert values["vski_fanout_group_members"] == 3  # a1, a2 and the outsider on node A

        # group last use is recorded for the idle-group cleanup
        score = redis_backend.client().zscore(f"vski:{{postgres/{coll}}}:g", "mailers")
        assert score is not None and abs(score / 1000 - time.time()) < 60


async def test_disconnected_members_events_go_to_another_member_at_once(
    redis_backend: RedisTarget, ingest: Proc
) -> None:
    """Visibility timeout 60 s: events arriving within seconds came by the disconnect path."""
    coll = "jobs_leave"
    ledger = Ledger()
    async with nodes(redis_backend, 2, SLOW) as (a, b), client(b, "taker", ledger) as taker:
        # across nodes: the leaver on A, the taker on B
        async with client(a, "silent", ledger, ack=False) as silent:
            await silent.subscribe(coll, "g")
            await publish(ingest, coll, LIMIT + 1)
            assert await until(lambda: len(silent.received) == LIMIT, 10)
            await taker.subscribe(coll, "g")
            assert await until(lambda: len(taker.received) == 1, 10)
            held = list(silent.received)
            assert set(taker.received).isdisjoint(held)
            # an ACK for an event pending at another member is refused and changes nothing
            await taker.send_ack(held[0])
            assert await until(lambda: len(taker.errors) == 1, 10)
            assert taker.errors[0]["code"] == "invalid_ack"
            assert await until(lambda: sum(pending(redis_backend, coll, "g").values()) == LIMIT)
            await asyncio.sleep(1.0)
            assert len(taker.received) == 1
            assert pending(redis_backend, coll, "g") == {
                silent_consumer(redis_backend, coll): LIMIT
            }
            started = time.monotonic()
            await silent.close()
        assert await until(lambda: set(held) <= set(taker.received), 15), taker.received
        leave_cross = time.monotonic() - started

        # on one node: the leaver's events are handed straight to the local member
        async with client(b, "silent2", ledger, ack=False) as silent2:
            await silent2.subscribe(coll, "g")
            before = len(taker.received)
            await publish(ingest, coll, 2 * LIMIT, start=100)
            assert await until(lambda: len(taker.received) + len(silent2.received) >= before + 8)
            held2 = list(silent2.received)
            assert held2, "the silent member got a share"
            started = time.monotonic()
            await silent2.close()
        assert await until(lambda: set(held2) <= set(taker.received), 15)
        leave_local = time.monotonic() - started
        assert ledger.overlaps == []
        assert await until(lambda: not pending(redis_backend, coll, "g"), 10)
        assert all(count == 1 for count in ledger.acks.values())
        print(
            f"redelivery after disconnect: cross-node {leave_cross:.2f}s, local {leave_local:.2f}s"
        )
        # departed members' consumers are deleted, not piled up
        consumers = redis_backend.client().xinfo_consumers(stream_key(coll), "g")
        assert len([c for c in consumers if c["pending"] == 0]) <= 2


async def test_kill_9_node_its_unacked_events_are_delivered_by_the_other_node(
    redis_backend: RedisTarget, ingest: Proc
) -> None:
    coll = "jobs_crash"
    ledger = Ledger()
    async with (
        nodes(redis_backend, 2, FAST) as (a, b),
        client(a, "doomed", ledger, ack=False) as doomed,
        client(b, "survivor", ledger) as survivor,
    ):
        await doomed.subscribe(coll, "g")
        await publish(ingest, coll, LIMIT)
        assert await until(lambda: len(doomed.received) == LIMIT, 10)
        await survivor.subscribe(coll, "g")
        await publish(ingest, coll, 6, start=50)
        assert await until(lambda: len(survivor.received) >= 6, 10)
        held = list(doomed.received)
        a.signal(signal.SIGKILL)
        doomed.forget_holdings()
        assert await until(lambda: set(held) <= set(survivor.received), 20)
        assert len(ledger.acks) == LIMIT + 6
        assert await until(lambda: not pending(redis_backend, coll, "g"), 10)
        # the dead node's consumers are pruned (pending 0, idle past the timeout)
        r = redis_backend.client()
        assert await until(lambda: len(r.xinfo_consumers(stream_key(coll), "g")) == 1, 20), (
            r.xinfo_consumers(stream_key(coll), "g")
        )


async def test_inflight_limit_and_visibility_timeout(
    redis_backend: RedisTarget, ingest: Proc
) -> None:
    coll = "jobs_limit"
    ledger = Ledger()
    async with nodes(redis_backend, 1, FAST) as (a,), client(a, "hog", ledger, ack=False) as hog:
        await hog.subscribe(coll, "g")
        await publish(ingest, coll, 3 * LIMIT)
        assert await until(lambda: len(hog.received) == LIMIT, 10)
        await asyncio.sleep(3.0)  # past the visibility timeout: no one else to take them
        assert len(set(hog.received)) == LIMIT, "a member that never ACKs holds at most the limit"
        async with client(a, "worker", ledger) as worker:
            await worker.subscribe(coll, "g")
            hog.forget_holdings()  # idle past the timeout: fair game for the worker
            assert await until(lambda: len(ledger.acks) == 3 * LIMIT, 15), len(ledger.acks)
            assert set(hog.received) <= set(worker.received)
            # the hog's events timed out: until it ACKs, it gets one event at a time (a
            # connection whose SDK unsubscribed locally keeps receiving but never ACKs)
            before = len(hog.received)
            await publish(ingest, coll, 2 * LIMIT, start=100)
            assert await until(lambda: len(ledger.acks) >= 5 * LIMIT - 1, 15)
            assert len(hog.received) - before <= 1
            hog.forget_holdings()
            assert await until(lambda: len(ledger.acks) == 5 * LIMIT, 15)  # the timeout again
            assert await until(lambda: not pending(redis_backend, coll, "g"), 10)


async def test_group_without_members_keeps_backlog_and_new_group_from_zero(
    redis_backend: RedisTarget, ingest: Proc
) -> None:
    coll = "jobs_backlog"
    async with nodes(redis_backend, 2, FAST) as (a, b):
        async with client(a, "first") as first:
            await first.subscribe(coll, "g")
            await first.conn.send(
                json.dumps({"type": "UNSUBSCRIBE", "collection": coll, "group": "g"})
            )
            await asyncio.sleep(0.3)
            await publish(ingest, coll, 6)
            await asyncio.sleep(1.0)
            assert first.received == [], "no member: nothing delivered"
        ledger = Ledger()
        async with client(b, "late", ledger) as late:
            await late.subscribe(coll, "g")
            assert await until(lambda: len(ledger.acks) == 6, 15)
            # a group created now starts at the end of the stream ...
            async with client(a, "fresh") as fresh, client(b, "history") as history:
                await fresh.subscribe(coll, "new_group")
                # ... unless its first SUBSCRIBE asks for lastId "0": all retained events
                await history.subscribe(coll, "replayers", last_id="0")
                assert await until(lambda: len(history.received) == 6, 10)
                await asyncio.sleep(0.5)
                assert fresh.received == []
                await publish(ingest, coll, 1, start=10)
                assert await until(lambda: len(fresh.received) == 1, 10)
                assert await until(lambda: len(history.received) == 7, 10)


async def test_valid_acks_do_not_count_against_the_message_rate_limit(
    redis_backend: RedisTarget, ingest: Proc
) -> None:
    """A member handling more events/s than FANOUT_CLIENT_RATE must not be closed as a flood;
    invalid ACKs still count."""
    coll, n = "jobs_rate", 40
    env = {**FAST, "FANOUT_CLIENT_RATE": "2", "FANOUT_CLIENT_BURST": "10"}
    ledger = Ledger()
    async with nodes(redis_backend, 1, env) as (a,), client(a, "busy", ledger) as busy:
        await busy.subscribe(coll, "g")
        await publish(ingest, coll, n)
        assert await until(lambda: len(ledger.acks) == n, 20), len(ledger.acks)
        assert busy.conn.close_code is None
        for _ in range(30):  # a flood of bad ACKs is still a flood
            with suppress(ConnectionClosed):
                await busy.send_ack("1-1@nothing")
        assert await until(lambda: busy.conn.close_code is not None, 10)
        assert busy.conn.close_code == 1008


async def test_draining_node_hands_its_members_events_to_the_other_node(
    redis_backend: RedisTarget, ingest: Proc
) -> None:
    """SIGTERM (a rolling restart): visibility timeout 60 s, so events that arrive within
    seconds were handed on by the drain, not reclaimed by the timeout."""
    coll = "jobs_drain"
    ledger = Ledger()
    async with (
        nodes(redis_backend, 2, SLOW) as (a, b),
        client(a, "draining", ledger, ack=False) as draining,
        client(b, "staying", ledger) as staying,
    ):
        await draining.subscribe(coll, "g")
        await publish(ingest, coll, LIMIT)
        assert await until(lambda: len(draining.received) == LIMIT, 10)
        await staying.subscribe(coll, "g")
        held = list(draining.received)
        await asyncio.to_thread(a.stop)  # SIGTERM, waits for the exit
        draining.forget_holdings()
        assert await until(lambda: set(held) <= set(staying.received), 15)
        assert await until(lambda: not pending(redis_backend, coll, "g"), 10)


async def test_redis_restart_losing_data_group_is_recreated_and_delivery_goes_on(
    redis_srv: RedisServer,
) -> None:
    """Redis restarts without persistence: the group and its stream are gone (new epoch). The
    worker recreates the group; events after the restart reach the members."""
    coll = "jobs_restart"
    ledger = Ledger()
    ing = ingest_proc(redis_srv.url, workers=1)
    await asyncio.to_thread(ing.start)
    try:
        async with (
            nodes(redis_srv, 1, FAST) as (a,),
            client(a, "m1", ledger) as m1,
        ):
            await m1.subscribe(coll, "g")
            await publish(ing, coll, 3)
            assert await until(lambda: len(ledger.acks) == 3, 10)
            await asyncio.to_thread(redis_srv.restart)
            assert not redis_srv.client().exists(stream_key(coll))

            async def publish_later() -> None:  # ingest answers 503 until it reconnects
                for _ in range(100):
                    with suppress(AssertionError):
                        await publish(ing, coll, 1, start=10)
                        return
                    await asyncio.sleep(0.1)

            await publish_later()
            await publish(ing, coll, 4, start=11)
            assert await until(lambda: len(ledger.acks) == 8, 20), (ledger.acks, m1.errors)
            epochs = {eid.split("@")[1] for eid in ledger.acks}
            assert len(epochs) == 2, "ids of the new epoch after the data loss"
            assert redis_srv.client().xinfo_groups(stream_key(coll))[0]["name"] == b"g"
            # the ACKs reached the restarted Redis (stale pooled connections are retried)
            assert await until(lambda: not pending(redis_srv, coll, "g"), 10)
            await asyncio.sleep(2.5)  # past the visibility timeout: a lost ACK would redeliver
            assert set(ledger.acks.values()) == {1}, ledger.acks
    finally:
        ing.stop()


async def test_abandoned_groups_are_destroyed_after_retention_used_ones_stay(
    redis_backend: RedisTarget, ingest: Proc
) -> None:
    """Group state unused for longer than retention does not pile up, even on collections whose
    streams never expire (events keep arriving): on a collection with a member of another group
    (swept by that group's worker) and on one with no group member left (the node's janitor)."""
    busy, quiet = "jobs_sweep_busy", "jobs_sweep_quiet"
    env = {**FAST, "RETENTION_SECONDS": "2"}  # the nodes' idea of retention: sweep after 2 s
    r = redis_backend.client()

    def groups(coll: str) -> set[bytes]:
        return {g["name"] for g in r.xinfo_groups(stream_key(coll))}

    for coll in (busy, quiet):
        await publish(ingest, coll, 1)
    async with nodes(redis_backend, 1, env) as (a,), client(a, "kept", Ledger()) as kept:
        await kept.subscribe(busy, "kept")
        for coll in (busy, quiet):
            async with client(a, "gone") as gone:
                await gone.subscribe(coll, "abandoned")
        assert groups(busy) == {b"kept", b"abandoned"} and groups(quiet) == {b"abandoned"}
        for coll in (busy, quiet):
            await publish(ingest, coll, 1, start=1)
        assert await until(lambda: groups(busy) == {b"kept"} and groups(quiet) == set(), 20), (
            groups(busy),
            groups(quiet),
        )
        for coll in (busy, quiet):
            assert r.pttl(stream_key(coll)) > 60_000, "the streams themselves did not expire"
        await publish(ingest, busy, 1, start=2)
        assert await until(lambda: len(kept.received) == 2, 10)


async def test_members_churning_over_two_nodes_lose_no_event(
    redis_backend: RedisTarget, ingest: Proc
) -> None:
    """Events flow while members keep leaving and joining on both nodes: every event is ACKed
    (at-least-once); duplicates can only come from members that left holding events."""
    import random

    coll, n = "jobs_churn", 200
    ledger = Ledger()
    rng = random.Random(7)
    async with nodes(redis_backend, 2, SLOW) as procs:
        members: list[tuple[GroupClient, Any]] = []

        async def join(i: int) -> None:
            cm = client(procs[i % 2], f"m{i}", ledger)
            member = await cm.__aenter__()
            member.ack_delay = 0.01
            await member.subscribe(coll, "g")
            members.append((member, cm))

        async def leave() -> None:
            member, cm = members.pop(rng.randrange(len(members)))
            await member.close()
            await cm.__aexit__(None, None, None)

        for i in range(4):
            await join(i)
        publisher = asyncio.create_task(publish(ingest, coll, n, pause=0.02))
        i = 4
        while not publisher.done():
            await asyncio.sleep(0.15)
            await leave()
            await join(i)
            i += 1
        await publisher
        assert await until(lambda: len(ledger.acks) == n, 20), len(ledger.acks)
        assert await until(lambda: not pending(redis_backend, coll, "g"), 10)
        duplicates = sum(c - 1 for c in ledger.acks.values())
        print(f"churn: {i - 4} leaves/joins, {duplicates} duplicate deliveries of {n}")
        assert duplicates <= (i - 4) * LIMIT  # at most what the leavers held
        assert ledger.overlaps == []
        while members:
            await leave()
