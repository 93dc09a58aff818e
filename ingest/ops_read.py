"""The Redis reads behind the admin read API (``ingest/ops_api.py``), each bounded in cost.

No read here grows with the number of collections in Redis: the node list is one script call
on the registry (``common/registry.py``); the busiest collections come from the activity
windows ingest keeps (``ingest/activity.py``), topped up, when those know too few, by a SCAN
capped at :data:`SCAN_CALLS` calls of :data:`SCAN_COUNT` per Redis node; each collection shown
is one script call in its own slot (``ops_stream.lua``, ``ops_groups.lua``) that reads ids and
counts and sends no event data; history is one ``XRANGE`` page. Calls on several collections
go in one pipeline (one round trip per Redis node on a cluster).

The shaping of replies into JSON-ready dicts is pure functions, unit-tested without Redis.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
import redis
from redis.exceptions import NoScriptError

from common.layout import (
    DATA_FIELD,
    ActivityKeys,
    CollectionKeys,
    EventId,
    RegistryKeys,
    collection_keys,
    event_id,
    parse_meta_key,
    split_stream_id,
)
from common.registry import SCRIPT as REGISTRY_SCRIPT
from common.registry import Listing, list_args, parse_listing
from common.scripts import LuaScript, load_lua
from ingest.activity import WINDOW_SECONDS, window_index

STREAM_INFO = load_lua("ingest", "ops_stream")
GROUPS_INFO = load_lua("ingest", "ops_groups")
SCAN_COUNT = 1000  # keys Redis looks at per SCAN call
SCAN_CALLS = 8  # SCAN calls per Redis node and request: 8,000 keys looked at, at most
MEMORY_SAMPLES = 5  # MEMORY USAGE ... SAMPLES: stream nodes sampled per collection
MAX_CONSUMERS = 100  # consumers listed per group (the counts cover all of them)
HISTORY_PAGE_BYTES = 2 * 1024 * 1024  # a history answer stops growing past this


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _int(value: Any, default: int = 0) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def client_id(sid: str, epoch: str) -> str | None:
    """A stream id (``<ms>-<seq>``) as clients see it (``<ms>-<seq>@<epoch>``)."""
    if not sid or not epoch:
        return None
    ms, seq = split_stream_id(sid)
    return event_id(ms, seq, epoch)


def run_script(
    client: Any, script: LuaScript, calls: Sequence[tuple[list[str], list[Any]]]
) -> list[Any]:
    """Run ``script`` once per (keys, args) in one pipeline; a Redis that lost its script cache
    gets it loaded and the calls sent again. Results are in order; a failed call is its
    exception (the others still count)."""
    if not calls:
        return []
    for attempt in (1, 2):
        pipe = client.pipeline(transaction=False)
        for keys, args in calls:
            # execute_command: redis-py blocks the evalsha method in cluster pipelines, not
            # the command (routed by its first key like any other)
            pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
        results: list[Any] = pipe.execute(raise_on_error=False)
        if attempt == 1 and any(isinstance(r, NoScriptError) for r in results):
            client.script_load(script.text)
            continue
        return results
    raise AssertionError("unreachable")  # pragma: no cover


# ---------------------------------------------------------------- nodes


def read_nodes(client: Any, prefix: str, limit: int) -> Listing:
    keys = RegistryKeys(prefix)
    raw = client.evalsha(REGISTRY_SCRIPT.sha, 2, keys.beats, keys.expiry, *list_args(limit))
    return parse_listing(raw)


def load_registry_script(client: Any) -> None:
    client.script_load(REGISTRY_SCRIPT.text)


def totals(nodes: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """What the deployment adds up to (lag: the worst node's)."""
    nodes = list(nodes)
    lags = [n["read_lag_ms"] for n in nodes if isinstance(n.get("read_lag_ms"), (int, float))]

    def total(field: str) -> float:
        return sum(float(n.get(field) or 0) for n in nodes)

    return {
        "nodes": len(nodes),
        "fanout": sum(1 for n in nodes if n.get("role") == "fanout"),
        "ingest": sum(1 for n in nodes if n.get("role") == "ingest"),
        "connections": int(total("connections")),
        "subscriptions": int(total("subscriptions")),
        "events_per_s": round(total("events_per_s"), 2),
        "webhooks_per_s": round(total("webhooks_per_s"), 2),
        "read_lag_ms": max(lags) if lags else None,
        "rss_bytes": int(total("rss_bytes")),
        "draining": sum(1 for n in nodes if n.get("draining")),
        "stale": sum(1 for n in nodes if n.get("stale")),
    }


# ---------------------------------------------------------------- busiest collections


@dataclass(frozen=True)
class Candidate:
    database: str
    collection: str
    events_per_s: float | None  # from the activity windows; None when found by the scan
    source: str  # "activity" | "scan"


def recent_rates(
    current: Sequence[tuple[Any, float]],
    previous: Sequence[tuple[Any, float]],
    now: float,
    database: str | None,
) -> list[Candidate]:
    """Events per second over the last window, from the current window's counts and the
    previous one's weighted by how much of it the last ``WINDOW_SECONDS`` still cover (a
    sliding-window estimate), busiest first."""
    into = (now % WINDOW_SECONDS) / WINDOW_SECONDS
    scores: dict[str, float] = {}
    for member, count in current:
        scores[_text(member)] = scores.get(_text(member), 0.0) + float(count)
    for member, count in previous:
        scores[_text(member)] = scores.get(_text(member), 0.0) + float(count) * (1 - into)
    out = []
    for name, score in scores.items():
        if database is None:
            db, sep, coll = name.partition("/")
            if not sep:
                continue
        else:
            db, coll = database, name
        out.append(Candidate(db, coll, round(score / WINDOW_SECONDS, 3), "activity"))
    out.sort(key=lambda c: (-(c.events_per_s or 0), c.database, c.collection))
    return out


def busiest(client: Any, prefix: str, database: str | None, limit: int) -> list[Candidate]:
    """The ``limit`` busiest collections by the activity windows (2 x ``limit`` read from
    each of the last two windows: bounded whatever the windows hold)."""
    keys = ActivityKeys(prefix)
    now = time.time()
    index = window_index(now)
    pipe = client.pipeline(transaction=False)
    for w in (index, index - 1):
        pipe.zrevrange(keys.window(w, database), 0, 2 * limit - 1, withscores=True)
    current, previous = pipe.execute()
    return recent_rates(current, previous, now, database)[:limit]


@dataclass(frozen=True)
class ScanResult:
    found: list[tuple[str, str, int]]  # (database, collection, last event ms), newest first
    examined_calls: int
    complete: bool  # the whole keyspace was covered within the cap


def _scan_nodes(client: Any) -> list[Any]:
    if isinstance(client, redis.RedisCluster):
        return [node.redis_connection for node in client.get_primaries()]  # type: ignore[no-untyped-call]
    return [client]


def scan_recent(client: Any, prefix: str, database: str | None) -> ScanResult:
    """Collections found by a capped SCAN of meta keys, by the time of their last event: what
    is shown when ingest has not seen enough activity yet (just restarted, quiet)."""
    pattern = f"{prefix}:{{{database or '*'}/*}}:m"
    metas: list[str] = []
    calls, complete = 0, True
    for node in _scan_nodes(client):
        cursor: Any = 0
        for _ in range(SCAN_CALLS):
            cursor, batch = node.scan(cursor, match=pattern, count=SCAN_COUNT)
            calls += 1
            metas.extend(_text(k) for k in batch)
            if int(cursor) == 0:
                break
        else:
            complete = False
    named = [(key, parse_meta_key(key, prefix)) for key in metas]
    named_ok = [(key, name) for key, name in named if name is not None]
    pipe = client.pipeline(transaction=False)
    for key, _ in named_ok:
        pipe.hget(key, "ms")
    found = [
        (name[0], name[1], _int(ms))
        for (_, name), ms in zip(named_ok, pipe.execute() if named_ok else [], strict=True)
    ]
    found.sort(key=lambda f: -f[2])
    return ScanResult(found, calls, complete)


def collection_row(c: Candidate, reply: Any) -> dict[str, Any]:
    """One collection of ``/admin/collections`` from its ``ops_stream.lua`` reply."""
    now, epoch, seq, last_ms = _int(reply[0]), _text(reply[1]), reply[2], _int(reply[3], -1)
    length, first, last = _int(reply[4]), _text(reply[5]), _text(reply[6])
    memory = _int(reply[8], -1)
    return {
        "database": c.database,
        "collection": c.collection,
        "events_per_s": c.events_per_s,
        "retained": length,
        "first_id": client_id(first, epoch),
        "last_id": client_id(last, epoch),
        "last_seq": _int(seq, -1) if _text(seq) else None,
        "newest_age_ms": max(0, now - last_ms) if last_ms >= 0 else None,
        "memory_bytes": memory if memory >= 0 else None,
        "groups": _int(reply[7]),
        "events_added": _int(reply[9]),
        "epoch": epoch or None,
        "source": c.source,
    }


def describe_collections(
    client: Any, prefix: str, picks: Sequence[Candidate]
) -> list[dict[str, Any]]:
    keys = [collection_keys(c.database, c.collection, prefix) for c in picks]
    replies = run_script(
        client, STREAM_INFO, [([k.stream, k.meta], [MEMORY_SAMPLES]) for k in keys]
    )
    rows = []
    for c, reply in zip(picks, replies, strict=True):
        if isinstance(reply, Exception):
            raise reply
        rows.append(collection_row(c, reply))
    return rows


# ---------------------------------------------------------------- consumer groups


def group_rows(db: str, coll: str, reply: Any, visibility_ms: int) -> list[dict[str, Any]]:
    """The groups of one collection from its ``ops_groups.lua`` reply. A Redis group named
    ``<group>~<digest>`` serves the client group ``<group>`` for members of one policy view
    (``fanout/groups.py`` ``redis_group``); a consumer ``<node id>:<n>`` is a member on that
    node. Stuck: the oldest pending event was appended longer ago than the visibility timeout
    (it should have been acknowledged or handed to another member by then)."""
    now, epoch = _int(reply[0]), _text(reply[1])
    rows = []
    for g in reply[3:]:
        name, consumers, pending = _text(g[0]), _int(g[1]), _int(g[2])
        oldest = _text(g[5])
        age = max(0, now - split_stream_id(oldest)[0]) if oldest else None
        members = [
            {
                "consumer": _text(g[8][i]),
                "node": _text(g[8][i]).rpartition(":")[0] or None,
                "pending": _int(g[8][i + 1]),
                "idle_ms": _int(g[8][i + 2]),
            }
            for i in range(0, len(g[8]) - 2, 3)
        ]
        client_name, sep, digest = name.partition("~")
        lag = _int(g[4], -1)
        rows.append(
            {
                "database": db,
                "collection": coll,
                "group": client_name,
                "redis_group": name,
                "view": digest if sep else None,
                "consumers": consumers,
                "members": members,
                "pending": pending,
                "lag": lag if lag >= 0 else None,
                "last_delivered_id": client_id(_text(g[3]), epoch)
                if _text(g[3]) != "0-0"
                else None,
                "oldest_pending_id": client_id(oldest, epoch) if oldest else None,
                "oldest_pending_age_ms": age,
                "oldest_pending_idle_ms": _int(g[6]) if oldest else None,
                "oldest_pending_deliveries": _int(g[7]) if oldest else None,
                "stuck": bool(age is not None and age > visibility_ms),
            }
        )
    return rows


def describe_groups(
    client: Any,
    prefix: str,
    collections: Sequence[tuple[str, str]],
    max_groups: int,
    visibility_ms: int,
) -> tuple[list[dict[str, Any]], int]:
    """(groups of these collections, groups Redis holds beyond ``max_groups`` per collection)."""
    keys = [collection_keys(db, coll, prefix) for db, coll in collections]
    calls = [([k.stream, k.meta], [max_groups, MAX_CONSUMERS]) for k in keys]
    rows: list[dict[str, Any]] = []
    left_out = 0
    for (db, coll), reply in zip(collections, run_script(client, GROUPS_INFO, calls), strict=True):
        if isinstance(reply, Exception):
            raise reply
        found = group_rows(db, coll, reply, visibility_ms)
        left_out += max(0, _int(reply[2]) - len(found))
        rows.extend(found)
    return rows, left_out


# ---------------------------------------------------------------- history


@dataclass(frozen=True)
class HistoryPage:
    events: list[dict[str, Any]]
    next_id: str | None  # where the next page starts (exclusive), None at the end
    epoch: str | None
    epoch_changed: bool  # the id asked from is of an earlier epoch: the page starts over


def read_history(
    client: Any, keys: CollectionKeys, start: EventId | None, limit: int, newest_first: bool
) -> HistoryPage:
    """Up to ``limit`` events after the id ``start`` (oldest first), or before it (newest
    first), stopping early past :data:`HISTORY_PAGE_BYTES` of event data. An id of another
    epoch (Redis lost the collection since) starts from the first or last retained event."""
    raw_epoch = client.hget(keys.meta, "e")
    epoch = _text(raw_epoch) if raw_epoch is not None else ""
    changed = start is not None and start.epoch != epoch
    sid = start.stream_id if start is not None and not changed else None
    if newest_first:
        entries = client.xrevrange(keys.stream, f"({sid}" if sid else "+", "-", count=limit)
    else:
        entries = client.xrange(keys.stream, f"({sid}" if sid else "-", "+", count=limit)
    events: list[dict[str, Any]] = []
    entries_ids: list[Any] = []
    size = 0
    for entry_id, fields in entries:
        data = fields.get(DATA_FIELD) if isinstance(fields, dict) else None
        if data is None:
            continue
        events.append({"id": client_id(_text(entry_id), epoch), "data": msgspec.Raw(data)})
        entries_ids.append(entry_id)
        size += len(data)
        if size >= HISTORY_PAGE_BYTES:
            break
    more = len(entries) >= limit or size >= HISTORY_PAGE_BYTES
    next_id = client_id(_text(entries_ids[-1]), epoch) if events and more else None
    return HistoryPage(events, next_id, epoch or None, changed)
