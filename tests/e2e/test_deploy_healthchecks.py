"""The exact health-check commands of deploy/compose (compose.yaml and the Dockerfile) succeed
against the real tiers, and fail when nothing answers (so they can catch a dead tier).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.support.deploy_files import dockerfile_targets, load
from tests.support.procs import Proc, fanout_proc, ingest_proc
from tests.support.redis_server import RedisServer

yaml = pytest.importorskip("yaml", reason="PyYAML is a test extra (pip install -e .[test])")


@pytest.fixture(scope="module")
def tiers(redis_mod: RedisServer) -> Iterator[dict[str, Proc]]:
    procs = {
        "ingest": ingest_proc(redis_mod.url, workers=1).start(),
        "fanout": fanout_proc(redis_mod.url).start(),
    }
    try:
        yield procs
    finally:
        for p in procs.values():
            p.stop()


def _run_check(cmd: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    assert cmd[0] == "CMD"
    argv = [sys.executable if cmd[1] == "python" else cmd[1], *cmd[2:]]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("tier", ["ingest", "fanout"])
def test_the_health_check_commands_pass_against_the_real_tier(
    tier: str, tiers: dict[str, Proc]
) -> None:
    proc = tiers[tier]
    env = {**os.environ, f"{tier.upper()}_BIND": f"127.0.0.1:{proc.port}"}
    compose_cmd = load("compose.yaml")["services"][tier]["healthcheck"]["test"]
    ok = _run_check(compose_cmd, env)
    assert ok.returncode == 0, ok.stderr
    body = dockerfile_targets()[tier]
    m = re.search(r"HEALTHCHECK[^\n]*\\\n\s*CMD (\[.*\])", body)
    assert m, "HEALTHCHECK CMD not found"
    docker_cmd = ["CMD", *yaml.safe_load(m.group(1))]
    assert _run_check(docker_cmd, env).returncode == 0
    # and it fails when nothing answers there (so it can catch a dead tier)
    dead = {**env, f"{tier.upper()}_BIND": "127.0.0.1:9"}
    assert _run_check(compose_cmd, dead).returncode != 0
