"""Slow and asymmetric paths, not outages: latency between a node and Redis, a client whose
network is slower than its feed.

- 300 ms each way between one fanout node and Redis (a TCP relay that holds every chunk: this
  kernel has no netem): its clients' latency rises, nothing is lost or doubled, its ``/ready``
  stays green (a PING answered in 0.6 s is not a stale connection), and a resume through it is
  still ``recovered: true``.
- a ``tbf`` rate limit on one client's path (in a namespace): it becomes a slow consumer; the
  node closes it with 4008 once its buffer passes ``FANOUT_MAX_BUFFER_BYTES``, it resumes with
  its lastId and misses nothing, and the other clients never notice.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support import ROOT
from tests.support.chaos import (
    delivery,
    faulty,
    http_get,
    metric_value,
    open_clients,
    reported,
    seq_order,
    settle_delivery,
    stop_all,
    sum_delivery,
    wait_for,
)
from tests.support.net_load import Prober, TimedSenders, percentile_ms
from tests.support.netns import DelayRelay, has_tbf, net_namespace, unavailable
from tests.support.procs import fanout_proc, ingest_proc
from tests.support.redis_server import RedisServer
from tests.support.ws_client import Client

DELAY = 0.3


async def test_latency_to_redis_loses_nothing(redis_srv: RedisServer) -> None:
    db, coll = "postgres", "delayed"
    with (
        reported("network", f"{DELAY * 1000:.0f} ms each way between a node and Redis") as row,
        DelayRelay(("127.0.0.1", redis_srv.port), DELAY) as relay,
    ):
        ingest = ingest_proc(redis_srv, workers=2).start()
        slow = fanout_proc(
            f"redis://127.0.0.1:{relay.port}/0", FANOUT_REDIS_PING_INTERVAL="1"
        ).start()
        fast = fanout_proc(redis_srv).start()
        ready = Prober(slow.port, "/ready", interval=0.2)
        try:
            far = [await Client(slow, db, coll).open() for _ in range(5)]
            near = [await Client(fast, db, coll).open() for _ in range(5)]
            ready.start()
            senders = TimedSenders(ingest.port, db, [coll], rate=20, threads=4).start()
            await asyncio.sleep(4.0)
            resumed_from = far[0].ids[len(far[0].ids) // 2]
            late = await Client(slow, db, coll).open(last_id=resumed_from)
            await asyncio.sleep(3.0)
            await asyncio.to_thread(senders.stop)
            expected = seq_order(senders.ids_by_coll[coll])
            everyone = [*far, *near]
            await wait_for(lambda: all(len(c.ids) >= len(expected) for c in everyone), 20)
            await asyncio.sleep(1.0)
            tail = expected[expected.index(resumed_from) + 1 :]
            await wait_for(lambda: len(late.ids) >= len(tail), 10)
        finally:
            ready.stop()
        results = [delivery(expected, c.ids) for c in everyone]
        lost, dup, _ = sum_delivery(results)
        far_lat = [x for c in far for x in c.latencies]
        near_lat = [x for c in near for x in c.latencies]
        not_ready = [s for s in ready.samples if s[1] != 200]
        row.update(
            tried=f"relay holding every chunk {DELAY * 1000:.0f} ms each way, 5 clients on the "
            "delayed node, 5 on a direct one, 20 webhooks/s, 1 resume through the delay",
            events=len(expected),
            clients=len(everyone) + 1,
            lost=lost,
            duplicated=dup,
            notes=f"latency p50/p99 direct {percentile_ms(near_lat, 0.5):.0f}/"
            f"{percentile_ms(near_lat, 0.99):.0f} ms, delayed {percentile_ms(far_lat, 0.5):.0f}/"
            f"{percentile_ms(far_lat, 0.99):.0f} ms; /ready not 200: {len(not_ready)} of "
            f"{len(ready.samples)}; resume recovered={late.subscribed[0].get('recovered')}",
        )
        for c in [*everyone, late]:
            await c.close()
        slow.stop()
        fast.stop()
        ingest.stop()
        assert (lost, dup) == (0, 0), faulty(results)
        added = percentile_ms(far_lat, 0.5) - percentile_ms(near_lat, 0.5)
        assert added >= DELAY * 800, f"no added latency? {added:.0f} ms"
        assert not not_ready, not_ready[:3]
        assert late.subscribed[0]["recovered"] is True
        assert late.ids[: len(tail)] == tail and len(set(late.ids)) == len(late.ids)


# a resuming client inside the namespace: reports what it got to a JSON file twice a second
SLOW_CLIENT = """
import asyncio, json, sys
sys.path.insert(0, sys.argv[1])
from tests.support.chaos import ResumingClient
host, port, db, coll, out, seconds = sys.argv[2:8]
async def main():
    c = ResumingClient([int(port)], db, [coll], host=host, delay=0.3).begin()
    for _ in range(int(float(seconds) * 2)):
        await asyncio.sleep(0.5)
        state = {"ids": c.ids[coll], "closes": c.close_codes, "subscribed": c.subscribed}
        with open(out + ".tmp", "w") as f:
            json.dump(state, f)
        import os; os.replace(out + ".tmp", out)
asyncio.run(main())
"""


@pytest.mark.skipif(unavailable() is not None, reason=str(unavailable()))
@pytest.mark.skipif(not has_tbf(), reason="tc is not installed")
async def test_rate_limited_client_is_cut_off_and_resumes(
    redis_srv: RedisServer, tmp_path: Path
) -> None:
    db, coll = "tbf", "feed"
    out = tmp_path / "slow.json"
    with (
        reported("network", "tbf-limited client path (slow consumer)") as row,
        net_namespace("tbf") as ns,
    ):
        ingest = ingest_proc(redis_srv, workers=2).start()
        node = fanout_proc(redis_srv, FANOUT_MAX_BUFFER_BYTES="262144", FANOUT_CLIENT_RATE="1000")
        node.env["FANOUT_BIND"] = f"0.0.0.0:{node.port}"
        node.start()
        slow = None
        try:
            others = await open_clients([node.port], db, 10, [coll])
            ns.rate_limit("64kbit", burst="8kb", latency="2s")
            ns.sysctl("net.ipv4.tcp_rmem", "4096 8192 32768")  # a small receiver: a phone
            slow = subprocess.Popen(
                [*ns.command(), sys.executable, "-c", SLOW_CLIENT, str(ROOT), ns.near,
                 str(node.port), db, coll, str(out), "60"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            assert await wait_for(lambda: bool(_state(out).get("subscribed")), 20)
            senders = TimedSenders(ingest.port, db, [coll], rate=30, threads=3, pad=30000).start()
            started = time.monotonic()
            # 4008, or 1006 when even the close frame could not pass the limit within
            # FANOUT_SLOW_CLOSE_SECONDS and the node aborted the connection
            cut = await wait_for(lambda: bool(_state(out).get("closes")), 30)
            cut_after = time.monotonic() - started
            slow_closes = metric_value(
                (await asyncio.to_thread(http_get, node.port, "/metrics"))[1].decode(),
                "vski_fanout_slow_client_closes_total",
            )
            ns.unlimit()  # its network recovers: the resume must catch up without a gap
            await asyncio.sleep(3.0)
            await asyncio.to_thread(senders.stop)
            expected = seq_order(senders.ids_by_coll[coll])
            await wait_for(lambda: len(_state(out).get("ids", [])) >= len(expected), 30)
            await settle_delivery(others, senders.ids_by_coll, 20)
        finally:
            ns.unlimit()
            if slow is not None:
                slow.kill()
                slow.wait(10)
            node.stop()
            ingest.stop()
        state = _state(out)
        mine = delivery(expected, state.get("ids", []))
        results = [delivery(expected, c.ids[coll]) for c in others]
        lost, dup, _ = sum_delivery([*results, mine])
        resumes = [s.get("recovered") for s in state.get("subscribed", [])[1:]]
        others_closed = [c.close_codes for c in others if c.close_codes]
        row.update(
            tried="1 client behind tbf 64 kbit, 30 webhooks/s of 30 KB, FANOUT_MAX_BUFFER_BYTES="
            "262144, 10 other clients; the limit lifted after the cut",
            events=len(expected),
            clients=len(others) + 1,
            lost=lost,
            duplicated=dup,
            notes=f"closed {state.get('closes')} {cut_after:.1f} s into the feed; resumes "
            f"recovered={resumes}; node's slow-consumer closes: {slow_closes}; other clients "
            f"closed: {len(others_closed)}",
        )
        await stop_all(others)
        assert cut, "the slow client was never closed"
        assert set(state.get("closes", [])) <= {4008, 1006}, state.get("closes")
        assert slow_closes and slow_closes >= 1, "the node did not close it as a slow consumer"
        assert resumes and all(r is True for r in resumes), resumes
        assert (lost, dup) == (0, 0), faulty([*results, mine])
        assert not others_closed, others_closed[:3]


def _state(path: Path) -> dict[str, Any]:
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return {}
