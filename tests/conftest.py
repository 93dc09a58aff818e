"""The vski-realtime test suite, laid out by kind (see ``tests/support/__init__.py`` for more).

    tests/unit/         pure: no process, no socket, no Redis; the whole folder runs in seconds
    tests/integration/  in-process code (hub, event store, group commands) on a real Redis
    tests/e2e/          the tiers as processes (gunicorn ingest, vski-fanout), nginx, headless
                        Chromium, the devstack CLI; ingest-HTTP, fanout and groups suites run
                        on both Redis backends (``redis_backend``)
    tests/reliability/  faults, abuse, fuzzing and soak: kills, freezes, floods, hostile input
    tests/cluster/      suites about Redis Cluster itself: failover, resharding, slot routing
    tests/support/      helpers and the pytest plugin (fixtures, options, markers): no tests
    tests/test_lint.py  ruff and mypy --strict over the whole tree

Everything: ``python3 dev.py test`` (what CI runs). The quick form, unit tests alone:
``python3 dev.py test tests/unit``. One kind: ``python3 dev.py test tests/e2e``; without the
cluster: ``-m "not cluster"``; the long variants: ``--run-slow``.
"""

from __future__ import annotations

pytest_plugins = ["tests.support.fixtures"]
