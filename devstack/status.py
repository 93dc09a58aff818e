"""``vski-realtime status``: the operations view as terminal tables, for an SSH session.

It reads the same admin API as the page (``/admin/status``, ``/admin/collections``,
``/admin/groups``) with the admin key, from the running dev stack by default or from any
deployment (``--ingest URL --admin-key KEY``). ``--watch`` redraws every few seconds;
``--json`` prints the raw answers for scripts. Rendering is pure (:func:`render`), so the
tables are unit-tested without a server.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from devstack.client import get_json

Fetch = Callable[[str], tuple[int, dict[str, Any]]]


class StatusError(RuntimeError):
    """The admin API could not be read: the message says why and what to do."""


def fetch_all(ingest: str, key: str, limit: int = 10) -> dict[str, Any]:
    """The three answers the tables need, or StatusError."""
    base = ingest.rstrip("/")
    out: dict[str, Any] = {}
    for name, path in (
        ("status", "/admin/status"),
        ("collections", f"/admin/collections?limit={limit}"),
        ("groups", f"/admin/groups?limit={min(200, limit * 5)}"),
    ):
        try:
            status, body = get_json(base + path, key)
        except OSError as exc:
            raise StatusError(f"cannot reach ingest at {base}: {exc}") from None
        if status == 401:
            raise StatusError(
                "the admin key was refused (401): pass --admin-key REALTIME_ADMIN_KEY"
            )
        if status == 404:
            raise StatusError(
                f"{base}{path} answered 404: is REALTIME_ADMIN_KEY set on that ingest?"
            )
        if status != 200:
            raise StatusError(f"{base}{path} answered {status}: {json.dumps(body)[:200]}")
        out[name] = body
    return out


# ---------------------------------------------------------------- formatting


def _bytes(n: Any) -> str:
    if not isinstance(n, (int, float)):
        return "-"
    value, units = float(n), ["B", "KiB", "MiB", "GiB", "TiB"]
    i = 0
    while value >= 1024 and i < len(units) - 1:
        value /= 1024
        i += 1
    return f"{value:.0f} {units[i]}" if i == 0 else f"{value:.1f} {units[i]}"


def _age(ms: Any) -> str:
    if not isinstance(ms, (int, float)):
        return "-"
    s = ms / 1000
    if s < 1:
        return f"{ms:.0f} ms"
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    if s < 172800:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.0f} d"


def _num(v: Any, digits: int = 0) -> str:
    return f"{float(v):.{digits}f}" if isinstance(v, (int, float)) else "-"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: set[int]) -> list[str]:
    """Plain columns, numbers right-aligned; ``(none)`` for an empty table."""
    if not rows:
        return ["  (none)"]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        parts = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  " + "  ".join(parts).rstrip()

    return [line(headers), *(line(r) for r in rows)]


def node_state(n: dict[str, Any]) -> str:
    if n.get("draining"):
        return "DRAINING"
    if n.get("stale"):
        return "STALE"
    if n.get("ready") is False:
        return "NOT READY"
    return "ok"


def _node_row(n: dict[str, Any], now: float) -> list[str]:
    fanout, ingest = n.get("role") == "fanout", n.get("role") == "ingest"
    started = n.get("started_at")
    return [
        node_state(n),
        str(n["id"]),
        str(n.get("role")),
        str(n.get("address")),
        str(n.get("version")),
        _age((now - started) * 1000) if isinstance(started, (int, float)) else "-",
        _num(n.get("connections")) if fanout else "-",
        _num(n.get("subscriptions")) if fanout else "-",
        _num(n.get("events_per_s"), 1) if fanout else "-",
        _num(n.get("webhooks_per_s"), 1) if ingest else "-",
        _num(n.get("read_lag_ms"), 2),
        _bytes(n.get("rss_bytes")),
        _age(n.get("age_ms")) + " ago",
    ]


def _collection_row(c: dict[str, Any]) -> list[str]:
    return [
        str(c["database"]),
        str(c["collection"]),
        _num(c.get("events_per_s"), 2),
        _num(c.get("retained")),
        str(c.get("last_id") or "-"),
        _age(c.get("newest_age_ms")),
        _bytes(c.get("memory_bytes")),
        _num(c.get("groups")),
    ]


def _group_row(g: dict[str, Any]) -> list[str]:
    return [
        "STUCK" if g["stuck"] else ("pending" if g["pending"] else "ok"),
        str(g["database"]),
        str(g["collection"]),
        str(g["group"]),
        str(g["redis_group"]),
        _num(g["consumers"]),
        _num(g["pending"]),
        _age(g.get("oldest_pending_age_ms")),
        _age(g.get("oldest_pending_idle_ms")),
    ]


NODE_HEADERS = [
    "state", "id", "role", "address", "version", "up", "conns", "subs", "events/s",
    "webhooks/s", "lag ms", "memory", "heartbeat",
]  # fmt: skip
COLLECTION_HEADERS = [
    "database", "collection", "events/s", "retained", "last id", "newest", "memory", "groups",
]  # fmt: skip
GROUP_HEADERS = [
    "state", "database", "collection", "group", "redis group", "members", "pending",
    "oldest pending", "idle",
]  # fmt: skip


def render(data: dict[str, Any], ingest: str) -> str:
    status, colls, groups = data["status"], data["collections"], data["groups"]
    t, now = status["totals"], status["now"]
    when = datetime.fromtimestamp(now, UTC).strftime("%H:%M:%S UTC")
    nodes_title = "NODES"
    if status.get("truncated"):
        nodes_title += f" (first {len(status['nodes'])} of {status['registered']})"
    lines = [
        f"vski-realtime at {ingest}  ({when})",
        f"  {t['fanout']} fanout, {t['ingest']} ingest  ·  {t['connections']} connections  ·  "
        f"{_num(t['webhooks_per_s'], 1)} webhooks/s  ·  {_num(t['events_per_s'], 1)} deliveries/s"
        f"  ·  worst read lag {_num(t['read_lag_ms'], 2)} ms",
        "",
        nodes_title,
        *table(NODE_HEADERS, [_node_row(n, now) for n in status["nodes"]], set(range(6, 13))),
        "",
        f"HOTTEST COLLECTIONS (last {colls.get('window_s', 60)} s)",
        *table(
            COLLECTION_HEADERS, [_collection_row(c) for c in colls["collections"]], {2, 3, 5, 6, 7}
        ),
        "",
        f"CONSUMER GROUPS (stuck: oldest pending over {groups['visibility_seconds']} s)",
        *table(GROUP_HEADERS, [_group_row(g) for g in groups["groups"]], {5, 6, 7, 8}),
    ]
    return "\n".join(lines)


def run(ingest: str, key: str, *, watch: float | None, as_json: bool, limit: int) -> int:
    """The command: print once (or every ``watch`` seconds until Ctrl-C)."""
    while True:
        try:
            data = fetch_all(ingest, key, limit)
        except StatusError as exc:
            sys.stderr.write(f"vski-realtime: {exc}\n")
            return 1
        if as_json:
            print(json.dumps(data, indent=2), flush=True)
        else:
            if watch:
                sys.stdout.write("\x1b[2J\x1b[H")  # clear the terminal between frames
            print(render(data, ingest), flush=True)
        if not watch:
            return 0
        try:
            time.sleep(watch)
        except KeyboardInterrupt:
            return 0
