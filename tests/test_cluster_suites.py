"""The end-to-end suites of ingest, fanout and consumer groups, run again on the Redis Cluster.

The tests are the very functions of tests/test_ingest_http.py, tests/test_fanout_e2e.py and
tests/test_groups_e2e.py, collected here a second time: this module overrides the fixtures they
ask for (``srv``, ``stack``, ``redis_mod``) with the session's 3-master cluster, and sets
``REDIS_CLUSTER=true`` for every process they start. Same code, same assertions, other topology.

A test is left out only when it is about a single redis-server as such (it asks for its own
``redis_srv`` to restart it, or is listed in EXCLUDED). If those modules lose tests,
``test_suites_are_found`` fails rather than the coverage shrinking silently.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Iterator
from typing import Any

import pytest
import redis

import tests.test_fanout_e2e as fanout_e2e
import tests.test_groups_e2e as groups_e2e
import tests.test_ingest_http as ingest_http
from tests.support.procs import Proc, ingest_proc
from tests.support.redis_cluster import RedisClusterFixture

pytestmark = pytest.mark.timeout(120)

# standalone-only: they restart the one redis-server on its port (covered on the cluster by
# tests/test_cluster_failover.py and tests/test_cluster_fanout.py instead)
EXCLUDED = {
    "test_redis_restart_during_stream_loses_no_answered_event",
}


class ClusterAsServer:
    """What the suites use of a ``RedisServer`` (``url``, ``port``, ``client()``), for a cluster:
    the client routes each key to its slot's master."""

    def __init__(self, cluster: RedisClusterFixture) -> None:
        self.cluster = cluster

    @property
    def url(self) -> str:
        return self.cluster.url

    @property
    def port(self) -> int:
        return self.cluster.live()[0].port

    def client(self) -> Any:
        return redis.RedisCluster(host="127.0.0.1", port=self.port, socket_timeout=5)


@pytest.fixture(scope="module", autouse=True)
def cluster_mode() -> Iterator[None]:
    """Every ingest/fanout process started by this module treats REDIS_URL as a cluster seed."""
    old = os.environ.get("REDIS_CLUSTER")
    os.environ["REDIS_CLUSTER"] = "true"
    yield
    if old is None:
        os.environ.pop("REDIS_CLUSTER", None)
    else:
        os.environ["REDIS_CLUSTER"] = old


@pytest.fixture(scope="module")
def redis_mod(redis_cluster_session: RedisClusterFixture, cluster_mode: None) -> ClusterAsServer:
    redis_cluster_session.wait_ok()
    return ClusterAsServer(redis_cluster_session)


@pytest.fixture(scope="module")
def srv(redis_mod: ClusterAsServer) -> Iterator[tuple[ClusterAsServer, Proc]]:
    p = ingest_proc(
        redis_mod.url, workers=2, INGEST_MAX_BODY_BYTES=str(ingest_http.MAX_BODY)
    ).start()
    try:
        yield redis_mod, p
    finally:
        p.stop()


@pytest.fixture(scope="module")
def stack(redis_mod: ClusterAsServer) -> Iterator[Any]:
    with fanout_e2e.stack_on(redis_mod) as s:  # type: ignore[arg-type]
        yield s


# the suites' own helper fixtures, resolved here against the overrides above
port = ingest_http.port
rds = ingest_http.rds
ingest = groups_e2e.ingest

_FOUND: dict[str, list[str]] = {}
for _mod, _tag in ((ingest_http, "ingest"), (fanout_e2e, "fanout"), (groups_e2e, "groups")):
    _FOUND[_tag] = []
    for _name in dir(_mod):
        if not _name.startswith("test_") or _name in EXCLUDED:
            continue
        _fn = getattr(_mod, _name)
        # a test that asks for its own redis-server (``redis_srv``) restarts or stops it: it is
        # about one standalone server, not about the code paths
        if callable(_fn) and "redis_srv" not in inspect.signature(_fn).parameters:
            globals()[f"test_{_tag}_on_cluster_{_name[5:]}"] = _fn
            _FOUND[_tag].append(_name)


def test_suites_are_found() -> None:
    assert len(_FOUND["ingest"]) >= 15, _FOUND
    assert len(_FOUND["fanout"]) >= 6, _FOUND
    assert len(_FOUND["groups"]) >= 4, _FOUND
