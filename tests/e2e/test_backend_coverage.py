"""The suites listed in ``BACKEND_SUITES`` still run on the Redis Cluster.

They do because their fixtures ask for ``redis_backend``; a suite that stops doing so (a fixture
rewritten to ``redis_mod``, a file renamed) would silently lose its cluster runs. The plugin
counts, before any ``-k``/``-m`` deselection, the test functions collected with the cluster
parameter; this test compares that with the least each suite must keep.
"""

from __future__ import annotations

import pytest

from tests.support import ROOT
from tests.support.backends import BACKEND_SUITES
from tests.support.fixtures import BACKEND_COVERAGE


def test_suites_run_on_the_cluster_too(request: pytest.FixtureRequest) -> None:
    coverage = request.config.stash[BACKEND_COVERAGE]
    checked = []
    for suite, least in sorted(BACKEND_SUITES.items()):
        assert (ROOT / suite).is_file(), f"{suite} is gone: update BACKEND_SUITES"
        if suite not in coverage:
            continue  # not collected in this run (a narrower selection of files)
        on_cluster = coverage[suite]
        assert len(on_cluster) >= least, (
            f"{suite}: only {len(on_cluster)} tests take redis_backend[cluster]: "
            f"{sorted(on_cluster)}"
        )
        checked.append(suite)
    if not checked:
        pytest.skip("none of the suites that run on both backends is collected in this run")
