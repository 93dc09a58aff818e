"""Redis goes away under load and comes back on the same port.

Without persistence the data is gone: ingest must answer 503 meanwhile (never 200 for an event it
did not store), both tiers must recover by themselves, clients connected throughout must receive
every event answered 200, and a client resuming with a lastId from before the restart must be
told ``"recovered": false``. With persistence (AOF, fsync always) the data survives and a
resuming client misses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.support.chaos import (
    ResumingClient,
    WebhookPoster,
    delivery,
    faulty,
    http_get,
    reported,
    stream_ids,
    sum_delivery,
    wait_for,
)
from tests.support.redis_server import RedisServer, redis_server
from tests.support.stack import Stack, stack_on

DB = "chaos"
NODE_ENV = {"FANOUT_DRAIN_SECONDS": "3", "FANOUT_CLIENT_RATE": "1000"}
DOWN_SECONDS = 3.0
PERSISTENT = ("--appendonly", "yes", "--appendfsync", "always")


@contextlib.contextmanager
def stack_with(*redis_args: str) -> Iterator[Stack[RedisServer]]:
    """A fresh server (``redis_args`` on its command line) with ingest and two fanout nodes that
    give up on Redis after 1 s: the outage is what these tests are about."""
    with (
        redis_server(*redis_args) as srv,
        stack_on(
            srv, node_env=NODE_ENV, ingest_env={"REDIS_TIMEOUT": "1"}, REDIS_TIMEOUT="1"
        ) as stack,
    ):
        yield stack


@dataclass
class Outage:
    """What happened around one Redis stop/start under load."""

    poster: WebhookPoster
    clients: list[ResumingClient]
    down_at: float
    up_at: float
    before: list[str]  # ids answered 200 before Redis stopped


async def outage_under_load(
    stack: Stack[RedisServer], coll: str, *, persistent: bool, kill: bool = False
) -> Outage:
    ports = [n.port for n in stack.nodes]
    clients = [ResumingClient(ports, DB, [coll], start=i % 2, delay=0.2).begin() for i in range(6)]
    assert await wait_for(lambda: all(c.subscribed for c in clients), 30)
    # every event tried once (no retry): each answer is either a stored event or a refusal
    poster = WebhookPoster(stack.ingest.port, DB, coll, rate=40, retry=False)
    poster.start()
    await asyncio.sleep(2.0)
    before = list(poster.ids)
    if persistent and not kill:
        await asyncio.to_thread(stack.redis.client().save)  # RDB too, not only the AOF
    await asyncio.to_thread(lambda: stack.redis.stop(kill=kill))
    down_at = time.monotonic()
    await asyncio.sleep(DOWN_SECONDS)
    up_at = time.monotonic()
    await asyncio.to_thread(stack.redis.start)
    # ingest answers 200 again by itself (no restart of any tier)
    assert await wait_for(lambda: poster.statuses[200] > len(before) + 20, 20)
    poster.stop()
    await asyncio.to_thread(poster.join, 30)
    expected = poster.ids
    await wait_for(lambda: all(len(c.ids[coll]) >= len(expected) for c in clients), 30)
    await asyncio.sleep(0.3)
    return Outage(poster, clients, down_at, up_at, before)


def answered_200_while_down(o: Outage) -> int:
    # a request answered within the outage window (+ a margin for the last pre-stop answers)
    return sum(1 for t, s in o.poster.answers if s == 200 and o.down_at + 0.5 < t < o.up_at)


async def ready(port: int, timeout: float = 20) -> bool:
    """Poll a tier's /ready until it answers 200 (it recovers by itself) or ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            status, _ = await asyncio.to_thread(http_get, port, "/ready", 2)
        except OSError:
            status = 0
        if status == 200:
            return True
        await asyncio.sleep(0.2)
    return False


def retained(stack: Stack[RedisServer], coll: str) -> list[str]:
    return stream_ids(stack.redis.client(), DB, coll)


async def test_redis_restart_without_persistence_under_load() -> None:
    coll = "outage"
    with (
        stack_with() as stack,
        reported(
            "fault", "Redis SIGTERM under load, restarted 3 s later empty (no persistence)"
        ) as row,
    ):
        o = await outage_under_load(stack, coll, persistent=False)
        results = [delivery(o.poster.ids, c.ids[coll]) for c in o.clients]
        lost, dup, disorder = sum_delivery(results)
        in_stream = set(retained(stack, coll))
        old_epoch = o.before[0].split("@")[1]
        new_epoch_ids = [i for i in o.poster.ids if i.split("@")[1] != old_epoch]
        statuses = dict(o.poster.statuses)
        bogus = answered_200_while_down(o)
        row.update(
            tried=f"1 outage of {DOWN_SECONDS:.0f} s, 40 webhooks/s tried once, 6 clients",
            events=len(o.poster.ids),
            clients=len(o.clients),
            lost=lost,
            duplicated=dup,
            notes=f"answers {statuses}; 200 while down: {bogus}",
        )
        # resuming with an id from before the restart: told it was not recovered
        late = ResumingClient([stack.nodes[0].port], DB, [coll])
        late.ids[coll] = [o.before[5]]
        late.begin()
        assert await wait_for(lambda: bool(late.subscribed), 15)
        await late.stop()
        all_ready = [await ready(p.port) for p in (stack.ingest, *stack.nodes)]
        for c in o.clients:
            await c.stop()
        assert o.poster.error is None and not o.poster.bad, o.poster.bad[:3]
        assert set(statuses) <= {200, 503}, statuses
        assert statuses.get(503, 0) >= 10, "ingest never answered 503 while Redis was down"
        assert bogus == 0
        assert new_epoch_ids, "events after the restart are in a new epoch"
        assert set(new_epoch_ids) <= in_stream, "an event answered 200 is not in Redis"
        assert (lost, dup, disorder) == (0, 0, 0), faulty(results)
        assert late.subscribed[0]["recovered"] is False, late.subscribed
        assert late.ids[coll][1:] == new_epoch_ids  # replays what Redis still has
        assert all(all_ready), all_ready
        row["notes"] += "; resume with a pre-restart lastId: recovered=false"


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
async def test_redis_restart_with_persistence_loses_nothing(how: str) -> None:
    coll = "durable"
    with (
        stack_with(*PERSISTENT) as stack,
        reported(
            "fault", f"Redis {how} under load, restarted 3 s later from AOF (fsync always)"
        ) as row,
    ):
        o = await outage_under_load(stack, coll, persistent=True, kill=how == "SIGKILL")
        in_stream = retained(stack, coll)
        answered = set(o.poster.ids)
        # stored, but the answer died with Redis (a SIGKILL after the AOF fsync, before the
        # reply): ingest said 503, and the sender's retry would get this event's id (dedupe)
        unanswered = [i for i in in_stream if i not in answered]
        # clients must get every stored event, answered or not
        results = [delivery(in_stream, c.ids[coll]) for c in o.clients]
        lost, dup, disorder = sum_delivery(results)
        statuses = dict(o.poster.statuses)
        epochs = {i.split("@")[1] for i in in_stream}
        row.update(
            tried=f"1 outage of {DOWN_SECONDS:.0f} s, 40 webhooks/s tried once, 6 clients",
            events=len(in_stream),
            clients=len(o.clients),
            lost=lost,
            duplicated=dup,
            notes=f"answers {statuses}; 200 while down: {answered_200_while_down(o)}; "
            f"{len(unanswered)} stored event(s) answered 503 as Redis died",
        )
        late = ResumingClient([stack.nodes[1].port], DB, [coll])
        late.ids[coll] = [o.before[5]]
        late.begin()
        rest = in_stream[in_stream.index(o.before[5]) + 1 :]
        assert await wait_for(lambda: bool(late.subscribed), 15)
        assert await wait_for(lambda: len(late.ids[coll]) > len(rest), 15)
        await late.stop()
        for c in o.clients:
            await c.stop()
        assert o.poster.error is None and not o.poster.bad, o.poster.bad[:3]
        assert set(statuses) <= {200, 503} and statuses.get(503, 0) >= 10, statuses
        assert answered_200_while_down(o) == 0
        assert len(epochs) == 1, "the data survived: no new epoch"
        assert [i for i in in_stream if i in answered] == o.poster.ids, "a 200 is not in Redis"
        assert len(unanswered) <= 1, unanswered  # at most the one in flight (one sender)
        assert (lost, dup, disorder) == (0, 0, 0), faulty(results)
        assert late.subscribed[0]["recovered"] is True
        assert late.ids[coll][1:] == rest
        row["notes"] += "; resume with a pre-stop lastId: recovered=true, exact replay"


async def test_client_subscribing_during_the_outage_gets_events_afterwards() -> None:
    coll = "joined_late"
    with (
        stack_with() as stack,
        reported("fault", "SDK client subscribing while Redis is down") as row,
    ):
        await asyncio.to_thread(stack.redis.stop)
        client = ResumingClient([stack.nodes[0].port, stack.nodes[1].port], DB, [coll]).begin()
        # refused with ERROR + close 1013 (try again later), so it reconnects and re-subscribes
        assert await wait_for(lambda: 1013 in client.close_codes, 15), client.errors[:1]
        await asyncio.to_thread(stack.redis.start)
        # with no lastId a subscription is "from now on": post once it is back in place
        assert await wait_for(lambda: bool(client.subscribed), 15), client.close_codes
        poster = WebhookPoster(stack.ingest.port, DB, coll, rate=50, count=30)
        poster.start()
        await asyncio.to_thread(poster.join, 30)
        await wait_for(lambda: len(client.ids[coll]) >= len(poster.ids), 10)
        result = delivery(poster.ids, client.ids[coll])
        row.update(
            tried="1 client subscribes during a Redis outage, 30 events after it returns",
            events=len(poster.ids),
            clients=1,
            lost=result.lost,
            duplicated=result.duplicated,
            notes=f"ERROR {sorted({str(e.get('code')) for e in client.errors})}, closes "
            f"{sorted(set(client.close_codes), key=str)}, then re-subscribed",
        )
        await client.stop()
        assert (result.lost, result.duplicated) == (0, 0), client.errors[:1]
        assert client.subscribed and client.subscribed[-1]["recovered"] is True


async def test_redis_frozen_under_load_stores_each_event_once() -> None:
    """SIGSTOP: Redis hangs instead of refusing. Ingest times out (503) on commands that Redis
    may still execute when it wakes up; the sender's retry must then find that event (dedupe),
    never store a second one, and clients must get each stored event exactly once."""
    coll = "frozen"
    with (
        stack_with() as stack,
        reported("fault", "Redis frozen (SIGSTOP) 3 s under load, then resumed") as row,
    ):
        ports = [n.port for n in stack.nodes]
        clients = [ResumingClient(ports, DB, [coll], start=i % 2).begin() for i in range(6)]
        assert await wait_for(lambda: all(c.subscribed for c in clients), 30)
        posters = [
            WebhookPoster(stack.ingest.port, DB, coll, rate=20, retry=True, tag=f"f{i}-")
            for i in range(3)
        ]
        for p in posters:
            p.start()
        await asyncio.sleep(2.0)
        assert stack.redis.proc is not None
        stack.redis.proc.send_signal(signal.SIGSTOP)
        await asyncio.sleep(DOWN_SECONDS)
        stack.redis.proc.send_signal(signal.SIGCONT)
        resumed_at = sum(p.statuses[200] for p in posters)
        assert await wait_for(lambda: sum(p.statuses[200] for p in posters) > resumed_at + 30, 20)
        for p in posters:
            p.stop()
        for p in posters:
            await asyncio.to_thread(p.join, 30)
        ids = [i for p in posters for i in p.ids]
        in_stream = retained(stack, coll)
        await wait_for(lambda: all(len(c.ids[coll]) >= len(in_stream) for c in clients), 30)
        await asyncio.sleep(0.3)
        results = [delivery(in_stream, c.ids[coll]) for c in clients]
        lost, dup, disorder = sum_delivery(results)
        statuses = dict(sum((p.statuses for p in posters), Counter()))
        _, page = await asyncio.to_thread(http_get, stack.ingest.port, "/metrics")
        found = [  # a retry that found the event its timed-out first delivery had stored
            float(line.split()[-1])
            for line in page.decode().splitlines()
            if line.startswith("vski_ingest_webhooks_total") and 'outcome="duplicate"' in line
        ]
        row.update(
            tried=f"1 freeze of {DOWN_SECONDS:.0f} s, 3 senders x 20 webhooks/s retried until "
            "200, 6 clients",
            events=len(in_stream),
            clients=len(clients),
            lost=lost,
            duplicated=dup,
            notes=f"answers {statuses}; {len(in_stream)} stored for {len(ids)} distinct "
            f"webhooks; {int(sum(found))} retries found their event already stored (dedupe)",
        )
        for c in clients:
            await c.stop()
        assert all(p.error is None and not p.bad for p in posters), [p.bad[:3] for p in posters]
        assert set(statuses) <= {0, 200, 503} and statuses.get(503, 0) >= 1, statuses
        assert len(ids) == len(set(ids))
        assert sorted(in_stream) == sorted(ids), "stored events differ from those answered 200"
        assert (lost, dup, disorder) == (0, 0, 0), faulty(results)
