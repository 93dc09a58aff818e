from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.redis_cluster import RedisClusterFixture, redis_cluster
from tests.support.redis_server import RedisServer, redis_server


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", help="run long soak/load variants")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="long variant: pass --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def redis_srv() -> Iterator[RedisServer]:
    """A fresh real redis-server on a free port, for one test."""
    with redis_server() as server:
        yield server


@pytest.fixture(scope="module")
def redis_mod() -> Iterator[RedisServer]:
    """A real redis-server shared by the tests of one module (flush it if you need it empty)."""
    with redis_server() as server:
        yield server


@pytest.fixture(scope="session")
def redis_cluster_session() -> Iterator[RedisClusterFixture]:
    """A real Redis Cluster (3 masters + 3 replicas) shared by the whole run: it takes seconds
    to start. Tests that kill or move things must leave it healed (``cluster.heal()``)."""
    with redis_cluster() as cluster:
        yield cluster
