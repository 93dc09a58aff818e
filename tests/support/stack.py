"""A running tier stack for end-to-end suites: gunicorn ingest and N ``vski-fanout`` nodes.

``stack_on`` starts them on any :class:`~tests.support.backends.RedisTarget` (a standalone server,
``redis_backend``, a cluster) and stops them, nodes first, whatever happened.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

from tests.support.backends import RedisTarget
from tests.support.procs import Proc, fanout_proc, ingest_proc

# fanout settings of the end-to-end suites: a 256 KiB buffer cap makes the slow-consumer cut-off
# quick to reach; a high message rate keeps SDK-like clients from being closed as a flood
NODE_ENV = {"FANOUT_MAX_BUFFER_BYTES": "262144", "FANOUT_CLIENT_RATE": "1000"}

R = TypeVar("R", bound=RedisTarget)


@dataclass
class Stack(Generic[R]):
    redis: R
    ingest: Proc
    nodes: list[Proc]

    def ports(self) -> list[int]:
        """The fanout nodes' ports, in node order (what a load balancer would rotate over)."""
        return [n.port for n in self.nodes]

    def ensure_up(self) -> None:
        """Start again any node an earlier test killed or stopped."""
        for node in self.nodes:
            if not node.alive():
                node.stop()
                node.start()


@contextlib.contextmanager
def stack_on(
    redis: R,
    nodes: int = 2,
    *,
    node_env: Mapping[str, str] = NODE_ENV,
    ingest_env: Mapping[str, str] | None = None,
    workers: int = 2,
    **env: str,
) -> Iterator[Stack[R]]:
    """Ingest (``workers`` gunicorn workers, ``ingest_env``) and ``nodes`` fanout nodes with
    ``node_env`` updated by ``env``, all on ``redis``."""
    ingest = ingest_proc(redis, workers, **(ingest_env or {})).start()
    procs: list[Proc] = []
    try:
        for _ in range(nodes):
            procs.append(fanout_proc(redis, **{**node_env, **env}).start())
        yield Stack(redis, ingest, procs)
    finally:
        for p in procs:
            p.stop()
        ingest.stop()
