"""The Redis topologies a suite runs on: what the ``redis_backend`` fixture yields.

A suite that asks for ``redis_backend`` runs each of its tests twice: on a standalone
``redis-server`` (the module's ``redis_mod``) and on the session's Redis Cluster (3 masters + 3
replicas, started once per run; that parameter carries the ``cluster`` marker). Both values are
:class:`RedisTarget`\\ s; pass one to ``ingest_proc``/``fanout_proc`` and the tier gets the right
``REDIS_URL`` and ``REDIS_CLUSTER``. A test about one standalone server as such (it restarts or
stops it) asks for its own ``redis_srv`` instead and runs standalone only.

A suite that must keep running on both backends is listed in :data:`BACKEND_SUITES`, with the
least number of its tests that must take the cluster parameter: if it stops asking for
``redis_backend``, ``tests/e2e/test_backend_coverage.py`` fails instead of the cluster coverage
shrinking silently.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import redis

if TYPE_CHECKING:
    from tests.support.redis_cluster import RedisClusterFixture

STANDALONE, CLUSTER = "standalone", "cluster"

# suite file (from the repository root) -> least number of its test functions on the cluster
BACKEND_SUITES: dict[str, int] = {
    "tests/e2e/test_ingest_http.py": 15,
    "tests/e2e/test_fanout_e2e.py": 6,
    "tests/e2e/test_groups_e2e.py": 4,
    "tests/e2e/test_policy_e2e.py": 6,
    "tests/e2e/test_ops_api.py": 10,
    "tests/integration/test_registry.py": 6,
}


class RedisTarget(Protocol):
    """What the suites use of "some Redis": a URL for the tiers, a client for assertions."""

    @property
    def kind(self) -> str:
        """``standalone`` or ``cluster``."""
        ...

    @property
    def url(self) -> str:
        """``REDIS_URL`` for the tiers (a seed node of a cluster)."""
        ...

    @property
    def port(self) -> int: ...

    @property
    def tier_env(self) -> dict[str, str]:
        """What a tier needs besides ``REDIS_URL`` for this topology."""
        ...

    def client(self) -> Any:
        """A redis-py client (bytes replies) that reaches every key."""
        ...


class ClusterBackend:
    """The session's Redis Cluster as a suite sees it: the client routes each key to its slot's
    master, and every tier started on it gets ``REDIS_CLUSTER=true``."""

    def __init__(self, cluster: RedisClusterFixture) -> None:
        self.cluster = cluster

    @property
    def kind(self) -> str:
        return CLUSTER

    @property
    def url(self) -> str:
        return self.cluster.url

    @property
    def port(self) -> int:
        return self.cluster.live()[0].port

    @property
    def tier_env(self) -> dict[str, str]:
        return {"REDIS_CLUSTER": "true"}

    def client(self) -> redis.RedisCluster:
        return redis.RedisCluster(host="127.0.0.1", port=self.port, socket_timeout=5)
