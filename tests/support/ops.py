"""Helpers of the operations-view suites: the admin key, reading the admin API, waiting for the
registry to show what a test expects.

Tiers started for these suites get a fast heartbeat (:data:`HEARTBEAT`, TTL 3x) so that a node
joining, draining or dying shows within a second or two, and a key prefix of their own so that
nodes of other suites on the shared cluster never appear in their registry.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from tests.support.ingest_http import Reply, request

ADMIN_KEY = "ops-view-admin-key-for-the-tests"
HEARTBEAT = 0.5
TTL = HEARTBEAT * 3


def ops_env(prefix: str) -> dict[str, str]:
    """What both tiers of an operations-view stack get."""
    return {"REGISTRY_HEARTBEAT_SECONDS": str(HEARTBEAT), "REDIS_KEY_PREFIX": prefix}


def unique_prefix(tag: str) -> str:
    return f"{tag}{int(time.time() * 1000) % 10**9}"


def admin_get(port: int, path: str, key: str | None = ADMIN_KEY, timeout: float = 10) -> Reply:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return request(port, "GET", path, headers=headers, timeout=timeout)


def admin_json(port: int, path: str) -> Any:
    reply = admin_get(port, path)
    assert reply.status == 200, (path, reply.status, reply.body[:300])
    return json.loads(reply.body)


def wait_for(fetch: Callable[[], Any], check: Callable[[Any], bool], timeout: float = 15) -> Any:
    """Poll ``fetch`` until ``check`` holds for its answer; the last answer either way."""
    deadline = time.monotonic() + timeout
    value = fetch()
    while not check(value) and time.monotonic() < deadline:
        time.sleep(0.1)
        value = fetch()
    assert check(value), f"still not the case after {timeout}s: {json.dumps(value)[:1500]}"
    return value


def nodes_by_address(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {str(n["address"]): n for n in status["nodes"]}
