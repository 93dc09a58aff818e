"""Test support: helpers and the pytest plugin of the suite (nothing here is collected as tests).

Layout by kind (``tests/conftest.py`` has the table): ``unit`` (pure, seconds), ``integration``
(in-process code on a real Redis), ``e2e`` (tiers as processes, nginx, browser, devstack CLI),
``reliability`` (faults, abuse, fuzz, soak), ``cluster`` (Redis Cluster itself). Quick form:
``python3 dev.py test tests/unit``; everything: ``python3 dev.py test``.

Running a suite on both Redis backends
    Ask for the ``redis_backend`` fixture (module scope) instead of ``redis_mod``: each test then
    runs on a standalone redis-server and, as ``[cluster]`` (marked ``cluster``), on the
    session's 3-master/3-replica Redis Cluster, which starts once per run. Start tiers with
    ``ingest_proc(redis_backend)`` / ``fanout_proc(redis_backend, ...)`` (they get
    ``REDIS_CLUSTER=true`` on the cluster) and assert with ``redis_backend.client()``; keep
    collection names unique per test, since the cluster is shared by the run. A test that stops
    or restarts its Redis asks for ``redis_srv`` and runs standalone only. List the suite in
    ``backends.BACKEND_SUITES`` so that losing its cluster runs fails a test::

        @pytest.fixture(scope="module")
        def ingest(redis_backend: RedisTarget) -> Iterator[Proc]:
            proc = ingest_proc(redis_backend, workers=2).start()
            ...

Modules
    ``fixtures``      the plugin: ``redis_srv``, ``redis_mod``, ``redis_cluster_session``,
                      ``redis_backend``; ``--run-slow``; the ``cluster`` marker on every test
                      that uses the cluster
    ``backends``      ``RedisTarget`` (what a suite uses of a Redis), ``ClusterBackend``, and
                      ``BACKEND_SUITES`` (the suites that must run on both backends)
    ``redis_server``  standalone servers; ``redis_cluster`` the cluster and its fault helpers;
                      both over ``devstack.redis_process.RedisProcess``, the project's one
                      launcher (free ports and waiting for one: ``devstack.ports``)
    ``procs``         ``vski-ingest`` / ``vski-fanout`` as processes
    ``stack``         ``stack_on``: ingest + N fanout nodes on any ``RedisTarget``
    ``ingest_http``   HTTP client of ingest: requests, webhook bodies, stalled senders,
                      ``Poster`` / ``BackgroundPoster`` (a VSKI trigger's load)
    ``ws_client``     an SDK-like WebSocket subscriber (``Client``) and ``settle``
    ``groups``        consumer-group members (``GroupClient``) and their ``Ledger``
    ``chaos``         load, resuming clients and result rows of the reliability suites
    ``dev_stack``     ``vski-realtime dev`` as a child process
    ``ops``           the operations view's suites: admin key, admin API reads, fast heartbeats
    ``browser``       headless system Chromium through playwright (``chromium_page``)
    ``deploy_files``  deploy/compose files as data
    ``tokens``        JWTs signed with the tests' secret
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository
