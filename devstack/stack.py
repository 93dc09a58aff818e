"""The supervisor behind ``vski-realtime dev``: Redis, ingest (gunicorn), N fanout nodes, console.

Every child runs in its own session (process group), so a terminal's Ctrl-C reaches only this
supervisor, which then stops the children in order: fanout nodes drain, gunicorn stops its
workers, Redis flushes its append-only file last. On Linux each child also gets
``PR_SET_PDEATHSIG`` so that even a SIGKILLed supervisor leaves no orphans. Any child exiting on
its own stops the whole stack with a message naming it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from devstack.embedded_redis import EmbeddedRedis

PR_SET_PDEATHSIG = 1
_SIGTERM = int(signal.SIGTERM)
_prctl: Callable[..., int] | None = None
if sys.platform.startswith("linux"):
    with contextlib.suppress(OSError, AttributeError):
        _prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved now, not after fork


def _die_with_parent() -> None:  # runs in the child between fork and exec: no imports, no locks
    if _prctl is not None:
        _prctl(PR_SET_PDEATHSIG, _SIGTERM)


@dataclass
class Child:
    """One tier process; its output goes to ``log_path`` and, prefixed, to the terminal."""

    name: str
    args: list[str]
    env: dict[str, str]
    log_path: Path
    echo: IO[str] | None
    proc: subprocess.Popen[bytes] | None = None
    _pump: threading.Thread | None = field(default=None, repr=False)

    def start(self) -> Child:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            self.args,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        self._pump = threading.Thread(
            target=self._copy_output, name=f"log-{self.name}", daemon=True
        )
        self._pump.start()
        return self

    def _copy_output(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        prefix = f"{self.name:<9}| "
        with self.log_path.open("ab") as log:
            for line in self.proc.stdout:
                log.write(line)
                log.flush()
                if self.echo is not None:
                    with contextlib.suppress(ValueError, OSError):
                        self.echo.write(prefix + line.decode(errors="replace"))
                        self.echo.flush()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def exited(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def terminate(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)

    def wait_or_kill(self, timeout: float) -> None:
        """Wait for the child; then make sure nothing of its process group is left."""
        if self.proc is None:
            return
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        # gunicorn workers share the master's group; reap anything that outlived the master
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        if self._pump is not None:
            self._pump.join(2)

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def http_ok(url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


@dataclass
class StackOptions:
    state: Path
    host: str = "127.0.0.1"
    ingest_port: int = 8000
    ingest_workers: int = 2
    fanout_port: int = 8080
    fanout_nodes: int = 2
    fanout_processes: int = 1  # FANOUT_PROCESSES of each node: children sharing its port
    console_port: int = 8090
    redis_port: int = 0  # 0: a free port
    redis_url: str | None = None  # external Redis: no embedded server
    secret: str = ""
    policy: str | None = None  # REALTIME_POLICY for both tiers
    admin_key: str = ""  # REALTIME_ADMIN_KEY for ingest
    proxy_url: str | None = None  # REALTIME_SUBSCRIBE_PROXY_URL for the fanout nodes
    echo: IO[str] | None = None
    start_timeout: float = 60.0


class Stack:
    def __init__(self, opts: StackOptions) -> None:
        self.opts = opts
        self.redis: EmbeddedRedis | None = None
        self.redis_url = opts.redis_url or ""
        self.children: list[Child] = []
        self._stopping = False

    # -- addresses ------------------------------------------------------------------------------

    @property
    def public_host(self) -> str:
        return "127.0.0.1" if self.opts.host in ("0.0.0.0", "") else self.opts.host

    @property
    def ingest_url(self) -> str:
        return f"http://{self.public_host}:{self.opts.ingest_port}"

    @property
    def fanout_ports(self) -> list[int]:
        return [self.opts.fanout_port + i for i in range(self.opts.fanout_nodes)]

    @property
    def fanout_urls(self) -> list[str]:
        return [f"ws://{self.public_host}:{p}" for p in self.fanout_ports]

    # -- lifecycle ------------------------------------------------------------------------------

    def _env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "REDIS_URL": self.redis_url,
                "JWT_SECRET": self.opts.secret,
                "VSKI_DEV": "true",
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.setdefault("LOG_FORMAT", "console")
        env.setdefault("FANOUT_DRAIN_SECONDS", "2")  # quick Ctrl-C; production default is 10
        env.setdefault("INGEST_GRACEFUL_TIMEOUT", "5")
        if self.opts.policy:
            env["REALTIME_POLICY"] = self.opts.policy
        if self.opts.admin_key:
            env["REALTIME_ADMIN_KEY"] = self.opts.admin_key
        if self.opts.proxy_url:
            env["REALTIME_SUBSCRIBE_PROXY_URL"] = self.opts.proxy_url
        env.update(extra)
        return env

    def start(self) -> None:
        o = self.opts
        logs = o.state / "logs"
        if not self.redis_url:
            self.redis = EmbeddedRedis(o.state / "redis", port=o.redis_port, host="127.0.0.1")
            self.redis.start()
            self.redis_url = self.redis.url
        py = sys.executable
        self.children.append(
            Child(
                "ingest",
                [py, "-m", "ingest"],
                self._env(
                    INGEST_BIND=f"{o.host}:{o.ingest_port}", INGEST_WORKERS=str(o.ingest_workers)
                ),
                logs / "ingest.log",
                o.echo,
            ).start()
        )
        for i, port in enumerate(self.fanout_ports, 1):
            self.children.append(
                Child(
                    f"fanout-{i}",
                    [py, "-m", "fanout"],
                    self._env(
                        FANOUT_BIND=f"{o.host}:{port}", FANOUT_PROCESSES=str(o.fanout_processes)
                    ),
                    logs / f"fanout-{i}.log",
                    o.echo,
                ).start()
            )
        checks = [f"{self.ingest_url}/ready"] + [
            f"http://{self.public_host}:{p}/ready" for p in self.fanout_ports
        ]
        self._wait_ready(checks, o.start_timeout)

    def _wait_ready(self, urls: list[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        pending = list(urls)
        while pending:
            self.check_children()
            pending = [u for u in pending if not http_ok(u)]
            if not pending:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"not ready after {timeout:.0f}s: {', '.join(pending)}")
            time.sleep(0.2)

    def check_children(self) -> None:
        """Raise if a child exited on its own, with the end of its log."""
        for child in self.children:
            rc = child.exited()
            if rc is not None:
                raise RuntimeError(
                    f"{child.name} exited with code {rc}; last lines of {child.log_path}:\n"
                    f"{child.tail()}"
                )
        if self.redis is not None and self.redis.proc is not None:
            rc = self.redis.proc.poll()
            if rc is not None:
                raise RuntimeError(f"redis-server exited with code {rc}; see its server.log")

    def pids(self) -> dict[str, int]:
        out = {c.name: c.pid for c in self.children if c.pid}
        if self.redis is not None and self.redis.proc is not None:
            out["redis"] = self.redis.proc.pid
        return {k: v for k, v in out.items() if v is not None}

    def run_until_stopped(
        self,
        stop: threading.Event,
        on_tick: Callable[[], None] | None = None,
    ) -> None:
        while not stop.wait(0.5):
            self.check_children()
            if on_tick is not None:
                on_tick()

    def stop(self) -> None:
        """Fanout and ingest first (concurrently: SIGTERM, graceful), Redis last."""
        if self._stopping:
            return
        self._stopping = True
        for child in self.children:
            child.terminate()
        for child in self.children:
            child.wait_or_kill(timeout=15)
        if self.redis is not None:
            self.redis.stop()
