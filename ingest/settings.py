"""Ingest settings (``INGEST_*``) on top of the shared ones."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from common.config import CommonSettings, ConfigError, _Env, load_common


@dataclass(frozen=True)
class IngestSettings:
    common: CommonSettings
    bind: str = "0.0.0.0:8000"
    workers: int = 4
    timeout: int = 30
    graceful_timeout: int = 20
    keepalive: int = 5
    max_body_bytes: int = 1_048_576
    require_auth: bool = True
    dedupe_ttl_ms: int = 3_600_000
    wait_replicas: int = 0
    wait_timeout_ms: int = 100
    rate_limit: float = 0.0  # webhooks/s per sender IP per worker; 0 = off
    rate_burst: int = 0


def load_ingest(env: Mapping[str, str] | None = None) -> IngestSettings:
    env = os.environ if env is None else env
    e = _Env(env)
    require_auth = e.bool("INGEST_REQUIRE_AUTH", True)
    common = load_common(env, require_secret=require_auth)
    bind = e.str("INGEST_BIND", "0.0.0.0:8000")
    if ":" not in bind and not bind.startswith("unix:"):
        raise ConfigError(f"INGEST_BIND={bind!r} must be host:port (e.g. 0.0.0.0:8000)")
    rate = e.float("INGEST_RATE_LIMIT", 0.0)
    return IngestSettings(
        common=common,
        bind=bind,
        workers=e.int("INGEST_WORKERS", 4, minimum=1),
        timeout=e.int("INGEST_TIMEOUT", 30, minimum=1),
        graceful_timeout=e.int("INGEST_GRACEFUL_TIMEOUT", 20, minimum=1),
        keepalive=e.int("INGEST_KEEPALIVE", 5, minimum=0),
        max_body_bytes=e.int("INGEST_MAX_BODY_BYTES", 1_048_576, minimum=256),
        require_auth=require_auth,
        dedupe_ttl_ms=int(
            e.float("DEDUPE_TTL_SECONDS", common.retention.max_age_ms / 1000, minimum=1) * 1000
        ),
        wait_replicas=e.int("INGEST_WAIT_REPLICAS", 0),
        wait_timeout_ms=e.int("INGEST_WAIT_TIMEOUT_MS", 100, minimum=1),
        rate_limit=rate,
        rate_burst=e.int("INGEST_RATE_BURST", max(1, int(rate * 2)), minimum=1),
    )
