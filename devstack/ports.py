"""Free ports and waiting for a listener: the one copy used by the dev stack, tests and benches.

A port found free can be taken by someone else before it is bound again; callers that must be
sure (a Redis Cluster's node and bus ports) check right before they start and retry elsewhere.
"""

from __future__ import annotations

import socket
import subprocess
import time

LOCALHOST = "127.0.0.1"


def free_port(host: str = LOCALHOST) -> int:
    """A port nothing listens on now (the kernel's choice for an ephemeral bind)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_is_free(port: int, host: str = LOCALHOST) -> bool:
    """Can a server bind ``port`` on ``host`` right now? (SO_REUSEADDR, as servers bind: a port
    in TIME_WAIT after a restart counts as free.)"""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port_run(count: int, host: str = LOCALHOST, tries: int = 200) -> int:
    """The first of ``count`` consecutive free ports (the dev stack's fanout nodes take
    ``--fanout-port`` and the ports after it)."""
    for _ in range(tries):
        base = free_port(host)
        if base + count < 65535 and all(port_is_free(base + i, host) for i in range(count)):
            return base
    raise RuntimeError(f"no run of {count} free ports on {host}")


def wait_port(
    port: int,
    timeout: float = 15.0,
    host: str = LOCALHOST,
    proc: subprocess.Popen[bytes] | None = None,
) -> None:
    """Return once something accepts connections on ``host:port``; TimeoutError after
    ``timeout`` seconds, RuntimeError at once if ``proc`` (the would-be listener) exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the process for {host}:{port} exited with {proc.returncode}")
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s")
