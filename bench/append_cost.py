#!/usr/bin/env python3
"""CPU per append of the ingest client paths, in-process: standalone, redis-py's cluster client,
and direct cluster routing (ingest/direct.py).

    flock -x /tmp/vski-bench.lock .venv/bin/python bench/append_cost.py [--appends 5000] [--runs 3]

Starts one standalone ``redis-server`` and one 3+3 Redis Cluster (tests/support/redis_cluster.py),
all pinned to ``--redis-cpu``; this process runs on ``--client-cpu``. Each run appends
``--appends`` distinct webhooks over 16 collections through each path in turn (interleaved, so
drift hits all alike) and measures this process's CPU time per append, user and kernel apart
(``getrusage``: the Python work of a path is its user time; a loopback send costs kernel time in
the sender), and the wall time per append. Paths:

- ``standalone``: ``EventStore`` on ``redis.Redis`` (its plain-connection caller);
- ``cluster, redis-py client``: the script through ``RedisCluster.execute_command`` (how
  ingest appended on a cluster before direct routing);
- ``cluster, direct``: ``EventStore`` on ``RedisCluster``, which routes to the slot owner;
- ``cluster node, plain connection``: ``EventStore`` on a ``redis.Redis`` of that one master:
  the floor of any cluster path (what is left is the cluster-enabled server's reply time and
  the kernel, not client code).

Every cluster path appends to 16 collections owned by one master, so they do the same work.

The table gives medians of ``--runs`` and the same-run ratio of each path's user CPU to
standalone's.
These are the client's costs only; the Redis side of one append is the same in every path.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common.config import RetentionSettings  # noqa: E402
from common.layout import collection_keys  # noqa: E402
from common.messages import decode_webhook  # noqa: E402
from devstack.redis_process import RedisProcess  # noqa: E402
from ingest.store import APPEND, EventStore  # noqa: E402
from tests.support.redis_cluster import redis_cluster, webhook_body  # noqa: E402

COLLECTIONS = 16


def hooks(names: list[str], n: int) -> list[Any]:
    """``n`` distinct webhooks over these collections."""
    return [decode_webhook(webhook_body("bench", names[i % len(names)], i)) for i in range(n)]


def via_store(store: EventStore) -> Callable[[Any], object]:
    return store.append


def via_cluster_client(client: Any, retention: RetentionSettings) -> Callable[[Any], object]:
    """The pre-direct cluster path: the same script and arguments through redis-py."""
    args = EventStore(client, retention).script_args  # builds the arguments, sends nothing
    client.script_load(APPEND.text)

    def append(hook: Any) -> object:
        keys = collection_keys(hook.database, hook.collection)
        return client.execute_command("EVALSHA", APPEND.sha, 4, *args(keys, hook))

    return append


def measure(append: Callable[[Any], object], batch: list[Any]) -> tuple[float, float, float]:
    """(user CPU µs, kernel CPU µs, wall µs) per append."""
    append(batch[0])  # connections and script in place before the clock starts
    t0, wall0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for hook in batch[1:]:
        append(hook)
    t1, n = resource.getrusage(resource.RUSAGE_SELF), len(batch) - 1
    return (
        (t1.ru_utime - t0.ru_utime) / n * 1e6,
        (t1.ru_stime - t0.ru_stime) / n * 1e6,
        (time.perf_counter() - wall0) / n * 1e6,
    )


def pin(pid: int, cpu: str) -> None:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(pid, {int(c) for c in cpu.split(",")})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--appends", type=int, default=5000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--client-cpu", default="0")
    ap.add_argument("--redis-cpu", default="1")
    a = ap.parse_args()
    pin(0, a.client_cpu)
    retention = RetentionSettings()
    rows: dict[str, list[tuple[float, float, float]]] = {}
    ratios: dict[str, list[float]] = {}
    with RedisProcess() as single, redis_cluster() as cluster:
        for pid in [single.pid, *(n.proc.pid for n in cluster.nodes if n.proc is not None)]:
            if pid is not None:
                pin(pid, a.redis_cpu)
        seed = cluster.live()[0]
        owner = cluster.masters()[0]
        paths: dict[str, Callable[[Any], object]] = {
            "standalone": via_store(
                EventStore(redis.Redis(port=single.port, socket_timeout=5), retention)
            ),
            "cluster, redis-py client": via_cluster_client(
                redis.RedisCluster(host=seed.host, port=seed.port, socket_timeout=5), retention
            ),
            "cluster, direct": via_store(
                EventStore(
                    redis.RedisCluster(host=seed.host, port=seed.port, socket_timeout=5), retention
                )
            ),
            "cluster node, plain connection": via_store(
                EventStore(redis.Redis(port=owner.port, socket_timeout=5), retention)
            ),
        }
        for run in range(a.runs):
            this = {}
            for i, (label, append) in enumerate(paths.items()):
                tag = f"r{run}p{i}c"  # new keys in every run and path
                names = cluster.collections_per_master("bench", COLLECTIONS, tag)[owner.port]
                this[label] = measure(append, hooks(names, a.appends))
                rows.setdefault(label, []).append(this[label])
                user, kernel, wall = this[label]
                print(
                    f"run {run + 1}/{a.runs} {label:26s} user {user:6.1f} µs kernel {kernel:6.1f} "
                    f"µs wall {wall:6.1f} µs",
                    flush=True,
                )
            for label in paths:
                ratios.setdefault(label, []).append(this[label][0] / this["standalone"][0])
    print(
        f"\nmedians of {a.runs} runs x {a.appends} appends, client on CPU {a.client_cpu}, "
        f"every Redis on CPU {a.redis_cpu}"
    )
    print(
        "| path | client user CPU µs/append | client kernel CPU µs/append | wall µs/append "
        "| user CPU ratio to standalone |"
    )
    print("| --- | --- | --- | --- | --- |")
    for label, rs in rows.items():
        print(
            f"| {label} | {statistics.median(r[0] for r in rs):.1f} | "
            f"{statistics.median(r[1] for r in rs):.1f} | "
            f"{statistics.median(r[2] for r in rs):.1f} | {statistics.median(ratios[label]):.2f} |"
        )


if __name__ == "__main__":
    main()
