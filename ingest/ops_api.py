"""The admin read API of the operations view: ``GET /admin/status``, ``/admin/collections``,
``/admin/groups`` and ``/admin/history`` (JSON), plus the page at ``/admin/``.

Every API request is checked by ``AdminAuth`` (``REALTIME_ADMIN_KEY``) before anything is read,
so no answer to a request without the key holds a node, a collection name or a record; without
the key configured none of these routes exist (404). The page itself is static and served to
anyone: it asks for the key and sends it on each call.

Each endpoint's cost is bounded whatever Redis holds (``ingest/ops_read.py`` says how); every
list takes ``limit`` with a maximum, and a bad parameter is a 422 naming it. A Redis failure is
a 503 with ``Retry-After``, like the webhook path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import falcon
import msgspec
import redis

from common.errors import HTTPRefusal
from common.layout import EventId, InvalidEventId, InvalidName, check_name, collection_keys
from common.logs import get_logger
from common.registry import MAX_NODES, Listing
from ingest import ops_read
from ingest.activity import WINDOW_SECONDS
from ingest.admin_auth import AdminAuth
from ingest.ops_page import AssetResource, PageResource

log = get_logger("ingest.ops")
_json = msgspec.json.Encoder()

DEFAULT_VISIBILITY_S = 30.0  # FANOUT_GROUP_VISIBILITY_SECONDS' default, when no node says
MAX_GROUP_COLLECTIONS = 100  # collections looked at by /admin/groups without a collection
LIMITS = {  # endpoint -> (default, max) of its ``limit``
    "status": (200, MAX_NODES),
    "collections": (20, 100),
    "groups": (50, 200),
    "history": (50, 500),
}


def _limit(req: falcon.Request, endpoint: str) -> int:
    default, maximum = LIMITS[endpoint]
    raw = req.get_param("limit")
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if not 1 <= value <= maximum:
        raise HTTPRefusal(422, "invalid_parameter", f"limit must be an integer from 1 to {maximum}")
    return value


def _name(req: falcon.Request, kind: str, *, required: bool) -> str | None:
    value = req.get_param(kind)
    if value is None or value == "":
        if required:
            raise HTTPRefusal(422, "invalid_parameter", f"{kind} is required")
        return None
    try:
        return check_name(kind, value)
    except InvalidName as exc:
        raise HTTPRefusal(422, "invalid_name", str(exc)) from None


def _event_id(req: falcon.Request, name: str) -> EventId | None:
    value = req.get_param(name)
    if value is None or value in ("", "0"):
        return None
    try:
        return EventId.parse(value)
    except InvalidEventId as exc:
        raise HTTPRefusal(422, "invalid_id", f"{name}: {exc}") from None


def _flag(req: falcon.Request, name: str) -> bool:
    return (req.get_param(name) or "").lower() in ("1", "true", "yes", "on")


class AdminRead:
    """Base of the read endpoints: the key check, the answer, Redis failures as 503."""

    endpoint = ""

    def __init__(self, client: Any, prefix: str, auth: AdminAuth) -> None:
        self.client = client
        self.prefix = prefix
        self.auth = auth

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        try:
            self.auth.check(req)
        except HTTPRefusal as exc:
            # who tries the admin API without the key is worth knowing (never the key itself)
            log.info(
                "admin_refused", endpoint=self.endpoint, status=exc.status, source=req.remote_addr
            )
            raise
        try:
            body = self.read(req)
        except (redis.RedisError, OSError) as exc:
            log.warning("admin_read_failed", endpoint=self.endpoint, error=type(exc).__name__)
            raise HTTPRefusal(
                503,
                "redis_unavailable",
                "Redis did not answer; retry",
                {"Retry-After": "1"},
            ) from None
        resp.content_type = falcon.MEDIA_JSON
        resp.set_header("Cache-Control", "no-store")
        resp.data = _json.encode(body)

    def read(self, req: falcon.Request) -> dict[str, Any]:
        raise NotImplementedError

    def nodes(self, limit: int = MAX_NODES) -> Listing:
        try:
            return ops_read.read_nodes(self.client, self.prefix, limit)
        except redis.exceptions.NoScriptError:
            ops_read.load_registry_script(self.client)
            return ops_read.read_nodes(self.client, self.prefix, limit)


class StatusResource(AdminRead):
    endpoint = "status"

    def read(self, req: falcon.Request) -> dict[str, Any]:
        listing = self.nodes(_limit(req, "status"))
        return {
            "now": listing.now_ms / 1000,
            "nodes": listing.nodes,
            "totals": ops_read.totals(listing.nodes),
            "registered": listing.registered,
            "truncated": listing.registered > len(listing.nodes),
        }


class CollectionsResource(AdminRead):
    endpoint = "collections"

    def read(self, req: falcon.Request) -> dict[str, Any]:
        database = _name(req, "database", required=False)
        limit = _limit(req, "collections")
        picks = ops_read.busiest(self.client, self.prefix, database, limit)
        scan: dict[str, Any] | None = None
        if len(picks) < limit and req.get_param("scan") not in ("0", "false", "no"):
            found = ops_read.scan_recent(self.client, self.prefix, database)
            have = {(c.database, c.collection) for c in picks}
            for db, coll, _ in found.found:
                if len(picks) >= limit:
                    break
                if (db, coll) not in have:
                    picks.append(ops_read.Candidate(db, coll, None, "scan"))
            scan = {"calls": found.examined_calls, "complete": found.complete}
        rows = ops_read.describe_collections(self.client, self.prefix, picks)
        return {"database": database, "window_s": WINDOW_SECONDS, "collections": rows, "scan": scan}


class GroupsResource(AdminRead):
    endpoint = "groups"

    def read(self, req: falcon.Request) -> dict[str, Any]:
        database = _name(req, "database", required=False)
        collection = _name(req, "collection", required=False)
        limit = _limit(req, "groups")
        listing = self.nodes()
        visibility = max(
            (
                float(n["group_visibility_seconds"])
                for n in listing.nodes
                if isinstance(n.get("group_visibility_seconds"), (int, float))
            ),
            default=DEFAULT_VISIBILITY_S,
        )
        if collection is not None:
            targets = [(database or "postgres", collection)]
        else:
            targets = self._candidates(listing, database)
        rows, left_out = ops_read.describe_groups(
            self.client, self.prefix, targets, limit, int(visibility * 1000)
        )
        if _flag(req, "stuck"):
            rows = [r for r in rows if r["stuck"]]
        rows.sort(key=lambda r: (not r["stuck"], -(r["oldest_pending_age_ms"] or 0)))
        return {
            "database": database if collection is None else (database or "postgres"),
            "collection": collection,
            "visibility_seconds": visibility,
            "collections_checked": len(targets),
            "groups": rows[:limit],
            "truncated": left_out > 0 or len(rows) > limit,
        }

    def _candidates(self, listing: Listing, database: str | None) -> list[tuple[str, str]]:
        """Where groups may be: the collections fanout nodes say they serve groups of, then the
        busiest ones; at most :data:`MAX_GROUP_COLLECTIONS`."""
        seen: dict[tuple[str, str], None] = {}
        for node in listing.nodes:
            for name in node.get("group_collections") or ():
                db, sep, coll = str(name).partition("/")
                if sep and (database is None or db == database):
                    seen.setdefault((db, coll), None)
        for c in ops_read.busiest(self.client, self.prefix, database, 20):
            seen.setdefault((c.database, c.collection), None)
        valid = []
        for db, coll in seen:
            try:
                collection_keys(db, coll, self.prefix)
            except InvalidName:
                continue
            valid.append((db, coll))
        return valid[:MAX_GROUP_COLLECTIONS]


class HistoryResource(AdminRead):
    endpoint = "history"

    def read(self, req: falcon.Request) -> dict[str, Any]:
        database = _name(req, "database", required=False) or "postgres"
        collection = _name(req, "collection", required=True)
        assert collection is not None
        limit = _limit(req, "history")
        after, before = _event_id(req, "after"), _event_id(req, "before")
        newest_first = before is not None or _flag(req, "newest")
        if after is not None and newest_first:
            raise HTTPRefusal(422, "invalid_parameter", "use after (oldest first) or before")
        keys = collection_keys(database, collection, self.prefix)
        page = ops_read.read_history(self.client, keys, before or after, limit, newest_first)
        body: dict[str, Any] = {
            "database": database,
            "collection": collection,
            "epoch": page.epoch,
            "order": "newest_first" if newest_first else "oldest_first",
            "epoch_changed": page.epoch_changed,
            "events": page.events,
        }
        body["next_before" if newest_first else "next_after"] = page.next_id
        if newest_first:
            body["next_after"] = None
        return body


ROUTES: dict[str, Callable[[Any, str, AdminAuth], AdminRead]] = {
    "/admin/status": StatusResource,
    "/admin/collections": CollectionsResource,
    "/admin/groups": GroupsResource,
    "/admin/history": HistoryResource,
}


def add_ops_routes(app: falcon.App[Any, Any], client: Any, prefix: str, auth: AdminAuth) -> None:
    """Register the operations view (``ingest/app.py`` calls it when the admin key is set)."""
    for path, resource in ROUTES.items():
        app.add_route(path, resource(client, prefix, auth))
    app.add_route("/admin", PageResource())
    app.add_route("/admin/assets/{name}", AssetResource())
