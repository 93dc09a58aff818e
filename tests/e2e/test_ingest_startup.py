"""``vski-ingest`` refuses to start on bad settings: exit status 2 and a message naming the
variable, no traceback (the settings themselves: unit/test_ingest_config.py)."""

from __future__ import annotations

import subprocess

import pytest

from tests.support.procs import BIN, base_env


@pytest.mark.parametrize(
    ("env", "needle"),
    [({"JWT_SECRET": ""}, "JWT_SECRET"), ({"INGEST_WORKERS": "many"}, "INGEST_WORKERS")],
)
def test_vski_ingest_exits_2_with_the_message(env: dict[str, str], needle: str) -> None:
    full = base_env("redis://127.0.0.1:1/0", INGEST_BIND="127.0.0.1:1", **env)
    done = subprocess.run(
        [str(BIN / "vski-ingest")], env=full, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert needle in done.stderr and "configuration error" in done.stderr
    assert "Traceback" not in done.stderr
