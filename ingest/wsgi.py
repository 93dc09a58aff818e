"""WSGI entry point for gunicorn: ``ingest.wsgi:app`` (settings read from the environment)."""

from __future__ import annotations

import os

from common.auth import TokenVerifier
from common.logs import get_logger, setup_logging
from common.policy import Policy, parse_policy
from common.policy_source import policy_path, read_policy
from common.redis_conn import sync_client
from ingest.activity import Activity, TrackedEventStore
from ingest.app import create_app
from ingest.settings import POLICY_SNAPSHOT_ENV, load_ingest


def _policy() -> Policy:
    """The policy the master validated (gunicorn_conf.py), else REALTIME_POLICY itself."""
    snapshot = os.environ.get(POLICY_SNAPSHOT_ENV)
    if snapshot:
        with open(snapshot, encoding="utf-8") as f:
            return parse_policy(f.read(), policy_path() or snapshot)
    return read_policy(policy_path())[0]


settings = load_ingest()
setup_logging(settings.common.log_format, settings.common.log_level)
# no client-level retries: DirectCaller retries a broken connection once, the breaker and
# the sender's retry handle the rest (a retry in a partition only doubles the wait)
_client = sync_client(settings.common.redis, retries=0)
_store = TrackedEventStore(
    _client,
    settings.common.retention,
    prefix=settings.common.redis.key_prefix,
    dedupe_ttl_ms=settings.dedupe_ttl_ms,
    wait_replicas=settings.wait_replicas,
    wait_timeout_ms=settings.wait_timeout_ms,
    probe_interval=settings.breaker_probe_seconds,
    slot_refresh_interval=settings.slot_refresh_seconds,
)
if settings.admin_key:  # the busiest collections of /admin/collections (ingest/activity.py)
    _store.activity = Activity(_client, settings.common.redis.key_prefix)
_verifier = TokenVerifier(settings.common.jwt) if settings.require_auth else None
app = create_app(settings, _store, _verifier, _policy())
get_logger("ingest").debug("worker_app_loaded")
