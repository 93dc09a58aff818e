"""Where ingest writes: one Lua script appends, dedupes, trims and notifies in one atomic step.

Dedupe and append are one step, so concurrent retries of one webhook store one event and all get
its id; trimming (by age and by count) happens on every append, so no cron job is needed and
memory stays bounded; the stream and its dedupe markers expire with retention, so collections
that go quiet cost nothing.

Every call goes through a circuit breaker per Redis target (``ingest/breaker.py``): a
connection error or a timeout opens it, and while it is open webhooks are refused at once
(:class:`~ingest.breaker.CircuitOpen`) instead of each waiting for the timeout.

With ``wait_replicas`` the script and ``WAIT`` are sent in one non-transactional pipeline, so they
are guaranteed to run on the same connection (``WAIT`` only counts the writes of its own
connection). On Redis Cluster both go straight to the primary that owns the collection's slot,
on a plain connection (``ingest/direct.py``: redirects, failover, one breaker per primary).
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from typing import Any

import redis
from redis.exceptions import NoScriptError

from common.config import RetentionSettings
from common.layout import collection_keys
from common.messages import Webhook
from common.scripts import load_lua
from ingest.breaker import Breaker, CircuitOpen
from ingest.direct import UNREACHABLE, DirectCaller, SlotRouter
from ingest.slot_map import slot_of

__all__ = ["AppendResult", "CircuitOpen", "EventStore", "ReplicationTimeout"]

APPEND = load_lua("ingest", "append")


@dataclass(frozen=True, slots=True)
class AppendResult:
    id: str
    duplicate: bool


class ReplicationTimeout(Exception):
    """The event is on the primary but fewer replicas than asked confirmed it in time."""


def dedupe_digest(hook: Webhook) -> str:
    """Identity of one webhook delivery: a VSKI retry carries the same database, collection,
    record id, action and timestamp. Without a timestamp the record itself is part of it, so two
    different changes of one record are never merged."""
    h = hashlib.blake2b(digest_size=16)
    for part in (hook.database, hook.collection, hook.record_id or "", hook.action):
        h.update(part.encode())
        h.update(b"\0")
    if hook.timestamp is not None:
        h.update(b"t\0" + hook.timestamp.encode())
    else:
        h.update(b"r\0" + hook.record)
    return h.hexdigest()


def new_epoch() -> str:
    return secrets.token_hex(4)


class EventStore:
    def __init__(
        self,
        client: Any,
        retention: RetentionSettings,
        *,
        prefix: str = "vski",
        dedupe_ttl_ms: int | None = None,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 100,
        probe_interval: float = 1.0,
        slot_refresh_interval: float = 1.0,
    ) -> None:
        self.client = client
        self.retention = retention
        self.prefix = prefix
        self.dedupe_ttl_ms = dedupe_ttl_ms or retention.max_age_ms
        self.wait_replicas = wait_replicas
        self.wait_timeout_ms = wait_timeout_ms
        self.cluster = isinstance(client, redis.RedisCluster)
        self.probe_interval = probe_interval
        self._router: SlotRouter | None = None
        self._direct: DirectCaller | None = None
        self._breakers: dict[str, Breaker]
        if self.cluster:  # one breaker per primary, kept by the router
            self._router = SlotRouter(
                client, refresh_interval=slot_refresh_interval, probe_interval=probe_interval
            )
            self._breakers = self._router.breakers
        else:
            self._direct = DirectCaller(client)
            self._breakers = {"main": Breaker("main", self._direct.probe, probe_interval)}
        # constant per process: built once instead of on every append
        self._tail_args = (
            retention.max_age_ms,
            retention.max_len,
            retention.meta_ttl_ms,
            self.dedupe_ttl_ms,
        )

    def append(self, hook: Webhook) -> AppendResult:
        """Store ``hook`` (or find the event an earlier delivery of it stored).

        Raises :class:`CircuitOpen` at once while Redis is known unreachable,
        ``redis.RedisError``/``OSError`` when Redis fails now (nothing was stored: the script is
        atomic) and :class:`ReplicationTimeout` when replicas did not confirm in time.
        """
        keys = collection_keys(hook.database, hook.collection, self.prefix)
        if self._router is not None:  # checks and trips the breaker of the slot's owner
            return self._append(keys, hook)
        breaker = self._breakers["main"]
        breaker.check()
        try:
            return self._append(keys, hook)
        except UNREACHABLE as exc:
            breaker.trip(exc)
            raise

    def script_args(self, keys: Any, hook: Webhook) -> tuple[Any, ...]:
        """The append script's 4 keys and its arguments for ``hook``."""
        return (
            keys.stream,
            keys.meta,
            keys.dedupe(dedupe_digest(hook)),
            keys.channel,
            hook.data_json(),
            new_epoch(),
            *self._tail_args,
        )

    def _append(self, keys: Any, hook: Webhook) -> AppendResult:
        argv = self.script_args(keys, hook)
        if self._router is not None:
            result, acked = self._append_routed(self._router, keys.stream, argv)
        elif self.wait_replicas > 0:
            result, acked = self._append_and_wait(argv)
        else:
            result, acked = self._evalsha(argv), None
        created, event_id = int(result[0]), result[1]
        if isinstance(event_id, bytes):
            event_id = event_id.decode()
        if acked is not None and acked < self.wait_replicas:
            raise ReplicationTimeout(
                f"event {'stored' if created else 'found'} on the primary but only {acked} of "
                f"{self.wait_replicas} replicas confirmed it within {self.wait_timeout_ms} ms"
            )
        return AppendResult(id=event_id, duplicate=not created)

    def _evalsha(self, argv: tuple[Any, ...]) -> Any:
        call = self._direct or self.client.execute_command
        try:
            return call("EVALSHA", APPEND.sha, 4, *argv)
        except NoScriptError:
            # first use on this server, or Redis restarted and lost its script cache
            call("SCRIPT", "LOAD", APPEND.text)
            return call("EVALSHA", APPEND.sha, 4, *argv)

    def _append_routed(
        self, router: SlotRouter, stream_key: str, argv: tuple[Any, ...]
    ) -> tuple[Any, int | None]:
        """Redis Cluster: the script (and ``WAIT``, on the same connection, as in
        :meth:`_append_and_wait`) straight to the slot's primary."""
        commands: list[tuple[Any, ...]] = [("EVALSHA", APPEND.sha, 4, *argv)]
        if self.wait_replicas > 0:
            commands.append(("WAIT", self.wait_replicas, self.wait_timeout_ms))
        replies = router.execute(slot_of(stream_key), commands, ("SCRIPT", "LOAD", APPEND.text))
        for item in replies:
            if isinstance(item, Exception):
                raise item
        return replies[0], int(replies[1]) if self.wait_replicas > 0 else None

    def _append_and_wait(self, argv: tuple[Any, ...]) -> tuple[Any, int]:
        """EVALSHA + WAIT on one connection. A duplicate waits too: its event may have been
        stored by a delivery that timed out before the replicas confirmed it."""
        for attempt in (1, 2):
            pipe = self.client.pipeline(transaction=False)
            pipe.evalsha(APPEND.sha, 4, *argv)
            pipe.execute_command("WAIT", self.wait_replicas, self.wait_timeout_ms)
            result, acked = pipe.execute(raise_on_error=False)
            if isinstance(result, NoScriptError) and attempt == 1:
                self.client.script_load(APPEND.text)
                continue
            for item in (result, acked):
                if isinstance(item, Exception):
                    raise item
            return result, int(acked)
        raise AssertionError("unreachable")  # pragma: no cover

    def open_circuit(self) -> Breaker | None:
        """An open breaker, if any (``/ready`` answers 503 at once while one is open)."""
        return next((b for b in self._breakers.values() if b.is_open), None)

    def ping(self) -> bool:
        """Readiness: ``PING`` within the timeouts; a failure opens the breaker too."""
        breaker = self._breakers.get("main")
        try:
            return bool(self.client.ping())
        except UNREACHABLE as exc:
            if breaker is not None:
                breaker.trip(exc)
            raise
