"""The node registry: every running node says who it is and how it is doing, with a TTL.

Each fanout node, and each ingest gunicorn master on behalf of its workers, writes a heartbeat
every ``REGISTRY_HEARTBEAT_SECONDS`` (default 2); a heartbeat lives 3 of those, so a node that
dies (SIGKILL, lost host, partition) leaves the registry within one TTL by itself, and a node
that stops cleanly leaves at once. ``/admin/status`` on ingest reads it.

The registry is two keys in one slot (``common/layout.py`` ``RegistryKeys``) handled by one
script (``common/registry.lua``), so it works the same on Redis Cluster, every time it
compares is Redis's own clock (nodes' clocks may disagree), and listing it costs one call
bounded by :data:`MAX_NODES` however many keys Redis holds (no KEYS, no SCAN).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from common.config import ConfigError, Env
from common.scripts import load_lua

HEARTBEAT_ENV = "REGISTRY_HEARTBEAT_SECONDS"
SCRIPT = load_lua("common", "registry")
MAX_NODES = 1000  # listed per call; a deployment with more nodes sees the first 1000 by expiry
BEATS_PER_TTL = 3
STALE_BEATS = 1.5  # a heartbeat older than this many intervals is shown as stale
ROLES = ("fanout", "ingest")

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(dict[str, Any]).decode


@dataclass(frozen=True)
class RegistrySettings:
    heartbeat: float = 2.0  # seconds between heartbeats; 0 turns the registry off

    @property
    def enabled(self) -> bool:
        return self.heartbeat > 0

    @property
    def ttl_ms(self) -> int:
        return int(self.heartbeat * BEATS_PER_TTL * 1000)


def load_registry(env: Mapping[str, str] | None = None) -> RegistrySettings:
    e = Env(os.environ if env is None else env)
    heartbeat = e.float(HEARTBEAT_ENV, 2.0)
    if 0 < heartbeat < 0.1 or heartbeat > 300:
        raise ConfigError(f"{HEARTBEAT_ENV}={heartbeat} must be 0 (off) or 0.1-300 seconds")
    return RegistrySettings(heartbeat)


def beat_args(node_id: str, record: Mapping[str, Any], settings: RegistrySettings) -> list[Any]:
    """ARGV of one heartbeat; the record says how long it lives, for the stale mark."""
    body = {**record, "heartbeat_s": settings.heartbeat, "ttl_ms": settings.ttl_ms}
    return ["beat", node_id, _encode(body), settings.ttl_ms]


def leave_args(node_id: str) -> list[Any]:
    return ["leave", node_id]


def list_args(limit: int = MAX_NODES) -> list[Any]:
    return ["list", max(1, min(limit, MAX_NODES))]


@dataclass(frozen=True)
class Listing:
    now_ms: int  # Redis time of the listing
    registered: int  # nodes in the registry (more than listed when over the limit)
    nodes: list[dict[str, Any]]
    unreadable: int = 0  # heartbeats that were not a JSON object (skipped)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def parse_listing(raw: Any) -> Listing:
    """The reply of ``list`` as node records, each with ``age_ms`` (since its heartbeat),
    ``expires_in_ms`` and ``stale`` (a heartbeat missed) added from Redis time."""
    now, registered, rest = int(raw[0]), int(raw[1]), list(raw[2:])
    nodes: list[dict[str, Any]] = []
    unreadable = 0
    for i in range(0, len(rest) - 2, 3):
        node_id, expires, body = _text(rest[i]), int(float(rest[i + 1])), rest[i + 2]
        try:
            record = _decode(body if isinstance(body, bytes) else str(body).encode())
        except msgspec.DecodeError:
            unreadable += 1
            continue
        ttl = int(record.get("ttl_ms") or 0)
        heartbeat_ms = float(record.get("heartbeat_s") or 0) * 1000
        age = max(0, now - (expires - ttl)) if ttl else None
        record.pop("id", None)
        stale = bool(age is not None and heartbeat_ms and age > STALE_BEATS * heartbeat_ms)
        extra = {"age_ms": age, "expires_in_ms": max(0, expires - now), "stale": stale}
        nodes.append({"id": node_id, **record, **extra})
    nodes.sort(key=lambda r: (ROLES.index(r["role"]) if r.get("role") in ROLES else 9, r["id"]))
    return Listing(now, registered, nodes, unreadable)
