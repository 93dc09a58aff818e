"""The suite's pytest plugin (``tests/conftest.py`` loads it): Redis fixtures, options, markers.

Imports of the Redis helpers are deferred into the fixtures, so collecting ``tests/unit`` loads
none of them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.support.backends import CLUSTER, STANDALONE, ClusterBackend, RedisTarget

if TYPE_CHECKING:
    from tests.support.redis_cluster import RedisClusterFixture
    from tests.support.redis_server import RedisServer

# suite file -> names of its test functions collected with the cluster backend (and every
# collected file, with an empty set if none): read by tests/e2e/test_backend_coverage.py
BACKEND_COVERAGE = pytest.StashKey[dict[str, set[str]]]()

BACKENDS = [
    pytest.param(STANDALONE, id=STANDALONE),
    # 120 s as the cluster runs of these suites always had (a slot move or a failover in a
    # neighbouring test can slow the first requests)
    pytest.param(CLUSTER, id=CLUSTER, marks=[pytest.mark.cluster, pytest.mark.timeout(120)]),
]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", help="run long soak/load variants")


@pytest.hookimpl(tryfirst=True)  # before -k/-m deselect: the coverage count sees every item
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    coverage: dict[str, set[str]] = {}
    for item in items:
        path = Path(str(item.path)).relative_to(config.rootpath).as_posix()
        names = coverage.setdefault(path, set())
        callspec = getattr(item, "callspec", None)
        if callspec is not None and callspec.params.get("redis_backend") == CLUSTER:
            names.add(getattr(item, "originalname", item.name))
        if "redis_cluster_session" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.cluster)  # `-m "not cluster"` leaves them out
    config.stash[BACKEND_COVERAGE] = coverage
    if not config.getoption("--run-slow"):
        skip = pytest.mark.skip(reason="long variant: pass --run-slow")
        for item in items:
            if "slow" in item.keywords:
                item.add_marker(skip)


@pytest.fixture
def redis_srv() -> Iterator[RedisServer]:
    """A fresh real redis-server on a free port, for one test (it may stop or restart it)."""
    from tests.support.redis_server import redis_server

    with redis_server() as server:
        yield server


@pytest.fixture(scope="module")
def redis_mod() -> Iterator[RedisServer]:
    """A real redis-server shared by the tests of one module (flush it if you need it empty)."""
    from tests.support.redis_server import redis_server

    with redis_server() as server:
        yield server


@pytest.fixture(scope="session")
def redis_cluster_session() -> Iterator[RedisClusterFixture]:
    """A real Redis Cluster (3 masters + 3 replicas) shared by the whole run: it takes seconds
    to start. Tests that kill or move things must leave it healed (``cluster.heal()``)."""
    from tests.support.redis_cluster import redis_cluster

    with redis_cluster() as cluster:
        yield cluster


@pytest.fixture(scope="module", params=BACKENDS)
def redis_backend(request: pytest.FixtureRequest) -> RedisTarget:
    """The module's Redis, once per topology: its ``redis_mod`` server, then the session's
    cluster. Start tiers on it with ``ingest_proc(redis_backend)`` / ``fanout_proc(...)``."""
    if request.param == STANDALONE:
        server: RedisServer = request.getfixturevalue("redis_mod")
        return server
    cluster: RedisClusterFixture = request.getfixturevalue("redis_cluster_session")
    cluster.wait_ok()
    return ClusterBackend(cluster)
