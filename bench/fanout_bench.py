"""Fanout benchmark: real redis-server, gunicorn ingest and one ``vski-fanout`` on 127.0.0.1.

Run only under the shared lock (two benchmarks on 2 cores measure each other):

    flock /tmp/vski-bench.lock .venv/bin/python bench/fanout_bench.py [--cases aim,a100,...]

Method
- The fanout node (or the bare ceiling server) is pinned to ``--server-cpu``; Redis, ingest, the
  webhook poster and the load client share ``--load-cpu``.
- Load client: ``bench/fanout_client.c`` (compiled here with gcc): thousands of WebSocket
  connections in one epoll loop; connection i subscribes to collection ``c<i % colls>``.
- Poster: paced webhooks (open loop) to ingest, round-robin over the collections; each record
  carries ``sent`` = time.time() at posting, so latency is webhook -> client, including ingest,
  Redis and fanout.
- Delivered events/s = events received by all clients / (last - first receive). Loss = expected
  deliveries (webhooks answered 200 x subscribers of their collection) - received.
- Node CPU% = its utime+stime over the delivery window; RSS at the end of the case.
- ``bare``: ``bench/fanout_bare.py`` broadcasts a prebuilt one-event frame as fast as it can to
  the same client count: the websockets.broadcast ceiling. ``sat1`` is the node at saturation with
  one event per frame (FANOUT_MAX_FRAME_EVENTS=1), the same work per delivery as ``bare``: their
  ratio is the node's efficiency. With batching (the default) the node delivers more events/s.

Against a Redis Cluster: ``--redis-cluster redis://127.0.0.1:7000`` (no redis-server started).

Processes: ``--processes 1,2`` runs every case once per count (``FANOUT_PROCESSES``); rows of
N > 1 are named ``<case>@<N>p``. A node of N > 1 processes is pinned to ``--server-cpu`` and
``--load-cpu`` together (``taskset -c 0,1`` by default: on a 2-core machine the load client,
Redis and ingest then share the second core with a child); its CPU is the sum over the
supervisor and its children, and the load client connects only once every child listens (the
summed ``vski_fanout_max_connections`` says so), so ``SO_REUSEPORT`` spreads all clients.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt

from devstack.ports import free_port, wait_port
from devstack.redis_process import RedisProcess

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SECRET = "bench-secret-bench-secret-bench-secret!!"


@dataclass
class Case:
    name: str
    clients: int
    colls: int
    rate: float  # offered webhooks/s
    seconds: float
    env: dict[str, str] = field(default_factory=dict)
    note: str = ""
    policy: str | None = None  # a key of POLICIES: the node runs with that access policy
    users: int = 0  # 0: every connection is user "bench"; N: connection i is user u<i % N>
    # each event's record has author u<i % users>: with the owner filter it reaches 1 client
    record_bytes: int = 0  # > 0: each record is padded to this many bytes of JSON


# access policies of the policy cases: every record is published and has an author
POLICIES = {
    "claimfree": 'status = "published"',
    "owner": "author = @request.auth.id",
}


CASES = {
    "aim": Case("aim", 1000, 1, 50, 10, note="aim: 50k deliveries/s, p99 < 20 ms"),
    "a100": Case("a100", 1000, 1, 100, 10),
    "a500": Case("a500", 1000, 1, 500, 10),
    "b": Case("b", 1000, 100, 500, 10, note="10 clients per collection"),
    "c": Case("c", 10000, 1, 10, 10, note="10k clients"),
    "c5": Case("c5", 10000, 1, 5, 10, note="10k clients x 5/s: 50,000 deliveries/s"),
    "cmax": Case("cmax", 19000, 1, 5, 10, note="largest: open files hard limit is 20,000"),
    "sat1": Case(
        "sat1",
        1000,
        1,
        200,
        5,
        {"FANOUT_MAX_FRAME_EVENTS": "1"},
        note="saturation, 1 event/frame",
    ),
    "single": Case("single", 1, 1, 50, 10, note="one subscriber: CPU per webhook baseline"),
    "aimpub": Case("aimpub", 1000, 1, 50, 10, policy="claimfree", note="aim, claim-free filter"),
    "a500pub": Case(
        "a500pub", 1000, 1, 500, 10, policy="claimfree", note="a500, claim-free filter"
    ),
    "aimown": Case(
        "aimown",
        1000,
        1,
        50,
        10,
        policy="owner",
        users=1000,
        note="aim, owner filter, 1,000 users: each event to 1 client",
    ),
    "bare": Case("bare", 1000, 1, 0, 5, note="bare websockets.broadcast loop"),
    "bareraw": Case(
        "bareraw",
        1000,
        1,
        0,
        5,
        {"BARE_MODE": "raw"},
        note="bare loop, prebuilt frame written to each transport",
    ),
}


NICE = 0  # set from --nice


def pinned(cpu: str | None, args: list[str]) -> list[str]:
    if NICE:
        args = ["nice", "-n", str(NICE), *args]
    return ["taskset", "-c", cpu, *args] if cpu and shutil.which("taskset") else args


def redis_counters(url: str | None) -> dict[str, int]:
    """Connections and cumulative work of a standalone Redis (what N processes cost it):
    ``CLIENT LIST`` entries, commands processed, bytes written to clients."""
    if not url:
        return {}
    import redis

    try:
        client = redis.Redis.from_url(url, socket_timeout=5)
        stats = client.info("stats")
        conns = len(client.client_list()) - 1  # not this connection
        client.close()
    except (redis.RedisError, OSError):
        return {}
    return {
        "conns": conns,
        "commands": int(stats["total_commands_processed"]),
        "out_bytes": int(stats["total_net_output_bytes"]),
    }


def metrics_text(port: int) -> str:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
        conn.close()
        return text
    except (OSError, http.client.HTTPException):
        return ""


def wait_children(port: int, processes: int, max_connections: int, timeout: float = 30) -> None:
    """Until every child listens: each adds its FANOUT_MAX_CONNECTIONS to the summed gauge."""
    want = f"vski_fanout_max_connections {float(processes * max_connections)}"
    deadline = time.monotonic() + timeout
    while want not in metrics_text(port):
        if time.monotonic() > deadline:
            raise RuntimeError(f"not all {processes} fanout processes listen on {port}")
        time.sleep(0.1)


def read_lag_ms(port: int) -> tuple[float, float]:
    """p50/p99 of the node's Redis-append -> node-read lag (upper bucket bounds, ms)."""
    text = metrics_text(port)
    buckets = []
    for line in text.splitlines():
        if line.startswith("vski_fanout_read_lag_seconds_bucket"):
            le = line.split('le="')[1].split('"')[0]
            buckets.append((float("inf") if le == "+Inf" else float(le), float(line.split()[-1])))
    total = buckets[-1][1] if buckets else 0
    out = []
    for q in (0.5, 0.99):
        bound = next((le for le, n in buckets if total and n >= q * total), 0.0)
        out.append(bound * 1000)
    return out[0], out[1]


def token(ttl: float = 7200, sub: str = "bench") -> str:
    return jwt.encode({"sub": sub, "exp": int(time.time() + ttl)}, SECRET, algorithm="HS256")


def policy_file(directory: Path, name: str) -> Path:
    """A policy whose bench collections (c0..c99) any token may subscribe to, through one of
    POLICIES' filters."""
    path = directory / f"policy-{name}.toml"
    entries = "".join(
        f'[[collection]]\nname = "c{j}"\nsubscribe = ""\nfilter = \'{POLICIES[name]}\'\n'
        for j in range(100)
    )
    path.write_text('version = 1\n[claims]\nid = ["id", "sub"]\n' + entries)
    return path


def tokens_file(directory: Path, users: int) -> Path:
    path = directory / f"tokens-{users}.txt"
    path.write_text("".join(token(sub=f"u{j}") + "\n" for j in range(users)))
    return path


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (a supervisor and its children)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
    return out


def tree_cpu_seconds(pid: int) -> float:
    total = 0.0
    for p in process_tree(pid):
        with contextlib.suppress(OSError):
            total += cpu_seconds(p)
    return total


def tree_rss_mb(pid: int) -> tuple[float, float]:
    rss = hwm = 0.0
    for p in process_tree(pid):
        with contextlib.suppress(OSError):
            r, h = rss_mb(p)
            rss, hwm = rss + r, hwm + h
    return rss, hwm


def cpu_seconds(pid: int) -> float:
    """CPU time of every thread of ``pid``: schedstat's nanoseconds where the kernel has them
    (stat's clock ticks are 10 ms: too coarse for a node that idles at 50 webhooks/s)."""
    try:
        total = 0
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
        return total / 1e9
    except (OSError, ValueError, IndexError):
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> tuple[float, float]:
    rss = hwm = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1])
    return rss / 1024, hwm / 1024


class Stack:
    """Redis (unless external), ingest; fanout nodes are started per case."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="vski-fbench-"))
        self.procs: list[subprocess.Popen[bytes]] = []
        self.redis: RedisProcess | None = None  # started here unless a Redis URL was given
        self.redis_url = args.redis_cluster or args.redis_url
        self.cluster = bool(args.redis_cluster)

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            REDIS_URL=self.redis_url or "",
            JWT_SECRET=SECRET,
            LOG_FORMAT="json",
            LOG_LEVEL="warning",
            REDIS_CLUSTER="true" if self.cluster else "false",
            RETENTION_MAX_EVENTS="100000",
        )
        env.update(extra)
        return env

    def spawn(self, args: list[str], env: dict[str, str], log: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            args,
            env=env,
            stdout=(self.tmp / log).open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs.append(proc)
        return proc

    def start(self) -> None:
        a = self.args
        if not self.redis_url:
            # pinned with the load (the prefix execs redis-server, so its pid is the server's)
            self.redis = RedisProcess(self.tmp, prefix=pinned(a.load_cpu, [])).start()
            self.redis_url = self.redis.url
        self.ingest_port = free_port()
        self.spawn(
            pinned(a.load_cpu, [str(BIN / "vski-ingest")]),
            self.env(
                INGEST_BIND=f"127.0.0.1:{self.ingest_port}", INGEST_WORKERS=str(a.ingest_workers)
            ),
            "ingest.log",
        )
        wait_port(self.ingest_port)
        self.ingest = self.procs[-1]

    def backing_cpu_seconds(self) -> float:
        """CPU of Redis and ingest (its master and workers): they share the load core."""
        total = tree_cpu_seconds(self.ingest.pid)
        if self.redis is not None and self.redis.proc is not None:
            total += tree_cpu_seconds(self.redis.proc.pid)
        return total

    def fanout(
        self, extra: dict[str, str], processes: int = 1, pin: bool = False
    ) -> tuple[subprocess.Popen[bytes], int]:
        port = free_port()
        env = self.env(FANOUT_BIND=f"127.0.0.1:{port}", FANOUT_PING_INTERVAL="30", **extra)
        env["FANOUT_PROCESSES"] = str(processes)
        env["FANOUT_PIN_CHILDREN"] = "true" if pin else "false"
        a = self.args
        cpus = a.server_cpu if processes == 1 else f"{a.server_cpu},{a.load_cpu}"
        proc = self.spawn(pinned(cpus, [str(BIN / "vski-fanout")]), env, "fanout.log")
        wait_port(port)
        if processes > 1:
            wait_children(port, processes, int(env.get("FANOUT_MAX_CONNECTIONS", "20000")))
        return proc, port

    def stop_proc(self, proc: subprocess.Popen[bytes], timeout: float = 15) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            self.stop_proc(proc)
        if self.redis is not None:
            self.redis.stop()  # last, as before: the tiers are gone
        shutil.rmtree(self.tmp, ignore_errors=True)


class LoadClient:
    """The C client as a subprocess; progress lines are read by a thread."""

    def __init__(
        self,
        binary: Path,
        cpu: str | None,
        port: int,
        path: str,
        n: int,
        colls: int,
        nolat: bool = False,
        tokens: Path | None = None,
        protocol: str = "vski",  # or "nchan": see fanout_client.c
    ) -> None:
        args = [str(binary), "127.0.0.1", str(port), path, str(n), str(colls), str(int(nolat))]
        if tokens is not None:
            args.append(str(tokens))
        env = dict(os.environ, FANOUT_CLIENT_PROTOCOL=protocol)
        self.proc = subprocess.Popen(pinned(cpu, args), stdout=subprocess.PIPE, text=True, env=env)
        self.ready = threading.Event()
        self.subscribed = 0
        self.events = 0
        self.frames = 0
        self.closed = 0
        self.last_change = time.monotonic()
        self.final: dict[str, Any] | None = None
        self.subs: list[int] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("READY"):
                self.subscribed = int(line.split()[1])
                self.ready.set()
            elif line.startswith("P "):
                _, ev, fr, cl = line.split()
                if int(ev) != self.events:
                    self.last_change = time.monotonic()
                self.events, self.frames, self.closed = int(ev), int(fr), int(cl)
            elif line.startswith("S"):
                self.subs = [int(x) for x in line.split()[1:]]
            elif line.startswith("{"):
                self.final = json.loads(line)

    def settle(self, expected: int, quiet: float = 1.5, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.events >= expected and expected > 0:
                return
            if time.monotonic() - self.last_change > quiet:
                return
            time.sleep(0.05)

    def finish(self) -> dict[str, Any]:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)
        self.thread.join(10)
        assert self.final is not None, "load client printed no result"
        return self.final


class Poster:
    """Open-loop paced webhooks over ``threads`` threads (gunicorn sync: one request per conn)."""

    def __init__(
        self,
        port: int,
        db: str,
        colls: int,
        rate: float,
        seconds: float,
        threads: int = 4,
        users: int = 1,
        record_bytes: int = 0,
    ) -> None:
        self.port, self.db, self.colls = port, db, colls
        self.users = max(1, users)
        self.record_bytes = record_bytes
        self.rate, self.count = rate, int(rate * seconds)
        self.threads = threads
        self.ok_per_coll = [0] * colls
        self.failed = 0
        self.lock = threading.Lock()
        self.auth = f"Bearer {token()}"
        self.elapsed = 0.0
        self.latencies: list[float] = []

    def ingest_p50_ms(self) -> float:
        lat = sorted(self.latencies)
        return 1000 * lat[len(lat) // 2] if lat else 0.0

    def _post(self, i: int) -> bool:
        started = time.perf_counter()
        ok = self._post_once(i)
        with self.lock:
            self.latencies.append(time.perf_counter() - started)
        return ok

    def record(self, i: int) -> dict[str, Any]:
        """Record ``i``; ``sent`` is the wall time now, so latency is measured from here."""
        rec: dict[str, Any] = {
            "id": f"r{i}",
            "n": i,
            "title": "a record of typical size",
            "status": "published",
            "author": f"u{i % self.users}",
            "sent": time.time(),
        }
        if self.record_bytes:
            rec["body"] = ""
            rec["body"] = "x" * max(0, self.record_bytes - len(json.dumps(rec)))
        return rec

    def _post_once(self, i: int) -> bool:
        body = json.dumps(
            {
                "database": self.db,
                "collection": f"c{i % self.colls}",
                "id": f"r{i}",
                "action": "create",
                "record": self.record(i),
            }
        ).encode()
        return self.send("/webhook", body, {"Authorization": self.auth}) == 200

    def send(self, path: str, body: bytes, headers: dict[str, str]) -> int:
        """POST ``body`` on a new connection (as gunicorn's sync worker wants); the status, or 0
        when the request failed."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("POST", path, body, {"Content-Type": "application/json", **headers})
            resp = conn.getresponse()
            resp.read()
            return resp.status
        except (OSError, http.client.HTTPException):
            return 0
        finally:
            conn.close()

    def _worker(self, k: int, t0: float) -> None:
        for i in range(k, self.count, self.threads):
            delay = t0 + i / self.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            ok = self._post(i)
            with self.lock:
                if ok:
                    self.ok_per_coll[i % self.colls] += 1
                else:
                    self.failed += 1

    def run(self) -> None:
        t0 = time.monotonic() + 0.05
        workers = [threading.Thread(target=self._worker, args=(k, t0)) for k in range(self.threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        self.elapsed = time.monotonic() - t0

    @property
    def ok(self) -> int:
        return sum(self.ok_per_coll)


def build_client(out_dir: Path) -> Path:
    binary = out_dir / "fanout_client"
    subprocess.run(
        ["gcc", "-O2", "-o", str(binary), str(ROOT / "bench" / "fanout_client.c")], check=True
    )
    return binary


def case_label(name: str, processes: int, pin: bool) -> str:
    """``aim``, ``aim@2p``, ``aim@2p-pin``: the row of a case at a process count."""
    if processes == 1:
        return name
    return f"{name}@{processes}p" + ("-pin" if pin else "")


def run_node_case(
    stack: Stack, client_bin: Path, case: Case, seq: int, processes: str = "1"
) -> dict[str, Any]:
    """``processes``: a FANOUT_PROCESSES count, with ``pin`` after it for FANOUT_PIN_CHILDREN."""
    a = stack.args
    env = dict(case.env)
    if case.policy:
        env["REALTIME_POLICY"] = str(policy_file(stack.tmp, case.policy))
    count, pin = int(processes.removesuffix("pin")), processes.endswith("pin")
    node, port = stack.fanout(env, count, pin)
    db = f"bench{int(time.time())}x{seq}"
    client: LoadClient | None = None
    per_user = case.users > 0
    try:
        client = LoadClient(
            client_bin,
            a.load_cpu,
            port,
            f"/api/realtime?db={db}" if per_user else f"/api/realtime?db={db}&auth={token()}",
            case.clients,
            case.colls,
            tokens=tokens_file(stack.tmp, case.users) if per_user else None,
        )
        if not client.ready.wait(120):
            raise RuntimeError(f"{case.name}: clients did not connect ({client.subscribed})")
        time.sleep(0.5)
        redis0 = redis_counters(None if stack.cluster else stack.redis_url)
        profiler = Profiler(a.profile, node.pid, a.load_cpu, case.name) if a.profile else None
        cpu0, t0 = tree_cpu_seconds(node.pid), time.monotonic()
        load0, back0 = cpu_seconds(client.proc.pid), stack.backing_cpu_seconds()
        poster = Poster(
            stack.ingest_port,
            db,
            case.colls,
            case.rate,
            case.seconds,
            a.poster_threads,
            users=case.users if case.policy == "owner" else 1,
            record_bytes=case.record_bytes,
        )
        poster.run()
        subs = [
            case.clients // case.colls + (1 if j < case.clients % case.colls else 0)
            for j in range(case.colls)
        ]
        if case.policy == "owner":  # each event's author is one connected user
            subs = [1] * case.colls
        planned = sum(ok * s for ok, s in zip(poster.ok_per_coll, subs, strict=True))
        client.settle(planned)
        t1 = client.last_change if client.events >= planned else time.monotonic()
        cpu1 = tree_cpu_seconds(node.pid)
        if profiler is not None:
            profiler.stop()
        load1, back1 = cpu_seconds(client.proc.pid), stack.backing_cpu_seconds()
        redis1 = redis_counters(None if stack.cluster else stack.redis_url)
        rss, hwm = tree_rss_mb(node.pid)
        lag50, lag99 = read_lag_ms(port)
        res = client.finish()
        # only connections whose SUBSCRIBE succeeded can receive (failures reported apart)
        got_subs = [1] * case.colls if case.policy == "owner" else client.subs
        expected = sum(ok * s for ok, s in zip(poster.ok_per_coll, got_subs, strict=True))
    finally:
        if client is not None and client.proc.poll() is None:
            client.proc.kill()
        stack.stop_proc(node)
    span = max(res["span_s"], 1e-9)
    return {
        "case": case_label(case.name, count, pin),
        "processes": count,
        "clients": res["subscribed"],
        "colls": case.colls,
        "offered": case.rate,
        "posted_rate": poster.ok / max(poster.elapsed, 1e-9),
        "posted": poster.ok,
        "post_failed": poster.failed,
        "events_s": res["events"] / span,
        "frames_s": res["frames"] / span,
        "ev_per_frame": res["events"] / max(res["frames"], 1),
        "p50": res["p50_ms"],
        "p99": res["p99_ms"],
        "max": res["max_ms"],
        "loss": expected - res["events"],
        "expected": expected,
        "cpu": 100 * (cpu1 - cpu0) / max(t1 - t0, 1e-9),
        "cpu_us_webhook": 1e6 * (cpu1 - cpu0) / max(poster.ok, 1),
        "cpu_us_delivery": 1e6 * (cpu1 - cpu0) / max(res["events"], 1),
        # what the load side takes of its core(s) over the same window
        "client_cpu": 100 * (load1 - load0) / max(t1 - t0, 1e-9),
        "backing_cpu": 100 * (back1 - back0) / max(t1 - t0, 1e-9),
        # standalone Redis only: its connections (all tiers) and its work per webhook
        "redis_conns": redis1.get("conns", 0),
        "redis_cmds_webhook": (redis1.get("commands", 0) - redis0.get("commands", 0))
        / max(poster.ok, 1),
        "redis_out_webhook": (redis1.get("out_bytes", 0) - redis0.get("out_bytes", 0))
        / max(poster.ok, 1),
        "rss": rss,
        "hwm": hwm,
        "closed": res["closed"],
        "sub_failed": res["sub_failed"],
        "ingest_p50": poster.ingest_p50_ms(),
        "lag50": lag50,
        "lag99": lag99,
        "note": case.note,
    }


class Profiler:
    """py-spy sampling the node while a case runs (``--profile DIR``): collapsed stacks in
    DIR/<case>-<pid>.txt, read by ``bench/profile_top.py``. Pinned with the load, non-blocking
    (the node is not paused), so it costs the node little."""

    def __init__(self, directory: str, pid: int, cpu: str | None, name: str) -> None:
        out = Path(directory) / f"{name}-{pid}.txt"
        out.parent.mkdir(parents=True, exist_ok=True)
        spy = shutil.which("py-spy") or str(BIN / "py-spy")
        args = [spy, "record", "--pid", str(pid), "--format", "raw", "--rate", "250"]
        args += ["--nonblocking", "--idle", "--output", str(out)]
        self.proc = subprocess.Popen(
            pinned(cpu, args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def run_bare(stack: Stack, client_bin: Path, case: Case) -> dict[str, Any]:
    a = stack.args
    port = free_port()
    env = dict(os.environ, BARE_SECONDS=str(case.seconds), **case.env)
    bare = subprocess.Popen(
        pinned(a.server_cpu, [sys.executable, str(ROOT / "bench" / "fanout_bare.py"), str(port)]),
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    client: LoadClient | None = None
    try:
        assert bare.stdout is not None
        bare.stdout.readline()  # LISTENING
        client = LoadClient(client_bin, a.load_cpu, port, "/", case.clients, 1, nolat=True)
        if not client.ready.wait(120):
            raise RuntimeError("bare: clients did not connect")
        time.sleep(0.5)
        cpu0, t0 = cpu_seconds(bare.pid), time.monotonic()
        bare.send_signal(signal.SIGUSR1)
        line = bare.stdout.readline().split()  # SENT frames seconds clients
        sent, clients = int(line[1]), int(line[3])
        client.settle(sent * clients)
        cpu1, t1 = cpu_seconds(bare.pid), time.monotonic()
        rss, hwm = rss_mb(bare.pid)
        res = client.finish()
    finally:
        if client is not None and client.proc.poll() is None:
            client.proc.kill()
        bare.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            bare.wait(10)
        if bare.poll() is None:
            bare.kill()
    span = max(res["span_s"], 1e-9)
    return {
        "case": case.name,
        "clients": res["subscribed"],
        "colls": 1,
        "offered": 0,
        "posted_rate": 0,
        "posted": sent,
        "post_failed": 0,
        "events_s": res["events"] / span,
        "frames_s": res["frames"] / span,
        "ev_per_frame": 1.0,
        "p50": 0,
        "p99": 0,
        "max": 0,
        "loss": sent * clients - res["events"],
        "expected": sent * clients,
        "cpu": 100 * (cpu1 - cpu0) / max(t1 - t0, 1e-9),
        "rss": rss,
        "hwm": hwm,
        "closed": res["closed"],
        "sub_failed": res["sub_failed"],
        "ingest_p50": 0.0,
        "lag50": 0.0,
        "lag99": 0.0,
        "note": case.note,
    }


REPLAY_EVENTS = 10_000


def run_replay(stack: Stack, seq: int, repeat: int = 3) -> list[dict[str, Any]]:
    """Time from a SUBSCRIBE with lastId "0" to its SUBSCRIBED over 10,000 retained events, on
    a node without a policy, with the claim-free filter (every event passes: the full cost of
    deciding) and with the owner filter (user u0: 10 of them pass)."""
    import asyncio

    from websockets.asyncio.client import connect

    db = f"replay{int(time.time())}x{seq}"
    poster = Poster(stack.ingest_port, db, 1, 2000, REPLAY_EVENTS / 2000, 8, users=1000)
    poster.run()

    async def once(port: int, sub: str) -> tuple[float, int]:
        url = f"ws://127.0.0.1:{port}/api/realtime?db={db}&auth={token(sub=sub)}"
        async with connect(url, max_size=None, compression=None) as ws:
            t0 = time.perf_counter()
            await ws.send(json.dumps({"type": "SUBSCRIBE", "collection": "c0", "lastId": "0"}))
            n = 0
            while True:
                frame = await ws.recv()
                if isinstance(frame, str) and frame.startswith('{"type":"SUBSCRIBED"'):
                    return 1000 * (time.perf_counter() - t0), n
                n += frame.count('"id":"') if isinstance(frame, str) else 0

    rows = []
    for mode in (None, "claimfree", "owner"):
        env = {"REALTIME_POLICY": str(policy_file(stack.tmp, mode))} if mode else {}
        node, port = stack.fanout(env)
        try:
            times = []
            for _ in range(repeat):
                ms, got = asyncio.run(once(port, "u0"))
                times.append(ms)
        finally:
            stack.stop_proc(node)
        rows.append(
            {
                "case": f"replay-{mode or 'none'}",
                "retained": poster.ok,
                "received": got,
                "replay_ms": statistics.median(times),
                "runs_ms": [round(t, 1) for t in times],
            }
        )
    return rows


def replay_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| case | retained events | events received | replay ms (median of 3) | runs ms |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['case']} | {r['retained']:,} | {r['received']:,} | {r['replay_ms']:.0f} | "
            f"{r['runs_ms']} |"
        )
    return "\n".join(lines)


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| case | clients | colls | webhooks/s (offered/posted) | delivered events/s | "
        "frames/s | ev/frame | p50 ms | p99 ms | max ms | loss | node CPU% | node µs/webhook | "
        "node µs/delivery | RSS MB | "
        "webhook answer p50 ms | node read lag p50/p99 ms |"
    )
    lines = [head, "|" + " --- |" * 17]
    for r in rows:
        bare = r["case"].startswith("bare")
        lat = ("-", "-", "-") if bare else (f"{r['p50']:.1f}", f"{r['p99']:.1f}", f"{r['max']:.0f}")
        rate = "-" if bare else f"{r['offered']:.0f} / {r['posted_rate']:.0f}"
        lines.append(
            f"| {r['case']} | {r['clients']} | {r['colls']} | {rate} | {r['events_s']:,.0f} | "
            f"{r['frames_s']:,.0f} | {r['ev_per_frame']:.1f} | {lat[0]} | {lat[1]} | {lat[2]} | "
            f"{r['loss']} | {r['cpu']:.0f} | {r.get('cpu_us_webhook', 0):,.0f} | "
            f"{r.get('cpu_us_delivery', 0):.2f} | {r['rss']:.0f} | "
            f"{r['ingest_p50']:.1f} | {r['lag50']:g} / {r['lag99']:g} |"
        )
    return "\n".join(lines)


def redis_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| case | node CPU% | load client CPU% | Redis + ingest CPU% | "
        "Redis connections (all tiers) | Redis commands per webhook | "
        "Redis bytes sent per webhook |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        if "redis_conns" in r:
            lines.append(
                f"| {r['case']} | {r['cpu']:.0f} | {r['client_cpu']:.0f} | "
                f"{r['backing_cpu']:.0f} | {r['redis_conns']:.0f} | "
                f"{r['redis_cmds_webhook']:.1f} | {r['redis_out_webhook']:,.0f} |"
            )
    return "\n".join(lines)


def process_ratios(rows: list[dict[str, Any]]) -> list[str]:
    """Each case's N-process row against its 1-process row of the same run (medians)."""
    by = {r["case"]: r for r in rows}
    out = []
    for r in rows:
        base_name, _, n = r["case"].partition("@")
        base = by.get(base_name)
        if not n or base is None or base_name.startswith("bare"):
            continue
        label = n.replace("p", " processes", 1).replace("-pin", ", pinned")
        out.append(
            f"{base_name}: {label} / 1: delivered events/s "
            f"{r['events_s'] / max(base['events_s'], 1e-9):.2f}x, "
            f"p99 {r['p99'] / max(base['p99'], 1e-9):.2f}x, "
            f"node µs/delivery {r['cpu_us_delivery'] / max(base['cpu_us_delivery'], 1e-9):.2f}x, "
            f"loss {base['loss']:g} / {r['loss']:g}"
        )
    return out


def median_rows(runs: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per case, the median of each numeric column over the repeats that produced it."""
    by_case: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        for row in run:
            by_case.setdefault(row["case"], []).append(row)
    out = []
    for rows in by_case.values():
        row = dict(rows[0])
        for key, value in rows[0].items():
            if isinstance(value, int | float) and key not in ("colls", "offered", "processes"):
                row[key] = statistics.median(r[key] for r in rows)
        row["runs"] = len(rows)
        out.append(row)
    return out


@contextlib.contextmanager
def running(stack: Stack) -> Iterator[Stack]:
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--cases",
        default="aim,a100,a500,b,c,sat1,bare,bareraw",
        help="also: single,aimpub,aimown (access-policy cases) and replay",
    )
    p.add_argument("--repeat", type=int, default=1, help="runs per case; the table shows medians")
    p.add_argument("--seconds", type=float, default=None, help="override each case's duration")
    p.add_argument("--clients", type=int, default=None, help="override each case's client count")
    p.add_argument("--rate", type=float, default=None, help="override each case's webhooks/s")
    p.add_argument("--server-cpu", default="0")
    p.add_argument("--load-cpu", default="1")
    p.add_argument("--redis-url", default=None, help="use this standalone Redis")
    p.add_argument("--redis-cluster", default=None, help="use this Redis Cluster (a seed node URL)")
    p.add_argument(
        "--processes",
        default="1",
        help="FANOUT_PROCESSES values, e.g. 1,2: every case runs once per value (rows <case>@Np); "
        "2pin: 2 with FANOUT_PIN_CHILDREN=true (rows <case>@2p-pin)",
    )
    p.add_argument("--ingest-workers", type=int, default=2)
    p.add_argument("--poster-threads", type=int, default=4)
    p.add_argument("--json", default=None, help="also write the rows to this file")
    p.add_argument(
        "--profile",
        default=None,
        help="sample the node with py-spy during each case into this directory "
        "(bench/profile_top.py prints the top functions)",
    )
    p.add_argument(
        "--nice",
        type=int,
        default=-10,
        help="niceness of every process under test (less disturbance from other work "
        "on a shared machine; needs root for < 0; 0 = off)",
    )
    a = p.parse_args()
    global NICE
    NICE = a.nice if a.nice >= 0 or os.geteuid() == 0 else 0
    names = [n.strip() for n in a.cases.split(",") if n.strip()]
    counts = [n.strip() for n in a.processes.split(",") if n.strip()]
    for n in names:
        if n not in CASES and n != "replay":
            p.error(f"unknown case {n!r}: choose from {', '.join(CASES)}")
    stack = Stack(a)
    client_bin = build_client(stack.tmp)
    runs: list[list[dict[str, Any]]] = []
    replays: list[dict[str, Any]] = []
    with running(stack):
        if "replay" in names:
            replays = run_replay(stack, 0, repeat=max(3, a.repeat))
            for row in replays:
                print(f"# {json.dumps(row)}", flush=True)
        for rep in range(a.repeat):
            rows = []
            for k, name in enumerate(n for n in names if n != "replay"):
                case = CASES[name]
                if a.seconds or a.clients or a.rate:
                    case = Case(
                        case.name,
                        a.clients or case.clients,
                        case.colls,
                        a.rate or case.rate,
                        a.seconds or case.seconds,
                        case.env,
                        case.note,
                        case.policy,
                        case.users,
                        case.record_bytes,
                    )
                for n in ["1"] if name.startswith("bare") else counts:
                    try:
                        row = (
                            run_bare(stack, client_bin, case)
                            if name.startswith("bare")
                            else run_node_case(
                                stack, client_bin, case, rep * 100 + k * 10 + len(rows), n
                            )
                        )
                    except Exception as exc:  # one broken case must not lose the others
                        print(f"# run {rep + 1} {name} x{n} FAILED: {exc!r}", flush=True)
                        continue
                    rows.append(row)
                    print(f"# run {rep + 1} {row['case']}: {json.dumps(row)}", flush=True)
            runs.append(rows)
    rows = median_rows(runs)
    print()
    print(table(rows))
    by = {r["case"]: r for r in rows}
    if len(counts) > 1 and not stack.cluster:
        print()
        print(redis_table(rows))
        print()
    for line in process_ratios(rows):
        print(line)
    if len(counts) > 1 and len(runs) > 1:
        print("the same ratios in each run:")
        for k, run in enumerate(runs, 1):
            for line in process_ratios(run):
                print(f"  run {k}: {line}")
    if "sat1" in by and "bare" in by:
        ratio = by["sat1"]["events_s"] / max(by["bare"]["events_s"], 1)
        print(
            f"\nnode at saturation (1 event/frame) / bare broadcast ceiling: {ratio:.0%} "
            "(aim >= 70%)"
        )
    if "bareraw" in by and "bare" in by:
        print(
            f"prebuilt frame to transport / broadcast(): "
            f"{by['bareraw']['events_s'] / max(by['bare']['events_s'], 1):.0%}"
        )
    for name in ("a500", "b"):
        if name in by and "bare" in by:
            print(
                f"{name} delivered events/s / bare ceiling: "
                f"{by[name]['events_s'] / max(by['bare']['events_s'], 1):.0%} (batched frames)"
            )
    if "aim" in by:
        r = by["aim"]
        verdict = "met" if r["p99"] < 20 and r["loss"] == 0 else "NOT met"
        print(
            f"aim (1,000 clients x 50 webhooks/s, p99 < 20 ms, no loss): {verdict} "
            f"(p99 {r['p99']:.1f} ms, loss {r['loss']})"
        )
    if "aimpub" in by and "aim" in by:
        ratio = by["aimpub"]["events_s"] / max(by["aim"]["events_s"], 1)
        print(f"claim-free filter / no policy, delivered events/s: {ratio:.0%} (aim >= 90%)")
    if "a500pub" in by and "a500" in by:
        ratio = by["a500pub"]["events_s"] / max(by["a500"]["events_s"], 1)
        print(f"at 500 webhooks/s: claim-free filter / no policy, delivered events/s: {ratio:.0%}")
    if "aimown" in by and "single" in by:
        ratio = by["aimown"]["cpu_us_webhook"] / max(by["single"]["cpu_us_webhook"], 1e-9)
        print(
            f"owner filter (1,000 users) / one subscriber, node CPU per webhook: "
            f"{by['aimown']['cpu_us_webhook']:.0f} / {by['single']['cpu_us_webhook']:.0f} us "
            f"= {ratio:.2f}x (aim <= 2x)"
        )
    if replays:
        print()
        print(replay_table(replays))
        base = next(r for r in replays if r["case"] == "replay-none")["replay_ms"]
        for r in replays[1:]:
            print(f"{r['case']} / replay-none: {r['replay_ms'] / max(base, 1e-9):.2f}x (aim <= 2x)")
    if a.json:
        out = {"runs": runs, "median": rows, "replay": replays}
        Path(a.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
