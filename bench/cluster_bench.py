"""The fanout benchmark on a standalone Redis and on a 3-master Redis Cluster, side by side.

Run only under the shared lock (this script does not take it itself: it runs
``bench/fanout_bench.py``, which must not nest the lock):

    flock /tmp/vski-bench.lock .venv/bin/python bench/cluster_bench.py [--cases aim,a500,b]

It starts a Redis Cluster of 3 masters + 3 replicas (tests/support/redis_cluster.py, all six
processes pinned to the load CPU like the standalone Redis of fanout_bench), then alternates
``fanout_bench.py`` (its own standalone Redis) and ``fanout_bench.py --redis-cluster`` ``--repeat``
times, so drift of this VM hits both alike. It prints the medians of both and their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.redis_cluster import redis_cluster  # noqa: E402

COLUMNS = ("events_s", "p50", "p99", "loss", "cpu", "ingest_p50")


def run_bench(
    cases: str, seconds: float | None, out: Path, cluster_url: str | None, wait: int = 0
) -> list[Any]:
    cmd = [
        sys.executable,
        str(ROOT / "bench" / "fanout_bench.py"),
        "--cases",
        cases,
        "--json",
        str(out),
    ]
    if seconds:
        cmd += ["--seconds", str(seconds)]
    if cluster_url:
        cmd += ["--redis-cluster", cluster_url]
    # fanout_bench passes its environment to ingest: INGEST_WAIT_REPLICAS reaches it that way
    env = dict(os.environ, INGEST_WAIT_REPLICAS=str(wait), INGEST_WAIT_TIMEOUT_MS="1000")
    subprocess.run(cmd, check=True, env=env)
    return list(json.loads(out.read_text())["median"])


def pin(pids: list[int], cpu: str) -> None:
    if shutil.which("taskset"):
        for pid in pids:
            subprocess.run(["taskset", "-pc", cpu, str(pid)], check=False, capture_output=True)


def med(rows: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(r[key] for r in rows)) if rows else float("nan")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--cases", default="aim,a500,b")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--seconds", type=float, default=None)
    p.add_argument("--load-cpu", default="1")
    p.add_argument(
        "--modes",
        default="standalone,cluster",
        help="standalone, cluster, cluster-wait1 (ingest with INGEST_WAIT_REPLICAS=1)",
    )
    p.add_argument("--json", default=None, help="also write all rows to this file")
    a = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="vski-cbench-"))
    modes = [m.strip() for m in a.modes.split(",") if m.strip()]
    rows: dict[str, dict[str, list[dict[str, Any]]]] = {m: {} for m in modes}
    try:
        with redis_cluster() as cluster:
            pin([n.proc.pid for n in cluster.nodes if n.proc is not None], a.load_cpu)
            for rep in range(a.repeat):
                for mode in modes:
                    url = None if mode == "standalone" else cluster.url
                    wait = 1 if mode.endswith("wait1") else 0
                    out = tmp / f"{mode}{rep}.json"
                    print(f"# repeat {rep + 1}/{a.repeat}: {mode}", flush=True)
                    for row in run_bench(a.cases, a.seconds, out, url, wait):
                        rows[mode].setdefault(row["case"], []).append(row)
                    if url:
                        cluster.flushall()  # the next repeat starts from empty streams
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print()
    print(
        "| case | Redis | runs | delivered events/s | p50 ms | p99 ms | loss | node CPU% | "
        "webhook answer p50 ms |"
    )
    print("|" + " --- |" * 9)
    cases = list(dict.fromkeys(c for m in modes for c in rows[m]))
    for case in cases:
        for mode in modes:
            rs = rows[mode].get(case, [])
            print(
                f"| {case} | {mode} | {len(rs)} | {med(rs, 'events_s'):,.0f} | "
                f"{med(rs, 'p50'):.1f} | {med(rs, 'p99'):.1f} | {med(rs, 'loss'):.0f} | "
                f"{med(rs, 'cpu'):.0f} | {med(rs, 'ingest_p50'):.1f} |"
            )
    print()
    base = modes[0]
    for case in cases:
        s = rows[base].get(case, [])
        for mode in modes[1:]:
            c = rows[mode].get(case, [])
            if s and c:
                print(
                    f"{case}: {mode}/{base} delivered events/s "
                    f"{med(c, 'events_s') / max(med(s, 'events_s'), 1e-9):.2f}, "
                    f"p99 {med(c, 'p99'):.1f} vs {med(s, 'p99'):.1f} ms, webhook answer p50 "
                    f"{med(c, 'ingest_p50'):.1f} vs {med(s, 'ingest_p50'):.1f} ms"
                )
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
