"""A real Redis Cluster (3 masters + 3 replicas) on free ports, for tests that need one.

Started with ``redis-server --cluster-enabled yes`` and ``redis-cli --cluster create``, like an
operator would; no mocks, since slot routing, MOVED/ASK, sharded pub/sub and failover are what the
tests check. Helpers kill a master (and wait for its replica's promotion), restart a killed node
(it rejoins as a replica), find the node owning a key, and migrate a slot step by step so a test
can look at the MIGRATING/IMPORTING window (ASK) as well as the final MOVED.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import random
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from common.layout import collection_keys
from devstack.ports import port_is_free
from devstack.redis_process import RedisProcess

NODE_TIMEOUT_MS = 2000
_taken: set[int] = set()


def cluster_ports(n: int) -> list[int]:
    """``n`` ports p where p and the cluster bus port p+10000 are both free.

    Drawn below the kernel's ephemeral range (which starts at 32768) so that the bus port is not
    handed out to some other process's outgoing connection meanwhile."""
    ports: list[int] = []
    rng = random.Random()
    for _ in range(10_000):
        p = rng.randrange(12_000, 22_000)
        if p in _taken or p in ports or p + 10_000 in ports:
            continue
        if port_is_free(p) and port_is_free(p + 10_000):
            ports.append(p)
            if len(ports) == n:
                _taken.update(ports)
                return ports
    raise RuntimeError("no free port pairs (p, p+10000) for a Redis Cluster")


def key_slot(key: str | bytes) -> int:
    """The cluster slot of a key (CRC16 of its hash tag), computed locally."""
    from redis.crc import key_slot as _slot

    return int(_slot(key.encode() if isinstance(key, str) else key))


@dataclass
class ClusterNode(RedisProcess):
    """One cluster node (the project's launcher with ``cluster=True``); its ``nodes.conf`` stays
    in ``data_dir`` across restarts, so a restarted node rejoins with its identity."""

    cluster: bool = True
    args: Sequence[str] = (
        "--cluster-node-timeout",
        str(NODE_TIMEOUT_MS),
        # a replica with a stale link may still be promoted: test clusters must heal fast
        "--cluster-replica-validity-factor",
        "0",
    )

    @property
    def name(self) -> str:
        return f"{self.host}:{self.port}"

    def client(self, timeout: float = 5.0) -> Any:
        """A plain client of this one node (``Any``: redis-py's command methods are untyped)."""
        return redis.Redis(
            host=self.host, port=self.port, socket_timeout=timeout, decode_responses=True
        )

    def node_id(self) -> str:
        return str(self.client().execute_command("CLUSTER", "MYID"))

    def info(self, section: str) -> dict[str, object]:
        return dict(self.client().info(section))

    def cluster_info(self) -> dict[str, str]:
        raw = str(self.client().execute_command("CLUSTER", "INFO"))
        out: dict[str, str] = {}
        for line in raw.splitlines():
            k, _, v = line.strip().partition(":")
            if k:
                out[k] = v
        return out


@dataclass
class RedisClusterFixture:
    """Six nodes; after :meth:`start`, three masters own all 16384 slots, each with a replica."""

    base: Path
    ports: list[int]
    nodes: list[ClusterNode] = field(default_factory=list)

    @property
    def url(self) -> str:
        """A seed URL (any live node): what REDIS_URL gets with REDIS_CLUSTER=true."""
        return self.live()[0].url

    def env(self) -> dict[str, str]:
        return {"REDIS_URL": self.url, "REDIS_CLUSTER": "true"}

    def live(self) -> list[ClusterNode]:
        return [n for n in self.nodes if n.alive()]

    def make_node(self, index: int, port: int) -> ClusterNode:
        """Node ``index`` of the cluster (a variant may place one elsewhere: a namespace)."""
        return ClusterNode(self.base / str(port), port)

    def start(self) -> RedisClusterFixture:
        for i, port in enumerate(self.ports):  # one by one: stop() must find every started node
            self.nodes.append(self.make_node(i, port).start())
        cli = shutil.which("redis-cli")
        if cli is None:
            raise RuntimeError("redis-cli is not on PATH: install Redis 7 to run the tests")
        out = subprocess.run(
            [
                cli,
                "--cluster",
                "create",
                *[n.name for n in self.nodes],
                "--cluster-replicas",
                "1",
                "--cluster-yes",
            ],
            capture_output=True,
            timeout=60,
            check=False,
        )
        if out.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed: {out.stdout!r} {out.stderr!r}")
        self.wait_ok(timeout=30)
        return self

    def stop(self) -> None:
        for n in self.nodes:
            n.stop(kill=True)

    # -- state -------------------------------------------------------------------------------

    def _nodes_table(self, via: ClusterNode | None = None) -> list[dict[str, str]]:
        node = via or self.live()[0]
        raw = str(node.client().execute_command("CLUSTER", "NODES"))
        rows: list[dict[str, str]] = []
        for line in raw.splitlines():
            parts = line.split()
            if len(parts) < 8:
                continue
            rows.append(
                {
                    "id": parts[0],
                    "addr": parts[1].split("@")[0],
                    "flags": parts[2],
                    "master": parts[3],
                    "link": parts[7],
                    "slots": " ".join(parts[8:]),
                }
            )
        return rows

    def by_port(self, port: int) -> ClusterNode:
        return next(n for n in self.nodes if n.port == port)

    def _role(self, node: ClusterNode) -> str:
        return str(node.info("replication").get("role"))

    def masters(self) -> list[ClusterNode]:
        """Live masters that own slots, as the live nodes themselves report."""
        out = []
        for n in self.live():
            with contextlib.suppress(redis.RedisError):
                if self._role(n) == "master" and self.slots_of(n):
                    out.append(n)
        return out

    def replicas(self) -> list[ClusterNode]:
        out = []
        for n in self.live():
            with contextlib.suppress(redis.RedisError):
                if self._role(n) == "slave":
                    out.append(n)
        return out

    def replica_of(self, master: ClusterNode) -> ClusterNode:
        mid = master.node_id()
        for row in self._nodes_table(master):
            if row["master"] == mid and "fail" not in row["flags"]:
                port = int(row["addr"].rsplit(":", 1)[1])
                return self.by_port(port)
        raise LookupError(f"{master.name} has no replica")

    def slots_of(self, node: ClusterNode) -> list[int]:
        """Slots the node serves, from its own view (CLUSTER SLOTS)."""
        slots: list[int] = []
        for start, end, primary, *_ in node.client().execute_command("CLUSTER", "SLOTS"):
            if int(primary[1]) == node.port:
                slots.extend(range(int(start), int(end) + 1))
        return slots

    def owner_of_slot(self, slot: int, via: ClusterNode | None = None) -> ClusterNode:
        for start, end, primary, *_ in (
            (via or self.live()[0]).client().execute_command("CLUSTER", "SLOTS")
        ):
            if int(start) <= slot <= int(end):
                return self.by_port(int(primary[1]))
        raise LookupError(f"slot {slot} is not covered")

    def owner_of(self, key: str) -> ClusterNode:
        """The master that owns ``key``'s slot."""
        return self.owner_of_slot(key_slot(key))

    def collections_per_master(self, db: str, count: int, prefix: str) -> dict[int, list[str]]:
        """Collection names ``<prefix><i>`` chosen so that each master (by port) owns ``count``
        of them: load spread evenly over the shards, or one master's share to fail over."""
        out: dict[int, list[str]] = {m.port: [] for m in self.masters()}
        i = 0
        while any(len(v) < count for v in out.values()):
            name = f"{prefix}{i}"
            i += 1
            port = self.owner_of(collection_keys(db, name).stream).port
            if len(out[port]) < count:
                out[port].append(name)
        return out

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Until every live node says cluster_state:ok, all 16384 slots are assigned, every node
        agrees who owns what, and every replica's link to its master is up."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            try:
                views = []
                ok = True
                for n in self.live():
                    ci = n.cluster_info()
                    if ci.get("cluster_state") != "ok" or ci.get("cluster_slots_ok") != "16384":
                        ok, last = False, f"{n.name}: {ci.get('cluster_state')}"
                        break
                    rep = n.info("replication")
                    if rep.get("role") == "slave" and rep.get("master_link_status") != "up":
                        ok, last = False, f"{n.name}: replica link {rep.get('master_link_status')}"
                        break
                    views.append(
                        sorted(
                            (int(s), int(e), int(p[1]))
                            for s, e, p, *_ in n.client().execute_command("CLUSTER", "SLOTS")
                        )
                    )
                if ok and views and all(v == views[0] for v in views):
                    return
                if ok:
                    last = "nodes disagree on the slot map"
            except (redis.RedisError, OSError) as exc:
                last = f"{type(exc).__name__}: {exc}"
            time.sleep(0.1)
        raise TimeoutError(f"cluster not ok after {timeout}s: {last}")

    # -- faults --------------------------------------------------------------------------------

    def kill_master(self, master: ClusterNode, timeout: float = 30.0) -> ClusterNode:
        """SIGKILL ``master`` and wait until its replica is promoted and the cluster is ok again;
        return the new master."""
        replica = self.replica_of(master)
        master.stop(kill=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(redis.RedisError, OSError):
                if self._role(replica) == "master" and self.slots_of(replica):
                    break
            time.sleep(0.05)
        else:
            raise TimeoutError(f"replica {replica.name} of {master.name} was not promoted")
        self.wait_ok(timeout=max(1.0, deadline - time.monotonic()))
        return replica

    def restart(self, node: ClusterNode, timeout: float = 30.0) -> None:
        """Start a stopped node again on its port and config: after a failover it rejoins as a
        replica of whoever took over its slots (its data is gone: no persistence)."""
        node.start()
        self.wait_ok(timeout)

    def heal(self, timeout: float = 30.0) -> None:
        """Back to three masters with one replica each (restart every stopped node)."""
        for n in self.nodes:
            if not n.alive():
                n.start()
        self.wait_ok(timeout)

    # -- resharding ------------------------------------------------------------------------------

    def begin_migration(self, slot: int, dst: ClusterNode) -> ClusterNode:
        """Mark ``slot`` IMPORTING on ``dst`` and MIGRATING on its owner (keys not moved yet, so
        the owner answers ASK for keys it no longer has); return the source."""
        src = self.owner_of_slot(slot)
        if src.port == dst.port:
            raise ValueError(f"slot {slot} is already on {dst.name}")
        dst.client().execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src.node_id())
        src.client().execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst.node_id())
        return src

    def move_keys(self, slot: int, src: ClusterNode, dst: ClusterNode) -> int:
        """MIGRATE every key of ``slot`` from ``src`` to ``dst``; return how many moved."""
        moved = 0
        c = src.client()
        while True:
            keys = c.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100)
            if not keys:
                return moved
            c.execute_command(
                "MIGRATE", "127.0.0.1", dst.port, "", 0, 5000, "REPLACE", "KEYS", *keys
            )
            moved += len(keys)

    def finish_migration(self, slot: int, src: ClusterNode, dst: ClusterNode) -> None:
        """Assign ``slot`` to ``dst`` everywhere (the owner change that makes the old owner answer
        MOVED and drop the slot's sharded-channel subscribers)."""
        dst_id = dst.node_id()
        dst.client().execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)
        src.client().execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)
        for m in self.masters():
            if m.port not in (src.port, dst.port):
                with contextlib.suppress(redis.RedisError):
                    m.client().execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)
        self.wait_ok()

    def migrate_slot(self, slot: int, dst: ClusterNode) -> ClusterNode:
        """Move ``slot`` with its keys to ``dst`` (the whole resharding); return the old owner."""
        src = self.begin_migration(slot, dst)
        self.move_keys(slot, src, dst)
        self.finish_migration(slot, src, dst)
        return src

    def flushall(self) -> None:
        for m in self.masters():
            m.client().flushall()

    def client(self, **kwargs: object) -> redis.RedisCluster:
        seed = self.live()[0]
        return redis.RedisCluster(
            host=seed.host,
            port=seed.port,
            decode_responses=True,
            **kwargs,  # type: ignore[arg-type]
        )


@contextlib.contextmanager
def redis_cluster(
    build: Callable[[Path, list[int]], RedisClusterFixture] = RedisClusterFixture,
) -> Iterator[RedisClusterFixture]:
    """Start a 3-master, 3-replica cluster on free ports; kill it and remove its files after.
    ``build`` makes the fixture object (a subclass that places nodes differently)."""
    if shutil.which("redis-cli") is None:
        raise RuntimeError("redis-cli must be on PATH for cluster tests (it creates the cluster)")
    last: Exception | None = None
    for _ in range(3):  # a port may be taken between the check and the bind: retry elsewhere
        base = Path(tempfile.mkdtemp(prefix="vski-cluster-"))
        cluster = build(base, cluster_ports(6))
        try:
            cluster.start()
        except (RuntimeError, TimeoutError) as exc:
            last = exc
            cluster.stop()
            shutil.rmtree(base, ignore_errors=True)
            continue
        try:
            yield cluster
        finally:
            cluster.stop()
            shutil.rmtree(base, ignore_errors=True)
        return
    raise RuntimeError(f"could not start a Redis Cluster: {last}")


# -- webhooks and a VSKI-like load, for tests that run ingest on the cluster ----------------------


def webhook_body(db: str, collection: str, n: int, action: str = "create") -> bytes:
    """A VSKI trigger body; ``n`` makes it unique (record id and timestamp)."""
    return json.dumps(
        {
            "database": db,
            "collection": collection,
            "id": f"r{n}",
            "action": action,
            "timestamp": f"2026-11-28T00:00:00.{n:06d}Z",
            "record": {"id": f"r{n}", "n": n},
        }
    ).encode()


def post_webhook(
    base_url: str, body: bytes, token: str, timeout: float = 10.0
) -> tuple[int, dict[str, Any]]:
    """POST /webhook; (status, JSON answer), or (0, {}) when the connection itself failed."""
    req = urllib.request.Request(
        base_url + "/webhook",
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return int(resp.status), dict(json.loads(resp.read()))
    except urllib.error.HTTPError as exc:
        try:
            return int(exc.code), dict(json.loads(exc.read()))
        except ValueError:
            return int(exc.code), {}
    except (OSError, http.client.HTTPException):
        return 0, {}


@dataclass
class LoadStats:
    """What a :class:`WebhookLoad` saw: every id answered 200, and how often it had to retry."""

    ok: dict[int, str] = field(default_factory=dict)  # webhook n -> event id answered 200
    retries: int = 0  # 503s and connection failures, each retried like VSKI does
    statuses: dict[int, int] = field(default_factory=dict)
    gave_up: list[int] = field(default_factory=list)
    first_retry: float | None = None
    last_retry: float | None = None


class WebhookLoad:
    """One sender thread per collection, posting at ``rate`` webhooks/s each and retrying every
    503 or refused connection (after ``retry_delay``) until answered 200 — as VSKI redelivers a
    failed trigger. Stop with :meth:`stop`; ``stats[collection]`` says what happened."""

    def __init__(
        self,
        base_url: str,
        token: str,
        db: str,
        collections: list[str],
        rate: float,
        retry_delay: float = 0.1,
        give_up_after: float = 30.0,
    ) -> None:
        self.base_url = base_url
        self.token = token
        self.db = db
        self.rate = rate
        self.retry_delay = retry_delay
        self.give_up_after = give_up_after
        self.stats = {c: LoadStats() for c in collections}
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(c,), daemon=True, name=f"load:{c}")
            for c in collections
        ]

    def start(self) -> WebhookLoad:
        for t in self._threads:
            t.start()
        return self

    def stop(self, timeout: float = 60.0) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout)

    def total_ok(self) -> int:
        return sum(len(s.ok) for s in self.stats.values())

    def _run(self, collection: str) -> None:
        st = self.stats[collection]
        interval = 1.0 / self.rate
        n = 0
        next_at = time.monotonic()
        while not self._stop.is_set():
            n += 1
            body = webhook_body(self.db, collection, n)
            started = time.monotonic()
            while True:
                status, answer = post_webhook(self.base_url, body, self.token)
                st.statuses[status] = st.statuses.get(status, 0) + 1
                if status == 200:
                    st.ok[n] = str(answer["id"])
                    break
                if status not in (0, 503) or time.monotonic() - started > self.give_up_after:
                    st.gave_up.append(n)
                    break
                st.retries += 1
                now = time.monotonic()
                st.first_retry = st.first_retry or now
                st.last_retry = now
                time.sleep(self.retry_delay)  # a retry is the same delivery: same body
            next_at += interval
            delay = next_at - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)
            else:
                next_at = time.monotonic()
