"""The Prometheus text a tier serves on ``/metrics``.

Where several processes serve one port (gunicorn workers, the children of a fanout supervisor)
each writes its samples to ``PROMETHEUS_MULTIPROC_DIR`` and whichever process answers returns
the sum over all of them; a single process serves its own registry.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    generate_latest,
    multiprocess,
)


def render() -> tuple[bytes, str]:
    """The metrics text and its content type."""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if path and os.path.isdir(path):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
