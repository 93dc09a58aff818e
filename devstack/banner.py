"""What ``vski-realtime dev`` prints once the stack is ready: URLs, a dev token, copy-paste lines.

The ``curl`` line uses ``$(date ...)`` for the timestamp so that running it again posts a new
event instead of being recognised as a VSKI retry of the first one (ingest dedupes retries).
"""

from __future__ import annotations

import json
import shlex

from devstack.client import realtime_url


def curl_command(ingest_url: str, token: str, db: str, collection: str) -> str:
    stamp = "'\"$(date -u +%Y-%m-%dT%H:%M:%SZ)\"'"  # leaves the single quotes for the shell
    body = (
        f'{{"database":"{db}","collection":"{collection}","id":"rec_1","action":"create",'
        f'"timestamp":"{stamp}","record":{{"id":"rec_1","title":"Hello from curl"}}}}'
    )
    return (
        f"curl -sS -X POST {shlex.quote(ingest_url + '/webhook')} "
        f"-H 'Authorization: Bearer {token}' -H 'Content-Type: application/json' "
        f"-d '{body}'"
    )


def _ops_lines(ops_url: str | None, key_source: str | None) -> list[str]:
    if not ops_url:
        return []
    return [
        "See the whole deployment (nodes, busiest collections, groups, history):",
        "  open the ops URL above (the key after #key= is kept in the tab's sessionStorage)",
        f"  or: vski-realtime status   (admin key from {key_source or 'REALTIME_ADMIN_KEY'})",
        "",
    ]


def render(
    *,
    redis: str,
    ingest_url: str,
    fanout_urls: list[str],
    console_url: str | None,
    token: str,
    webhook_token: str,
    secret_source: str,
    policy: str | None = None,
    proxy_url: str | None = None,
    ops_url: str | None = None,
    admin_key_source: str | None = None,
    db: str,
    collection: str,
    state: str,
) -> str:
    ws = realtime_url(fanout_urls[0], db, token)
    subscribe = json.dumps({"type": "SUBSCRIBE", "collection": collection})
    lines = [
        "",
        "vski-realtime dev stack is up",
        f"  redis     {redis}",
        f"  ingest    {ingest_url}/webhook",
        *[f"  fanout    {u}/api/realtime" for u in fanout_urls],
    ]
    if console_url:
        lines.append(f"  console   {console_url}/")
    if ops_url:
        lines.append(f"  ops       {ops_url}")
    if proxy_url:
        lines.append(
            f"  proxy     {proxy_url} (example subscribe proxy: devstack/example_proxy.py)"
        )
    lines += [
        f"  state     {state} (secret from {secret_source})",
        f"  policy    {policy or 'none: every valid token sees everything (--policy FILE)'}",
        "",
        "Development token (HS256, 24 h; mint another with `vski-realtime token`):",
        f"  {token}",
        "",
        "Post a webhook (as a VSKI trigger would, with a trigger's token):",
        f"  {curl_command(ingest_url, webhook_token, db, collection)}",
        "",
        "Watch events (the SDK's WebSocket URL; send the SUBSCRIBE frame after it opens):",
        f"  {ws}",
        f"  {subscribe}",
        f"  or: vski-realtime listen --db {db} --collection {collection}",
        "",
        *_ops_lines(ops_url, admin_key_source),
        "Cut a user off on every node (closes its sockets with 4003, refuses it for a day):",
        "  vski-realtime revoke --user dev",
        "",
        "Ctrl-C stops everything.",
        "",
    ]
    return "\n".join(lines)
