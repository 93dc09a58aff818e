"""Start real ``redis-server`` processes on free ports (no fakes: Redis behaviour is under test)."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import redis

from tests.support.ports import free_port, wait_port


@dataclass
class RedisServer:
    port: int
    dir: Path
    extra: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not on PATH: install Redis 7 to run the tests")
        self.dir.mkdir(parents=True, exist_ok=True)
        args = [
            binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.dir),
            "--protected-mode",
            "no",
            *self.extra,
        ]
        self.proc = subprocess.Popen(
            args, stdout=(self.dir / "redis.log").open("ab"), stderr=subprocess.STDOUT
        )
        wait_port(self.port)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(redis.RedisError):
                if self.client().ping():
                    return self
            time.sleep(0.05)
        raise TimeoutError(f"redis-server on {self.port} did not answer PING")

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=5)

    def stop(self, *, kill: bool = False) -> None:
        if self.proc is None:
            return
        if kill:
            self.proc.kill()
        else:
            self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None

    def restart(self) -> None:
        """Stop and start on the same port; without persistence the data is gone."""
        self.stop()
        self.start()


@contextlib.contextmanager
def redis_server(*extra: str) -> Iterator[RedisServer]:
    tmp = Path(tempfile.mkdtemp(prefix="vski-redis-"))
    server = RedisServer(free_port(), tmp, list(extra)).start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def primary_with_replica() -> Iterator[tuple[RedisServer, RedisServer]]:
    """A primary and a read-only replica of it (a 'regional' Redis)."""
    with redis_server() as primary:
        tmp = Path(tempfile.mkdtemp(prefix="vski-replica-"))
        replica = RedisServer(
            free_port(), tmp, ["--replicaof", "127.0.0.1", str(primary.port)]
        ).start()
        try:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                info = replica.client().info("replication")
                if info.get("master_link_status") == "up":
                    break
                time.sleep(0.05)
            yield primary, replica
        finally:
            replica.stop()
            shutil.rmtree(tmp, ignore_errors=True)
