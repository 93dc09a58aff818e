"""Redis clients built from settings: standalone or cluster, sync (ingest) or asyncio (fanout).

Timeouts are always set: a Redis that hangs must turn into an error the caller can answer (503
at ingest, a reconnect loop at fanout), never into a request that waits forever. Every
connection has TCP keepalive with short probes and a ``TCP_USER_TIMEOUT``, so a Redis behind a
partition (no FIN, no RST) is noticed by the kernel too, not only by the next command's timeout:
Linux's defaults would wait 2 hours on an idle socket and ~15 minutes on unacknowledged writes.
"""

from __future__ import annotations

import socket
from typing import Any

import redis
import redis.asyncio
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from common.config import RedisSettings


def keepalive_kwargs(s: RedisSettings) -> dict[str, Any]:
    """redis-py connection arguments for TCP keepalive (``REDIS_KEEPALIVE_*``) and
    ``TCP_USER_TIMEOUT`` (``REDIS_TCP_USER_TIMEOUT``), where the platform has them."""
    options: dict[int, int] = {}
    for name, value in (
        ("TCP_KEEPIDLE", s.keepalive_idle),
        ("TCP_KEEPINTVL", s.keepalive_interval),
        ("TCP_KEEPCNT", s.keepalive_count),
        ("TCP_USER_TIMEOUT", s.tcp_user_timeout_ms),
    ):
        opt = getattr(socket, name, None)
        if opt is not None and value > 0:
            options[opt] = value
    return {"socket_keepalive": True, "socket_keepalive_options": options}


def sync_client(s: RedisSettings, *, url: str | None = None, retries: int = 1) -> Any:
    """A blocking client (``redis.Redis`` or ``redis.RedisCluster``)."""
    kwargs: dict[str, Any] = {
        "socket_timeout": s.socket_timeout,
        "socket_connect_timeout": s.connect_timeout,
        "health_check_interval": 30,
        **keepalive_kwargs(s),
    }
    if s.cluster:
        # one retry, after redis-py refreshed the slot map (a failover that already happened);
        # its default (10 retries, jittered backoff) held a webhook > 20 s in a partition
        kwargs["retry"] = Retry(ExponentialBackoff(cap=0.2, base=0.02), 1)
        return redis.RedisCluster.from_url(url or s.url, **kwargs)
    kwargs["retry"] = Retry(ExponentialBackoff(cap=0.2, base=0.02), retries)
    return redis.Redis.from_url(url or s.url, **kwargs)


def async_client(s: RedisSettings, *, url: str | None = None, blocking: bool = False) -> Any:
    """An asyncio client. ``blocking=True`` drops the socket timeout for connections that wait
    on purpose (pub/sub, blocking reads); they rely on keepalive and their own pings instead
    (``fanout/redis_nodes.py``: a PING unanswered within ``REDIS_TIMEOUT`` drops the
    connection)."""
    kwargs: dict[str, Any] = {
        "socket_timeout": None if blocking else s.socket_timeout,
        "socket_connect_timeout": s.connect_timeout,
        **keepalive_kwargs(s),
    }
    if s.cluster:
        return redis.asyncio.RedisCluster.from_url(url or s.url, **kwargs)
    # a blocking pool: past max_connections a command waits for a free connection instead of
    # failing at once with MaxConnectionsError (redis-py's default pool raises past 100, which
    # turned a reconnect storm of 300 SUBSCRIBEs with lastId into 200 "redis_unavailable")
    pool = redis.asyncio.BlockingConnectionPool.from_url(
        url or s.url, max_connections=100, timeout=s.socket_timeout + s.connect_timeout, **kwargs
    )
    return redis.asyncio.Redis.from_pool(pool)
