#!/usr/bin/env python3
"""Ingest benchmark: webhooks/s and latency of ``vski-ingest`` at 1, 2 and 4 gunicorn workers
with JWT verification and dedupe on, against a bare Falcon app under the same gunicorn config.

    flock /tmp/vski-bench.lock .venv/bin/python bench/ingest_bench.py [--runs 3] [--duration 10]
        [--ops-view]   # and a row with the operations view on (REALTIME_ADMIN_KEY set)
        [--redis-cluster]  # and each ingest row again on a 3+3 Redis Cluster

Each configuration gets a fresh ``redis-server`` and gunicorn on free ports; wrk (install with
``apt-get install -y wrk``) posts distinct webhooks (new record id and timestamp per request, 16
collections, a valid HS256 token) over 16 connections. Configurations are interleaved within each
repetition so that machine drift hits them alike; the table shows medians over repetitions and
the median of the same-repetition ratios to the bare app. Server processes run on
``--server-cpus`` and wrk on ``--wrk-cpus`` (taskset); Redis on ``--redis-cpus`` (default: with
the server).

With ``--redis-cluster`` one Redis Cluster of 3 masters + 3 replicas
(tests/support/redis_cluster.py) is started for the whole run, pinned like the standalone Redis,
and every ingest row gets a twin
``... cluster`` row right after it (``REDIS_CLUSTER=true``, flushed between rows); the ratio
column of a twin is then its same-repetition ratio to the standalone row, so the cost of the
cluster path shows without VM drift. Compare ``--server-cpus 0 --redis-cpus 1 --wrk-cpus 1``:
ingest alone on one core, every Redis process with the load.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import jwt
import redis

from devstack.ports import free_port, wait_port
from devstack.redis_process import NoRedisBinary, RedisProcess, find_binary

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BIN = Path(sys.executable).parent
SECRET = "bench-secret-that-is-long-enough-for-hs256!!"
OPS_VIEW_ENV = (("REALTIME_ADMIN_KEY", "bench-admin-key"), ("REGISTRY_HEARTBEAT_SECONDS", "2"))
SERVER_PIDS: list[int] = []  # gunicorn masters started, for tools that attach a profiler


@dataclass(frozen=True)
class Config:
    label: str
    app: str  # "ingest" or "bare"
    workers: int
    worker_class: str = "sync"
    threads: int = 1
    env: tuple[tuple[str, str], ...] = ()  # extra settings of this configuration
    cluster: bool = False  # against the run's Redis Cluster instead of a fresh standalone Redis


@dataclass
class Result:
    rate: float
    p50_ms: float
    p99_ms: float
    errors: int
    stored: int
    cpu_us: float  # CPU of gunicorn (master + workers) and Redis per request: noise-resistant
    ingest_cpu_us: float  # CPU of gunicorn alone per request


CLK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> float:
    """utime+stime of these processes and their current children (gunicorn workers)."""
    total = 0.0
    seen = set()
    todo = list(pids)
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            total += (int(fields[11]) + int(fields[12])) / CLK
            todo += [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def taskset(cpus: str | None) -> list[str]:
    return ["taskset", "-c", cpus] if cpus and shutil.which("taskset") else []


REDIS_PIDS: list[int] = []
CLUSTER: list[Any] = []  # the run's RedisClusterFixture, when --redis-cluster


@contextlib.contextmanager
def redis_proc(cpus: str | None) -> Iterator[int]:
    """A fresh Redis without persistence on a free port, pinned with the server processes."""
    with RedisProcess(prefix=taskset(cpus)) as server:
        assert server.pid is not None
        REDIS_PIDS.append(server.pid)  # taskset execs redis-server: same pid
        yield server.port


@contextlib.contextmanager
def cluster_proc() -> Iterator[int]:
    """The run's cluster, emptied: yields a seed port (every node's CPU is counted)."""
    cluster = CLUSTER[0]
    cluster.flushall()
    yield cluster.live()[0].port


def redis_pids(cfg: Config) -> list[int]:
    if cfg.cluster:
        return [n.proc.pid for n in CLUSTER[0].nodes if n.proc is not None]
    return [REDIS_PIDS[-1]]


@contextlib.contextmanager
def server_proc(cfg: Config, redis_port: int, cpus: str | None) -> Iterator[int]:
    port = free_port()
    env = dict(os.environ)
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.update(
        {
            "REDIS_CLUSTER": "true" if cfg.cluster else "false",
            "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
            "JWT_SECRET": SECRET,
            "INGEST_BIND": f"127.0.0.1:{port}",
            "INGEST_WORKERS": str(cfg.workers),
            "INGEST_WORKER_CLASS": cfg.worker_class,
            "INGEST_THREADS": str(cfg.threads),
            "LOG_LEVEL": "warning",
        }
    )
    env.update(dict(cfg.env))
    if cfg.app == "ingest":
        cmd = [str(BIN / "vski-ingest")]
    else:  # the same gunicorn config file, another app
        cmd = [
            str(BIN / "gunicorn"),
            "--config",
            "python:ingest.gunicorn_conf",
            "--pythonpath",
            str(HERE),
            "ingest_bare_app:app",
        ]
    log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed in finally
        prefix="vski-bench-gunicorn-", suffix=".log", delete=False
    )
    proc = subprocess.Popen(
        [*taskset(cpus), *cmd], env=env, stdout=log, stderr=log, start_new_session=True
    )
    SERVER_PIDS.append(proc.pid)
    try:
        wait_port(port)
        time.sleep(0.5 + 0.2 * cfg.workers)  # let every worker boot
        yield port
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        log.close()
        os.unlink(log.name)


def run_wrk(
    port: int,
    duration: float,
    conns: int,
    threads: int,
    cpus: str | None,
    token: str,
    nonce: str,
    close: bool = False,
) -> dict[str, int]:
    env = dict(os.environ, VSKI_TOKEN=token, VSKI_NONCE=nonce, VSKI_CLOSE="1" if close else "0")
    cmd = [
        *taskset(cpus),
        "wrk",
        f"-t{threads}",
        f"-c{conns}",
        f"-d{max(1, round(duration))}s",
        "--timeout",
        "5s",
        "-s",
        str(HERE / "ingest_wrk.lua"),
        f"http://127.0.0.1:{port}",
    ]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=duration + 60)
    for line in out.stdout.splitlines():
        if line.startswith("WRKJSON "):
            return dict(json.loads(line[len("WRKJSON ") :]))
    raise RuntimeError(f"wrk gave no summary:\n{out.stdout}\n{out.stderr}")


def stored_events(cfg: Config, redis_port: int) -> int:
    """Events really stored: the sum of each bench collection's sequence counter."""
    ports = [m.port for m in CLUSTER[0].masters()] if cfg.cluster else [redis_port]
    total = 0
    for p in ports:  # SCAN on one cluster node lists that node's keys only
        r = redis.Redis(port=p)
        total += sum(int(r.hget(k, "q") or 0) for k in r.scan_iter("vski:{bench/*}:m"))
    return total


def measure(cfg: Config, args: argparse.Namespace, rep: int) -> Result:
    token = jwt.encode(
        {"sub": "vski-master", "exp": int(time.time()) + 3600}, SECRET, algorithm="HS256"
    )
    backend = cluster_proc() if cfg.cluster else redis_proc(args.redis_cpus or args.server_cpus)
    with backend as rport, server_proc(cfg, rport, args.server_cpus) as port:
        run_wrk(
            port,
            args.warmup,
            args.connections,
            args.wrk_threads,
            args.wrk_cpus,
            token,
            f"w{rep}{cfg.label}",
            args.close,
        )
        before = stored_events(cfg, rport) if cfg.app == "ingest" else 0
        pids = [SERVER_PIDS[-1], *redis_pids(cfg)]
        cpu_before, ingest_before = cpu_seconds(pids), cpu_seconds(pids[:1])
        s = run_wrk(
            port,
            args.duration,
            args.connections,
            args.wrk_threads,
            args.wrk_cpus,
            token,
            f"m{rep}{cfg.label}",
            args.close,
        )
        cpu, ingest_cpu = cpu_seconds(pids) - cpu_before, cpu_seconds(pids[:1]) - ingest_before
        stored = stored_events(cfg, rport) - before if cfg.app == "ingest" else s["requests"]
    errors = s["connect"] + s["read"] + s["write"] + s["status"] + s["timeout"]
    return Result(
        rate=s["requests"] / (s["duration_us"] / 1e6),
        p50_ms=s["p50_us"] / 1000,
        p99_ms=s["p99_us"] / 1000,
        errors=errors,
        stored=stored,
        cpu_us=cpu / max(1, s["requests"]) * 1e6,
        ingest_cpu_us=ingest_cpu / max(1, s["requests"]) * 1e6,
    )


def ratio_cell(values: list[float], width: int) -> str:
    return f"{statistics.median(values):{width}.2f}" if values else f"{'-':>{width}}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--duration", type=float, default=10)
    ap.add_argument("--warmup", type=float, default=2)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--wrk-threads", type=int, default=1)
    ap.add_argument("--workers", default="1,2,4", help="sync worker counts of the ingest app")
    ap.add_argument("--gthread", default="", help="extra gthread rows as WORKERSxTHREADS,...")
    ap.add_argument("--server-cpus", default="0,1", help="taskset CPUs of Redis and gunicorn")
    ap.add_argument("--wrk-cpus", default="1", help="taskset CPUs of wrk")
    ap.add_argument("--redis-cpus", default=None, help="taskset CPUs of Redis (default: server's)")
    ap.add_argument(
        "--redis-cluster",
        action="store_true",
        help="each ingest row again on a 3+3 Redis Cluster (ratio: to the standalone row)",
    )
    ap.add_argument("--no-bare", action="store_true", help="leave out the bare-app floor row")
    ap.add_argument(
        "--close",
        action="store_true",
        help="send Connection: close (a new connection per webhook); the sync worker "
        "closes after every response anyway, gthread keeps connections alive",
    )
    ap.add_argument(
        "--ops-view",
        action="store_true",
        help="add a row: 4 sync workers with REALTIME_ADMIN_KEY set (the operations view's "
        "activity counting and heartbeat), to compare with the row without it",
    )
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        sys.exit(
            "wrk is not installed: apt-get install -y wrk (or build it from "
            "https://github.com/wg/wrk)"
        )
    try:
        find_binary()
    except NoRedisBinary as exc:
        sys.exit(str(exc))

    configs = [Config(f"ingest sync x{w}", "ingest", int(w)) for w in args.workers.split(",")]
    if not args.no_bare:
        configs.append(Config("bare sync x4", "bare", 4))
    if args.ops_view:  # the operations view on: activity counting + the master's heartbeat
        configs.append(Config("ingest sync x4 +ops", "ingest", 4, env=OPS_VIEW_ENV))
    for spec in filter(None, args.gthread.split(",")):
        w, t = (int(x) for x in spec.split("x"))
        configs.append(Config(f"ingest gthread {w}x{t}", "ingest", w, "gthread", t))
        if not args.no_bare:
            configs.append(Config(f"bare gthread {w}x{t}", "bare", w, "gthread", t))
    if args.redis_cluster:  # a twin right after each ingest row: same drift
        configs = [
            twin
            for c in configs
            for twin in (c, replace(c, label=f"{c.label} cluster", cluster=True))
            if twin is c or c.app == "ingest"
        ]

    def floor_of(cfg: Config) -> str | None:
        """The row a configuration's ratio is to: its standalone twin, or the bare app."""
        if cfg.cluster:
            return cfg.label.removesuffix(" cluster")
        if cfg.app == "bare" or args.no_bare:
            return None
        if cfg.worker_class == "sync":
            return "bare sync x4"
        return f"bare gthread {cfg.workers}x{cfg.threads}"

    results: dict[str, list[Result]] = {c.label: [] for c in configs}
    ratios: dict[str, list[float]] = {c.label: [] for c in configs}
    with contextlib.ExitStack() as stack:
        if args.redis_cluster:
            sys.path.insert(0, str(ROOT))
            from tests.support.redis_cluster import redis_cluster

            cluster = stack.enter_context(redis_cluster())
            for node in cluster.nodes:
                if node.proc is not None and taskset(args.redis_cpus or args.server_cpus):
                    subprocess.run(
                        ["taskset", "-pc", args.redis_cpus or args.server_cpus, str(node.proc.pid)],
                        check=False,
                        capture_output=True,
                    )
            CLUSTER.append(cluster)
        for rep in range(args.runs):
            this: dict[str, Result] = {}
            for cfg in configs:
                res = measure(cfg, args, rep)
                this[cfg.label] = res
                results[cfg.label].append(res)
                print(
                    f"run {rep + 1}/{args.runs} {cfg.label:30s} {res.rate:8.0f}/s "
                    f"p50 {res.p50_ms:6.2f} ms p99 {res.p99_ms:6.2f} ms cpu {res.cpu_us:4.0f} "
                    f"us/req (ingest {res.ingest_cpu_us:4.0f}) errors {res.errors} "
                    f"stored {res.stored}",
                    flush=True,
                )
            for cfg in configs:
                floor = floor_of(cfg)
                if floor is not None:
                    ratios[cfg.label].append(this[cfg.label].rate / this[floor].rate)

    print(
        f"\nmedians of {args.runs} runs, {args.duration:g} s each, {args.connections} "
        f"connections{' (Connection: close)' if args.close else ''}, "
        f"server CPUs {args.server_cpus}, Redis CPUs {args.redis_cpus or args.server_cpus}, "
        f"wrk CPUs {args.wrk_cpus}"
    )
    ratio_head = "ratio to standalone/bare" if args.redis_cluster else "ratio to bare"
    print(
        f"| {'configuration':30s} | webhooks/s | p50 ms | p99 ms | {ratio_head} "
        "| server CPU µs/req | ingest CPU µs/req | errors |"
    )
    print(
        f"| {'-' * 30} | ---------- | ------ | ------ | {'-' * len(ratio_head)} "
        "| ----------------- | ----------------- | ------ |"
    )
    for cfg in configs:
        rs = results[cfg.label]
        print(
            f"| {cfg.label:30s} | {statistics.median(r.rate for r in rs):10.0f} "
            f"| {statistics.median(r.p50_ms for r in rs):6.2f} "
            f"| {statistics.median(r.p99_ms for r in rs):6.2f} "
            f"| {ratio_cell(ratios[cfg.label], len(ratio_head))} "
            f"| {statistics.median(r.cpu_us for r in rs):17.0f} "
            f"| {statistics.median(r.ingest_cpu_us for r in rs):17.0f} "
            f"| {sum(r.errors for r in rs):6d} |"
        )
    lost = [
        (c.label, r.stored, r.rate)
        for c in configs
        if c.app == "ingest"
        for r in results[c.label]
        if r.errors == 0 and r.stored <= 0
    ]
    if lost:
        print(f"WARNING: runs that stored nothing: {lost}")


if __name__ == "__main__":
    main()
