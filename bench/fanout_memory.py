"""Memory per idle connection of one fanout node, and what each object of a connection costs.

Run under the benchmark lock (it starts thousands of connections):

    flock -x /tmp/vski-bench.lock .venv/bin/python bench/fanout_memory.py [--counts 1000,10000]

Method
- A real redis-server and one node (this script re-executed with ``--node``: the same
  ``fanout.__main__.run`` as ``vski-fanout``) on 127.0.0.1, the node pinned to ``--server-cpu``,
  Redis and the C load client (``bench/fanout_client.c``) to ``--load-cpu``.
- **RSS per connection** = (node VmRSS with N subscribed idle connections - VmRSS of the same
  node after one connection came and went) / N, for each N of ``--counts``; a fresh node per N,
  median of ``--repeat`` runs.
- **Breakdown** (``--breakdown N``, default 1000): the node runs with ``tracemalloc`` on; a
  snapshot is taken before and after N connections subscribe. The difference is grouped by the
  allocating source line (top lines) and, separately, the live objects the garbage collector
  sees are counted by type (count and ``sys.getsizeof`` bytes per connection). Python-level
  bytes only: the kernel's socket buffers are not in RSS, and malloc overhead/fragmentation is
  the gap between the breakdown's total and the RSS delta.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

# bench/, next to this script
from fanout_bench import SECRET, LoadClient, build_client, pinned, rss_mb, token

from devstack.ports import free_port, wait_port
from devstack.redis_process import RedisProcess

ROOT = Path(__file__).resolve().parent.parent

# ------------------------------------------------------------------ the node side (--node)


def _census() -> dict[str, list[int]]:
    """Live gc-tracked objects by type: [count, bytes]."""
    gc.collect()
    out: dict[str, list[int]] = {}
    for obj in gc.get_objects():
        t = type(obj)
        name = f"{t.__module__}.{t.__qualname__}"
        row = out.setdefault(name, [0, 0])
        row[0] += 1
        row[1] += sys.getsizeof(obj)
    return out


def node_main(out: Path, trace: bool) -> None:
    """Run a node; SIGUSR1 writes a snapshot (census + tracemalloc) to ``out``.N.json."""
    if trace:
        tracemalloc.start(1)
    from common.policy_source import PolicySource, policy_path
    from fanout.__main__ import _raise_fd_limit, run
    from fanout.settings import load_fanout

    settings = load_fanout()
    policy = PolicySource(policy_path(), tier="fanout")
    _raise_fd_limit()
    shots: list[Any] = []

    def snapshot() -> None:
        census = _census()
        stats: list[list[Any]] = []
        if trace:
            snap = tracemalloc.take_snapshot().filter_traces(
                [tracemalloc.Filter(False, tracemalloc.__file__)]
            )
            if shots:
                for st in snap.compare_to(shots[0], "lineno"):
                    frame = st.traceback[0]
                    stats.append([f"{frame.filename}:{frame.lineno}", st.size_diff, st.count_diff])
            else:
                shots.append(snap)
        n = len(list(out.parent.glob(out.name + ".*.json")))
        Path(f"{out}.{n}.json").write_text(json.dumps({"census": census, "lines": stats}))

    async def main() -> None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, snapshot)
        await run(settings, policy)

    asyncio.run(main())


# ------------------------------------------------------------------ the driver


class Node:
    def __init__(self, args: argparse.Namespace, redis_url: str, tmp: Path, trace: bool) -> None:
        self.port = free_port()
        self.out = tmp / f"snap-{self.port}"
        env = dict(
            os.environ,
            REDIS_URL=redis_url,
            JWT_SECRET=SECRET,
            LOG_LEVEL="warning",
            LOG_FORMAT="json",
            FANOUT_BIND=f"127.0.0.1:{self.port}",
            FANOUT_PING_INTERVAL="30",
        )
        cmd = [sys.executable, __file__, "--node", str(self.out)] + (["--trace"] if trace else [])
        self.proc = subprocess.Popen(pinned(args.server_cpu, cmd), env=env)
        wait_port(self.port, timeout=30)

    def snapshot(self) -> dict[str, Any]:
        before = set(self.out.parent.glob(self.out.name + ".*.json"))
        self.proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            new = set(self.out.parent.glob(self.out.name + ".*.json")) - before
            if new:
                time.sleep(0.2)
                data: dict[str, Any] = json.loads(new.pop().read_text())
                return data
            time.sleep(0.1)
        raise RuntimeError("node wrote no snapshot")

    def rss_kb(self) -> float:
        time.sleep(0.5)
        return rss_mb(self.proc.pid)[0] * 1024

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def clients(binary: Path, cpu: str, port: int, n: int) -> LoadClient:
    """The C client holding ``n`` subscribed, idle connections (NOLAT: nothing is sent)."""
    path = f"/api/realtime?db=mem&auth={token()}"
    client = LoadClient(binary, cpu, port, path, n, 1, nolat=True)
    if not client.ready.wait(180):
        raise RuntimeError(f"clients did not connect ({client.subscribed})")
    return client


def measure(
    args: argparse.Namespace, binary: Path, url: str, tmp: Path, n: int, trace: bool
) -> tuple[Any, Any, int]:
    """(probe before, probe with ``n`` idle connections, connections): the probe is RSS in KB,
    or with ``trace`` the node's snapshot. One connection comes and goes first, so imports and
    first-use caches are in the baseline."""
    node = Node(args, url, tmp, trace=trace)
    probe = node.snapshot if trace else node.rss_kb
    try:
        clients(binary, args.load_cpu, node.port, 1).finish()
        time.sleep(1.0)
        before = probe()
        load = clients(binary, args.load_cpu, node.port, n)
        time.sleep(1.0)
        after = probe()
        got = load.subscribed
        load.finish()
    finally:
        node.stop()
    return before, after, got


def per_connection(args: argparse.Namespace, binary: Path, url: str, tmp: Path, n: int) -> float:
    base, loaded, got = measure(args, binary, url, tmp, n, trace=False)
    return float(loaded - base) / max(got, 1)


def breakdown(args: argparse.Namespace, binary: Path, url: str, tmp: Path, n: int) -> None:
    before, after, got = measure(args, binary, url, tmp, n, trace=True)
    lines = sorted(after["lines"], key=lambda r: -r[1])
    total = sum(r[1] for r in lines)
    print(f"\n### tracemalloc: bytes allocated per connection by source line ({got} connections)\n")
    print("| source line | bytes/conn | blocks/conn |")
    print("| --- | --- | --- |")
    for where, size, count in lines[: args.top]:
        short = where.replace(str(ROOT) + "/", "").split("site-packages/")[-1]
        print(f"| {short} | {size / got:,.0f} | {count / got:.1f} |")
    print(f"| **total (all lines)** | **{total / got:,.0f}** | |")
    b, a = before["census"], after["census"]
    rows = []
    for name, (count, size) in a.items():
        c0, s0 = b.get(name, [0, 0])
        if size - s0 > 0:
            rows.append((name, (count - c0) / got, (size - s0) / got))
    rows.sort(key=lambda r: -r[2])
    print(f"\n### gc census: live objects per connection by type ({got} connections)\n")
    print("| type | objects/conn | getsizeof bytes/conn |")
    print("| --- | --- | --- |")
    for name, count, size in rows[: args.top]:
        print(f"| {name} | {count:.2f} | {size:,.0f} |")
    print(f"| **total (all types)** | | **{sum(r[2] for r in rows):,.0f}** |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--counts", default="1000,10000", help="connection counts for RSS/conn")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--breakdown", type=int, default=1000, help="0: skip the breakdown")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--server-cpu", default="0")
    p.add_argument("--load-cpu", default="1")
    p.add_argument("--node", default=None, help=argparse.SUPPRESS)
    p.add_argument("--trace", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.node:
        node_main(Path(a.node), a.trace)
        return
    tmp = Path(tempfile.mkdtemp(prefix="vski-fmem-"))
    binary = build_client(tmp)
    redis = RedisProcess(tmp, prefix=pinned(a.load_cpu, [])).start()
    try:
        counts = [int(c) for c in a.counts.split(",") if c]
        results: dict[int, list[float]] = {n: [] for n in counts}
        for _ in range(a.repeat):
            for n in counts:
                kb = per_connection(a, binary, redis.url, tmp, n)
                results[n].append(kb)
                print(f"# {n} connections: {kb:.2f} KB/conn", flush=True)
        print("\n| idle connections | RSS KB per connection (median) | runs |")
        print("| --- | --- | --- |")
        for n, kbs in results.items():
            runs = ", ".join(f"{k:.1f}" for k in kbs)
            print(f"| {n:,} | {statistics.median(kbs):.1f} | {runs} |")
        if a.breakdown:
            breakdown(a, binary, redis.url, tmp, a.breakdown)
    finally:
        redis.stop()


if __name__ == "__main__":
    main()
