"""Ingest settings (``INGEST_*``) on top of the shared ones, validated once at start."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from common.config import CommonSettings, ConfigError, Env, load_common
from common.registry import RegistrySettings, load_registry

WORKER_CLASSES = ("sync", "gthread")
# set by the gunicorn master for its workers: the policy text it validated (gunicorn_conf.py)
POLICY_SNAPSHOT_ENV = "VSKI_INGEST_POLICY_SNAPSHOT"


@dataclass(frozen=True)
class IngestSettings:
    common: CommonSettings
    bind: str = "0.0.0.0:8000"
    workers: int = 4
    worker_class: str = "sync"
    threads: int = 1
    timeout: int = 30
    graceful_timeout: int = 20
    keepalive: int = 5
    max_body_bytes: int = 1_048_576
    require_auth: bool = True
    dedupe_ttl_ms: int = 3_600_000
    wait_replicas: int = 0
    wait_timeout_ms: int = 100
    breaker_probe_seconds: float = 1.0  # while Redis is unreachable: PING this often
    slot_refresh_seconds: float = 1.0  # Redis Cluster: at most one slot-map refresh this often
    rate_limit: float = 0.0  # webhooks/s per sender IP per worker; 0 = off
    rate_burst: int = 1
    trusted_proxies: frozenset[str] = frozenset()  # peers whose X-Forwarded-For is believed
    control_socket: str | None = None  # gunicorn's control socket; None = disabled
    admin_key: str | None = field(default=None, repr=False)  # REALTIME_ADMIN_KEY: /admin/*
    registry: RegistrySettings = field(default_factory=RegistrySettings)  # REGISTRY_*


def load_ingest(env: Mapping[str, str] | None = None) -> IngestSettings:
    """Read and check every ``INGEST_*`` setting; raise ConfigError naming the variable."""
    env = os.environ if env is None else env
    e = Env(env)
    require_auth = e.bool("INGEST_REQUIRE_AUTH", True)
    common = load_common(env, require_secret=require_auth)
    bind = e.bind("INGEST_BIND", "0.0.0.0:8000", unix=True)
    worker_class = e.str("INGEST_WORKER_CLASS", "sync").lower()
    if worker_class not in WORKER_CLASSES:
        raise ConfigError(
            f"INGEST_WORKER_CLASS={worker_class!r} must be one of {', '.join(WORKER_CLASSES)}"
        )
    threads = e.int("INGEST_THREADS", 4 if worker_class == "gthread" else 1, minimum=1)
    rate = e.float("INGEST_RATE_LIMIT", 0.0)
    wait_replicas = e.int("INGEST_WAIT_REPLICAS", 0)
    timeout = e.int("INGEST_TIMEOUT", 30, minimum=1)
    return IngestSettings(
        common=common,
        bind=bind,
        workers=e.int("INGEST_WORKERS", 4, minimum=1),
        worker_class=worker_class,
        threads=threads,
        timeout=timeout,
        graceful_timeout=e.int("INGEST_GRACEFUL_TIMEOUT", 20, minimum=1),
        keepalive=e.int("INGEST_KEEPALIVE", 5, minimum=0),
        max_body_bytes=e.int("INGEST_MAX_BODY_BYTES", 1_048_576, minimum=256),
        require_auth=require_auth,
        dedupe_ttl_ms=int(
            e.float("DEDUPE_TTL_SECONDS", common.retention.max_age_ms / 1000, minimum=1) * 1000
        ),
        wait_replicas=wait_replicas,
        wait_timeout_ms=e.int("INGEST_WAIT_TIMEOUT_MS", 100, minimum=1),
        breaker_probe_seconds=e.float("INGEST_BREAKER_PROBE_SECONDS", 1.0, minimum=0.05),
        slot_refresh_seconds=e.float("INGEST_SLOT_REFRESH_SECONDS", 1.0, minimum=0.01),
        rate_limit=rate,
        rate_burst=e.int("INGEST_RATE_BURST", max(1, int(rate * 2)), minimum=1),
        trusted_proxies=frozenset(e.list("INGEST_TRUSTED_PROXIES")),
        control_socket=e.opt("INGEST_CONTROL_SOCKET"),
        admin_key=e.opt("REALTIME_ADMIN_KEY"),
        registry=load_registry(env),
    )
