#!/usr/bin/env python3
"""What the operations view costs the tiers: per webhook, per heartbeat, per listing.

    flock /tmp/vski-bench.lock .venv/bin/python bench/ops_view_bench.py [--runs 3]

In-process measurements against a real ``redis-server`` (pinned to CPU 0 with taskset; this
process pins itself to CPU 1), each the median of ``--runs`` repetitions:

- the webhook path of one ingest worker (the real app and event store, through
  ``falcon.testing``, no HTTP), with ``REALTIME_ADMIN_KEY`` unset and set (activity counting
  on), in ``--rounds`` rounds of alternating blocks (ABBA): this process's CPU per webhook and
  the median of the same-round ratios (the machine's drift hits both sides alike);
- one ``Activity.note`` (the whole per-webhook addition) and one flush of 16 / 1,000 / 10,000
  collections;
- building a fanout heartbeat and writing it; an ingest master's heartbeat with 4 workers'
  multiprocess metric files;
- listing the registry with 10 / 300 / 1,000 nodes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from devstack.redis_process import RedisProcess  # noqa: E402

SECRET = "bench-secret-that-is-long-enough-for-hs256!!"


def taskset(cpus: str) -> list[str]:
    return ["taskset", "-c", cpus] if shutil.which("taskset") else []


@contextlib.contextmanager
def redis_server() -> Iterator[int]:
    with RedisProcess(prefix=taskset("0")) as server:
        yield server.port


def median_of(runs: int, measure: Callable[[], float]) -> float:
    return statistics.median(measure() for _ in range(runs))


# ---------------------------------------------------------------- the webhook path


def webhook_apps(port: int) -> dict[str, Any]:
    """The worker's app twice: admin view off and on (as ingest/wsgi.py builds it)."""
    import falcon.testing

    from common.auth import TokenVerifier
    from common.redis_conn import sync_client
    from ingest.activity import Activity, TrackedEventStore
    from ingest.app import create_app
    from ingest.settings import load_ingest

    apps = {}
    for label, key in (("admin view off", None), ("admin view on", "bench-admin-key")):
        env = {"JWT_SECRET": SECRET, "REDIS_URL": f"redis://127.0.0.1:{port}/0"}
        if key:
            env["REALTIME_ADMIN_KEY"] = key
        settings = load_ingest(env)
        client = sync_client(settings.common.redis)
        store = TrackedEventStore(client, settings.common.retention)
        if settings.admin_key:
            store.activity = Activity(client)
        app = create_app(settings, store, TokenVerifier(settings.common.jwt))
        apps[label] = falcon.testing.TestClient(app)
    return apps


def webhook_cpu(client: Any, token: str, n: int, tag: str) -> float:
    """This process's CPU per webhook (µs) over ``n`` distinct webhooks."""
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    bodies = [
        json.dumps(
            {
                "database": "bench",
                "collection": f"c{i % 16}",
                "id": f"{tag}{i}",
                "action": "create",
                "timestamp": f"{tag}{i}",
                "record": {"id": f"{tag}{i}"},
            }
        )
        for i in range(n)
    ]
    started = time.process_time()
    for body in bodies:
        resp = client.simulate_post("/webhook", body=body, headers=headers)
        assert resp.status_code == 200, resp.text
    return (time.process_time() - started) / n * 1e6


# ---------------------------------------------------------------- heartbeats and listings


def fanout_heartbeat(port: int) -> tuple[float, float]:
    """(µs to build a fanout heartbeat, ms to build and write one)."""
    import asyncio

    from fanout.registry import NodeRegistry
    from fanout.settings import load_fanout

    settings = load_fanout(
        {
            "JWT_SECRET": SECRET,
            "REDIS_URL": f"redis://127.0.0.1:{port}/0",
            "FANOUT_BIND": "0.0.0.0:8080",
        }
    )
    fake = SimpleNamespace(
        server=SimpleNamespace(sessions=set(range(10_000)), draining=False),
        hub=SimpleNamespace(streams=dict.fromkeys(range(500)), readiness=lambda: (True, "ok")),
        groups=SimpleNamespace(node_id="bench001", workers={}, swept=set()),
    )

    async def run() -> tuple[float, float]:
        node = NodeRegistry(settings, settings.registry, fake.server, fake.hub, fake.groups)  # type: ignore[arg-type]
        build = timeit.timeit(node.record, number=2000) / 2000 * 1e6
        started = time.perf_counter()
        for _ in range(200):
            await node.beat()
        write = (time.perf_counter() - started) / 200 * 1000
        await node.stop()
        return build, write

    return asyncio.run(run())


WORKER = """
import os, sys
from ingest import metrics
for i in range(int(sys.argv[1])):
    metrics.STORED.inc()
    metrics.LATENCY.observe(0.003)
"""


def ingest_heartbeat(port: int) -> float:
    """ms for an ingest master to build its heartbeat from 4 workers' multiprocess files."""
    from ingest.registry import MasterHeartbeat
    from ingest.settings import load_ingest

    folder = tempfile.mkdtemp(prefix="vski-bench-mp-")
    env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=folder, PYTHONPATH=str(ROOT))
    for _ in range(4):
        subprocess.run([sys.executable, "-c", WORKER, "1000"], env=env, check=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder
    try:
        settings = load_ingest({"JWT_SECRET": SECRET, "REDIS_URL": f"redis://127.0.0.1:{port}/0"})
        beat = MasterHeartbeat(settings, SimpleNamespace(WORKERS={}))
        return timeit.timeit(beat.beat, number=200) / 200 * 1000
    finally:
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
        shutil.rmtree(folder, ignore_errors=True)


def registry_listing(port: int, nodes: int) -> float:
    """ms to list a registry of ``nodes`` heartbeats (the /admin/status read)."""
    from common.layout import RegistryKeys
    from common.registry import SCRIPT, beat_args, load_registry
    from ingest import ops_read

    client = redis.Redis(port=port)
    prefix = f"list{nodes}"
    keys = RegistryKeys(prefix)
    script = client.register_script(SCRIPT.text)
    settings = load_registry({"REGISTRY_HEARTBEAT_SECONDS": "60"})
    record = {
        "role": "fanout",
        "address": "10.0.0.1:8080",
        "connections": 100,
        "group_collections": ["db/c"] * 10,
    }
    for n in range(nodes):
        script(keys=[keys.beats, keys.expiry], args=beat_args(f"n{n:04d}", record, settings))
    ops_read.read_nodes(client, prefix, 1000)
    return timeit.timeit(lambda: ops_read.read_nodes(client, prefix, 1000), number=50) / 50 * 1000


def activity_costs(port: int) -> dict[str, float]:
    from ingest.activity import Activity

    act = Activity(redis.Redis(port=port), "benchact")
    act._thread = object()  # type: ignore[assignment]  # no flush thread while measuring
    out = {
        "note ns": timeit.timeit(lambda: act.note("postgres", "posts"), number=200_000)
        / 200_000
        * 1e9
    }
    act.note("bench", "warm")
    act.flush()  # the connection is open before anything is timed
    for size in (16, 1000, 10_000):
        for i in range(size):
            act.note("bench", f"c{i}")
        started = time.perf_counter()
        act.flush()
        out[f"flush {size} ms"] = (time.perf_counter() - started) * 1000
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--webhooks", type=int, default=1000, help="per block of the A/B")
    ap.add_argument("--rounds", type=int, default=12, help="A/B rounds (ABBA order)")
    args = ap.parse_args()
    with contextlib.suppress(AttributeError, OSError):
        os.sched_setaffinity(0, {1})
    import jwt

    token = jwt.encode(
        {"sub": "vski-master", "exp": int(time.time()) + 3600}, SECRET, algorithm="HS256"
    )
    rows: list[tuple[str, str]] = []
    with redis_server() as port:
        apps = webhook_apps(port)
        for client in apps.values():
            webhook_cpu(client, token, 300, "warm")
        per: dict[str, list[float]] = {label: [] for label in apps}
        ratios = []
        labels = list(apps)
        for rep in range(args.rounds):
            order = labels if rep % 2 == 0 else labels[::-1]  # ABBA: drift hits both alike
            this = {
                label: webhook_cpu(apps[label], token, args.webhooks, f"r{rep}{label[-3:]}")
                for label in order
            }
            for label, value in this.items():
                per[label].append(value)
            ratios.append(this["admin view on"] / this["admin view off"])
            print(
                f"round {rep + 1}: " + ", ".join(f"{k} {v:.1f} µs" for k, v in this.items()),
                flush=True,
            )
        for label, values in per.items():
            rows.append((f"webhook, worker CPU, {label}", f"{statistics.median(values):.1f} µs"))
        rows.append(
            (
                f"same-round ratio on / off (median of {args.rounds})",
                f"{statistics.median(ratios):.3f}",
            )
        )
        act = [activity_costs(port) for _ in range(args.runs)]
        for key in act[0]:
            unit = key.split()[-1]
            rows.append(
                (
                    f"Activity.{key.rsplit(' ', 1)[0]}",
                    f"{statistics.median(a[key] for a in act):.2f} {unit}",
                )
            )
        beats = [fanout_heartbeat(port) for _ in range(args.runs)]
        rows.append(
            (
                "fanout heartbeat: build (10,000 connections)",
                f"{statistics.median(b[0] for b in beats):.0f} µs",
            )
        )
        rows.append(
            ("fanout heartbeat: build + write", f"{statistics.median(b[1] for b in beats):.2f} ms")
        )
        rows.append(
            (
                "ingest heartbeat: 4 workers' files + write",
                f"{median_of(args.runs, lambda: ingest_heartbeat(port)):.2f} ms",
            )
        )
        for nodes in (10, 300, 1000):
            rows.append(
                (
                    f"list the registry, {nodes} nodes",
                    f"{median_of(args.runs, lambda n=nodes: registry_listing(port, n)):.2f} ms",
                )
            )  # type: ignore[misc]
    print(f"\nmedians of {args.runs} runs; redis-server on CPU 0, this process on CPU 1")
    print("| what | cost |\n| --- | --- |")
    for what, cost in rows:
        print(f"| {what} | {cost} |")


if __name__ == "__main__":
    main()
