"""Ingest settings are checked at start, with messages that say what to set (the command's exit
status and message when they are wrong: e2e/test_ingest_startup.py)."""

from __future__ import annotations

import pytest

from common.config import ConfigError
from ingest.settings import load_ingest

BASE = {"JWT_SECRET": "s3cret"}


def test_defaults() -> None:
    s = load_ingest(BASE)
    assert (s.bind, s.workers, s.worker_class, s.threads) == ("0.0.0.0:8000", 4, "sync", 1)
    assert s.require_auth is True and s.max_body_bytes == 1_048_576
    assert s.dedupe_ttl_ms == 3_600_000 and s.wait_replicas == 0 and s.rate_limit == 0
    assert s.control_socket is None


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("INGEST_WORKERS", "abc"),
        ("INGEST_WORKERS", "0"),
        ("INGEST_WORKERS", "-2"),
        ("INGEST_BIND", "8000"),
        ("INGEST_BIND", "host:port"),
        ("INGEST_BIND", "h:70000"),
        ("INGEST_WORKER_CLASS", "gevent"),
        ("INGEST_THREADS", "0"),
        ("INGEST_MAX_BODY_BYTES", "10"),
        ("INGEST_REQUIRE_AUTH", "perhaps"),
        ("INGEST_TIMEOUT", "0"),
        ("INGEST_RATE_LIMIT", "fast"),
        ("INGEST_WAIT_TIMEOUT_MS", "0"),
        ("DEDUPE_TTL_SECONDS", "0"),
    ],
)
def test_bad_values_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        load_ingest({**BASE, name: value})


def test_missing_secret_names_jwt_secret() -> None:
    with pytest.raises(ConfigError, match="JWT_SECRET"):
        load_ingest({})


def test_auth_can_be_relaxed_without_secret() -> None:
    s = load_ingest({"INGEST_REQUIRE_AUTH": "false"})
    assert s.require_auth is False and s.common.jwt.secrets == ()


def test_values_are_parsed() -> None:
    s = load_ingest(
        {
            **BASE,
            "INGEST_WORKER_CLASS": "gthread",
            "INGEST_BIND": "127.0.0.1:9000",
            "INGEST_RATE_LIMIT": "5",
            "RETENTION_SECONDS": "60",
            "INGEST_WAIT_REPLICAS": "1",
        }
    )
    assert s.worker_class == "gthread" and s.threads == 4 and s.bind == "127.0.0.1:9000"
    assert s.rate_limit == 5 and s.rate_burst == 10
    assert s.dedupe_ttl_ms == 60_000 and s.wait_replicas == 1
    assert load_ingest({**BASE, "INGEST_BIND": "unix:/tmp/x.sock"}).bind == "unix:/tmp/x.sock"
