"""The real ``vski-realtime dev`` command as a user runs it, for the dev-stack and console tests.

:class:`DevStack` starts it on free ports (or exactly as the README says, ``python3 dev.py up``),
collects and parses what it prints, and stops it leaving no process behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devstack.ports import free_port, free_port_run
from tests.support import ROOT

BIN = Path(sys.executable).parent


def group_alive(pgid: int) -> bool:
    """Is any process of this process group still there?"""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class DevStack:
    """``vski-realtime dev`` as a child process, its output collected line by line."""

    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    state: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="vski-dev-")))
    proc: subprocess.Popen[str] | None = None
    lines: list[str] = field(default_factory=list)
    ingest_port: int = 0
    fanout_port: int = 0
    console_port: int = 0
    via_dev_py: bool = False  # start it exactly as the README says: python3 dev.py up
    _pids: dict[str, int] = field(default_factory=dict, repr=False)

    def command(self) -> list[str]:
        if self.via_dev_py:
            # dev.py reuses this virtualenv (VSKI_VENV) and execs `vski-realtime dev`
            return [
                sys.executable,
                str(ROOT / "dev.py"),
                "up",
                "--state-dir",
                str(self.state),
                *self.args,
            ]
        return [str(BIN / "vski-realtime"), "--state-dir", str(self.state), "dev", *self.args]

    def start(self, timeout: float = 90) -> DevStack:
        self.fanout_port = free_port_run(2)
        self.ingest_port = free_port()
        self.console_port = free_port()
        self.args = [
            "--ingest-port",
            str(self.ingest_port),
            "--fanout-port",
            str(self.fanout_port),
            "--console-port",
            str(self.console_port),
            *self.args,
        ]
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("REDIS_URL", "JWT_SECRET", "PROMETHEUS_MULTIPROC_DIR")
        }
        env.update(self.env)
        env["PYTHONUNBUFFERED"] = "1"
        if self.via_dev_py:
            env["VSKI_VENV"] = sys.prefix
        self.proc = subprocess.Popen(
            self.command(),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(line.startswith("Ctrl-C stops everything") for line in self.lines):
                return self
            if self.proc.poll() is not None:
                time.sleep(0.3)
                raise RuntimeError(f"vski-realtime dev exited:\n{self.output()}")
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"vski-realtime dev not up after {timeout}s:\n{self.output()}")

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def output(self) -> str:
        return "\n".join(self.lines[-200:])

    def printed(self, pattern: str) -> str:
        """The first printed line (stripped) matching the regex."""
        rx = re.compile(pattern)
        for line in self.lines:
            if rx.search(line.strip()):
                return line.strip()
        raise AssertionError(f"no line matches {pattern!r} in:\n{self.output()}")

    @property
    def token(self) -> str:
        i = next(i for i, line in enumerate(self.lines) if line.startswith("Development token"))
        return self.lines[i + 1].strip()

    def info(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.state / "stack.json").read_text())
        return data

    @property
    def console_url(self) -> str:
        return f"http://127.0.0.1:{self.console_port}"

    def stop(self, sig: int = signal.SIGINT, timeout: float = 40) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        return self.proc.returncode

    def __enter__(self) -> DevStack:
        """Start it; on exit stop it and every process it reported (see :meth:`cleanup`)."""
        self.start()
        self._pids = self.info()["pids"]
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup(self._pids)

    def cleanup(self, pids: dict[str, int] | None = None, *, keep_state: bool = False) -> None:
        """Never leave anything behind, even when a test failed half-way."""
        self.stop()
        for pid in (pids or {}).values():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        if not keep_state:
            shutil.rmtree(self.state, ignore_errors=True)


def http_json(url: str, body: dict[str, Any] | None = None, timeout: float = 10) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())
