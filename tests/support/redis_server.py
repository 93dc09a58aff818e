"""Real ``redis-server`` processes on free ports (no fakes: Redis behaviour is under test).

A thin layer over the project's one launcher, :class:`devstack.redis_process.RedisProcess`:
it adds the redis-py client the tests use and what a :class:`~tests.support.backends.RedisTarget`
needs, so a plain server can stand wherever a suite takes "some Redis".
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import redis

from devstack.redis_process import RedisProcess
from tests.support.backends import STANDALONE

if TYPE_CHECKING:
    from tests.support.netns import NetNamespace


@dataclass
class RedisServer(RedisProcess):
    """One standalone server without persistence (unless ``args`` turn it on)."""

    @property
    def kind(self) -> str:
        return STANDALONE

    @property
    def tier_env(self) -> dict[str, str]:
        """What a tier needs besides ``REDIS_URL`` to use this server: nothing."""
        return {}

    def client(self) -> redis.Redis:
        return redis.Redis(host=self.host, port=self.port, socket_timeout=5)


@contextlib.contextmanager
def redis_server(*extra: str) -> Iterator[RedisServer]:
    """A fresh server in a temporary folder, removed afterwards; ``extra`` go to its command."""
    with RedisServer(args=extra) as server:
        yield server


@contextlib.contextmanager
def primary_with_replica() -> Iterator[tuple[RedisServer, RedisServer]]:
    """A primary and a read-only replica of it (a 'regional' Redis)."""
    with (
        redis_server() as primary,
        redis_server("--replicaof", primary.host, str(primary.port)) as replica,
    ):
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            info = replica.client().info("replication")
            if info.get("master_link_status") == "up":
                break
            time.sleep(0.05)
        yield primary, replica


@contextlib.contextmanager
def redis_in_namespace(ns: NetNamespace, *extra: str, port: int = 6379) -> Iterator[RedisServer]:
    """A fresh server inside ``ns`` (``tests.support.netns``), bound to its far address: a
    Redis that a test can partition from this side with ``ns.blackhole()``."""
    with RedisServer(host=ns.far, port=port, prefix=ns.command(), args=extra) as server:
        yield server
