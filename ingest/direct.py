"""Commands sent straight on plain connections: to the one Redis, or to a cluster slot's owner.

:class:`DirectCaller` skips redis-py's per-command layer on one node. :class:`SlotRouter` does
the same on Redis Cluster: it keeps its own slot -> primary table (``ingest/slot_map.py``) and
one plain connection pool per primary, and sends a collection's commands to the primary that
owns the collection's slot (all of a collection's keys share one hash tag, so an append always
targets one slot). That saves redis-py's cluster client per command (key extraction, node
lookup, its retry loop): ~50 µs of CPU per webhook, measured (``bench/append_cost.py``).

Following the cluster as it changes:

- ``MOVED <slot> <addr>`` (resharding finished, failover): that slot is patched in the table,
  a full refresh is asked for, and the command sent once more to the new owner;
- ``ASK <slot> <addr>`` (slot being migrated, key already moved): ``ASKING`` + the command on
  one connection to the importing node, the table left as it is (the slot is not moved yet);
- a connection error or timeout: the node's breaker opens (webhooks for its slots answered 503
  at once, ``ingest/breaker.py``), the table is refreshed in the background from any other
  known node, and the breaker's probe refreshes it again until the slots have a reachable
  owner (a promoted replica) or the node answers again.

Refreshes are rate-limited (``INGEST_SLOT_REFRESH_SECONDS``): a storm of errors is at most one
``CLUSTER SLOTS`` per interval per worker. Retrying is safe for the append script: it is
idempotent through its dedupe marker, so a command that was sent again after an ambiguous
failure (a timeout, a redirect) stores its event at most once and returns its first id.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Sequence
from typing import Any

import redis
from redis.exceptions import AskError, MovedError, NoScriptError, ResponseError

from common.logs import get_logger
from ingest.breaker import Breaker
from ingest.slot_map import RefreshGate, SlotMap, node_name, parse_cluster_slots, split_name

__all__ = ["UNREACHABLE", "DirectCaller", "SlotRouter"]

log = get_logger("ingest.direct")

# what opens a breaker: Redis did not answer (a reply, even an error reply, means it is there)
UNREACHABLE = (redis.ConnectionError, redis.TimeoutError, OSError)
MAX_REDIRECTS = 2  # a MOVED then an ASK (a slot moved and being moved again) at most

Command = Sequence[Any]


class DirectCaller:
    """Send commands on a connection this thread keeps, without redis-py's per-command layer
    (retry wrapper, pool checkout, observability hooks): ~25 µs less CPU per webhook, measured.

    Failure handling: a connection that was open before this call and breaks (Redis restarted,
    an idle connection cut) is dropped and the commands sent once more on a new one (safe for
    the append script: a repeated delivery is deduplicated by it). A timeout, or a failure on a
    fresh connection, is not retried: in a partition a retry would double the wait, and the
    breaker and the sender's own retry take over.
    """

    def __init__(self, client: Any) -> None:
        self.pool = client.connection_pool
        self._local = threading.local()

    def _conn(self) -> Any:
        local = self._local
        conn = getattr(local, "conn", None)
        if conn is None or local.pid != os.getpid():  # none yet, or inherited through fork
            conn = local.conn = self.pool.get_connection()
            local.pid = os.getpid()
        return conn

    def __call__(self, *args: Any) -> Any:
        return self._send(lambda conn: _one(conn, args))

    def batch(self, commands: Sequence[Command]) -> list[Any]:
        """Several commands in one write on one connection (``ASKING`` and ``WAIT`` must share
        the script's connection); each error reply is returned in place, not raised."""
        return list(self._send(lambda conn: _many(conn, commands)))

    def _send(self, exchange: Any) -> Any:
        conn = self._conn()
        reused = getattr(conn, "_sock", None) is not None
        try:
            return exchange(conn)
        except redis.TimeoutError:
            conn.disconnect()
            raise
        except redis.ConnectionError:
            conn.disconnect()
            if not reused:
                raise
        try:  # a new connection; a second failure goes to the caller
            return exchange(conn)
        except (redis.ConnectionError, redis.TimeoutError):
            conn.disconnect()
            raise

    def probe(self) -> None:
        """``PING`` on a connection of its own (the breaker's probe thread calls this)."""
        conn = getattr(self, "_probe_conn", None)
        if conn is None:
            conn = self._probe_conn = self.pool.make_connection()
        try:
            conn.send_command("PING")
            conn.read_response()
        finally:
            conn.disconnect()  # probes are rare: hold no idle connection between them


def _one(conn: Any, args: Command) -> Any:
    conn.send_command(*args)
    return conn.read_response()


def _many(conn: Any, commands: Sequence[Command]) -> list[Any]:
    conn.send_packed_command(conn.pack_commands(commands))
    replies = []
    for _ in commands:
        try:
            replies.append(conn.read_response())
        except ResponseError as exc:  # an error reply: read in full, the connection stays good
            replies.append(exc)
    return replies


class SlotRouter:
    """Routes commands of one slot to its primary over plain connections (see the module doc).

    ``client`` is the process's ``redis.RedisCluster``: its startup nodes (from ``REDIS_URL``)
    seed the first refresh and its connection settings (timeouts, keepalive, TLS, auth) are
    used for every node's pool. Pools are made lazily, in the process that uses them (gunicorn
    workers after fork), and :class:`DirectCaller` keeps one connection per thread and node.
    """

    def __init__(
        self, client: Any, *, refresh_interval: float = 1.0, probe_interval: float = 1.0
    ) -> None:
        self.client = client
        self.map = SlotMap()
        self.gate = RefreshGate(refresh_interval)
        self.probe_interval = probe_interval
        self.breakers: dict[str, Breaker] = {}
        self._callers: dict[str, DirectCaller] = {}
        self._clients: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._refreshing = threading.Lock()
        self._learning = threading.Lock()

    # -- sending ------------------------------------------------------------------------------

    def execute(self, slot: int, commands: Sequence[Command], prepare: Command) -> list[Any]:
        """Send ``commands`` to ``slot``'s owner, following redirects; returns their replies
        (error replies in place). ``prepare`` is sent first when the first command gets
        ``NOSCRIPT`` (the owner lost its script cache, or never had it), then they are sent
        again. Raises :class:`~ingest.breaker.CircuitOpen` while the owner is known down and
        ``redis.RedisError``/``OSError`` when it fails now (its breaker opens)."""
        target = self.owner(slot)
        asking = prepared = False
        redirects = 0
        while True:
            breaker = self.breaker(target)
            breaker.check()
            sent = [("ASKING",), *commands] if asking else commands
            try:
                replies = self.caller(target).batch(sent)
            except UNREACHABLE as exc:
                breaker.trip(exc)
                self.refresh_soon()
                raise
            if asking:
                replies = replies[1:]
            first = replies[0]
            if isinstance(first, NoScriptError) and not prepared:
                prepared = True
                self.caller(target)(*prepare)
                continue
            if not isinstance(first, AskError) or redirects >= MAX_REDIRECTS:
                return replies
            redirects += 1
            target = node_name(first.host, first.port)
            if isinstance(first, MovedError):  # a subclass of AskError in redis-py
                self.map.moved(slot, target)
                self.refresh_soon()  # a moved slot seldom moves alone
                asking = False
            else:  # the slot is being migrated: this once, at the importing node
                asking = True

    def owner(self, slot: int) -> str:
        target = self.map.owner(slot)
        if target is None:  # first use in this process, or a slot nobody served at refresh
            with self._learning:  # one thread asks, the others find its answer
                target = self.map.owner(slot)
                if target is None and self.gate.claim():
                    self.refresh()
                    target = self.map.owner(slot)
        if target is None:
            raise redis.exceptions.ClusterDownError(f"no primary serves slot {slot}")
        return target

    def caller(self, name: str) -> DirectCaller:
        found = self._callers.get(name)
        if found is None:
            with self._lock:
                found = self._callers.get(name)
                if found is None:
                    found = self._callers[name] = DirectCaller(self.node_client(name))
        return found

    def node_client(self, name: str) -> Any:
        """A plain ``redis.Redis`` of one node, with the cluster client's connection settings
        (redis-py's own node factory: the same pool class, timeouts and credentials)."""
        found = self._clients.get(name)
        if found is None:
            manager = self.client.nodes_manager
            host, port = split_name(name)
            found = self._clients.setdefault(
                name, manager.create_redis_node(host, port, **dict(manager.connection_kwargs))
            )
        return found

    def breaker(self, name: str) -> Breaker:
        """One breaker per primary: a partitioned master does not stop the others' webhooks."""
        found = self.breakers.get(name)
        if found is None:
            found = self.breakers.setdefault(
                name, Breaker(name, lambda: self._probe(name), self.probe_interval)
            )
        return found

    def _probe(self, name: str) -> None:
        """Healed when the node answers, or when it no longer owns slots (failed over: the new
        table sends its webhooks to the new primary)."""
        self.refresh(avoid=name)
        if name in self.map.primaries():
            self.caller(name).probe()

    # -- learning the layout --------------------------------------------------------------------

    def candidates(self, avoid: str | None = None) -> list[str]:
        """Nodes to ask for the layout: known primaries, their replicas, the ``REDIS_URL``
        seeds; a node that just failed last."""
        seeds = list(self.client.nodes_manager.startup_nodes)
        names = list(dict.fromkeys([*self.map.nodes(), *seeds]))
        if avoid in names:
            names.remove(avoid)
            names.append(avoid)
        return names

    def refresh(self, avoid: str | None = None) -> bool:
        """Ask known nodes in turn for ``CLUSTER SLOTS`` until one answers; True if the table
        was replaced. Bounded: one try per known node, each within the socket timeouts."""
        for name in self.candidates(avoid):
            try:
                reply = self.node_client(name).execute_command("CLUSTER", "SLOTS")
            except (redis.RedisError, OSError):
                continue
            ranges = parse_cluster_slots(reply, split_name(name)[0])
            if ranges:
                self.map.replace(ranges)
                log.debug("slot_map_refreshed", via=name, primaries=len(self.map.primaries()))
                return True
        log.warning("slot_map_refresh_failed", tried=len(self.candidates(avoid)))
        return False

    def refresh_soon(self) -> None:
        """A refresh in the background (the webhook that met the change is answered now), at
        most one at a time and one per gate interval."""
        if not self.gate.claim() or not self._refreshing.acquire(blocking=False):
            return

        def run() -> None:
            try:
                with contextlib.suppress(Exception):  # logged by refresh; never kill a worker
                    self.refresh()
            finally:
                self._refreshing.release()

        threading.Thread(target=run, name="vski-slot-refresh", daemon=True).start()
