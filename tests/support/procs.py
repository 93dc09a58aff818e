"""Run the real tiers as processes: ``vski-ingest`` (gunicorn) and ``vski-fanout``.

``ingest_proc`` and ``fanout_proc`` take a Redis URL, or a
:class:`~tests.support.backends.RedisTarget` (a ``redis_backend``, ``redis_srv``...): then the
tier also gets what that topology needs (``REDIS_CLUSTER=true`` for a cluster).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from devstack.ports import free_port, wait_port
from tests.support.backends import RedisTarget
from tests.support.tokens import SECRET

BIN = Path(sys.executable).parent


def base_env(redis: str | RedisTarget, **extra: str) -> dict[str, str]:
    """The environment of a tier process: this one's, pointed at ``redis``, with the tests'
    JWT secret and JSON logs; ``extra`` wins over all of it."""
    env = dict(os.environ)
    env.update(
        {
            "REDIS_URL": redis if isinstance(redis, str) else redis.url,
            "JWT_SECRET": SECRET,
            "LOG_FORMAT": "json",
            "LOG_LEVEL": "info",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    if not isinstance(redis, str):
        env.update(redis.tier_env)
    env.update(extra)
    return env


@dataclass
class Proc:
    name: str
    args: list[str]
    env: dict[str, str]
    port: int
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path = field(default_factory=lambda: Path(tempfile.mktemp(suffix=".log")))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20) -> Proc:
        self.proc = subprocess.Popen(
            self.args,
            env=self.env,
            stdout=self.log_path.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_port(self.port, timeout)
        except TimeoutError:
            raise RuntimeError(f"{self.name} did not start:\n{self.log()}") from None
        return self

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-5000:]
        except FileNotFoundError:
            return ""

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig) if sig == signal.SIGKILL else self.proc.send_signal(sig)

    def stop(self, timeout: float = 15) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        rc = self.proc.returncode
        self.proc = None
        return rc

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def ingest_proc(redis: str | RedisTarget, workers: int = 2, **extra: str) -> Proc:
    port = free_port()
    env = base_env(redis, INGEST_BIND=f"127.0.0.1:{port}", INGEST_WORKERS=str(workers), **extra)
    return Proc("ingest", [str(BIN / "vski-ingest")], env, port)


def fanout_proc(redis: str | RedisTarget, **extra: str) -> Proc:
    port = free_port()
    env = base_env(redis, FANOUT_BIND=f"127.0.0.1:{port}", **extra)
    return Proc("fanout", [str(BIN / "vski-fanout")], env, port)


def wait_until(predicate: object, timeout: float = 10.0, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(predicate) and predicate():
            return True
        time.sleep(interval)
    return False
