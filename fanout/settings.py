"""Fanout node settings (``FANOUT_*``) on top of the shared ones.

Every limit that protects the node from one client (frame size, subscriptions, message rate,
buffered bytes) or protects the machine (connections, drain time) is here, with its default.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from common.config import CommonSettings, ConfigError, Env, load_common
from common.registry import RegistrySettings, load_registry


@dataclass(frozen=True)
class FanoutSettings:
    common: CommonSettings
    bind: str = "0.0.0.0:8080"
    max_frame_bytes: int = 64 * 1024
    max_subscriptions: int = 100
    client_rate: float = 50.0  # client messages/s per connection (token bucket refill)
    client_burst: int = 200  # bucket size: the SDK sends one SUBSCRIBE per collection on open
    max_connections: int = 20_000
    max_buffer_bytes: int = 1024 * 1024  # send buffer per connection before 4008 slow consumer
    slow_close_seconds: float = 1.0  # how long a slow consumer's close may take before abort
    ping_interval: float | None = 20.0
    ping_timeout: float | None = 20.0
    redis_ping_interval: float = 5.0  # silence on a pub/sub connection before a PING
    compression: str | None = None  # None or "deflate"
    drain_seconds: float = 10.0
    expiry_grace_seconds: float = 0.0  # connections close at token exp + this
    open_timeout: float = 10.0
    replay_page: int = 500  # events per XRANGE page and per replay frame
    max_frame_events: int = 100  # live events batched into one frame
    group_max_inflight: int = 10  # consumer groups: unacked events one member may hold
    group_visibility_seconds: float = 30.0  # unacked this long: redelivered to another member
    group_reclaim_seconds: float = 0.0  # reclaim/housekeeping pass period (0: derived)
    proxy_url: str | None = None  # REALTIME_SUBSCRIBE_PROXY_URL: the subscribe proxy
    proxy_timeout: float = 1.0  # seconds, REALTIME_SUBSCRIBE_PROXY_TIMEOUT_MS / 1000
    proxy_max_inflight: int = 64  # proxy requests in flight per node
    registry: RegistrySettings = field(default_factory=RegistrySettings)  # REGISTRY_*
    processes: int = 1  # FANOUT_PROCESSES: full nodes sharing FANOUT_BIND (docs/processes.md)
    restart_max_seconds: float = 5.0  # longest wait before a crashed child is started again
    restart_reset_seconds: float = 30.0  # a child that lived this long restarts at once
    pin_children: bool = False  # child i runs only on usable core i (mod the count)

    @property
    def host(self) -> str:
        return self.bind.rpartition(":")[0] or "0.0.0.0"

    @property
    def port(self) -> int:
        return int(self.bind.rpartition(":")[2])


def _optional_seconds(e: Env, name: str, default: float) -> float | None:
    """A keepalive setting where 0 means off."""
    value = e.float(name, default)
    return value or None


def load_fanout(env: Mapping[str, str] | None = None) -> FanoutSettings:
    env = os.environ if env is None else env
    e = Env(env)
    common = load_common(env)
    bind = e.bind("FANOUT_BIND", "0.0.0.0:8080")
    compression = e.str("FANOUT_COMPRESSION", "none").lower()
    if compression not in ("none", "off", "deflate"):
        raise ConfigError(
            f"FANOUT_COMPRESSION={compression!r} must be none or deflate "
            "(deflate costs ~3x CPU per client and ~33 KB per connection)"
        )
    rate = e.float("FANOUT_CLIENT_RATE", 50.0, minimum=0.1)
    return FanoutSettings(
        common=common,
        bind=bind,
        max_frame_bytes=e.int("FANOUT_MAX_FRAME_BYTES", 64 * 1024, minimum=1024),
        max_subscriptions=e.int("FANOUT_MAX_SUBSCRIPTIONS", 100, minimum=1),
        client_rate=rate,
        client_burst=e.int("FANOUT_CLIENT_BURST", max(200, int(rate * 4)), minimum=1),
        max_connections=e.int("FANOUT_MAX_CONNECTIONS", 20_000, minimum=1),
        max_buffer_bytes=e.int("FANOUT_MAX_BUFFER_BYTES", 1024 * 1024, minimum=16 * 1024),
        slow_close_seconds=e.float("FANOUT_SLOW_CLOSE_SECONDS", 1.0, minimum=0.01),
        ping_interval=_optional_seconds(e, "FANOUT_PING_INTERVAL", 20.0),
        ping_timeout=_optional_seconds(e, "FANOUT_PING_TIMEOUT", 20.0),
        redis_ping_interval=e.float("FANOUT_REDIS_PING_INTERVAL", 5.0, minimum=0.1),
        compression="deflate" if compression == "deflate" else None,
        drain_seconds=e.float("FANOUT_DRAIN_SECONDS", 10.0, minimum=0.1),
        expiry_grace_seconds=e.float("FANOUT_EXPIRY_GRACE_SECONDS", 0.0),
        open_timeout=e.float("FANOUT_OPEN_TIMEOUT", 10.0, minimum=0.1),
        replay_page=e.int("FANOUT_REPLAY_PAGE", 500, minimum=1),
        max_frame_events=e.int("FANOUT_MAX_FRAME_EVENTS", 100, minimum=1),
        group_max_inflight=e.int("FANOUT_GROUP_MAX_INFLIGHT", 10, minimum=1),
        group_visibility_seconds=e.float("FANOUT_GROUP_VISIBILITY_SECONDS", 30.0, minimum=0.1),
        group_reclaim_seconds=e.float("FANOUT_GROUP_RECLAIM_SECONDS", 0.0),
        proxy_url=_proxy_url(e),
        proxy_timeout=e.int("REALTIME_SUBSCRIBE_PROXY_TIMEOUT_MS", 1000, minimum=10) / 1000,
        proxy_max_inflight=e.int("FANOUT_PROXY_MAX_INFLIGHT", 64, minimum=1),
        registry=load_registry(env),
        processes=parse_processes(e.str("FANOUT_PROCESSES", "1")),
        restart_max_seconds=e.float("FANOUT_RESTART_MAX_SECONDS", 5.0, minimum=0.1),
        restart_reset_seconds=e.float("FANOUT_RESTART_RESET_SECONDS", 30.0, minimum=0.1),
        pin_children=e.bool("FANOUT_PIN_CHILDREN", False),
    )


MAX_PROCESSES = 256


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, e.g. under ``taskset`` or a
    container's cpuset), not the host's count."""
    return len(os.sched_getaffinity(0))


def parse_processes(raw: str, cores: int | None = None) -> int:
    """``FANOUT_PROCESSES`` / ``--processes``: a count, or ``auto`` for the usable cores."""
    text = raw.strip().lower()
    if text == "auto":
        return max(1, min(MAX_PROCESSES, usable_cores() if cores is None else cores))
    try:
        count = int(text)
    except ValueError:
        raise ConfigError(
            f"FANOUT_PROCESSES={raw!r} must be a whole number or auto (the usable cores)"
        ) from None
    if not 1 <= count <= MAX_PROCESSES:
        raise ConfigError(f"FANOUT_PROCESSES={count} must be between 1 and {MAX_PROCESSES}")
    return count


def _proxy_url(e: Env) -> str | None:
    url = e.opt("REALTIME_SUBSCRIBE_PROXY_URL")
    if url is not None and not url.startswith(("http://", "https://")):
        raise ConfigError(f"REALTIME_SUBSCRIBE_PROXY_URL={url!r} must be an http(s):// URL")
    return url
