"""A Redis Cluster with one master behind a veth pair, for partition tests.

Node 0 (a master after ``redis-cli --cluster create``) runs inside a
:class:`~tests.support.netns.NetNamespace` on its far address; the five others run here on the
near address (``127.77.N.1``: the namespace reaches it, and it stays reachable from here while
the link is down). Every node announces the address it binds, so the cluster bus, clients and
the tiers all use addresses that work from both sides. ``ns.blackhole()`` then partitions that
one master from everyone: the cluster fails it over after ``cluster-node-timeout``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.support.netns import NetNamespace
from tests.support.redis_cluster import ClusterNode, RedisClusterFixture, redis_cluster


@dataclass
class PartitionableCluster(RedisClusterFixture):
    ns: NetNamespace | None = None

    def make_node(self, index: int, port: int) -> ClusterNode:
        assert self.ns is not None
        inside = index == 0
        host = self.ns.far if inside else self.ns.near
        return ClusterNode(
            self.base / str(port),
            port,
            host=host,
            prefix=self.ns.command() if inside else (),
            args=(*ClusterNode.args, "--cluster-announce-ip", host),
        )

    @property
    def isolated(self) -> ClusterNode:
        """The node inside the namespace (a master until it is failed over)."""
        return self.nodes[0]

    @property
    def outside(self) -> list[ClusterNode]:
        return self.nodes[1:]

    def tier_env(self) -> dict[str, str]:
        """REDIS_URL (a seed outside the namespace) and REDIS_CLUSTER for ingest/fanout."""
        return {"REDIS_URL": self.outside[0].url, "REDIS_CLUSTER": "true"}


@contextlib.contextmanager
def partitionable_cluster(ns: NetNamespace) -> Iterator[PartitionableCluster]:
    def build(base: Path, ports: list[int]) -> PartitionableCluster:
        return PartitionableCluster(base, ports, ns=ns)

    with redis_cluster(build) as cluster:
        assert isinstance(cluster, PartitionableCluster)
        yield cluster
