#!/usr/bin/env python3
"""Ingest benchmark: webhooks/s and latency of ``vski-ingest`` at 1, 2 and 4 gunicorn workers
with JWT verification and dedupe on, against a bare Falcon app under the same gunicorn config.

    flock /tmp/vski-bench.lock .venv/bin/python bench/ingest_bench.py [--runs 3] [--duration 10]
        [--ops-view]   # and a row with the operations view on (REALTIME_ADMIN_KEY set)

Each configuration gets a fresh ``redis-server`` and gunicorn on free ports; wrk (install with
``apt-get install -y wrk``) posts distinct webhooks (new record id and timestamp per request, 16
collections, a valid HS256 token) over 16 connections. Configurations are interleaved within each
repetition so that machine drift hits them alike; the table shows medians over repetitions and
the median of the same-repetition ratios to the bare app. Server processes run on
``--server-cpus`` and wrk on ``--wrk-cpus`` (taskset).
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
from dataclasses import dataclass
from pathlib import Path

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


@dataclass
class Result:
    rate: float
    p50_ms: float
    p99_ms: float
    errors: int
    stored: int
    cpu_us: float  # CPU of gunicorn (master + workers) and Redis per request: noise-resistant


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


@contextlib.contextmanager
def redis_proc(cpus: str | None) -> Iterator[int]:
    """A fresh Redis without persistence on a free port, pinned with the server processes."""
    with RedisProcess(prefix=taskset(cpus)) as server:
        assert server.pid is not None
        REDIS_PIDS.append(server.pid)  # taskset execs redis-server: same pid
        yield server.port


@contextlib.contextmanager
def server_proc(cfg: Config, redis_port: int, cpus: str | None) -> Iterator[int]:
    port = free_port()
    env = dict(os.environ)
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.update(
        {
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


def stored_events(redis_port: int) -> int:
    """Events really stored: the sum of each bench collection's sequence counter."""
    r = redis.Redis(port=redis_port)
    return sum(int(r.hget(k, "q") or 0) for k in r.scan_iter("vski:{bench/*}:m"))


def measure(cfg: Config, args: argparse.Namespace, rep: int) -> Result:
    token = jwt.encode(
        {"sub": "vski-master", "exp": int(time.time()) + 3600}, SECRET, algorithm="HS256"
    )
    with redis_proc(args.server_cpus) as rport, server_proc(cfg, rport, args.server_cpus) as port:
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
        before = stored_events(rport) if cfg.app == "ingest" else 0
        pids = [SERVER_PIDS[-1], REDIS_PIDS[-1]]
        cpu_before = cpu_seconds(pids)
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
        cpu = cpu_seconds(pids) - cpu_before
        stored = stored_events(rport) - before if cfg.app == "ingest" else s["requests"]
    errors = s["connect"] + s["read"] + s["write"] + s["status"] + s["timeout"]
    return Result(
        rate=s["requests"] / (s["duration_us"] / 1e6),
        p50_ms=s["p50_us"] / 1000,
        p99_ms=s["p99_us"] / 1000,
        errors=errors,
        stored=stored,
        cpu_us=cpu / max(1, s["requests"]) * 1e6,
    )


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
    configs.append(Config("bare sync x4", "bare", 4))
    if args.ops_view:  # the operations view on: activity counting + the master's heartbeat
        configs.append(Config("ingest sync x4 +ops", "ingest", 4, env=OPS_VIEW_ENV))
    for spec in filter(None, args.gthread.split(",")):
        w, t = (int(x) for x in spec.split("x"))
        configs.append(Config(f"ingest gthread {w}x{t}", "ingest", w, "gthread", t))
        configs.append(Config(f"bare gthread {w}x{t}", "bare", w, "gthread", t))

    results: dict[str, list[Result]] = {c.label: [] for c in configs}
    ratios: dict[str, list[float]] = {c.label: [] for c in configs}
    for rep in range(args.runs):
        this: dict[str, Result] = {}
        for cfg in configs:
            res = measure(cfg, args, rep)
            this[cfg.label] = res
            results[cfg.label].append(res)
            print(
                f"run {rep + 1}/{args.runs} {cfg.label:22s} {res.rate:8.0f}/s "
                f"p50 {res.p50_ms:6.2f} ms p99 {res.p99_ms:6.2f} ms cpu {res.cpu_us:4.0f} us/req "
                f"errors {res.errors} stored {res.stored}",
                flush=True,
            )
        for cfg in configs:
            floor = (
                this["bare sync x4"]
                if cfg.worker_class == "sync"
                else this[f"bare gthread {cfg.workers}x{cfg.threads}"]
            )
            ratios[cfg.label].append(this[cfg.label].rate / floor.rate)

    print(
        f"\nmedians of {args.runs} runs, {args.duration:g} s each, {args.connections} "
        f"connections{' (Connection: close)' if args.close else ''}, "
        f"server CPUs {args.server_cpus}, wrk CPUs {args.wrk_cpus}"
    )
    print(
        f"| {'configuration':22s} | webhooks/s | p50 ms | p99 ms | ratio to bare "
        "| server CPU µs/req | errors |"
    )
    print(
        f"| {'-' * 22} | ---------- | ------ | ------ | ------------- "
        "| ----------------- | ------ |"
    )
    for cfg in configs:
        rs = results[cfg.label]
        print(
            f"| {cfg.label:22s} | {statistics.median(r.rate for r in rs):10.0f} "
            f"| {statistics.median(r.p50_ms for r in rs):6.2f} "
            f"| {statistics.median(r.p99_ms for r in rs):6.2f} "
            f"| {statistics.median(ratios[cfg.label]):13.2f} "
            f"| {statistics.median(r.cpu_us for r in rs):17.0f} "
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
