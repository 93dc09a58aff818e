"""gunicorn configuration of the ingest tier, every value from the environment (INGEST_*).

``vski-ingest`` passes this file to gunicorn; settings were already validated by
:func:`ingest.settings.load_ingest` so a bad value stops the start with a clear message.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import Any

from gunicorn import util as _gunicorn_util

from common.config import ConfigError
from common.errors import code_for, error_json
from common.logs import get_logger, setup_logging
from common.policy import PolicyError
from common.policy_source import PolicySource, policy_path
from ingest.settings import POLICY_SNAPSHOT_ENV, load_ingest

try:
    _s = load_ingest()
    _policy = PolicySource(policy_path(), tier="ingest")
except (ConfigError, PolicyError) as _exc:  # pragma: no cover - printed by gunicorn at start
    raise SystemExit(f"vski-ingest: configuration error: {_exc}") from None

# The policy is read by the master, at start and on SIGHUP, and handed to the workers it forks
# as a snapshot of the text it validated: a bad file on SIGHUP then keeps the old policy
# (gunicorn's HUP restarts the workers, which would otherwise read the bad file and fail to
# boot, taking the whole server down).
_policy_dir = tempfile.mkdtemp(prefix="vski-ingest-policy-")


def _snapshot_policy() -> None:
    if _policy.policy.is_open:
        os.environ.pop(POLICY_SNAPSHOT_ENV, None)
        return
    fd, path = tempfile.mkstemp(dir=_policy_dir, suffix=".toml")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(_policy.text)
    old = os.environ.get(POLICY_SNAPSHOT_ENV)
    os.environ[POLICY_SNAPSHOT_ENV] = path
    if old and old.startswith(_policy_dir):
        with contextlib.suppress(OSError):
            os.unlink(old)


_snapshot_policy()

bind = [_s.bind]
workers = _s.workers
# gthread: our subclass, whose threads a stalled sender cannot hold forever (ingest/workers.py)
worker_class = "ingest.workers.GuardedThreadWorker" if _s.worker_class == "gthread" else "sync"
threads = _s.threads
timeout = _s.timeout
graceful_timeout = _s.graceful_timeout
keepalive = _s.keepalive
limit_request_line = 8190
limit_request_fields = 100
limit_request_field_size = 16384
accesslog = None
errorlog = "-"
loglevel = _s.common.log_level
proc_name = "vski-ingest"
# gunicorn 25+ opens a control socket at one fixed path per user by default, which several
# instances on one host would fight over: off unless INGEST_CONTROL_SOCKET names a path
if _s.control_socket:
    control_socket = _s.control_socket
else:
    control_socket_disable = True

# Prometheus multiprocess mode: each worker writes samples here, /metrics sums them.
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="vski-ingest-metrics-")
    _owned_metrics_dir: str | None = os.environ["PROMETHEUS_MULTIPROC_DIR"]
else:
    _owned_metrics_dir = None


def _json_write_error(sock: Any, status_int: int, reason: str, mesg: str) -> None:
    """gunicorn refuses malformed HTTP (bad request line, bad Content-Length, oversized headers)
    before the app runs; answer those in the same JSON shape as the app, not gunicorn's HTML."""
    body = error_json(code_for(reason, "bad_request"), f"malformed HTTP request: {mesg}"[:300])
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    _gunicorn_util.write_nonblock(sock, head.encode("latin1") + body)


_gunicorn_util.write_error = _json_write_error  # workers are forked after this module ran


def on_starting(server: Any) -> None:
    setup_logging(_s.common.log_format, _s.common.log_level)
    log = get_logger("ingest")
    log.info(
        "ingest_starting",
        bind=_s.bind,
        workers=_s.workers,
        worker_class=_s.worker_class,
        threads=_s.threads,
        wait_replicas=_s.wait_replicas,
    )
    _policy.announce()
    if not _policy.policy.has_webhooks:
        log.warning(
            "webhooks_open",
            message="the policy has no [webhooks] section: any valid token (a VSKI user's too) "
            "may post webhooks; restrict senders with [webhooks] sender/networks",
        )
    elif _policy.policy.sender_is_open:
        log.warning("webhooks_sender_open", message="[webhooks] has no sender rule")
    if not _s.require_auth:
        log.warning(
            "auth_disabled",
            message="INGEST_REQUIRE_AUTH=false: webhooks are accepted WITHOUT a token; "
            "never run this in production",
        )


def when_ready(server: Any) -> None:
    """The master registers the instance for the operations view (ingest/registry.py)."""
    from ingest import registry

    registry.install(_s, server)


def child_exit(server: Any, worker: Any) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]


def on_reload(server: Any) -> None:
    """SIGHUP: read the policy again before gunicorn forks the new workers."""
    if _policy.reload():
        _snapshot_policy()


def on_exit(server: Any) -> None:
    from ingest import registry

    registry.uninstall()
    shutil.rmtree(_policy_dir, ignore_errors=True)
    if _owned_metrics_dir:
        shutil.rmtree(_owned_metrics_dir, ignore_errors=True)
