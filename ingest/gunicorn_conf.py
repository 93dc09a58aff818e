"""gunicorn configuration of the ingest tier, every value from the environment (INGEST_*)."""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

from common.config import ConfigError
from ingest.settings import load_ingest

try:
    _s = load_ingest()
except ConfigError as _exc:  # pragma: no cover - printed by gunicorn at start
    raise SystemExit(f"vski-ingest: configuration error: {_exc}") from None

bind = [_s.bind]
workers = _s.workers
worker_class = "sync"
timeout = _s.timeout
graceful_timeout = _s.graceful_timeout
keepalive = _s.keepalive
limit_request_line = 8190
limit_request_fields = 100
accesslog = None
errorlog = "-"
loglevel = _s.common.log_level
proc_name = "vski-ingest"

# Prometheus multiprocess mode: each worker writes samples here, /metrics sums them.
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="vski-ingest-metrics-")
    _owned_metrics_dir: str | None = os.environ["PROMETHEUS_MULTIPROC_DIR"]
else:
    _owned_metrics_dir = None


def on_starting(server: Any) -> None:
    if _s.common.dev_mode and not _s.require_auth:
        server.log.warning("INGEST_REQUIRE_AUTH=false: webhooks are accepted WITHOUT a token")
    elif not _s.require_auth:
        server.log.warning(
            "INGEST_REQUIRE_AUTH=false: webhooks are accepted WITHOUT a token; "
            "do not run this in production"
        )


def child_exit(server: Any, worker: Any) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]


def on_exit(server: Any) -> None:
    if _owned_metrics_dir:
        shutil.rmtree(_owned_metrics_dir, ignore_errors=True)
