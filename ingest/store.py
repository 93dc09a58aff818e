"""Where ingest writes: one Lua script appends, dedupes, trims and notifies in one atomic step.

Dedupe and append are one step, so concurrent retries of one webhook store one event and all get
its id; trimming (by age and by count) happens on every append, so no cron job is needed and
memory stays bounded; the stream and its dedupe markers expire with retention, so collections
that go quiet cost nothing.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from importlib import resources
from typing import Any

import redis

from common.config import RetentionSettings
from common.keys import collection_keys
from common.messages import Webhook

APPEND_LUA = resources.files("ingest").joinpath("append.lua").read_text()


@dataclass(frozen=True, slots=True)
class AppendResult:
    id: str
    duplicate: bool


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
    ) -> None:
        self.client = client
        self.retention = retention
        self.prefix = prefix
        self.dedupe_ttl_ms = dedupe_ttl_ms or retention.max_age_ms
        self.wait_replicas = wait_replicas
        self.wait_timeout_ms = wait_timeout_ms
        self._script = client.register_script(APPEND_LUA)

    def append(self, hook: Webhook) -> AppendResult:
        keys = collection_keys(hook.database, hook.collection, self.prefix)
        result = self._script(
            keys=[keys.stream, keys.meta, keys.dedupe(dedupe_digest(hook)), keys.channel],
            args=[
                hook.data_json(),
                new_epoch(),
                self.retention.max_age_ms,
                self.retention.max_len,
                self.retention.meta_ttl_ms,
                self.dedupe_ttl_ms,
            ],
        )
        created, event_id = int(result[0]), result[1]
        if isinstance(event_id, bytes):
            event_id = event_id.decode()
        if created and self.wait_replicas > 0:
            self._wait_for_replicas(keys.stream)
        return AppendResult(id=event_id, duplicate=not created)

    def _wait_for_replicas(self, key: str) -> None:
        acked = self._wait(key)
        if acked < self.wait_replicas:
            raise ReplicationTimeout(
                f"event stored on the primary but only {acked} of {self.wait_replicas} replicas "
                f"confirmed within {self.wait_timeout_ms} ms"
            )

    def _wait(self, key: str) -> int:
        if isinstance(self.client, redis.RedisCluster):
            node = self.client.get_node_from_key(key)
            return int(
                self.client.execute_command(
                    "WAIT", self.wait_replicas, self.wait_timeout_ms, target_nodes=node
                )
            )
        return int(self.client.execute_command("WAIT", self.wait_replicas, self.wait_timeout_ms))

    def ping(self) -> bool:
        return bool(self.client.ping())


class ReplicationTimeout(Exception):
    """The event is on the primary but fewer replicas than asked confirmed it in time."""
